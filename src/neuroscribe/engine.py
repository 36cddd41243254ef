"""The one job engine every stage runs on.

It owns the per-unit side of a job: bounded concurrency over work items, per-item
failure isolation (a failing item is written to failures.jsonl and the job goes on),
writing each finished item's lines at once (usage first, then outputs, so a crash can
only over-count spend, never lose or duplicate a result), live progress with tokens and
cost, and the budget. Per-call retries, timeouts and rate limits live in the LLM client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from neuroscribe.errors import BudgetExceeded, LLMError, NeuroscribeError, OutputError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.schema import Failure, UsageRecord

log = logging.getLogger(__name__)


@dataclass
class WorkItem:
    key: str
    unit_id: str
    payload: Any
    explanation_id: str | None = None


@dataclass
class WorkResult:
    """What a finished item writes: {file: lines} plus its LLM usage."""

    writes: dict[Path, list[BaseModel]] = field(default_factory=dict)
    usage: list[UsageRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


@dataclass
class JobSummary:
    stage: str
    total: int = 0
    done: int = 0
    skipped: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    stopped_for_budget: bool = False

    def line(self) -> str:
        cost = f", ${self.cost_usd:.4f}" if self.cost_usd else ""
        return (
            f"{self.stage}: {self.done} done, {self.skipped} already done, {self.failed} failed "
            f"({self.prompt_tokens} prompt + {self.completion_tokens} completion tokens{cost})"
        )


Worker = Callable[[WorkItem], Awaitable[WorkResult]]


class JobEngine:
    def __init__(
        self,
        run_dir: Path,
        stage: str,
        config_hash: str,
        *,
        concurrency: int = 8,
        max_cost: float | None = None,
        spent_before: float = 0.0,
        show_progress: bool = True,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.stage = stage
        self.config_hash = config_hash
        self.concurrency = max(1, concurrency)
        self.max_cost = max_cost
        self.spent = spent_before
        self.show_progress = show_progress
        self._write_lock = asyncio.Lock()

    @property
    def failures_path(self) -> Path:
        return self.run_dir / "failures.jsonl"

    @property
    def usage_path(self) -> Path:
        return self.run_dir / "usage.jsonl"

    async def _commit(self, result: WorkResult, summary: JobSummary) -> None:
        async with self._write_lock:
            append_jsonl(self.usage_path, result.usage)
            for path, lines in result.writes.items():
                append_jsonl(path, lines)
            append_jsonl(self.failures_path, result.failures)
            for u in result.usage:
                summary.prompt_tokens += u.prompt_tokens
                summary.completion_tokens += u.completion_tokens
                if u.cost_usd:
                    summary.cost_usd += u.cost_usd
                    self.spent += u.cost_usd

    def _failure(self, item: WorkItem, reason: str, raw: str | None = None) -> Failure:
        return Failure(
            stage=self.stage,  # type: ignore[arg-type]
            unit_id=item.unit_id,
            key=item.key,
            explanation_id=item.explanation_id,
            reason=reason,
            raw=raw,
            config_hash=self.config_hash,
        )

    async def run(
        self, items: Sequence[WorkItem], worker: Worker, *, skipped: int = 0
    ) -> JobSummary:
        summary = JobSummary(self.stage, total=len(items) + skipped, skipped=skipped)
        if self.max_cost is not None and self.spent >= self.max_cost:
            raise BudgetExceeded(
                f"the budget of ${self.max_cost:.4f} is already spent (${self.spent:.4f}); "
                "raise --max-cost to continue"
            )
        queue: asyncio.Queue[WorkItem] = asyncio.Queue()
        for it in items:
            queue.put_nowait(it)

        progress = Progress(
            TextColumn(f"[bold]{self.stage}[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[tokens]} tok {task.fields[cost]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            disable=not self.show_progress,
            transient=False,
        )
        task = progress.add_task(self.stage, total=len(items), tokens=0, cost="")

        async def handle(item: WorkItem) -> None:
            try:
                result = await worker(item)
            except (OutputError, LLMError, NeuroscribeError) as e:
                raw = getattr(e, "raw", None)
                result = WorkResult(failures=[self._failure(item, str(e), raw)])
            except asyncio.CancelledError:
                raise
            except Exception as e:  # a bug in one item must not take the job down
                log.exception("unexpected error on %s", item.key)
                result = WorkResult(
                    failures=[self._failure(item, f"internal error: {type(e).__name__}: {e}")]
                )
            await self._commit(result, summary)
            if result.failures and not result.writes:
                summary.failed += 1
            else:
                summary.done += 1
            cost = f"${summary.cost_usd:.4f}" if summary.cost_usd else ""
            progress.update(
                task,
                advance=1,
                tokens=summary.prompt_tokens + summary.completion_tokens,
                cost=cost,
            )

        async def runner() -> None:
            while True:
                if self.max_cost is not None and self.spent >= self.max_cost:
                    summary.stopped_for_budget = True
                    return
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await handle(item)

        with progress:
            await asyncio.gather(*(runner() for _ in range(min(self.concurrency, len(items) or 1))))
        return summary
