"""Reading weight files and checking tensor names and shapes, with errors that say
which key, which shape, which layout was assumed and which file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from neuroscribe.errors import DataError


def read_safetensors(path: Path, layout: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a safetensors file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
    except Exception as e:  # safetensors raises its own error types for bad headers
        raise DataError(
            f"{layout} SAE file {path}: not a readable safetensors file ({e})"
        ) from None
    return tensors, meta


def read_npz(path: Path, layout: str) -> dict[str, torch.Tensor]:
    import numpy as np

    try:
        with np.load(path) as data:
            return {k: torch.from_numpy(np.asarray(data[k], dtype=np.float32)) for k in data}
    except Exception as e:  # zipfile / pickle / value errors for a damaged file
        raise DataError(f"{layout} SAE file {path}: not a readable .npz file ({e})") from None


def read_json(path: Path, layout: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DataError(f"{layout} SAE config {path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{layout} SAE config {path}: expected a JSON object")
    return data


class Weights:
    """The tensors of one file, taken out by name with their shapes checked."""

    def __init__(self, tensors: dict[str, torch.Tensor], file: Path, layout: str, arch: str):
        self.tensors = tensors
        self.file = file
        self.layout = layout
        self.arch = arch

    def _where(self) -> str:
        return f"{self.layout} SAE file {self.file} (architecture {self.arch})"

    def has(self, key: str) -> bool:
        return key in self.tensors

    def need(self, key: str, shape: tuple[int | None, ...], meaning: str) -> torch.Tensor:
        """The tensor `key`, of `shape` (None = any size), or a DataError naming it."""
        if key not in self.tensors:
            found = ", ".join(sorted(self.tensors)) or "nothing"
            raise DataError(f"{self._where()}: missing tensor {key} {meaning}; found {found}")
        return self.check(key, self.tensors[key], shape, meaning)

    def opt(self, key: str, shape: tuple[int | None, ...], meaning: str) -> torch.Tensor | None:
        return self.need(key, shape, meaning) if key in self.tensors else None

    def check(
        self, key: str, t: torch.Tensor, shape: tuple[int | None, ...], meaning: str
    ) -> torch.Tensor:
        ok = t.ndim == len(shape) and all(
            s is None or s == n for s, n in zip(shape, t.shape, strict=True)
        )
        if not ok:
            want = "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"
            raise DataError(
                f"{self._where()}: {key} has shape {tuple(t.shape)}, expected {want} {meaning}"
            )
        return t.float()


def readable_id(folder: Path, depth: int = 1) -> str:
    """`release/sae` style id from a folder: its parent's name (the release) and the last
    `depth` names; a Hugging Face cache path gives `org/repo/...` instead of the hash."""
    parts = folder.resolve().parts
    if "snapshots" in parts:
        i = len(parts) - 1 - parts[::-1].index("snapshots")
        repo = parts[i - 1]
        if repo.startswith(("models--", "datasets--")):
            repo = "/".join(repo.split("--")[1:])
        rest = parts[i + 2 :]
        return "/".join([repo, *rest]) if rest else repo
    return "/".join(parts[-(depth + 1) :])


def as_int(cfg: dict[str, Any], key: str, where: str) -> int:
    v = cfg.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
        raise DataError(f"{where}: {key} must be a positive integer, not {v!r}")
    return v
