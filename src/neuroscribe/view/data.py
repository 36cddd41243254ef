"""What the report shows, as plain models: a summary per unit and a detail view per unit.

Both the self-contained file and the server send exactly these models as JSON; the page's
script renders them with `textContent`, so no string here is ever parsed as HTML.

Every scorer's score of an explanation is sent with its metrics by name (`ScoreView`),
and the page renders whatever metrics it finds, so a new scorer shows up without edits.
The headline `score` (sorting, badge, the unit list's best and mean) is the primary
scorer's primary metric: the simulation scorer if the run has it, else its first scorer.

Image units (vision subjects) carry their pictures inline: each image excerpt's thumbnail,
re-encoded as a PNG `data:` URL with the unit's spatial map drawn over it (scaled to the
unit's strongest activation, so its pictures compare), so the report file still opens
from disk with nothing else beside it. The typographic check's line and probe pictures
come with the explanation they checked.
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from typing import Any, Literal

from pydantic import BaseModel, Field

from neuroscribe.compare import default_scorer
from neuroscribe.errors import DataError
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    ImageRef,
    NeuronRecord,
    Score,
    ScoreInterval,
    SequenceSimulation,
)
from neuroscribe.vision.store import ImageStore
from neuroscribe.vision.typographic import TypographicResult, read_typographic


class UnitSummary(BaseModel):
    """One row of the unit list."""

    unit_id: str
    model: str | None
    layer: str | None
    index: int | None
    n_explanations: int
    best_score: float | None
    mean_score: float | None
    best_explanation: str | None
    explanations: list[str]  # every text, for the filter box


class ImageView(BaseModel):
    """An image excerpt's picture as the page shows it.

    `picture` names an entry of the unit's `pictures` (a data:image/png URL of the
    thumbnail, with the map drawn over it): a picture shown twice on a unit's page (a
    held-out image is also a top image) is sent once.
    """

    sha256: str
    picture: str | None  # key into UnitDetail.pictures; None: no picture (see `missing`)
    missing: str | None = None  # why there is no picture (a file gone from the run)
    caption: str | None
    labels: list[str]
    width: int
    height: int
    has_map: bool


class ExcerptView(BaseModel):
    excerpt_id: str
    kind: str
    role: str
    tokens: list[str]
    true: list[float | None]
    simulated: list[float | None] | None = None
    image: ImageView | None = None  # image excerpts only


class ProbeView(BaseModel):
    """One typographic probe picture and the unit's activation on it."""

    kind: str  # word | control | written | photo
    word: str | None
    activation: float | None
    image: ImageView


class TypographicView(BaseModel):
    """The multimodal check of an explanation: its one-line summary and probe pictures."""

    subject: str
    summary: str
    key_words: list[str]
    word_ratio: float | None
    control_ratio: float | None
    attack_effect: float | None
    text_tower: str | None  # the text-tower note (CLIP subjects)
    probes: list[ProbeView]


class ScoreView(BaseModel):
    """One scorer's verdict on an explanation: its metrics by name."""

    scorer: str
    model: str | None
    metrics: dict[str, float | None]
    primary_metric: str
    interval: ScoreInterval | None
    n_excerpts: int
    n_tokens: int
    flags: list[str]


class ExplanationView(BaseModel):
    explanation_id: str
    text: str
    explainer: str
    simulator: str | None  # the primary scorer's model
    score: float | None  # the primary scorer's primary metric (badge and order)
    flags: list[str]  # the primary scorer's flags
    scores: list[ScoreView]  # every scorer's, the primary scorer first
    excerpts: list[ExcerptView]
    typographic: list[TypographicView] = Field(default_factory=list)  # image units


class UnitDetail(BaseModel):
    unit_id: str
    model: str | None
    layer: str | None
    index: int | None
    max_activation: float | None
    true_max: float  # shading scale of true activations (largest positive value shown)
    scale_max: int  # shading scale of simulated activations (the simulator's 0..scale_max)
    explanations: list[ExplanationView]
    record_excerpts: list[ExcerptView]  # top excerpts, when none was simulated
    modality: Literal["text", "image"] = "text"
    # Image units: the record's top and random pictures, with the top-ranked
    # explanation's simulated activation where it simulated that picture.
    top_images: list[ExcerptView] = Field(default_factory=list)
    random_images: list[ExcerptView] = Field(default_factory=list)
    pictures: dict[str, str] = Field(default_factory=dict)  # ImageView.picture -> data URL


class ScorerInfo(BaseModel):
    """One scorer of the run: its models, metric names and how many explanations it scored."""

    name: str
    models: list[str]
    metrics: list[str]
    primary_metric: str
    n_scored: int


class ReportMeta(BaseModel):
    run: str
    n_units: int
    n_explanations: int
    n_scored: int  # by the primary scorer
    mean_score: float | None  # of the primary scorer's primary metric
    primary_scorer: str | None
    primary_metric: str | None
    explainers: list[str]
    simulators: list[str]  # the primary scorer's models
    scorers: list[ScorerInfo]  # every scorer, the primary one first


def _finite(v: float | None) -> float | None:
    # JSON has no NaN/Infinity; a true activation the schema did not check could be one.
    return v if v is not None and math.isfinite(v) else None


def _headline(s: Score | None) -> float | None:
    return None if s is None else s.metrics.get(s.primary_metric)


def _score_view(s: Score) -> ScoreView:
    return ScoreView(
        scorer=s.scorer,
        model=s.scorer_model,
        metrics=dict(s.metrics),
        primary_metric=s.primary_metric,
        interval=s.interval,
        n_excerpts=s.n_excerpts,
        n_tokens=s.n_tokens,
        flags=list(s.flags),
    )


def _excerpt_order(s: SequenceSimulation) -> tuple[int, int, str]:
    kind, _, num = s.excerpt_id.partition(":")
    return (0 if s.role == "test" else 1, 0 if kind == "top" else 1, num.zfill(8))


def record_excerpt(rec: NeuronRecord, excerpt_id: str) -> ActivationRecord | None:
    """The record's excerpt an excerpt id ("top:3", "random:7") names, if it has it."""
    kind, _, num = excerpt_id.partition(":")
    pool = {"top": rec.most_positive_activation_records, "random": rec.random_sample}.get(kind)
    if pool is None or not num.isdigit() or int(num) >= len(pool):
        return None
    return pool[int(num)]


class ReportData:
    """Indexes a loaded run once, then builds summaries and per-unit details on demand."""

    def __init__(
        self,
        run: Run,
        max_record_excerpts: int = 5,
        max_top_images: int = 12,
        max_random_images: int = 8,
    ):
        self.run = run
        self.max_record_excerpts = max_record_excerpts
        self.max_top_images = max_top_images
        self.max_random_images = max_random_images
        self.store = ImageStore(run.path)
        # (picture, map, scale) -> (key, data URL, None) or (None, None, why it is missing)
        self._pictures: dict[tuple[Any, ...], tuple[str | None, str | None, str | None]] = {}
        self.typographic: dict[str, list[TypographicResult]] = defaultdict(list)
        for t in read_typographic(run.path):
            if t.explanation_id is not None:
                self.typographic[t.explanation_id].append(t)
        self.records = run.records_by_unit()
        self.primary = default_scorer(run)
        # The scorers in display order (the primary first); per scorer, explanation -> score.
        self.scorer_names = sorted(run.scorers(), key=lambda name: name != self.primary)
        self.by_scorer: dict[str, dict[str, Score]] = {
            name: {s.explanation_id: s for s in run.latest_scores(name)}
            for name in self.scorer_names
        }
        self.scores: dict[str, Score] = self.by_scorer.get(self.primary or "", {})
        self.sims = run.simulations_by_explanation()
        self.by_unit: dict[str, list[Explanation]] = defaultdict(list)
        for e in run.explanations_by_id().values():
            self.by_unit[e.unit_id].append(e)
        self.unit_ids = run.unit_ids()
        self._index = {u: i for i, u in enumerate(self.unit_ids)}

    def __contains__(self, unit_id: str) -> bool:
        return unit_id in self._index

    def _ids(self, unit_id: str) -> tuple[str | None, str | None, int | None]:
        model, layer, index = split_unit_id(unit_id)
        rec = self.records.get(unit_id)
        if rec is not None:
            model = rec.model or model
            layer = str(rec.layer) if rec.layer is not None else layer
            index = rec.index if rec.index is not None else index
        idx = int(index) if str(index).lstrip("-").isdigit() else None
        return model or None, (str(layer) if layer != "" else None), idx

    def _ranked(self, unit_id: str) -> list[tuple[Explanation, Score | None]]:
        """The unit's explanations, best score first, unscored last."""
        pairs = [(e, self.scores.get(e.explanation_id)) for e in self.by_unit.get(unit_id, [])]
        return sorted(pairs, key=lambda p: (_headline(p[1]) is None, -(_headline(p[1]) or 0.0)))

    def _picture(
        self, ref: ImageRef, scale_max: float | None
    ) -> tuple[str | None, str | None, str | None]:
        """(key, data URL, None) of the thumbnail with the map over it, or (None, None, why)."""
        drawn = ref.spatial and scale_max is not None and scale_max > 0
        spatial = tuple(map(tuple, ref.spatial or [])) if drawn else None
        key = (ref.sha256, ref.thumbnail, spatial, scale_max if spatial else None)
        if key not in self._pictures:
            # Named by what is drawn (the same in every thread and every report).
            name = hashlib.sha256(repr(key).encode("utf-8")).hexdigest()[:24]
            from neuroscribe.vision.overlay import overlay
            from neuroscribe.vision.store import image_data_url, thumbnail_of

            try:
                try:
                    pic = self.store.open(ref, thumbnail=True)
                except DataError:  # no thumbnail: make one from the picture
                    pic = thumbnail_of(self.store.open(ref))
                if spatial is not None and scale_max is not None:
                    pic = overlay(pic, ref.spatial or [], scale_max)
                # Re-encoded here, so the page only ever holds PNGs this code wrote.
                self._pictures[key] = (name, image_data_url(pic), None)
            except (DataError, ValueError, OSError):
                # Not the file's path: a served report should not show where runs live.
                why = f"picture {ref.sha256[:12]} is missing from the run or unreadable"
                self._pictures[key] = (None, None, why)
        return self._pictures[key]

    def image_view(
        self, ref: ImageRef, scale_max: float | None, pictures: dict[str, str]
    ) -> ImageView:
        """The picture's view; its data URL goes into `pictures` (the unit's, once)."""
        name, src, missing = self._picture(ref, scale_max)
        if name is not None and src is not None:
            pictures[name] = src
        return ImageView(
            sha256=ref.sha256,
            picture=name,
            missing=missing,
            caption=ref.caption,
            labels=list(ref.labels),
            width=ref.width,
            height=ref.height,
            has_map=bool(ref.spatial) and (scale_max or 0.0) > 0 and src is not None,
        )

    def _gallery(
        self,
        records: list[ActivationRecord],
        kind: str,
        limit: int,
        scale_max: float,
        simulated: dict[str, float | None],
        pictures: dict[str, str],
    ) -> list[ExcerptView]:
        out = []
        for i, r in enumerate(records[:limit]):
            if r.image is None:
                continue
            excerpt_id = f"{kind}:{i}"
            sim = simulated.get(excerpt_id)
            out.append(
                ExcerptView(
                    excerpt_id=excerpt_id,
                    kind=kind,
                    role="record",
                    tokens=r.tokens,
                    true=[_finite(a) for a in r.activations],
                    simulated=[sim] if excerpt_id in simulated else None,
                    image=self.image_view(r.image, scale_max, pictures),
                )
            )
        return out

    def _typographic_views(
        self, explanation_id: str, pictures: dict[str, str]
    ) -> list[TypographicView]:
        views = []
        for t in self.typographic.get(explanation_id, []):
            probes = [
                ProbeView(
                    kind=p.kind,
                    word=p.word,
                    activation=_finite(p.activation),
                    image=self.image_view(p.image, None, pictures),
                )
                for p in t.probes
            ]
            views.append(
                TypographicView(
                    subject=t.subject,
                    summary=t.summary,
                    key_words=list(t.key_words),
                    word_ratio=t.word_ratio,
                    control_ratio=t.control_ratio,
                    attack_effect=t.attack_effect,
                    text_tower=t.text_tower.note if t.text_tower is not None else None,
                    probes=probes,
                )
            )
        return views

    def meta(self) -> ReportMeta:
        scored = [v for s in self.scores.values() if (v := _headline(s)) is not None]
        infos = []
        for name in self.scorer_names:
            scores = list(self.by_scorer[name].values())
            infos.append(
                ScorerInfo(
                    name=name,
                    models=sorted({s.scorer_model for s in scores if s.scorer_model}),
                    metrics=list(dict.fromkeys(m for s in scores for m in s.metrics)),
                    primary_metric=scores[0].primary_metric,
                    n_scored=len(scores),
                )
            )
        return ReportMeta(
            run=self.run.name,
            n_units=len(self.unit_ids),
            n_explanations=sum(len(v) for v in self.by_unit.values()),
            n_scored=len(scored),
            mean_score=sum(scored) / len(scored) if scored else None,
            primary_scorer=self.primary,
            primary_metric=infos[0].primary_metric if infos else None,
            explainers=sorted({e.explainer for v in self.by_unit.values() for e in v}),
            simulators=infos[0].models if infos else [],
            scorers=infos,
        )

    def summary(self, unit_id: str) -> UnitSummary:
        model, layer, index = self._ids(unit_id)
        ranked = self._ranked(unit_id)
        scored = [v for _, s in ranked if (v := _headline(s)) is not None]
        return UnitSummary(
            unit_id=unit_id,
            model=model,
            layer=layer,
            index=index,
            n_explanations=len(ranked),
            best_score=max(scored) if scored else None,
            mean_score=sum(scored) / len(scored) if scored else None,
            best_explanation=ranked[0][0].text if ranked else None,
            explanations=[e.text for e, _ in ranked],
        )

    def summaries(self) -> list[UnitSummary]:
        return [self.summary(u) for u in self.unit_ids]

    def detail(self, unit_id: str) -> UnitDetail:
        model, layer, index = self._ids(unit_id)
        rec = self.records.get(unit_id)
        images = rec is not None and rec.modality == "image"
        # The maps of one unit's pictures share one scale: its strongest activation.
        unit_max = 0.0
        if rec is not None and images:
            tops = [r.max_activation for r in rec.most_positive_activation_records]
            unit_max = max([rec.max_activation or 0.0, *tops])
        views: list[ExplanationView] = []
        pictures: dict[str, str] = {}
        true_max = 0.0
        scale_max = 10
        for e, s in self._ranked(unit_id):
            excerpts = []
            for sim in sorted(self.sims.get(e.explanation_id, []), key=_excerpt_order):
                true = [_finite(a) for a in sim.true_activations]
                true_max = max([true_max, *(a for a in true if a is not None)])
                scale_max = sim.scale_max
                picture = None
                if images and rec is not None:
                    ex = record_excerpt(rec, sim.excerpt_id)
                    # Only when the record still holds that excerpt (not re-recorded since).
                    if ex is not None and ex.image is not None and ex.tokens == sim.tokens:
                        picture = self.image_view(ex.image, unit_max, pictures)
                excerpts.append(
                    ExcerptView(
                        excerpt_id=sim.excerpt_id,
                        kind=sim.kind,
                        role=sim.role,
                        tokens=sim.tokens,
                        true=true,
                        simulated=[_finite(a) for a in sim.expected_activations],
                        image=picture,
                    )
                )
            views.append(
                ExplanationView(
                    explanation_id=e.explanation_id,
                    text=e.text,
                    explainer=e.explainer,
                    simulator=s.scorer_model if s else None,
                    score=_headline(s),
                    flags=list(s.flags) if s else [],
                    scores=[
                        _score_view(x)
                        for name in self.scorer_names
                        if (x := self.by_scorer[name].get(e.explanation_id)) is not None
                    ],
                    excerpts=excerpts,
                    typographic=self._typographic_views(e.explanation_id, pictures)
                    if images
                    else [],
                )
            )
        top_images: list[ExcerptView] = []
        random_images: list[ExcerptView] = []
        if images and rec is not None:
            # The top-ranked explanation's simulation of each picture it simulated.
            best = {
                x.excerpt_id: x.simulated[0] if x.simulated else None
                for x in (views[0].excerpts if views else [])
                if x.image is not None
            }
            top_images = self._gallery(
                rec.most_positive_activation_records,
                "top",
                self.max_top_images,
                unit_max,
                best,
                pictures,
            )
            random_images = self._gallery(
                rec.random_sample, "random", self.max_random_images, unit_max, best, pictures
            )
            for x in top_images:
                true_max = max([true_max, *(a for a in x.true if a is not None)])
        record_excerpts: list[ExcerptView] = []
        if rec is not None and not images and not any(v.excerpts for v in views):
            top: list[ActivationRecord] = rec.most_positive_activation_records
            for i, r in enumerate(top[: self.max_record_excerpts]):
                true_max = max(true_max, r.max_activation)
                record_excerpts.append(
                    ExcerptView(
                        excerpt_id=f"top:{i}",
                        kind="top",
                        role="record",
                        tokens=r.tokens,
                        true=list(r.activations),
                    )
                )
        if rec is not None and rec.max_activation is not None:
            true_max = max(true_max, rec.max_activation)
        return UnitDetail(
            unit_id=unit_id,
            model=model,
            layer=layer,
            index=index,
            max_activation=rec.max_activation if rec is not None else None,
            true_max=true_max,
            scale_max=scale_max,
            explanations=views,
            record_excerpts=record_excerpts,
            modality="image" if images else "text",
            top_images=top_images,
            random_images=random_images,
            pictures=pictures,
        )
