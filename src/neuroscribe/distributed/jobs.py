"""Jobs on a Ray cluster (`--ray ADDRESS`): explain / score items done by a pool of actors.

The driver (this process) keeps everything a job owns: planning, the one `RunDir` that
writes each finished item (usage first, then outputs), failures, progress and the budget
(`neuroscribe.engine`). Only *where an item is done* moves: `RayExecutor` is the engine's
`Executor`, and sends each item to one of N `StageWorker` actors. Resume, failures and
no-duplicates therefore hold exactly as in one process: the keys are planned and the
lines written in the driver alone.

**Workers.** Each actor builds its stage once (model — local weights or an API client —
and explainer or scorer) from the serialisable `RunConfig`, with the api code a single
process uses (`api.open_model`, `explainer_parts`, `build_scorer`), and reports its
configuration hash: a worker whose hash is not the driver's would write into another key
space, so it is refused. A worker never plans: each item travels with what the driver's
plan knows about it (`item_context`: the unit's record, the samples already written, the
explanation and the lines an interrupted attempt stored), so workers need no copy of the
selection and no access to the run directory, except for the response cache
(`RUN/.cache`: per node unless the run directory is on a shared file system) and the
subject model of the output-side scorers.

**Faults** (`WorkerPool`, no Ray in it). An item goes to the live worker with the fewest
items in flight. When a worker dies mid-item (killed, out of memory, its node lost), its
items are done again on other workers — their answers mostly from the response cache —
and a replacement worker is started (at most as many replacements as the pool's size).
An item whose workers die `MAX_TRIES` times is recorded as a failure that says so
(`--retry-failed` tries it again); when no worker is left the job stops with
`WorkersLost`, everything finished saved, and rerunning the command resumes. A driver
killed mid-job takes its actors with it (Ray ends a dead driver's actors); rerunning the
command resumes from the lines on disk, as a single process would.

**Rate limits.** One `--rpm` / `--tpm` for the job, however many workers: a
`SharedLimits` actor holds the token buckets — one pair per model spec, as one process
has — and every worker's rate-limit layer takes from them instead of from its own
(`share_limits`). The layer stays where `make_llm` put it, under the response cache (a
cache hit takes nothing), and every request is counted, retries and multi-request items
included; gating dispatch per item in the driver could not count those.

**Budget.** `--max-cost` stays the engine's: every item's usage lines come back with its
result and are counted in the driver before later items start. The spend of an attempt
lost with its worker is not in usage.jsonl (the redo is mostly answered by the cache).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import pickle
import time
import traceback
import types
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.config import RunConfig
from neuroscribe.errors import ConfigError, LLMError, NeuroscribeError
from neuroscribe.stages.base import WorkItem, WorkResult

log = logging.getLogger(__name__)

KINDS = ("explain", "score")
MAX_TRIES = 3  # workers an item may take down before it is recorded as a failure


class WorkerLost(Exception):
    """The worker an item was sent to died before it answered (internal to the pool)."""


class WorkersLost(NeuroscribeError):
    """No Ray worker is left: the job stops; what finished is saved, a rerun resumes."""

    fatal = True  # the engine stops instead of recording every remaining item


class WorkerDied(NeuroscribeError):
    """An item whose workers kept dying (e.g. it runs them out of memory): its failure."""


class RemoteError(NeuroscribeError):
    """An error raised on a worker that could not travel back to the driver as itself."""


# ---------------------------------------------------------------- the plan's state per item


def item_context(stage: Any, item: WorkItem) -> dict[str, Any]:
    """What the driver's planned `stage` knows about `item` that a worker's stage needs.

    The stages keep what `plan` read in private fields; this function and `adopt` are
    the one place outside them that knows those fields.
    """
    from neuroscribe.stages.explain import ExplainStage
    from neuroscribe.stages.score import ScoreStage

    if isinstance(stage, ExplainStage):
        return {
            "record": stage.records[item.unit_id],
            "done": set(stage._done.get(item.unit_id, ())),  # samples written already
        }
    if isinstance(stage, ScoreStage):
        eid = item.explanation_id or ""
        return {
            "record": stage.records[item.unit_id],
            "explanation": stage._explanations[eid],
            "stored": list(stage._stored.get(eid, [])),  # an interrupted attempt's lines
        }
    raise ConfigError(f"--ray runs the explain and score stages, not {type(stage).__name__}")


def adopt(stage: Any, item: WorkItem, context: dict[str, Any]) -> None:
    """Give a worker's (never planned) stage what the driver's plan knew about `item`."""
    unit = item.unit_id
    stage.records[unit] = context["record"]
    if "done" in context:
        stage._done[unit] = context["done"]
    if "explanation" in context:
        eid = item.explanation_id or ""
        stage._explanations[eid] = context["explanation"]
        stage._stored[eid] = context["stored"]


def forget(stage: Any, item: WorkItem, *, unit_in_use: bool) -> None:
    """Drop what `adopt` gave (a worker holds only the items in flight, not the job)."""
    eid = item.explanation_id
    if eid is not None:
        for name in ("_explanations", "_stored"):
            getattr(stage, name, {}).pop(eid, None)
    if not unit_in_use:
        for name in ("records", "_done", "_splits"):
            getattr(stage, name, {}).pop(item.unit_id, None)


# ---------------------------------------------------------------- building a worker's stage


def stage_model(kind: str, config: RunConfig) -> str:
    """The model spec a stage of `kind` runs on."""
    if kind not in KINDS:
        raise ConfigError(f"--ray runs the stages {', '.join(KINDS)}, not {kind!r}")
    return config.explain.model if kind == "explain" else config.score.model


@asynccontextmanager
async def worker_stage(kind: str, config: RunConfig) -> AsyncIterator[Any]:
    """A live stage built exactly as a single process builds it, with no records (each
    item brings its own); its models are closed on exit."""
    from neuroscribe import api

    stage_model(kind, config)
    if kind == "explain":
        sec = config.explain
        async with (
            api.open_model(sec.model, config, sec.timeout) as llm,
            api.explainer_parts(config, llm) as parts,
        ):
            yield api.explain_stage(config, [], llm, **parts)
        return
    from neuroscribe.stages.score import ScoreStage

    async with api.open_model(config.score.model, config, config.score.timeout) as llm:
        scorer = await api.build_scorer(llm, config)
        yield ScoreStage(scorer, [], config.splits)


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (the driver re-raises it as itself), else a
    `RemoteError` with its type, message and the fields the engine reads."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        out = RemoteError(f"{type(exc).__name__}: {exc}")
        for name in ("raw", "usage_records", "fatal"):
            if hasattr(exc, name):
                setattr(out, name, getattr(exc, name))
        return out


class StageWorker:
    """One actor of the pool (made a Ray actor by `RayExecutor`): its own stage, built
    once by `start`, then `do` for each item it is sent.

    Answers are envelopes, `("ok", value)` or `("error", exception)`, so an item's error
    reaches the driver as the exception `stage.do` raised (the engine decides what it
    means), and a Ray error always means the worker itself is gone.
    """

    def __init__(self, kind: str, config: RunConfig, limits: Any = None) -> None:
        self.kind = kind
        self.config = config
        self.limits = limits
        self.stage: Any = None
        self._stack = AsyncExitStack()
        self._units: Counter[str] = Counter()  # items in flight per unit

    async def start(self) -> tuple[str, Any]:
        try:
            self.stage = await self._stack.enter_async_context(worker_stage(self.kind, self.config))
            shared = share_limits(self.stage, self.limits) if self.limits is not None else 0
            return "ok", {
                "config_hash": self.stage.config_hash,
                "probes": self.stage.probes(),
                "pid": os.getpid(),
                "rate_layers": shared,
            }
        except Exception as e:
            log.exception("worker could not build its %s stage", self.kind)
            return "error", portable(e)

    async def do(self, item: WorkItem, context: dict[str, Any]) -> tuple[str, Any]:
        self._units[item.unit_id] += 1
        try:
            adopt(self.stage, item, context)
            return "ok", await self.stage.do(item)
        except Exception as e:
            if not isinstance(e, NeuroscribeError):
                # The driver logs it without this process's frames: keep them with it.
                log.exception("unexpected error on %s", item.key)
                if hasattr(e, "add_note"):
                    e.add_note("on the Ray worker:\n" + traceback.format_exc())
            return "error", portable(e)
        finally:
            self._units[item.unit_id] -= 1
            in_use = self._units[item.unit_id] > 0
            if not in_use:
                del self._units[item.unit_id]
            forget(self.stage, item, unit_in_use=in_use)

    async def stop(self) -> None:
        await self._stack.aclose()


# ---------------------------------------------------------------- one rate limit for all


class SharedLimits:
    """The job's requests/tokens-per-minute buckets, in one actor all workers consult.

    One pair per model spec, created on first use with the limits the job was given:
    exactly the buckets one process would hold (a `RateLimitedLLM` per model), shared.
    """

    def __init__(self, rpm: float | None, tpm: float | None) -> None:
        self.rates = {"rpm": rpm, "tpm": tpm}
        self.buckets: dict[tuple[str, str], Any] = {}
        self.granted: Counter[str] = Counter()

    def _bucket(self, spec: str, kind: str) -> Any:
        from neuroscribe.llm.limits import TokenBucket

        key = (spec, kind)
        if key not in self.buckets:
            rate = self.rates[kind]
            if not rate:
                raise ConfigError(f"no {kind} limit was set for this job")
            self.buckets[key] = TokenBucket(rate)
        return self.buckets[key]

    async def acquire(self, spec: str, kind: str, n: float = 1.0) -> None:
        await self._bucket(spec, kind).acquire(n)
        self.granted[f"{spec} {kind}"] += n

    async def charge(self, spec: str, kind: str, n: float) -> None:
        self._bucket(spec, kind).charge(n)

    async def stats(self) -> dict[str, float]:
        """What was granted so far, per "spec kind" (for tests and reports)."""
        return dict(self.granted)


class RemoteBucket:
    """Stands in for a `TokenBucket` in a worker's rate-limit layer: takes from the
    job's `SharedLimits` actor instead."""

    def __init__(self, limits: Any, spec: str, kind: str) -> None:
        self.limits = limits
        self.spec = spec
        self.kind = kind
        self._lock: Any = None  # the layer rebinds a bucket's lock per event loop

    async def acquire(self, n: float = 1.0) -> None:
        try:
            await self.limits.acquire.remote(self.spec, self.kind, n)
        except Exception as e:  # the limiter actor is gone: nothing can be sent safely
            raise LLMError(f"the job's shared rate limiter is gone ({e})", fatal=True) from e

    def charge(self, n: float) -> None:
        # Tokens the estimate missed: debt later requests wait out; no answer needed.
        self.limits.charge.remote(self.spec, self.kind, n)


# Never searched for rate-limit layers: weights, tokenizers, HTTP clients, event loops.
_OPAQUE = (
    "torch", "transformers", "tokenizers", "numpy", "httpx", "httpcore", "openai",
    "asyncio", "threading", "concurrent", "sqlite3", "logging", "ray",
)  # fmt: skip


def find_all(root: Any, kind: type, *, limit: int = 200_000) -> list[Any]:
    """Every object of type `kind` reachable from `root` through attributes and
    containers (not through models, tokenizers or HTTP clients)."""
    found, seen, todo = [], set(), [root]
    while todo and len(seen) < limit:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, kind):
            found.append(obj)
        if isinstance(obj, dict):
            todo.extend(obj.values())
        elif isinstance(obj, list | tuple | set | frozenset):
            todo.extend(obj)
        elif not isinstance(
            obj, str | bytes | int | float | type | types.ModuleType | types.FunctionType
        ) and not (type(obj).__module__ or "").startswith(_OPAQUE):
            todo.extend(getattr(obj, "__dict__", {}).values())
    return found


def share_limits(stage: Any, limits: Any) -> int:
    """Point every rate-limit layer of `stage`'s models at the job's `SharedLimits`;
    returns how many layers were found (0: none of its models is rate-limited)."""
    from neuroscribe.llm.limits import RateLimitedLLM

    layers = find_all(stage, RateLimitedLLM)
    for layer in layers:
        if layer.rpm is not None:
            layer.rpm = RemoteBucket(limits, layer.spec, "rpm")
        if layer.tpm is not None:
            layer.tpm = RemoteBucket(limits, layer.spec, "tpm")
    return len(layers)


# ---------------------------------------------------------------- dispatch (no Ray here)


@dataclass
class _Slot:
    handle: Any
    index: int
    in_flight: int = 0
    alive: bool = True


class WorkerPool:
    """Which worker does an item, and what happens when one dies.

    `spawn(index)` starts a worker and returns its handle (raising if it cannot start),
    `call(handle, item, context)` does an item there (raising `WorkerLost` when the
    worker died), `kill(handle)` ends one. Ray-free, so the bookkeeping is unit-tested.
    """

    def __init__(
        self,
        spawn: Callable[[int], Awaitable[Any]],
        call: Callable[[Any, WorkItem, dict[str, Any]], Awaitable[WorkResult]],
        kill: Callable[[Any], Awaitable[None]],
        *,
        size: int,
        max_tries: int = MAX_TRIES,
        replacements: int | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"a worker pool needs at least one worker, not {size}")
        self.spawn, self.call, self.kill = spawn, call, kill
        self.size = size
        self.max_tries = max_tries
        self.replacements_left = size if replacements is None else replacements
        self.slots: list[_Slot] = []
        self.lost = 0  # workers that died
        self.retried = 0  # item attempts redone after their worker died
        self.start_s = 0.0  # seconds the first workers took to start (models loaded)
        self._spawning = 0
        self._next = 0
        self._changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._started: asyncio.Task[None] | None = None

    async def ensure_started(self) -> None:
        """Start the workers once (concurrent first callers wait for the same start)."""
        if self._started is None:
            self._started = asyncio.ensure_future(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        self._next = self.size
        t0 = time.perf_counter()
        results = await asyncio.gather(
            *(self.spawn(i) for i in range(self.size)), return_exceptions=True
        )
        self.start_s = time.perf_counter() - t0
        self.slots = [
            _Slot(h, i) for i, h in enumerate(results) if not isinstance(h, BaseException)
        ]
        errors = [e for e in results if isinstance(e, BaseException)]
        if errors:
            await self.close()
            raise errors[0]

    async def run(self, item: WorkItem, context: dict[str, Any]) -> WorkResult:
        """Do `item` on a live worker; on another if that one dies (see the module doc)."""
        await self.ensure_started()
        tries = 0
        while True:
            slot = await self._pick()
            slot.in_flight += 1
            try:
                return await self.call(slot.handle, item, context)
            except WorkerLost as e:
                tries += 1
                self._lost(slot, e)
                if self._exhausted():
                    raise self._no_worker() from None  # the job's fault, not the item's
                if tries >= self.max_tries:
                    raise WorkerDied(
                        f"{item.key.stage} {item.key.unit_id}: the Ray worker doing it died "
                        f"{tries} times (last: {e}); it may need more memory than a worker "
                        "has. Rerun with --retry-failed to try it again"
                    ) from None
                self.retried += 1
                log.warning("%s: its Ray worker died (%s); doing it again", item.key.unit_id, e)
            finally:
                slot.in_flight -= 1

    async def _pick(self) -> _Slot:
        while True:
            live = [s for s in self.slots if s.alive]
            if live:
                return min(live, key=lambda s: s.in_flight)
            if self._exhausted():
                raise self._no_worker()
            self._changed.clear()
            await self._changed.wait()

    def _exhausted(self) -> bool:
        """No live worker, and none starting."""
        return not self._spawning and not any(s.alive for s in self.slots)

    def _no_worker(self) -> WorkersLost:
        return WorkersLost(
            f"every Ray worker died ({self.lost} lost, no replacement left or able to "
            "start); the finished items are saved: rerun the same command to resume"
        )

    def _lost(self, slot: _Slot, error: Exception) -> None:
        if not slot.alive:
            return
        slot.alive = False
        self.lost += 1
        log.warning("Ray worker %d died: %s", slot.index, error)
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._spawning += 1
            task = asyncio.ensure_future(self._replace(self._next))
            self._next += 1
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _replace(self, index: int) -> None:
        try:
            handle = await self.spawn(index)
        except Exception as e:
            log.warning("could not start a replacement Ray worker: %s", e)
        else:
            self.slots.append(_Slot(handle, index))
        finally:
            self._spawning -= 1
            self._changed.set()

    async def close(self) -> None:
        """Stop starting workers and end every live one."""
        starting = list(self._tasks)
        first = self._started
        if first is not None and not first.done() and first is not asyncio.current_task():
            starting.append(first)  # the actors it was starting end with their handles
        for task in starting:
            task.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        live = [s for s in self.slots if s.alive]
        for s in live:
            s.alive = False
        await asyncio.gather(*(self.kill(s.handle) for s in live), return_exceptions=True)


# ---------------------------------------------------------------- the Ray executor


def plan_workers(
    resources: dict[str, float], workers: int | None, *, on_gpu: bool
) -> tuple[int, dict[str, float]]:
    """How many workers, and what each asks of the cluster.

    A local model on a cluster with GPUs: one worker per GPU by default, each holding
    its share of one. Otherwise one per CPU. Asking for more workers than that shares
    the devices between them (fractions rounded down to Ray's 1/10,000 so they all fit).
    """

    def share(total: float, n: int) -> float:
        return min(1.0, math.floor(total / n * 10_000) / 10_000)

    cpus = float(resources.get("CPU", 1.0)) or 1.0
    gpus = float(resources.get("GPU", 0.0))
    if on_gpu and gpus >= 1:
        n = workers or int(gpus)
        return n, {"num_gpus": share(gpus, n), "num_cpus": share(cpus, n)}
    n = workers or max(1, int(cpus))
    return n, {"num_cpus": share(cpus, n)}


def _lost_errors(ray: Any) -> tuple[type[BaseException], ...]:
    """Ray's errors that mean the worker (its process or its node) is gone."""
    x = ray.exceptions
    return (
        x.RayActorError,  # incl. ActorDiedError, ActorUnavailableError
        x.WorkerCrashedError,
        x.NodeDiedError,
        x.ObjectLostError,
        x.LocalRayletDiedError,
    )


def unwrap(envelope: tuple[str, Any]) -> Any:
    """A worker's answer: the value of `("ok", value)`; `("error", exc)` raises exc."""
    status, value = envelope
    if status != "ok":
        raise value
    return value


class PoolExecutor:
    """The engine's `Executor` on a `WorkerPool`: each item goes with its context from
    the driver's plan (`item_context`); workers start with the first item, so a job
    with nothing left to do starts none.

    `stage` is the driver's: the one `run_stage` plans.
    """

    def __init__(self, stage: Any, pool: WorkerPool) -> None:
        self.stage = stage
        self.pool = pool

    async def do(self, item: WorkItem) -> WorkResult:
        try:
            await self.pool.ensure_started()
        except NeuroscribeError as e:
            e.fatal = True  # type: ignore[attr-defined]  # no worker: stop, don't fail each item
            raise
        except Exception as e:
            raise WorkersLost(f"the workers could not start: {type(e).__name__}: {e}") from e
        return await self.pool.run(item, item_context(self.stage, item))

    def report(self) -> dict[str, Any]:
        """For the stage summary's details."""
        return {
            "ray": {
                "workers": self.pool.size,
                "start_s": round(self.pool.start_s, 3),
                "workers_lost": self.pool.lost,
                "items_retried": self.pool.retried,
            }
        }

    def warnings(self) -> list[str]:
        if not self.pool.lost:
            return []
        return [
            f"{self.stage.name}: {self.pool.lost} Ray worker(s) died during the job; "
            f"{self.pool.retried} item attempt(s) in flight on them were done again elsewhere"
        ]


class RayExecutor(PoolExecutor):
    """The engine's `Executor` on a pool of Ray actors (see the module docstring).

        async with RayExecutor("explain", config, stage) as executor:
            await run_stage(stage, run, executor=executor, concurrency=executor.concurrency)

    `stage` is the driver's: the one `run_stage` plans, whose plan each item's context
    is read from. Needs a connected Ray (`neuroscribe.distributed.cluster.ray_cluster`).
    """

    def __init__(
        self, kind: str, config: RunConfig, stage: Any, *, workers: int | None = None
    ) -> None:
        from neuroscribe.distributed.cluster import import_ray
        from neuroscribe.llm.registry import backend_info

        self.ray = import_ray()
        if not self.ray.is_initialized():
            raise ConfigError("RayExecutor needs a Ray connection: use ray_cluster(address)")
        spec = stage_model(kind, config)
        self.kind = kind
        # Workers may run elsewhere: they get the run directory as an absolute path.
        self.config = config.model_copy(update={"run_dir": Path(config.run_dir).resolve()})
        self.job = uuid.uuid4().hex[:8]
        self.size, self.resources = plan_workers(
            self.ray.cluster_resources(),
            workers or config.jobs.ray_workers,
            on_gpu=backend_info(spec).local,
        )
        self.probes: dict[str, Any] = {}
        self.limits: Any = None
        self._lost_errors = _lost_errors(self.ray)
        super().__init__(stage, WorkerPool(self._spawn, self._call, self._kill, size=self.size))

    @property
    def concurrency(self) -> int:
        """Items in flight: `--concurrency` per worker, as one process has in flight."""
        return self.size * self.config.jobs.concurrency

    async def __aenter__(self) -> RayExecutor:
        jobs = self.config.jobs
        if jobs.rpm or jobs.tpm:
            self.limits = (
                self.ray.remote(SharedLimits)
                .options(name=f"neuroscribe-limits-{self.job}", num_cpus=0)
                .remote(jobs.rpm, jobs.tpm)
            )
        self._config_ref = self.ray.put(self.config)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.pool.close()
        if self.limits is not None:
            self.ray.kill(self.limits)

    # -- the pool's three operations, on Ray

    async def _spawn(self, index: int) -> Any:
        actor = self.ray.remote(StageWorker).options(
            name=f"neuroscribe-{self.kind}-{self.job}-{index}",
            max_concurrency=self.config.jobs.concurrency + 2,  # items + start/stop
            **self.resources,
        )
        handle = actor.remote(self.kind, self._config_ref, self.limits)
        try:
            info = unwrap(await handle.start.remote())
        except self._lost_errors as e:
            raise WorkerLost(f"worker {index} died while starting: {e}") from e
        except BaseException:
            self.ray.kill(handle)
            raise
        expected = self.stage.config_hash
        if info["config_hash"] != expected:
            self.ray.kill(handle)
            raise ConfigError(
                f"{self.kind}: a Ray worker built a stage with config {info['config_hash']}, "
                f"the driver planned {expected}; its lines would not be found on resume. "
                "Run without --ray, and report this"
            )
        if (self.config.jobs.rpm or self.config.jobs.tpm) and not info["rate_layers"]:
            log.warning("%s: --rpm/--tpm: the worker's models have no rate limit", self.kind)
        self.probes.update(info["probes"] or {})
        return handle

    async def _call(self, handle: Any, item: WorkItem, context: dict[str, Any]) -> WorkResult:
        ref = handle.do.remote(item, context)
        try:
            envelope = await ref
        except asyncio.CancelledError:
            self.ray.cancel(ref)  # the worker stops that item too
            raise
        except self._lost_errors as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise WorkerLost(f"{type(e).__name__}: {first}") from None
        except self.ray.exceptions.RayTaskError as e:  # an error outside stage.do
            raise e.as_instanceof_cause() from None
        return unwrap(envelope)

    async def _kill(self, handle: Any) -> None:
        # Close its models cleanly; one already dead or stuck is killed below either way.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(handle.stop.remote(), timeout=10)
        self.ray.kill(handle)


__all__ = [
    "MAX_TRIES",
    "PoolExecutor",
    "RayExecutor",
    "RemoteBucket",
    "SharedLimits",
    "StageWorker",
    "WorkerDied",
    "WorkerLost",
    "WorkerPool",
    "WorkersLost",
    "item_context",
    "plan_workers",
    "share_limits",
]
