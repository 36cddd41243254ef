"""`RunConfig`: one configuration for a whole job, a section per stage.

The CLI and (later) the HTTP service only map their inputs onto a `RunConfig` and call
`neuroscribe.api`. Each stage's config hash comes from its section plus the prompt
version its builder declares (see `ExplainStage.config` / `ScoreStage.config`), so a
changed setting or prompt starts a new key space instead of reusing old results.
"""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from neuroscribe.errors import ConfigError
from neuroscribe.explainer.token_rows import ExplainerConfig
from neuroscribe.llm.base import EMBEDDED_SPEC
from neuroscribe.splits import SplitConfig


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EndpointConfig(_Section):
    """Where API models live. The key is never written anywhere (excluded from dumps)."""

    base_url: str | None = None
    api_key: SecretStr | None = Field(default=None, exclude=True, repr=False)


class ExplainSection(_Section):
    model: str = EMBEDDED_SPEC
    explainer: str = "token-rows"  # registry name (neuroscribe.explainer.registry)
    settings: ExplainerConfig = ExplainerConfig()
    timeout: float = 60.0


class ScoreSection(_Section):
    scorer: str = "simulation"  # registry name (neuroscribe.scorer.registry)
    model: str = EMBEDDED_SPEC
    strategy: str = "auto"
    n_examples: int = 2  # few-shot neurons in the simulation prompt
    timeout: float = 120.0


class JobSection(_Section):
    concurrency: int = 8
    retry_failed: bool = False
    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    cache: bool = True
    prices: Path | None = None
    show_progress: bool = True

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
    max_units: int | None = None


class RecordSection(_Section):
    """What `run` records when the run directory has no records yet (the offline demo)."""

    layers: list[int] = [4, 20]
    units: int = 4
    tokens: int = 16_000


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
    def build(cls, **data) -> RunConfig:
        """Validate, turning pydantic's errors into one clear ConfigError."""
        from pydantic import ValidationError

        try:
            return cls.model_validate(data)
        except ValidationError as e:
            msgs = [
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg'].removeprefix('Value error, ')}"
                for err in e.errors()
            ]
            raise ConfigError("; ".join(msgs)) from None
