"""Does a simulator tell true explanations from false ones? Measured on ground truth.

For each suite unit, every candidate explanation (the true one and its false ones) is
simulated on the unit's score excerpts and scored like any explanation (correlation of
simulated with true activations over all excerpts' tokens). A simulator worth trusting
ranks the true explanation first, by a clear margin. The maths here is pure; the only
I/O is the `simulate` callable.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from neuroscribe.groundtruth.suite import GroundTruthUnit
from neuroscribe.schema import Usage, utc_now
from neuroscribe.scorer.maths import correlation

CHECK_VERSION = 1

# Verdict thresholds: ranking the true explanation first on 75% of units with a clear
# mean margin is what "scores from this simulator mean something" takes; a margin whose
# interval reaches zero, or a top-1 rate near chance, means they are noise.
GOOD_TOP1 = 0.75
GOOD_MARGIN = 0.1

SimulateFn = Callable[
    [str, Sequence[Sequence[str]]], Awaitable[tuple[list[list[float | None]], Usage]]
]


class CandidateResult(BaseModel):
    kind: str  # "true" or the false explanation's kind
    text: str
    score: float | None  # None: the simulator gave no usable prediction
    oracle_score: float | None = None
    error: str | None = None


class UnitCheck(BaseModel):
    unit_id: str
    category: str
    split: str
    candidates: list[CandidateResult]
    usage: Usage = Field(default_factory=Usage)
    seconds: float = 0.0

    @property
    def true_score(self) -> float | None:
        return self.candidates[0].score

    @property
    def best_false(self) -> float | None:
        scores = [_value(c.score) for c in self.candidates[1:]]
        return max(scores) if scores else None

    @property
    def margin(self) -> float:
        return _value(self.true_score) - (self.best_false or 0.0)

    @property
    def true_first(self) -> bool:
        """Strictly above every false explanation (a tie is not a win)."""
        return self.margin > 0


def _value(score: float | None) -> float:
    # An explanation the simulator could not simulate gets no credit (0, the score of a
    # prediction that says nothing), never the benefit of the doubt.
    return 0.0 if score is None or not math.isfinite(score) else score


class CheckSummary(BaseModel):
    n_units: int
    top1_rate: float
    chance_rate: float
    mean_margin: float
    margin_interval: tuple[float, float] | None
    mean_true_score: float
    mean_false_score: float
    n_failed_candidates: int
    prompt_tokens_per_unit: float
    cost_per_unit_usd: float | None
    verdict: str
    trustworthy: bool


class CheckReport(BaseModel):
    """The result of `neuroscribe check simulator`: what the manifest and compare read."""

    check_version: int = CHECK_VERSION
    kind: str = "simulator"
    simulator: str
    strategy: str
    prompt_version: str
    suite: str
    split: str
    created_at: str = Field(default_factory=utc_now)
    summary: CheckSummary
    units: list[UnitCheck]

    def manifest_entry(self) -> dict[str, Any]:
        """The compact form recorded in a run's manifest."""
        s = self.summary
        return {
            "check_version": self.check_version,
            "simulator": self.simulator,
            "strategy": self.strategy,
            "prompt_version": self.prompt_version,
            "suite": self.suite,
            "split": self.split,
            "n_units": s.n_units,
            "top1_rate": s.top1_rate,
            "mean_margin": s.mean_margin,
            "margin_interval": s.margin_interval,
            "trustworthy": s.trustworthy,
            "verdict": s.verdict,
            "created_at": self.created_at,
        }


def candidate_score(
    truth: Sequence[Sequence[float]], predicted: Sequence[Sequence[float | None]]
) -> float:
    """Correlation over all excerpts' tokens, leaving out tokens without a prediction."""
    t, p = [], []
    for tv, pv in zip(truth, predicted, strict=True):
        for a, b in zip(tv, pv, strict=True):
            if b is not None:
                t.append(a)
                p.append(b)
    return correlation(t, p).value


def bootstrap_mean(values: Sequence[float], *, n: int = 2000, seed: int = 0):
    """95% percentile interval of the mean, resampling units."""
    if len(values) < 2:
        return None
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=np.float64)
    means = arr[rng.integers(0, arr.size, size=(n, arr.size))].mean(axis=1)
    lo, hi = np.quantile(means, [0.025, 0.975])
    return float(lo), float(hi)


def verdict(top1: float, chance: float, margin: float, interval) -> tuple[str, bool]:
    """One line a user can act on, and whether scores from this simulator can be trusted."""
    low = interval[0] if interval else margin
    if top1 >= GOOD_TOP1 and margin >= GOOD_MARGIN and low > 0:
        return (
            f"this simulator tells true explanations from false ones: true ranked first on "
            f"{top1:.0%} of units, mean margin {margin:+.2f}",
            True,
        )
    if low <= 0 or top1 <= chance * 1.5:
        return (
            f"this simulator cannot tell explanations apart: scores from it are noise "
            f"(true ranked first on {top1:.0%} of units, chance {chance:.0%}; "
            f"mean margin {margin:+.2f})",
            False,
        )
    return (
        f"this simulator discriminates weakly: true ranked first on {top1:.0%} of units "
        f"(chance {chance:.0%}), mean margin {margin:+.2f}; treat small score differences "
        "as noise",
        False,
    )


def summarize(units: Sequence[UnitCheck]) -> CheckSummary:
    if not units:
        raise ValueError("no units were checked")
    margins = [u.margin for u in units]
    top1 = sum(u.true_first for u in units) / len(units)
    chance = float(np.mean([1 / len(u.candidates) for u in units]))
    interval = bootstrap_mean(margins)
    falses = [_value(c.score) for u in units for c in u.candidates[1:]]
    failed = sum(c.score is None for u in units for c in u.candidates)
    costs = [u.usage.cost_usd for u in units]
    mean_margin = float(np.mean(margins))
    text, ok = verdict(top1, chance, mean_margin, interval)
    return CheckSummary(
        n_units=len(units),
        top1_rate=top1,
        chance_rate=chance,
        mean_margin=mean_margin,
        margin_interval=interval,
        mean_true_score=float(np.mean([_value(u.true_score) for u in units])),
        mean_false_score=float(np.mean(falses)) if falses else 0.0,
        n_failed_candidates=failed,
        prompt_tokens_per_unit=float(np.mean([u.usage.prompt_tokens for u in units])),
        cost_per_unit_usd=None if any(c is None for c in costs) else float(np.mean(costs)),
        verdict=text,
        trustworthy=ok,
    )


async def check_unit(unit: GroundTruthUnit, simulate: SimulateFn) -> UnitCheck:
    """Simulate and score every candidate explanation of one unit."""
    from neuroscribe.errors import NeuroscribeError

    excerpts = unit.score_excerpts
    tokens = [e.tokens for e in excerpts]
    truth = [e.activations for e in excerpts]
    oracle = {f.text: f.oracle_score for f in unit.false_explanations}
    usage = Usage()
    start = time.perf_counter()
    results = []
    for kind, text in unit.candidates():
        try:
            predicted, used = await simulate(text, tokens)
        except NeuroscribeError as e:
            results.append(CandidateResult(kind=kind, text=text, score=None, error=str(e)[:300]))
            continue
        usage = usage.add(used)
        results.append(
            CandidateResult(
                kind=kind,
                text=text,
                score=candidate_score(truth, predicted),
                oracle_score=1.0 if kind == "true" else oracle.get(text),
            )
        )
    return UnitCheck(
        unit_id=unit.id,
        category=unit.category,
        split=unit.split,
        candidates=results,
        usage=usage,
        seconds=time.perf_counter() - start,
    )


def simulate_with(simulator: Any) -> SimulateFn:
    """Adapt a `Simulator` (simulate → SimulatedExcerpt list) to the check's callable."""

    async def run(explanation: str, excerpts: Sequence[Sequence[str]]):
        sims = await simulator.simulate(explanation, excerpts)
        usage = Usage()
        for s in sims:
            usage = usage.add(s.usage)
        return [s.expected for s in sims], usage

    return run


async def check_simulator(
    units: Sequence[GroundTruthUnit],
    simulate: SimulateFn,
    *,
    simulator: str,
    strategy: str,
    prompt_version: str,
    suite: str,
    split: str,
    on_unit: Callable[[UnitCheck], None] | None = None,
) -> CheckReport:
    checked = []
    for unit in units:
        result = await check_unit(unit, simulate)
        checked.append(result)
        if on_unit is not None:
            on_unit(result)
    return CheckReport(
        simulator=simulator,
        strategy=strategy,
        prompt_version=prompt_version,
        suite=suite,
        split=split,
        summary=summarize(checked),
        units=checked,
    )
