"""Do the image scorers tell true explanations of image units from false ones? Measured.

    .venv/bin/python bench/vision_discrimination.py --split dev --prompt all
    .venv/bin/python bench/vision_discrimination.py --split test

Builds the emoji ground-truth suite (`neuroscribe.vision.groundtruth`: synthetic image
units with known rules over the offline emoji set, each with its true explanation and
three hard false ones) into a run directory once (`--run`, default
`~/.cache/neuroscribe/bench/vision-groundtruth`), then scores every candidate explanation
of every unit of the chosen half, as a run would (held-out test images only), with:
- `image-simulation` on the captions route with the embedded SmolLM2-135M (exact digit
  logits, the local backend), per prompt version (`--prompt`: the default, a list, or
  all);
- `caption-similarity` (no LLM: all-MiniLM-L6-v2 over the descriptions, Pearson), and
  the text pipeline's `embedding` scorer (AUC of top vs random) for comparison
  (`--no-embedding` leaves both out);
- with `--detection`, the text pipeline's `detection` scorer (yes/no per description,
  balanced accuracy) on the same model.
Prints per scorer: how often the true explanation ranks first (and chance), mean score
of true and false explanations (and by false kind), the mean margin over the best false
one with its bootstrap interval, failed candidates, prompt tokens and seconds per
scoring call (one explanation). Choose prompts on `dev`, report on `test`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from neuroscribe.embedded import cache_root
from neuroscribe.prompts.simulate_images import DEFAULT_CAPTIONS_STYLE, STYLES


def default_run() -> Path:
    return cache_root() / "bench" / "vision-groundtruth"


async def measure(args: argparse.Namespace) -> None:
    from neuroscribe.llm.local import LocalLLM
    from neuroscribe.vision.groundtruth import (
        SUITE_FILE,
        build_image_suite,
        check_image_scorer,
        load_image_suite,
    )
    from neuroscribe.vision.simulate import ImageSimulationScorer

    run = Path(args.run)
    if args.rebuild or not (run / SUITE_FILE).is_file():
        t0 = time.perf_counter()
        build_image_suite(run)
        print(f"built the suite in {run} ({time.perf_counter() - t0:.1f} s)")
    suite = load_image_suite(run, args.split)[: args.max_units]
    versions = {"all": list(STYLES), "default": [DEFAULT_CAPTIONS_STYLE], "none": []}.get(
        args.prompt, args.prompt.split(",")
    )
    print(
        f"\nemoji ground truth, {args.split} half: {len(suite)} units, "
        f"{1 + len(suite[0][0].false_explanations)} candidates each"
    )
    print(
        "| scorer | true first | chance | mean true | mean false | over-general | "
        "over-specific | neighbouring | margin [95% CI] | failed | prompt tok/call | s/call |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    scorers = []
    if versions:
        llm = LocalLLM(args.model)
        for version in versions:
            scorer = await ImageSimulationScorer.build(
                llm, strategy="exact", prompt_version=version
            )
            scorers.append((f"image-simulation · {version} · {args.model}", scorer))
    if args.detection:
        from neuroscribe.scorer.detection import DetectionScorer

        llm = LocalLLM(args.model)
        scorers.append((f"detection · {args.model}", await DetectionScorer.build(llm)))
    if not args.no_embedding:
        from neuroscribe.scorer.embedding import EmbeddingScorer
        from neuroscribe.vision.clip_similarity import CaptionSimilarityScorer

        scorers.append(("caption-similarity · MiniLM", await CaptionSimilarityScorer.build(None)))
        scorers.append(("embedding (AUC) · MiniLM", await EmbeddingScorer.build(None)))
    for label, scorer in scorers:
        t0 = time.perf_counter()
        summary, units = await check_image_scorer(suite, scorer)
        report(label, summary, units, time.perf_counter() - t0, args.verbose)


def report(label: str, summary, units, seconds: float, verbose: bool) -> None:
    calls = sum(len(u.candidates) for u in units)
    by_kind: dict[str, list[float]] = {}
    for u in units:
        for c in u.candidates[1:]:
            by_kind.setdefault(c.kind, []).append(c.score or 0.0)

    def mean(xs: list[float]) -> str:
        return f"{sum(xs) / len(xs):+.3f}" if xs else "—"

    iv = summary.margin_interval
    ci = f" [{iv[0]:+.3f}, {iv[1]:+.3f}]" if iv else ""
    prompt_tokens = summary.prompt_tokens_per_unit * len(units) / max(calls, 1)
    wins = sum(u.true_first for u in units)
    print(
        f"| {label} | {summary.top1_rate:.0%} ({wins}/{len(units)}) | "
        f"{summary.chance_rate:.0%} | {summary.mean_true_score:+.3f} | "
        f"{summary.mean_false_score:+.3f} | {mean(by_kind.get('over-general', []))} | "
        f"{mean(by_kind.get('over-specific', []))} | "
        f"{mean(by_kind.get('neighbouring-concept', []))} | {summary.mean_margin:+.3f}{ci} | "
        f"{summary.n_failed_candidates} | {prompt_tokens:,.0f} | {seconds / calls:.2f} |",
        flush=True,
    )
    if verbose:
        for u in units:
            cells = ", ".join(f"{c.kind[:8]} {c.score or 0:+.2f}" for c in u.candidates)
            print(f"    {u.unit_id}: {cells}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", default=str(default_run()), help="where the suite is built")
    p.add_argument("--split", default="dev", choices=["dev", "test", "all"])
    p.add_argument(
        "--prompt",
        default="default",
        help="image simulation prompt versions (comma-separated), default, all, or none",
    )
    p.add_argument("--no-embedding", action="store_true", help="skip the no-LLM scorers")
    p.add_argument("--detection", action="store_true", help="also detection with --model")
    p.add_argument("--model", default="hf:embedded")
    p.add_argument("--max-units", type=int)
    p.add_argument("--rebuild", action="store_true", help="rebuild the suite's run directory")
    p.add_argument("--verbose", action="store_true", help="every unit's candidate scores")
    asyncio.run(measure(p.parse_args()))


if __name__ == "__main__":
    main()
