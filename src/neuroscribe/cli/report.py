"""Commands on finished runs: compare, publish, view, serve (also the service). Logic lives
in the modules."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from neuroscribe.cli.app import app, make_console
from neuroscribe.errors import ConfigError
from neuroscribe.jsonl import write_text_atomic

console = make_console()


def _print_warning(title: str, lines: list[str]) -> None:
    # Plain lines, not a panel: the CLI console never wraps (paths stay whole), so a panel
    # would cut long lines at the terminal's width and hide what differs. Run paths and
    # simulator names are text, not markup.
    for line in (title, *lines):
        console.print(line, style="bold red", markup=False)


@app.command("compare")
def compare_cmd(
    runs: list[Path] = typer.Argument(..., help="Run directories; the first is the baseline."),
    per_unit: str = typer.Option(
        "mean", "--per-unit", help="Score of a unit with several explanations: mean or best."
    ),
    scorer: str | None = typer.Option(
        None,
        "--scorer",
        help="Compare this scorer's scores (default: simulation if present, else the first).",
    ),
    metric: str | None = typer.Option(
        None, "--metric", help="Compare this metric of the scorer (default: its primary metric)."
    ),
    allow_mismatch: bool = typer.Option(
        False, "--allow-mismatch", help="Compare even if scorer settings/excerpts differ."
    ),
    markdown: Path | None = typer.Option(None, "--markdown", help="Write a Markdown report."),
    csv: Path | None = typer.Option(None, "--csv", help="Write the summary numbers as CSV."),
    html_out: Path | None = typer.Option(None, "--html", help="Write an HTML report."),
    plot: Path | None = typer.Option(None, "--plot", help="Write a PNG of score distributions."),
    resamples: int = typer.Option(
        10_000, "--resamples", min=1, help="Bootstrap resamples (an integer >= 1)."
    ),
    seed: int = typer.Option(0, "--seed", min=0, help="Bootstrap seed (an integer >= 0)."),
) -> None:
    """Compare runs that explained the same units (e.g. two explainer models)."""
    from neuroscribe import compare
    from neuroscribe.rundir import load_run

    if per_unit not in ("mean", "best"):
        raise ConfigError(f"--per-unit must be 'mean' or 'best', not {per_unit!r}")
    outputs = (("--markdown", markdown), ("--csv", csv), ("--html", html_out), ("--plot", plot))
    for flag, path in outputs:
        if path is not None and path.is_dir():
            raise ConfigError(f"{flag} {path} is a folder; give the file to write")
    c = compare.compare_runs(
        [load_run(p) for p in runs],
        per_unit=per_unit,
        n_resamples=resamples,
        seed=seed,
        scorer=scorer,
        metric=metric,
    )
    if c.mismatches and not allow_mismatch:
        raise ConfigError(
            "runs are not comparable: "
            + "; ".join(c.mismatches)
            + " (pass --allow-mismatch to compare anyway)"
        )
    if c.mismatches:
        _print_warning(
            "WARNING: runs that differ",
            [*c.mismatches, "Scores of these runs are NOT directly comparable."],
        )
    if c.check_warnings:
        _print_warning(
            "WARNING: untrustworthy simulator",
            [
                *c.check_warnings,
                "Differences between these scores are noise: the simulator cannot tell true "
                "explanations from false ones on the ground-truth suite.",
            ],
        )
    for line in compare._header_lines(c):
        if not line.startswith(("MISMATCH", "SIMULATOR CHECK FAILED")):
            console.print(line, markup=False, highlight=False)
    fs = compare.formatted_summary(c)
    table = Table(title=f"Explanation scores ({c.scorer} {c.metric})")
    table.add_column("run")
    for col in fs.columns:
        table.add_column(escape(str(col)), justify="right")
    for idx, row in fs.iterrows():
        # Run names are directory names: text, not rich markup.
        table.add_row(escape(str(idx)), *(escape(str(v)) for v in row.tolist()))
    console.print(table)
    layers = Table(title=f"Mean {c.metric} by layer")
    layers.add_column("layer")
    for col in c.by_layer.columns:
        layers.add_column(escape(str(col)), justify="right")
    for idx in c.by_layer.index:
        units = str(c.by_layer.loc[idx, "units"])
        means = [compare._fmt(float(c.by_layer.loc[idx, r])) for r in c.runs]
        layers.add_row(escape(str(idx)), units, *means)
    console.print(layers)
    # Each file is written under a temporary name and renamed into place, so a failure
    # never leaves half a report or destroys the previous one.
    if markdown:
        write_text_atomic(markdown, compare.to_markdown(c))
    if csv:
        compare.write_csv(c, csv)
    if html_out:
        write_text_atomic(html_out, compare.to_html(c))
    if plot:
        compare.plot(c, plot)
    for label, path in (("markdown", markdown), ("csv", csv), ("html", html_out), ("plot", plot)):
        if path:
            console.print(f"wrote {label}: {path}", markup=False, highlight=False)


@app.command("publish")
def publish_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(
        ..., "--out", help="Dataset folder to write (not a file, not inside the run)."
    ),
    format_: str = typer.Option(
        "hf",
        "--format",
        help="hf: JSONL + Parquet + dataset card; neuronpedia: Neuronpedia's import batches.",
    ),
    with_records: bool = typer.Option(False, "--with-records", help="Include the records."),
    openai_layout: bool = typer.Option(
        False, "--openai-layout", help="Also write OpenAI's explanations/<layer>/<index>.jsonl."
    ),
    np_model_id: str | None = typer.Option(
        None,
        "--np-model-id",
        help="Neuronpedia model id (default: from the subject model, e.g. smollm2-135m).",
    ),
    np_source_id: str | None = typer.Option(
        None,
        "--np-source-id",
        help="Neuronpedia source id or template, e.g. '{layer}-res-jb' (default: "
        "'{layer}' for neurons, '{layer}-neuroscribe-sae' for SAE latents).",
    ),
    np_creator_id: str | None = typer.Option(
        None, "--np-creator-id", help="Neuronpedia user id credited as author and creator."
    ),
    np_creator_name: str | None = typer.Option(
        None, "--np-creator-name", help="Creator name on the source set (default: neuroscribe)."
    ),
    np_batch_size: int | None = typer.Option(
        None, "--np-batch-size", min=1, help="Rows per batch file (default 1024)."
    ),
    np_gzip: bool | None = typer.Option(
        None,
        "--np-gzip/--np-no-gzip",
        help="Gzip the batch files (default; Neuronpedia's importer reads only .jsonl.gz).",
    ),
    allow_failures: bool = typer.Option(
        False, "--allow-failures", help="Publish even if failures.jsonl has entries."
    ),
    license_: str = typer.Option("cc-by-4.0", "--license", help="License in the dataset card."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty folder."),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Also upload to this Hugging Face dataset repo (needs network)."
    ),
    private: bool = typer.Option(False, "--private", help="Create the Hub repo as private."),
) -> None:
    """Write a dataset folder (JSONL + Parquet + dataset card, or Neuronpedia's batches)."""
    from neuroscribe.publish import FORMATS, publish_run, push_folder_to_hub
    from neuroscribe.rundir import load_run

    if format_ not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not {format_!r}")
    given = {
        "model_id": np_model_id,
        "source_id": np_source_id,
        "creator_id": np_creator_id,
        "creator_name": np_creator_name,
        "batch_size": np_batch_size,
        "gzip": np_gzip,
    }
    given = {k: v for k, v in given.items() if v is not None}
    options = None
    if format_ == "neuronpedia":
        from neuroscribe.neuronpedia import NeuronpediaOptions

        options = NeuronpediaOptions(**given)
    elif given:
        flags = ", ".join("--np-" + k.replace("_", "-") for k in given)
        raise ConfigError(f"{flags}: Neuronpedia options need --format neuronpedia")
    result = publish_run(
        load_run(run),
        out,
        with_records=with_records,
        openai_layout=openai_layout,
        allow_failures=allow_failures,
        license=license_,
        overwrite=overwrite,
        format=format_,  # type: ignore[arg-type]
        neuronpedia=options,
    )
    console.print(
        f"wrote {result.n_rows} explanations of {result.n_units} units to {out}",
        markup=False,
        highlight=False,
    )
    if result.format == "neuronpedia":
        c = result.counts
        console.print(
            f"neuronpedia: {c['sources']} sources, {c['features']} features, "
            f"{c['activations']} activations, {c['explanations']} explanations, "
            f"{c['scores']} scores",
            markup=False,
            highlight=False,
        )
        if c.get("skipped_scores"):
            console.print(
                f"{c['skipped_scores']} scores have no value for their primary metric and "
                "were left out (Neuronpedia's score value cannot be empty)",
                markup=False,
                highlight=False,
            )
    if push_to_hub:
        url = push_folder_to_hub(out, push_to_hub, private=private)
        console.print(f"pushed to {url}", markup=False, highlight=False)


@app.command("view")
def view_cmd(
    run: Path = typer.Argument(..., help="Run directory."),
    out: Path = typer.Option(
        Path("report.html"), "--out", help="HTML file to write (replaced only when complete)."
    ),
) -> None:
    """Write one self-contained HTML report of a run (opens offline)."""
    from neuroscribe.rundir import load_run
    from neuroscribe.view import write_report

    n = write_report(load_run(run), out)
    console.print(f"wrote {out} ({n} units)", markup=False, highlight=False)


@app.command("serve")
def serve_cmd(
    run: Path | None = typer.Argument(
        None, help="Run directory: serve its report only. Leave out to start the service."
    ),
    root: Path | None = typer.Option(
        None, "--root", help="The service's folder of run directories (default: the current one)."
    ),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on; beyond loopback it needs a token."
    ),
    port: int = typer.Option(
        8765,
        "--port",
        min=0,
        max=65535,
        help="Port, 0-65535 (0 picks a free one).",
    ),
    token: str | None = typer.Option(
        None, "--token", help="Bearer token clients must send (visible in ps: prefer --token-file)."
    ),
    token_file: Path | None = typer.Option(
        None, "--token-file", help="Read the bearer token from this file (or NEUROSCRIBE_TOKEN)."
    ),
    max_jobs: int = typer.Option(2, "--max-jobs", min=1, max=64, help="Jobs running at once."),
    max_body_mb: float = typer.Option(
        16.0, "--max-body", min=0.001, help="Largest request body, in MB."
    ),
    rate_limit: float = typer.Option(
        50.0, "--rate-limit", min=0, help="Requests per second per client (0: no limit)."
    ),
    ray: str | None = typer.Option(
        None,
        "--ray",
        help="Run every job's explain/score items on this Ray cluster: auto, local, "
        "local:N or HOST:PORT (as `run --ray`).",
    ),
    ray_workers: int | None = typer.Option(
        None, "--ray-workers", min=1, help="Ray actors per job stage (default: as `run --ray`)."
    ),
) -> None:
    """Start the service (HTTP API + browser UI over the runs in --root), or serve one
    run's report over HTTP on 127.0.0.1 (`serve RUN`)."""
    if run is not None:
        service_flags = {"--root": root is not None, "--token": token is not None,
                         "--token-file": token_file is not None, "--host": host != "127.0.0.1",
                         "--ray": ray is not None, "--ray-workers": ray_workers is not None}  # fmt: skip
        given = [flag for flag, on in service_flags.items() if on]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: options of the service; `serve RUN` serves one report on "
                "127.0.0.1 (leave RUN out and give --root DIR to start the service)"
            )
        _serve_report(run, port)
        return
    import os

    from neuroscribe.service import ServiceConfig, serve

    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--token-file {token_file}: {e.strerror}") from None
        if not token:
            raise ConfigError(f"--token-file {token_file} is empty")
    elif token is None and os.environ.get("NEUROSCRIBE_TOKEN"):
        token = os.environ["NEUROSCRIBE_TOKEN"].strip()
    cfg = ServiceConfig(
        root=root if root is not None else Path.cwd(),
        host=host,
        port=port,
        token=token,
        max_jobs=max_jobs,
        max_body_bytes=int(max_body_mb * 1024 * 1024),
        rate_limit=rate_limit,
        ray=ray,
        ray_workers=ray_workers,
    )
    serve(cfg, announce=lambda line: console.print(line, markup=False, highlight=False))


def _serve_report(run: Path, port: int) -> None:
    from neuroscribe.rundir import load_run
    from neuroscribe.view import make_server

    server = make_server(load_run(run), port=port)
    host, bound = server.server_address[:2]
    console.print(
        f"serving {run} on http://{host}:{bound}/ (Ctrl-C to stop)", markup=False, highlight=False
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
