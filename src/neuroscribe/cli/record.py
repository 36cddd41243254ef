"""`neuroscribe record`, `import-openai` and `export-openai`: thin wrappers over neuroscribe.datasets."""

from __future__ import annotations

from pathlib import Path

import typer

from neuroscribe.cli.app import app, make_console

console = make_console(stderr=True)


@app.command("record")
def record(
    out: Path = typer.Option(Path("run"), "--out", "-o", help="Run directory to write."),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help="Hub id (gpt2), local folder, hf:<id> or hf:embedded (default: embedded SmolLM2-135M).",
    ),
    revision: str = typer.Option(None, help="Hub revision of the model."),
    layers: str = typer.Option(
        None, help="Layers, e.g. '0,5,11', '0-3' or 'all' (default: first, middle, last)."
    ),
    units: str = typer.Option("all", help="Unit indices per hook point, e.g. '0-31' or 'all'."),
    max_units: int = typer.Option(
        128, min=0, help="With --units all: keep the first N units per hook point (N ≥ 0; 0 = all)."
    ),
    unit_type: str = typer.Option(
        None,
        help="mlp (MLP neurons, the default), module (any module by path) or sae (implied by --sae).",
    ),
    module: str = typer.Option(
        None,
        help="Module path for --unit-type module/sae, relative to the block ('self_attn.o_proj') or with {layer}.",
    ),
    hook: str = typer.Option(None, help="Record the module's input or output (default: output)."),
    sae: Path = typer.Option(
        None,
        help="SAE or transcoder: a SAELens or sparsify folder, Gemma Scope params.npz, or a "
        "safetensors file. A folder's config says the layer and hook.",
    ),
    sae_k: int = typer.Option(
        None, min=1, help="TopK for a bare SAE file: keep the k largest latents per token (k ≥ 1)."
    ),
    sae_hook: str = typer.Option(
        None,
        help="Read the SAE's input here instead of where its files say: a TransformerLens "
        "name (blocks.8.hook_resid_pre) or a module path.",
    ),
    corpus: str = typer.Option(
        "builtin",
        help="'builtin', a .txt/.jsonl/.parquet file or folder, or a Hub dataset NAME[:CONFIG].",
    ),
    text_column: str = typer.Option("text", help="Text column of a .jsonl/.parquet/Hub corpus."),
    split: str = typer.Option("train", help="Split of a Hub dataset."),
    max_tokens: int = typer.Option(20_000, min=1, help="Tokens to record (≥ 1)."),
    excerpt_len: int = typer.Option(64, min=1, help="Tokens per excerpt (≥ 1)."),
    top: int = typer.Option(20, min=1, help="Top-activating excerpts kept per unit (≥ 1)."),
    random: int = typer.Option(20, min=0, help="Random excerpts kept per unit (≥ 0)."),
    quantiles: int = typer.Option(
        5, min=0, help="Activation quantile bins sampled per unit (≥ 0; 0 = none)."
    ),
    per_quantile: int = typer.Option(4, min=1, help="Excerpts sampled per quantile bin (≥ 1)."),
    pool_size: int = typer.Option(
        512,
        min=1,
        help="Excerpts in the seeded uniform pool that random/quantile samples come from (≥ 1).",
    ),
    batch_size: int = typer.Option(8, min=1, help="Excerpts per forward pass (≥ 1)."),
    device: str = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    seed: int = typer.Option(0, help="Seed of the random and quantile samples."),
    restart: bool = typer.Option(False, help="Discard an interrupted recording's checkpoint."),
    overwrite: bool = typer.Option(False, help="Replace records made with other options."),
    ray: str = typer.Option(
        None,
        "--ray",
        help="Shard the corpus over a Ray cluster: auto, local, local:N (a cluster of N CPUs "
        "on this machine), HOST:PORT or ray://HOST:PORT. Same records as without it.",
    ),
    ray_workers: int = typer.Option(
        None,
        "--ray-workers",
        min=1,
        help="Shard workers with --ray (default: the cluster's CPUs, or its GPUs on cuda).",
    ),
) -> None:
    """Run a subject model over a corpus and write NeuronRecords to OUT/records/."""
    from neuroscribe.datasets.record import RecordProgress, record_run
    from neuroscribe.datasets.units import parse_index_spec

    layer_list = (
        "all" if (layers or "").strip().lower() == "all" else parse_index_spec(layers, what="layer")
    )
    last = [0]

    def progress(p: RecordProgress) -> None:
        pct = int(100 * p.tokens / max(p.max_tokens, 1))
        if pct >= last[0] + 10:
            last[0] = pct - pct % 10
            console.print(f"recorded {p.tokens:,} tokens ({pct}%)", highlight=False)

    # Only options given on the command line: an SAE folder's own layer and hook must
    # agree with them, while defaults give way to it.
    given = {"unit_type": unit_type, "module": module, "hook": hook}
    summary = record_run(
        out,
        progress=progress,
        restart=restart,
        overwrite=overwrite,
        model=model,
        revision=revision,
        layers=layer_list,
        units=units,
        max_units=max_units or None,
        **{k: v for k, v in given.items() if v is not None},
        sae=str(sae) if sae else None,
        sae_k=sae_k,
        sae_hook=sae_hook,
        corpus=corpus,
        text_column=text_column,
        split=split,
        max_tokens=max_tokens,
        excerpt_len=excerpt_len,
        n_top=top,
        n_random=random,
        n_quantiles=quantiles,
        per_quantile=per_quantile,
        pool_size=pool_size,
        batch_size=batch_size,
        device=device,
        dtype=dtype,
        seed=seed,
        ray=ray,
        ray_workers=ray_workers,
    )
    if summary.skipped:
        console.print(f"{out}: already recorded with these options", highlight=False, markup=False)
        return
    rate = summary.n_tokens / max(summary.stream_seconds, 1e-9)
    console.print(
        f"wrote {summary.n_units} units from {summary.n_tokens:,} tokens "
        f"({rate:,.0f} tokens/s) to {', '.join(str(f) for f in summary.files)}",
        highlight=False,
        markup=False,
    )


@app.command("import-openai")
def import_openai_cmd(
    src: Path = typer.Argument(..., help="Folder of OpenAI neuron files (<layer>/<neuron>.json)."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory to write."),
    model: str = typer.Option(None, help="Subject model name for the unit ids (e.g. gpt2-xl)."),
) -> None:
    """Import OpenAI's public per-neuron JSON files into OUT/records/."""
    from neuroscribe.datasets.openai_format import import_openai

    files = import_openai(src, out, model=model)
    console.print(
        f"imported into {len(files)} record file(s) under {out}/records",
        highlight=False,
        markup=False,
    )


@app.command("export-openai")
def export_openai_cmd(
    run: Path = typer.Argument(..., help="Run directory with records/*.jsonl."),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Folder to write <layer>/<neuron>.json into."
    ),
) -> None:
    """Export a run's records as OpenAI-format per-neuron JSON files."""
    from neuroscribe.datasets.openai_format import export_openai

    files = export_openai(run, out)
    console.print(f"wrote {len(files)} neuron file(s) under {out}", highlight=False, markup=False)
