"""Benchmark: do prompt styles, best-of-k and revision give better explanations, and at
what cost? Two measurements, either or both:

    .venv/bin/python bench/explain_methods.py --run RUN [--k 4] [--rounds 1] [--scorer simulation]
    .venv/bin/python bench/explain_methods.py --groundtruth [--split test] [--max-units N]

`--run RUN`: on a run directory with records (recorded from the embedded subject model
when it has none: 24 MLP neurons of layers 4 and 20), the leaderboard grid — token-rows
with the rows and summary prompts, best-of-k and revision with the rows prompt, and the
token-lookup and random baselines — explained with the embedded explainer and scored on
the test split with the same simulator; prints the leaderboard (mean test score, paired
interval against single-sample rows, explainer tokens per unit) and the headline: the
paired difference of best-of-k and revision against single, and their explainer-token
ratio. Resumable: a rerun reuses everything done.

`--groundtruth`: `neuroscribe check explainer` on the suite for each method (single,
best-of-k, revision, summary prompt): how often it recovers the known rule, its mean score
and prompt tokens per unit, with the embedded explainer and simulator.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

METHODS = [
    ("single · rows", {"explainer": "token-rows"}),
    ("single · summary", {"explainer": "token-rows", "settings": {"prompt": "summary"}}),
    ("best-of-k · rows", {"explainer": "best-of-k"}),
    ("revision · rows", {"explainer": "revision"}),
]


def groundtruth(args: argparse.Namespace) -> None:
    from neuroscribe.config import RunConfig
    from neuroscribe.groundtruth.runner import check_explainer_async

    print(f"ground-truth suite, {args.split} half, embedded explainer and simulator")
    print("| method | recovered | mean score [95% CI] | failed | prompt tok/unit | seconds |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label, explain in METHODS:
        settings = {"temperature": args.temperature, **explain.get("settings", {})}
        config = RunConfig.build(
            run_dir="unused",
            explain={
                "explainer": explain["explainer"],
                "settings": settings,
                "select": {"k": args.k, "rounds": args.rounds},
            },
            jobs={"cache": False},
        )
        t0 = time.perf_counter()
        report = asyncio.run(
            check_explainer_async(config, split=args.split, max_units=args.max_units)
        )
        iv = report.score_interval
        ci = f"[{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else ""
        print(
            f"| {label} | {report.recovery_rate:.0%} of {report.n_units} | "
            f"{report.mean_score:+.3f} {ci} | {report.failed} | "
            f"{report.prompt_tokens_per_unit:,.0f} | {time.perf_counter() - t0:.0f} |",
            flush=True,
        )


def on_run(args: argparse.Namespace) -> None:
    from neuroscribe import api
    from neuroscribe.config import RunConfig
    from neuroscribe.leaderboard import build_leaderboard, to_markdown
    from neuroscribe.leaderboard_run import Grid, run_grid_async

    config = RunConfig.build(
        run_dir=str(args.run),
        record={"units": 12},
        explain={
            "settings": {"temperature": args.temperature},
            "select": {"k": args.k, "rounds": args.rounds},
        },
        jobs={"show_progress": False},
    )
    api.record_if_missing(config)
    scorers = [(args.scorer, None)]
    t0 = time.perf_counter()
    # Single samples with both prompt styles and the baselines; then the choosing
    # methods with the rows prompt (the same explainer, the same simulator).
    asyncio.run(run_grid_async(config, Grid.parse(prompts="rows,summary"), scorers))
    print(f"single samples and baselines: {time.perf_counter() - t0:.0f} s", flush=True)
    print(to_markdown([build_leaderboard(args.run, scorer=args.scorer)]), flush=True)
    for method in args.methods.split(","):
        # A slower method may run on the first N units only (--units-for METHOD=N): its
        # table then pairs every row on those units.
        n = dict(kv.split("=") for kv in args.units_for.split(",") if kv).get(method)
        cfg = config.model_copy(deep=True)
        if n:
            cfg.units.max_units = int(n)
        t0 = time.perf_counter()
        asyncio.run(run_grid_async(cfg, Grid.parse(methods=method, baselines=""), scorers))
        print(f"{method}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(to_markdown([build_leaderboard(args.run, scorer=args.scorer)]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", type=Path)
    p.add_argument("--groundtruth", action="store_true")
    p.add_argument("--split", default="test")
    p.add_argument("--max-units", type=int)
    p.add_argument("--k", type=int, default=4)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--scorer", default="simulation")
    p.add_argument("--methods", default="best-of-k,revision")
    p.add_argument("--units-for", default="", help="METHOD=N,...: run METHOD on N units")
    args = p.parse_args()
    if not args.run and not args.groundtruth:
        p.error("give --run RUN and/or --groundtruth")
    if args.groundtruth:
        groundtruth(args)
    if args.run:
        on_run(args)


if __name__ == "__main__":
    main()
