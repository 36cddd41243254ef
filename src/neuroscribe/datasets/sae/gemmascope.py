"""Gemma Scope: `<release>/layer_{L}/width_{W}/average_l0_{N}/params.npz` (or
`params.safetensors`).

Tensors: `W_enc` [d_in, d_sae], `W_dec` [d_sae, d_out], `b_enc` [d_sae], `b_dec` [d_out],
`threshold` [d_sae]. JumpReLU on the raw input — Gemma Scope's tutorial and SAELens'
loader subtract no b_dec: z = relu(pre) * (pre > threshold), pre = x @ W_enc + b_enc.

There is no config file, so the hook comes from the path, as SAELens derives it from
the release name: `…-res` → `blocks.{L}.hook_resid_post`, `…-mlp` →
`blocks.{L}.hook_mlp_out`, `…-att` → `blocks.{L}.attn.hook_z`, `…-transcoders` →
reads `blocks.{L}.ln2.hook_normalized` and reconstructs `blocks.{L}.hook_mlp_out`.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from neuroscribe.datasets.sae._read import Weights, read_npz, read_safetensors, readable_id
from neuroscribe.datasets.sae.model import SAE, SAEInfo
from neuroscribe.errors import ConfigError

log = logging.getLogger(__name__)

LAYOUT = "Gemma Scope"
FILES = ("params.npz", "params.safetensors")
HOOKS = {
    "res": "blocks.{layer}.hook_resid_post",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "att": "blocks.{layer}.attn.hook_z",
    "transcoder": "blocks.{layer}.ln2.hook_normalized",
}


def load_gemmascope(file: Path, *, k: int | None = None) -> SAE:
    if k is not None:
        raise ConfigError("--sae-k is for TopK SAEs; Gemma Scope SAEs are JumpReLU")
    raw = read_npz(file, LAYOUT) if file.suffix == ".npz" else read_safetensors(file, LAYOUT)[0]
    # Some releases spell the matrices w_enc / w_dec (SAELens renames them the same way).
    tensors = {("W_" + k[2:] if k.startswith("w_") else k): v for k, v in raw.items()}
    parts = [p.lower() for p in file.resolve().parent.parts]
    kind = _kind(parts)
    if any(p.startswith("embedding") for p in parts):
        raise ConfigError(f"{file}: Gemma Scope embedding SAEs are not supported")
    arch = "jumprelu_transcoder" if kind == "transcoder" else "jumprelu"

    w = Weights(tensors, file, LAYOUT, arch)
    W_enc = w.need("W_enc", (None, None), "[d_in, d_sae]")
    d_in, d_sae = W_enc.shape
    W_dec = w.need("W_dec", (d_sae, None), f"[d_sae={d_sae}, d_out]")
    d_out = W_dec.shape[1]
    if kind != "transcoder" and d_out != d_in:
        w.need("W_dec", (d_sae, d_in), f"[d_sae, d_in={d_in}] (an SAE decodes to its input)")
    b_enc = w.need("b_enc", (d_sae,), f"[d_sae={d_sae}]")
    b_dec = w.need("b_dec", (d_out,), f"[d_out={d_out}]")
    threshold = w.need("threshold", (d_sae,), f"[d_sae={d_sae}] (JumpReLU)")
    W_skip = w.opt("W_skip", (d_out, d_in), f"[d_out={d_out}, d_in={d_in}]")

    layer = _number(parts, r"layer_(\d+)")
    notes: list[str] = []
    if kind is None:
        kind = "res"
        msg = (
            f"{file}: the path does not say res/mlp/att/transcoders: assumed the residual "
            "stream after the block (give --sae-hook otherwise)"
        )
        log.warning(msg)
        notes.append(msg)
    hook = HOOKS[kind]
    if layer is not None:
        hook = hook.format(layer=layer)
    start = next((i for i, p in enumerate(parts) if re.match(r"layer_\d+", p)), len(parts) - 1)
    folder = file.parent
    name = "-".join(folder.resolve().parts[start:]) or folder.name
    info = SAEInfo(
        path=str(file),
        layout="gemmascope",
        architecture=arch,
        sae_id=readable_id(folder, depth=len(parts) - start),
        hook_name=hook,
        hook_name_out=("blocks.{layer}.hook_mlp_out" if kind == "transcoder" else None),
        layer=layer,
        model_name=_model(parts),
        prepend_bos=True,  # Gemma Scope was trained on BOS-prefixed sequences
        notes=notes,
    )
    if info.hook_name_out and layer is not None:
        info.hook_name_out = info.hook_name_out.format(layer=layer)
    return SAE(
        W_enc,
        b_enc,
        b_dec,
        threshold,
        None,
        name,
        activation_fn="jumprelu",
        W_dec=W_dec,
        W_skip=W_skip,
        subtract_b_dec=False,
        transcoder=kind == "transcoder",
        info=info,
    )


def _kind(parts: list[str]) -> str | None:
    for p in reversed(parts):
        if "transcoder" in p:
            return "transcoder"
        if p.startswith("gemma-scope") or p.startswith("models--google--gemma-scope"):
            for kind in ("res", "mlp", "att"):
                if re.search(rf"-{kind}(-|$)", p):
                    return kind
    return None


def _number(parts: list[str], pattern: str) -> int | None:
    for p in parts:
        if m := re.fullmatch(pattern, p):
            return int(m.group(1))
    return None


def _model(parts: list[str]) -> str | None:
    for p in parts:
        if m := re.search(r"gemma-scope-(\d+b)-(pt|it)", p):
            return f"gemma-2-{m.group(1)}" + ("-it" if m.group(2) == "it" else "")
    return None
