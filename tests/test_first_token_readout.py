"""The classifiers' first-token readout: one excerpt a prompt, yes/no read from P(next token).

For in-process judges (exact logits) `readout="auto"` asks about one excerpt at a time
and reads P("yes") from the answer's first-token distribution, so a small local model
that cannot keep the numbered answer format still answers every item. Checked on the
in-process fake LLM (declaring exact logits); the real local model is exercised in
tests/test_vision_scoring.py (detection with SmolLM2) and the scorer study.
"""

from __future__ import annotations

import asyncio
import math

import pytest

from neuroscribe.engine import estimate_stage
from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import Completion, TokenLogprob
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.scorer.classify import first_token_p_yes
from neuroscribe.scorer.detection import DetectionScorer
from neuroscribe.scorer.fuzzing import FuzzingScorer
from neuroscribe.scorer.intruder import IntruderScorer
from neuroscribe.stages.score import ScoreStage
from test_classifier_scorers import SPLITS, _user, explanation, go, make_run, unit_record

IN_PROCESS = Capabilities(chat=True, chat_top_logprobs=True, exact_logits=True)


def leaning(p_cat: float, p_other: float, first: str = "Sure"):
    """A judge that does not follow formats: its first token is `first` whatever the
    question; only its distribution knows the answer (P(yes) by whether " cat" shows)."""

    def answer(request, **params) -> Completion:
        excerpt = _user(request).split("Excerpt", 1)[1]
        p = p_cat if "cat" in excerpt else p_other
        top = {first: math.log(0.5), " yes": math.log(p * 0.5), "no": math.log((1 - p) * 0.5)}
        return Completion(first + " I think", "length", [TokenLogprob(first, top[first], top)])

    return answer


def test_in_process_judges_answer_one_excerpt_a_prompt_read_from_p_yes(tmp_path):
    run = make_run(tmp_path, [explanation()])
    llm = FakeLLM("fake:judge", answers=leaning(0.8, 0.3), capabilities=IN_PROCESS)
    scorer = asyncio.run(DetectionScorer.build(llm))
    assert scorer.one_by_one and scorer.batch_size == 1
    summary, _ = go(scorer, run)
    assert (summary.done, summary.failed) == (1, 0)
    (s,) = run.scores()
    d = s.details
    assert d["prompt_version"] == "detection-v1-one" and d["n_prompts"] == d["n_items"] == 13
    assert all(c.params["max_tokens"] == 1 and c.params["top_logprobs"] == 20 for c in llm.calls)
    assert all(_user(c.messages).endswith("Answer yes or no.") for c in llm.calls)
    # The text says "Sure" every time; the answers come from P(yes): 0.8 on the 7 top
    # excerpts and the quiet " cat" one (yes), 0.3 on the 5 other negatives (no).
    assert s.metrics["balanced_accuracy"] == pytest.approx((1 + 5 / 6) / 2)
    assert s.metrics["auc"] == pytest.approx((7 * 5 + 7 * 0.5) / 42)
    assert {a["p_yes"] for a in d["answers"]} == {0.8, 0.3}
    # Its own configuration: a run judged in lines is never mixed with this one.
    assert scorer.config()["readout"] == "first-token"
    lines = asyncio.run(DetectionScorer.build(llm, readout="lines"))
    assert not lines.one_by_one and "readout" not in lines.config()
    # The dry run plans the same prompts for an `hf:` judge, none for an API judge.
    planned = DetectionScorer.planned("hf:embedded")[0]
    assert planned.one_by_one and not DetectionScorer.planned("gpt-4o-mini")[0].one_by_one
    fresh = make_run(tmp_path / "plan", [explanation()])
    planned = DetectionScorer.planned("fake:judge", probe={"exact_logits": True})[0]
    est = estimate_stage(ScoreStage(planned, fresh.records(), SPLITS), fresh)
    assert est.requests == 13 and est.completion_tokens == 13


def test_no_yes_or_no_among_the_first_tokens_fails_never_reads_as_no(tmp_path):
    run = make_run(tmp_path, [explanation()])

    def shrug(request, **params) -> Completion:
        top = {"Maybe": math.log(0.6), "Perhaps": math.log(0.4)}
        return Completion("Maybe", "length", [TokenLogprob("Maybe", top["Maybe"], top)])

    llm = FakeLLM("fake:judge", answers=shrug, capabilities=IN_PROCESS)
    summary, _ = go(asyncio.run(DetectionScorer.build(llm)), run)
    assert (summary.done, summary.failed) == (0, 1)
    (f,) = run.failures()
    assert "no yes/no among the 2 likeliest first tokens" in f.reason
    with pytest.raises(Exception, match="no token logprobs"):
        first_token_p_yes(Completion("yes", "stop", None))


def test_fuzzing_reads_first_tokens_too_and_misuse_is_refused(tmp_path):
    run = make_run(tmp_path, [explanation()])
    llm = FakeLLM("fake:judge", answers=leaning(0.9, 0.1), capabilities=IN_PROCESS)
    scorer = asyncio.run(FuzzingScorer.build(llm))
    go(scorer, run)
    (s,) = run.scores()
    assert s.details["prompt_version"] == "fuzzing-v1-one" and s.details["n_prompts"] > 1
    assert "marked" in _user(llm.calls[0].messages)
    # A judge without logprobs cannot be read this way; intruder has no such readout.
    plain = FakeLLM("fake:judge", answers=lambda r, **p: "1 yes")
    with pytest.raises(ConfigError, match="logprobs"):
        asyncio.run(DetectionScorer.build(plain, readout="first-token"))
    with pytest.raises(ConfigError, match="first-token readout"):
        IntruderScorer(None, spec="x", readout="first-token")
    with pytest.raises(ConfigError, match="readout must be"):
        DetectionScorer(None, spec="x", readout="tokens")
    assert unit_record().unit_id == s.unit_id


def test_the_readout_is_a_score_option_and_a_flag(tmp_path):
    from neuroscribe import api
    from neuroscribe.cli.pipeline import _config

    run = make_run(tmp_path, [explanation()])
    config = _config({"run": str(run.root), "scorer": "detection", "readout": "first-token"})
    assert api._route(DetectionScorer, config) == {"readout": "first-token"}
    assert api._route(FuzzingScorer, config) == {"readout": "first-token"}
    assert api._route(IntruderScorer, config) == {}  # no yes/no per excerpt to read
    planned = api.planned_scorer(config)[0]
    assert planned.one_by_one and planned.prompt_version == "detection-v1-one"
    with pytest.raises(ConfigError):
        _config({"run": str(run.root), "readout": "tokens"})
