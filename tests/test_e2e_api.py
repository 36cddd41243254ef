"""End to end against a real OpenAI-compatible server (llama.cpp serving SmolLM2).

explain → simulate with all three API strategies → score, through the real CLI, checking
the files written, not only that nothing crashed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from _cli import run_cli as cli
from neuroscribe.jsonl import read_jsonl, read_jsonl_if_exists
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    UsageRecord,
)

pytestmark = pytest.mark.slow

ANIMALS = {" cat", " dog", " horse"}


def _excerpt(words: list[str], strength: float) -> ActivationRecord:
    return ActivationRecord(
        tokens=words, activations=[strength if w in ANIMALS else 0.0 for w in words]
    )


def write_records(run: Path, n_units: int = 1) -> None:
    top = [
        _excerpt(["The", " cat", " sat", "."], 3.0),
        _excerpt(["A", " dog", " ran", "."], 2.5),
        _excerpt(["My", " horse", " ate", "."], 2.0),
        _excerpt(["One", " cat", " slept", "."], 1.5),
    ]
    rnd = [
        ActivationRecord(tokens=["It", " was", " late", "."], activations=[0.0, 0.0, 0.1, 0.0]),
        ActivationRecord(tokens=["We", " left", " early", "."], activations=[0.0] * 4),
    ]
    (run / "records").mkdir(parents=True)
    with (run / "records" / "layer-00.jsonl").open("w") as f:
        for i in range(n_units):
            rec = NeuronRecord(
                unit_id=f"toy/0/{i}",
                model="toy",
                layer=0,
                index=i,
                most_positive_activation_records=top,
                random_sample=rnd,
            )
            f.write(rec.model_dump_json() + "\n")


SPLITS = ["--n-train", "2", "--n-test-top", "1", "--n-test-random", "1"]


def test_run_all_strategies_against_llama_cpp(llama_server, tmp_path):
    run = tmp_path / "run"
    write_records(run)
    common = [
        "--base-url",
        llama_server.base_url,
        "--concurrency",
        "1",
        "--quiet",
        "--sim-examples",
        "1",
        *SPLITS,
    ]
    out = cli(
        "run",
        str(run),
        "--explainer",
        llama_server.model,
        "--simulator",
        llama_server.model,
        "--strategy",
        "prompt-logprobs",
        "--temperature",
        "0",
        *common,
    )
    assert "explain: 1 done" in out.stdout

    explanations = read_jsonl(run / "explanations.jsonl", Explanation)
    assert len(explanations) == 1
    e = explanations[0]
    assert e.explainer == llama_server.model and e.prompt_version == "explain-v1"
    assert e.text.strip() and not e.text.endswith(".")
    assert e.train_excerpts == ["top:0", "top:3"]

    manifest = RunManifest.model_validate_json((run / "manifest.json").read_text())
    probe = manifest.probes[llama_server.model]
    assert probe["echo_shift"] == 1 and probe["ten_single_token"] is False
    assert manifest.stages["simulate"]["strategy"] == "prompt-logprobs"

    failures = read_jsonl_if_exists(run / "failures.jsonl", Failure)
    sims = read_jsonl_if_exists(run / "simulations.jsonl", SequenceSimulation)
    # The echo path either simulated the explanation or says precisely why not.
    if sims:
        assert {s.excerpt_id for s in sims} == {"top:1", "top:2", "random:0", "random:1"}
        for s in sims:
            assert s.strategy == "prompt-logprobs" and s.scale_max == 9
            assert len(s.expected_activations) == len(s.tokens) == 4
            assert all(0 <= v <= 9 for v in s.expected_activations)
            assert s.distributions and all(abs(sum(d) - 1) < 1e-6 for d in s.distributions)
        scores = read_jsonl(run / "scores.jsonl", Score)
        assert len(scores) == 1 and -1 <= scores[0].score <= 1
        assert scores[0].n_tokens == 4 * sum(s.role == "test" for s in sims)
    else:
        assert failures and all(f.stage == "simulate" and f.reason for f in failures)

    usage = read_jsonl(run / "usage.jsonl", UsageRecord)
    assert {u.stage for u in usage} >= {"explain"}
    assert all(u.prompt_tokens > 0 for u in usage if not u.cached)

    def accounted_for(config_hash: str) -> None:
        sims = read_jsonl_if_exists(run / "simulations.jsonl", SequenceSimulation)
        failed = {f.key: f for f in read_jsonl_if_exists(run / "failures.jsonl", Failure)}
        for e in explanations:
            done = [
                s
                for s in sims
                if (s.explanation_id, s.config_hash) == (e.explanation_id, config_hash)
            ]
            key = f"simulate|{e.explanation_id}|{config_hash}"
            assert done or failed[key].reason, (config_hash, e.explanation_id)

    def simulate_config_hash() -> str:
        manifest = json.loads((run / "manifest.json").read_text())
        return manifest["stages"]["simulate"]["config_hash"]

    accounted_for(simulate_config_hash())
    # The other two strategies on the same explanations, then score.
    for strategy in ("chat-logprobs", "json"):
        cli(
            "simulate", str(run), "--simulator", llama_server.model, "--strategy", strategy, *common
        )
        assert (
            json.loads((run / "manifest.json").read_text())["stages"]["simulate"]["strategy"]
            == strategy
        )
        accounted_for(simulate_config_hash())
    cli("score", str(run))

    sims = read_jsonl(run / "simulations.jsonl", SequenceSimulation)
    scores = read_jsonl_if_exists(run / "scores.jsonl", Score)
    for s in sims:
        assert len(s.expected_activations) == 4 and s.scale_max == 9
        if s.strategy == "json":
            assert s.distributions is None
            assert all(float(v).is_integer() for v in s.expected_activations)
    # One score per (explanation, simulator configuration), never NaN.
    keys = [(s.explanation_id, s.config_hash) for s in scores]
    assert len(keys) == len(set(keys))
    assert {s.strategy for s in scores} == {s.strategy for s in sims}

    # Rerunning skips everything: no new lines anywhere.
    before = {p.name: p.read_text() for p in run.glob("*.jsonl")}
    cli(
        "run",
        str(run),
        "--explainer",
        llama_server.model,
        "--simulator",
        llama_server.model,
        "--strategy",
        "prompt-logprobs",
        "--temperature",
        "0",
        *common,
    )
    after = {p.name: p.read_text() for p in run.glob("*.jsonl")}
    assert after == before


def test_bad_endpoint_and_model_give_clear_errors(llama_server, tmp_path):
    run = tmp_path / "run"
    write_records(run)
    records_before = (run / "records" / "layer-00.jsonl").read_text()
    proc = cli(
        "explain",
        str(run),
        "--explainer",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--timeout",
        "2",
        "--quiet",
        *SPLITS,
        check=False,
    )
    assert proc.returncode == 1
    assert "cannot connect to http://127.0.0.1:9/v1" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = cli(
        "run",
        str(run),
        "--explainer",
        "no-such-model",
        "--simulator",
        "no-such-model",
        "--base-url",
        llama_server.base_url,
        "--quiet",
        *SPLITS,
        check=False,
    )
    assert proc.returncode == 1
    assert "'no-such-model' is not served at" in proc.stderr and "smollm2" in proc.stderr
    assert not (run / "explanations.jsonl").exists()
    assert (run / "records" / "layer-00.jsonl").read_text() == records_before


def test_malformed_records_exit_non_zero_naming_file_and_line(tmp_path):
    run = tmp_path / "run"
    write_records(run)
    path = run / "records" / "layer-00.jsonl"
    good = path.read_text()
    path.write_text(
        good + '{"unit_id": "toy/0/9", "most_positive_activation_records": '
        '[{"tokens": ["a", "b"], "activations": [1.0]}]}\n'
    )
    proc = cli(
        "explain", str(run), "--explainer", "x", "--base-url", "http://127.0.0.1:9/v1", check=False
    )
    assert proc.returncode == 1
    assert "layer-00.jsonl:2" in proc.stderr and "2 tokens but 1 activations" in proc.stderr
    assert path.read_text().startswith(good)
    assert not (run / "explanations.jsonl").exists()
