"""The one job engine every stage runs on (`run_stage`), and the dry run (`estimate_stage`).

It owns the per-unit side of a job: bounded concurrency over work items, per-item
failure isolation (a failing item is written to failures.jsonl and the job goes on),
writing each finished item's lines at once (usage first, then outputs, so a crash can
only over-count spend, never lose or duplicate a result), live progress with tokens and
cost, and the budget. Per-call retries, timeouts and rate limits live in the LLM client.

Where an item is *done* is the one thing it leaves to an `Executor`: in this process (the
stage's own `do`, the default) or on a pool of Ray actors (`neuroscribe.distributed.jobs`,
`--ray`). Either way the engine keeps planning, writing, failures, progress and the
budget, so resume and no-duplicates hold alike.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
from neuroscribe.estimate import StageEstimate
from neuroscribe.rundir import RunDir
from neuroscribe.schema import Failure
from neuroscribe.stages.base import Estimate, Plan, Stage, WorkItem, WorkResult

log = logging.getLogger(__name__)


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
    cached_requests: int = 0
    stopped_for_budget: bool = False
    remaining: int = 0  # items not started because the budget ran out
    warnings: list[str] = field(default_factory=list)
    config_hash: str = ""  # the key space the stage wrote into
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the simulation strategy

    def line(self) -> str:
        cost = f", ${self.cost_usd:.4f}" if self.cost_usd else ""
        left = f", {self.remaining} left for the budget" if self.remaining else ""
        return (
            f"{self.stage}: {self.done} done, {self.skipped} already done, {self.failed} failed"
            f"{left} ({self.prompt_tokens} prompt + {self.completion_tokens} completion "
            f"tokens{cost})"
        )

    def as_dict(self) -> dict[str, Any]:
        """The JSON form written to summary.json."""
        return {
            "total": self.total,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "remaining": self.remaining,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_units": self.cached_requests,
            "cost_usd": round(self.cost_usd, 6),
            "stopped_for_budget": self.stopped_for_budget,
        }


Worker = Callable[[WorkItem], Awaitable[WorkResult]]


class Executor(Protocol):
    """Where the engine has a work item done; the only part of a job that may move.

    `do` returns the item's `WorkResult` or raises what `stage.do` would raise (the
    engine turns errors into failure lines, or stops on a `fatal` one). Nothing else:
    the engine plans, writes through the one `RunDir`, counts and budgets.
    """

    async def do(self, item: WorkItem) -> WorkResult: ...


class InProcess:
    """The default executor: the stage's own `do`, on this process's event loop."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage

    async def do(self, item: WorkItem) -> WorkResult:
        return await self.stage.do(item)


class JobEngine:
    def __init__(
        self,
        run: RunDir,
        stage: str,
        config_hash: str,
        *,
        concurrency: int = 8,
        max_cost: float | None = None,
        spent_before: float = 0.0,
        unit_cost_hint: float = 0.0,
        show_progress: bool = True,
    ) -> None:
        self.rundir = run
        self.stage = stage
        self.config_hash = config_hash
        self.concurrency = max(1, concurrency)
        self.max_cost = max_cost
        self.spent = spent_before
        self.spent_before = spent_before
        # Mean cost of one item in earlier invocations, until this one has its own.
        self.unit_cost_hint = unit_cost_hint
        self.show_progress = show_progress
        self._costed_items = 0  # finished items that reported usage
        self._in_flight = 0
        self._reserved = 0.0  # projected cost of the items in flight
        # The projected cost of one item (None: unknown), e.g. from the stage's estimate.
        self.item_cost: Callable[[WorkItem], float | None] | None = None
        self._fatal: NeuroscribeError | None = None
        self._pending: list[WorkResult] = []
        self._writer: asyncio.Task[None] | None = None

    def _projected(self, item: WorkItem | None) -> float:
        """What one more item will probably cost: the larger of the mean cost of a
        finished item (this job's, else earlier ones') and the item's own estimate (its
        prompts counted and priced as the dry run does), so a fresh job with no history
        still reserves a cost for every request it starts."""
        spent_here = self.spent - self.spent_before
        mean = spent_here / self._costed_items if self._costed_items else self.unit_cost_hint
        own = self.item_cost(item) if item is not None and self.item_cost else None
        return max(mean, own or 0.0)

    def _budget_allows_another(self, projected: float | None = None) -> bool:
        """Whether one more item may start without (probably) passing `max_cost`.

        Items already running will spend too: each reserved its projected cost when it
        started, so the job stops a little early rather than overshoot by
        `concurrency` items.
        """
        if self.max_cost is None:
            return True
        if self.spent >= self.max_cost:
            return False
        if projected is None:
            projected = self._projected(None)
        return self.spent + self._reserved + projected <= self.max_cost

    def check_budget(self, n_items: int) -> None:
        """Raise BudgetExceeded if not one of `n_items` could start within the budget.

        Call it before writing anything, so a rerun with a spent budget changes nothing.
        """
        if n_items and not self._budget_allows_another():
            raise BudgetExceeded(
                f"budget reached: ${self.spent:.4f} of --max-cost ${self.max_cost:.4f} "
                f"spent in {self.rundir.root} (about ${self.unit_cost_hint:.4f} a unit); "
                f"{n_items} {self.stage} units left. Rerun with a higher --max-cost to continue"
            )

    async def _commit(self, result: WorkResult, summary: JobSummary) -> None:
        """Count a finished item now; queue its lines for the writer (see `_write_batch`)."""
        for u in result.usage:
            summary.prompt_tokens += u.prompt_tokens
            summary.completion_tokens += u.completion_tokens
            if u.cached:
                summary.cached_requests += 1
            if u.cost_usd:
                summary.cost_usd += u.cost_usd
                self.spent += u.cost_usd
        if result.usage:
            self._costed_items += 1
        self._pending.append(result)
        if self._writer is not None and self._writer.done():
            self._writer.result()  # a failed write (disk full...) stops the job here
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        # One writer at a time, off the event loop: fsync costs milliseconds on a busy
        # disk, and items that finish meanwhile are written together in the next batch.
        while self._pending:
            batch, self._pending = self._pending, []
            await asyncio.to_thread(self._write_batch, batch)

    def _write_batch(self, batch: list[WorkResult]) -> None:
        """Append a batch: all usage lines first, then the outputs, then the failures.

        So a crash can only leave spend recorded without its output (re-done on resume,
        the answer coming from the response cache), never an output twice.
        """
        self.rundir.append("usage", [u for r in batch for u in r.usage])
        outputs: dict[str, list[BaseModel]] = {}
        for r in batch:
            for name, lines in r.writes.items():
                outputs.setdefault(name, []).extend(lines)
        for name, lines in outputs.items():
            self.rundir.append(name, lines)  # type: ignore[arg-type]
        self.rundir.append("failures", [f for r in batch for f in r.failures])

    async def _flush(self) -> None:
        """Wait until every queued line is on disk (re-raises a write error)."""
        while True:
            if self._writer is not None:
                await self._writer
            if not self._pending:
                return
            self._writer = asyncio.create_task(self._drain())

    def _failure(self, item: WorkItem, reason: str, raw: str | None = None) -> Failure:
        from neuroscribe.llm.base import clip_raw

        k = item.key
        return Failure(
            stage=k.stage,
            unit_id=k.unit_id,
            explanation_id=k.explanation_id,
            sample_index=k.sample_index,
            reason=reason[:2000],
            raw=clip_raw(raw),
            config_hash=k.config_hash,
        )

    async def run(
        self, items: Sequence[WorkItem], worker: Worker, *, skipped: int = 0
    ) -> JobSummary:
        summary = JobSummary(
            self.stage, total=len(items) + skipped, skipped=skipped, config_hash=self.config_hash
        )
        self.check_budget(len(items))
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
            except LLMError as e:
                if getattr(e, "fatal", False):  # a bad key fails every unit alike: stop
                    self._fatal = self._fatal or e
                    return
                result = WorkResult(failures=[self._failure(item, str(e), None)])
            except (OutputError, NeuroscribeError) as e:
                if getattr(e, "fatal", False):  # e.g. every Ray worker lost: stop, resumable
                    self._fatal = self._fatal or e
                    return
                raw = getattr(e, "raw", None)
                result = WorkResult(
                    usage=list(getattr(e, "usage_records", None) or []),
                    failures=[self._failure(item, str(e), raw)],
                )
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
            while not queue.empty() and self._fatal is None:
                item = queue.get_nowait()
                # Estimated once per item: the same figure is checked and reserved.
                projected = self._projected(item) if self.max_cost is not None else 0.0
                if not self._budget_allows_another(projected):
                    queue.put_nowait(item)
                    summary.stopped_for_budget = True
                    return
                self._in_flight += 1
                self._reserved += projected
                try:
                    await handle(item)
                finally:
                    self._in_flight -= 1
                    self._reserved -= projected

        with progress:
            try:
                await asyncio.gather(
                    *(runner() for _ in range(min(self.concurrency, len(items) or 1)))
                )
            finally:
                await self._flush()
        summary.remaining = queue.qsize()
        if self._fatal is not None:
            # Nothing more can work (e.g. the key was refused): one clear error, the
            # finished items saved, the rest left for a rerun.
            raise self._fatal
        return summary


# ---------------------------------------------------------------- stages


def estimate_plan(stage: Stage, plan: Plan) -> StageEstimate:
    """Sum the stage's per-item estimates over a plan (the dry run: nothing is sent).

    An item the real job would record as a failure (a unit with nothing to explain, a
    record it cannot split) is counted as such, as the job would, instead of aborting.
    """
    est = StageEstimate(stage.name, stage.model)
    total = Estimate()
    failing: list[str] = []
    for item in plan.items:
        try:
            total = total + stage.estimate(item)
        except NeuroscribeError as e:
            failing.append(f"{item.unit_id}: {e}")
    est.units = len(plan.items) - len(failing)
    est.requests = total.requests
    est.prompt_tokens = total.prompt_tokens
    est.completion_tokens = total.completion_tokens
    if failing:
        est.notes.append(
            f"{len(failing)} units would be recorded as failures, not sent (first: {failing[0]})"
        )
    return est


def estimate_stage(stage: Stage, run: RunDir, *, retry_failed: bool = False) -> StageEstimate:
    """Plan + estimate: exactly the items a real run would do, counted, none sent."""
    return estimate_plan(stage, stage.plan(run, retry_failed=retry_failed))


def _item_cost(stage: Stage, prices: dict[str, Any]) -> Callable[[WorkItem], float | None]:
    from neuroscribe.llm.pricing import cost

    def item_cost(item: WorkItem) -> float | None:
        try:
            e = stage.estimate(item)
        except NeuroscribeError:
            return None
        return cost(stage.model, e.prompt_tokens, e.completion_tokens, prices)

    return item_cost


async def run_stage(
    stage: Stage,
    run: RunDir,
    *,
    concurrency: int = 8,
    retry_failed: bool = False,
    max_cost: float | None = None,
    show_progress: bool = True,
    prices: dict[str, Any] | None = None,
    executor: Executor | None = None,
) -> JobSummary:
    """Run any stage: plan, check the budget, record the config, do the items.

    With `max_cost` and a price table, each item reserves its estimated cost before it
    starts (see `JobEngine._projected`). `executor` says where items are done (default:
    `InProcess(stage)`); `concurrency` is how many are in flight at once, wherever."""
    plan = stage.plan(run, retry_failed=retry_failed)
    cfg = stage.config()
    h = stage.config_hash
    warning = run.config_change(stage.name, cfg, h)
    if warning:
        log.warning(warning)
    engine = JobEngine(
        run, stage.name, h, concurrency=concurrency, max_cost=max_cost, show_progress=show_progress
    )
    if max_cost is not None:
        spent, unit_cost = run.spend(stage.name)
        engine.spent = engine.spent_before = spent
        engine.unit_cost_hint = unit_cost
        if prices is not None:
            engine.item_cost = _item_cost(stage, prices)
        engine.check_budget(len(plan.items))  # before anything is written
    # Recorded before the work starts, so a killed job's manifest names its config.
    run.update_manifest(stage.name, {"config_hash": h, **cfg}, probes=stage.probes())
    worker = (executor or InProcess(stage)).do
    summary = await engine.run(plan.items, worker, skipped=plan.skipped)
    summary.warnings = [warning] if warning else []
    return summary
