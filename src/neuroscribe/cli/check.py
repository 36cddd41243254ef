"""`neuroscribe check simulator|explainer`: measure on ground truth before trusting scores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from neuroscribe.cli.app import app, make_console
from neuroscribe.cli.pipeline import _config, takes
from neuroscribe.jsonl import write_text_atomic
from neuroscribe.llm.base import EMBEDDED_SPEC, TUNED_SIMULATOR_SPEC

console = make_console()

check_app = typer.Typer(
    help="Measure a simulator or an explainer on the ground-truth suite (known explanations).",
    no_args_is_help=True,
)
app.add_typer(check_app, name="check")

SuiteOpt = Annotated[
    Path | None,
    typer.Option(
        "--suite", help="Ground-truth suite JSONL (default: the built-in one; see README)."
    ),
]
SplitOpt = Annotated[
    str, typer.Option("--split", help="Suite half: test (report), dev (tune) or all.")
]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Also write the full report as JSON.")]
LimitOpt = Annotated[
    int | None, typer.Option("--max-units", min=1, help="Check at most N units of the split.")
]
NO_RUN = Path(".")


def _check_config(flags: dict[str, Any]):
    # A check writes no run directory and keeps no response cache: it measures.
    return _config({**flags, "run": NO_RUN, "no_cache": True})


def _score(v: float | None) -> str:
    return "—" if v is None else f"{v:+.2f}"


def _usd(v: float | None) -> str:
    return "unknown" if v is None else ("free" if v == 0 else f"${v:.4f}")


@check_app.command("simulator")
@takes("simulator", "strategy", "sim_prompt", "sim_examples", "base_url", "api_key", "timeout")
def check_simulator_cmd(
    suite: SuiteOpt = None,
    split: SplitOpt = "test",
    out: OutOpt = None,
    max_units: LimitOpt = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Does this simulator rank each unit's true explanation above its false ones?"""
    from neuroscribe.groundtruth.runner import check_simulator_async, run_sync
    from neuroscribe.groundtruth.store import save_check

    config = _check_config(flags)

    def progress(u) -> None:
        mark = "✓" if u.true_first else "✗"
        console.print(
            f"{mark} {u.unit_id}: true {_score(u.true_score)}, best false "
            f"{_score(u.best_false)}, margin {u.margin:+.2f}",
            markup=False,
        )

    report = run_sync(
        check_simulator_async(
            config, suite=suite, split=split, max_units=max_units, on_unit=progress
        )
    )
    s = report.summary
    table = Table(title="Simulator check")
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("simulator", escape(f"{report.simulator} ({report.strategy})"))
    table.add_row("prompt", report.prompt_version)
    table.add_row("units", f"{s.n_units} ({report.split})")
    table.add_row("true ranked first", f"{s.top1_rate:.0%} (chance {s.chance_rate:.0%})")
    interval = (
        f" [{s.margin_interval[0]:+.2f}, {s.margin_interval[1]:+.2f}]" if s.margin_interval else ""
    )
    table.add_row("mean margin (95% CI)", f"{s.mean_margin:+.3f}{interval}")
    table.add_row("mean true score", f"{s.mean_true_score:+.3f}")
    table.add_row("mean false score", f"{s.mean_false_score:+.3f}")
    table.add_row("unscored candidates", str(s.n_failed_candidates))
    table.add_row("prompt tokens per unit", f"{s.prompt_tokens_per_unit:,.0f}")
    table.add_row("cost per unit", _usd(s.cost_per_unit_usd))
    console.print(table)
    console.print(s.verdict, style="green" if s.trustworthy else "bold red", markup=False)
    if not s.trustworthy and report.simulator == EMBEDDED_SPEC:
        # Where the plain embedded model fails, the bundled trained one is the next step.
        console.print(
            f"the trained simulator does better on this suite: --simulator '{TUNED_SIMULATOR_SPEC}'",
            markup=False,
            soft_wrap=True,
        )
    path = save_check(report)
    console.print(f"saved for neuroscribe run and compare: {path}", markup=False)
    if out is not None:
        write_text_atomic(out, report.model_dump_json(indent=1))
        console.print(f"report: {out}", markup=False)


@check_app.command("explainer")
@takes(
    "explainer",
    "explainer_method",
    "explain_prompt",
    "k",
    "select_scorer",
    "rounds",
    "temperature",
    "max_tokens",
    "simulator",
    "strategy",
    "sim_prompt",
    "sim_examples",
    "base_url",
    "api_key",
    "timeout",
)
def check_explainer_cmd(
    suite: SuiteOpt = None,
    split: SplitOpt = "test",
    out: OutOpt = None,
    max_units: LimitOpt = None,
    *,
    flags: dict[str, Any],
) -> None:
    """Does this explainer recover the known rules? Explain each unit, score against them."""
    from neuroscribe.groundtruth.runner import check_explainer_async, run_sync

    config = _check_config(flags)

    def progress(u) -> None:
        mark = "✓" if u.recovered else "✗"
        text = u.explanation if u.explanation is not None else f"(failed: {u.error})"
        console.print(
            f"{mark} {u.unit_id}: {_score(u.score)} (true {_score(u.true_score)}, best false "
            f"{_score(u.best_false_score)}): {text!r}",
            markup=False,
        )

    report = run_sync(
        check_explainer_async(
            config, suite=suite, split=split, max_units=max_units, on_unit=progress
        )
    )
    table = Table(title="Explainer check")
    table.add_column("figure", no_wrap=True)
    table.add_column("value", justify="right", no_wrap=True)
    table.add_row("explainer", escape(f"{report.explainer} ({report.method})"))
    table.add_row("explainer prompt", escape(report.explain_prompt or ""))
    table.add_row("simulator", escape(f"{report.simulator} ({report.strategy})"))
    table.add_row("units", f"{report.n_units} ({report.split})")
    table.add_row("recovered (beats every false one)", f"{report.recovery_rate:.0%}")
    iv = report.score_interval
    ci = f" [{iv[0]:+.2f}, {iv[1]:+.2f}]" if iv else ""
    table.add_row("mean score (95% CI)", f"{report.mean_score:+.3f}{ci}")
    table.add_row("mean true-explanation score", f"{report.mean_true_score:+.3f}")
    table.add_row("no usable explanation", str(report.failed))
    table.add_row("prompt tokens per unit", f"{report.prompt_tokens_per_unit:,.0f}")
    console.print(table)
    check = report.simulator_check
    if check is None:
        console.print(
            "the simulator has no check result yet: run `neuroscribe check simulator` with "
            "the same options to know whether these scores can be trusted",
            style="yellow",
            markup=False,
        )
    elif not check.get("trustworthy"):
        console.print(f"warning: {check.get('verdict')}", style="bold red", markup=False)
    if out is not None:
        write_text_atomic(out, json.dumps(report.model_dump(mode="json"), indent=1))
        console.print(f"report: {out}", markup=False)
