"""The service's request and response bodies (the `/v1/` contract, in its OpenAPI doc).

Bounds on every list and string keep a hostile body from costing more than a bad
request; anything the library validates (a `RunConfig`, a `NeuronRecord`) is validated
by the library's own models, so the service never accepts what `neuroscribe run` would
refuse.
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from neuroscribe.llm.base import DEFAULT_SIMULATOR_SPEC, EMBEDDED_SPEC
from neuroscribe.schema import NeuronRecord

MAX_TOKENS_PER_EXCERPT = 4096
MAX_EXCERPTS = 200


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorBody(BaseModel):
    error: str
    details: list[dict[str, Any]] | None = None


# ---------------------------------------------------------------- jobs

JobState = Literal["queued", "running", "done", "failed", "cancelled"]
Stages = Literal["run", "explain", "score"]


class JobCreate(_Body):
    """A job over run `run` (a folder directly under the server's root).

    `config` is a `RunConfig` without `run_dir` (the service sets it from `run`); an
    `endpoint.api_key` in it is used by this server process only and never stored.
    With `records`, the run is created holding them (it must not hold records yet).
    """

    run: str = Field(..., min_length=1, max_length=128, examples=["my-run"])
    stages: Stages = "run"
    config: dict[str, Any] = Field(default_factory=dict)
    records: list[NeuronRecord] | None = Field(None, min_length=1, max_length=100_000)


class JobResume(_Body):
    retry_failed: bool = False
    max_cost: float | None = Field(None, gt=0)


class JobProgress(BaseModel):
    units_total: int = 0
    units_done: int = 0
    units_failed: int = 0
    units_left: int = 0
    units_explained: int = 0
    units_scored: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


class JobView(BaseModel):
    id: str
    run: str
    stages: Stages
    state: JobState
    error: str | None
    attempts: int  # how many times it was started (a restart or a resume adds one)
    progress: JobProgress
    summaries: dict[str, Any]  # stage -> the stage's summary (as in summary.json)
    config: dict[str, Any]  # the RunConfig as stored (never an API key)
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    links: dict[str, str]


class Page(BaseModel):
    items: list[Any]
    total: int
    offset: int
    limit: int


class JobEvent(BaseModel):
    seq: int
    at: str
    kind: str  # state, message, stage, progress
    data: dict[str, Any]


# ---------------------------------------------------------------- single calls


class Endpoint(_Body):
    base_url: str | None = Field(None, max_length=2000)
    api_key: SecretStr | None = Field(None, repr=False)


class ExcerptIn(_Body):
    tokens: list[str] = Field(..., min_length=1, max_length=MAX_TOKENS_PER_EXCERPT)
    activations: list[float] | None = None
    kind: Literal["top", "random"] = "top"

    @field_validator("tokens")
    @classmethod
    def _short_tokens(cls, v: list[str]) -> list[str]:
        if any(len(t) > 200 for t in v):
            raise ValueError("a token is longer than 200 characters")
        return v

    @model_validator(mode="after")
    def _aligned(self) -> ExcerptIn:
        a = self.activations
        if a is not None:
            if len(a) != len(self.tokens):
                raise ValueError(
                    f"{len(a)} activations for {len(self.tokens)} tokens: give one per token"
                )
            if any(not math.isfinite(x) or abs(x) > 1e30 for x in a):
                raise ValueError("activations must be finite numbers")
        return self


class _ModelCall(_Body):
    model: str = Field(EMBEDDED_SPEC, min_length=1, max_length=500)
    endpoint: Endpoint = Endpoint()
    timeout: float = Field(120.0, gt=0, le=3600)


class ExplainRequest(_ModelCall):
    """Explain one unit from its top-activating excerpts (with activations)."""

    excerpts: list[ExcerptIn] = Field(..., min_length=1, max_length=MAX_EXCERPTS)
    explainer: str = Field("token-rows", max_length=100)
    n_samples: int = Field(1, ge=1, le=20)
    temperature: float = Field(1.0, ge=0, le=2)
    max_tokens: int = Field(60, ge=1, le=4096)
    n_examples: int = Field(3, ge=0, le=10)
    max_attempts: int = Field(3, ge=1, le=10)

    @model_validator(mode="after")
    def _with_activations(self) -> ExplainRequest:
        if any(e.activations is None for e in self.excerpts):
            raise ValueError("every excerpt to explain needs its activations")
        return self


class ExplainResponse(BaseModel):
    model: str
    explainer: str
    prompt_version: str
    explanations: list[str]
    failures: list[dict[str, Any]]  # {sample, reason, raw}
    usage: dict[str, Any]


class SimulateRequest(_ModelCall):
    """Simulate an explanation on excerpts: the expected activation of every token."""

    # The default simulator, as for jobs: the embedded model with its trained simulation
    # adapter (a scorer that does not simulate reads the plain model).
    model: str = Field(DEFAULT_SIMULATOR_SPEC, min_length=1, max_length=500)
    explanation: str = Field(..., min_length=1, max_length=2000)
    excerpts: list[ExcerptIn] = Field(..., min_length=1, max_length=MAX_EXCERPTS)
    strategy: str = Field("auto", max_length=50)
    prompt: str | None = Field(None, max_length=50)
    n_examples: int | None = Field(None, ge=0, le=10)


class SimulatedExcerptOut(BaseModel):
    tokens: list[str]
    expected: list[float | None]


class SimulateResponse(BaseModel):
    model: str
    strategy: str
    scale_max: int
    prompt_version: str
    excerpts: list[SimulatedExcerptOut]
    usage: dict[str, Any]


class ScoreRequest(SimulateRequest):
    """Score an explanation on excerpts with their true activations."""

    scorer: str = Field("simulation", max_length=100)

    @model_validator(mode="after")
    def _with_activations(self) -> ScoreRequest:
        if any(e.activations is None for e in self.excerpts):
            raise ValueError("every excerpt to score needs its true activations")
        return self


class ScoreResponse(BaseModel):
    model: str
    scorer: str
    metrics: dict[str, float | None]
    primary_metric: str
    interval: dict[str, Any] | None
    n_excerpts: int
    n_tokens: int
    flags: list[str]
    details: dict[str, Any]
    simulations: list[SimulatedExcerptOut] | None
    usage: dict[str, Any]
