"""The ground-truth check for any scorer, not only simulation.

Every suite unit becomes a scoring task as a run would build it: its `explain` excerpts
are the train split (no scorer sees them), its `score` excerpts the held-out test split
(top and random as the builder picked them; a contrast window counts as a top excerpt
when it reaches half the unit's peak, else as a random one, which makes it a hard
negative for the classifiers). Each candidate explanation is scored by the scorer under
study; the scorer's headline metric ranks them, and the same summary as the simulator
check says how often the true explanation comes first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from neuroscribe.groundtruth.check import CandidateResult, CheckSummary, UnitCheck, summarize
from neuroscribe.groundtruth.suite import GroundTruthUnit, load_suite, select
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord, Usage
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.splits import Excerpt, Splits


def suite_task_parts(unit: GroundTruthUnit) -> tuple[NeuronRecord, Splits]:
    """The record and splits a run would hold for this unit (see the module docstring)."""
    score = unit.score_excerpts
    peak = max((max(e.activations) for e in score if e.kind == "top"), default=0.0)
    top: list[ActivationRecord] = []
    rand: list[ActivationRecord] = []
    test: list[Excerpt] = []
    for e in score:
        rec = ActivationRecord(tokens=list(e.tokens), activations=list(e.activations))
        hot = e.kind == "top" or (
            e.kind == "contrast" and peak > 0 and rec.max_activation >= peak / 2
        )
        group, kind = (top, "top") if hot else (rand, "random")
        group.append(rec)
        test.append(Excerpt(f"{kind}:{len(group) - 1}", kind, "test", rec))
    train = []
    for e in unit.explain_excerpts:
        rec = ActivationRecord(tokens=list(e.tokens), activations=list(e.activations))
        top.append(rec)
        train.append(Excerpt(f"top:{len(top) - 1}", "top", "train", rec))
    record = NeuronRecord(
        unit_id=f"groundtruth/{unit.id}",
        most_positive_activation_records=top,
        random_sample=rand,
    )
    return record, Splits(train=train, test=test, calibration=[])


def candidate_task(unit: str, record: NeuronRecord, splits: Splits, i: int, text: str) -> ScoreTask:
    """Candidate `i` of a ground-truth unit as a scoring task (as if explained from train)."""
    explanation = Explanation(
        explanation_id=f"{unit}:{i}",
        unit_id=record.unit_id,
        sample_index=i,
        text=text,
        explainer="groundtruth",
        prompt_version="groundtruth",
        config_hash="groundtruth",
        train_excerpts=[x.excerpt_id for x in splits.train],
    )
    return ScoreTask(explanation, record, splits, "groundtruth")


async def score_candidates(
    scorer: Any,
    candidates: Sequence[tuple[str, str]],
    oracle: dict[str, float | None],
    task_of: Callable[[int, str], ScoreTask],
) -> tuple[list[CandidateResult], Usage]:
    """Score each (kind, text) candidate; a candidate the scorer fails on keeps its error
    (never a score of zero). `oracle`: a false candidate's best possible score."""
    from neuroscribe.errors import NeuroscribeError

    results, usage = [], Usage()
    for i, (kind, text) in enumerate(candidates):
        try:
            out = await scorer.score(task_of(i, text))
        except NeuroscribeError as e:
            results.append(CandidateResult(kind=kind, text=text, score=None, error=str(e)[:300]))
            continue
        usage = usage.add(out.usage)
        results.append(
            CandidateResult(
                kind=kind,
                text=text,
                score=out.metrics.get(out.primary_metric),
                oracle_score=1.0 if kind == "true" else oracle.get(text),
            )
        )
    return results, usage


async def check_scorer_units(
    units: Sequence[GroundTruthUnit], scorer: Any
) -> tuple[CheckSummary, list[UnitCheck]]:
    """Score every candidate of every unit with `scorer`; rank by its headline metric."""
    checked = []
    for unit in units:
        record, splits = suite_task_parts(unit)
        oracle = {f.text: f.oracle_score for f in unit.false_explanations}

        def task_of(i: int, text: str, record=record, splits=splits, unit=unit) -> ScoreTask:
            return candidate_task(unit.id, record, splits, i, text)

        results, usage = await score_candidates(scorer, unit.candidates(), oracle, task_of)
        checked.append(
            UnitCheck(
                unit_id=unit.id,
                category=unit.category,
                split=unit.split,
                candidates=results,
                usage=usage,
            )
        )
    return summarize(checked), checked


async def check_scorer_async(
    scorer: Any, *, suite: str | None = None, split: str = "test", max_units: int | None = None
) -> tuple[CheckSummary, list[UnitCheck]]:
    """The ground-truth check of a built scorer on the suite's `split`."""
    units = select(load_suite(suite), split)[:max_units]
    return await check_scorer_units(units, scorer)


async def check_run_scorers_async(
    config: Any,
    scorers: Sequence[tuple[str, str | None]],
    *,
    suite: str | None = None,
    split: str = "test",
    max_units: int | None = None,
) -> dict[str, CheckSummary]:
    """Each (scorer, model) built as `neuroscribe score` builds it from `config`'s score
    section, then checked on the suite: {scorer: summary}."""
    from neuroscribe import api

    units = select(load_suite(suite), split)[:max_units]
    out = {}
    for cfg in api.scorer_configs(config, scorers):
        sec = cfg.score
        async with api.open_model(sec.model, cfg, sec.timeout) as llm:
            scorer = await api.build_scorer(llm, cfg)
            out[sec.scorer], _ = await check_scorer_units(units, scorer)
    return out
