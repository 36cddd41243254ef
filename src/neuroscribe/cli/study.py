"""`neuroscribe study scorers RUN`: which scorer agrees with simulation, at what cost."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from neuroscribe.cli.app import app, make_console
from neuroscribe.cli.pipeline import _config, takes

console = make_console()

study_app = typer.Typer(help="Studies over finished runs.", no_args_is_help=True)
app.add_typer(study_app, name="study")


@study_app.command("scorers")
@takes("base_url", "api_key", "timeout")
def study_scorers_cmd(
    run: Annotated[Path, typer.Argument(help="A run scored with several scorers.")],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Report files OUT.md/.html/.png/.json (default RUN/scorer-study)."
        ),
    ] = None,
    reference: Annotated[
        str, typer.Option("--reference", help="The scorer the others are compared with.")
    ] = "simulation",
    groundtruth: Annotated[
        bool,
        typer.Option(
            "--groundtruth/--no-groundtruth",
            help="Also run each scorer (with its model from the run) on the ground-truth suite.",
        ),
    ] = False,
    split: Annotated[str, typer.Option("--split", help="Suite half for --groundtruth.")] = "test",
    max_units: Annotated[
        int | None, typer.Option("--max-units", min=1, help="Suite units for --groundtruth.")
    ] = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Agreement of every scorer of RUN with the reference (Spearman, Kendall, bootstrap
    95% intervals), tokens and cost per unit, and optionally each scorer's ground-truth check."""
    from neuroscribe.groundtruth.check import CheckSummary
    from neuroscribe.rundir import RunDir
    from neuroscribe.study import HEADERS, GroundTruthRow, study_scorers, table_rows, write_report

    loaded = RunDir(run).load()
    study = study_scorers(loaded, reference=reference)  # cheap: fails before the check would
    gt: dict[str, GroundTruthRow] | None = None
    if groundtruth:
        from neuroscribe.groundtruth.scorers import check_run_scorers_async

        pairs = []
        for name in loaded.scorers():
            models = {s.scorer_model for s in loaded.latest_scores(name)}
            pairs.append((name, sorted(m for m in models if m)[0] if any(models) else None))
        config = _config({**flags, "run": Path("."), "no_cache": True})
        summaries: dict[str, CheckSummary] = asyncio.run(
            check_run_scorers_async(config, pairs, split=split, max_units=max_units)
        )
        keep = ("n_units", "top1_rate", "chance_rate", "mean_margin", "margin_interval")
        gt = {
            name: GroundTruthRow(split=split, **s.model_dump(include=set(keep)))
            for name, s in summaries.items()
        }
    if gt is not None:
        for row in study.rows:
            row.groundtruth = gt.get(row.scorer)
    table = Table(title=f"Scorer study · {study.n_units} units · reference {reference}")
    for h in HEADERS:
        table.add_column(h, overflow="fold")
    for cells in table_rows(study):
        table.add_row(*(escape(c) for c in cells))
    console.print(table)
    written = write_report(loaded, study, out if out is not None else run / "scorer-study")
    for path in written:
        console.print(f"wrote {escape(str(path))}", highlight=False)
