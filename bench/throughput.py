"""Benchmark: units per hour of the whole offline pipeline (record → explain → simulate+score).

    .venv/bin/python bench/throughput.py [--units 16] [--repeats 3] [--tokens 16000]
        [--temperature T] [--explainer SPEC] [--simulator SPEC] [--concurrency 8]
        [--prompt simulate-v1-compact] [--style summary] [--dtype bfloat16] [--plain]
        [--memory 8,32]

Each measurement runs in a fresh subprocess (so its peak memory is its own) on a fresh run
directory: record `--units` MLP neurons (split over layers 4 and 20) of the embedded
SmolLM2 over `--tokens` tokens of the built-in corpus, explain them, simulate and score them
with the default simulator. Prints the seconds per stage, units per hour (whole pipeline and
explain+score alone), tokens per unit and the peak RSS, as medians of `--repeats` runs.
`--memory A,B` also runs A and B units once each and prints both peaks (flat = same peak).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from neuroscribe.llm.base import DEFAULT_SIMULATOR_SPEC


def one_run(args: argparse.Namespace, units: int, run_dir: Path) -> dict:
    """The pipeline once, in this process; figures as a dict."""
    import asyncio

    from neuroscribe import api
    from neuroscribe.config import RunConfig

    if args.plain:
        # The unoptimised local path: one generate per call, the whole prompt each time.
        from neuroscribe.llm import local

        init = local.LocalLLM.__init__

        def plain_init(self, *a, **kw):
            kw.setdefault("max_batch", 1)
            kw.setdefault("prefix_cache", False)
            init(self, *a, **kw)

        local.LocalLLM.__init__ = plain_init
    layers = [4, 20]
    per_layer = max(1, units // len(layers))
    settings: dict = {}
    if args.temperature is not None:
        settings["temperature"] = args.temperature
    if args.style is not None:
        settings["prompt"] = args.style
    explainer, simulator = args.explainer, args.simulator
    if args.dtype is not None:
        # The spec option, as a user gives it; recording keeps float32.
        explainer, simulator = (
            f"{s}{'&' if '?' in s else '?'}dtype={args.dtype}" if s.startswith("hf:") else s
            for s in (explainer, simulator)
        )
    config = RunConfig.build(
        run_dir=run_dir,
        explain={"model": explainer, "settings": settings},
        score={"model": simulator, "prompt": args.prompt},
        jobs={"concurrency": args.concurrency, "show_progress": False, "cache": False},
        record={"layers": layers, "units": per_layer, "tokens": args.tokens},
    )
    t0 = time.perf_counter()
    api.record_if_missing(config)
    t1 = time.perf_counter()
    records = api.load_units(config)

    async def stages():
        explained = await api.explain_async(config, records)
        t2 = time.perf_counter()
        scored = await api.score_async(config, records)
        return explained, t2, scored

    explained, t2, scored = asyncio.run(stages())
    t3 = time.perf_counter()
    n = len(records)
    scores = [json.loads(line) for line in (run_dir / "scores.jsonl").read_text().splitlines()]
    return {
        "units": n,
        "record_s": t1 - t0,
        "explain_s": t2 - t1,
        "score_s": t3 - t2,
        "total_s": t3 - t0,
        "explain_prompt_tokens": explained.prompt_tokens / n,
        "explain_completion_tokens": explained.completion_tokens / n,
        "simulate_prompt_tokens": scored.prompt_tokens / n,
        "explained": explained.done,
        "scored": len(scores),
        "mean_score": _mean([s["metrics"].get("score") for s in scores]),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _mean(values: list) -> float | None:
    kept = [v for v in values if v is not None]
    return round(statistics.fmean(kept), 4) if kept else None


def in_subprocess(args: argparse.Namespace, units: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="ns-throughput-") as tmp:
        run_dir = Path(args.keep) / f"run-{time.time_ns()}" if args.keep else Path(tmp) / "run"
        cmd = [sys.executable, __file__, "--child", str(units), "--run-dir", str(run_dir)]
        for flag in (
            "tokens",
            "temperature",
            "explainer",
            "simulator",
            "concurrency",
            "prompt",
            "style",
            "dtype",
        ):
            value = getattr(args, flag)
            if value is not None:
                cmd += [f"--{flag}", str(value)]
        if args.plain:
            cmd.append("--plain")
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=os.environ)
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument("--temperature", type=float, default=None)
    parser.add_argument("--explainer", default="hf:embedded")
    # The package's default simulator (the trained one since 2026-12-06); `hf:embedded`
    # is the plain model with simulate-v1, the default before.
    parser.add_argument("--simulator", default=DEFAULT_SIMULATOR_SPEC)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt", default=None, help="simulation prompt version")
    parser.add_argument("--style", default=None, help="explain prompt style (rows, summary...)")
    parser.add_argument(
        "--dtype", default=None, help="explainer and simulator dtype (e.g. bfloat16)"
    )
    parser.add_argument(
        "--plain", action="store_true", help="local generation without batching or prefix cache"
    )
    parser.add_argument("--memory", default=None, help="A,B: peak RSS at A and at B units")
    parser.add_argument("--keep", default=None, help="keep each run directory under this folder")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child is not None:
        print(json.dumps(one_run(args, args.child, args.run_dir)))
        return

    runs = []
    for i in range(args.repeats):
        r = in_subprocess(args, args.units)
        runs.append(r)
        print(
            f"run {i + 1}: {r['units']} units, record {r['record_s']:.1f} s, explain "
            f"{r['explain_s']:.1f} s, score {r['score_s']:.1f} s, total {r['total_s']:.1f} s, "
            f"peak {r['peak_rss_mb']:.0f} MB, mean score {r['mean_score']}",
            flush=True,
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    n = med("units")
    print(f"\nmedians of {len(runs)} runs, {n:.0f} units, {args.tokens} recorded tokens")
    for stage in ("record", "explain", "score"):
        print(f"  {stage:8s} {med(stage + '_s'):7.1f} s   {med(stage + '_s') / n:6.2f} s/unit")
    print(
        f"  tokens/unit: explain {med('explain_prompt_tokens'):.0f} prompt + "
        f"{med('explain_completion_tokens'):.0f} completion; simulate "
        f"{med('simulate_prompt_tokens'):.0f} prompt"
    )
    print(f"  units/hour, whole pipeline:   {3600 * n / med('total_s'):7.0f}")
    print(f"  units/hour, explain + score:  {3600 * n / (med('explain_s') + med('score_s')):7.0f}")
    print(f"  peak RSS: {med('peak_rss_mb'):.0f} MB")
    if args.memory:
        for units in (int(x) for x in args.memory.split(",")):
            r = in_subprocess(args, units)
            print(f"  memory at {r['units']} units: peak {r['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
