"""The `Scorer` interface: an explanation and a unit's held-out data in, named metrics out.

A scorer is one module plus a line in `registry.py`. It gets a `ScoreTask` (the
explanation, the unit's record and splits, and whatever earlier attempts of this very
task already stored), returns a `ScoreOutcome` (named metrics, the headline metric,
an interval, details, flags, plus any extra lines it wants kept, e.g. the simulation
scorer's per-excerpt simulations), and can estimate its requests and tokens without
sending anything. The score stage turns the outcome into the generic `Score` record,
so the engine, the dry run, compare, publish and view need no edits for a new scorer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from pydantic import BaseModel

from neuroscribe.schema import Explanation, NeuronRecord, ScoreInterval, Usage
from neuroscribe.splits import Excerpt, Splits
from neuroscribe.stages.base import Estimate


@dataclass
class ScoreTask:
    """What one scorer call sees: never the train excerpts' text beyond the explanation."""

    explanation: Explanation
    record: NeuronRecord
    splits: Splits
    config_hash: str
    # Lines this scorer stored for this task in an earlier, interrupted attempt
    # (e.g. simulations written before a crash), so it need not pay for them again.
    stored: list[BaseModel] = field(default_factory=list)

    @property
    def heldout(self) -> list[Excerpt]:
        return self.splits.held_out


@dataclass
class ScoreOutcome:
    metrics: dict[str, float | None]
    primary_metric: str
    n_excerpts: int
    n_tokens: int
    interval: ScoreInterval | None = None
    details: dict[str, Any] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    # Extra lines to keep, by run-directory output name ("simulations").
    writes: dict[str, list[BaseModel]] = field(default_factory=dict)


class Scorer(Protocol):
    """One way of scoring explanations."""

    name: str  # registry name, written as `Score.scorer`
    stage: str  # stage name in the manifest, summary and usage ("simulate" for simulation)
    model: str | None  # the model behind it, if any (written as `Score.scorer_model`)
    primary_metric: str

    def config(self) -> dict[str, Any]:
        """Everything that changes its numbers (model, strategy, prompt version...): hashed."""
        ...

    def comparable(self) -> dict[str, Any]:
        """What must match for two runs' scores to be compared."""
        ...

    async def score(self, task: ScoreTask) -> ScoreOutcome: ...

    def estimate(self, task: ScoreTask) -> Estimate: ...


class OwnOptions:
    """A scorer's own options out of the score section's (which carries the simulation
    scorer's too): the names in `OPTIONS` that are set."""

    OPTIONS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def _own(cls, options: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in options.items() if k in cls.OPTIONS and v is not None}


class ScorerParts(OwnOptions):
    """What scorers that send prompts share (a mixin): their own options, and the token
    counter of their model, with which a dry run counts their prompts."""

    model: str | None

    @property
    def counter(self) -> Any:
        """How this scorer's prompts are counted in a dry run (`estimate.TokenCounter`)."""
        from neuroscribe.estimate import token_counter

        if getattr(self, "_counter", None) is None:
            self._counter = token_counter(self.model or "")
        return self._counter


def heldout_hash(excerpts: Sequence[Excerpt]) -> str:
    """A fingerprint of the held-out excerpts: ids, roles, tokens, true activations."""
    return fingerprint(
        (x.excerpt_id, x.role, x.record.tokens, x.record.activations) for x in excerpts
    )


def fingerprint(items: Iterable[tuple[str, str, Sequence[str], Sequence[float]]]) -> str:
    """Order-independent hash of (excerpt id, role, tokens, activations) tuples."""
    payload = sorted(
        json.dumps([eid, role, list(tokens), [round(a, 5) for a in acts]])
        for eid, role, tokens, acts in items
    )
    return hashlib.sha256("\n".join(payload).encode()).hexdigest()[:16]
