"""Ground-truth check of simulators: a per-model, per-prompt table for bench/README.md.

    python bench/groundtruth.py                                   # embedded, both prompts
    python bench/groundtruth.py --models embedded,qwen1.5b --split test --max-units 6

`qwen0.5b` / `qwen1.5b` are the Qwen2.5-Coder GGUFs assembled from the package index by
bench/models.py (on request, for measurement only); any other name is used as a model
spec (`hf:...`). Each cell runs `neuroscribe.groundtruth.runner.check_simulator_async`,
the code behind `neuroscribe check simulator`, and prints the figures it reports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def spec_for(name: str) -> str:
    if name == "embedded":
        return "hf:embedded"
    if name in ("qwen0.5b", "qwen1.5b"):
        from models import model_path  # type: ignore[import-not-found]

        return f"hf:{model_path(name)}"
    return name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="embedded")
    ap.add_argument("--prompts", default="simulate-v1,simulate-v2")
    ap.add_argument("--split", default="test", choices=["dev", "test", "all"])
    ap.add_argument("--max-units", type=int, default=None)
    ap.add_argument(
        "--n-examples", type=int, default=None, help="few-shot units (default: the prompt's)"
    )
    args = ap.parse_args()

    from neuroscribe.config import RunConfig
    from neuroscribe.groundtruth.runner import check_simulator_async

    rows = []
    for name in args.models.split(","):
        spec = spec_for(name.strip())
        for prompt in args.prompts.split(","):
            config = RunConfig.build(
                score={
                    "model": spec,
                    "strategy": "exact",
                    "prompt": prompt.strip(),
                    "n_examples": args.n_examples,
                },
                jobs={"cache": False},
            )
            start = time.perf_counter()
            report = asyncio.run(
                check_simulator_async(config, split=args.split, max_units=args.max_units)
            )
            s = report.summary
            lo, hi = s.margin_interval or (float("nan"), float("nan"))
            rows.append(
                f"| {name} | {report.prompt_version} | {s.n_units} | {s.top1_rate:.0%} "
                f"({s.chance_rate:.0%}) | {s.mean_margin:+.3f} [{lo:+.2f}, {hi:+.2f}] | "
                f"{s.mean_true_score:+.3f} | {s.mean_false_score:+.3f} | "
                f"{s.prompt_tokens_per_unit:,.0f} | {time.perf_counter() - start:.0f} |"
            )
            print(rows[-1], flush=True)
    print()
    print(
        "| simulator | prompt | units | true first (chance) | mean margin [95% CI] | "
        "true score | false score | prompt tokens/unit | seconds |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
