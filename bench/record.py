"""Benchmark of `neuroscribe record` on the embedded model (SmolLM2-135M).

1. Throughput: tokens/s recording *all* MLP neurons of several layers (including the
   last, so no layer is skipped) vs. a bare forward pass of the model over the same
   batches (same tokenization and batching code). Target: ratio >= 0.85.
2. Memory: peak RSS and peak Python heap (tracemalloc) of a recording over two corpus
   sizes 4x apart, each in a fresh process. Target: flat.

    .venv/bin/python bench/record.py [--tokens 3072] [--layers 0,15,29] [--mem-tokens 4000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time

import torch

from neuroscribe.datasets.corpus import open_corpus
from neuroscribe.datasets.record import record_run
from neuroscribe.datasets.units import load_subject
from neuroscribe.datasets.windows import batched, iter_windows, make_batch


def bare_forward(tokens: int, batch_size: int, excerpt_len: int) -> tuple[float, float, int]:
    """Wall and CPU seconds and tokens of plain `model(...)` over the batches `record` builds."""
    subject = load_subject(None, device="cpu")
    pad = subject.tokenizer.pad_token_id or 0
    n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    windows = iter_windows(
        open_corpus("builtin").texts(),
        subject.tokenizer,
        length=excerpt_len,
        min_length=8,
        max_tokens=tokens,
    )
    with torch.inference_mode():
        for batch in batched(windows, batch_size):
            ids, mask, valid = make_batch(batch, [], excerpt_len, pad)
            subject.model(input_ids=ids, attention_mask=mask, use_cache=False)
            n += int(valid.sum())
    return time.perf_counter() - t0, time.process_time() - c0, n


def throughput(args: argparse.Namespace) -> dict:
    """Bare forward, record, bare forward again; the two baselines are averaged.

    CPU time (all threads of the process) is reported next to wall time because a
    shared machine makes wall time noisy; on an idle machine the two ratios agree.
    """
    layers = [int(x) for x in args.layers.split(",")]
    bare_forward(256, args.batch_size, 64)  # warm-up (threads, allocator)
    w1, c1, n = bare_forward(args.tokens, args.batch_size, 64)
    with tempfile.TemporaryDirectory() as tmp:
        s = record_run(
            tmp,
            layers=layers,
            max_units=None,
            max_tokens=args.tokens,
            batch_size=args.batch_size,
            device="cpu",
        )
    w2, c2, _ = bare_forward(args.tokens, args.batch_size, 64)
    wall, cpu = (w1 + w2) / 2, (c1 + c2) / 2
    return {
        "tokens": n,
        "units": s.n_units,
        "bare_forward_tok_s": n / wall,
        "record_tok_s": s.n_tokens / s.stream_seconds,
        "ratio_wall": (s.n_tokens / s.stream_seconds) / (n / wall),
        "bare_forward_cpu_tok_s": n / cpu,
        "record_cpu_tok_s": s.n_tokens / s.stream_cpu_seconds,
        "ratio_cpu": (s.n_tokens / s.stream_cpu_seconds) / (n / cpu),
        "finalize_s": s.finalize_seconds,
    }


def memory_child(tokens: int, layers: str) -> None:
    """Run in a fresh process: record and print peak memory as JSON."""
    import resource
    import tracemalloc

    tracemalloc.start()
    with tempfile.TemporaryDirectory() as tmp:
        s = record_run(
            tmp,
            layers=[int(x) for x in layers.split(",")],
            max_units=None,
            max_tokens=tokens,
            excerpt_len=32,
            pool_size=64,
            n_random=10,
            n_quantiles=3,
            per_quantile=3,
            batch_size=8,
            device="cpu",
        )
        size = sum(f.stat().st_size for f in s.files)
    _, peak = tracemalloc.get_traced_memory()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "tokens": s.n_tokens,
                "excerpts": s.n_excerpts,
                "units": s.n_units,
                "peak_rss_mb": rss_mb,
                "peak_python_heap_mb": peak / 2**20,
                "records_mb": size / 2**20,
            }
        )
    )


def memory(args: argparse.Namespace) -> list[dict]:
    out = []
    for tokens in (args.mem_tokens, 4 * args.mem_tokens):
        res = subprocess.run(
            [sys.executable, __file__, "--child", str(tokens), "--mem-layers", args.mem_layers],
            capture_output=True,
            text=True,
            check=True,
        )
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tokens", type=int, default=3072)
    p.add_argument("--layers", default="0,15,29")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--mem-tokens", type=int, default=4000)
    p.add_argument("--mem-layers", default="0,1,2")
    p.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--skip-throughput", action="store_true")
    args = p.parse_args()
    if args.child:
        memory_child(args.child, args.mem_layers)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if not args.skip_throughput:
        t = throughput(args)
        print(
            f"throughput: {t['units']} MLP neurons (layers {args.layers}), {t['tokens']} tokens\n"
            f"  wall: bare forward {t['bare_forward_tok_s']:.0f} tok/s, record {t['record_tok_s']:.0f} tok/s, "
            f"ratio {t['ratio_wall']:.2f}\n"
            f"  cpu:  bare forward {t['bare_forward_cpu_tok_s']:.0f} tok/s, record {t['record_cpu_tok_s']:.0f} tok/s, "
            f"ratio {t['ratio_cpu']:.2f} (target >= 0.85)\n"
            f"  writing the records took {t['finalize_s']:.1f} s"
        )
    m = memory(args)
    for r in m:
        print(
            f"memory: {r['tokens']:>6} tokens ({r['excerpts']} excerpts), {r['units']} units: "
            f"peak RSS {r['peak_rss_mb']:.0f} MB, peak Python heap {r['peak_python_heap_mb']:.1f} MB, "
            f"records {r['records_mb']:.1f} MB"
        )
    print(
        f"memory ratio (4x corpus): RSS {m[1]['peak_rss_mb'] / m[0]['peak_rss_mb']:.2f}, "
        f"heap {m[1]['peak_python_heap_mb'] / m[0]['peak_python_heap_mb']:.2f} (target: flat, ~1.0)"
    )


if __name__ == "__main__":
    main()
