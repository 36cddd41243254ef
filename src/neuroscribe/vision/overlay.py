"""A unit's spatial map drawn over its image: where in the picture the unit fired.

The map (a few cells or patches a side) is stretched bilinearly to the picture's size,
scaled against a given maximum (the unit's strongest activation, so images of one unit
are comparable) and blended in as a red-to-yellow heat layer; silent cells leave the
picture as it is. Used by the report and by the image-part explainer prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

OVERLAY_ALPHA = 0.55  # the heat layer's opacity where the unit is at its maximum


def normalised_map(spatial: Sequence[Sequence[float]], scale_max: float) -> np.ndarray:
    """The map as 0..1 against `scale_max` (negative values count as silent)."""
    grid = np.asarray(spatial, dtype=np.float64)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError("a spatial map is a non-empty rectangle of rows")
    if not np.isfinite(grid).all():
        raise ValueError("a spatial map has non-finite values")
    if scale_max <= 0:
        return np.zeros_like(grid)
    return np.clip(grid / scale_max, 0.0, 1.0)


def overlay(image: Any, spatial: Sequence[Sequence[float]], scale_max: float) -> Any:
    """`image` (PIL) with the unit's map blended in; the same size, RGB."""
    from PIL import Image

    rgb = image.convert("RGB")
    grid = normalised_map(spatial, scale_max)
    heat = Image.fromarray((grid * 255).astype(np.uint8), mode="L").resize(
        rgb.size, Image.Resampling.BILINEAR
    )
    h = np.asarray(heat, dtype=np.float64) / 255.0
    base = np.asarray(rgb, dtype=np.float64)
    # Red rising to yellow with the activation; opacity follows the activation too.
    colour = np.stack([np.full_like(h, 255.0), 255.0 * h, np.zeros_like(h)], axis=-1)
    alpha = (OVERLAY_ALPHA * h)[..., None]
    out = base * (1 - alpha) + colour * alpha
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8), mode="RGB")
