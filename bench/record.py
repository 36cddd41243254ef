"""Benchmark of `neuroscribe record` on the embedded model (SmolLM2-135M).

1. Throughput: tokens/s recording *all* MLP neurons of several layers (including the
   last, so no layer is skipped) vs. a bare forward pass over the same batches, both
   the full model (with its LM head) and its transformer body alone (no LM head, the
   stricter baseline). Target: ratio >= 0.85.
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

from neuroscribe.datasets.collect import Collector
from neuroscribe.datasets.corpus import open_corpus
from neuroscribe.datasets.record import record_run
from neuroscribe.datasets.units import Capture, build_sources, load_subject
from neuroscribe.datasets.windows import batched, iter_windows, make_batch


def throughput(args: argparse.Namespace) -> dict:
    """Per batch, interleaved: the full forward (with LM head), the transformer body
    alone (no LM head), and the recording step (hooked forward, stopped after the last
    recorded layer, plus the collector update). Interleaving batch by batch exposes the
    three to the same load, which matters on a shared machine.
    """
    subject = load_subject(None, device="cpu")
    layers = [int(x) for x in args.layers.split(",")]
    sources = build_sources(subject.model, unit_type="mlp", layers=layers)
    for s in sources:
        s.width = None
        s.indices = None  # all neurons
    body = subject.model.model
    with Capture(subject.model, sources) as cap:
        widths = [
            a.shape[-1] for a in cap.run(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long))
        ]
    collector = Collector(widths, length=64, n_top=20, pool_size=512, seed=0, device="cpu")
    pad = subject.tokenizer.pad_token_id or 0
    windows = iter_windows(
        open_corpus("builtin").texts(),
        subject.tokenizer,
        length=64,
        min_length=8,
        max_tokens=args.tokens,
    )
    t_full = t_body = t_rec = 0.0
    n = 0
    with torch.inference_mode():
        for i, batch in enumerate(batched(windows, args.batch_size)):
            ids, mask, valid = make_batch(batch, [], 64, pad)
            t0 = time.perf_counter()
            subject.model(input_ids=ids, attention_mask=mask, use_cache=False)
            t1 = time.perf_counter()
            body(input_ids=ids, attention_mask=mask, use_cache=False)
            t2 = time.perf_counter()
            with Capture(subject.model, sources) as cap:  # hooks only around the record step
                acts = cap.run(ids, mask)
            collector.update(acts, valid, batch)
            t3 = time.perf_counter()
            if i == 0:
                continue  # warm-up batch
            t_full += t1 - t0
            t_body += t2 - t1
            t_rec += t3 - t2
            n += int(valid.sum())
    return {
        "tokens": n,
        "units": sum(widths),
        "full_tok_s": n / t_full,
        "body_tok_s": n / t_body,
        "record_tok_s": n / t_rec,
        "ratio_full": t_full / t_rec,
        "ratio_body": t_body / t_rec,
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
            f"throughput: {t['units']} MLP neurons (layers {args.layers}), {t['tokens']} tokens "
            f"(batches of {args.batch_size} x 64)\n"
            f"  full forward (LM head)  {t['full_tok_s']:.0f} tok/s\n"
            f"  body forward (no head)  {t['body_tok_s']:.0f} tok/s\n"
            f"  record (hooks+collect)  {t['record_tok_s']:.0f} tok/s\n"
            f"  ratio record/full {t['ratio_full']:.2f}, record/body {t['ratio_body']:.2f} (target >= 0.85)"
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
