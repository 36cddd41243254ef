"""`load_sae(path)`: find which layout a file or folder is in and load it."""

from __future__ import annotations

from pathlib import Path

from neuroscribe.datasets.sae import gemmascope, saelens, sparsify
from neuroscribe.datasets.sae.gemmascope import load_gemmascope
from neuroscribe.datasets.sae.model import SAE
from neuroscribe.datasets.sae.saelens import load_saelens
from neuroscribe.datasets.sae.single import load_single
from neuroscribe.datasets.sae.sparsify import load_sparsify
from neuroscribe.errors import DataError

EXPECTED = (
    "cfg.json + sae_weights.safetensors (SAELens), cfg.json + sae.safetensors (sparsify, "
    "one folder per hookpoint), params.npz or params.safetensors (Gemma Scope), or a "
    "single .safetensors file"
)


def load_sae(path: str | Path, *, k: int | None = None) -> SAE:
    """Load an SAE or transcoder from a file or folder in any supported layout.

    `k` (the `--sae-k` option) sets TopK for files that do not say it themselves; a
    DataError names the file, the layout assumed, and the tensor or key that is wrong.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"SAE file {path} not found")
    if path.is_file():
        named = path.name in ("cfg.json", saelens.WEIGHTS, sparsify.WEIGHTS)
        if named and (path.parent / "cfg.json").is_file():
            return _load_folder(path.parent, k)
        if path.name in gemmascope.FILES or path.suffix == ".npz":
            return load_gemmascope(path, k=k)
        return load_single(path, k=k)
    return _load_folder(path, k)


def _layout(folder: Path) -> str | None:
    has_cfg = (folder / "cfg.json").is_file()
    if has_cfg and (folder / saelens.WEIGHTS).is_file():
        return "saelens"
    if has_cfg and (folder / sparsify.WEIGHTS).is_file():
        return "sparsify"
    if any((folder / f).is_file() for f in gemmascope.FILES):
        return "gemmascope"
    return None


def _load_folder(folder: Path, k: int | None) -> SAE:
    layout = _layout(folder)
    if layout == "saelens":
        return load_saelens(folder, k=k)
    if layout == "sparsify":
        return load_sparsify(folder, k=k)
    if layout == "gemmascope":
        file = next(folder / f for f in gemmascope.FILES if (folder / f).is_file())
        return load_gemmascope(file, k=k)
    # A run folder of several hookpoints (sparsify) or SAEs: one is unambiguous.
    inner = sorted(p for p in folder.iterdir() if p.is_dir() and _layout(p) is not None)
    if len(inner) == 1:
        return _load_folder(inner[0], k)
    if inner:
        names = ", ".join(p.name for p in inner)
        raise DataError(
            f"{folder} holds {len(inner)} SAEs ({names}); pass one of them, e.g. --sae {inner[0]}"
        )
    if (folder / "cfg.json").is_file():
        raise DataError(
            f"{folder} has cfg.json but no weights: expected {saelens.WEIGHTS} (SAELens) "
            f"or {sparsify.WEIGHTS} (sparsify) next to it"
        )
    raise DataError(f"no SAE found in {folder}: expected {EXPECTED}")
