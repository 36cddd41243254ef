"""compare: statistics checked against direct numpy/scipy computations; mismatches refused."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from _cli import run_cli
from _reportruns import add_scorer, detection_metrics, downgrade_scores_to_v1, make_run
from neuroscribe.cli.app import _register_commands, app
from neuroscribe.compare import bootstrap_mean_ci, compare_runs, to_markdown
from neuroscribe.errors import DataError
from neuroscribe.rundir import load_run

N_UNITS = 30


def _scores(seed: int, shift: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(N_UNITS):
        base = float(rng.uniform(0.0, 0.6))
        # Two explanations per unit: the per-unit score is their mean.
        out[f"tiny/gpt/{i % 3}/{i}"] = [round(base + shift, 4), round(base + shift + 0.1, 4)]
    return out


@pytest.fixture()
def two_runs(tmp_path):
    a = _scores(1, 0.0)
    rng = np.random.default_rng(7)
    # Run B: better by 0.15 on average, with noise, and one extra unit A lacks.
    b = {u: [round(s + 0.15 + float(rng.normal(0, 0.05)), 4) for s in v] for u, v in a.items()}
    b["tiny/gpt/9/999"] = [0.9]
    ra = make_run(tmp_path / "run_a", a, explainer="small-llm", tokens_per_call=100)
    rb = make_run(
        tmp_path / "run_b", b, explainer="big-llm", tokens_per_call=300, cost_per_call=0.01
    )
    return ra, rb, a, b


def test_compare_matches_numpy_and_scipy(two_runs):
    ra, rb, a, b = two_runs
    c = compare_runs([load_run(ra), load_run(rb)], n_resamples=4000, seed=3)
    assert c.n_shared == N_UNITS
    assert c.n_units == {"run_a": N_UNITS, "run_b": N_UNITS + 1}
    assert c.mismatches == []
    units = sorted(a)
    va = np.array([np.mean(a[u]) for u in units])
    vb = np.array([np.mean(b[u]) for u in units])
    s = c.summary
    assert s.loc["run_a", "mean_score"] == pytest.approx(va.mean())
    assert s.loc["run_b", "mean_score"] == pytest.approx(vb.mean())
    assert s.loc["run_b", "explainer"] == "big-llm"
    # Bootstrap interval: the same resampling done by hand.
    rng = np.random.default_rng(3)
    idx = rng.integers(0, N_UNITS, size=(4000, N_UNITS))
    lo, hi = np.quantile(va[idx].mean(axis=1), [0.025, 0.975])
    assert (s.loc["run_a", "ci_low"], s.loc["run_a", "ci_high"]) == pytest.approx((lo, hi))
    assert s.loc["run_a", "ci_low"] < va.mean() < s.loc["run_a", "ci_high"]
    d = vb - va
    assert s.loc["run_b", "diff_vs_first"] == pytest.approx(d.mean())
    assert s.loc["run_b", "diff_ci_low"] > 0  # B is clearly better
    assert s.loc["run_b", "wilcoxon_p"] == pytest.approx(stats.wilcoxon(vb, va).pvalue)
    assert s.loc["run_b", "ttest_p"] == pytest.approx(stats.ttest_rel(vb, va).pvalue)
    assert s.loc["run_b", "wilcoxon_p"] < 1e-4
    assert s.loc["run_b", "win_rate"] == pytest.approx(
        ((d > 0).sum() + 0.5 * (d == 0).sum()) / N_UNITS
    )
    assert pd.isna(s.loc["run_a", "diff_vs_first"])
    # Usage: two explain calls (prompt + 10 completion) and two simulate calls per unit.
    assert s.loc["run_a", "tokens_per_unit"] == pytest.approx(2 * 110 + 2 * 50)
    assert s.loc["run_b", "tokens_per_unit"] == pytest.approx(2 * 310 + 2 * 50)
    assert s.loc["run_b", "explain_tokens_per_unit"] == pytest.approx(2 * 310)
    assert s.loc["run_b", "cost_per_unit_usd"] == pytest.approx(0.02)
    # By layer: mean of per-unit scores for the units of each layer.
    for layer in ("0", "1", "2"):
        mask = np.array([u.split("/")[2] == layer for u in units])
        assert c.by_layer.loc[layer, "run_b"] == pytest.approx(vb[mask].mean())
        assert c.by_layer.loc[layer, "units"] == mask.sum()


def test_best_per_unit_takes_the_max(two_runs):
    ra, rb, a, _ = two_runs
    c = compare_runs([load_run(ra), load_run(rb)], per_unit="best", n_resamples=200)
    assert c.summary.loc["run_a", "mean_score"] == pytest.approx(
        np.mean([max(v) for v in a.values()])
    )


def test_bootstrap_needs_two_values():
    assert bootstrap_mean_ci(np.array([0.5])) is None
    lo, hi = bootstrap_mean_ci(np.array([0.2, 0.2, 0.2]))
    assert lo == hi == pytest.approx(0.2)


def test_mismatched_simulator_and_excerpts_are_reported(tmp_path):
    a = _scores(1, 0.0)
    ra = load_run(make_run(tmp_path / "a", a))
    rb = load_run(make_run(tmp_path / "b", a, simulator="other-sim", excerpt_seed=5))
    rc = load_run(make_run(tmp_path / "c", a, sim_prompt="sim-v2"))
    c = compare_runs([ra, rb, rc], n_resamples=100)
    text = "\n".join(c.mismatches)
    assert "different simulator" in text
    assert "different simulation prompt version" in text
    assert f"held-out excerpts differ for {N_UNITS} of {N_UNITS}" in text
    assert "MISMATCH" in to_markdown(c)


@pytest.fixture(scope="module")
def cli():
    _register_commands()
    return CliRunner()


def test_cli_refuses_mismatch_unless_allowed(tmp_path, cli):
    a = _scores(1, 0.0)
    ra = make_run(tmp_path / "a", a)
    rb = make_run(tmp_path / "b", a, simulator="other-sim")
    res = cli.invoke(app, ["compare", str(ra), str(rb)])
    assert res.exit_code != 0
    assert "not comparable" in str(res.exception)
    res = cli.invoke(app, ["compare", str(ra), str(rb), "--allow-mismatch"])
    assert res.exit_code == 0, res.output
    assert "WARNING" in res.output and "different simulator" in res.output


@pytest.mark.slow
def test_cli_writes_all_outputs(two_runs, tmp_path, cli):
    ra, rb, _, _ = two_runs
    out = tmp_path / "out"
    out.mkdir()
    res = cli.invoke(
        app,
        [
            "compare",
            str(ra),
            str(rb),
            "--resamples",
            "500",
            "--markdown",
            str(out / "c.md"),
            "--csv",
            str(out / "c.csv"),
            "--html",
            str(out / "c.html"),
            "--plot",
            str(out / "c.png"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert f"Compared {N_UNITS} units" in res.output
    assert "run_b" in res.output
    df = pd.read_csv(out / "c.csv", index_col="run")
    assert list(df.index) == ["run_a", "run_b"]
    assert df.loc["run_b", "mean_score"] > df.loc["run_a", "mean_score"]
    md = (out / "c.md").read_text()
    assert [line.split(" | ")[0] for line in md.splitlines() if line.startswith("| run_")] == [
        "| run_a",
        "| run_b",
    ]
    assert "Mean score by layer" in md
    assert "<table" in (out / "c.html").read_text()
    assert (out / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _with_detection(path, scores, **kw):
    run = make_run(path, scores, **kw.pop("run_kw", {}))
    add_scorer(run, "detection", detection_metrics, primary_metric="balanced_accuracy", **kw)
    return run


def test_compare_any_scorer_by_metric_name(two_runs, tmp_path):
    ra, rb, a, b = two_runs
    for run in (ra, rb):
        add_scorer(run, "detection", detection_metrics, primary_metric="balanced_accuracy")
    runs = [load_run(ra), load_run(rb)]
    units = sorted(a)

    def auc(x):
        return min(1.0, 0.5 + x / 2)

    c = compare_runs(runs, scorer="detection", metric="auc", n_resamples=200)
    assert (c.scorer, c.metric, c.mismatches) == ("detection", "auc", [])
    va = np.array([np.mean([auc(x) for x in a[u]]) for u in units])
    vb = np.array([np.mean([auc(x) for x in b[u]]) for u in units])
    assert c.summary.loc["run_a", "mean_score"] == pytest.approx(va.mean())
    assert c.summary.loc["run_b", "diff_vs_first"] == pytest.approx((vb - va).mean())
    assert "scorer: detection, metric: auc" in to_markdown(c)
    assert "mean auc [95% CI]" in to_markdown(c)
    # Without a metric, the scorer's primary one; without a scorer, simulation.
    c = compare_runs(runs, scorer="detection", n_resamples=200)
    assert c.metric == "balanced_accuracy"
    c = compare_runs(runs, n_resamples=200)
    assert (c.scorer, c.metric) == ("simulation", "score")
    assert c.summary.loc["run_a", "mean_score"] == pytest.approx(
        np.mean([np.mean(a[u]) for u in units])
    )
    with pytest.raises(DataError, match=r"no metric 'nope'.*auc, balanced_accuracy"):
        compare_runs(runs, scorer="detection", metric="nope")
    with pytest.raises(DataError, match="no scores by scorer 'fuzzing'"):
        compare_runs(runs, scorer="fuzzing")


def test_a_new_scorers_settings_are_checked(tmp_path):
    a = _scores(1, 0.0)
    ra = load_run(_with_detection(tmp_path / "a", a))
    rb = load_run(_with_detection(tmp_path / "b", a, model="other-judge"))
    rc = load_run(_with_detection(tmp_path / "c", a, run_kw={"excerpt_seed": 5}))
    c = compare_runs([ra, rb, rc], scorer="detection", metric="auc", n_resamples=100)
    text = "\n".join(c.mismatches)
    assert "different detection model: a=['judge-llm'], b=['other-judge']" in text
    assert f"held-out excerpts differ for {N_UNITS} of {N_UNITS}" in text
    # The simulation scores of a and b match: only the detection model differs.
    assert compare_runs([ra, rb], n_resamples=100).mismatches == []


def test_a_run_mixing_settings_is_reported(tmp_path):
    a = _scores(1, 0.0)
    ra = make_run(tmp_path / "a", a)
    # Re-score half of the explanations with another simulator prompt.
    lines = (ra / "scores.jsonl").read_text().splitlines()
    (ra / "scores.jsonl").write_text(
        "\n".join(
            line.replace('"sim-v1"', '"sim-v2"') if i % 2 else line for i, line in enumerate(lines)
        )
        + "\n"
    )
    c = compare_runs([load_run(ra)], n_resamples=100)
    assert c.mismatches == ["a mixes several simulation prompt versions: ['sim-v1', 'sim-v2']"]


@pytest.mark.slow
def test_v1_scores_compare_identically(two_runs, tmp_path):
    ra, rb, _, _ = two_runs
    old = tmp_path / "old" / "run_a"
    shutil.copytree(ra, old)
    downgrade_scores_to_v1(old)
    assert load_run(old).scores[0].heldout_hash is None
    new = compare_runs([load_run(ra), load_run(rb)], n_resamples=300)
    c = compare_runs([load_run(old), load_run(rb)], n_resamples=300)
    pd.testing.assert_frame_equal(c.summary, new.summary)
    # The held-out excerpts of the 0.1 run are checked from its simulations.jsonl...
    assert c.mismatches == [] and c.notes == []
    moved = compare_runs(
        [load_run(old), load_run(make_run(tmp_path / "moved", _scores(1, 0.0), excerpt_seed=3))],
        n_resamples=100,
    )
    assert any("held-out excerpts differ" in m for m in moved.mismatches)
    # ...and without them there is nothing to check them with: a note says so.
    (old / "simulations.jsonl").unlink()
    c = compare_runs([load_run(old), load_run(rb)], n_resamples=300)
    assert c.mismatches == []
    assert c.notes == [
        "cannot check held-out excerpts (no heldout_hash in scores.jsonl and no "
        "simulations.jsonl) for: run_a"
    ]


def test_cli_compares_a_new_scorer(two_runs, tmp_path):
    ra, rb, _, _ = two_runs
    for run in (ra, rb):
        add_scorer(run, "detection", detection_metrics, primary_metric="balanced_accuracy")
    out = tmp_path / "c.csv"
    md = tmp_path / "c.md"
    args = ["--scorer", "detection", "--metric", "auc", "--resamples", "200"]
    run_cli("compare", str(ra), str(rb), *args, "--csv", str(out), "--markdown", str(md))
    df = pd.read_csv(out, index_col="run")
    assert list(df["scorer"]) == ["detection"] * 2 and list(df["metric"]) == ["auc"] * 2
    expected = compare_runs(
        [load_run(ra), load_run(rb)], scorer="detection", metric="auc", n_resamples=200
    )
    assert df["mean_score"].tolist() == pytest.approx(expected.summary["mean_score"].tolist())
    assert "## Mean auc by layer (detection)" in md.read_text()
    with pytest.raises(DataError):
        compare_runs([load_run(ra)], scorer="detection", metric="nope")
