"""Distributed jobs (`--ray`): the executor seam, the worker pool, one rate limit, faults.

Fast tests run the pieces without Ray: the engine with an explicit executor, and
`PoolExecutor` over in-process `StageWorker`s whose stages never planned (items,
contexts and answers pickled both ways, as Ray does), with workers that "die" on cue.

Slow tests start a real Ray cluster on loopback (one per module) and run real jobs on
it with `svcfake:` (tests/_service_fake.py), which every Ray worker process registers
through Ray's `worker_process_setup_hook` (`_worker_setup` below): a model built from
its spec in another process, as a real backend is. They check that `--ray` writes the
lines one process writes, that killing a worker or the driver loses and duplicates
nothing, and that one `--rpm` holds across workers.
"""

from __future__ import annotations

import asyncio
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import _service_fake
from _cli import run_cli
from _tiny_jobs import CLI_FLAGS, EXPLAINER, SPLITS, json_scorer, make_run, outputs
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.distributed.jobs import (
    PoolExecutor,
    RemoteBucket,
    RemoteError,
    SharedLimits,
    StageWorker,
    WorkerLost,
    WorkerPool,
    WorkersLost,
    plan_workers,
    portable,
    share_limits,
    unwrap,
)
from neuroscribe.engine import InProcess, run_stage
from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.explainer import ExplainerConfig, TokenRowExplainer
from neuroscribe.llm import make_llm
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ItemKey, NeuronRecord
from neuroscribe.stages.base import WorkItem
from neuroscribe.stages.explain import ExplainStage
from neuroscribe.stages.score import ScoreStage

TESTS = Path(__file__).parent
STAMPS_ENV = "NEUROSCRIBE_TEST_STAMPS"


class StampFake(_service_fake.ServiceFake):
    """`stampfake:NAME`: svcfake that appends "pid time" of every call to $STAMPS_ENV."""

    async def chat(self, *args: Any, **kwargs: Any):
        path = os.environ.get(STAMPS_ENV)
        if path:
            with open(path, "a", encoding="utf-8") as f:
                f.write(f"{os.getpid()} {time.time()}\n")
        return await super().chat(*args, **kwargs)


def _worker_setup() -> None:
    """Register the test backends (in the driver and, by Ray's hook, in every worker)."""
    from neuroscribe.llm.fake import _chat_tokens, tokenize
    from neuroscribe.llm.registry import BackendInfo, register_backend

    _service_fake.register()
    register_backend(
        "stampfake:",
        lambda spec, **kw: StampFake(spec, **kw),
        BackendInfo(
            name="stampfake",
            prefix="stampfake:",
            local=True,
            token_counter=lambda spec: (lambda t: len(tokenize(t)), _chat_tokens, "fake"),
        ),
    )


_worker_setup()


def roundtrip(obj: Any) -> Any:
    return pickle.loads(pickle.dumps(obj))


ALL = ("explanations", "simulations", "scores", "usage")
RESULTS = ("explanations", "simulations", "scores")


def lines(run: Path, names: tuple[str, ...] = ALL, drop: tuple[str, ...] = ()) -> dict:
    """Every line of each file, sorted, without what differs between two runs anyway
    (timestamps, latencies, and the fields named in `drop`): equal for the same lines.

    After a kill, an answer the lost attempt left in the response cache comes back as a
    cache hit, so tests of faults drop the per-line `usage`."""
    out: dict[str, list[str]] = {}
    for name in names:
        path = run / f"{name}.jsonl"
        rows = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
        for r in rows:
            for key in ("created_at", "latency_s", *drop):
                r.pop(key, None)
        out[name] = sorted(json.dumps(r, sort_keys=True) for r in rows)
    return out


# ---------------------------------------------------------------- in-process workers


def explain_stage(llm: Any, records: list[NeuronRecord], n_samples: int = 1) -> ExplainStage:
    cfg = ExplainerConfig(**{**EXPLAINER.model_dump(), "n_samples": n_samples})
    return ExplainStage(TokenRowExplainer(llm, cfg), records, SPLITS)


def svcfake() -> Any:
    return _service_fake.ServiceFake("svcfake:x")


def loopback(
    driver: Any, make_stage: Any, *, size: int = 2, dies: Any = None, replacements=None
) -> PoolExecutor:
    """A `PoolExecutor` on `StageWorker`s in this process, each with its own stage that
    never planned; `dies(worker, item)` → True makes that call fail as a dead worker."""

    async def spawn(index: int) -> StageWorker:
        worker = StageWorker(driver.name, RunConfig())
        worker.stage = make_stage()
        worker.index = index  # type: ignore[attr-defined]
        return worker

    async def call(worker: StageWorker, item: WorkItem, context: dict) -> Any:
        await asyncio.sleep(0)
        if dies is not None and dies(worker, item):
            raise WorkerLost("killed")
        return unwrap(roundtrip(await worker.do(roundtrip(item), roundtrip(context))))

    async def kill(worker: StageWorker) -> None:
        return None

    pool = WorkerPool(spawn, call, kill, size=size, replacements=replacements)
    return PoolExecutor(driver, pool)


def go(stage: Any, run: RunDir, **kw: Any):
    return asyncio.run(run_stage(stage, run, show_progress=False, concurrency=2, **kw))


def test_the_engine_does_items_where_its_executor_says_and_in_process_by_default(tmp_path):
    seen: list[str] = []

    class Counting(InProcess):
        async def do(self, item):
            seen.append(item.unit_id)
            return await super().do(item)

    a, b = make_run(tmp_path / "a", 3), make_run(tmp_path / "b", 3)
    records = RunDir(a).records()
    go(explain_stage(svcfake(), records), RunDir(a))
    stage = explain_stage(svcfake(), records)
    go(stage, RunDir(b), executor=Counting(stage))
    assert sorted(seen) == ["m/0/0", "m/0/1", "m/0/2"]
    assert lines(a) == lines(b) and len(lines(b)["explanations"]) == 3


@pytest.mark.slow
def test_workers_that_never_planned_resume_a_job_exactly_as_one_process(tmp_path):
    # An interrupted job: one unit has 1 of its 2 samples, one explanation has one of
    # its two simulations stored but no score. Resumed by one process and by workers
    # whose stages never planned (each item brings its context), the lines are equal.
    full = make_run(tmp_path / "full", 4)
    records, run = RunDir(full).records(), RunDir(full)
    go(explain_stage(svcfake(), records, n_samples=2), run)
    go(ScoreStage(json_scorer(svcfake()), records, SPLITS), run)
    # (A resumed call asks for fewer samples: its usage differs from the first call's.)
    uninterrupted = lines(full, RESULTS, drop=("usage",))
    expl = (full / "explanations.jsonl").read_text().splitlines()
    cut = next(e for e in run.explanations() if (e.unit_id, e.sample_index) == ("m/0/1", 1))
    victim = next(e for e in run.explanations() if e.unit_id == "m/0/2")
    sims = (full / "simulations.jsonl").read_text().splitlines()
    kept_sims = [s for s in sims if victim.explanation_id not in s]
    kept_sims.append(next(s for s in sims if victim.explanation_id in s))  # one of two
    scores = (full / "scores.jsonl").read_text().splitlines()
    for name, kept in (
        ("explanations", [x for x in expl if cut.explanation_id not in x]),
        ("simulations", kept_sims),
        (
            "scores",
            [x for x in scores if victim.explanation_id not in x and cut.explanation_id not in x],
        ),
    ):
        (full / f"{name}.jsonl").write_text("\n".join(kept) + "\n")
    one, pool = tmp_path / "one", tmp_path / "pool"
    shutil.copytree(full, one)
    shutil.copytree(full, pool)

    for root, distributed in ((one, False), (pool, True)):
        rd = RunDir(root)
        driver = explain_stage(svcfake(), records, n_samples=2)
        ex = loopback(driver, lambda: explain_stage(svcfake(), [], n_samples=2))
        s = go(driver, rd, executor=ex if distributed else None)
        assert (s.done, s.skipped) == (1, 3)
        driver = ScoreStage(json_scorer(svcfake()), records, SPLITS)
        ex = loopback(driver, lambda: ScoreStage(json_scorer(svcfake()), [], SPLITS))
        s = go(driver, rd, executor=ex if distributed else None)
        assert (s.done, s.skipped) == (2, 6)
        if distributed:  # the workers keep nothing once their items are done
            for slot in ex.pool.slots:
                st = slot.handle.stage
                assert not st.records and not st._explanations and not st._stored
    assert lines(one) == lines(pool)
    assert lines(pool, RESULTS, drop=("usage",)) == uninterrupted
    got = outputs(pool)
    assert not got["duplicates"] and not got["failures"]
    assert len(got["scores"]) == 4 and len(lines(pool)["explanations"]) == 8


def test_a_dead_workers_item_is_done_again_on_another_and_the_worker_replaced(tmp_path):
    root = make_run(tmp_path / "run", 6)
    records = RunDir(root).records()

    def dies(worker, item) -> bool:
        return worker.index == 0  # worker 0 dies on its first item

    driver = explain_stage(svcfake(), records)
    ex = loopback(driver, lambda: explain_stage(svcfake(), []), dies=dies)
    s = go(driver, RunDir(root), executor=ex)
    assert (s.done, s.failed) == (6, 0)
    assert (ex.pool.lost, ex.pool.retried) == (1, 1)
    assert [slot.index for slot in ex.pool.slots] == [0, 1, 2]  # 2 = the replacement
    assert ex.warnings() and "1 Ray worker(s) died" in ex.warnings()[0]
    ref = make_run(tmp_path / "ref", 6)
    go(explain_stage(svcfake(), records), RunDir(ref))
    assert lines(root) == lines(ref)


def test_an_item_that_keeps_killing_workers_is_a_failure_and_the_job_goes_on(tmp_path):
    root = make_run(tmp_path / "run", 4)
    records = RunDir(root).records()
    driver = explain_stage(svcfake(), records)
    ex = loopback(
        driver, lambda: explain_stage(svcfake(), []), dies=lambda w, item: item.unit_id == "m/0/2"
    )
    s = go(driver, RunDir(root), executor=ex)
    assert (s.done, s.failed) == (3, 1)
    (failure,) = RunDir(root).failures()
    assert failure.unit_id == "m/0/2" and "died 3 times" in failure.reason
    assert "--retry-failed" in failure.reason
    assert ex.pool.lost == 3  # 2 workers + 2 replacements, one still alive
    s = go(explain_stage(svcfake(), records), RunDir(root))
    assert s.skipped == 4  # a failed item is not retried without --retry-failed
    # --retry-failed, on workers that survive it, finishes the job.
    driver = explain_stage(svcfake(), records)
    again = loopback(driver, lambda: explain_stage(svcfake(), []))
    s = go(driver, RunDir(root), executor=again, retry_failed=True)
    assert s.done == 1 and len(RunDir(root).explanations()) == 4


def test_when_no_worker_is_left_the_job_stops_resumably(tmp_path):
    root = make_run(tmp_path / "run", 8)
    records = RunDir(root).records()
    calls: list[str] = []

    def dies(worker, item) -> bool:
        calls.append(item.unit_id)
        return len(calls) > 3  # three items done, then every worker dies

    driver = explain_stage(svcfake(), records)
    ex = loopback(driver, lambda: explain_stage(svcfake(), []), dies=dies, replacements=1)
    with pytest.raises(WorkersLost, match="rerun the same command to resume"):
        go(driver, RunDir(root), executor=ex)
    rd = RunDir(root)
    assert len(rd.explanations()) == 3 and rd.failures() == []  # nothing marked failed
    s = go(explain_stage(svcfake(), records), rd)  # the rerun does the rest, once each
    assert (s.done, s.skipped) == (5, 3)
    assert not outputs(root)["duplicates"]


def test_workers_that_cannot_start_stop_the_job_with_their_error(tmp_path):
    root = make_run(tmp_path / "run", 3)
    driver = explain_stage(svcfake(), RunDir(root).records())
    killed: list[Any] = []

    async def spawn(index: int) -> str:
        if index == 1:
            raise ConfigError("cannot load hf:nowhere")
        return f"w{index}"

    async def kill(handle: Any) -> None:
        killed.append(handle)

    async def call(handle: Any, item: WorkItem, context: dict) -> Any:
        raise AssertionError("no item may be sent")

    ex = PoolExecutor(driver, WorkerPool(spawn, call, kill, size=2))
    with pytest.raises(ConfigError, match="hf:nowhere"):
        go(driver, RunDir(root), executor=ex)
    assert killed == ["w0"]  # the one that started is ended
    rd = RunDir(root)
    assert rd.explanations() == [] and rd.failures() == []


def test_a_job_that_ends_while_its_workers_start_stops_starting_them():
    async def main() -> None:
        gate = asyncio.Event()  # never set: workers that take forever to load

        async def spawn(index: int) -> int:
            await gate.wait()
            return index

        async def nothing(*_: Any) -> Any:
            return None

        pool = WorkerPool(spawn, nothing, nothing, size=2)
        starting = asyncio.ensure_future(pool.ensure_started())
        await asyncio.sleep(0.01)
        await asyncio.wait_for(pool.close(), timeout=5)
        with pytest.raises(asyncio.CancelledError):
            await starting

    asyncio.run(main())


def test_errors_travel_back_as_themselves_or_as_a_remote_error():
    err = LLMError("401 from the server", status=401, fatal=True)
    back = roundtrip(portable(err))
    assert isinstance(back, LLMError) and back.fatal and back.status == 401

    class Local(Exception):  # defined in a function: it cannot be pickled
        pass

    odd = Local("boom")
    odd.raw = "the raw answer"  # type: ignore[attr-defined]
    back = roundtrip(portable(odd))
    assert isinstance(back, RemoteError) and "Local: boom" in str(back)
    assert back.raw == "the raw answer"  # type: ignore[attr-defined]


def test_worker_counts_and_shares_fit_the_cluster():
    assert plan_workers({"CPU": 2.0}, None, on_gpu=False) == (2, {"num_cpus": 1.0})
    assert plan_workers({"CPU": 2.0}, 4, on_gpu=True) == (4, {"num_cpus": 0.5})
    n, res = plan_workers({"CPU": 2.0}, 3, on_gpu=False)
    assert n == 3 and res["num_cpus"] * 3 <= 2.0  # rounded down to Ray's granularity
    gpu = {"CPU": 16.0, "GPU": 4.0}
    assert plan_workers(gpu, None, on_gpu=True) == (4, {"num_gpus": 1.0, "num_cpus": 1.0})
    assert plan_workers(gpu, 8, on_gpu=True)[1]["num_gpus"] == 0.5
    assert plan_workers(gpu, None, on_gpu=False) == (16, {"num_cpus": 1.0})  # an API model


class _Remote:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        return self.fn(*args)


def test_every_rate_layer_of_a_workers_models_takes_from_the_shared_limits():
    shared = SharedLimits(rpm=60, tpm=100_000)
    charged: list[tuple] = []

    class Handle:  # what a worker holds: an actor handle on the SharedLimits actor
        acquire = _Remote(shared.acquire)
        charge = _Remote(lambda *a: charged.append(a))

    llm = make_llm("svcfake:x", rpm=60, tpm=100_000)
    stage = explain_stage(llm, [])
    assert share_limits(stage, Handle()) == 1
    from neuroscribe.llm.limits import RateLimitedLLM
    from neuroscribe.llm.wrappers import find_layer

    layer = find_layer(llm, RateLimitedLLM)
    assert isinstance(layer.rpm, RemoteBucket) and isinstance(layer.tpm, RemoteBucket)

    async def three_calls() -> None:
        for _ in range(3):
            await llm.chat([{"role": "user", "content": "<start>\n a\t1\n<end>"}])

    asyncio.run(three_calls())
    granted = asyncio.run(shared.stats())
    assert granted["svcfake:x rpm"] == 3 and granted["svcfake:x tpm"] > 0
    # Buckets are per model spec, as in one process; a limit not set cannot be taken.
    asyncio.run(shared.acquire("other", "rpm"))
    assert asyncio.run(shared.stats())["other rpm"] == 1
    with pytest.raises(ConfigError):
        asyncio.run(SharedLimits(rpm=60, tpm=None).acquire("x", "tpm"))


@pytest.mark.slow
def test_ray_flags_map_to_the_job_section_and_need_each_other(tmp_path):
    from neuroscribe.cli.pipeline import _config

    cfg = _config({"run": tmp_path, "ray": "local:2", "ray_workers": 3})
    assert (cfg.jobs.ray, cfg.jobs.ray_workers) == ("local:2", 3)
    assert (RunConfig().jobs.ray, RunConfig().jobs.ray_workers) == (None, None)
    for cmd in ("run", "explain", "simulate"):
        out = run_cli(cmd, "--help").stdout
        assert "--ray " in out and "--ray-workers" in out, cmd
    root = make_run(tmp_path / "run", 2)
    out = run_cli("explain", str(root), "--ray-workers", "2", "--explainer", "fake:x", check=False)
    assert out.returncode != 0 and "--ray-workers needs --ray" in out.stdout + out.stderr
    assert not (root / "explanations.jsonl").exists()
    bad = run_cli("run", str(root), "--ray", "local:0", check=False)
    assert bad.returncode != 0 and "positive integer" in bad.stdout + bad.stderr


def test_unit_ids_and_keys_cross_processes():
    item = WorkItem(key=ItemKey(stage="explain", config_hash="h", unit_id="m/0/1"), samples=(0, 2))
    assert roundtrip(item) == item


# ---------------------------------------------------------------- a real Ray cluster

RAY_FLAGS = ["--concurrency", "1", "--quiet", *CLI_FLAGS]
# The same job as RAY_FLAGS through the API (the splits of tests/_tiny_jobs.py).
CONFIG: dict[str, Any] = {
    "splits": {"n_train": 1, "n_test_top": 1, "n_test_random": 1},
    "explain": {"settings": {"temperature": 0, "max_tokens": 16}},
    "score": {"strategy": "json", "n_examples": 0},
}


def config(run: Path, model: str, **jobs: Any) -> RunConfig:
    data = json.loads(json.dumps(CONFIG))
    data["explain"]["model"] = data["score"]["model"] = model
    jobs = {"show_progress": False, **jobs}
    return RunConfig.build(run_dir=run, jobs=jobs, **data)


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    """A private Ray cluster on loopback (2 CPUs) whose workers know the test backends."""
    ray = pytest.importorskip("ray")
    stamps = tmp_path_factory.mktemp("stamps") / "calls.txt"
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env = {
        "worker_process_setup_hook": "test_ray_jobs._worker_setup",
        "env_vars": {"PYTHONPATH": path, STAMPS_ENV: str(stamps)},
    }
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        log_to_driver=False,
        runtime_env=env,
    )
    try:
        yield {"ray": ray, "runtime_env": env, "stamps": stamps}
    finally:
        ray.shutdown()


def named_workers(ray: Any, stage: str) -> list[str]:
    return sorted(a for a in ray.util.list_named_actors() if a.startswith(f"neuroscribe-{stage}-"))


@pytest.mark.slow
def test_a_ray_job_writes_the_lines_one_process_writes(tmp_path, ray_local):
    one, dist = make_run(tmp_path / "one", 6), make_run(tmp_path / "ray", 6)
    api.run(config(one, "svcfake:x"))
    summaries = api.run(config(dist, "svcfake:x", ray="auto", ray_workers=2))
    assert [s.details["ray"]["workers"] for s in summaries] == [2, 2]
    assert all(s.done == 6 and s.failed == 0 for s in summaries)
    assert lines(one) == lines(dist) and len(lines(dist)["scores"]) == 6
    # Same key spaces and probes: either can resume the other's run.
    m1, m2 = RunDir(one).manifest(), RunDir(dist).manifest()
    assert m1.stages == m2.stages and m1.probes == m2.probes
    assert named_workers(ray_local["ray"], "explain") == []  # the workers are gone


@pytest.mark.slow
def test_a_killed_worker_loses_and_duplicates_nothing(tmp_path, ray_local):
    ray = ray_local["ray"]
    n = 8
    root = make_run(tmp_path / "ray", n)
    cfg = config(root, "svcfake:d0.3", ray="auto", ray_workers=2, concurrency=1)

    async def kill_one_when_started() -> str:
        path = root / "explanations.jsonl"
        while not path.exists() or not path.read_text().strip():
            await asyncio.sleep(0.02)
        victim = named_workers(ray, "explain")[0]
        ray.kill(ray.get_actor(victim))
        return victim

    async def main():
        killer = asyncio.ensure_future(kill_one_when_started())
        summary = await api.explain_async(cfg)
        return summary, await killer

    summary, victim = asyncio.run(main())
    assert victim.endswith("-0")
    assert (summary.done, summary.failed) == (n, 0)
    assert summary.details["ray"]["workers_lost"] == 1
    assert summary.details["ray"]["items_retried"] >= 1  # its item in flight, done again
    assert any("died" in w for w in summary.warnings)
    ref = make_run(tmp_path / "one", n)
    api.explain(config(ref, "svcfake:d0.3", concurrency=8))
    assert lines(root, RESULTS, drop=("usage",)) == lines(ref, RESULTS, drop=("usage",))
    assert not outputs(root)["duplicates"] and not outputs(root)["failures"]


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import ray
import test_ray_jobs
ray.init(address={address!r}, runtime_env={env!r}, log_to_driver=False)
from neuroscribe.cli.app import main
main({args!r})
"""


@pytest.mark.slow
def test_a_killed_driver_reruns_to_the_lines_of_an_uninterrupted_run(tmp_path, ray_local):
    ray = ray_local["ray"]
    n = 10
    root = make_run(tmp_path / "ray", n)
    model = ["--explainer", "svcfake:d0.2", "--simulator", "svcfake:d0.2"]
    args = ["run", str(root), *model, *RAY_FLAGS, "--ray", "auto", "--ray-workers", "2"]
    code = DRIVER.format(
        tests=str(TESTS),
        address=ray.get_runtime_context().gcs_address,
        env=ray_local["runtime_env"],
        args=args,
    )

    def driver() -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-c", code],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def count(name: str) -> int:
        path = root / f"{name}.jsonl"
        return len(path.read_text().splitlines()) if path.exists() else 0

    job = driver()
    deadline = time.monotonic() + 90
    while count("scores") < 2:  # killed in the score stage, simulations on disk
        assert job.poll() is None, job.stdout.read() if job.stdout else ""
        assert time.monotonic() < deadline, "the job wrote no scores in time"
        time.sleep(0.02)
    job.send_signal(signal.SIGKILL)
    job.wait()
    killed_at = (count("explanations"), count("simulations"), count("scores"))
    assert killed_at[2] < n, killed_at

    job = driver()  # the same command again
    out, _ = job.communicate(timeout=120)
    assert job.returncode == 0, out

    ref = make_run(tmp_path / "one", n)
    run_cli("run", str(ref), *model, *RAY_FLAGS)
    same = lines(root, RESULTS, drop=("usage",)) == lines(ref, RESULTS, drop=("usage",))
    assert same, killed_at
    got = outputs(root)
    assert not got["duplicates"] and not got["failures"] and len(got["scores"]) == n


@pytest.mark.slow
def test_one_rpm_holds_across_all_workers(tmp_path, ray_local):
    stamps: Path = ray_local["stamps"]
    stamps.unlink(missing_ok=True)
    rpm, n = 60, 66  # a full bucket of 60 at once, then one request a second
    root = make_run(tmp_path / "ray", n)
    # No response cache: units with the same prompt would be answered without a request.
    cfg = config(root, "stampfake:x", ray="auto", ray_workers=2, rpm=rpm, cache=False)
    summary = api.explain(cfg)
    assert summary.done == n
    calls = [line.split() for line in stamps.read_text().splitlines()]
    assert len(calls) == n
    assert len({pid for pid, _ in calls}) == 2  # both workers sent requests
    times = sorted(float(t) for _, t in calls)
    # A token bucket of `rpm` shared by all: never more than the burst plus the refill.
    for i, t in enumerate(times, start=1):
        assert i <= rpm + (t - times[0]) * rpm / 60 + 1, (i, t - times[0])
    assert times[-1] - times[0] >= (n - rpm - 1) * 60 / rpm  # two buckets would take ~0 s


@pytest.mark.slow
def test_a_service_started_with_ray_runs_its_jobs_on_the_cluster(tmp_path, ray_local):
    """`neuroscribe serve --ray ADDRESS`: a job posted as to any server runs its items on
    the cluster's workers, writes the lines one process writes, and leaves the connection
    (the server's, here the test's) open for the next job."""
    from fastapi.testclient import TestClient

    from neuroscribe.service import ServiceConfig, create_app

    root = tmp_path / "root"
    one = make_run(tmp_path / "one", 4)
    make_run(root / "a", 4)
    api.run(config(one, "stampfake:x"))
    ray_local["stamps"].write_text("")  # from here on: the service's job's calls only
    body = json.loads(json.dumps(CONFIG))
    body["explain"]["model"] = body["score"]["model"] = "stampfake:x"
    cfg = ServiceConfig(root=root, rate_limit=0, ray="auto", ray_workers=2)
    with TestClient(create_app(cfg), base_url="http://127.0.0.1") as c:
        job = c.post("/v1/jobs", json={"run": "a", "config": body}).json()
        deadline = time.monotonic() + 120
        while job["state"] not in ("done", "failed", "cancelled"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
            job = c.get(f"/v1/jobs/{job['id']}").json()
    assert job["state"] == "done", job["error"]
    assert job["config"]["jobs"]["ray"] is None  # the server's setting, not the job's
    assert {s["details"]["ray"]["workers"] for s in job["summaries"].values()} == {2}
    callers = {line.split()[0] for line in ray_local["stamps"].read_text().splitlines()}
    # Every model call came from the workers (2 per stage), none from the server's process.
    assert str(os.getpid()) not in callers and len(callers) >= 2
    assert lines(one) == lines(root / "a")
    assert ray_local["ray"].is_initialized()
