"""Sparse-autoencoder encoders loaded from a local safetensors file.

Layouts read:
- SAELens style: `W_enc` [d_in, d_sae], `b_enc` [d_sae], `b_dec` [d_in], optional
  `threshold` [d_sae] (JumpReLU);
- sparsify style: `encoder.weight` [d_sae, d_in], `encoder.bias`, `b_dec`.
TopK: `k` from the `--sae-k` option, a scalar tensor `k`, or the file's metadata `k`.

latents = act((x - b_dec) @ W_enc + b_enc), act = JumpReLU (threshold), TopK then ReLU
(k), or ReLU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from neuroscribe.errors import ConfigError, DataError


@dataclass
class SAE:
    W_enc: torch.Tensor  # [d_in, d_sae]
    b_enc: torch.Tensor  # [d_sae]
    b_dec: torch.Tensor  # [d_in]
    threshold: torch.Tensor | None = None  # [d_sae], JumpReLU
    k: int | None = None  # TopK
    name: str = "sae"

    @property
    def d_in(self) -> int:
        return self.W_enc.shape[0]

    @property
    def d_sae(self) -> int:
        return self.W_enc.shape[1]

    @property
    def activation(self) -> str:
        if self.threshold is not None:
            return "jumprelu"
        return f"topk({self.k})" if self.k else "relu"

    def to(self, device: torch.device | str, dtype: torch.dtype) -> SAE:
        def mv(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device=device, dtype=dtype)

        return SAE(
            mv(self.W_enc), mv(self.b_enc), mv(self.b_dec), mv(self.threshold), self.k, self.name
        )  # type: ignore[arg-type]

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent activations [..., d_sae] of inputs x [..., d_in]."""
        pre = (x.to(self.W_enc.dtype) - self.b_dec) @ self.W_enc + self.b_enc
        if self.threshold is not None:
            return pre * (pre > self.threshold)
        if self.k:
            top = pre.topk(self.k, dim=-1)
            return torch.zeros_like(pre).scatter_(-1, top.indices, top.values.relu())
        return pre.relu()


def load_sae(path: str | Path, *, k: int | None = None) -> SAE:
    """Load SAE encoder weights; raise DataError naming the file if the layout is unknown."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"SAE file {path} not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise DataError(f"SAE file {path}: not a readable safetensors file ({e})") from None

    if "W_enc" in tensors:
        w_enc = tensors["W_enc"]
        b_enc = tensors.get("b_enc")
    elif "encoder.weight" in tensors:
        w_enc = tensors["encoder.weight"].T
        b_enc = tensors.get("encoder.bias")
    else:
        raise DataError(
            f"SAE file {path}: no encoder weights (expected W_enc [d_in, d_sae] or "
            f"encoder.weight [d_sae, d_in]; found {', '.join(sorted(tensors)) or 'nothing'})"
        )
    if w_enc.ndim != 2:
        raise DataError(f"SAE file {path}: encoder weight has shape {tuple(w_enc.shape)}, not 2-D")
    d_in, d_sae = w_enc.shape
    b_enc = b_enc if b_enc is not None else torch.zeros(d_sae)
    b_dec = tensors.get("b_dec", torch.zeros(d_in))
    threshold = tensors.get("threshold")
    for name, t, n in (("b_enc", b_enc, d_sae), ("b_dec", b_dec, d_in)):
        if tuple(t.shape) != (n,):
            raise DataError(f"SAE file {path}: {name} has shape {tuple(t.shape)}, expected ({n},)")
    if threshold is not None and tuple(threshold.shape) != (d_sae,):
        raise DataError(
            f"SAE file {path}: threshold has shape {tuple(threshold.shape)}, expected ({d_sae},)"
        )
    if k is None:
        if "k" in tensors:
            k = int(tensors["k"].item())
        elif "k" in meta:
            k = int(meta["k"])
    if k is not None and not 0 < k <= d_sae:
        raise ConfigError(f"SAE TopK k={k} must be between 1 and d_sae={d_sae}")
    return SAE(
        w_enc.float().contiguous(),
        b_enc.float(),
        b_dec.float(),
        None if threshold is None else threshold.float(),
        k,
        path.stem,
    )
