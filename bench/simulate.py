"""Benchmark: exact simulation on the embedded model, optimised vs naive vs the floor.

    .venv/bin/python bench/simulate.py [--excerpts 20] [--tokens 64] [--batch-size 8]
        [--device cpu|cuda] [--model-dir DIR --random-weights] [--prompt VERSION]
        [--dtype bfloat16 --baseline-dtype float32] [--baseline-prompt VERSION]

`--model-dir DIR --random-weights` times a model built from DIR's config.json with random
weights (same shapes, so the same cost) where the embedded weights are not at hand.

(a) the optimised exact simulator (prefix KV cache shared, excerpts batched),
(b) the naive path: one full-prompt forward pass per excerpt,
(c) the floor: one batched forward pass over only the tokens that are new per excerpt,
    given an already computed prefix cache (no prefix, no tokenisation, no head).
Prints excerpts/s for each, (a)/(b) (target >= 3x) and the cost of (a) relative to
(c) (target <= 1.3x), and checks that (a) and (b) agree.
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from neuroscribe.llm.local import LocalModel, load_local_model
from neuroscribe.simulator.exact import (
    ExactSimulator,
    ExcerptIds,
    batch_forward,
    build_simulation_ids,
    prefix_cache,
)

EXPLANATION = "words and phrases about animals, especially plural nouns"


def random_excerpts(tokenizer, n: int, length: int, seed: int) -> list[list[str]]:
    """Excerpts of decoded vocabulary tokens, like a subject model's records."""
    rng = random.Random(seed)
    return [
        [tokenizer.decode([rng.randrange(300, 20000)]) for _ in range(length)] for _ in range(n)
    ]


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--excerpts", type=int, default=20)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=None, help="8 on CPU, 32 on GPU")
    parser.add_argument("--repeats", type=int, default=2, help="best of N timings")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default), bfloat16...")
    parser.add_argument(
        "--baseline-dtype",
        default=None,
        help="dtype of (b), the naive baseline (default: --dtype); e.g. float32 to time the "
        "fast CPU setting (--dtype bfloat16 --prompt simulate-v1-compact) against today's path",
    )
    parser.add_argument("--model-dir", default=None, help="instead of the embedded model")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument(
        "--prompt",
        default="simulate-v1",
        help="prompt version of (a) and (c)",
    )
    parser.add_argument(
        "--baseline-prompt",
        default="simulate-v1",
        help="prompt version of (b), the naive baseline (default simulate-v1, the status quo; "
        "give --prompt's version to time the same prompt both ways)",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = f"hf:{args.model_dir}" if args.model_dir else "hf:embedded"
    if args.random_weights:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(0)
        config = AutoConfig.from_pretrained(args.model_dir)
        dtype = getattr(torch, args.dtype or "float32")
        model = AutoModelForCausalLM.from_config(config).to(args.device, dtype).eval()
        tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
        loaded = LocalModel(spec, model, tokenizer, args.device)
    else:
        loaded = load_local_model(spec, device=args.device, dtype=args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    excerpts = random_excerpts(tokenizer, args.excerpts, args.tokens, seed=0)
    fast = ExactSimulator(
        spec, loaded=loaded, batch_size=args.batch_size, prompt_version=args.prompt
    )
    base_loaded = loaded
    if args.baseline_dtype not in (None, args.dtype) and not args.random_weights:
        base_loaded = load_local_model(spec, device=args.device, dtype=args.baseline_dtype)
    naive = ExactSimulator(
        spec, loaded=base_loaded, mode="naive", prompt_version=args.baseline_prompt
    )
    fast.simulate_sync(EXPLANATION, excerpts[:2])  # warm-up (allocator, kernels)

    start = time.perf_counter()
    sim = build_simulation_ids(tokenizer, EXPLANATION, excerpts, prompt_version=args.prompt)
    t_ids = time.perf_counter() - start
    per_excerpt = sum(len(p.ids) for p in sim.excerpts) / len(sim.excerpts)
    weights = "random weights" if args.random_weights else "real weights"
    print(
        f"{spec} ({weights}, {args.device}, {next(model.parameters()).dtype}), {args.excerpts} excerpts x {args.tokens} tokens, "
        f"batch {fast.batch_size}, {torch.get_num_threads()} threads; prompt = {len(sim.prefix)} prefix tokens + "
        f"{per_excerpt:.0f} tokens per excerpt (scale 0-{sim.scale_max}), prompt {args.prompt}"
    )

    results = {}

    def run_fast() -> None:
        results["a"] = fast.simulate_sync(EXPLANATION, excerpts)

    def run_naive() -> None:
        results["b"] = naive.simulate_sync(EXPLANATION, excerpts)

    cache = prefix_cache(model, sim.prefix)
    trimmed = [ExcerptIds(p.ids[: p.slots[-1] + 1], p.slots) for p in sim.excerpts]
    trimmed.sort(key=lambda p: len(p.ids))

    def run_floor() -> None:
        size = fast.batch_size  # the same batches as (a)
        for start in range(0, len(trimmed), size):
            batch_forward(model, cache, len(sim.prefix), trimmed[start : start + size])

    t_a = timed(run_fast, args.repeats)
    t_c = timed(run_floor, args.repeats)
    t_b = timed(run_naive, 1)  # slow; once is enough
    n = args.excerpts
    diff = max(
        abs(x - y)
        for ra, rb in zip(results["a"], results["b"], strict=True)
        for x, y in zip(ra.expected, rb.expected, strict=True)
    )
    print(f"(a) optimised exact : {n / t_a:6.2f} excerpts/s  ({t_a:.2f} s)")
    print(f"(b) naive per-excerpt: {n / t_b:6.2f} excerpts/s  ({t_b:.2f} s)")
    print(f"(c) floor (new tokens only): {n / t_c:6.2f} excerpts/s  ({t_c:.2f} s)")
    print(f"(a)/(b) speed-up: {t_b / t_a:.2f}x  (target >= 3x)")
    print(f"(a) cost relative to (c): {t_a / t_c:.2f}x  (target <= 1.3x)")
    print(f"(a) includes building the prompt ids (CPU, tokenizer): {t_ids:.3f} s")
    if base_loaded is not loaded:
        print(f"(b) ran in {next(base_loaded.model.parameters()).dtype}")
    print(f"(b) prompt: {args.baseline_prompt}")
    if args.prompt == args.baseline_prompt and base_loaded is loaded:
        print(f"max |expected(a) - expected(b)|: {diff:.2e}")
    else:  # another prompt or dtype: other numbers by design, not a parity check
        print(f"max |expected(a) - expected(b)| (different prompt or dtype): {diff:.2e}")


if __name__ == "__main__":
    main()
