"""Run directories written by neuroscribe 0.1 still load, and resume where they can."""

from __future__ import annotations

import json

from neuroscribe.jsonl import append_jsonl
from neuroscribe.rundir import RunDir
from neuroscribe.schema import Failure, Score
from neuroscribe.scorer.simulation import SimulationScorer
from neuroscribe.splits import SplitConfig
from neuroscribe.stages.base import config_hash
from neuroscribe.stages.score import ScoreStage
from test_stages import record

V1_SCORE = {
    "schema_version": 1,
    "explanation_id": "e1",
    "unit_id": "m/0/0",
    "explanation": "the word cat",
    "explainer": "gpt-4o-mini",
    "simulator": "gpt-4o",
    "strategy": "chat-logprobs",
    "prompt_version": "simulate-v1",
    "config_hash": "abc",
    "score": 0.42,
    "top_score": 0.5,
    "random_score": -0.1,
    "ci_low": 0.1,
    "ci_high": 0.7,
    "r2": 0.2,
    "abs_dev_score": None,
    "calibration_slope": 1.5,
    "calibration_intercept": 0.0,
    "n_excerpts": 10,
    "n_tokens": 640,
    "flags": ["missing_predictions:3"],
    "created_at": "2026-11-01T00:00:00+00:00",
}


def test_a_v1_score_line_becomes_a_generic_simulation_score():
    s = Score.model_validate(V1_SCORE)
    assert s.schema_version == 2 and s.scorer == "simulation" and s.scorer_model == "gpt-4o"
    assert s.metrics == {
        "score": 0.42,
        "top_score": 0.5,
        "random_score": -0.1,
        "r2": 0.2,
        "abs_dev_score": None,
    }
    assert s.score == 0.42 and (s.ci_low, s.ci_high) == (0.1, 0.7)
    assert s.comparable == {
        "scorer": "simulation",
        "simulator": "gpt-4o",
        "strategy": "chat-logprobs",
        "prompt_version": "simulate-v1",
    }
    assert s.details["calibration_slope"] == 1.5 and s.flags == ["missing_predictions:3"]
    # Written back, it is a v2 line that reads the same.
    again = Score.model_validate_json(s.model_dump_json())
    assert again == s


def test_v1_failures_get_their_sample_from_the_key_and_resolve_by_fields(tmp_path):
    run = RunDir(tmp_path)
    lines = [
        {"stage": "explain", "unit_id": "u", "key": "explain|u|h|sample1", "reason": "x",
         "config_hash": "h", "schema_version": 1},
        {"stage": "explain", "unit_id": "v", "key": "explain|v|h", "reason": "y",
         "config_hash": "h", "schema_version": 1},
    ]  # fmt: skip
    run.path("failures").write_text("".join(json.dumps(x) + "\n" for x in lines))
    fails = run.failures()
    assert [f.sample_index for f in fails] == [1, None]
    assert [f.key for f in fails] == ["explain|u|h|sample1", "explain|v|h"]  # kept as written
    assert len(run.open_failures()) == 2
    explanation = {
        "explanation_id": "x1", "unit_id": "u", "sample_index": 1, "text": "t",
        "explainer": "m", "prompt_version": "explain-v1", "config_hash": "h",
        "train_excerpts": [],
    }  # fmt: skip
    run.path("explanations").write_text(json.dumps(explanation) + "\n")
    assert [f.unit_id for f in run.open_failures()] == ["v"]
    assert Failure.model_validate(lines[0]).item_key.sample_index == 1


def test_the_simulation_key_space_is_the_one_0_1_used(tmp_path):
    """0.1's simulate stage hashed exactly these keys; a resumed 0.1 run reuses them."""
    splits = SplitConfig()
    scorer = SimulationScorer(None, spec="gpt-4o", strategy="json", scale_max=10, n_examples=2)
    old = {
        "simulator": "gpt-4o",
        "strategy": "json",
        "prompt_version": "simulate-v1",
        "scale_max": 10,
        "n_examples": 2,
        # 0.1's split settings, as it dumped them (validation came later, unhashed).
        "splits": {
            "n_train": 5, "n_test_top": 5, "n_test_random": 5,
            "n_calibration_top": 2, "n_calibration_random": 2,
        },
    }  # fmt: skip
    assert ScoreStage(scorer, [record(0)], splits).config_hash == config_hash(old)


def test_a_v1_run_directory_loads(tmp_path):
    run = RunDir(tmp_path)
    run.records_dir.mkdir()
    append_jsonl(run.records_dir / "r.jsonl", [record(0)])
    run.path("scores").write_text(json.dumps(V1_SCORE) + "\n")
    loaded = run.load()
    assert loaded.scorers() == ["simulation"]
    assert [s.score for s in loaded.latest_scores("simulation")] == [0.42]
