"""The `Explainer` interface: a unit and its train excerpts in, explanation outcomes out.

An explainer is one module plus a line in `registry.py`. The explain stage asks it
for the samples a unit still lacks and writes what comes back: texts as explanations,
failed samples (with the raw answer and why it was refused) to failures.jsonl — a
non-answer is never stored as an explanation. Best-of-k and revision explainers
implement the same interface and hold a `Selector` (a scorer over the validation split)
of their own; what they considered goes in `ExplainOutcome.extras` (candidates, scores,
lineage) and what scoring the candidates cost in `selection_usage`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from neuroscribe.schema import Candidate, NeuronRecord, Usage
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate


@dataclass
class ExplainTask:
    record: NeuronRecord
    train: list[Excerpt]
    samples: list[int]  # which sample indices are wanted (those not written yet)
    # Excerpts for choosing among candidates: disjoint from train and from every
    # excerpt a score is computed on (splits.py). Never shown to the explainer.
    validation: list[Excerpt] = field(default_factory=list)
    # Low-activating excerpts the explainer may show as contrast (splits.contrast): seen
    # by the explainer, so recorded with the train excerpts; never scored.
    contrast: list[Excerpt] = field(default_factory=list)


@dataclass
class Selected:
    """What a selecting explainer adds to the explanation it keeps."""

    method: str
    validation_score: float | None
    selection_scorer: str
    candidates: list[Candidate]
    validation_excerpts: list[str] = field(default_factory=list)


@dataclass
class ExplainOutcome:
    texts: list[tuple[int, str, str]] = field(default_factory=list)  # (sample, text, raw)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (sample, raw)
    # Why a failed sample's last answer was refused ("a refusal or non-answer"), by sample.
    reasons: dict[int, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    prompt_version: str = ""
    attempts: int = 1
    extras: dict[int, Selected] = field(default_factory=dict)  # by sample
    # Scoring candidates on the validation split (booked under the selector's model).
    selection_usage: Usage = field(default_factory=Usage)
    selection_model: str = ""


class Explainer(Protocol):
    name: str  # registry name ("token-rows")
    model: str  # the explainer model spec
    prompt_version: str  # the prompt builder's version: part of the config hash
    n_samples: int  # explanations wanted per unit

    def config(self) -> dict[str, Any]:
        """Everything that changes its explanations; hashed into the explain key space."""
        ...

    async def explain(self, task: ExplainTask) -> ExplainOutcome: ...

    def estimate(self, task: ExplainTask) -> Estimate: ...
