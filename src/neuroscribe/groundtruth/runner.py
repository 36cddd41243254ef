"""Run the ground-truth checks against real backends (the I/O edge of `check`).

`check_simulator_async` builds the simulator exactly as a run would (same backends,
strategies, prompt versions, endpoint options) and ranks every unit's explanations.
`check_explainer_async` has an explainer explain every unit from its explain excerpts,
then scores the explanation with the simulator against the rule's activations, beside
the true and false explanations' scores under the same simulator.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from neuroscribe.config import RunConfig
from neuroscribe.errors import ConfigError
from neuroscribe.groundtruth.check import (
    CheckReport,
    UnitCheck,
    bootstrap_mean,
    candidate_score,
    check_simulator,
    check_unit,
    simulate_with,
)
from neuroscribe.groundtruth.suite import GroundTruthUnit, builtin_suite_path, load_suite, select
from neuroscribe.schema import ActivationRecord, NeuronRecord, Usage, utc_now


@asynccontextmanager
async def _backend(config: RunConfig, spec: str, timeout: float, given: Any):
    """The given backend (left open: its owner closes it), or `spec` opened and closed."""
    if given is not None:
        yield given
        return
    from neuroscribe.api import open_model

    async with open_model(spec, config, timeout) as llm:
        yield llm


def suite_name(path: str | Path | None) -> str:
    return "builtin" if path is None or Path(path) == builtin_suite_path() else str(path)


def _free(spec: str) -> bool:
    from neuroscribe.llm.registry import backend_info

    return backend_info(spec).free


def _priced(usage: Usage, spec: str) -> Usage:
    # An in-process model costs nothing per token; say 0, not "unknown".
    if usage.cost_usd is None and _free(spec):
        usage.cost_usd = 0.0
    return usage


async def _simulator(config: RunConfig, llm: Any) -> tuple[Any, dict[str, Any]]:
    from neuroscribe.simulator import make_simulator

    sec = config.score
    return await make_simulator(
        llm, sec.strategy, n_examples=sec.n_examples, prompt_version=sec.prompt
    )


async def check_simulator_async(
    config: RunConfig,
    *,
    suite: str | Path | None = None,
    split: str = "test",
    max_units: int | None = None,
    on_unit: Callable[[UnitCheck], None] | None = None,
    llm: Any = None,
) -> CheckReport:
    """Rank true against false explanations on every unit of the suite's split.

    `llm`: a backend to use instead of opening `config.score.model` (a notebook's own).
    """
    units = select(load_suite(suite), split)[:max_units]
    sec = config.score
    async with _backend(config, sec.model, sec.timeout, llm) as llm:
        sim, _ = await _simulator(config, llm)
        base = simulate_with(sim)

        async def simulate(text: str, excerpts: Sequence[Sequence[str]]):
            predicted, usage = await base(text, excerpts)
            return predicted, _priced(usage, sec.model)

        return await check_simulator(
            units,
            simulate,
            simulator=sec.model,
            strategy=sim.strategy,
            prompt_version=sim.prompt_version,
            suite=suite_name(suite),
            split=split,
            on_unit=on_unit,
        )


# -- explainers --------------------------------------------------------------------------


class ExplainerUnitCheck(BaseModel):
    unit_id: str
    category: str
    true_explanation: str
    explanation: str | None  # None: the explainer produced no usable explanation
    error: str | None = None
    score: float | None = None
    true_score: float | None = None
    best_false_score: float | None = None
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0

    @property
    def recovered(self) -> bool:
        """The explanation scores above every false explanation of the unit."""
        return (
            self.score is not None
            and self.best_false_score is not None
            and self.score > self.best_false_score
        )


class ExplainerCheckReport(BaseModel):
    kind: str = "explainer"
    explainer: str
    method: str
    explain_prompt: str | None = None
    simulator: str
    strategy: str
    prompt_version: str
    suite: str
    split: str
    created_at: str = Field(default_factory=utc_now)
    n_units: int
    recovery_rate: float
    mean_score: float
    mean_true_score: float
    score_interval: tuple[float, float] | None
    failed: int
    prompt_tokens_per_unit: float
    simulator_check: dict[str, Any] | None = None
    units: list[ExplainerUnitCheck]


def unit_record(unit: GroundTruthUnit) -> NeuronRecord:
    """A NeuronRecord of a suite unit: its explain excerpts as top activations."""
    top = [
        ActivationRecord(tokens=e.tokens, activations=e.activations)
        for e in unit.explain_excerpts or unit.score_excerpts
    ]
    acts = [a for r in top for a in r.activations]
    return NeuronRecord(
        unit_id=f"groundtruth/{unit.id}",
        model="groundtruth",
        layer="groundtruth",
        index=0,
        most_positive_activation_records=top,
        max_activation=max(acts) if acts else None,
    )


async def check_explainer_async(
    config: RunConfig,
    *,
    suite: str | Path | None = None,
    split: str = "test",
    max_units: int | None = None,
    on_unit: Callable[[ExplainerUnitCheck], None] | None = None,
    explain_llm: Any = None,
    simulate_llm: Any = None,
) -> ExplainerCheckReport:
    """Explain every synthetic unit and score the explanation against the known rule."""
    from neuroscribe.explainer.base import ExplainTask
    from neuroscribe.explainer.registry import explainer_factory
    from neuroscribe.groundtruth.store import find_check
    from neuroscribe.splits import Excerpt

    units = select(load_suite(suite), split)[:max_units]
    ex, sec = config.explain, config.score
    factory = explainer_factory(ex.explainer)
    results: list[ExplainerUnitCheck] = []
    async with (
        _backend(config, ex.model, ex.timeout, explain_llm) as explain_llm,
        _backend(config, sec.model, sec.timeout, simulate_llm) as sim_llm,
    ):
        sim, _ = await _simulator(config, sim_llm)
        simulate = simulate_with(sim)
        extra: dict[str, Any] = {}
        if getattr(factory, "selects", False):
            extra = await _selecting_parts(config, factory, sim_llm)
        explainer = factory(explain_llm, ex.settings, **extra)
        for unit in units:
            start = time.perf_counter()
            record = unit_record(unit)
            train = [
                Excerpt(excerpt_id=f"top:{i}", kind="top", role="train", record=r)
                for i, r in enumerate(record.most_positive_activation_records)
            ]
            validation = [
                Excerpt(f"validation:{i}", e.kind, "validation", r)
                for i, (e, r) in enumerate(_validation(unit))
            ]
            outcome = await explainer.explain(
                ExplainTask(record, train, samples=[0], validation=validation)
            )
            usage = _priced(outcome.usage, ex.model)
            if outcome.selection_usage.requests or outcome.selection_usage.prompt_tokens:
                usage = usage.add(_priced(outcome.selection_usage, outcome.selection_model))
            ranked = await check_unit(unit, simulate)
            usage = usage.add(ranked.usage)
            row = ExplainerUnitCheck(
                unit_id=unit.id,
                category=unit.category,
                true_explanation=unit.explanation,
                explanation=outcome.texts[0][1] if outcome.texts else None,
                true_score=ranked.true_score,
                best_false_score=ranked.best_false,
            )
            if row.explanation is None:
                raw = outcome.failed[0][1] if outcome.failed else ""
                row.error = f"no usable explanation (raw answer: {raw[:120]!r})"
            else:
                excerpts = unit.score_excerpts
                predicted, used = await simulate(row.explanation, [e.tokens for e in excerpts])
                usage = usage.add(used)
                row.score = candidate_score([e.activations for e in excerpts], predicted)
            row.usage = usage
            row.seconds = time.perf_counter() - start
            results.append(row)
            if on_unit is not None:
                on_unit(row)
    if not results:
        raise ValueError("no units were checked")
    scores = [r.score if r.score is not None else 0.0 for r in results]
    return ExplainerCheckReport(
        explainer=ex.model,
        method=ex.explainer,
        explain_prompt=ex.settings.prompt,
        simulator=sec.model,
        strategy=sim.strategy,
        prompt_version=sim.prompt_version,
        suite=suite_name(suite),
        split=split,
        n_units=len(results),
        recovery_rate=sum(r.recovered for r in results) / len(results),
        mean_score=float(np.mean(scores)),
        mean_true_score=float(np.mean([r.true_score or 0.0 for r in results])),
        score_interval=bootstrap_mean(scores),
        failed=sum(r.explanation is None for r in results),
        prompt_tokens_per_unit=float(np.mean([r.usage.prompt_tokens for r in results])),
        simulator_check=find_check(sec.model, sim.strategy, sim.prompt_version),
        units=results,
    )


def _validation(unit: GroundTruthUnit) -> list[tuple[Any, ActivationRecord]]:
    """What a choosing explainer chooses on: the unit's validation excerpts, else (the
    built-in suite has none) its explain excerpts — never the score excerpts."""
    chosen = unit.validation_excerpts or unit.explain_excerpts
    return [(e, ActivationRecord(tokens=e.tokens, activations=e.activations)) for e in chosen]


async def _selecting_parts(config: RunConfig, factory: Any, sim_llm: Any) -> dict[str, Any]:
    """best-of-k / revision on suite units: the selector (on the simulator's model unless
    the select section names another) and, for revision, the units' rules as the probe."""
    from neuroscribe.explainer.select import Selector
    from neuroscribe.groundtruth.probe import RuleProbe
    from neuroscribe.scorer.registry import scorer_factory

    sel, sec = config.explain.select, config.score
    if sel.model is not None and sel.model != sec.model:
        raise ConfigError(
            "the ground-truth check chooses with the simulator's model; leave the "
            "selection scorer's model unset (it is the --simulator)"
        )
    scorer = await scorer_factory(sel.scorer).build(
        sim_llm, strategy=sec.strategy, n_examples=sec.n_examples, prompt_version=sec.prompt
    )
    return {
        "select": sel,
        "selector": Selector(scorer),
        "validation": (0, 0),
        "probe": RuleProbe() if getattr(factory, "probes_subject", False) else None,
    }


def run_sync(coro):
    return asyncio.run(coro)
