"""The scheduler: the server's model work, on two threads with an event loop each.

Jobs run on one loop; single calls (`/v1/explain`, `/v1/simulate`, `/v1/score`) on
another, so a job whose work is CPU-bound on its loop (prompt building, token counting,
scoring maths, an in-process fake or cheap model) never holds a single call past its
timeout. Models shared by single calls live on the calls loop; a local model's weights
are shared by both (its lock serialises their use).

Jobs run through the library facade (`api.run_async` / `explain_async` / `score_async`)
exactly as `neuroscribe run` runs them, so the engine owns per-unit concurrency,
retries, failure isolation and resume, and the LLM layers own rate limits, budgets and
cost. The scheduler owns only how many jobs run at once (`max_jobs`; the rest wait,
queued) and keeps the HTTP side responsive: model work never runs on the server's loop.

Restart: the job store says which jobs were queued or running when the server died;
`start()` queues them again and each resumes from its run directory (the engine skips
every unit whose lines are already there), so nothing is redone or written twice.

API keys posted with a job live in `_keys` (memory) only; after a restart a job uses the
server's own environment (e.g. `OPENAI_API_KEY`), as `neuroscribe run` would.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import SecretStr

from neuroscribe.errors import BudgetExceeded, NeuroscribeError
from neuroscribe.llm.secrets import SECRETS
from neuroscribe.service.runs import ProgressTracker
from neuroscribe.service.store import ACTIVE, JobStore

scrub = SECRETS.scrub

log = logging.getLogger(__name__)
T = TypeVar("T")

PROGRESS_EVERY_S = 0.5


def build_config(run_dir: Path, stored: dict[str, Any], api_key: SecretStr | None = None):
    """The job's RunConfig: the stored sections, its run directory, the key if any."""
    from neuroscribe.config import RunConfig

    data = {k: v for k, v in stored.items() if k != "run_dir"}
    jobs = dict(data.get("jobs") or {})
    jobs["show_progress"] = False  # the server's terminal is no progress bar
    data["jobs"] = jobs
    if api_key is not None:
        data["endpoint"] = {**(data.get("endpoint") or {}), "api_key": api_key}
    return RunConfig.build(run_dir=run_dir, **data)


def score_stage_name(config: Any) -> str:
    from neuroscribe.scorer.registry import stage_name

    return stage_name(config.score.scorer, default=config.score.scorer)


class Scheduler:
    def __init__(
        self,
        root: Path,
        store: JobStore,
        *,
        max_jobs: int = 2,
        ray: str | None = None,
        ray_workers: int | None = None,
    ) -> None:
        self.root = root
        self.store = store
        self.max_jobs = max(1, max_jobs)
        # `serve --ray ADDRESS`: every job's explain/score items go to that cluster (the
        # server's choice, never a client's: a posted config naming a cluster is refused).
        self.ray = ray
        self.ray_workers = ray_workers
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="neuroscribe-scheduler",
                                        daemon=True)  # fmt: skip
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel_requested: set[str] = set()
        self._keys: dict[str, SecretStr] = {}
        self._models: OrderedDict[tuple, Any] = OrderedDict()  # on the calls loop
        self.calls_loop = asyncio.new_event_loop()
        self._calls_thread = threading.Thread(
            target=self._calls_main, name="neuroscribe-calls", daemon=True
        )
        self._slots: asyncio.Semaphore | None = None
        self._stopping = False

    # ------------------------------------------------------------ lifecycle

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self._slots = asyncio.Semaphore(self.max_jobs)
        self.loop.run_forever()

    def _calls_main(self) -> None:
        asyncio.set_event_loop(self.calls_loop)
        self.calls_loop.run_forever()

    def start(self) -> list[str]:
        """Start the threads; queue again every job the last server left active."""
        self._thread.start()
        self._calls_thread.start()
        resumed = []
        jobs, _ = self.store.list(states=ACTIVE)
        for job in reversed(jobs):  # oldest first
            if job["state"] == "running":
                self.store.event(job["id"], "message", {
                    "text": "the server stopped while this job ran: resuming it from the "
                            "run directory (finished units are kept, none is redone)"})  # fmt: skip
                self.store.set_state(job["id"], "queued")
            self.submit(job["id"])
            resumed.append(job["id"])
        return resumed

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every job (they stay queued and resume at the next start), then the loop."""
        if not self._thread.is_alive():
            return
        self._stopping = True

        async def _shutdown() -> None:
            tasks = list(self._tasks.values())
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        async def _close_models() -> None:
            for llm in self._models.values():
                with contextlib.suppress(Exception):
                    await llm.aclose()
            self._models.clear()

        try:
            asyncio.run_coroutine_threadsafe(_shutdown(), self.loop).result(timeout)
        except Exception:
            log.warning("jobs did not stop within %.0f s", timeout)
        if self._calls_thread.is_alive():
            try:
                asyncio.run_coroutine_threadsafe(_close_models(), self.calls_loop).result(timeout)
            except Exception:
                log.warning("single-call models did not close within %.0f s", timeout)
            self.calls_loop.call_soon_threadsafe(self.calls_loop.stop)
            self._calls_thread.join(timeout)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)

    # ------------------------------------------------------------ jobs

    def remember_key(self, job_id: str, key: SecretStr | None) -> None:
        if key is not None:
            self._keys[job_id] = key

    def submit(self, job_id: str) -> None:
        self.loop.call_soon_threadsafe(self._spawn, job_id)

    def _spawn(self, job_id: str) -> None:
        if job_id in self._tasks or self._stopping:
            return
        self._cancel_requested.discard(job_id)
        task = self.loop.create_task(self._job(job_id))
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))

    def cancel(self, job_id: str) -> None:
        # A job still waiting for a slot is settled here, on the caller's thread: the
        # scheduler's loop may be busy with another job's work for a while, and the
        # slot-holder re-reads the state (not "queued" any more) before it starts.
        self.store.transition(job_id, "queued", "cancelled")

        def _cancel() -> None:
            self._cancel_requested.add(job_id)
            task = self._tasks.get(job_id)
            if task is not None:
                task.cancel()
            else:  # not started (or already finished): settle it here
                job = self.store.get(job_id)
                if job and job["state"] in ACTIVE:
                    self.store.set_state(job_id, "cancelled")

        self.loop.call_soon_threadsafe(_cancel)

    def is_busy(self, job_id: str) -> bool:
        return job_id in self._tasks

    async def _job(self, job_id: str) -> None:
        try:
            await self._queued_job(job_id)
        except asyncio.CancelledError:  # cancelled while waiting for a free slot
            job = self.store.get(job_id)
            if job_id in self._cancel_requested and job and job["state"] in ACTIVE:
                self.store.set_state(job_id, "cancelled")

    async def _queued_job(self, job_id: str) -> None:
        from neuroscribe import api

        assert self._slots is not None
        async with self._slots:
            job = self.store.get(job_id)
            if job is None or job["state"] != "queued":
                return
            run_dir = self.root / job["run"]
            try:
                config = build_config(run_dir, job["config"], self._keys.get(job_id))
                if self.ray is not None:
                    # Set when the job runs, not stored: a server restarted without --ray
                    # resumes it in process, to the same lines.
                    config.jobs.ray = self.ray
                    config.jobs.ray_workers = config.jobs.ray_workers or self.ray_workers
            except NeuroscribeError as e:
                self.store.set_state(job_id, "failed", error=str(e))
                return
            self.store.set_state(job_id, "running", attempts=job["attempts"] + 1,
                                 started_at=job["started_at"] or _now(), error=None)  # fmt: skip
            stages = job["stages"]
            tracker = ProgressTracker(
                run_dir,
                None,
                job["usage_offset"],
                explain_stage="explain" if stages != "score" else "",
                score_stage=None if stages == "explain" else score_stage_name(config),
            )
            summaries = dict(job["summaries"] or {})

            def on_stage(summary: Any) -> None:
                # With what the stage reported about itself (the simulation strategy, the
                # Ray pool that did its items), as plain JSON.
                details = json.loads(json.dumps(summary.details, default=str))
                summaries[summary.stage] = {**summary.as_dict(), "details": details}
                self.store.update(job_id, summaries=summaries)
                self.store.event(job_id, "stage", {"stage": summary.stage, "line": summary.line(),
                                                   **summary.as_dict()})  # fmt: skip

            hooks = api.Hooks(
                message=lambda msg: self.store.event(job_id, "message", {"text": msg}),
                stage=on_stage,
            )
            watcher = asyncio.create_task(self._watch(job_id, tracker, config))
            state, error = "done", None
            try:
                if stages == "run":
                    await api.run_async(config, hooks)
                elif stages == "explain":
                    await api.explain_async(config, hooks=hooks)
                else:
                    await api.score_async(config, hooks=hooks)
            except asyncio.CancelledError:
                state = "cancelled" if job_id in self._cancel_requested else "queued"
            except BudgetExceeded as e:
                state, error = "failed", str(e)
            except NeuroscribeError as e:
                state, error = "failed", str(e)
            except OSError as e:
                state, error = "failed", f"{e.strerror or type(e).__name__}: {e.filename or ''}"
            except Exception as e:  # a bug: this job fails, the server and other jobs go on
                log.error("job %s: internal error %s", job_id, scrub(repr(e)))
                state, error = "failed", f"internal error: {type(e).__name__}: {e}"
            finally:
                watcher.cancel()
                await asyncio.gather(watcher, return_exceptions=True)
            await self._progress(job_id, tracker, config, force=True)
            if state == "queued":
                self.store.event(job_id, "message", {"text": "server stopping: the job resumes "
                                                     "when it starts again"})  # fmt: skip
                self.store.update(job_id, state="queued")
            else:
                self.store.set_state(job_id, state, error=error)

    async def _watch(self, job_id: str, tracker: ProgressTracker, config: Any) -> None:
        while True:
            await self._progress(job_id, tracker, config)
            await asyncio.sleep(PROGRESS_EVERY_S)

    async def _progress(self, job_id: str, tracker: ProgressTracker, config: Any,
                        force: bool = False) -> None:  # fmt: skip
        try:
            if tracker.units is None and tracker.run.has_records():
                from neuroscribe import api

                tracker.units = {r.unit_id for r in await asyncio.to_thread(api.load_units, config)}
            snap = await asyncio.to_thread(tracker.poll)
        except Exception as e:  # progress is a view: never the reason a job fails
            log.debug("progress of %s: %s", job_id, e)
            return
        if force or snap != getattr(tracker, "_last", None):
            tracker._last = snap  # type: ignore[attr-defined]
            self.store.update(job_id, progress=snap)
            self.store.event(job_id, "progress", snap)

    # ------------------------------------------------------------ single calls

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float) -> concurrent.futures.Future[T]:
        """Run `fn()` on the calls loop (where the single calls' shared models live)."""

        async def bounded() -> T:
            return await asyncio.wait_for(fn(), timeout)

        return asyncio.run_coroutine_threadsafe(bounded(), self.calls_loop)

    async def model(self, spec: str, base_url: str | None, api_key: SecretStr | None,
                    timeout: float) -> Any:  # fmt: skip
        """A model for single calls, built and preflighted once, shared by later calls."""
        from neuroscribe import api
        from neuroscribe.config import RunConfig
        from neuroscribe.llm import preflight

        key_id = hash(api_key.get_secret_value()) if api_key is not None else None
        k = (spec, base_url, key_id, timeout)
        llm = self._models.get(k)
        if llm is not None:
            self._models.move_to_end(k)
            return llm
        config = RunConfig.build(
            run_dir=self.root / ".neuroscribe" / "calls",
            endpoint={"base_url": base_url, "api_key": api_key},
            jobs={"cache": False, "show_progress": False},
        )
        llm = api.make_model(spec, config, timeout)
        try:
            await preflight(llm)
        except BaseException:
            await llm.aclose()
            raise
        self._models[k] = llm
        while len(self._models) > 4:
            _, old = self._models.popitem(last=False)
            await old.aclose()
        return llm


def _now() -> str:
    from neuroscribe.service.store import now

    return now()
