"""Speed and size of compare / publish / view on a large synthetic run.

    .venv/bin/python bench/reports.py --units 2000 --explanations 2

Builds two synthetic runs (the test fixture's layout: 3 simulated excerpts of 6 tokens per
explanation) and times loading, `compare`, `publish`, the self-contained report, and one
unit request against `serve`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _reportruns import make_run
from neuroscribe.compare import compare_runs
from neuroscribe.publish import publish_run
from neuroscribe.rundir import load_run
from neuroscribe.view import make_server, write_report


def timed(label: str, fn, results: dict) -> object:
    t = time.perf_counter()
    out = fn()
    results[label] = time.perf_counter() - t
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--units", type=int, default=2000)
    ap.add_argument("--explanations", type=int, default=2)
    args = ap.parse_args()
    r: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        scores = {
            f"m/{i % 12}/{i}": [((i * 37 + k) % 100) / 100 for k in range(args.explanations)]
            for i in range(args.units)
        }
        better = {u: [min(1.0, s + 0.05) for s in v] for u, v in scores.items()}
        make_run(root / "a", scores)
        make_run(root / "b", better, explainer="b")
        a = timed("load run", lambda: load_run(root / "a"), r)
        b = load_run(root / "b")
        timed("compare (10k resamples)", lambda: compare_runs([a, b]), r)
        timed("publish (jsonl+parquet+card)", lambda: publish_run(a, root / "pub"), r)
        timed("view (write report)", lambda: write_report(a, root / "report.html"), r)
        size_mb = (root / "report.html").stat().st_size / 1e6
        srv = timed("serve (start: index units)", lambda: make_server(a, port=0), r)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{srv.server_address[1]}"
        with httpx.Client(base_url=base) as c:
            c.get("/api/units")
            t = time.perf_counter()
            n = 50
            for i in range(n):
                c.get("/api/unit", params={"id": f"m/{i % 12}/{i}"}).raise_for_status()
            r["serve: one unit request"] = (time.perf_counter() - t) / n
        srv.shutdown()
        srv.server_close()
    n_expl = args.units * args.explanations
    print(f"{args.units} units, {n_expl} explanations, {3 * n_expl} simulated excerpts")
    for label, secs in r.items():
        print(f"{label:32s} {secs * 1000:9.1f} ms")
    print(f"report size: {size_mb:.1f} MB ({size_mb * 1e6 / args.units / 1000:.1f} kB per unit)")


if __name__ == "__main__":
    main()
