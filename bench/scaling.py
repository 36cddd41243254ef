"""Benchmark: explain + simulate on 1, 2, 4 local Ray workers (`--ray local --ray-workers N`).

    .venv/bin/python bench/scaling.py [--units 8] [--workers 1,2,4] [--repeats 3]
        [--tokens 16000] [--temperature T] [--concurrency 8] [--cpus N] [--in-process]

Records `--units` MLP neurons of the embedded SmolLM2 (split over layers 4 and 20) over
`--tokens` tokens of the built-in corpus, once. Then, for each worker count, runs the
same job — explain, then simulate + score, both on `hf:embedded` (the exact simulator),
no response cache — on a fresh copy of those records, on one local Ray cluster of
`--cpus` CPUs (default: this machine's cores). Prints, as medians of `--repeats` runs:
units/min (wall clock of the whole job, worker start-up included: each worker loads
its own model), units/min after start-up, and the efficiency vs linear scaling,
units/min at N ÷ (N × units/min at 1). `--in-process` adds the same job without Ray
(one process, every core) as a reference row.

Each worker gets cpus ÷ N of the cluster's CPUs (Ray then gives torch that many
threads, at least 1), so with more workers than cores they share the cores and the
efficiency falls below 1; the script says how many cores it had.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def job_config(run: Path, args: argparse.Namespace, workers: int | None) -> Any:
    from neuroscribe.config import RunConfig

    jobs: dict[str, Any] = {"show_progress": False, "cache": False}
    jobs["concurrency"] = args.concurrency
    if workers is not None:
        jobs.update(ray="auto", ray_workers=workers)  # the cluster this script started
    settings = {} if args.temperature is None else {"temperature": args.temperature}
    return RunConfig.build(
        run_dir=run,
        explain={"settings": settings},
        jobs=jobs,
        record={"layers": [4, 20], "units": max(1, args.units // 2), "tokens": args.tokens},
    )


def record_once(root: Path, args: argparse.Namespace) -> int:
    from neuroscribe import api

    config = job_config(root, args, None)
    t0 = time.perf_counter()
    api.record_if_missing(config)
    n = len(api.load_units(config))
    print(f"recorded {n} units in {time.perf_counter() - t0:.0f} s", flush=True)
    return n


def one_job(template: Path, args: argparse.Namespace, workers: int | None) -> dict[str, float]:
    """The job once on a fresh copy of the records; its figures."""
    from neuroscribe import api

    with tempfile.TemporaryDirectory(prefix="ns-scaling-") as tmp:
        run = Path(tmp) / "run"
        shutil.copytree(template / "records", run / "records")
        config = job_config(run, args, workers)
        t0 = time.perf_counter()
        summaries = api.run(config)  # records present: explain, then simulate + score
        wall = time.perf_counter() - t0
    units = min(s.done for s in summaries)
    if any(s.failed for s in summaries):
        print(f"  warning: failures: {[s.line() for s in summaries]}", flush=True)
    start = sum(s.details.get("ray", {}).get("start_s", 0.0) for s in summaries)
    return {"units": units, "wall_s": wall, "start_s": start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=8)
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument(
        "--temperature", type=float, default=None, help="explainer temperature (default: 1)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="items in flight per worker")
    parser.add_argument("--cpus", type=int, default=None, help="the local cluster's CPUs")
    parser.add_argument(
        "--in-process", action="store_true", help="also run the job without Ray (reference)"
    )
    args = parser.parse_args()
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    cores = os.cpu_count() or 1
    cpus = args.cpus or cores

    from neuroscribe.distributed.cluster import ray_cluster

    temperature = 1.0 if args.temperature is None else args.temperature

    with tempfile.TemporaryDirectory(prefix="ns-scaling-records-") as tmp:
        template = Path(tmp) / "template"
        n = record_once(template, args)
        print(
            f"machine: {cores} CPU cores; Ray local cluster of {cpus} CPUs; {n} units; "
            f"explain + simulate (exact) on hf:embedded, temperature {temperature:g}, "
            f"--concurrency {args.concurrency} per worker, no response cache",
            flush=True,
        )
        results: dict[str, list[dict[str, float]]] = {}
        with ray_cluster(f"local:{cpus}"):
            for i in range(args.repeats):
                plan: list[tuple[str, int | None]] = [(str(c), c) for c in counts]
                if args.in_process:
                    plan.append(("no Ray", None))
                for label, workers in plan:
                    r = one_job(template, args, workers)
                    results.setdefault(label, []).append(r)
                    print(
                        f"run {i + 1}, {label:>6} workers: {r['units']:.0f} units in "
                        f"{r['wall_s']:.1f} s (worker start-up {r['start_s']:.1f} s)",
                        flush=True,
                    )

    def med(label: str, key: str) -> float:
        return statistics.median(r[key] for r in results[label])

    def per_min(label: str, steady: bool = False) -> float:
        seconds = med(label, "wall_s") - (med(label, "start_s") if steady else 0.0)
        return 60 * med(label, "units") / seconds if seconds > 0 else float("nan")

    base = str(counts[0])
    print(f"\nmedians of {args.repeats} runs ({cores} CPU cores on this machine)")
    print("workers  units/min  efficiency   after start-up: units/min  efficiency")
    for c in counts:
        label = str(c)
        scale = c / counts[0]
        eff = per_min(label) / (scale * per_min(base))
        eff_steady = per_min(label, True) / (scale * per_min(base, True))
        print(
            f"{c:7d}  {per_min(label):9.2f}  {eff:10.2f}   {per_min(label, True):24.2f}  "
            f"{eff_steady:10.2f}"
        )
    if args.in_process:
        print(f" no Ray  {per_min('no Ray'):9.2f}  (one process, {cores} cores)")
    over = [c for c in counts if c > cores]
    if over:
        print(
            f"note: only {cores} cores here: {', '.join(map(str, over))} workers share them, "
            "so efficiency below 1 is expected there"
        )


if __name__ == "__main__":
    main()
