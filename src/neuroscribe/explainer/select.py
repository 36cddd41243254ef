"""Scoring candidate explanations on the validation split, for explainers that choose.

A `Selector` wraps any registered scorer (simulation, detection, embedding, ...): it
scores a candidate text exactly as the score stage would, but on the unit's validation
excerpts (dealt as the scorer's test fold, with no calibration fold), and returns the
scorer's primary metric. Nothing it computes is written as a score: validation numbers
live only in the explanation's candidates, so the test split is never used to choose.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuroscribe.errors import NeuroscribeError, OutputError
from neuroscribe.schema import Explanation, NeuronRecord, Usage
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.splits import Excerpt, Splits


@dataclass
class Verdict:
    value: float | None  # the scorer's primary metric; None: it could not score
    usage: Usage
    reason: str | None = None


def as_test_fold(validation: list[Excerpt]) -> list[Excerpt]:
    """Validation excerpts as a scorer's test fold (scorers read roles test/calibration)."""
    return [Excerpt(x.excerpt_id, x.kind, "test", x.record) for x in validation]


class Selector:
    """Scores candidate texts with `scorer` on a unit's validation excerpts."""

    def __init__(self, scorer: Any) -> None:
        self.scorer = scorer
        self.model = getattr(scorer, "model", None) or ""

    @property
    def label(self) -> str:
        return f"{self.scorer.name} ({self.model})" if self.model else self.scorer.name

    def config(self) -> dict[str, Any]:
        """What changes its choices: hashed into the selecting explainer's key space."""
        return dict(self.scorer.config())

    async def score(
        self, record: NeuronRecord, text: str, train: list[Excerpt], validation: list[Excerpt]
    ) -> Verdict:
        if not validation:
            return Verdict(None, Usage(), "no validation excerpts")
        probe = Explanation(
            explanation_id="candidate",
            unit_id=record.unit_id,
            sample_index=0,
            text=text,
            explainer="candidate",
            prompt_version="candidate",
            config_hash="select",
            train_excerpts=[x.excerpt_id for x in train],
        )
        task = ScoreTask(
            explanation=probe,
            record=record,
            splits=Splits(train=train, test=as_test_fold(validation), calibration=[]),
            config_hash="select",
        )
        try:
            outcome = await self.scorer.score(task)
        except OutputError as e:
            return Verdict(None, e.usage or Usage(), f"could not be scored: {e}")
        except NeuroscribeError as e:
            return Verdict(None, Usage(), f"could not be scored: {e}")
        value = outcome.metrics.get(outcome.primary_metric)
        if value is None:
            return Verdict(None, outcome.usage, f"no {outcome.primary_metric} on validation")
        return Verdict(float(value), outcome.usage)
