"""A bare safetensors file with SAELens- or sparsify-style tensor names and no config.

- SAELens names: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `b_dec` [d_in], optional
  `W_dec` [d_sae, d_in] and `threshold` / `log_threshold` [d_sae] (JumpReLU);
- sparsify names: `encoder.weight` [d_sae, d_in], `encoder.bias`, `b_dec`, `W_dec`.
TopK `k` from `--sae-k`, a scalar tensor `k`, or the file's metadata `k`; b_dec is
subtracted from the input. Nothing says where the SAE belongs, so `--layers` / `--module`
do (default: the residual stream after the middle block).
"""

from __future__ import annotations

from pathlib import Path

import torch

from neuroscribe.datasets.sae._read import Weights, read_safetensors
from neuroscribe.datasets.sae.model import SAE, SAEInfo
from neuroscribe.errors import ConfigError, DataError

LAYOUT = "safetensors"


def load_single(path: Path, *, k: int | None = None) -> SAE:
    tensors, meta = read_safetensors(path, LAYOUT)
    if "W_enc" in tensors:
        names = ("W_enc", "b_enc", False)
    elif "encoder.weight" in tensors:
        names = ("encoder.weight", "encoder.bias", True)
    else:
        raise DataError(
            f"SAE file {path}: no encoder weights (expected W_enc [d_in, d_sae] or "
            f"encoder.weight [d_sae, d_in]; found {', '.join(sorted(tensors)) or 'nothing'})"
        )
    w = Weights(tensors, path, LAYOUT, "bare file")
    enc = w.need(names[0], (None, None), "(2-D)")
    w_enc = enc.T.contiguous() if names[2] else enc
    d_in, d_sae = w_enc.shape
    b_enc = w.opt(names[1], (d_sae,), f"[d_sae={d_sae}]")
    b_dec = w.opt("b_dec", (d_in,), f"[d_in={d_in}]")
    W_dec = w.opt("W_dec", (d_sae, d_in), f"[d_sae={d_sae}, d_in={d_in}]")
    threshold = w.opt("threshold", (d_sae,), f"[d_sae={d_sae}]")
    if threshold is None and w.has("log_threshold"):
        threshold = w.need("log_threshold", (d_sae,), f"[d_sae={d_sae}]").exp()
    if k is None:
        if "k" in tensors:
            k = int(tensors["k"].item())
        elif "k" in meta:
            k = int(meta["k"])
    if k is not None and not 0 < k <= d_sae:
        raise ConfigError(f"SAE TopK k={k} must be between 1 and d_sae={d_sae}")
    sae = SAE(
        w_enc,
        b_enc if b_enc is not None else torch.zeros(d_sae),
        b_dec if b_dec is not None else torch.zeros(d_in),
        threshold,
        k,
        path.stem,
        W_dec=W_dec,
    )
    sae.info = SAEInfo(
        path=str(path), layout="safetensors", architecture=sae.activation_fn, sae_id=path.stem
    )
    return sae
