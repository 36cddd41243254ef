"""Job throughput: the real engine + client against a fixed-latency loopback server.

Runs the explain stage (one chat request per unit, the real `JobEngine`, pipeline and
`OpenAICompatibleLLM`, response cache off) over synthetic records against
`bench/jobs_server.py` started in its own process (like a real provider: its CPU is not
ours), at several concurrencies. Prints units per minute against the ideal
concurrency / (requests per unit x latency), and this process's CPU time per request
(engine + client + JSONL writes). Target: >= 80% of ideal at every level.

    .venv/bin/python bench/jobs.py                       # 1, 8, 32, 128 at 200 ms
    .venv/bin/python bench/jobs.py --concurrency 128 --units 1024 --profile prof.out
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from neuroscribe.engine import run_stage
from neuroscribe.explainer import ExplainerConfig, TokenRowExplainer
from neuroscribe.llm.openai_api import OpenAICompatibleLLM
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.splits import SplitConfig
from neuroscribe.stages.explain import ExplainStage

HERE = Path(__file__).parent
SPLITS = SplitConfig(n_train=2, n_test_top=1, n_test_random=1)
# Every answer is a usable explanation, so each unit takes exactly one request.
EXPLANATION = "the letter w followed by a digit"


def records(n: int) -> list[NeuronRecord]:
    words = [f" w{k}" for k in range(16)]
    out = []
    for i in range(n):
        top = [
            ActivationRecord(
                tokens=words[j : j + 8], activations=[float((i + j + t) % 7) for t in range(8)]
            )
            for j in range(4)
        ]
        rnd = [ActivationRecord(tokens=words[8:16], activations=[0.0] * 8)]
        out.append(
            NeuronRecord(
                unit_id=f"bench/0/{i}", most_positive_activation_records=top, random_sample=rnd
            )
        )
    return out


def start_server(latency: float) -> tuple[str, subprocess.Popen[bytes]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "jobs_server.py"),
            "--latency",
            str(latency),
            "--port",
            str(port),
            "--chat-content",
            EXPLANATION,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    for _ in range(200):
        try:
            httpx.get(f"{url}/models", timeout=1)
            return url, proc
        except httpx.HTTPError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the fixed-latency server did not start")


def run_level(url: str, concurrency: int, n_units: int) -> tuple[float, float, int]:
    """(wall seconds, process CPU seconds, requests) of one explain job."""
    run = Path(tempfile.mkdtemp(prefix="bench-jobs-"))
    try:
        recs = records(n_units)
        llm = OpenAICompatibleLLM(
            "bench", base_url=url, concurrency=concurrency, timeout_s=60, cache=None
        )
        explainer = TokenRowExplainer(llm, ExplainerConfig(max_tokens=16, temperature=0.0))
        stage = ExplainStage(explainer, recs, SPLITS)

        async def main() -> None:
            try:
                await run_stage(stage, RunDir(run), concurrency=concurrency, show_progress=False)
            finally:
                await llm.aclose()

        cpu0, t0 = time.process_time(), time.perf_counter()
        asyncio.run(main())
        return time.perf_counter() - t0, time.process_time() - cpu0, llm.limits.attempts
    finally:
        shutil.rmtree(run, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="*", default=[1, 8, 32, 128])
    ap.add_argument("--units", type=int, default=None, help="units per level (default 6 x c)")
    ap.add_argument("--profile", default=None, help="write a cProfile of the last level here")
    args = ap.parse_args()

    url, server = start_server(args.latency)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"fixed latency {args.latency * 1000:.0f} ms, 1 request per unit (explain stage)")
    worst = 1.0
    try:
        run_level(url, 4, 8)  # warm-up: imports, first connections
        for i, c in enumerate(args.concurrency):
            n = args.units or max(20, 6 * c)
            if args.profile and i == len(args.concurrency) - 1:
                import cProfile

                prof = cProfile.Profile()
                prof.enable()
                wall, cpu, reqs = run_level(url, c, n)
                prof.disable()
                prof.dump_stats(args.profile)
            else:
                wall, cpu, reqs = run_level(url, c, n)
            per_min = 60 * n / wall
            ideal = 60 * c / (1 * args.latency)
            # The first and last `latency` of a job cannot be full: ideal for n units.
            ratio = per_min / ideal
            worst = min(worst, ratio)
            print(
                f"concurrency {c:4d}: {n:5d} units in {wall:6.2f} s = {per_min:8.0f} units/min, "
                f"ideal {ideal:8.0f} ({100 * ratio:5.1f}%), "
                f"CPU {1000 * cpu / max(1, reqs):.2f} ms/request"
            )
    finally:
        server.kill()
        server.wait()
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"worst level: {100 * worst:.1f}% of ideal (target >= 80%)")


if __name__ == "__main__":
    main()
