"""Printing for the job commands: the dry-run table, a finished stage, the run summary.

The commands themselves only map flags to a `RunConfig` (`cli/pipeline.py`) and call
`neuroscribe.api`; this module turns what the API returns into terminal output.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from neuroscribe.api import Hooks
from neuroscribe.engine import JobSummary, StageEstimate
from neuroscribe.estimate import total_cost


def print_estimates(console: Console, estimates: Sequence[StageEstimate]) -> None:
    """The dry-run table: per stage and in total, tokens and the expected cost."""
    table = Table(title="Dry run: what the job would send (nothing was sent)")
    for col in ("stage", "model", "units", "requests", "prompt tok", "completion tok", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for e in estimates:
        table.add_row(
            e.stage,
            escape(e.model),  # a model spec can be a local path: text, not markup
            str(e.units),
            str(e.requests),
            f"{e.prompt_tokens:,}",
            f"{e.completion_tokens:,}",
            _usd(e.cost_usd),
        )
    total = total_cost(estimates)
    table.add_row(
        "total",
        "",
        "",
        str(sum(e.requests for e in estimates)),
        f"{sum(e.prompt_tokens for e in estimates):,}",
        f"{sum(e.completion_tokens for e in estimates):,}",
        _usd(total),
    )
    console.print(table)
    for e in estimates:
        console.print(f"{e.stage}: tokens counted with {e.tokenizer}", markup=False)
        for note in e.notes:
            console.print(f"{e.stage}: {note}", markup=False)
    if total is None:
        console.print(
            "[yellow]some prices are unknown: add them with --prices FILE to see a total[/]"
        )


def _usd(value: float | None) -> str:
    return "unknown price" if value is None else f"${value:.4f}"


def print_stage(console: Console, summary: JobSummary) -> None:
    """A finished stage: its warnings, the strategy it used, its one-line summary."""
    for w in summary.warnings:
        # A warning can name a run directory: its text is not markup.
        console.print(f"[yellow]warning:[/] {escape(w)}", highlight=False)
    if "strategy" in summary.details:
        scale = summary.details.get("scale_max", 10)
        console.print(f"simulator strategy: {summary.details['strategy']} (values 0–{scale})")
    console.print(summary.line(), markup=False)


def hooks(console: Console) -> Hooks:
    return Hooks(
        message=lambda msg: console.print(msg, markup=False, highlight=False),
        stage=lambda s: print_stage(console, s),
    )
