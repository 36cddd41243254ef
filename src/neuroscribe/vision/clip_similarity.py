"""Similarity scorers for image units: score an explanation with no LLM at all.

The predicted activation of each held-out image is a cosine similarity to the
explanation, and the score is the simulation scorer's: Pearson correlation of predicted
with true activations over the held-out test images, top and random, with its bootstrap
interval and calibration (`vision.simulate.image_outcome`), plus `auc` of top vs random
test images. Per-image predictions are written as `SequenceSimulation` lines (expected =
the cosine, on a -1..1 scale: `scale_max` 1), so the report shows them beside the truth.

- `clip-similarity`: the explanation's text embedding (through `template`, default
  "a photo of {}") against the picture's embedding in an image-text model (CLIP,
  SigLIP: `vision.clip`). The model is the score section's model spec, `hf:<hub id or
  folder>`; the default (`hf:embedded` or none) is `openai/clip-vit-base-patch32` from the
  Hub (no CLIP weights ship with neuroscribe). Pictures are read from the run directory
  (`run_dir`, which `api.build_scorer` passes).
- `caption-similarity`: the explanation's sentence embedding against each image's
  description (caption, labels: its one token) through `template` ("a picture of {}"),
  with the embedding scorer's model (`scorer.embedding`: all-MiniLM-L6-v2, offline, for
  `hf:embedded`). Text only, so it runs wherever the images have descriptions; on the
  emoji ground-truth suite it tells true explanations from hard false ones far better
  than simulation with the 135M embedded LLM (bench/vision_discrimination.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.base import LOCAL_PREFIX
from neuroscribe.schema import SequenceSimulation, Usage
from neuroscribe.scorer.base import OwnOptions, ScoreOutcome, ScoreTask
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate
from neuroscribe.vision.clip import LABEL_TEMPLATE, ClipModel, clip_spec, load_clip
from neuroscribe.vision.simulate import image_line, image_outcome

CLIP_SIMILARITY_VERSION = "clip-similarity-v1"
CAPTION_SIMILARITY_VERSION = "caption-similarity-v1"
# Chosen on the dev half of the emoji suite (beside "{}": the same top-1 rate, a
# slightly larger margin).
CAPTION_TEMPLATE = "a picture of {}"


class SimilarityScorer(OwnOptions):
    """What both similarity scorers share: held-out images in, one cosine each out."""

    name: ClassVar[str]
    stage: ClassVar[str]
    version: ClassVar[str]
    primary_metric = "score"
    OPTIONS: ClassVar[tuple[str, ...]] = ("template",)

    model: str
    template: str
    seed: int = 0

    def _check_template(self, template: str) -> str:
        if "{}" not in template:
            raise ConfigError(f"the template {template!r} has no {{}} for the text")
        return template

    @property
    def ready(self) -> bool:
        raise NotImplementedError

    def similarities(self, task: ScoreTask, text: str, excerpts: Sequence[Excerpt]) -> list[float]:
        """The cosine of the explanation with each excerpt (blocking; run in a thread)."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "model": self.model,
            "version": self.version,
            "template": self.template,
        }

    def comparable(self) -> dict[str, Any]:
        return {"scorer": self.name, "model": self.model, "version": self.version}

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if not self.ready:
            raise ConfigError(f"this {self.name} scorer was built for planning only")
        e = task.explanation
        if not e.text.strip():
            raise DataError(f"explanation {e.explanation_id} is empty")
        stored = {s.excerpt_id: s for s in task.stored if isinstance(s, SequenceSimulation)}
        todo = [x for x in task.heldout if x.excerpt_id not in stored]
        new: list[SequenceSimulation] = []
        if todo:
            sims = await asyncio.to_thread(self.similarities, task, e.text.strip(), todo)
            for x, s in zip(todo, sims, strict=True):
                new.append(
                    image_line(
                        task,
                        x,
                        [round(s, 6)],
                        scale_max=1,
                        strategy=self.name,
                        simulator=self.model,
                        prompt_version=self.version,
                    )
                )
        by_id = {**stored, **{s.excerpt_id: s for s in new}}
        outcome = image_outcome([by_id[x.excerpt_id] for x in task.heldout], self.seed, Usage())
        outcome.details.update(template=self.template, similarity="cosine")
        outcome.writes = {"simulations": new} if new else {}
        return outcome

    def estimate(self, task: ScoreTask) -> Estimate:
        return Estimate()  # no model calls at all


class ClipSimilarityScorer(SimilarityScorer):
    """`clip-similarity`: explanation text vs picture in CLIP's space."""

    name = "clip-similarity"
    stage = "score-clip-similarity"
    version = CLIP_SIMILARITY_VERSION

    def __init__(
        self,
        clip: ClipModel | None,
        *,
        spec: str | None = None,
        run_dir: str | Path | None = None,
        template: str = LABEL_TEMPLATE,
        seed: int = 0,
    ) -> None:
        self.clip = clip
        self.model = clip_spec(spec)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.template = self._check_template(template)
        self.seed = seed

    @property
    def ready(self) -> bool:
        return self.clip is not None

    @classmethod
    async def build(
        cls,
        llm: Any,
        *,
        model: str | None = None,
        run_dir: str | Path | None = None,
        **options: Any,
    ) -> ClipSimilarityScorer:
        """The live scorer. Its model is `model`, else the score section's model spec (the
        `llm` built from it is never called: a local `hf:` spec loads nothing until used)."""
        spec = model if model is not None else getattr(llm, "spec", None)
        if spec and not spec.startswith(LOCAL_PREFIX) and model is None:
            raise ConfigError(
                f"the clip-similarity scorer needs a local image-text model, "
                f"hf:<folder or hub id> (e.g. {clip_spec(None)}), not {spec!r}"
            )
        return cls(load_clip(clip_spec(spec)), spec=spec, run_dir=run_dir, **cls._own(options))

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[ClipSimilarityScorer, str]:
        return cls(None, spec=spec, **cls._own(options)), "clip-similarity sends no requests"

    def similarities(self, task: ScoreTask, text: str, excerpts: Sequence[Excerpt]) -> list[float]:
        from neuroscribe.rundir import RunDir

        assert self.clip is not None
        if self.run_dir is None:
            raise ConfigError(
                "the clip-similarity scorer reads the held-out images: give it the run "
                "directory (run_dir)"
            )
        store = RunDir(self.run_dir).images
        pictures = []
        for x in excerpts:
            if x.record.image is None:
                raise DataError(
                    f"unit {task.record.unit_id}: excerpt {x.excerpt_id} is not an image; "
                    "clip-similarity scores image units only"
                )
            pictures.append(store.open(x.record.image))
        query = self.clip.text_embeds([self.template.format(text)])[0]
        return [float(v) for v in self.clip.image_embeds(pictures) @ query]


class CaptionSimilarityScorer(SimilarityScorer):
    """`caption-similarity`: explanation vs image description in a sentence-embedding
    space (the embedding scorer's model)."""

    name = "caption-similarity"
    stage = "score-caption-similarity"
    version = CAPTION_SIMILARITY_VERSION

    def __init__(
        self,
        embedder: Any | None,
        *,
        spec: str | None = None,
        template: str = CAPTION_TEMPLATE,
        seed: int = 0,
    ) -> None:
        from neuroscribe.scorer.embedding import embedder_spec

        self.embedder = embedder
        self.model = embedder_spec(spec)
        self.template = self._check_template(template)
        self.seed = seed

    @property
    def ready(self) -> bool:
        return self.embedder is not None

    @classmethod
    async def build(
        cls, llm: Any, *, model: str | None = None, **options: Any
    ) -> CaptionSimilarityScorer:
        """The live scorer on the score section's model spec (a sentence-embedding model,
        `hf:...`; `hf:embedded`: the offline all-MiniLM-L6-v2)."""
        from neuroscribe.scorer.embedding import embedder_spec, resolve_embedder, shared_embedder

        spec = model if model is not None else getattr(llm, "spec", None)
        if spec and not spec.startswith(LOCAL_PREFIX) and model is None:
            raise ConfigError(
                "the caption-similarity scorer needs a local sentence-embedding model, "
                f"hf:<folder or hub id> (or hf:embedded), not {spec!r}"
            )
        embedder = shared_embedder(resolve_embedder(embedder_spec(spec)))
        return cls(embedder, spec=spec, **cls._own(options))

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[CaptionSimilarityScorer, str]:
        return cls(None, spec=spec, **cls._own(options)), "caption-similarity sends no requests"

    def similarities(self, task: ScoreTask, text: str, excerpts: Sequence[Excerpt]) -> list[float]:
        assert self.embedder is not None
        texts = [self.template.format(x.record.tokens[0]) for x in excerpts]
        vecs = self.embedder.encode([text, *texts])
        return [float(v) for v in vecs[1:] @ vecs[0]]


__all__ = [
    "CAPTION_SIMILARITY_VERSION",
    "CLIP_SIMILARITY_VERSION",
    "CaptionSimilarityScorer",
    "ClipSimilarityScorer",
    "SimilarityScorer",
]
