"""Real units: does a simulator score a unit's token-lookup explanation above a random one?

    bash bench/scorer_study.sh /tmp/study            # once: 104 units, both baselines
    .venv/bin/python bench/baseline_order.py /tmp/study \\
        --simulator 'hf:embedded?adapter=simulator' --units 'smollm2-135m-instruct/3/*'

The ground-truth suite's units are synthetic; this is the check on real neurons. The
token-lookup baseline names a unit's most frequent top-activating tokens; the random
baseline is a plausible phrase about something else. On most units a simulator worth
its scores ranks the token list above the random phrase. The script scores the run's
explanations with `--simulator` (the simulation scorer, through the CLI; scores are
stored in the run, so a rerun only reads them) and prints, for every simulation scorer
model in the run, on how many units token-lookup scored above random, and the mean
scores of both.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys
from pathlib import Path


def order(run: Path, units: list[str]) -> dict[str, tuple[int, int, float, float]]:
    """Per simulator model: (units where token-lookup > random, units with both scored,
    mean token-lookup score, mean random score)."""
    by: dict[str, dict[str, dict[str, float]]] = {}
    for line in (run / "scores.jsonl").read_text().splitlines():
        s = json.loads(line)
        if s.get("scorer") != "simulation" or s["metrics"].get("score") is None:
            continue
        if units and not any(fnmatch.fnmatch(s["unit_id"], u) for u in units):
            continue
        # The config hash too: a retrained adapter keeps its spec but not its hash.
        key = (
            f"{s['scorer_model']} ({s['comparable'].get('prompt_version')}, "
            f"config {s['config_hash'][:8]})"
        )
        by.setdefault(key, {}).setdefault(s["unit_id"], {})[s["explainer"]] = s["metrics"]["score"]
    out = {}
    for model, per_unit in by.items():
        pairs = [(u["token-lookup"], u["random"]) for u in per_unit.values() if len(u) >= 2]
        if pairs:
            wins = sum(a > b for a, b in pairs)
            out[model] = (
                wins,
                len(pairs),
                sum(a for a, _ in pairs) / len(pairs),
                sum(b for _, b in pairs) / len(pairs),
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--simulator", default=None, help="score with this simulator first")
    ap.add_argument("--units", default="", help="comma-separated unit ids or globs")
    args = ap.parse_args()
    units = [u for u in args.units.split(",") if u]
    if args.simulator:
        cmd = [str(Path(sys.executable).with_name("neuroscribe")), "score", str(args.run)]
        cmd += ["--scorer", "simulation", "--simulator", args.simulator, "--quiet"]
        if units:
            cmd += ["--units", ",".join(units)]
        subprocess.run(cmd, check=True)
    print("| simulator (prompt) | token-lookup above random | units | token-lookup | random |")
    print("| --- | --- | --- | --- | --- |")
    for model, (wins, n, a, b) in sorted(order(args.run, units).items()):
        print(f"| {model} | {wins / n:.0%} | {n} | {a:+.3f} | {b:+.3f} |")


if __name__ == "__main__":
    main()
