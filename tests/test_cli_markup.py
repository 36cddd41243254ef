"""Untrusted text in terminal output: run paths, unit ids and explanations are printed as
text, never read as rich markup (a "[/x]" would otherwise raise MarkupError after the
work is done, and "[bold]" would vanish from what the user reads)."""

from __future__ import annotations

import json
from io import StringIO
from pathlib import Path

from rich.console import Console
from tests._reportruns import make_run

from neuroscribe.cli import pipeline
from neuroscribe.cli._jobs import print_stage
from neuroscribe.engine import JobSummary

MARKUP = "[/x] [bold]y"


def _set_first_text(path: Path, text: str) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    key = "text" if "text" in rows[0] else "explanation"
    rows[0][key] = text
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_results_table_prints_markup_like_explanations_and_paths_as_text(
    tmp_path, capsys, monkeypatch
):
    # Wide, as `run_cli` runs commands: a narrow terminal would shorten the table's cells
    # with an ellipsis, and this test is about markup, not width.
    monkeypatch.setenv("COLUMNS", "400")
    run = make_run(tmp_path / "run[bold]x[/y]", {"tiny/gpt/0/1": [0.5], "tiny/gpt/0/2": [0.1]})
    for name in ("explanations.jsonl", "scores.jsonl"):  # a score carries its text too
        _set_first_text(run / name, f"words {MARKUP}")

    pipeline._print_results(run)

    out = capsys.readouterr().out
    assert "[/x]" in out and "[bold]y" in out


def test_stage_warnings_naming_a_run_directory_print_as_text():
    buf = StringIO()
    console = Console(file=buf, width=300, color_system=None)
    summary = JobSummary(stage="explain", warnings=[f"the configuration differs in /tmp/{MARKUP}"])

    print_stage(console, summary)

    assert f"/tmp/{MARKUP}" in buf.getvalue()
