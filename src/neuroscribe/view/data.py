"""What the report shows, as plain models: a summary per unit and a detail view per unit.

Both the self-contained file and the server send exactly these models as JSON; the page's
script renders them with `textContent`, so no string here is ever parsed as HTML.

Every scorer's score of an explanation is sent with its metrics by name (`ScoreView`),
and the page renders whatever metrics it finds, so a new scorer shows up without edits.
The headline `score` (sorting, badge, the unit list's best and mean) is the primary
scorer's primary metric: the simulation scorer if the run has it, else its first scorer.
"""

from __future__ import annotations

import math
from collections import defaultdict

from pydantic import BaseModel

from neuroscribe.compare import default_scorer
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    Score,
    ScoreInterval,
    SequenceSimulation,
)


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


class ExcerptView(BaseModel):
    excerpt_id: str
    kind: str
    role: str
    tokens: list[str]
    true: list[float | None]
    simulated: list[float | None] | None = None


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


class ReportData:
    """Indexes a loaded run once, then builds summaries and per-unit details on demand."""

    def __init__(self, run: Run, max_record_excerpts: int = 5):
        self.run = run
        self.max_record_excerpts = max_record_excerpts
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
        views: list[ExplanationView] = []
        true_max = 0.0
        scale_max = 10
        for e, s in self._ranked(unit_id):
            excerpts = []
            for sim in sorted(self.sims.get(e.explanation_id, []), key=_excerpt_order):
                true = [_finite(a) for a in sim.true_activations]
                true_max = max([true_max, *(a for a in true if a is not None)])
                scale_max = sim.scale_max
                excerpts.append(
                    ExcerptView(
                        excerpt_id=sim.excerpt_id,
                        kind=sim.kind,
                        role=sim.role,
                        tokens=sim.tokens,
                        true=true,
                        simulated=[_finite(a) for a in sim.expected_activations],
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
                )
            )
        record_excerpts: list[ExcerptView] = []
        if rec is not None and not any(v.excerpts for v in views):
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
        )
