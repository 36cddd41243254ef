"""Score stages: any `Scorer` over a run's explanations, and re-scoring stored simulations.

`ScoreStage` is generic: keyed per (explanation, scorer config); it hands the scorer the
explanation, the unit's splits and whatever lines an interrupted attempt stored, and
writes the scorer's extra lines and then one generic `Score` line. It refuses, before
anything is sent, split settings that would score an explanation on excerpts its
explainer saw. `RescoreStage` (the `score` command) recomputes correlation scores from
simulations already in the run, with no model at all.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neuroscribe.errors import DataError, OutputError
from neuroscribe.schema import (
    SIMILARITY_STRATEGIES,
    Explanation,
    ItemKey,
    NeuronRecord,
    Score,
    SequenceSimulation,
)
from neuroscribe.scorer.base import ScoreOutcome, Scorer, ScoreTask, fingerprint, heldout_hash
from neuroscribe.scorer.simulation import outcome_from_simulations, simulation_comparable
from neuroscribe.splits import SplitConfig, Splits, split_record
from neuroscribe.stages.base import Estimate, Plan, StageBase, WorkItem, WorkResult
from neuroscribe.stages.explain import usage_record

if TYPE_CHECKING:
    from neuroscribe.rundir import RunDir

# Output files a scorer may store per-excerpt lines in (the simulation scorer's).
_STORED = ("simulations",)


def make_score(
    e: Explanation, outcome: ScoreOutcome, *, scorer: str, model: str | None, h: str, **kw: Any
) -> Score:
    return Score(
        explanation_id=e.explanation_id,
        unit_id=e.unit_id,
        explanation=e.text,
        explainer=e.explainer,
        scorer=scorer,
        scorer_model=model,
        config_hash=h,
        metrics=outcome.metrics,
        primary_metric=outcome.primary_metric,
        interval=outcome.interval,
        n_excerpts=outcome.n_excerpts,
        n_tokens=outcome.n_tokens,
        details=outcome.details,
        flags=outcome.flags,
        **kw,
    )


class ScoreStage(StageBase):
    def __init__(
        self,
        scorer: Scorer,
        records: Sequence[NeuronRecord],
        splits: SplitConfig,
        *,
        extra_explanations: Sequence[Explanation] = (),
    ) -> None:
        self.scorer = scorer
        self.name = scorer.stage
        self.model = scorer.model or ""
        self.records = {r.unit_id: r for r in records}
        self.splits = splits
        self.extra = list(extra_explanations)
        self._explanations: dict[str, Explanation] = {}
        self._splits: dict[str, Splits] = {}
        self._stored: dict[str, list[Any]] = {}

    def config(self) -> dict[str, Any]:
        return {**self.scorer.config(), "splits": self.splits.hashed()}

    def probes(self) -> dict[str, Any]:
        probe = getattr(self.scorer, "probe", None)
        return {self.model: probe} if probe and self.model else {}

    def _splits_of(self, unit_id: str) -> Splits:
        if unit_id not in self._splits:
            self._splits[unit_id] = split_record(self.records[unit_id], self.splits)
        return self._splits[unit_id]

    def plan(self, run: RunDir, *, retry_failed: bool = False) -> Plan:
        h = self.config_hash
        explanations = [e for e in [*run.explanations(), *self.extra] if e.unit_id in self.records]
        self._explanations = {e.explanation_id: e for e in explanations}
        done = {s.explanation_id for s in run.scores() if s.config_hash == h}
        stored: dict[str, list[Any]] = {}
        for name in _STORED:
            for line in run.read(name):  # type: ignore[arg-type]
                if line.config_hash == h:
                    stored.setdefault(line.explanation_id, []).append(line)
        self._stored = stored
        failed = {f.item_key for f in run.failures()} if not retry_failed else set()
        items, skipped = [], 0
        for e in self._explanations.values():
            held = self._splits_of(e.unit_id).held_out
            leaked = {x.excerpt_id for x in held} & set(e.train_excerpts)
            chosen_on = {x.excerpt_id for x in held} & set(e.validation_excerpts)
            if chosen_on:
                raise DataError(
                    f"unit {e.unit_id}: held-out excerpts {sorted(chosen_on)} were used to "
                    "select its explanation (validation); score with the split settings "
                    "the explanations were made with"
                )
            if leaked:
                raise DataError(
                    f"unit {e.unit_id}: held-out excerpts {sorted(leaked)} were shown to the "
                    "explainer of its explanation; use the split settings (--n-train, "
                    "--n-test-top, --n-test-random) the explanations were made with"
                )
            key = ItemKey(
                stage=self.name, config_hash=h, unit_id=e.unit_id, explanation_id=e.explanation_id
            )
            if e.explanation_id in done or key in failed:
                skipped += 1
                continue
            items.append(WorkItem(key=key))
        return Plan(items, skipped)

    def _task(self, item: WorkItem) -> ScoreTask:
        e = self._explanations[item.explanation_id or ""]
        return ScoreTask(
            explanation=e,
            record=self.records[e.unit_id],
            splits=self._splits_of(e.unit_id),
            config_hash=self.config_hash,
            stored=list(self._stored.get(e.explanation_id, [])),
        )

    async def do(self, item: WorkItem) -> WorkResult:
        task = self._task(item)
        t0 = time.perf_counter()
        try:
            outcome = await self.scorer.score(task)
        except OutputError as err:
            # The unusable answers were paid for: their usage goes to usage.jsonl too.
            if err.usage is not None:
                err.usage_records = [  # type: ignore[attr-defined]
                    usage_record(
                        self.name, self.model, item.unit_id, err.usage, time.perf_counter() - t0
                    )
                ]
            raise
        latency = time.perf_counter() - t0
        score = make_score(
            task.explanation,
            outcome,
            scorer=self.scorer.name,
            model=self.scorer.model,
            h=self.config_hash,
            heldout_hash=heldout_hash(task.heldout),
            comparable=self.scorer.comparable(),
        )
        usage = []
        if outcome.usage.requests or outcome.usage.cached_requests or outcome.usage.prompt_tokens:
            usage = [usage_record(self.name, self.model, item.unit_id, outcome.usage, latency)]
        return WorkResult(writes={**outcome.writes, "scores": [score]}, usage=usage)

    def estimate(self, item: WorkItem) -> Estimate:
        return self.scorer.estimate(self._task(item))


IMAGE_SIMULATION_PREFIX = "simulate-images"


class RescoreStage(StageBase):
    """Correlation scores for simulated explanations that have none yet (pure maths)."""

    name = "score"
    model = ""

    def __init__(self, *, sim_config_hash: str | None = None, seed: int = 0) -> None:
        self.sim_config_hash = sim_config_hash
        self.seed = seed
        self._groups: dict[tuple[str, str], list[SequenceSimulation]] = {}
        self._explanations: dict[str, Explanation] = {}

    def config(self) -> dict[str, Any]:
        return {"scorer": "simulation", "from": "stored simulations", "seed": self.seed}

    @property
    def config_hash(self) -> str:
        return self.sim_config_hash or "all"

    def plan(self, run: RunDir, *, retry_failed: bool = False) -> Plan:
        # Similarity scorers' per-image lines are similarities, not simulations: their own
        # scorer reuses them when it resumes (ScoreTask.stored).
        sims = [s for s in run.simulations() if s.strategy not in SIMILARITY_STRATEGIES]
        if self.sim_config_hash:
            sims = [s for s in sims if s.config_hash == self.sim_config_hash]
        self._explanations = {e.explanation_id: e for e in run.explanations()}
        scored = {(s.explanation_id, s.config_hash) for s in run.scores()}
        groups: dict[tuple[str, str], dict[str, SequenceSimulation]] = {}
        for s in sims:
            groups.setdefault((s.explanation_id, s.config_hash), {})[s.excerpt_id] = s
        self._groups = {k: list(v.values()) for k, v in groups.items()}
        items, skipped = [], 0
        for (eid, h), _group in self._groups.items():
            if (eid, h) in scored:
                skipped += 1
                continue
            if eid not in self._explanations:
                raise DataError(
                    f"{run.path('simulations')}: simulations of unknown explanation {eid}"
                )
            unit = self._explanations[eid].unit_id
            items.append(
                WorkItem(
                    key=ItemKey(stage=self.name, config_hash=h, unit_id=unit, explanation_id=eid)
                )
            )
        return Plan(items, skipped)

    async def do(self, item: WorkItem) -> WorkResult:
        h = item.key.config_hash
        group = self._groups[(item.explanation_id or "", h)]
        e = self._explanations[item.explanation_id or ""]
        outcome = outcome_from_simulations(group, self.seed)
        first = group[0]
        score = make_score(
            e,
            outcome,
            # Image units' simulations are the image-simulation scorer's.
            scorer="image-simulation"
            if first.prompt_version.startswith(IMAGE_SIMULATION_PREFIX)
            else "simulation",
            model=first.simulator,
            h=h,
            heldout_hash=fingerprint(
                (s.excerpt_id, s.role, s.tokens, s.true_activations) for s in group
            ),
            comparable=simulation_comparable(first.simulator, first.strategy, first.prompt_version),
        )
        return WorkResult(writes={"scores": [score]})

    def estimate(self, item: WorkItem) -> Estimate:
        return Estimate()
