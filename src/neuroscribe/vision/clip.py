"""An image-text model (CLIP, SigLIP) in this process: embeddings and zero-shot labels.

`load_clip("hf:openai/clip-vit-base-patch32")` (a Hub id, or `hf:<folder>` of a model
saved with `save_pretrained`: config, weights, image processor, tokenizer) loads the model
through `AutoModel` with its `AutoImageProcessor` and `AutoTokenizer`, once per folder
and device in this process. It must have `get_image_features` and `get_text_features`
(an image-text model, not a vision backbone). With `HF_HUB_OFFLINE=1` a Hub id must be in
the local cache.

- `image_embeds(pils)`, `text_embeds(texts)`: L2-normalised projections (rows), so a dot
  product is the cosine similarity CLIP ranks by; image embeddings are cached by the
  picture's bytes, text embeddings by the text.
- `zero_shot_labels(pils, vocabulary, k)`: each picture's k nearest concepts of a
  vocabulary (default: the shipped `concepts.txt`, a few hundred common visual concepts),
  each concept embedded through a prompt template ("a photo of {}"): labels for the
  text-only explainer route when a dataset has no captions, as CLIP-Dissect labels with
  a concept set.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from functools import cache
from typing import Any

import numpy as np

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.base import EMBEDDED_SPEC, LOCAL_PREFIX

DEFAULT_CLIP = "hf:openai/clip-vit-base-patch32"
LABEL_TEMPLATE = "a photo of {}"
MAX_CACHE = 20_000  # embeddings kept per model (a long job stays bounded)


def clip_spec(spec: str | None) -> str:
    """The spec recorded as the model: `hf:` prefixed; the default for None/`hf:embedded`
    (no CLIP weights ship with neuroscribe: the default is the Hub's)."""
    spec = (spec or "").strip()
    if not spec or spec == EMBEDDED_SPEC:
        return DEFAULT_CLIP
    return spec if spec.startswith(LOCAL_PREFIX) else LOCAL_PREFIX + spec


def resolve_clip(spec: str) -> str:
    """The folder or Hub id to load."""
    target = clip_spec(spec)[len(LOCAL_PREFIX) :]
    path = os.path.expanduser(target)
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "config.json")):
            raise ConfigError(f"{path} has no config.json, so it is not a transformers model")
        return os.path.abspath(path)
    return target


@cache
def concept_vocabulary() -> tuple[str, ...]:
    """The shipped concept vocabulary (one concept a line; '#' lines are comments)."""
    from importlib.resources import files

    text = files("neuroscribe.vision").joinpath("concepts.txt").read_text(encoding="utf-8")
    words = [ln.strip() for ln in text.splitlines()]
    return tuple(dict.fromkeys(w for w in words if w and not w.startswith("#")))


def _features(out: Any) -> Any:
    """The projected embedding from `get_*_features` (a tensor, or an output whose
    `pooler_output` holds it, as transformers 5 returns)."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        raise ConfigError("the image-text model returned no projected features")
    return pooled


class ClipModel:
    """A loaded image-text model; loads on first use; thread-safe."""

    def __init__(self, path: str, *, device: str = "cpu") -> None:
        self.path = path
        self.device = device
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._processor: Any = None
        self._images: OrderedDict[str, np.ndarray] = OrderedDict()
        self._texts: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self) -> None:
        from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        try:
            model = AutoModel.from_pretrained(self.path, local_files_only=offline)
            tokenizer = AutoTokenizer.from_pretrained(self.path, local_files_only=offline)
            processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=offline)
        except (OSError, ValueError) as e:
            raise ConfigError(
                f"cannot load the image-text model {self.path!r}: {e}. Give a folder, or a "
                "Hub id that is in the Hugging Face cache when there is no network"
            ) from e
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ConfigError(
                f"{self.path!r} is a {type(model).__name__}, not an image-text model (CLIP, "
                "SigLIP): it has no text tower to compare explanations with"
            )
        self._model = model.to(self.device).eval()
        self._tokenizer = tokenizer
        self._processor = processor

    def _ensure(self) -> None:
        if self._model is None:
            self._load()

    @property
    def model_type(self) -> str:
        self._ensure()
        return str(getattr(self._model.config, "model_type", ""))

    def _text_max_length(self) -> int:
        text_config = getattr(self._model.config, "text_config", None)
        n = getattr(text_config, "max_position_embeddings", None)
        return int(n) if isinstance(n, int) and n > 0 else 77

    def image_embeds(self, images: Sequence[Any], batch_size: int = 32) -> np.ndarray:
        """(n, d) unit vectors of PIL pictures (cached by their pixels)."""
        import torch

        with self._lock:
            self._ensure()
            keys = [_image_key(im) for im in images]
            todo = [k for k in dict.fromkeys(keys) if k not in self._images]
            first = {k: im for k, im in zip(keys, images, strict=True) if k in todo}
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                pixels = self._processor(
                    images=[first[k].convert("RGB") for k in chunk], return_tensors="pt"
                )
                with torch.inference_mode():
                    feats = _features(
                        self._model.get_image_features(
                            pixel_values=pixels["pixel_values"].to(self.device)
                        )
                    )
                for k, v in zip(chunk, _normalise(feats), strict=True):
                    self._remember(self._images, k, v)
            return np.stack([self._images[k] for k in keys]) if keys else np.zeros((0, 0))

    def text_embeds(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """(n, d) unit vectors of texts (cached by text)."""
        import torch

        with self._lock:
            self._ensure()
            todo = [t for t in dict.fromkeys(texts) if t not in self._texts]
            siglip = self.model_type.startswith("siglip")
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                enc = self._tokenizer(
                    chunk,
                    # SigLIP was trained on max-length padded text; CLIP pads to the batch.
                    padding="max_length" if siglip else True,
                    truncation=True,
                    max_length=self._text_max_length(),
                    return_tensors="pt",
                )
                inputs = {k: v.to(self.device) for k, v in enc.items() if k != "token_type_ids"}
                if siglip:
                    inputs.pop("attention_mask", None)
                with torch.inference_mode():
                    feats = _features(self._model.get_text_features(**inputs))
                for t, v in zip(chunk, _normalise(feats), strict=True):
                    self._remember(self._texts, t, v)
            return np.stack([self._texts[t] for t in texts]) if texts else np.zeros((0, 0))

    def zero_shot_labels(
        self,
        images: Sequence[Any],
        vocabulary: Sequence[str] | None = None,
        k: int = 3,
        *,
        template: str = LABEL_TEMPLATE,
    ) -> list[list[str]]:
        """Each picture's `k` most similar concepts, most similar first."""
        vocab = list(vocabulary if vocabulary is not None else concept_vocabulary())
        if not vocab:
            raise DataError("the concept vocabulary is empty")
        if k < 1:
            raise ConfigError(f"k must be at least 1, not {k}")
        if "{}" not in template:
            raise ConfigError(f"the label template {template!r} has no {{}} for the concept")
        concepts = self.text_embeds([template.format(c) for c in vocab])
        sims = self.image_embeds(images) @ concepts.T  # (n_images, n_concepts)
        top = np.argsort(-sims, axis=1, kind="stable")[:, : min(k, len(vocab))]
        return [[vocab[j] for j in row] for row in top]

    @staticmethod
    def _remember(store: OrderedDict[str, np.ndarray], key: str, value: np.ndarray) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > MAX_CACHE:
            store.popitem(last=False)


def _normalise(feats: Any) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(feats.float(), p=2, dim=-1).cpu().numpy()


def _image_key(image: Any) -> str:
    rgb = image.convert("RGB")
    digest = hashlib.sha256(rgb.tobytes())
    digest.update(f"{rgb.size}".encode())
    return digest.hexdigest()


_MODELS: dict[tuple[str, str], ClipModel] = {}
_MODELS_LOCK = threading.Lock()


def load_clip(spec: str, *, device: str = "cpu") -> ClipModel:
    """One `ClipModel` per (folder or Hub id, device) in this process; loads on first use."""
    path = resolve_clip(spec)
    with _MODELS_LOCK:
        key = (path, device)
        if key not in _MODELS:
            _MODELS[key] = ClipModel(path, device=device)
        return _MODELS[key]


__all__ = [
    "DEFAULT_CLIP",
    "LABEL_TEMPLATE",
    "ClipModel",
    "clip_spec",
    "concept_vocabulary",
    "load_clip",
    "resolve_clip",
]
