"""Benchmark: what a cheaper dtype does to simulation scores (float32 vs `?dtype=...`).

    .venv/bin/python bench/precision.py [--units 16] [--dtype bfloat16]
        [--prompt simulate-v1-compact] [--run RUN] [--tokens 16000]

Records `--units` MLP neurons of the embedded SmolLM2 (layers 4 and 20, `--tokens` tokens of
the built-in corpus) into a fresh run directory, or uses `--run RUN` (records and
explanations already there), explains them once, then scores the same explanations on the
same held-out excerpts twice through the real pipeline: with `hf:embedded` (float32 on a
CPU) and with `hf:embedded?dtype=DTYPE`. Both land in the run's scores.jsonl under their own
keys. Prints the seconds of each scoring pass, the per-excerpt expected-value differences,
and the per-explanation score differences (median and max |Δ|, Spearman rank correlation
of the two score columns).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

BASE = "hf:embedded"


def scores_by(run_dir: Path, spec: str) -> dict[str, float]:
    out = {}
    for line in (run_dir / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("scorer_model") == spec and row["metrics"].get("score") is not None:
            out[row["explanation_id"]] = row["metrics"]["score"]
    return out


def expected_by(run_dir: Path, spec: str) -> dict[tuple[str, str], list[float]]:
    """Expected values per (explanation, excerpt) simulated with `spec`."""
    out = {}
    for line in (run_dir / "simulations.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("simulator") == spec:
            out[(row["explanation_id"], row["excerpt_id"])] = row["expected_activations"]
    return out


def spearman(a: list[float], b: list[float]) -> float:
    import pandas as pd

    return float(pd.Series(a).corr(pd.Series(b), method="spearman"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=16_000)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompt", default=None, help="simulation prompt version")
    parser.add_argument("--run", type=Path, default=None, help="an existing run directory")
    args = parser.parse_args()

    from neuroscribe import api
    from neuroscribe.config import RunConfig

    with tempfile.TemporaryDirectory(prefix="ns-precision-") as tmp:
        run_dir = args.run or Path(tmp) / "run"
        common = {
            "run_dir": run_dir,
            "jobs": {"show_progress": False, "cache": False},
            "record": {"layers": [4, 20], "units": max(1, args.units // 2), "tokens": args.tokens},
        }
        base = RunConfig.build(**common, score={"model": BASE, "prompt": args.prompt})
        api.record_if_missing(base)
        records = api.load_units(base)
        asyncio.run(api.explain_async(base, records))
        seconds = {}
        specs = [BASE, f"{BASE}?dtype={args.dtype}"]
        for spec in specs:
            config = RunConfig.build(**common, score={"model": spec, "prompt": args.prompt})
            t0 = time.perf_counter()
            asyncio.run(api.score_async(config, records))
            seconds[spec] = time.perf_counter() - t0

        full, half = (scores_by(run_dir, s) for s in specs)
        keys = sorted(set(full) & set(half))
        score_diffs = [abs(full[k] - half[k]) for k in keys]
        ev_full, ev_half = (expected_by(run_dir, s) for s in specs)
        ev_diffs = [
            abs(x - y)
            for k in sorted(set(ev_full) & set(ev_half))
            for x, y in zip(ev_full[k], ev_half[k], strict=True)
        ]
        print(f"{len(records)} units, {len(keys)} explanations scored by both")
        for spec in specs:
            print(f"  {spec:32s} scoring {seconds[spec]:6.1f} s")
        print(f"  speed-up: {seconds[specs[0]] / seconds[specs[1]]:.2f}x")
        if ev_diffs:
            print(
                f"  expected value |Δ| (0–9 scale, {len(ev_diffs)} tokens): median "
                f"{statistics.median(ev_diffs):.4f}, max {max(ev_diffs):.4f}"
            )
        if score_diffs:
            print(
                f"  score |Δ|: median {statistics.median(score_diffs):.4f}, "
                f"max {max(score_diffs):.4f}; mean score {statistics.fmean(full[k] for k in keys):+.4f}"
                f" vs {statistics.fmean(half[k] for k in keys):+.4f}"
            )
        if len(keys) > 2:
            rho = spearman([full[k] for k in keys], [half[k] for k in keys])
            print(f"  Spearman of the two score columns: {rho:.3f}")


if __name__ == "__main__":
    main()
