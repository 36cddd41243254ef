"""Sparse autoencoders and transcoders read from local files, in the layouts researchers
publish: SAELens folders, sparsify hookpoint folders, Gemma Scope `params.npz`, and a
bare safetensors file. `load_sae(path)` detects the layout; the `SAE` it returns encodes
hooked activations into latents (`SAE.encode`) and says, in `SAE.info`, where in the
model it belongs (`hook_name`, layer, model name) when its files say so.

One module per layout (`saelens`, `sparsify`, `gemmascope`, `single`), the maths in
`model`, shape and key checks in `_read`.
"""

from __future__ import annotations

from neuroscribe.datasets.sae.load import load_sae
from neuroscribe.datasets.sae.model import SAE, ReconStats, SAEInfo

__all__ = ["SAE", "ReconStats", "SAEInfo", "load_sae"]
