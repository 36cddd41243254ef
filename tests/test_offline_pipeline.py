"""The offline main job: record → explain → simulate → score with the embedded SmolLM2."""

from __future__ import annotations

import json

import pytest

from _cli import run_cli as cli
from neuroscribe.jsonl import read_jsonl, read_jsonl_if_exists
from neuroscribe.schema import (
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    UsageRecord,
)

pytestmark = pytest.mark.slow


def test_run_with_no_model_arguments_records_explains_simulates_scores(tmp_path):
    run = tmp_path / "run"
    out = cli(
        "run",
        str(run),
        "--record-layers",
        "3",
        "--record-units",
        "2",
        "--record-tokens",
        "3000",
        "--n-test-top",
        "3",
        "--n-test-random",
        "3",
        "--quiet",
    )
    # Records of real SmolLM2 neurons from the built-in corpus.
    records = [
        r for f in sorted((run / "records").glob("*.jsonl")) for r in read_jsonl(f, NeuronRecord)
    ]
    assert len(records) == 2 and all(r.most_positive_activation_records for r in records)

    explanations = read_jsonl(run / "explanations.jsonl", Explanation)
    failures = read_jsonl_if_exists(run / "failures.jsonl", Failure)
    explained = {e.unit_id for e in explanations}
    assert explained | {f.unit_id for f in failures if f.stage == "explain"} == {
        r.unit_id for r in records
    }
    assert all(e.explainer == "hf:embedded" for e in explanations)

    sims = read_jsonl(run / "simulations.jsonl", SequenceSimulation)
    assert sims and all(s.strategy == "exact" and s.scale_max == 9 for s in sims)
    # The default simulator is the trained one, reading the prompt it was trained on.
    assert {(s.simulator, s.prompt_version) for s in sims} == {
        ("hf:embedded?adapter=simulator", "simulate-tuned-inline-v1")
    }
    for s in sims:
        assert len(s.expected_activations) == len(s.tokens)
        assert all(0 <= v <= 9 for v in s.expected_activations)
        assert s.distributions and all(abs(sum(d) - 1) < 1e-4 for d in s.distributions)
    scores = read_jsonl(run / "scores.jsonl", Score)
    assert {s.explanation_id for s in scores} == {e.explanation_id for e in explanations}
    for s in scores:
        assert -1 <= s.score <= 1 and s.n_excerpts == 6
    usage = read_jsonl(run / "usage.jsonl", UsageRecord)
    assert {u.stage for u in usage} == {"explain", "simulate"}
    manifest = RunManifest.model_validate(json.loads((run / "manifest.json").read_text()))
    assert {"record", "explain", "simulate"} <= set(manifest.stages)
    # The results table names the units and their scores.
    assert "smollm2-135m-instruct" in out.stdout
    for s in scores:
        assert "/".join(s.unit_id.rsplit("/", 2)[1:]) in out.stdout
        assert f"{s.score:+.3f}" in out.stdout
    assert "mean score" in out.stdout
