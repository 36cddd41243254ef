"""The `Stage` interface and the plain data it passes around.

A stage plans the work items of a run for its configuration (skipping what is done or
failed), does one item, and estimates one item's requests and tokens. The job engine
(`neuroscribe.engine`) runs any stage with the same skip rules, budget, failure
isolation, usage accounting and manifest writing, and `--dry-run` is plan + estimate,
so the two cannot drift. Work items are plain serialisable data (ids, not objects): a
queue or a remote worker could run them later.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict

from neuroscribe.schema import Failure, ItemKey, UsageRecord

if TYPE_CHECKING:
    from neuroscribe.rundir import RunDir


def config_hash(obj: dict[str, Any]) -> str:
    """The key space of a stage's outputs: a hash of its whole configuration."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


class WorkItem(BaseModel):
    """One unit of work: its typed key plus what is still missing (by id)."""

    model_config = ConfigDict(frozen=True)

    key: ItemKey
    samples: tuple[int, ...] = ()  # explain: the sample indices still to write

    @property
    def unit_id(self) -> str:
        return self.key.unit_id

    @property
    def explanation_id(self) -> str | None:
        return self.key.explanation_id


@dataclass
class WorkResult:
    """What a finished item writes: {output name: lines} plus its LLM usage and failures."""

    writes: dict[str, list[BaseModel]] = field(default_factory=dict)
    usage: list[UsageRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class Plan:
    items: list[WorkItem]
    skipped: int = 0  # items already done (or failed, without --retry-failed)


@dataclass
class Estimate:
    """What one work item would send."""

    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(
            self.requests + other.requests,
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )


class Stage(Protocol):
    name: str  # "explain", "simulate", "score": manifest, summary and usage use it
    model: str  # the model spec it calls ("" for none)

    def config(self) -> dict[str, Any]:
        """The configuration recorded in the manifest; its hash keys the outputs."""
        ...

    @property
    def config_hash(self) -> str: ...

    def probes(self) -> dict[str, Any]:
        """Endpoint probes to record in the manifest (empty for most stages)."""
        ...

    def plan(self, run: RunDir, *, retry_failed: bool = False) -> Plan: ...

    async def do(self, item: WorkItem) -> WorkResult: ...

    def estimate(self, item: WorkItem) -> Estimate: ...


class StageBase:
    """What every stage shares: its key space is the hash of its configuration, and it
    records no endpoint probes unless it says otherwise."""

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def config_hash(self) -> str:
        return config_hash(self.config())

    def probes(self) -> dict[str, Any]:
        return {}
