"""The explainer leaderboard: rows per explain configuration, baselines, paired statistics,
tokens and cost per unit, refusals, the report files, the CLI and the grid run."""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from _cli import run_cli
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.leaderboard import build_leaderboard, to_html, to_markdown, write_report
from neuroscribe.leaderboard_run import Grid, grid_cells, run_grid
from neuroscribe.llm import make_llm
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord, Score, Usage

COMPARABLE = {
    "scorer": "simulation",
    "simulator": "sim-x",
    "strategy": "json",
    "prompt_version": "simulate-v1",
}
HOSTILE = "<script>alert(1)</script>"

ROWS_EMBEDDED = "token-rows · explain-v1 · hf:embedded"
SUMMARY_API = "token-rows · explain-summary-v1 · gpt-4o-mini"
BEST_OF_K = "best-of-k · explain-v1 · hf:embedded"


@dataclass
class Cfg:
    """One explain configuration written into the test run."""

    config_hash: str
    explainer: str
    prompt_version: str
    method: str | None
    shift: float  # added to every unit's base score
    n: int = 1  # explanations per unit (one call: usage booked on the first)
    usage: Usage = field(default_factory=Usage)
    selection: Usage | None = None
    skip: tuple[str, ...] = ()  # units without a score
    comparable: dict | None = None
    text: str = "words about {unit}"


def unit_ids(n: int) -> list[str]:
    return [f"tiny/0/{i}" for i in range(n)]


def write_run(root: Path, cfgs: list[Cfg], n_units: int = 12) -> tuple[RunDir, dict]:
    """A run with these configurations' explanations and simulation scores.

    Returns the run and, per configuration hash, unit → the mean of its scores."""
    run = RunDir(root)
    run.records_dir.mkdir(parents=True)
    rec = ActivationRecord(tokens=[" a", " b"], activations=[0.0, 1.0])
    append_jsonl(
        run.records_dir / "r.jsonl",
        [
            NeuronRecord(unit_id=u, most_positive_activation_records=[rec], random_sample=[rec])
            for u in unit_ids(n_units)
        ],
    )
    rng = np.random.default_rng(0)
    base = {u: float(rng.uniform(0.0, 0.5)) for u in unit_ids(n_units)}
    expl, scores, truth = [], [], {}
    for c in cfgs:
        truth[c.config_hash] = {}
        for u in unit_ids(n_units):
            values = []
            for k in range(c.n):
                eid = f"{c.config_hash}-{u}-{k}"
                text = c.text.format(unit=u)
                expl.append(
                    Explanation(
                        explanation_id=eid,
                        unit_id=u,
                        sample_index=k,
                        text=text,
                        explainer=c.explainer,
                        prompt_version=c.prompt_version,
                        config_hash=c.config_hash,
                        train_excerpts=["top:0"],
                        method=c.method,
                        usage=c.usage if k == 0 else Usage(),
                        selection_usage=c.selection,
                        selection_scorer="simulation (hf:embedded)" if c.selection else None,
                    )
                )
                if u in c.skip:
                    continue
                v = round(base[u] + c.shift + float(rng.normal(0, 0.03)) + 0.02 * k, 4)
                values.append(v)
                scores.append(
                    Score(
                        explanation_id=eid,
                        unit_id=u,
                        explanation=text,
                        explainer=c.explainer,
                        scorer="simulation",
                        scorer_model="sim-x",
                        config_hash="score-hash",
                        metrics={"score": v},
                        heldout_hash=f"held-{u}",
                        comparable=c.comparable or COMPARABLE,
                    )
                )
            if values:
                truth[c.config_hash][u] = float(np.mean(values))
    run.append("explanations", expl)
    run.append("scores", scores)
    return run, truth


def standard(**over) -> list[Cfg]:
    cfgs = {
        "a": Cfg(
            "aaaa1111", "hf:embedded", "explain-v1", "token-rows", 0.0, n=2,
            usage=Usage(prompt_tokens=100, completion_tokens=10, requests=1),
        ),
        "b": Cfg(
            "bbbb2222", "gpt-4o-mini", "explain-summary-v1", "token-rows", 0.2,
            usage=Usage(prompt_tokens=50, completion_tokens=5, requests=1, cost_usd=0.001),
        ),
        "k": Cfg(
            "kkkk3333", "hf:embedded", "explain-v1", "best-of-k", 0.1,
            usage=Usage(prompt_tokens=100, completion_tokens=40, requests=1),
            selection=Usage(prompt_tokens=380, completion_tokens=20, requests=4),
        ),
        # Baselines written as a run before 0.3 did: no method, the name as the explainer.
        "lookup": Cfg("llll4444", "token-lookup", "baseline-token-lookup-v1", None, -0.1),
        "random": Cfg("rrrr5555", "random", "baseline-random-v1", "random", -0.4, n=2),
    }  # fmt: skip
    for key, changes in over.items():
        for name, value in changes.items():
            setattr(cfgs[key], name, value)
    return list(cfgs.values())


@pytest.fixture()
def run(tmp_path):
    return write_run(tmp_path / "run", standard())


# ------------------------------------------------------------------ the table


def test_one_row_per_configuration_with_labels_and_the_baselines(run):
    rundir, truth = run
    board = build_leaderboard(rundir.root, n_resamples=2000)
    labels = [r.label for r in board.rows]
    assert set(labels) == {ROWS_EMBEDDED, SUMMARY_API, BEST_OF_K, "token-lookup", "random"}
    assert {r.label for r in board.rows if r.baseline} == {"token-lookup", "random"}
    # Ranked by mean score, the floor last.
    assert labels[0] == SUMMARY_API and labels[-1] == "random"
    assert [r.mean for r in board.rows] == sorted((r.mean for r in board.rows), reverse=True)
    assert board.scorer == "simulation" and board.metric == "score"
    assert board.n_units == 12 and board.n_dropped == 0
    # Per unit: the mean over the row's explanations (two for ROWS_EMBEDDED).
    a = board.row(ROWS_EMBEDDED)
    expected = np.array([truth["aaaa1111"][u] for u in sorted(truth["aaaa1111"])])
    assert a.mean == pytest.approx(expected.mean())
    assert a.ci_low < a.mean < a.ci_high
    assert a.explanations == 24


def test_paired_difference_against_the_first_explainer_by_default(run):
    rundir, truth = run
    board = build_leaderboard(rundir.root, n_resamples=2000)
    # The first configuration in the run that is not a baseline.
    assert board.against == ROWS_EMBEDDED and board.row(ROWS_EMBEDDED).reference
    units = sorted(truth["aaaa1111"])
    ref = np.array([truth["aaaa1111"][u] for u in units])
    better = np.array([truth["bbbb2222"][u] for u in units])
    b = board.row(SUMMARY_API)
    assert b.diff == pytest.approx((better - ref).mean())
    assert b.diff > 0 and b.diff_ci_low > 0 and b.diff_ci_high > b.diff
    assert b.wilcoxon_p == pytest.approx(stats.wilcoxon(better, ref).pvalue)
    assert b.win_rate == 1.0
    floor = board.row("random")
    assert floor.diff < 0 and floor.diff_ci_high < 0 and floor.win_rate == 0.0
    assert board.row(ROWS_EMBEDDED).diff is None


def test_against_names_a_row_by_label_text_or_hash(run):
    rundir, _ = run
    board = build_leaderboard(rundir.root, against="summary", n_resamples=500)
    assert board.against == SUMMARY_API
    assert board.row(ROWS_EMBEDDED).diff < 0 and board.row(SUMMARY_API).reference
    assert build_leaderboard(rundir.root, against="rrrr55", n_resamples=500).against == "random"
    with pytest.raises(ConfigError, match="matches several rows"):
        build_leaderboard(rundir.root, against="hf:embedded")
    with pytest.raises(ConfigError, match=r"matches no row.*token-lookup"):
        build_leaderboard(rundir.root, against="gpt-5")


def test_tokens_selection_tokens_and_cost_per_unit(run):
    rundir, _ = run
    board = build_leaderboard(rundir.root, n_resamples=500)
    a = board.row(ROWS_EMBEDDED)
    # One call per unit wrote both explanations: its usage is counted once.
    assert a.tokens_per_unit == 110 and a.prompt_tokens_per_unit == 100
    assert a.free and a.cost_per_unit_usd == 0 and a.score_per_usd is None  # a local model
    b = board.row(SUMMARY_API)
    assert b.tokens_per_unit == 55 and not b.free
    assert b.cost_per_unit_usd == pytest.approx(0.001)
    assert b.score_per_usd == pytest.approx(b.mean / 0.001)
    k = board.row(BEST_OF_K)
    assert k.tokens_per_unit == 140 and k.selection_tokens_per_unit == 400 and k.free
    assert a.selection_tokens_per_unit is None
    for name in ("token-lookup", "random"):
        row = board.row(name)
        assert row.tokens_per_unit == 0 and row.free and row.method == name
    md = to_markdown([board])
    assert "free" in md and "$0.001" in md and "400" in md


def test_an_api_model_without_a_price_has_an_unknown_cost(tmp_path):
    rundir, _ = write_run(tmp_path / "run", standard(b={"usage": Usage(prompt_tokens=9)}))
    b = build_leaderboard(rundir.root, n_resamples=200).row(SUMMARY_API)
    assert b.cost_per_unit_usd is None and not b.free and b.score_per_usd is None


def test_units_not_scored_by_every_row_are_dropped_and_reported(tmp_path):
    skip = ("tiny/0/3", "tiny/0/7")
    rundir, _ = write_run(tmp_path / "run", standard(b={"skip": skip}, random={"skip": skip[:1]}))
    board = build_leaderboard(rundir.root, n_resamples=500)
    assert board.n_units == 10 and board.n_dropped == 2 and board.n_units_any == 12
    assert board.missing == {SUMMARY_API: 2, "random": 1}
    assert all(r.units == 10 for r in board.rows)
    assert board.row(SUMMARY_API).units_scored == 10
    assert set(board.unit_scores[ROWS_EMBEDDED]) == {u for u in unit_ids(12) if u not in skip}
    md = to_markdown([board])
    assert "Dropped 2 of 12 units" in md and f"{SUMMARY_API} lacks 2" in md


def test_scores_made_with_other_settings_are_refused(tmp_path):
    other = {**COMPARABLE, "simulator": "another-sim"}
    rundir, _ = write_run(tmp_path / "run", standard(random={"comparable": other}))
    with pytest.raises(DataError, match=r"not comparable.*another-sim"):
        build_leaderboard(rundir.root)
    board = build_leaderboard(rundir.root, allow_mismatch=True, n_resamples=200)
    assert board.mismatches and "MISMATCH" in to_markdown([board])


def test_nothing_to_pair_or_no_such_scorer_is_a_clear_error(tmp_path):
    rundir, _ = write_run(tmp_path / "run", standard(b={"skip": tuple(unit_ids(12))[:6]},
                                                     a={"skip": tuple(unit_ids(12))[6:]}))  # fmt: skip
    with pytest.raises(DataError, match="no unit has a simulation value from every row"):
        build_leaderboard(rundir.root)
    with pytest.raises(DataError, match="no scores by scorer 'detection'"):
        build_leaderboard(rundir.root, "detection")


def test_a_run_without_baselines_says_how_to_add_them(tmp_path):
    rundir, _ = write_run(tmp_path / "run", standard()[:2])
    board = build_leaderboard(rundir.root, n_resamples=200)
    assert any("no baseline rows" in n for n in board.notes)


def test_html_and_markdown_escape_hostile_labels_and_explanations(tmp_path):
    cfgs = standard(
        b={"explainer": f"evil{HOSTILE}", "text": f"{HOSTILE} and | pipes"},
    )
    rundir, _ = write_run(tmp_path / "run", cfgs)
    board = build_leaderboard(rundir.root, n_resamples=200)
    assert any(HOSTILE in r.label for r in board.rows)
    page = to_html([board])
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = to_markdown([board])
    assert "<script>" not in md and "&lt;script&gt;" in md and "and \\| pipes" in md


def test_the_report_files(run, tmp_path):
    rundir, _ = run
    board = build_leaderboard(rundir.root, n_resamples=200)
    paths = write_report([board], tmp_path / "out")
    names = sorted(p.name for p in paths)
    assert names == ["leaderboard.csv", "leaderboard.html", "leaderboard.md", "leaderboard.png"]
    out = tmp_path / "out"
    assert (out / "leaderboard.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "leaderboard.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["label"] for r in rows} >= {"random", "token-lookup", SUMMARY_API}
    assert {r["scorer"] for r in rows} == {"simulation"}
    assert "data:image/png;base64," in (out / "leaderboard.html").read_text()
    assert SUMMARY_API in (out / "leaderboard.md").read_text()


# ------------------------------------------------------------------ the command


def test_cli_ranks_what_the_run_holds_with_no_run(run, tmp_path):
    rundir, _ = run
    out = tmp_path / "report"
    r = run_cli(
        "leaderboard", str(rundir.root), "--no-run", "--out", str(out), "--resamples", "300"
    )
    for label in (ROWS_EMBEDDED, SUMMARY_API, BEST_OF_K, "token-lookup", "random"):
        assert f"| {label} |" in r.stdout
    assert "# Explainer leaderboard" in r.stdout and "12 units" in r.stdout
    assert "reference" in r.stdout
    for suffix in ("md", "html", "csv", "png"):
        assert (out / f"leaderboard.{suffix}").is_file()
        assert str(out / f"leaderboard.{suffix}") in r.stdout
    bad = run_cli("leaderboard", str(rundir.root), "--no-run", "--against", "nope", check=False)
    assert bad.returncode == 1 and "--against 'nope' matches no row" in bad.stderr


def test_cli_refuses_incomparable_scores(tmp_path):
    other = {**COMPARABLE, "strategy": "exact"}
    rundir, _ = write_run(tmp_path / "run", standard(k={"comparable": other}))
    bad = run_cli("leaderboard", str(rundir.root), "--no-run", check=False)
    assert bad.returncode == 1 and "not comparable" in bad.stderr
    ok = run_cli("leaderboard", str(rundir.root), "--no-run", "--allow-mismatch")
    assert "MISMATCH" in ok.stdout


# ------------------------------------------------------------------ the grid


def test_grid_parsing_and_cells(tmp_path):
    default = Grid()
    assert (default.explainers, default.prompts, default.methods) == (
        ["hf:embedded"], ["explain-v1"], ["token-rows"],
    )  # fmt: skip
    assert default.baselines == ["token-lookup", "random"]
    grid = Grid.parse("fake:a, fake:b", "rows,summary", "token-rows,random", "token-lookup")
    assert grid.prompts == ["explain-v1", "explain-summary-v1"]
    assert grid.methods == ["token-rows"] and grid.baselines == ["token-lookup", "random"]
    cells = grid_cells(RunConfig(run_dir=tmp_path), grid)
    assert len(cells) == 2 * 2 + 2
    assert cells[1].label == "token-rows · explain-summary-v1 · fake:a"
    assert [c.label for c in cells[-2:]] == ["token-lookup", "random"]
    assert cells[0].config.explain.settings.prompt == "explain-v1"
    assert cells[1].config.explain.model == "fake:a"
    for flag, args in (
        ("--explainer-method", {"methods": "poetry"}),
        ("--explain-prompt", {"prompts": "sonnet"}),
        ("--baselines", {"baselines": "token-rows"}),
    ):
        with pytest.raises(ConfigError, match=flag):
            Grid.parse(**args)
    with pytest.raises(ConfigError, match="empty"):
        Grid.parse(methods="", baselines="")


def _answers(request, **params):
    """The explainer names the unit's word (see test_stages); the JSON simulator predicts
    a high value exactly for the tokens the explanation names."""
    import json
    import re

    from test_stages import _text, answers

    if not params.get("response_format"):
        return answers(request, **params)
    text = _text(request)
    named = set(re.findall(r"\w+", text.split("Explanation: ", 1)[1].split("\n", 1)[0]))
    rows = text.rsplit("<start>\n", 1)[-1].split("\n<end>")[0].split("\n")
    return json.dumps({"activations": [5 if r.split()[0] in named else 0 for r in rows]})


@pytest.mark.slow
def test_the_grid_explains_every_cell_scores_everything_and_resumes(tmp_path, monkeypatch, caplog):
    from test_stages import SPLITS, make_run

    made = []

    def fake_model(spec, config, timeout):
        made.append(spec)
        return make_llm(spec, answers=_answers, capabilities=Capabilities(json_object=True))

    monkeypatch.setattr(api, "make_model", fake_model)
    run = make_run(tmp_path, 4)
    config = RunConfig.build(
        run_dir=run.root,
        splits=SPLITS.model_dump(),
        explain={"settings": {"temperature": 0.0, "max_tokens": 16, "n_examples": 0}},
        score={"model": "fake:sim", "strategy": "json", "n_examples": 0},
        jobs={"show_progress": False},
    )
    grid = Grid.parse("fake:a,fake:b", "rows,summary")
    seen = []
    hooks = api.Hooks(stage=seen.append)
    with caplog.at_level(logging.WARNING):
        result = run_grid(config, grid, api.parse_scorers("simulation"), hooks)
    # Every cell is a new key space on purpose: no "configuration differs" warnings.
    assert len(seen) == 7 and not any(s.warnings for s in seen)
    assert "differs from the last explain run" not in caplog.text
    hashes = result.config_hashes
    assert len(hashes) == len(set(hashes)) == 6
    # Unit m/0/1 gets no usable LLM explanation (see test_stages): 3 units for LLM cells.
    assert [s.done for s in result.explained] == [3, 3, 3, 3, 4, 4]
    assert {e.config_hash for e in run.explanations()} == set(hashes)
    assert {s.explanation_id for s in run.scores()} == {
        e.explanation_id for e in run.explanations()
    }
    calls = len(made)
    again = run_grid(config, grid, api.parse_scorers("simulation"))
    assert all(s.done == 0 for s in again.explained + again.scored)
    assert len(made) - calls == 7  # models opened, nothing asked: every item was skipped

    board = build_leaderboard(run.root, n_resamples=200)
    assert {r.label for r in board.rows} == {c.label for c in result.cells}
    assert board.against == "token-rows · explain-v1 · fake:a"
    # m/0/1 has baseline explanations only: dropped from the pairing, and said so.
    assert board.n_units == 3 and board.n_dropped == 1
    assert board.missing == {c.label: 1 for c in result.cells if not c.baseline}
    # The fake simulator is perfect for "the word wN": explainers beat the random floor.
    assert board.row("random").mean < board.row("token-rows · explain-v1 · fake:a").mean


@pytest.mark.slow
def test_best_of_k_in_the_grid_books_its_selection_tokens(tmp_path, monkeypatch):
    from test_explain_methods import _record

    monkeypatch.setattr(
        api,
        "make_model",
        lambda spec, config, timeout: make_llm(
            spec, answers=_answers, capabilities=Capabilities(json_object=True)
        ),
    )
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [_record(i) for i in range(4)])
    splits = {"n_train": 1, "n_test_top": 1, "n_test_random": 1, "n_calibration_top": 0,
              "n_calibration_random": 0, "n_validation_top": 2, "n_validation_random": 1}  # fmt: skip
    data = {
        "run_dir": run.root,
        "splits": splits,
        "explain": {"settings": {"temperature": 0.0, "max_tokens": 16, "n_examples": 0},
                    "select": {"k": 2}},
        "score": {"model": "fake:sim", "strategy": "json", "n_examples": 0},
        "jobs": {"show_progress": False},
    }  # fmt: skip
    grid = Grid.parse("fake:a", "rows", "token-rows,best-of-k", "random")
    # Refused before anything runs: best-of-k keeps one explanation per unit.
    many = {**data, "explain": {**data["explain"], "settings": {"n_samples": 2}}}
    with pytest.raises(ConfigError, match="--n-explanations must be 1"):
        run_grid(RunConfig.build(**many), grid, api.parse_scorers("simulation"))
    assert not run.path("explanations").exists()

    run_grid(RunConfig.build(**data), grid, api.parse_scorers("simulation"))
    board = build_leaderboard(run.root, n_resamples=200)
    best = board.row("best-of-k · explain-v1 · fake:a")
    assert best.selection_tokens_per_unit > 0 and best.free
    assert board.row("token-rows · explain-v1 · fake:a").selection_tokens_per_unit is None
    assert board.row("random").mean < best.mean


# ------------------------------------------------------------------ real models


@pytest.mark.slow
def test_leaderboard_end_to_end_on_the_embedded_model(tmp_path):
    """The grid for real: SmolLM2 explains (token-rows) and simulates (exact), beside the
    two baselines, on two tiny units (resuming is tested on the fake model above).
    ~30 s on 2 idle cores, ~50 s on busy ones."""
    from _tiny_jobs import make_run

    run = make_run(tmp_path / "run", 2)
    out = tmp_path / "report"
    r = run_cli(
        "leaderboard", str(run),
        "--scorer", "simulation", "--strategy", "exact", "--sim-examples", "0",
        "--n-train", "1", "--n-test-top", "1", "--n-test-random", "1",
        "--temperature", "0", "--max-tokens", "24", "--quiet", "--out", str(out),
    )  # fmt: skip
    llm_row = "token-rows · explain-v1 · hf:embedded"
    for label in (llm_row, "token-lookup", "random"):
        assert f"| {label} |" in r.stdout
    assert "simulate: 6 done" in r.stderr  # 2 units × 3 rows, one explanation each
    assert r.stdout.startswith("# Explainer leaderboard")  # progress went to stderr
    board = build_leaderboard(run, n_resamples=200)
    assert board.n_units == 2 and board.against == llm_row
    assert board.row(llm_row).tokens_per_unit > 0 and board.row(llm_row).free
    assert (out / "leaderboard.png").is_file()
