"""CLI output a user copies from: paths and ids are never wrapped, whatever the terminal."""

from __future__ import annotations

import pytest

from _cli import run_cli
from neuroscribe.schema import Failure
from test_stages import explain_stage, fake, go, make_run, score_stage


@pytest.mark.parametrize("columns", [30, None])
def test_paths_stay_whole_in_a_narrow_terminal_and_a_long_temporary_path(tmp_path, columns):
    deep = tmp_path / ("a-long-folder-name-" * 4) / "and-another-long-one"
    run = make_run(deep)
    records = run.records()
    go(explain_stage(fake(), records), run)
    go(score_stage(fake(), records), run)
    run.path("scores").unlink()
    run.append(
        "failures",
        [Failure(stage="simulate", unit_id="m/0/9", explanation_id="e9", reason="r",
                 config_hash="h")],
    )  # fmt: skip
    r = run_cli("score", str(run.root), columns=columns)
    # The line naming the failures file holds its whole path, unbroken.
    assert str(run.path("failures")) in r.stdout
    assert "score: 3 done" in r.stdout
