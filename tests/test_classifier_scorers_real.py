"""The classifier and embedding scorers against a real OpenAI-compatible server.

llama.cpp serves the embedded SmolLM2-135M on loopback (tests/conftest.py). A 135M judge
often ignores the answer format: then the explanation must fail with the reason and the
raw answer, its tokens still counted, never be scored as if it had said "no".
"""

from __future__ import annotations

import pytest

from _cli import run_cli
from test_classifier_scorers import explanation, make_run

pytestmark = pytest.mark.slow


def test_detection_intruder_and_embedding_through_llama_cpp(llama_server, tmp_path):
    run = make_run(tmp_path, [explanation()])
    run_cli(
        "score", str(run.root), "--scorer", "detection,intruder,embedding",
        "--simulator", llama_server.model, "--base-url", llama_server.base_url,
        "--concurrency", "1", "--quiet",
    )  # fmt: skip
    scores = {s.scorer: s for s in run.scores()}
    failures = {f.stage: f for f in run.failures()}
    for name in ("detection", "intruder"):
        used = [u for u in run.usage() if u.stage == f"score-{name}"]
        assert used and all(u.prompt_tokens > 0 for u in used), name  # real requests
        assert all(u.model == llama_server.model for u in used)
        if name in scores:
            s = scores[name]
            assert s.scorer_model == llama_server.model
            assert s.details["prompt_version"] == f"{name}-v1"
            value = s.metrics[s.primary_metric]
            assert value is not None and 0 <= value <= 1
        else:  # the judge never gave a readable answer: a failure with what it said
            f = failures[f"score-{name}"]
            assert f.reason and f.raw is not None and f.attempts >= 1
    assert "intruder" in scores or "score-intruder" in failures
    emb = scores["embedding"]  # no model calls: always scored
    assert emb.scorer_model == "hf:sentence-transformers/all-MiniLM-L6-v2"
    assert emb.metrics["auc"] > 0.5  # "the word cat" is closest to the excerpts with " cat"


def test_a_small_judge_behind_an_api_answers_through_the_first_token_readout(
    llama_server, tmp_path
):
    # SmolLM2 does not keep the numbered format; llama.cpp returns top logprobs, so with
    # `--readout first-token` every excerpt gets a P(yes) and the explanation is scored.
    run = make_run(tmp_path, [explanation()])
    run_cli(
        "score", str(run.root), "--scorer", "detection,fuzzing", "--readout", "first-token",
        "--simulator", llama_server.model, "--base-url", llama_server.base_url,
        "--concurrency", "1", "--quiet",
    )  # fmt: skip
    assert not run.failures()
    scores = {s.scorer: s for s in run.scores()}
    assert set(scores) == {"detection", "fuzzing"}
    for name, s in scores.items():
        assert s.details["prompt_version"] == f"{name}-v1-one"
        assert s.details["n_prompts"] == s.details["n_items"]  # one excerpt a prompt
        assert s.metrics["auc"] is not None and 0 <= s.metrics["auc"] <= 1
        assert all(a["p_yes"] is not None for a in s.details["answers"])
    assert scores["detection"].details["n_items"] == 13
