"""Job options shared by `explain`, `simulate` and `run`: limits, budget, cache, dry run.

Kept out of `cli/pipeline.py` so the commands stay thin: this module turns the flags
into client options, checks a budget before anything is sent, prints the dry-run
estimate, and writes and prints the run summary after each stage.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from neuroscribe.engine import JobSummary, write_run_summary
from neuroscribe.errors import BudgetExceeded, ConfigError
from neuroscribe.estimate import StageEstimate, total_cost
from neuroscribe.llm.base import is_local_spec
from neuroscribe.llm.pricing import Price, load_prices, price_for

CACHE_NAME = ".cache/responses.sqlite"


@dataclass
class JobOptions:
    """The flags every LLM stage takes (see docs/jobs.md)."""

    rpm: float | None = None
    tpm: float | None = None
    max_cost: float | None = None
    dry_run: bool = False
    no_cache: bool = False
    prices: Path | None = None

    def price_table(self) -> dict[str, Price]:
        return load_prices(self.prices)

    def llm_options(self, run: Path) -> dict[str, Any]:
        """Keyword arguments for an API backend (`make_llm`); local models take none."""
        opts: dict[str, Any] = {"rpm": self.rpm, "tpm": self.tpm, "prices": self.price_table()}
        if not self.no_cache:
            opts["cache"] = cache_path(run)
        return opts


def cache_path(run: Path) -> Path:
    """Where a run's response cache lives: RUN/.cache/responses.sqlite."""
    return Path(run) / CACHE_NAME


def check_options(opts: JobOptions, specs: Sequence[str]) -> None:
    """Refuse a bad budget or rate before anything is sent (ConfigError, exit 1)."""
    for name, value in (("--rpm", opts.rpm), ("--tpm", opts.tpm)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be a positive number, not {value:g}")
    if opts.max_cost is None:
        return
    if opts.max_cost != opts.max_cost or opts.max_cost <= 0:
        raise ConfigError(
            f"--max-cost {opts.max_cost:g}: a budget must be more than $0 "
            "(use --dry-run to see what a job would cost without sending anything)"
        )
    table = opts.price_table()
    for spec in specs:
        if not is_local_spec(spec) and price_for(spec, table) is None:
            raise ConfigError(
                f"--max-cost needs the price of model {spec!r}, which is not in the price "
                'table: give one with --prices FILE (JSON: {"' + spec + '": {"input": USD '
                'per 1M tokens, "output": USD per 1M tokens}})'
            )


def print_estimates(console: Console, estimates: Sequence[StageEstimate]) -> None:
    """The dry-run table: per stage and in total, tokens and the expected cost."""
    table = Table(title="Dry run: what the job would send (nothing was sent)")
    for col in ("stage", "model", "units", "requests", "prompt tok", "completion tok", "cost"):
        table.add_column(col, justify="left" if col in ("stage", "model") else "right")
    for e in estimates:
        table.add_row(
            e.stage,
            e.model,
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
        console.print(f"{e.stage}: tokens counted with {e.tokenizer}")
        for note in e.notes:
            console.print(f"{e.stage}: {note}")
    if total is None:
        console.print(
            "[yellow]some prices are unknown: add them with --prices FILE to see a total[/]"
        )


def _usd(value: float | None) -> str:
    return "unknown price" if value is None else f"${value:.4f}"


def finish_stage(console: Console, run: Path, summary: JobSummary, max_cost: float | None) -> None:
    """Print the stage's line and warnings, update RUN/summary.json, stop on the budget."""
    for w in summary.warnings:
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    console.print(summary.line())
    write_run_summary(run, [summary])
    if summary.stopped_for_budget:
        raise BudgetExceeded(
            f"budget reached: stopped {summary.stage} with {summary.remaining} units left "
            f"(--max-cost ${max_cost:.4f}); the work done is saved. Rerun with a higher "
            "--max-cost to continue"
        )


def print_run_summary(console: Console, run: Path) -> None:
    """Print RUN/summary.json's stages as a table."""
    from neuroscribe.engine import read_run_summary

    data = read_run_summary(run)
    table = Table(title=f"Run summary ({Path(run) / 'summary.json'})")
    for col in ("stage", "done", "skipped", "failed", "left", "tokens", "cost", "run total"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for stage, s in data.get("stages", {}).items():
        tot = data.get("totals", {}).get(stage, {})
        table.add_row(
            stage,
            str(s["done"]),
            str(s["skipped"]),
            str(s["failed"]),
            str(s["remaining"]),
            f"{s['prompt_tokens'] + s['completion_tokens']:,}",
            f"${s['cost_usd']:.4f}",
            f"${tot.get('cost_usd', 0.0):.4f}",
        )
    console.print(table)


def dry_run(
    console: Console,
    run: Path,
    records: Sequence[Any],
    opts: JobOptions,
    *,
    explain: tuple[str, Any] | None = None,
    simulate: tuple[str, Any, str, int] | None = None,
) -> list[StageEstimate]:
    """Count and price what `explain` and/or `simulate` would send, print it, send nothing.

    `explain` = (explainer spec, ExplainSettings); `simulate` = (simulator spec,
    SplitConfig, strategy, few-shot examples). With both (the `run` command), the units
    still to explain are simulated at a typical explanation length.
    """
    from neuroscribe.estimate import (
        done_simulations,
        estimate_explain,
        estimate_simulate,
    )
    from neuroscribe.jsonl import read_jsonl_if_exists
    from neuroscribe.pipeline import RunPaths, config_hash, explain_config
    from neuroscribe.rundir import load_manifest
    from neuroscribe.schema import Explanation

    paths = RunPaths(Path(run))
    prices = opts.price_table()
    explanations = read_jsonl_if_exists(paths.explanations, Explanation)
    estimates: list[StageEstimate] = []
    planned: list[str] = []
    n_samples = 1
    if explain is not None:
        spec, settings = explain
        h = config_hash(explain_config(spec, settings))
        done = {e.unit_id for e in explanations if e.config_hash == h}
        est = estimate_explain(
            records,
            spec,
            splits=settings.splits,
            n_samples=settings.explainer.n_samples,
            max_tokens=settings.explainer.max_tokens,
            n_examples=settings.explainer.n_examples,
            max_prompt_tokens=settings.explainer.max_prompt_tokens,
            skip_units=done,
            prices=prices,
        )
        estimates.append(est)
        planned = [r.unit_id for r in records if r.unit_id not in done]
        n_samples = settings.explainer.n_samples
        explanations = [e for e in explanations if e.config_hash == h]
    if simulate is not None:
        spec, splits, strategy, n_examples = simulate
        manifest = load_manifest(paths.manifest)
        probe = manifest.probes.get(spec) if manifest else None
        estimates.append(
            estimate_simulate(
                records,
                explanations,
                spec,
                splits=splits,
                strategy=strategy,
                probe=probe,
                n_examples=n_examples,
                planned_units=planned,
                n_samples=n_samples,
                done_explanations=done_simulations(paths.simulations, spec),
                prices=prices,
            )
        )
    print_estimates(console, estimates)
    return estimates
