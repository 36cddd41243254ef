"""`neuroscribe study scorers`: agreement with simulation, cost per unit, ground truth."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from neuroscribe.groundtruth.scorers import check_scorer_units, suite_task_parts
from neuroscribe.groundtruth.suite import load_suite, select
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.rundir import RunDir
from neuroscribe.schema import Score, UsageRecord
from neuroscribe.scorer.detection import DetectionScorer
from neuroscribe.study import rank_agreement, study_scorers, write_report


def test_rank_agreement_matches_hand_computations():
    # d = (0, 1, 1, 0): rho = 1 - 6·2 / (4·15) = 0.8; 5 concordant, 1 discordant pair:
    # tau = (5 - 1) / 6.
    out = rank_agreement([1, 2, 3, 4], [1, 3, 2, 4], n_boot=200)
    assert out["spearman"] == pytest.approx(0.8) and out["kendall"] == pytest.approx(4 / 6)
    lo, hi = out["spearman_interval"]
    assert -1 <= lo <= 0.8 <= hi <= 1
    perfect = rank_agreement(range(10), [x**3 for x in range(10)], n_boot=200)
    assert perfect["spearman"] == pytest.approx(1.0)
    assert perfect["spearman_interval"] == pytest.approx((1.0, 1.0))
    assert rank_agreement([1, 2, 3], [5, 5, 5])["spearman"] is None  # nothing to rank
    assert rank_agreement([1, 2], [1, 2])["kendall"] is None  # too few pairs
    with pytest.raises(ValueError):
        rank_agreement([1, 2, 3], [1, 2])


def score_line(i: int, scorer: str, value: float | None, metric: str) -> Score:
    return Score(
        explanation_id=f"e{i}", unit_id=f"m/0/{i // 2}", explanation=f"text {i}",
        explainer="x", scorer=scorer, scorer_model="hf:model", config_hash=scorer,
        metrics={metric: value}, primary_metric=metric,
    )  # fmt: skip


def study_run(tmp_path) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    sim = [0.1, 0.5, 0.3, 0.9, -0.2, 0.7, 0.4, 0.0]
    det = [0.5, 0.7, 0.6, 0.9, 0.4, 0.8, 0.65, 0.45]  # the same order as sim
    emb = [0.9, 0.1, 0.5, 0.2, 0.8, 0.3, None, 0.6]  # reversed, one undefined
    lines = [score_line(i, "simulation", v, "score") for i, v in enumerate(sim)]
    lines += [score_line(i, "detection", v, "balanced_accuracy") for i, v in enumerate(det)]
    lines += [score_line(i, "embedding", v, "auc") for i, v in enumerate(emb)]
    append_jsonl(run.path("scores"), lines)
    usage = []
    for unit in range(4):  # simulation 1,000 prompt tokens a unit, detection 100
        usage += [UsageRecord(stage="simulate", model="m", unit_id=f"m/0/{unit}",
                              prompt_tokens=500, completion_tokens=0, cost_usd=0.0)] * 2  # fmt: skip
        usage.append(UsageRecord(stage="score-detection", model="m", unit_id=f"m/0/{unit}",
                                 prompt_tokens=100, completion_tokens=10, cost_usd=0.0))  # fmt: skip
    append_jsonl(run.path("usage"), usage)
    return run


def test_study_pairs_each_scorer_with_simulation_and_counts_its_cost(tmp_path):
    run = study_run(tmp_path)
    study = study_scorers(run.load(), n_boot=200)
    rows = {r.scorer: r for r in study.rows}
    assert study.n_units == 4 and set(rows) == {"simulation", "detection", "embedding"}
    assert rows["detection"].spearman == pytest.approx(1.0)
    assert rows["detection"].n_paired == 8
    assert rows["embedding"].n_paired == 7  # its undefined metric is left out, not zero
    assert rows["embedding"].spearman < -0.7
    assert rows["simulation"].prompt_tokens_per_unit == 1000
    assert rows["detection"].prompt_tokens_per_unit == 100
    assert rows["detection"].tokens_vs_reference == pytest.approx(0.1)
    assert rows["embedding"].tokens_vs_reference == 0.0  # no model calls at all
    assert rows["detection"].cost_per_unit_usd == 0.0


def test_study_needs_the_reference_scores(tmp_path):
    from neuroscribe.errors import DataError

    run = RunDir(tmp_path / "run")
    run.root.mkdir()
    append_jsonl(run.path("scores"), [score_line(0, "detection", 0.5, "balanced_accuracy")])
    with pytest.raises(DataError, match="no simulation scores"):
        study_scorers(run.load())


@pytest.mark.slow  # seconds of real waiting: runs in CI's full suite
def test_the_study_command_writes_markdown_html_plot_and_json(tmp_path):
    from _cli import run_cli

    run = study_run(tmp_path)
    out = run_cli("study", "scorers", str(run.root), columns=60)
    assert out.returncode == 0
    for suffix in (".md", ".html", ".png", ".json"):
        assert (run.root / f"scorer-study{suffix}").exists(), suffix
    md = (run.root / "scorer-study.md").read_text()
    assert "| detection | balanced_accuracy | 8 | +1.00" in md
    page = (run.root / "scorer-study.html").read_text()
    assert "Content-Security-Policy" in page and "data:image/png;base64," in page
    data = json.loads((run.root / "scorer-study.json").read_text())
    assert data["reference"] == "simulation" and len(data["rows"]) == 3
    report = write_report(run.load(), study_scorers(run.load(), n_boot=50), tmp_path / "r" / "x")
    assert {p.suffix for p in report} == {".md", ".html", ".png", ".json"}


# ---------------------------------------------------------------- ground truth per scorer


def test_suite_units_become_tasks_whose_train_excerpts_no_scorer_sees():
    unit = select(load_suite(), "test")[0]
    record, splits = suite_task_parts(unit)
    assert len(splits.train) == len(unit.explain_excerpts)
    assert len(splits.test) == len(unit.score_excerpts) and not splits.calibration
    assert {x.kind for x in splits.test} == {"top", "random"}
    # Excerpt ids point at the record's own lists, as a run's do.
    for x in splits.train + splits.test:
        kind, i = x.excerpt_id.split(":")
        pool = record.most_positive_activation_records if kind == "top" else record.random_sample
        assert pool[int(i)] is x.record or pool[int(i)] == x.record


def test_a_judge_that_knows_the_rule_ranks_the_truth_first_and_never_sees_train_text():
    units = select(load_suite(), "test")[:2]
    held = {t for u in units for e in u.score_excerpts for t in e.tokens}
    train_only = {t for u in units for e in u.explain_excerpts for t in e.tokens} - held

    def judge(request, **params) -> str:
        # Says "yes" to an excerpt when the true explanation is asked about and the
        # excerpt holds a token that fires under the rule; "no" otherwise.
        text = request[-1]["content"]
        lines = re.findall(r"^(\d+)[.:)]?\s+(.*)$", text.split("Excerpts", 1)[-1], re.M)
        truth = any(u.explanation in text for u in units)
        hot = {t.strip() for u in units for e in u.score_excerpts
               for t, a in zip(e.tokens, e.activations, strict=True) if a > 0}  # fmt: skip
        return "\n".join(
            f"{k} {'yes' if truth and any(h and h in t for h in hot) else 'no'}" for k, t in lines
        )

    llm = FakeLLM("fake:judge", answers=judge)
    scorer = DetectionScorer(llm, spec=llm.spec, window=None)
    summary, checked = asyncio.run(check_scorer_units(units, scorer))
    assert summary.n_units == 2 and len(checked) == 2
    assert all(c.candidates[0].score is not None for c in checked)
    # The excerpt lines of every prompt (the explanation's own words may name anything).
    shown = " ".join(
        line for c in llm.calls for line in c.messages[-1]["content"].splitlines()
        if re.match(r"^\d+[.:)]?\s", line)
    )  # fmt: skip
    assert shown
    leaked = {t for t in train_only if len(t.strip()) > 3 and t in shown}
    assert not leaked, leaked


def test_beats_random_pairs_each_unit_explanations_with_its_random_baseline(tmp_path):
    from neuroscribe.schema import Explanation
    from neuroscribe.study import beats_random

    run = study_run(tmp_path)
    # Units m/0/0..3 hold explanations e(2u) and e(2u+1); the second of each is random.
    append_jsonl(run.path("explanations"), [
        Explanation(explanation_id=f"e{i}", unit_id=f"m/0/{i // 2}", sample_index=0,
                    text=f"text {i}", explainer="random" if i % 2 else "token-lookup",
                    prompt_version="v", config_hash=f"h{i % 2}", train_excerpts=[])
        for i in range(8)
    ])  # fmt: skip
    loaded = run.load()
    # simulation: 0.1<0.5 lose, 0.3<0.9 lose, -0.2<0.7 lose, 0.4>0.0 win → 1 of 4.
    values = {s.explanation_id: s.metrics["score"] for s in loaded.latest_scores("simulation")}
    assert beats_random(loaded, values) == (0.25, 4)
    rows = {r.scorer: r for r in study_scorers(loaded, n_boot=50).rows}
    assert rows["simulation"].beats_random == 0.25 and rows["simulation"].n_beats_random == 4
    assert rows["embedding"].n_beats_random == 3  # e6 has no embedding value: left out
    assert beats_random(loaded, {}) == (None, 0)


def test_cost_per_unit_is_zero_for_in_process_models_and_unknown_for_unpriced_apis(tmp_path):
    from neuroscribe.study import usage_per_unit

    run = study_run(tmp_path)
    append_jsonl(run.path("usage"), [
        UsageRecord(stage="score-intruder", model="hf:embedded", unit_id="m/0/0",
                    prompt_tokens=40, cost_usd=None),
        UsageRecord(stage="score-fuzzing", model="some-api-model", unit_id="m/0/0",
                    prompt_tokens=40, cost_usd=None),
    ])  # fmt: skip
    loaded = run.load()
    assert usage_per_unit(loaded, "score-intruder") == (40.0, 0.0, 0.0)
    assert usage_per_unit(loaded, "score-fuzzing") == (40.0, 0.0, None)
    assert usage_per_unit(loaded, "score-nothing") == (None, None, None)
