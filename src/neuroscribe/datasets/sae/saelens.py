"""SAELens folders: `cfg.json` + `sae_weights.safetensors`.

Tensors: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `W_dec` [d_sae, d_out], `b_dec` [d_out]
(d_out = d_in except for transcoders); JumpReLU `threshold` [d_sae] (or `log_threshold`
in training checkpoints); gated `b_gate`, `b_mag`, `r_mag` instead of `b_enc`; skip
transcoders `W_skip` [d_out, d_in]. Old files may hold a `scaling_factor` [d_sae] that
scales latents before decoding.

`cfg.json` (SAELens ≥ 6): `architecture`, `d_in`, `d_sae`, `d_out`, `k`,
`apply_b_dec_to_input`, `normalize_activations`, `rescale_acts_by_decoder_norm`, and a
`metadata` block (`model_name`, `hook_name`, `hook_name_out`, `prepend_bos`,
`context_size`, `neuronpedia_id`, `model_from_pretrained_kwargs`). Older configs are flat:
`hook_point`, `hook_point_layer`, `activation_fn_str`, `activation_fn_kwargs.k`, and
`normalize_activations` may be a bool.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any

from neuroscribe.datasets.hooks import default_output_hook
from neuroscribe.datasets.sae._read import Weights, as_int, read_json, read_safetensors, readable_id
from neuroscribe.datasets.sae.model import NORMALIZATIONS, SAE, SAEInfo
from neuroscribe.errors import ConfigError, DataError

log = logging.getLogger(__name__)

LAYOUT = "SAELens"
WEIGHTS = "sae_weights.safetensors"
ARCHITECTURES = (
    "standard",
    "topk",
    "jumprelu",
    "gated",
    "transcoder",
    "skip_transcoder",
    "jumprelu_transcoder",
)
# SAELens saves the input scaling of `expected_average_only_in` checkpoints here.
SCALER_FILE = "activation_scaler.json"


class _Config:
    """cfg.json with the v6 `metadata` block and pre-6 flat keys read alike."""

    def __init__(self, cfg: dict[str, Any]):
        self.cfg = cfg
        meta = cfg.get("metadata")
        self.meta: dict[str, Any] = meta if isinstance(meta, dict) else {}

    def get(self, *keys: str, default: Any = None) -> Any:
        for key in keys:
            for d in (self.meta, self.cfg):
                if d.get(key) is not None:
                    return d[key]
        return default


def load_saelens(folder: Path, *, k: int | None = None) -> SAE:
    cfg_file, weights_file = folder / "cfg.json", folder / WEIGHTS
    c = _Config(read_json(cfg_file, LAYOUT))
    where = f"{LAYOUT} SAE config {cfg_file}"
    arch = _architecture(c, where)
    d_in, d_sae = as_int(c.cfg, "d_in", where), as_int(c.cfg, "d_sae", where)
    transcoder = arch.endswith("transcoder")
    d_out = as_int(c.cfg, "d_out", where) if transcoder and "d_out" in c.cfg else d_in
    topk = _k(c, arch, k, d_sae, where)

    tensors, _ = read_safetensors(weights_file, LAYOUT)
    w = Weights(tensors, weights_file, LAYOUT, arch)
    cfg_dims = "from cfg.json"
    W_enc = w.need("W_enc", (d_in, d_sae), f"[d_in, d_sae] {cfg_dims}")
    W_dec = w.opt("W_dec", (d_sae, d_out), f"[d_sae, d_out] {cfg_dims}")
    b_dec = w.need("b_dec", (d_out,), f"[d_out] {cfg_dims}")
    b_mag = r_mag = threshold = W_skip = None
    if arch == "gated":
        b_enc = w.need("b_gate", (d_sae,), f"[d_sae] {cfg_dims}")
        b_mag = w.need("b_mag", (d_sae,), f"[d_sae] {cfg_dims}")
        r_mag = w.need("r_mag", (d_sae,), f"[d_sae] {cfg_dims}")
    else:
        b_enc = w.need("b_enc", (d_sae,), f"[d_sae] {cfg_dims}")
    if arch in ("jumprelu", "jumprelu_transcoder"):
        if w.has("threshold") or not w.has("log_threshold"):
            threshold = w.need("threshold", (d_sae,), f"[d_sae] {cfg_dims}")
        else:  # training checkpoints learn the threshold's logarithm
            threshold = w.need("log_threshold", (d_sae,), f"[d_sae] {cfg_dims}").exp()
    if arch == "skip_transcoder":
        W_skip = w.need("W_skip", (d_out, d_in), f"[d_out, d_in] {cfg_dims}")
    decoder_scale = w.opt("scaling_factor", (d_sae,), f"[d_sae] {cfg_dims}")
    if decoder_scale is not None and bool((decoder_scale == 1).all()):
        decoder_scale = None

    rescale = bool(c.cfg.get("rescale_acts_by_decoder_norm", False)) and arch == "topk"
    if rescale and W_dec is None:
        raise DataError(
            f"{LAYOUT} SAE file {weights_file} (architecture topk): missing tensor W_dec "
            "[d_sae, d_in], needed because cfg.json sets rescale_acts_by_decoder_norm"
        )
    subtract = c.cfg.get("apply_b_dec_to_input")
    if transcoder:
        if subtract:
            raise DataError(
                f"{where}: apply_b_dec_to_input is true, but a transcoder's b_dec lives in "
                "its output space (SAELens refuses this configuration too)"
            )
        subtract = False
    elif subtract is None:
        subtract = True  # the SAELens default
    notes: list[str] = []
    normalize = _normalization(c, where)
    norm_scale = _norm_scale(c, folder, normalize, notes)
    tl_kwargs = c.get("model_from_pretrained_kwargs", default={}) or {}
    center = bool(tl_kwargs.get("center_writing_weights", False))
    if tl_kwargs.get("fold_ln"):
        notes.append(
            "the SAE was trained on a TransformerLens model with fold_ln=True; layer-norm "
            "weights are not folded here, so normalised hooks may differ"
        )
    if c.get("hook_head_index") is not None:
        raise ConfigError(
            f"{where}: an SAE of one attention head (hook_head_index "
            f"{c.get('hook_head_index')}) is not supported"
        )

    hook_name = c.get("hook_name", "hook_point")
    if transcoder and hook_name and not c.get("hook_name_out"):
        hook_name_out = default_output_hook(hook_name, "input")
    else:
        hook_name_out = c.get("hook_name_out")
    layer = c.get("hook_layer", "hook_point_layer")
    if isinstance(hook_name, str) and (m := re.match(r"blocks\.(\d+)\.", hook_name)):
        layer = int(m.group(1))
    neuronpedia_id = c.get("neuronpedia_id")
    info = SAEInfo(
        path=str(folder),
        layout="saelens",
        architecture=arch,
        sae_id=neuronpedia_id or readable_id(folder),
        hook_name=hook_name,
        hook_name_out=hook_name_out,
        layer=layer if isinstance(layer, int) else None,
        model_name=c.get("model_name"),
        prepend_bos=c.get("prepend_bos"),
        context_size=c.get("context_size"),
        neuronpedia_id=neuronpedia_id,
        notes=notes,
    )
    return SAE(
        W_enc,
        b_enc,
        b_dec,
        threshold,
        topk,
        folder.name,
        activation_fn=_ACTIVATION[arch],
        W_dec=W_dec,
        b_mag=b_mag,
        r_mag=r_mag,
        W_skip=W_skip,
        decoder_scale=decoder_scale,
        subtract_b_dec=bool(subtract),
        normalize=normalize,
        norm_scale=norm_scale,
        center_input=center,
        rescale_by_decoder_norm=rescale,
        transcoder=transcoder,
        info=info,
    )


_ACTIVATION = {
    "standard": "relu",
    "topk": "topk",
    "jumprelu": "jumprelu",
    "gated": "gated",
    "transcoder": "relu",
    "skip_transcoder": "relu",
    "jumprelu_transcoder": "jumprelu",
}


def _architecture(c: _Config, where: str) -> str:
    arch = c.cfg.get("architecture") or "standard"
    act = c.get("activation_fn", "activation_fn_str", default="relu")
    if arch == "standard" and act == "topk":  # pre-6 TopK: a standard SAE with a topk fn
        arch = "topk"
    elif arch == "standard" and act != "relu":
        raise DataError(f"{where}: activation function {act!r} is not supported (relu, topk)")
    if arch not in ARCHITECTURES:
        raise DataError(
            f"{where}: architecture {arch!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    return arch


def _k(c: _Config, arch: str, k: int | None, d_sae: int, where: str) -> int | None:
    if arch != "topk":
        if k is not None:
            raise ConfigError(f"--sae-k is for TopK SAEs; {where} says architecture {arch}")
        return None
    kwargs = c.get("activation_fn_kwargs", default={}) or {}
    own = c.cfg.get("k", kwargs.get("k"))
    if own is not None and k is not None and int(own) != k:
        raise ConfigError(f"--sae-k {k} conflicts with k={own} in {where}")
    k = int(own) if own is not None else k
    if k is None:
        raise DataError(f"{where}: a topk SAE needs k (in cfg.json, or give --sae-k)")
    if not 0 < k <= d_sae:
        raise ConfigError(f"SAE TopK k={k} must be between 1 and d_sae={d_sae}")
    return k


def _normalization(c: _Config, where: str) -> str:
    norm = c.cfg.get("normalize_activations")
    if isinstance(norm, bool):  # pre-6: True meant the April-update input scaling
        norm = "expected_average_only_in" if norm else "none"
    norm = norm or "none"
    if norm not in NORMALIZATIONS:
        raise DataError(
            f"{where}: normalize_activations {norm!r} is not one of {', '.join(NORMALIZATIONS)}"
        )
    return norm


def _norm_scale(c: _Config, folder: Path, normalize: str, notes: list[str]) -> float | None:
    """The input scale of `expected_average_only_in` SAEs.

    SAELens folds this factor into the weights when training ends (the saved config then
    says `none`); an unfolded checkpoint keeps it in `activation_scaler.json`, and
    `SAE.from_pretrained` takes it from its release table (`norm_scaling_factor`). Without
    it SAELens warns and encodes raw inputs; so do we, and the manifest says so.
    """
    if normalize != "expected_average_only_in":
        return None
    factor = c.get("norm_scaling_factor", "scaling_factor")
    scaler = folder / SCALER_FILE
    if factor is None and scaler.is_file():
        factor = read_json(scaler, LAYOUT).get("scaling_factor")
    if factor is None:
        msg = (
            f"normalize_activations is expected_average_only_in but {folder} has no "
            f"scaling factor ({SCALER_FILE} or norm_scaling_factor in cfg.json): inputs "
            "are not rescaled, as in SAELens; check the reconstruction FVU"
        )
        log.warning(msg)
        notes.append(msg)
        return None
    return float(factor)
