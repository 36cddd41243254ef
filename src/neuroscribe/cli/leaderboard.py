"""`neuroscribe leaderboard RUN`: explainer models × prompt styles × methods, ranked.

The grid (`leaderboard_run`) is explained and scored through `neuroscribe.api`
(resumable), then the table (`leaderboard`) is printed as Markdown and, with --out,
written as leaderboard.md/.html/.csv/.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from neuroscribe.cli._jobs import hooks
from neuroscribe.cli.app import app, err_console
from neuroscribe.cli.pipeline import COMMON, RECORD, SCORE, _config, _scorers, takes
from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import EMBEDDED_SPEC

# The grid's flags: comma lists here, one value in the other commands.
_GRID = ("explainer", "explain_prompt", "explainer_method", "baselines")
_JOB = ("concurrency", "timeout", "retry_failed", "quiet", "rpm", "tpm", "max_cost")
_JOB += ("no_cache", "prices")
_EXPLAIN = ("n_explanations", "temperature", "max_tokens", "k", "select_scorer", "rounds")


@app.command("leaderboard")
@takes(*SCORE, *COMMON, *_JOB, *RECORD, *_EXPLAIN, scorer=None)
def leaderboard_cmd(
    run: Annotated[Path, typer.Argument(help="Run directory (recorded first if it has none).")],
    explainer: Annotated[
        str,
        typer.Option(
            "--explainer",
            help="Explainer models, comma-separated (names served by --base-url, or "
            "hf:<model>; hf:embedded for SmolLM2).",
        ),
    ] = EMBEDDED_SPEC,
    explain_prompt: Annotated[
        str,
        typer.Option(
            "--explain-prompt",
            help="Explainer prompt styles, comma-separated: rows, highlight, summary.",
        ),
    ] = "rows",
    explainer_method: Annotated[
        str,
        typer.Option(
            "--explainer-method",
            help="Explainer methods, comma-separated: token-rows, best-of-k, revision, ...",
        ),
    ] = "token-rows",
    baselines: Annotated[
        str,
        typer.Option(
            "--baselines",
            help="Baselines run once each (no model): token-lookup, random; '' for none.",
        ),
    ] = "token-lookup,random",
    against: Annotated[
        str | None,
        typer.Option(
            "--against",
            help="The row differences are taken against: its label, a config hash prefix "
            "or a text in one label (default: the first non-baseline configuration).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Folder for leaderboard.md, .html, .csv and .png (created if needed)."
        ),
    ] = None,
    no_run: Annotated[
        bool,
        typer.Option("--no-run", help="Explain and score nothing: rank what the run holds."),
    ] = False,
    allow_mismatch: Annotated[
        bool,
        typer.Option(
            "--allow-mismatch", help="Rank even if scorer settings or held-out excerpts differ."
        ),
    ] = False,
    resamples: Annotated[
        int, typer.Option("--resamples", min=1, help="Bootstrap resamples (an integer >= 1).")
    ] = 10_000,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Bootstrap seed (>= 0).")] = 0,
    *,
    flags: dict[str, Any],
) -> None:
    """Rank explainer models × prompt styles × methods (plus the token-lookup and random
    baselines) on the same units by the same scorer(s): mean score with 95% intervals,
    paired differences, tokens and cost per unit. Runs what is missing first (resumable)."""
    from neuroscribe import api
    from neuroscribe.compare import default_scorer
    from neuroscribe.leaderboard import build_leaderboard, to_markdown, write_report
    from neuroscribe.leaderboard_run import Grid, run_grid
    from neuroscribe.rundir import RunDir

    if out is not None and out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder to write the report into")
    named = flags["scorer"] is not None
    if not named:
        flags["scorer"] = "simulation"
    scorers = _scorers(flags)
    config = _config({k: v for k, v in flags.items() if k not in _GRID})

    if not no_run:
        grid = Grid.parse(explainer, explain_prompt, explainer_method, baselines)
        # Progress on stderr: stdout is the Markdown alone (`> leaderboard.md` works).
        run_grid(config, grid, scorers, hooks(err_console))

    loaded = RunDir(run).load()
    if named or not no_run:
        tables = [name for name, _ in scorers]
    else:
        # Nothing named and nothing run: every scorer the run holds, the reference first.
        first = default_scorer(loaded)
        tables = [first, *(s for s in loaded.scorers() if s != first)] if first else [None]
    units = None
    if config.units.patterns or config.units.max_units:
        units = [r.unit_id for r in api.load_units(config)]
    boards = [
        build_leaderboard(
            loaded,
            scorer,
            against,
            units=units,
            allow_mismatch=allow_mismatch,
            n_resamples=resamples,
            seed=seed,
        )
        for scorer in tables
    ]
    # Plain text, never wrapped: labels, ids and paths stay whole and copyable.
    typer.echo(to_markdown(boards))
    if out is not None:
        for path in write_report(boards, out):
            typer.echo(f"wrote {path}")
