"""Distributed recording: `neuroscribe record ... --ray ADDRESS`.

The corpus stream is cut into batches exactly as one process would cut it; shard `r` of
`n` records the batches r, r + n, r + 2n, ... (`datasets.record._stream`), each excerpt
keeping its global id (its position in the whole stream). Every shard runs as a Ray task
on its own device (one GPU each when recording on cuda) with the single-process
recorder's machinery, and returns its `Collector` state: per unit the top-k excerpts with
their per-token activations, the moment sums, maximum and non-zero count, and its part
of the bottom-k priority pool with the pool excerpts' per-token activations.

The driver (this process) merges the states in shard order (`Collector.merge`: top-k by
value then global id, Chan/Pébay moments, the pool's smallest priorities) and writes the
same records and manifest as `record_run` without Ray. Because the shards see the very
batches a single process sees, activations are bit-for-bit those of one process on the
same kind of device; top excerpts, random and quantile samples are identical, and the
moments differ only by float64 rounding of the merge order (relative ~1e-15; skewness and
kurtosis of nearly symmetric units lose digits where M3, M4 nearly cancel).

The per-token activations of pooled excerpts travel with the shard states (the same
`keep_pool_acts` budget as one process: `pool_memory_mb`), so the driver needs no second
forward pass and no accelerator. Only when that budget is exceeded does the driver
recompute the chosen excerpts (`_rerun_pool`) on its CPU.

The driver also loads the subject model, on its CPU: to check the options (layers, units,
SAE) before the cluster does any work, to decode tokens and to describe the model in the
manifest. Model, SAE and corpus paths must be readable on every worker (a shared file
system, or Hub ids), and neuroscribe must be installed there.

A failed shard stops the job with a `ShardError` that names it; the other shards are
cancelled and no records are written. Each shard checkpoints as one process does (every
`checkpoint_every` batches, at least `checkpoint_seconds` apart) into the run's checkpoint
folder, `shard-R-of-N-HASH.part.pt`, and writes `...done.pt` when it ends. Rerunning the
same command resumes: finished shards are read back by the driver, unfinished ones restart
on a worker from their last checkpoint, skipping the batches it holds, so the records are
those of an uninterrupted run. Without `--ray-workers` a rerun uses the checkpoints'
worker count; another explicit count, or `--restart`, starts over. Checkpoints from
workers on other machines need the run directory on a shared file system; a worker that
cannot write its checkpoint goes on without one (with a warning).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuroscribe.datasets.collect import Collector
from neuroscribe.datasets.record import (
    RecordConfig,
    RecordProgress,
    RecordSummary,
    _existing,
    _finish,
    _n_units,
    _new_collector,
    _read_checkpoint,
    _recon_stats,
    _restore,
    _save_checkpoint,
    _Setup,
    _setup,
    _stream,
)
from neuroscribe.datasets.sae import ReconStats
from neuroscribe.distributed.cluster import import_ray, parse_address, ray_cluster
from neuroscribe.errors import ConfigError, NeuroscribeError
from neuroscribe.rundir import RunDir

log = logging.getLogger(__name__)


class ShardError(NeuroscribeError):
    """A shard of a distributed recording failed (the message names it and says why)."""


@dataclass(frozen=True)
class WorkerPlan:
    workers: int
    device: str  # what each worker records on: "cpu", or "cuda" (its own GPU)
    num_cpus: int
    num_gpus: int


def plan_workers(ray: Any, cfg: RecordConfig) -> WorkerPlan:
    """How many shard workers, on which device, with which Ray resources each."""
    res = ray.cluster_resources()
    cpus, gpus = int(res.get("CPU", 0)), int(res.get("GPU", 0))
    want = cfg.device
    if want is None:
        device = "cuda" if gpus else "cpu"
    elif want.startswith("cuda"):
        if not gpus:
            raise ConfigError(
                f"--device {want}: the Ray cluster at {cfg.ray} has no GPUs (use --device cpu)"
            )
        device = "cuda"  # Ray gives each worker one GPU, which it sees as cuda:0
    else:
        device = want
    if device == "cuda":
        return WorkerPlan(cfg.ray_workers or gpus, "cuda", num_cpus=1, num_gpus=1)
    n = cfg.ray_workers or max(cpus, 1)
    # Share the CPUs out, but never ask one task for more than the largest node has.
    per_node = max(
        (int(nd["Resources"].get("CPU", 0)) for nd in ray.nodes() if nd.get("Alive", True)),
        default=1,
    )
    return WorkerPlan(n, device, num_cpus=max(1, min(cpus // n, per_node)), num_gpus=0)


# ---------------------------------------------------------------- shard checkpoints

_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)-([0-9a-f]+)\.(part|done)\.pt$")


def shard_checkpoint(folder: Path, rank: int, n: int, chash: str, *, done: bool) -> Path:
    """Where shard `rank` of `n` of the recording `chash` keeps its state."""
    return folder / f"shard-{rank}-of-{n}-{chash}.{'done' if done else 'part'}.pt"


def shard_checkpoints(folder: Path) -> list[tuple[Path, int, int, str, bool]]:
    """(path, rank, n, config hash, finished) of every shard checkpoint in `folder`."""
    out = []
    for path in sorted(folder.glob("shard-*.pt")) if folder.is_dir() else []:
        m = _SHARD_FILE.match(path.name)
        if m:
            out.append((path, int(m[1]), int(m[2]), m[3], m[4] == "done"))
    return out


def _resume_workers(folder: Path, cfg: RecordConfig, restart: bool) -> int | None:
    """The worker count of the checkpoints a rerun resumes (None: none to resume), after
    removing the ones it cannot use (`--restart`, another explicit `--ray-workers`)."""
    found = shard_checkpoints(folder)
    if restart:
        for path, *_ in found:
            path.unlink(missing_ok=True)
        return None
    chash = cfg.result_hash()
    if any(h != chash for _, _, _, h, _ in found):
        raise ConfigError(
            f"{folder} holds checkpoints of a recording with other options; rerun with the "
            "same options to resume, or with --restart to start over"
        )
    counts = {n for _, _, n, _, _ in found}
    if not counts:
        return None
    if len(counts) == 1 and (cfg.ray_workers is None or cfg.ray_workers in counts):
        return counts.pop()
    log.warning(
        "%s: checkpoints of %s workers are not used by %s workers: starting over",
        folder,
        " and ".join(str(c) for c in sorted(counts)),
        cfg.ray_workers,
    )
    for path, *_ in found:
        path.unlink(missing_ok=True)
    return None


def record_shard(
    config: dict[str, Any],
    rank: int,
    n: int,
    device: str,
    threads: int,
    hook_given: bool,
    checkpoint_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Record shard `rank` of `n` (runs on a worker): (a small status, the mergeable state).

    With `checkpoint_dir` it resumes from its own checkpoint there and saves one on the
    single-process cadence, then its final state (`...done.pt`)."""
    if device == "cpu":
        torch.set_num_threads(threads)
    cfg = RecordConfig.model_validate(config)
    t0, c0 = time.perf_counter(), time.process_time()
    setup = _setup(cfg, device=device, hook_given=hook_given)
    collector = _new_collector(cfg, setup)
    recon = [_recon_stats(s) for s in setup.sources]
    chash = cfg.result_hash()
    part = done_path = None
    resumed = 0
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        part = shard_checkpoint(folder, rank, n, chash, done=False)
        done_path = shard_checkpoint(folder, rank, n, chash, done=True)
        if part.exists():
            state = _read_checkpoint(part)
            _restore(state, collector, recon)
            resumed = int(state["batches"])
    last = [0, time.perf_counter()]  # (batch, time) of the last checkpoint

    def save(path: Path, batches: int) -> bool:
        try:
            _save_checkpoint(path, chash, collector, recon, rank=rank, n=n, batches=batches,
                             device=str(setup.subject.device), host=socket.gethostname(),
                             excerpts=collector.n_excerpts, tokens=collector.n_tokens)  # fmt: skip
            return True
        except OSError as e:
            log.warning("shard %d/%d: cannot write its checkpoint %s (%s): going on "
                        "without one", rank, n, path, e)  # fmt: skip
            return False

    def on_batch(nb: int) -> None:
        nonlocal part
        due = nb - last[0] >= cfg.checkpoint_every
        if part is not None and due and time.perf_counter() - last[1] >= cfg.checkpoint_seconds:
            if not save(part, resumed + nb):
                part = None
            last[:] = [nb, time.perf_counter()]

    _stream(setup, cfg, collector, recon, shard=(rank, n), skip_batches=resumed, on_batch=on_batch)
    # `part` is None without a checkpoint folder or once a write there failed.
    if part is not None and done_path is not None and save(done_path, -1):
        part.unlink(missing_ok=True)  # the finished state replaces it
    status = {
        "rank": rank,
        "resumed_batches": resumed,
        "excerpts": collector.n_excerpts,
        "tokens": collector.n_tokens,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "device": str(setup.subject.device),
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    state = {
        "collector": collector.state_dict(),
        "recon": [None if r is None else r.state_dict() for r in recon],
    }
    return status, state


def record_distributed(
    out: Path,
    cfg: RecordConfig,
    *,
    progress: Callable[[RecordProgress], None] | None,
    restart: bool,
    overwrite: bool,
    hook_given: bool = False,
) -> RecordSummary:
    """`record_run` over the shard workers of the Ray cluster `cfg.ray` (called by it)."""
    assert cfg.ray
    import_ray()  # a missing extra or a bad address shows before the model is loaded
    parse_address(cfg.ray)
    setup = _setup(cfg, device="cpu", hook_given=hook_given)
    files, manifest, skipped = _existing(out, cfg, setup, overwrite=overwrite)
    if skipped is not None:
        return skipped
    ckpt = RunDir(out).checkpoint_path
    if ckpt.exists():
        # A single-process checkpoint: this path records everything anew (same result)
        # and removes the checkpoint when the records are written.
        log.warning("%s: a distributed recording starts over; the checkpoint is not used", ckpt)
        if restart:
            ckpt.unlink()
    folder = ckpt.parent.resolve()  # absolute: the workers' working folders differ

    t0 = time.perf_counter()
    with ray_cluster(cfg.ray) as ray:
        resume_n = _resume_workers(folder, cfg, restart)
        if resume_n is not None and cfg.ray_workers is None:
            plan = plan_workers(ray, cfg.model_copy(update={"ray_workers": resume_n}))
        else:
            plan = plan_workers(ray, cfg)
        collector, recon, statuses = _run_shards(
            ray, cfg, plan, hook_given, setup, progress, folder
        )
    t1 = time.perf_counter()
    devices = sorted({s["device"] for s in statuses})
    _finish(
        out,
        cfg,
        setup,
        collector,
        recon,
        manifest,
        files,
        overwrite=overwrite,
        seconds=t1 - t0,
        run_info={
            "workers": plan.workers,
            "device": devices[0] if len(devices) == 1 else devices,
            "ray": {
                "address": cfg.ray,
                "workers": plan.workers,
                "cpus_per_worker": plan.num_cpus,
                "gpus_per_worker": plan.num_gpus,
                "hosts": sorted({s["host"] for s in statuses}),
                "sharding": f"batch b of {cfg.batch_size} excerpts -> worker b mod {plan.workers}",
                # What a rerun took from the checkpoints of an interrupted one.
                "resumed": {
                    "finished_shards": sum(bool(s.get("from_checkpoint")) for s in statuses),
                    "batches": sum(s.get("resumed_batches", 0) for s in statuses),
                },
            },
        },
    )
    return RecordSummary(
        out,
        files,
        sum(_n_units(s) for s in setup.sources),
        collector.n_tokens,
        collector.n_excerpts,
        t1 - t0,
        time.perf_counter() - t1,
        stream_cpu_seconds=sum(s["cpu_seconds"] for s in statuses),
    )


def _run_shards(
    ray: Any,
    cfg: RecordConfig,
    plan: WorkerPlan,
    hook_given: bool,
    setup: _Setup,
    progress: Callable[[RecordProgress], None] | None,
    folder: Path | None = None,
) -> tuple[Collector, list[ReconStats | None], list[dict[str, Any]]]:
    """Start the shards (those a checkpoint in `folder` says are finished are read back
    instead), wait for all, merge their states in shard order."""
    n = plan.workers
    task = ray.remote(record_shard)
    chash = cfg.result_hash()
    status_refs: list[Any] = []
    state_refs: list[Any] = []  # a Ray ref, or the checkpoint of a shard finished before
    statuses: list[dict[str, Any]] = [{} for _ in range(n)]
    done = [0, 0, 0]  # batches (shards here), excerpts, tokens
    for rank in range(n):
        finished = None if folder is None else shard_checkpoint(folder, rank, n, chash, done=True)
        if finished is not None and finished.exists():
            # Read when it is merged, like the workers' states: one shard's state in
            # memory at a time.
            log.info("shard %d/%d: finished before, read from %s", rank, n, finished)
            state_refs.append(finished)
            continue
        status_ref, state_ref = task.options(
            num_returns=2,
            num_cpus=plan.num_cpus,
            num_gpus=plan.num_gpus,
            # A shard that fails fails the job: no silent re-runs of a crashed worker.
            max_retries=0,
            name=f"neuroscribe-record-shard-{rank}-of-{n}",
        ).remote(
            cfg.model_dump(),
            rank,
            n,
            plan.device,
            plan.num_cpus,
            hook_given,
            None if folder is None else str(folder),
        )
        status_refs.append((status_ref, rank))
        state_refs.append(state_ref)

    pending = dict(status_refs)
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                rank = pending.pop(ref)
                try:
                    status = ray.get(ref)
                except ray.exceptions.RayError as e:
                    raise _shard_error(ray, e, rank, n, cfg) from None
                statuses[rank] = status
                log.info(
                    "shard %d/%d: %d excerpts, %d tokens in %.1f s on %s (%s)",
                    rank,
                    n,
                    status["excerpts"],
                    status["tokens"],
                    status["seconds"],
                    status["host"],
                    status["device"],
                )
                done = [done[0] + 1, done[1] + status["excerpts"], done[2] + status["tokens"]]
                if progress is not None:
                    progress(RecordProgress(done[0], done[1], done[2], cfg.max_tokens))
        # In shard order, so that the float64 rounding of the moments is the same run after
        # run (top-k and pool do not depend on the order at all).
        merged: Collector | None = None
        recon = [_recon_stats(s) for s in setup.sources]
        for rank in range(n):
            if isinstance(state_refs[rank], Path):  # finished before: its checkpoint
                state = _read_checkpoint(state_refs[rank])
                statuses[rank] = {
                    "rank": rank, "excerpts": state["excerpts"], "tokens": state["tokens"],
                    "seconds": 0.0, "cpu_seconds": 0.0, "device": state["device"],
                    "host": state["host"], "pid": None, "from_checkpoint": True,
                }  # fmt: skip
                done = [done[0] + 1, done[1] + state["excerpts"], done[2] + state["tokens"]]
                if progress is not None:
                    progress(RecordProgress(done[0], done[1], done[2], cfg.max_tokens))
            else:
                try:
                    state = ray.get(state_refs[rank])
                except ray.exceptions.RayError as e:  # e.g. its node died after it ended
                    raise _shard_error(ray, e, rank, n, cfg) from None
            state_refs[rank] = None  # let the object store free it
            part = Collector.from_state_dict(state["collector"])
            if merged is None:
                merged = part
            else:
                merged.merge(part)
            for r, saved in zip(recon, state["recon"], strict=True):
                if r is not None and saved is not None:
                    _merge_recon(r, saved)
            del state, part
    finally:
        for ref in pending:  # a failure (or Ctrl-C) stops the shards still running
            ray.cancel(ref, force=True)
    assert merged is not None
    return merged, recon, statuses


def _merge_recon(r: ReconStats, saved: dict[str, Any]) -> None:
    """Add a shard's reconstruction sums (all plain sums, so the merge is exact)."""
    r.n += saved["n"]
    r.sse += saved["sse"]
    r.sum_sq += saved["sum_sq"]
    if saved["sum"] is not None:
        r.sum = saved["sum"] if r.sum is None else r.sum + saved["sum"]


def _shard_error(ray: Any, e: Exception, rank: int, n: int, cfg: RecordConfig) -> ShardError:
    where = ""
    cause: BaseException | None = None
    if isinstance(e, ray.exceptions.RayTaskError):
        cause = e.cause
        if getattr(e, "ip", None):
            where = f" on {e.ip} (pid {e.pid})"
    if isinstance(cause, NeuroscribeError):
        why = str(cause)
    elif cause is not None:
        why = f"{type(cause).__name__}: {cause}"
    else:  # the worker died (out of memory, node lost, ...) or the task was cancelled
        why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    batches = ", ".join(str(rank + i * n) for i in range(3))
    return ShardError(
        f"recording shard {rank} (of shards 0-{n - 1}: batches {batches}, ... of "
        f"{cfg.batch_size} excerpts) failed{where}: {why}; nothing was written"
    )
