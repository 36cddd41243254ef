"""`RunConfig`: one configuration for a whole job, a section per stage.

The CLI and (later) the HTTP service only map their inputs onto a `RunConfig` and call
`neuroscribe.api`. Each stage's config hash comes from its section plus the prompt
version its builder declares (see `ExplainStage.config` / `ScoreStage.config`), so a
changed setting or prompt starts a new key space instead of reusing old results.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from neuroscribe.errors import ConfigError
from neuroscribe.explainer.best_of_k import SelectConfig
from neuroscribe.explainer.token_rows import ExplainerConfig
from neuroscribe.llm.base import DEFAULT_SIMULATOR_SPEC, EMBEDDED_SPEC, LOCAL_PREFIX
from neuroscribe.splits import SplitConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointConfig(_Section):
    """Where API models live. The key is never written anywhere (excluded from dumps)."""

    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)


# The valid ranges, checked before anything is sent (and stated in the CLI's --help).
MAX_TEMPERATURE = 2.0
MAX_EXPLAIN_TOKENS = 4096
MAX_SAMPLES = 100


def _one_of(v: str, names, what: str) -> str:
    """A registry name (explainer, scorer, strategy) checked before anything runs."""
    if v not in names:
        raise ValueError(f"unknown {what} {v!r}; choose one of {', '.join(names)}")
    return v


def _spec(v: str) -> str:
    v = v.strip()
    if not v:
        raise ValueError("a model spec cannot be empty")
    if v.startswith(LOCAL_PREFIX):
        from neuroscribe.llm.local import split_spec

        try:
            split_spec(v)  # a misspelt `?dtype=` fails when the config is made
        except ConfigError as e:
            raise ValueError(str(e)) from None
    return v


class ExplainSection(_Section):
    model: str = EMBEDDED_SPEC
    explainer: str = "token-rows"  # registry name (neuroscribe.explainer.registry)
    settings: ExplainerConfig = ExplainerConfig()
    # best-of-k and revision: candidates, the scorer that chooses on validation, rounds.
    select: SelectConfig = SelectConfig()
    timeout: float = Field(60.0, gt=0)
    # Image units: captions (text-only), pixels (image parts), auto (pixels when the
    # model declares image input). The image explainer hashes it; text ignores it.
    image_route: Literal["auto", "captions", "pixels"] = "auto"

    _model = field_validator("model")(classmethod(lambda cls, v: _spec(v)))

    @field_validator("explainer")
    @classmethod
    def _known_explainer(cls, v: str) -> str:
        from neuroscribe.explainer.registry import EXPLAINERS

        return _one_of(v, EXPLAINERS, "explainer")

    @field_validator("select")
    @classmethod
    def _known_selector(cls, v: SelectConfig) -> SelectConfig:
        from neuroscribe.scorer.registry import SCORERS

        _one_of(v.scorer, SCORERS, "selection scorer")
        if v.model is not None:
            _spec(v.model)
        return v

    @field_validator("settings")
    @classmethod
    def _ranges(cls, v: ExplainerConfig) -> ExplainerConfig:
        if not 1 <= v.n_samples <= MAX_SAMPLES:
            raise ValueError(f"--n-explanations must be 1..{MAX_SAMPLES}, not {v.n_samples}")
        if not (0.0 <= v.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"--temperature must be 0..{MAX_TEMPERATURE:g}, not {v.temperature:g}")
        if not 1 <= v.max_tokens <= MAX_EXPLAIN_TOKENS:
            raise ValueError(f"--max-tokens must be 1..{MAX_EXPLAIN_TOKENS}, not {v.max_tokens}")
        if v.max_attempts < 1 or v.n_examples < 0:
            raise ValueError("max_attempts must be at least 1 and n_examples at least 0")
        return v


# Scorers that read the default model's simulation adapter; every other scorer (judges,
# embedding, output-side) reads the plain embedded model when given the default.
ADAPTER_SCORERS = ("simulation",)


def model_for_scorer(scorer: str, spec: str) -> str:
    """The model `scorer` runs on when the score section names `spec`: the default
    trained simulator (the embedded model with its simulation adapter) is for
    simulating, so any other scorer given it reads the plain embedded model."""
    if spec == DEFAULT_SIMULATOR_SPEC and scorer not in ADAPTER_SCORERS:
        return EMBEDDED_SPEC
    return spec


class ScoreSection(_Section):
    scorer: str = "simulation"  # registry name (neuroscribe.scorer.registry)
    # The simulation scorer's default is the embedded model with its trained simulation
    # adapter; the other scorers get the plain embedded model (`model_for_scorer`).
    model: str = DEFAULT_SIMULATOR_SPEC
    strategy: str = "auto"
    # The simulation prompt version (prompts.simulate.SIMULATION_STYLES); it applies to the
    # all-at-once strategies (exact, prompt-logprobs). None: the default version.
    prompt: str | None = None
    # Few-shot neurons in the simulation prompt; None: the prompt version's own number.
    n_examples: int | None = Field(None, ge=0, le=10)
    timeout: float = Field(120.0, gt=0)
    image_route: Literal["auto", "captions", "pixels"] = "auto"  # as ExplainSection's
    # Detection's negatives that make other units of the run fire (0: none, as before).
    other_unit_negatives: int = Field(0, ge=0, le=64)
    # How detection and fuzzing read a judge's yes/no (ClassifierScorer): numbered lines,
    # or one excerpt a prompt read from the first token's logprobs; auto: first-token
    # for in-process judges, lines otherwise.
    readout: Literal["auto", "lines", "first-token"] = "auto"

    _model = field_validator("model")(classmethod(lambda cls, v: _spec(v)))

    @field_validator("scorer")
    @classmethod
    def _known_scorer(cls, v: str) -> str:
        from neuroscribe.scorer.registry import SCORERS

        return _one_of(v, SCORERS, "scorer")

    @model_validator(mode="after")
    def _scorer_model(self) -> ScoreSection:
        # Resolved here, once, so the config hash, the manifest and every reader of
        # `score.model` name the model the scorer actually runs on.
        self.model = model_for_scorer(self.scorer, self.model)
        return self

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, v: str) -> str:
        from neuroscribe.simulator import STRATEGIES

        return _one_of(v, STRATEGIES, "strategy")

    @field_validator("prompt")
    @classmethod
    def _known_prompt(cls, v: str | None) -> str | None:
        from neuroscribe.prompts.simulate import SIMULATION_STYLES
        from neuroscribe.prompts.simulate_images import IMAGE_SIM_VERSIONS

        # Text units' styles, or image units' (the image-simulation scorer's own).
        names = [*SIMULATION_STYLES, *IMAGE_SIM_VERSIONS]
        return None if v is None else _one_of(v, names, "simulation prompt")


class JobSection(_Section):
    concurrency: int = Field(8, ge=1, le=1024)
    retry_failed: bool = False
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    cache: bool = True
    prices: Path | None = None
    show_progress: bool = True
    # `--ray ADDRESS`: do the explain/score items on a pool of Ray actors (auto, local,
    # local:N, HOST:PORT; see neuroscribe.distributed.cluster); None: in this process.
    ray: str | None = None
    # `--ray-workers N`: actors in the pool (None: the cluster's GPUs for a local model
    # when it has GPUs, else its CPUs).
    ray_workers: int | None = Field(None, ge=1)

    @field_validator("rpm", "tpm")
    @classmethod
    def _positive(cls, v: float | None, info) -> float | None:
        if v is not None and not v > 0:
            raise ValueError(f"--{info.field_name} must be a positive number, not {v:g}")
        return v

    @field_validator("max_cost")
    @classmethod
    def _budget(cls, v: float | None) -> float | None:
        if v is not None and (math.isnan(v) or v <= 0):
            raise ValueError(
                f"--max-cost {v:g}: a budget must be more than $0 "
                "(use --dry-run to see what a job would cost without sending anything)"
            )
        return v


class UnitSelection(_Section):
    patterns: list[str] | None = None  # unit ids or globs such as "model/3/*"
    max_units: int | None = Field(None, ge=1)

    @field_validator("patterns")
    @classmethod
    def _not_empty(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or any(not p.strip() for p in v)):
            raise ValueError("--units needs unit ids or globs; an empty one would select nothing")
        return v


class RecordSection(_Section):
    """What `run` records when the run directory has no records yet (the offline demo)."""

    layers: list[int] = [4, 20]
    units: int = Field(4, ge=1)
    tokens: int = Field(16_000, ge=1)


class RunConfig(_Section):
    run_dir: Path = Path("neuroscribe-run")
    endpoint: EndpointConfig = EndpointConfig()
    units: UnitSelection = UnitSelection()
    splits: SplitConfig = SplitConfig()
    explain: ExplainSection = ExplainSection()
    score: ScoreSection = ScoreSection()
    jobs: JobSection = JobSection()
    record: RecordSection = RecordSection()

    @classmethod
    def build(cls, _flag_names: dict[str, str] | None = None, **data) -> RunConfig:
        """Validate, turning pydantic's errors into one clear ConfigError.

        `_flag_names` maps field paths ("jobs.concurrency") to what the user typed
        ("--concurrency"), so the message names the flag.
        """
        from pydantic import ValidationError

        names = _flag_names or {}
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            msgs = []
            for err in e.errors():
                path = ".".join(str(p) for p in err["loc"] if not isinstance(p, int))
                msg = err["msg"].removeprefix("Value error, ")
                msgs.append(msg if msg.startswith("--") else f"{names.get(path, path)}: {msg}")
            raise ConfigError("; ".join(msgs)) from None
