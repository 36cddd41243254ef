"""Content-addressed image files in a run directory: `images/<sha256>.png` plus a thumbnail.

Pictures are normalised to RGB (transparency composited onto white, as emoji and icons
are drawn to be seen) and written as PNG; the file's bytes are its address, so the same
picture recorded twice (or by two workers) is one file, and writes are atomic (a temporary
file renamed into place), so a killed recorder never leaves half a picture behind.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from neuroscribe.errors import DataError
from neuroscribe.schema import ImageRef

IMAGES_DIR = "images"
THUMBS_DIR = "thumbs"
THUMB_SIDE = 96  # pixels on the longer side: enough for a report grid


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - Pillow comes with matplotlib
        raise DataError("image units need Pillow: pip install pillow") from exc
    return Image


def to_rgb(image: Any) -> Any:
    """The picture as RGB; anything transparent is shown on white."""
    Image = _pil()
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def png_bytes(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def thumbnail_of(image: Any, side: int = THUMB_SIDE) -> Any:
    thumb = image.copy()
    thumb.thumbnail((side, side))
    return thumb


def _write_once(path: Path, data: bytes) -> None:
    if path.exists() and path.stat().st_size == len(data):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class ImageStore:
    """The pictures of one run directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @property
    def directory(self) -> Path:
        return self.root / IMAGES_DIR

    def put(
        self,
        image: Any,
        *,
        source: str | None = None,
        caption: str | None = None,
        labels: list[str] | None = None,
    ) -> ImageRef:
        """Store a PIL image (once per distinct picture) and return its reference."""
        rgb = to_rgb(image)
        data = png_bytes(rgb)
        sha = hashlib.sha256(data).hexdigest()
        rel = f"{IMAGES_DIR}/{sha}.png"
        thumb_rel = f"{IMAGES_DIR}/{THUMBS_DIR}/{sha}.png"
        _write_once(self.root / rel, data)
        _write_once(self.root / thumb_rel, png_bytes(thumbnail_of(rgb)))
        return ImageRef(
            sha256=sha,
            path=rel,
            thumbnail=thumb_rel,
            width=rgb.width,
            height=rgb.height,
            source=source,
            caption=caption,
            labels=list(labels or []),
        )

    def file(self, ref: ImageRef, *, thumbnail: bool = False) -> Path:
        """The picture's file, checked to be inside this run directory and present."""
        rel = ref.thumbnail if thumbnail and ref.thumbnail else ref.path
        path = (self.root / rel).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise DataError(f"image path {rel!r} is outside the run directory {self.root}")
        if not path.is_file():
            raise DataError(f"image {ref.sha256[:12]} is missing: no file {path}")
        return path

    def open(self, ref: ImageRef, *, thumbnail: bool = False, verify: bool = False) -> Any:
        """The picture as an RGB PIL image; `verify` checks its bytes against its address."""
        path = self.file(ref, thumbnail=thumbnail)
        data = path.read_bytes()
        if verify and not thumbnail and hashlib.sha256(data).hexdigest() != ref.sha256:
            raise DataError(f"image file {path} does not match its hash {ref.sha256[:12]}")
        try:
            with _pil().open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except Exception as exc:
            raise DataError(f"image file {path} is not a readable image: {exc}") from exc

    def data_url(self, ref: ImageRef, *, thumbnail: bool = False) -> str:
        """The picture as a `data:image/png;base64,...` URL (image parts, reports)."""
        return png_data_url(self.file(ref, thumbnail=thumbnail).read_bytes())


def png_data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def image_data_url(image: Any) -> str:
    return png_data_url(png_bytes(to_rgb(image)))
