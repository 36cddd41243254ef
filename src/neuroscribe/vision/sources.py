"""Image sources: where the pictures a vision subject looks at come from.

An `ImageSource` is a fixed, re-iterable sequence of `SourceImage`s (index, key,
caption, labels and a `load()` that opens the picture); the recorder streams it once
and later re-opens only the pictures it kept, by index (`ImageSource.pick`). Specs
(`open_images`):

- `offline`: the offline image set — Noto emoji (npm `emoji-datasource-google@16.0.0`,
  unpacked by `scripts/fetch_images.sh` into the neuroscribe cache; caption = the
  emoji's name, labels = [category, subcategory]) plus the natural photos that ship
  with scikit-image, scikit-learn and matplotlib (hand-written captions and labels);
  `offline-photos`: the photos alone; `offline-emoji`: the emoji alone;
- a folder: every picture below it (sorted, recursive); with class sub-folders
  (`root/<class>/<file>`, the ImageFolder convention) the class is the label; captions
  from an optional `captions.jsonl` / `captions.csv` in the folder (file -> caption);
- a list file: `.txt` (one path per line, relative to the list file) or `.jsonl`
  (`{"image": path, "caption": ..., "labels": [...]}`);
- `hf-dataset:<name or saved folder>[:split]`: a Hugging Face dataset (streamed from the
  Hub, or `load_from_disk` for a saved one); the image, caption and label columns are
  found from the features (a ClassLabel gives its names) unless given.

`max_images` keeps a deterministic subset spread across the first label (category,
class): a seeded round-robin over the groups, in the source's own order.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import random
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
EMOJI_PACKAGE = "emoji-datasource-google-16.0.0"
EMOJI_SIDE = 64
FETCH_HINT = "bash scripts/fetch_images.sh"


@dataclass(frozen=True)
class SourceImage:
    """One picture of a source: where it is (`key`), what it shows, how to open it."""

    index: int  # position in the source's order (the recorder's image id)
    key: str  # a stable name: relative path, "emoji/1f600.png", "skimage/chelsea", "ds#12"
    loader: Callable[[], Any] = field(repr=False, compare=False)
    caption: str | None = None
    labels: tuple[str, ...] = ()

    def load(self) -> Any:
        """The picture (PIL, fully decoded); DataError naming the picture if unreadable."""
        try:
            image = self.loader()
            image.load()  # decode now: a truncated file fails here, not later
        except DataError:
            raise
        except Exception as exc:  # PIL raises many types for bad files
            raise DataError(f"cannot read image {self.key}: {exc}") from None
        return image


class ImageSource:
    """A fixed sequence of pictures; iterate it as often as needed."""

    spec: str
    kind: str

    def __iter__(self) -> Iterator[SourceImage]:
        raise NotImplementedError

    def __len__(self) -> int:
        n = self.length
        if n is None:
            raise TypeError(f"image source {self.spec!r} does not know its length")
        return n

    @property
    def length(self) -> int | None:
        """The number of pictures, or None when the source cannot tell (a Hub stream)."""
        return None

    def pick(self, indices: Iterable[int]) -> dict[int, SourceImage]:
        """The pictures at `indices` (those that exist)."""
        want = set(indices)
        out: dict[int, SourceImage] = {}
        if not want:
            return out
        last = max(want)
        for item in self:
            if item.index in want:
                out[item.index] = item
            if item.index >= last:
                break
        return out

    def describe(self) -> dict[str, Any]:
        """What goes into the manifest."""
        return {"spec": self.spec, "kind": self.kind, "n_images": self.length}


class ListSource(ImageSource):
    """A source whose pictures are known up front (files, packaged images)."""

    def __init__(self, spec: str, kind: str, items: list[SourceImage], **info: Any) -> None:
        self.spec = spec
        self.kind = kind
        self.items = items
        self.info = info

    def __iter__(self) -> Iterator[SourceImage]:
        return iter(self.items)

    @property
    def length(self) -> int:
        return len(self.items)

    def pick(self, indices: Iterable[int]) -> dict[int, SourceImage]:
        return {i: self.items[i] for i in set(indices) if 0 <= i < len(self.items)}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **self.info}


def open_images(
    spec: str | None = None,
    *,
    max_images: int | None = None,
    seed: int = 0,
    image_column: str | None = None,
    caption_column: str | None = None,
    label_columns: list[str] | None = None,
) -> ImageSource:
    """Resolve an image source spec (see the module docstring); default `offline`."""
    spec = (spec or "offline").strip()
    if max_images is not None and max_images < 1:
        raise ConfigError(f"max_images must be at least 1, not {max_images}")
    if spec.startswith("hf-dataset:"):
        return _hf_dataset(
            spec,
            max_images=max_images,
            seed=seed,
            image_column=image_column,
            caption_column=caption_column,
            label_columns=label_columns,
        )
    if spec in ("offline", "offline-photos", "offline-emoji"):
        items: list[SourceImage] = []
        if spec != "offline-emoji":
            items += photo_items()
        if spec != "offline-photos":
            items += emoji_items()
        info: dict[str, Any] = {}
        if spec != "offline-photos":
            info["emoji_dir"] = str(emoji_dir())
        source = _finish(spec, "offline", items, max_images, seed, info)
        source.info["n_emoji"] = sum(it.key.startswith("emoji/") for it in source.items)
        source.info["n_photos"] = len(source.items) - source.info["n_emoji"]
        return source
    path = Path(spec).expanduser()
    if path.is_dir():
        return _finish(spec, "folder", folder_items(path), max_images, seed, {})
    if path.is_file():
        if path.suffix.lower() == ".txt":
            return _finish(spec, "list", txt_list_items(path), max_images, seed, {})
        if path.suffix.lower() == ".jsonl":
            return _finish(spec, "list", jsonl_list_items(path), max_images, seed, {})
        raise ConfigError(
            f"image list {path}: unsupported type {path.suffix or '(none)'}; "
            'use .txt (one path per line) or .jsonl ({"image": path, ...})'
        )
    raise ConfigError(
        f"image source {spec!r} is neither 'offline', 'offline-photos', a folder, a "
        ".txt/.jsonl list file nor hf-dataset:<name or folder>[:split]"
    )


def _finish(
    spec: str,
    kind: str,
    items: list[SourceImage],
    max_images: int | None,
    seed: int,
    info: dict[str, Any],
) -> ListSource:
    if not items:
        raise DataError(f"image source {spec!r} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
    total = len(items)
    if max_images is not None and max_images < total:
        items = spread_subset(items, max_images, seed)
        info = {**info, "subset_of": total, "max_images": max_images, "seed": seed}
    return ListSource(spec, kind, reindex(items), **info)


def reindex(items: list[SourceImage]) -> list[SourceImage]:
    return [SourceImage(i, it.key, it.loader, it.caption, it.labels) for i, it in enumerate(items)]


def spread_subset(items: list[SourceImage], n: int, seed: int) -> list[SourceImage]:
    """`n` pictures spread evenly over the groups of the first label, seeded, in order.

    Each group (a category, a class; unlabelled pictures form one group) is shuffled
    with a generator seeded by (seed, group); the groups then take turns in sorted
    order. The pictures chosen keep the source's order.
    """
    groups: dict[str, list[int]] = defaultdict(list)
    for pos, it in enumerate(items):
        groups[it.labels[0] if it.labels else ""].append(pos)
    queues = []
    for name in sorted(groups):
        members = groups[name][:]
        random.Random(f"{seed}:{name}").shuffle(members)
        queues.append(members)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < n:
        took = False
        for q in queues:
            if depth < len(q):
                chosen.append(q[depth])
                took = True
                if len(chosen) == n:
                    break
        if not took:
            break
        depth += 1
    return [items[p] for p in sorted(chosen)]


# ---------------------------------------------------------------- files


def _open_file(path: Path) -> Callable[[], Any]:
    def load() -> Any:
        from PIL import Image

        if not path.is_file():
            raise DataError(f"cannot read image {path}: no such file")
        return Image.open(path)

    return load


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")


def folder_items(root: Path) -> list[SourceImage]:
    """Every picture below `root`, sorted; class sub-folders give labels."""
    files = sorted(p for p in root.rglob("*") if _is_image(p))
    captions = _folder_captions(root)
    items = []
    for i, p in enumerate(files):
        rel = p.relative_to(root).as_posix()
        parts = rel.split("/")
        labels = (parts[0],) if len(parts) > 1 else ()  # root/<class>/<file>
        caption = captions.get(rel, captions.get(p.name))
        items.append(SourceImage(i, rel, _open_file(p), caption, labels))
    return items


def _folder_captions(root: Path) -> dict[str, str]:
    """file (relative path or bare name) -> caption, from captions.jsonl / captions.csv."""
    out: dict[str, str] = {}
    jl = root / "captions.jsonl"
    if jl.is_file():
        for lineno, line in enumerate(jl.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                name = row.get("image") or row.get("file") or row.get("file_name")
                caption = row["caption"]
            except (ValueError, KeyError, AttributeError):
                raise DataError(
                    f'{jl}:{lineno}: expected {{"image": file, "caption": text}}'
                ) from None
            if name and isinstance(caption, str):
                out[str(name)] = caption
    cv = root / "captions.csv"
    if cv.is_file():
        with cv.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            key = next((k for k in ("image", "file", "file_name", "filename") if k in fields), None)
            if key is None or "caption" not in fields:
                raise DataError(f"{cv}: needs columns 'image' (or 'file') and 'caption'")
            for row in reader:
                if row.get(key) and row.get("caption"):
                    out[row[key]] = row["caption"]
    return out


def txt_list_items(path: Path) -> list[SourceImage]:
    """One picture path per line (relative to the list file); blank lines and # skipped."""
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        rel = line.strip()
        if not rel or rel.startswith("#"):
            continue
        items.append(SourceImage(len(items), rel, _open_file(path.parent / rel)))
    return items


def jsonl_list_items(path: Path) -> list[SourceImage]:
    """`{"image": path, "caption": text, "labels": [...]}` per line."""
    items = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{path}:{lineno}: not JSON ({exc})") from None
        rel = row.get("image") or row.get("path") if isinstance(row, dict) else None
        if not isinstance(rel, str) or not rel:
            raise DataError(f'{path}:{lineno}: no "image" path')
        labels = row.get("labels", row.get("label", []))
        labels = [labels] if isinstance(labels, str | int) else list(labels or [])
        caption = row.get("caption")
        items.append(
            SourceImage(
                len(items),
                rel,
                _open_file(path.parent / rel),
                str(caption) if caption is not None else None,
                tuple(str(x) for x in labels),
            )
        )
    return items


# ---------------------------------------------------------------- the offline set


def emoji_dir() -> Path:
    from neuroscribe.embedded import cache_root

    return cache_root() / "images" / EMOJI_PACKAGE


def emoji_items() -> list[SourceImage]:
    """The Noto emoji with a Google image, in the package's sort order (skin-tone
    variants and the skin-tone swatches of "Component" left out)."""
    root = emoji_dir()
    index = root / "emoji.json"
    img_dir = root / "img" / "google" / str(EMOJI_SIDE)
    if not index.is_file() or not img_dir.is_dir():
        raise ConfigError(
            f"the offline emoji images are not in {root}: run `{FETCH_HINT}` "
            "(needs npm), or use --images offline-photos (the photos only)"
        )
    try:
        entries = json.loads(index.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise DataError(f"{index}: not JSON ({exc}); rerun `{FETCH_HINT}`") from None
    entries = sorted(
        (e for e in entries if e.get("has_img_google") and e.get("category") != "Component"),
        key=lambda e: e.get("sort_order", 0),
    )
    items = []
    for e in entries:
        name = e.get("name") or e.get("short_name") or e["image"]
        items.append(
            SourceImage(
                len(items),
                f"emoji/{e['image']}",
                _open_file(img_dir / e["image"]),
                str(name).lower(),
                (str(e.get("category", "")), str(e.get("subcategory", ""))),
            )
        )
    return items


# (key, loader name, caption, labels): real photographs only (no microscopy, synthetic
# test patterns or silhouettes). labels[0] is "photo" so a subset spreads over them as a
# group of its own beside the emoji categories.
_PHOTOS = [
    (
        "skimage/astronaut",
        "astronaut",
        "astronaut eileen collins in her spacesuit",
        ("photo", "person", "space"),
    ),
    (
        "skimage/camera",
        "camera",
        "a man with a camera on a tripod, black and white",
        ("photo", "person", "camera"),
    ),
    ("skimage/chelsea", "chelsea", "a tabby cat", ("photo", "animal", "cat")),
    (
        "skimage/coffee",
        "coffee",
        "a cup of coffee on a saucer",
        ("photo", "food & drink", "coffee"),
    ),
    ("skimage/rocket", "rocket", "a rocket on its launch pad", ("photo", "vehicle", "rocket")),
    (
        "skimage/stereo_motorcycle",
        "stereo_motorcycle",
        "a motorcycle in a workshop",
        ("photo", "vehicle", "motorcycle"),
    ),
    (
        "skimage/hubble_deep_field",
        "hubble_deep_field",
        "galaxies in the hubble deep field",
        ("photo", "space", "galaxy"),
    ),
    (
        "skimage/moon",
        "moon",
        "the cratered surface of the moon, black and white",
        ("photo", "space", "moon"),
    ),
    ("skimage/coins", "coins", "ancient greek coins on a dark cloth", ("photo", "object", "coin")),
    ("skimage/text", "text", "handwritten maths on paper", ("photo", "writing", "handwriting")),
    ("skimage/page", "page", "a page of printed text", ("photo", "writing", "printed text")),
    ("skimage/brick", "brick", "a brick wall", ("photo", "texture", "brick")),
    ("skimage/grass", "grass", "a patch of grass", ("photo", "texture", "grass")),
    ("skimage/gravel", "gravel", "gravel", ("photo", "texture", "gravel")),
    (
        "sklearn/china.jpg",
        "china.jpg",
        "a chinese temple among trees",
        ("photo", "building", "temple"),
    ),
    ("sklearn/flower.jpg", "flower.jpg", "a pink flower", ("photo", "plant", "flower")),
    (
        "matplotlib/grace_hopper.jpg",
        "grace_hopper.jpg",
        "portrait of grace hopper in navy uniform",
        ("photo", "person", "portrait"),
    ),
]


def _photo_loader(key: str, name: str) -> Callable[[], Any]:
    def load() -> Any:
        from PIL import Image

        lib = key.split("/")[0]
        if lib == "skimage":
            from skimage import data

            array = getattr(data, name)()
            if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
                array = array[0]
            return Image.fromarray(array)
        if lib == "sklearn":
            from sklearn.datasets import load_sample_image

            return Image.fromarray(load_sample_image(name))
        import matplotlib.cbook as cbook

        with cbook.get_sample_data(name) as f:
            return Image.open(io.BytesIO(f.read()))

    return load


_PHOTO_MODULES = {"skimage": "skimage", "sklearn": "sklearn", "matplotlib": "matplotlib"}


def photo_items() -> list[SourceImage]:
    """The natural photos shipped by scikit-image, scikit-learn and matplotlib (those of
    the libraries installed here; scikit-learn is optional)."""
    import importlib.util

    have = {lib for lib, mod in _PHOTO_MODULES.items() if importlib.util.find_spec(mod)}
    photos = [p for p in _PHOTOS if p[0].split("/")[0] in have]
    return [
        SourceImage(i, key, _photo_loader(key, name), caption, labels)
        for i, (key, name, caption, labels) in enumerate(photos)
    ]


# ---------------------------------------------------------------- Hugging Face datasets

_CAPTION_COLUMNS = ("caption", "captions", "text", "sentences", "description", "title")
_LABEL_COLUMNS = ("label", "labels", "category", "class", "fine_label", "coarse_label")


class HFDatasetSource(ImageSource):
    """A Hugging Face dataset: a saved local one (random access) or a Hub stream."""

    kind = "hf-dataset"

    def __init__(
        self,
        spec: str,
        name: str,
        split: str,
        *,
        max_images: int | None,
        seed: int,
        image_column: str | None,
        caption_column: str | None,
        label_columns: list[str] | None,
    ) -> None:
        try:
            import datasets
        except ImportError as exc:
            raise ConfigError("hf-dataset: sources need `pip install datasets`") from exc
        self.spec, self.name, self.split = spec, name, split
        self.local = Path(name).expanduser().exists()
        if self.local:
            try:
                ds = datasets.load_from_disk(str(Path(name).expanduser()))
            except (OSError, ValueError, FileNotFoundError) as exc:
                raise ConfigError(
                    f"{name}: not a dataset saved with save_to_disk ({exc})"
                ) from None
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise ConfigError(f"{name} has no split {split!r}; it has {', '.join(ds)}")
                ds = ds[split]
        else:
            try:
                ds = datasets.load_dataset(name, split=split, streaming=True)
            except Exception as exc:  # the Hub's errors are many
                raise ConfigError(f"cannot open the Hub dataset {name!r} ({exc})") from None
        features = ds.features or {}
        self.image_column = image_column or _find_image_column(features, name)
        if self.image_column not in features:
            raise ConfigError(
                f"{name} has no column {self.image_column!r}; its columns: {', '.join(features)}"
            )
        self.caption_column = caption_column or next(
            (c for c in _CAPTION_COLUMNS if c in features), None
        )
        if label_columns is None:
            label_columns = [
                c
                for c, f in features.items()
                if isinstance(f, datasets.ClassLabel) or c in _LABEL_COLUMNS
            ]
        for c in [self.caption_column, *label_columns]:
            if c is not None and c not in features:
                raise ConfigError(f"{name} has no column {c!r}; its columns: {', '.join(features)}")
        self.label_columns = [c for c in label_columns if c != self.caption_column]
        self._names = {
            c: features[c].names
            for c in self.label_columns
            if isinstance(features[c], datasets.ClassLabel)
        }
        # Decoded by us, one picture at a time: a corrupt one is skipped, not fatal.
        self.ds = ds.cast_column(self.image_column, datasets.Image(decode=False))
        self.max_images = max_images
        self.seed = seed
        self._rows: list[int] | None = None
        if self.local:
            n = len(self.ds)
            if max_images is not None and max_images < n:
                labels = (
                    self.ds.select_columns(self.label_columns[:1])[:] if self.label_columns else {}
                )
                stubs = [
                    SourceImage(i, str(i), _no_loader, None, self._labels(labels, i))
                    for i in range(n)
                ]
                self._rows = [int(s.key) for s in spread_subset(stubs, max_images, seed)]
            else:
                self._rows = list(range(n))

    @property
    def length(self) -> int | None:
        if self._rows is not None:
            return len(self._rows)
        try:
            n = self.ds.info.splits[self.split].num_examples
        except (AttributeError, KeyError, TypeError):
            return self.max_images
        return min(n, self.max_images) if self.max_images else n

    def _labels(self, row: dict[str, Any], i: int | None = None) -> tuple[str, ...]:
        out = []
        for c in self.label_columns:
            v = row.get(c)
            if i is not None and v is not None:
                v = v[i]
            for x in v if isinstance(v, list) else [v]:
                if x is None:
                    continue
                names = self._names.get(c)
                out.append(
                    names[x] if names and isinstance(x, int) and 0 <= x < len(names) else str(x)
                )
        return tuple(out)

    def _item(self, index: int, row_id: int, row: dict[str, Any]) -> SourceImage:
        caption = row.get(self.caption_column) if self.caption_column else None
        if isinstance(caption, list):
            caption = caption[0] if caption else None
        cell = row.get(self.image_column)
        return SourceImage(
            index,
            f"{self.name}[{self.split}]#{row_id}",
            _cell_loader(cell),
            str(caption) if caption is not None else None,
            self._labels(row),
        )

    def __iter__(self) -> Iterator[SourceImage]:
        if self._rows is not None:
            for index, row_id in enumerate(self._rows):
                yield self._item(index, row_id, self.ds[row_id])
            return
        for index, row in enumerate(self.ds):
            if self.max_images is not None and index >= self.max_images:
                return
            yield self._item(index, index, row)

    def pick(self, indices: Iterable[int]) -> dict[int, SourceImage]:
        if self._rows is None:
            return super().pick(indices)
        rows = self._rows
        return {
            i: self._item(i, rows[i], self.ds[rows[i]]) for i in set(indices) if 0 <= i < len(rows)
        }

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "dataset": self.name,
            "split": self.split,
            "local": self.local,
            "image_column": self.image_column,
            "caption_column": self.caption_column,
            "label_columns": self.label_columns,
            **({"max_images": self.max_images, "seed": self.seed} if self.max_images else {}),
        }


def _no_loader() -> Any:  # pragma: no cover - stubs only carry labels
    raise DataError("not a picture")


def _cell_loader(cell: Any) -> Callable[[], Any]:
    def load() -> Any:
        from PIL import Image

        if isinstance(cell, dict):
            if cell.get("bytes"):
                return Image.open(io.BytesIO(cell["bytes"]))
            if cell.get("path"):
                return Image.open(cell["path"])
        if hasattr(cell, "load") and hasattr(cell, "mode"):
            return cell
        raise DataError(f"the image cell holds no picture ({type(cell).__name__})")

    return load


def _find_image_column(features: Any, name: str) -> str:
    import datasets

    for c, f in features.items():
        if isinstance(f, datasets.Image):
            return c
    for c in ("image", "img", "picture", "pixel_values"):
        if c in features:
            return c
    raise ConfigError(
        f"{name} has no Image column; name it with --image-column (columns: {', '.join(features)})"
    )


def _hf_dataset(spec: str, **options: Any) -> HFDatasetSource:
    rest = spec[len("hf-dataset:") :].strip()
    name, split = rest, "train"
    head, sep, tail = rest.rpartition(":")
    if sep and head and tail and "/" not in tail and not Path(rest).expanduser().exists():
        name, split = head, tail
    if not name:
        raise ConfigError(
            "hf-dataset: needs a dataset name or folder, e.g. hf-dataset:cifar10:test"
        )
    return HFDatasetSource(spec, name, split, **options)
