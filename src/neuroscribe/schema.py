"""The data model: every file neuroscribe writes is a list of these pydantic models.

Field names of `ActivationRecord` and `NeuronRecord` follow OpenAI's public neuron
files (`most_positive_activation_records`, `random_sample`, ...) so those files load
unchanged. Every output line carries `schema_version` so later versions can migrate.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    field_validator,
    model_serializer,
    model_validator,
)

SCHEMA_VERSION = 1
# Lines whose shape changed carry their own version; readers upgrade older lines.
SCORE_SCHEMA_VERSION = 2
FAILURE_SCHEMA_VERSION = 2


# No real unit activates beyond this; larger values are corrupt data, and their squares
# (variances, correlations) would overflow float64.
MAX_ABS_ACTIVATION = 1e10


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# A spatial map is kept small: it is for showing where in the image the unit fired.
MAX_SPATIAL_SIDE = 32


class ImageRef(BaseModel):
    """An image excerpt's picture: a content-addressed file in the run directory.

    `path` and `thumbnail` are relative to the run directory (`images/<sha256>.png`,
    `images/thumbs/<sha256>.png`); the file's bytes hash to `sha256`, so the same image
    recorded twice is stored once. `pooling` says how the excerpt's one activation was
    made from the unit's spatial map (`max` or `mean` over positions: patches, cells);
    `spatial` is that map (rows of columns, at most 32 a side), or None for units with
    no positions (an image embedding's dimension). `caption` and `labels` are what the
    image source says about the picture (dataset captions, class names, CLIP zero-shot
    labels); text-only explainers and simulators read them.
    """

    model_config = ConfigDict(extra="forbid")

    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    path: str
    thumbnail: str | None = None
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    source: str | None = None
    caption: str | None = None
    labels: list[str] = Field(default_factory=list)
    pooling: Literal["max", "mean"] = "max"
    spatial: list[list[float]] | None = None

    @model_validator(mode="after")
    def _check(self) -> ImageRef:
        for rel in (self.path, self.thumbnail):
            if rel is not None and (
                rel.startswith(("/", "\\")) or ".." in rel.replace("\\", "/").split("/")
            ):
                raise ValueError(f"image path {rel!r} is not inside the run directory")
        if self.spatial is not None:
            rows = len(self.spatial)
            cols = {len(r) for r in self.spatial}
            if not rows or len(cols) != 1 or not next(iter(cols)):
                raise ValueError("spatial map is not a non-empty rectangle")
            if rows > MAX_SPATIAL_SIDE or next(iter(cols)) > MAX_SPATIAL_SIDE:
                raise ValueError(
                    f"spatial map is {rows}x{next(iter(cols))}; at most "
                    f"{MAX_SPATIAL_SIDE} a side is kept"
                )
            for row in self.spatial:
                for v in row:
                    if not math.isfinite(v) or abs(v) > MAX_ABS_ACTIVATION:
                        raise ValueError(f"spatial activation {v!r} is not finite or in range")
        return self

    @property
    def description(self) -> str:
        """What a text-only route says about the picture: caption, else labels."""
        if self.caption:
            return self.caption
        if self.labels:
            return ", ".join(self.labels)
        return f"image {self.sha256[:12]}"


class ActivationRecord(BaseModel):
    """One excerpt: the subject model's tokens and the unit's activation on each.

    An image excerpt (vision units) has one position, the whole image: `tokens` holds
    the picture's text description (caption or labels) and `activations` the unit's
    pooled activation; `image` says where the picture is and holds its spatial map.
    Text excerpts have no `image` and are written exactly as before.
    """

    model_config = ConfigDict(extra="forbid")

    tokens: list[str]
    activations: list[float]
    image: ImageRef | None = None

    @model_serializer(mode="wrap")
    def _omit_no_image(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # Text runs' files stay byte-identical to those of versions without images.
        data = handler(self)
        if isinstance(data, dict) and data.get("image", 0) is None:
            data.pop("image")
        return data

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
        if self.image is not None and len(self.tokens) != 1:
            raise ValueError(
                f"an image excerpt has one position (the whole image), not {len(self.tokens)}"
            )
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
            if abs(a) > MAX_ABS_ACTIVATION:
                raise ValueError(
                    f"activation {a!r} at token {i} ({self.tokens[i]!r}) is out of range "
                    f"(|a| > {MAX_ABS_ACTIVATION:g}: products and squares would overflow)"
                )
        return self

    @property
    def max_activation(self) -> float:
        return max(self.activations)

    @property
    def identity(self) -> tuple[str, ...]:
        """What makes two excerpts the same: the picture for images, else the tokens."""
        return ("image", self.image.sha256) if self.image is not None else tuple(self.tokens)


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

    @property
    def modality(self) -> Literal["text", "image"]:
        """`image` when the unit's excerpts are pictures (vision units), else `text`."""
        for r in (*self.most_positive_activation_records, *self.random_sample):
            return "image" if r.image is not None else "text"
        return "text"

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


class Candidate(BaseModel):
    """One explanation an explainer considered (best-of-k sample, revision round)."""

    text: str | None  # None: the sample or round gave no usable explanation
    validation_score: float | None = None  # on the validation split; never the test split
    round: int = 0  # 0: sampled from the unit's excerpts; n: the n-th revision
    parent: int | None = None  # index in `candidates` of the one this revises
    selected: bool = False
    # Revision rounds: the texts the explainer proposed and their real activations.
    probes: list[dict[str, Any]] = Field(default_factory=list)
    reason: str | None = None  # why text is None, or why the candidate was dropped


class Explanation(BaseModel):
    """One explanation sampled from the explainer for one unit.

    Explainers that select (best-of-k) or revise keep every candidate they considered,
    with its validation score and lineage; `text` is the selected one.
    """

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
    method: str | None = None  # the explainer's registry name; None in runs before 0.3
    validation_score: float | None = None
    selection_scorer: str | None = None  # "simulation (hf:embedded)": what chose it
    validation_excerpts: list[str] = Field(default_factory=list)  # what it was chosen on
    candidates: list[Candidate] = Field(default_factory=list)
    # What scoring the candidates on validation cost (the selector's model), booked on
    # the explanation it chose; `usage` is the explainer's own.
    selection_usage: Usage | None = None

    @field_validator("text")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("explanation text is empty")
        return v


ExcerptKind = Literal["top", "random"]
SplitRole = Literal["test", "calibration"]


# Strategies of scorers whose per-excerpt lines are similarities (explanation vs caption or
# picture), not simulated activations: kept in simulations.jsonl for the report and resume.
SIMILARITY_STRATEGIES = ("clip-similarity", "caption-similarity")


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
        for a in self.true_activations:
            if not math.isfinite(a) or abs(a) > MAX_ABS_ACTIVATION:
                raise ValueError(f"true activation {a!r} is not finite or out of range")
        return self

    @property
    def missing_slots(self) -> int:
        return sum(v is None for v in self.expected_activations)


class ScoreInterval(BaseModel):
    """A confidence interval of one metric (a bootstrap over excerpts, for instance)."""

    metric: str = "score"
    low: float
    high: float
    level: float = 0.95


# The simulation scorer's v1 columns, moved into `metrics` by the v1 -> v2 upgrade.
_V1_METRICS = ("score", "top_score", "random_score", "r2", "abs_dev_score")


class Score(BaseModel):
    """One scorer's verdict on one explanation over its held-out excerpts.

    Generic over scorers: `scorer` names the plug-in (`simulation`, later `detection`,
    `embedding`, ...), `metrics` holds its named numbers and `primary_metric` says which
    one is the headline. `comparable` is what must match for two runs' scores to be
    compared (model, strategy, prompt version...); `heldout_hash` fingerprints the
    held-out excerpts scored. compare, publish and view read metrics by name, so a new
    scorer shows up there without edits.
    """

    schema_version: int = SCORE_SCHEMA_VERSION
    explanation_id: str
    unit_id: str
    explanation: str
    explainer: str
    scorer: str = "simulation"
    scorer_model: str | None = None
    config_hash: str
    metrics: dict[str, float | None]
    primary_metric: str = "score"
    interval: ScoreInterval | None = None
    n_excerpts: int = 0
    n_tokens: int = 0
    heldout_hash: str | None = None
    comparable: dict[str, Any] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    created_at: str = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, data: Any) -> Any:
        # v1 lines (neuroscribe 0.1) were correlation-only with one column per number.
        if not isinstance(data, dict) or "metrics" in data or "score" not in data:
            return data
        d = dict(data)
        metrics = {k: d.pop(k, None) for k in _V1_METRICS}
        low, high = d.pop("ci_low", None), d.pop("ci_high", None)
        details = {
            k: d.pop(k)
            for k in ("strategy", "prompt_version", "calibration_slope", "calibration_intercept")
            if k in d
        }
        simulator = d.pop("simulator", None)
        d.update(
            schema_version=SCORE_SCHEMA_VERSION,
            scorer="simulation",
            scorer_model=simulator,
            metrics=metrics,
            primary_metric="score",
            interval={"metric": "score", "low": low, "high": high}
            if low is not None and high is not None
            else None,
            details=details,
            comparable={
                "scorer": "simulation",
                "simulator": simulator,
                "strategy": details.get("strategy"),
                "prompt_version": details.get("prompt_version"),
            },
        )
        return d

    @model_validator(mode="after")
    def _finite(self) -> Score:
        for name, value in self.metrics.items():
            if value is not None and not math.isfinite(value):
                raise ValueError(f"score metric {name}={value!r} is not finite")
        if self.interval is not None:
            for value in (self.interval.low, self.interval.high):
                if not math.isfinite(value):
                    raise ValueError(f"score interval bound {value!r} is not finite")
        return self

    # Read-only views; `score` is the headline number whatever the scorer.
    @property
    def score(self) -> float:
        v = self.metrics.get(self.primary_metric)
        return float("nan") if v is None else v

    def metric(self, name: str) -> float | None:
        return self.metrics.get(name)

    @property
    def simulator(self) -> str | None:
        return self.scorer_model

    @property
    def strategy(self) -> str | None:
        return self.details.get("strategy")

    @property
    def prompt_version(self) -> str | None:
        return self.details.get("prompt_version")

    @property
    def ci_low(self) -> float | None:
        return self.interval.low if self.interval else None

    @property
    def ci_high(self) -> float | None:
        return self.interval.high if self.interval else None


class ItemKey(BaseModel):
    """The typed key of one unit of work: which stage, key space, unit, explanation, sample.

    Outputs and failures carry these fields, so done-sets and open failures are computed
    by comparing fields, never by parsing key strings back.
    """

    model_config = ConfigDict(frozen=True)

    stage: str
    config_hash: str
    unit_id: str
    explanation_id: str | None = None
    sample_index: int | None = None

    def __str__(self) -> str:
        parts = [self.stage, self.explanation_id or self.unit_id, self.config_hash]
        if self.sample_index is not None:
            parts.append(f"sample{self.sample_index}")
        return "|".join(parts)


class Failure(BaseModel):
    """A unit (or explanation, or one sample) that could not be processed, with the reason."""

    schema_version: int = FAILURE_SCHEMA_VERSION
    stage: str
    unit_id: str
    key: str = ""  # the typed key written out for people reading the file
    explanation_id: str | None = None
    sample_index: int | None = None
    reason: str
    raw: str | None = None
    attempts: int = 1
    config_hash: str
    created_at: str = Field(default_factory=utc_now)

    @model_validator(mode="before")
    @classmethod
    def _upgrade_v1(cls, data: Any) -> Any:
        # v1 spelled a failed explain sample only inside the key ("...|sample3").
        if not isinstance(data, dict) or data.get("schema_version", 1) >= 2:
            return data
        d = dict(data)
        _, _, sample = str(d.get("key", "")).rpartition("|sample")
        if d.get("stage") == "explain" and sample.isdigit():
            d.setdefault("sample_index", int(sample))
        d["schema_version"] = FAILURE_SCHEMA_VERSION
        return d

    @model_validator(mode="after")
    def _fill_key(self) -> Failure:
        if not self.key:
            self.key = str(self.item_key)
        return self

    @property
    def item_key(self) -> ItemKey:
        return ItemKey(
            stage=self.stage,
            config_hash=self.config_hash,
            unit_id=self.unit_id,
            explanation_id=self.explanation_id,
            sample_index=self.sample_index,
        )


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
    # Ground-truth check results of the simulators that scored this run, keyed by
    # "spec|strategy|prompt_version" (`neuroscribe check simulator`; see groundtruth).
    simulator_checks: dict[str, dict[str, Any]] = Field(default_factory=dict)
