"""EleutherAI sparsify folders: `<hookpoint>/cfg.json` + `<hookpoint>/sae.safetensors`.

Tensors: `encoder.weight` [num_latents, d_in] (transposed relative to SAELens),
`encoder.bias` [num_latents], `W_dec` [num_latents, d_in], `b_dec` [d_in], and `W_skip`
[d_in, d_in] with a skip connection. `cfg.json`: `d_in`, `num_latents` (0 = d_in ×
`expansion_factor`), `k`, `activation` (topk | groupmax), `transcode`, `skip_connection`.

sparsify encodes relu((x − b_dec) @ encoder.weight.T + encoder.bias) and keeps the top k
(b_dec is not subtracted for transcoders). The folder name is the hookpoint: a module
path relative to the model's base model (`layers.8`, `h.8.mlp`); an SAE reads the
module's output, a transcoder its input and reconstructs its output. The run folder
above may hold `config.json` with the subject `model`.
"""

from __future__ import annotations

from pathlib import Path

from neuroscribe.datasets.sae._read import Weights, as_int, read_json, read_safetensors, readable_id
from neuroscribe.datasets.sae.model import SAE, SAEInfo
from neuroscribe.errors import ConfigError, DataError

LAYOUT = "sparsify"
WEIGHTS = "sae.safetensors"


def load_sparsify(folder: Path, *, k: int | None = None) -> SAE:
    cfg_file, weights_file = folder / "cfg.json", folder / WEIGHTS
    cfg = read_json(cfg_file, LAYOUT)
    where = f"{LAYOUT} SAE config {cfg_file}"
    d_in = as_int(cfg, "d_in", where)
    n = cfg.get("num_latents") or d_in * int(cfg.get("expansion_factor", 32))
    own_k = int(cfg.get("k", 32))
    if k is not None and k != own_k:
        raise ConfigError(f"--sae-k {k} conflicts with k={own_k} in {where}")
    activation = cfg.get("activation", "topk")
    if activation not in ("topk", "groupmax"):
        raise DataError(f"{where}: activation {activation!r} is not supported (topk, groupmax)")
    if cfg.get("signed"):
        raise DataError(f"{where}: signed TopK SAEs (signed: true) are not supported")
    if not 0 < own_k <= n:
        raise DataError(f"{where}: k={own_k} must be between 1 and num_latents={n}")
    if activation == "groupmax" and n % own_k:
        raise DataError(f"{where}: groupmax needs num_latents ({n}) divisible by k ({own_k})")
    transcode = bool(cfg.get("transcode", False))
    skip = bool(cfg.get("skip_connection", False))
    arch = ("skip_transcoder" if skip else "transcoder") if transcode else activation

    tensors, _ = read_safetensors(weights_file, LAYOUT)
    w = Weights(tensors, weights_file, LAYOUT, arch)
    dims = "from cfg.json"
    enc = w.need("encoder.weight", (n, d_in), f"[num_latents, d_in] {dims}")
    b_enc = w.need("encoder.bias", (n,), f"[num_latents] {dims}")
    W_dec = w.opt("W_dec", (n, d_in), f"[num_latents, d_in] {dims}")
    b_dec = w.need("b_dec", (d_in,), f"[d_in] {dims}")
    W_skip = w.opt("W_skip", (d_in, d_in), f"[d_in, d_in] {dims}")
    if skip and W_skip is None:
        w.need("W_skip", (d_in, d_in), "[d_in, d_in] (cfg.json sets skip_connection)")

    run_cfg = folder.parent / "config.json"
    model = read_json(run_cfg, LAYOUT).get("model") if run_cfg.is_file() else None
    info = SAEInfo(
        path=str(folder),
        layout="sparsify",
        architecture=arch,
        sae_id=readable_id(folder),
        hook_name=folder.name,
        hook_name_out=folder.name if transcode else None,
        hook_side="input" if transcode else "output",
        model_name=model if isinstance(model, str) else None,
    )
    return SAE(
        enc.T.contiguous(),
        b_enc,
        b_dec,
        None,
        own_k,
        folder.name,
        activation_fn=activation,
        W_dec=W_dec,
        W_skip=W_skip,
        subtract_b_dec=not transcode,
        transcoder=transcode,
        info=info,
    )
