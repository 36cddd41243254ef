"""A simulator's ground-truth check travels with its scores: stored by `check`, found for
the same configuration, recorded in the run manifest, and shouted by `compare`."""

from __future__ import annotations

import pytest

from _cli import run_cli
from _reportruns import make_run
from neuroscribe.groundtruth.check import CandidateResult, CheckReport, UnitCheck, summarize
from neuroscribe.groundtruth.store import find_check, save_check
from neuroscribe.rundir import RunDir, load_run


def _report(simulator: str, good: bool) -> CheckReport:
    units = [
        UnitCheck(
            unit_id=f"u{i}",
            category="token",
            split="test",
            candidates=[
                CandidateResult(kind="true", text="t", score=0.8 if good else 0.1),
                CandidateResult(kind="over-general", text="f", score=0.2),
            ],
        )
        for i in range(4)
    ]
    return CheckReport(
        simulator=simulator,
        strategy="all_at_once",
        prompt_version="sim-v1",
        suite="builtin",
        split="test",
        summary=summarize(units),
        units=units,
    )


def test_a_saved_check_is_found_for_the_same_configuration_only(tmp_path):
    save_check(_report("sim-x", good=False), tmp_path)
    entry = find_check("sim-x", "all_at_once", "sim-v1", tmp_path)
    assert entry is not None and entry["trustworthy"] is False
    assert "noise" in entry["verdict"]
    assert find_check("sim-x", "all_at_once", "sim-v2", tmp_path) is None
    assert find_check("sim-y", "all_at_once", "sim-v1", tmp_path) is None
    # A damaged report is advice lost, never an error that blocks a run.
    for p in tmp_path.iterdir():
        p.write_text("{broken")
    assert find_check("sim-x", "all_at_once", "sim-v1", tmp_path) is None


def test_compare_warns_loudly_when_the_simulator_failed_its_check(tmp_path):
    a = make_run(tmp_path / "a", {"tiny/gpt/0/1": [0.2], "tiny/gpt/0/2": [0.3]}, explainer="e-a")
    b = make_run(tmp_path / "b", {"tiny/gpt/0/1": [0.4], "tiny/gpt/0/2": [0.5]}, explainer="e-b")
    entry = _report("sim-x", good=False).manifest_entry()
    for run in (a, b):
        RunDir(run).record_simulator_check("sim-x|all_at_once|sim-v1", entry)
    assert load_run(a).manifest.simulator_checks["sim-x|all_at_once|sim-v1"]["trustworthy"] is False
    out = run_cli("compare", str(a), str(b), columns=60)
    text = " ".join(out.stdout.split())
    assert "untrustworthy simulator" in text
    assert "cannot tell explanations apart" in text


@pytest.mark.slow
def test_compare_notes_an_unchecked_simulator_and_is_quiet_for_a_trusted_one(tmp_path):
    a = make_run(tmp_path / "a", {"tiny/gpt/0/1": [0.2], "tiny/gpt/0/2": [0.3]})
    b = make_run(tmp_path / "b", {"tiny/gpt/0/1": [0.4], "tiny/gpt/0/2": [0.5]})
    out = run_cli("compare", str(a), str(b), columns=60)
    assert "has no ground-truth check" in " ".join(out.stdout.split())
    entry = _report("sim-x", good=True).manifest_entry()
    assert entry["trustworthy"] is True
    for run in (a, b):
        RunDir(run).record_simulator_check("sim-x|all_at_once|sim-v1", entry)
    out = run_cli("compare", str(a), str(b), columns=60)
    assert "untrustworthy" not in out.stdout
    assert "has no ground-truth check" not in " ".join(out.stdout.split())
