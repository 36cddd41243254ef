"""The data model: every file neuroscribe writes is a list of these pydantic models.

Field names of `ActivationRecord` and `NeuronRecord` follow OpenAI's public neuron
files (`most_positive_activation_records`, `random_sample`, ...) so those files load
unchanged. Every output line carries `schema_version` so later versions can migrate.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 1


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class ActivationRecord(BaseModel):
    """One excerpt: the subject model's tokens and the unit's activation on each."""

    model_config = ConfigDict(extra="forbid")

    tokens: list[str]
    activations: list[float]

    @model_validator(mode="before")
    @classmethod
    def _drop_openai_tag(cls, data: Any) -> Any:
        # OpenAI's files tag every object with its class name; it carries no data.
        if isinstance(data, dict) and data.get("dataclass_name") == "ActivationRecord":
            data = {k: v for k, v in data.items() if k != "dataclass_name"}
        return data

    @model_validator(mode="after")
    def _check(self) -> ActivationRecord:
        if not self.tokens:
            raise ValueError("activation record has no tokens")
        if len(self.tokens) != len(self.activations):
            raise ValueError(
                f"activation record has {len(self.tokens)} tokens but "
                f"{len(self.activations)} activations"
            )
        for i, a in enumerate(self.activations):
            if not math.isfinite(a):
                raise ValueError(
                    f"activation {a!r} at token {i} ({self.tokens[i]!r}) is not finite"
                )
        return self

    @property
    def max_activation(self) -> float:
        return max(self.activations)


class NeuronId(BaseModel):
    """OpenAI's neuron id layout, kept so their files load unchanged."""

    model_config = ConfigDict(extra="allow")

    layer_index: int
    neuron_index: int


class NeuronRecord(BaseModel):
    """Everything recorded about one unit (MLP neuron, SAE latent, ...)."""

    model_config = ConfigDict(extra="allow")

    unit_id: str = ""
    neuron_id: NeuronId | None = None
    model: str | None = None
    layer: int | str | None = None
    index: int | None = None
    most_positive_activation_records: list[ActivationRecord] = Field(default_factory=list)
    random_sample: list[ActivationRecord] = Field(default_factory=list)
    random_sample_by_quantile: list[list[ActivationRecord]] | None = None
    quantile_boundaries: list[float] | None = None
    mean: float | None = None
    variance: float | None = None
    skewness: float | None = None
    kurtosis: float | None = None
    # Extra statistics recorded by `neuroscribe record` (absent in OpenAI's files).
    max_activation: float | None = None
    frac_nonzero: float | None = None

    @model_validator(mode="after")
    def _fill_ids(self) -> NeuronRecord:
        if self.neuron_id is not None:
            if self.layer is None:
                self.layer = self.neuron_id.layer_index
            if self.index is None:
                self.index = self.neuron_id.neuron_index
        if not self.unit_id:
            if self.layer is None or self.index is None:
                raise ValueError("neuron record needs a unit_id or a layer and an index")
            self.unit_id = f"{self.model or 'unknown'}/{self.layer}/{self.index}"
        for name in ("mean", "variance", "skewness", "kurtosis", "max_activation", "frac_nonzero"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"statistic {name}={value!r} is not finite")
        return self


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cached_requests: int = 0
    cost_usd: float | None = None

    def add(self, other: Usage) -> Usage:
        cost = None
        if self.cost_usd is not None or other.cost_usd is not None:
            cost = (self.cost_usd or 0.0) + (other.cost_usd or 0.0)
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            requests=self.requests + other.requests,
            cached_requests=self.cached_requests + other.cached_requests,
            cost_usd=cost,
        )


class Explanation(BaseModel):
    """One explanation sampled from the explainer for one unit."""

    schema_version: int = SCHEMA_VERSION
    explanation_id: str
    unit_id: str
    sample_index: int
    text: str
    explainer: str
    prompt_version: str
    config_hash: str
    train_excerpts: list[str]
    raw: str | None = None
    usage: Usage = Field(default_factory=Usage)
    created_at: str = Field(default_factory=utc_now)

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("explanation text is empty")
        return v


ExcerptKind = Literal["top", "random"]
SplitRole = Literal["test", "calibration"]


class SequenceSimulation(BaseModel):
    """The simulator's predicted activations for one held-out excerpt."""

    schema_version: int = SCHEMA_VERSION
    explanation_id: str
    unit_id: str
    excerpt_id: str
    kind: ExcerptKind
    role: SplitRole
    tokens: list[str]
    true_activations: list[float]
    # None marks a token the simulator gave no value for (e.g. no digit among the top
    # logprobs at its slot): it is left out of the scores, never filled in with a guess.
    expected_activations: list[float | None]
    distributions: list[list[float] | None] | None = None
    scale_max: int = 10
    strategy: str
    simulator: str
    prompt_version: str
    config_hash: str
    usage: Usage = Field(default_factory=Usage)
    created_at: str = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _check(self) -> SequenceSimulation:
        n = len(self.tokens)
        if len(self.true_activations) != n or len(self.expected_activations) != n:
            raise ValueError(
                f"simulation of {self.excerpt_id} has {n} tokens, "
                f"{len(self.true_activations)} true and "
                f"{len(self.expected_activations)} expected activations"
            )
        for v in self.expected_activations:
            if v is not None and not math.isfinite(v):
                raise ValueError(f"expected activation {v!r} is not finite")
        return self

    @property
    def missing_slots(self) -> int:
        return sum(v is None for v in self.expected_activations)


class Score(BaseModel):
    """Scores of one explanation over its held-out excerpts."""

    schema_version: int = SCHEMA_VERSION
    explanation_id: str
    unit_id: str
    explanation: str
    explainer: str
    simulator: str
    strategy: str
    prompt_version: str
    config_hash: str
    score: float
    top_score: float | None = None
    random_score: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    r2: float | None = None
    abs_dev_score: float | None = None
    calibration_slope: float | None = None
    calibration_intercept: float | None = None
    n_excerpts: int
    n_tokens: int
    flags: list[str] = Field(default_factory=list)
    created_at: str = Field(default_factory=utc_now)

    @model_validator(mode="after")
    def _finite(self) -> Score:
        for name in (
            "score",
            "top_score",
            "random_score",
            "ci_low",
            "ci_high",
            "r2",
            "abs_dev_score",
            "calibration_slope",
            "calibration_intercept",
        ):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"score field {name}={value!r} is not finite")
        return self


class Failure(BaseModel):
    """A unit (or explanation) that could not be processed, with the reason."""

    schema_version: int = SCHEMA_VERSION
    stage: Literal["explain", "simulate", "score", "record"]
    unit_id: str
    key: str
    explanation_id: str | None = None
    reason: str
    raw: str | None = None
    attempts: int = 1
    config_hash: str
    created_at: str = Field(default_factory=utc_now)


class UsageRecord(BaseModel):
    """Token usage of one LLM call (one line of usage.jsonl)."""

    schema_version: int = SCHEMA_VERSION
    stage: str
    model: str
    unit_id: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    cost_usd: float | None = None
    latency_s: float | None = None
    created_at: str = Field(default_factory=utc_now)


class RunManifest(BaseModel):
    """manifest.json: what produced a run directory."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    package_version: str = ""
    created_at: str = Field(default_factory=utc_now)
    updated_at: str = Field(default_factory=utc_now)
    subject: dict[str, Any] = Field(default_factory=dict)
    stages: dict[str, dict[str, Any]] = Field(default_factory=dict)
    probes: dict[str, dict[str, Any]] = Field(default_factory=dict)
