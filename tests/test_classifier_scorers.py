"""The classifier scorers (detection, fuzzing, intruder) on the in-process fake LLM.

The metric maths against hand computations; answer parsing that never reads an unusable
answer as "no"; each scorer end to end through the score stage and the engine (usage,
failures, resume, the dry-run estimate), and each one's prompts checked for any token of
a train excerpt (the explainer's) — there must be none.
"""

from __future__ import annotations

import asyncio
import math
import random
import re

import pytest

from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import estimate_stage, run_stage
from neuroscribe.errors import ConfigError, DataError, OutputError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.base import Completion, TokenLogprob
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.registry import REGISTRY, BackendInfo, register_backend
from neuroscribe.prompts.classify import render_excerpt
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.classify import crop, parse_choice, parse_yes_no, yes_probabilities
from neuroscribe.scorer.detection import DetectionScorer
from neuroscribe.scorer.fuzzing import FuzzingScorer
from neuroscribe.scorer.intruder import IntruderScorer
from neuroscribe.scorer.maths import (
    balanced_accuracy,
    classification_metrics,
    f1_score,
    roc_auc,
)
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.stages.score import ScoreStage

# ---------------------------------------------------------------- maths


def test_balanced_accuracy_and_f1_match_hand_computations():
    y = [True, True, True, False, False]
    p = [True, False, True, True, False]
    # TPR 2/3, TNR 1/2 → 7/12. TP 2, FP 1, FN 1 → F1 = 4 / (4 + 2) = 2/3.
    assert balanced_accuracy(y, p) == pytest.approx(7 / 12)
    assert f1_score(y, p) == pytest.approx(2 / 3)
    m = classification_metrics(y, p)
    assert m["accuracy"] == pytest.approx(3 / 5) and m["auc"] is None
    # One class only: balanced accuracy undefined; no positive anywhere: F1 undefined.
    assert balanced_accuracy([True, True], [True, False]) is None
    assert f1_score([False, False], [False, False]) is None
    assert f1_score([False, False], [True, False]) == 0.0


def test_auc_counts_ties_half_and_matches_hand_computation():
    # Positives 0.9, 0.5; negatives 0.5, 0.1. Pairs: (0.9>0.5) 1, (0.9>0.1) 1,
    # (0.5=0.5) ½, (0.5>0.1) 1 → 3.5 / 4.
    assert roc_auc([True, True, False, False], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert roc_auc([True, False], [0.3, 0.3]) == pytest.approx(0.5)  # all tied
    assert roc_auc([False, True], [0.9, 0.1]) == 0.0
    assert roc_auc([True, True], [0.1, 0.2]) is None


def test_metrics_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    y = [True, False, True, True, False, False, True, False]
    p = [True, False, False, True, True, False, True, False]
    s = [0.9, 0.2, 0.4, 0.8, 0.6, 0.2, 0.7, 0.4]
    assert balanced_accuracy(y, p) == pytest.approx(metrics.balanced_accuracy_score(y, p))
    assert f1_score(y, p) == pytest.approx(metrics.f1_score(y, p))
    assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s))


# ---------------------------------------------------------------- parsing


def test_yes_no_answers_parse_in_many_shapes_and_never_default_to_no():
    assert parse_yes_no("1 yes\n2 no\n3 yes", 3).answers == [True, False, True]
    assert parse_yes_no("**2**: No\n1. Yes.\n3) no", 3).answers == [True, False, False]
    assert parse_yes_no("Excerpt 1: yes\nExcerpt 2: no", 2).answers == [True, False]
    assert parse_yes_no("Yes, no, yes", 3).answers == [True, False, True]  # bare, in order
    for bad in ("1 yes\n2 no", "1 yes\n1 no\n2 yes", "1 yes\n2 no\n4 yes", "maybe", ""):
        with pytest.raises(OutputError):
            parse_yes_no(bad, 3)
    assert parse_choice("2, 5 and 3", 5) == [False, True, True, False, True]
    assert parse_choice("None of them.", 3) == [False, False, False]
    for bad in ("7", "I cannot tell"):
        with pytest.raises(OutputError):
            parse_choice(bad, 5)


def test_p_yes_is_read_at_each_answer_token_and_refused_when_misaligned():
    def tok(t: str, p: float) -> TokenLogprob:
        return TokenLogprob(
            t, math.log(p), {t: math.log(p), " no" if "y" in t else " yes": math.log(1 - p)}
        )

    toks = [
        TokenLogprob("1"),
        tok(" yes", 0.8),
        TokenLogprob("\n"),
        TokenLogprob("2"),
        tok(" no", 0.9),
    ]
    parsed = parse_yes_no("1 yes\n2 no", 2)
    probs = yes_probabilities(toks, parsed)
    assert probs[0] == pytest.approx(0.8) and probs[1] == pytest.approx(0.1)
    # Lines answered out of order: the tokens follow the text, the answers the numbers.
    swapped = parse_yes_no("2 no\n1 yes", 2)
    toks2 = [TokenLogprob("2"), tok(" no", 0.9), TokenLogprob("1"), tok(" yes", 0.8)]
    assert yes_probabilities(toks2, swapped) == pytest.approx([0.8, 0.1])
    assert yes_probabilities(toks[:2], parsed) == [None, None]  # a token short: no guess
    assert yes_probabilities(None, parsed) == [None, None]


def test_render_marks_spans_and_keeps_one_line():
    assert render_excerpt([" the", " cat", " sat", "\n"], {1, 2}) == "the <<cat sat>>\\n"
    assert render_excerpt(["a", "b", "c"], {0, 2}) == "<<a>>b<<c>>"


# ---------------------------------------------------------------- a unit and its run

UNIT = "m/0/7"
WORD = " cat"


def unit_record() -> NeuronRecord:
    """12 top excerpts whose " cat" fires (each with its own id tokens), 9 random ones:
    one holds " cat" but stays silent (a hard negative), one fires (ambiguous)."""

    def top(j: int) -> ActivationRecord:
        toks = [f" t{j}a", f" t{j}b", WORD, f" t{j}c", f" t{j}d", f" t{j}e"]
        return ActivationRecord(tokens=toks, activations=[0, 0.1, 10 - 0.5 * j, 0.05, 0, 0])

    def rnd(j: int) -> ActivationRecord:
        toks = [f" r{j}a", f" r{j}b", WORD if j == 1 else f" r{j}c", f" r{j}d"]
        return ActivationRecord(tokens=toks, activations=[0, 6.0 if j == 3 else 0.2, 0, 0])

    return NeuronRecord(
        unit_id=UNIT,
        most_positive_activation_records=[top(j) for j in range(12)],
        random_sample=[rnd(j) for j in range(9)],
    )


SPLITS = SplitConfig()  # 5 train; 5 + 2 top and 5 + 2 random held out


def train_tokens() -> set[str]:
    """Tokens only train excerpts hold: none may reach a scorer's prompt."""
    s = split_record(unit_record(), SPLITS)
    held = {t for x in s.held_out for t in x.record.tokens}
    return {t.strip() for x in s.train for t in x.record.tokens if t not in held}


def explanation(text: str = "the word cat", i: int = 0) -> Explanation:
    train = [x.excerpt_id for x in split_record(unit_record(), SPLITS).train]
    return Explanation(
        explanation_id=f"e{i}",
        unit_id=UNIT,
        sample_index=i,
        text=text,
        explainer="fake:x",
        prompt_version="v",
        config_hash="h",
        train_excerpts=train,
    )


def make_run(tmp_path, explanations=()) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [unit_record()])
    if explanations:
        append_jsonl(run.path("explanations"), list(explanations))
    return run


def _user(messages) -> str:
    return messages[-1]["content"]


def _lines(messages) -> list[tuple[int, str]]:
    return [(int(k), t) for k, t in re.findall(r"^(\d+)\. (.*)$", _user(messages), re.M)]


def oracle(request, **params) -> str:
    """A judge who says yes wherever it sees " cat" (marked, for fuzzing)."""
    text = _user(request)
    lines = _lines(request)
    if "Which excerpts" in text:
        return ", ".join(str(k) for k, t in lines if "cat" in t) or "none"
    hit = "<<cat>>" if "marked" in text else "cat"
    return "\n".join(f"{k} {'yes' if hit in t else 'no'}" for k, t in lines)


def go(scorer, run, **kw):
    stage = ScoreStage(scorer, run.records(), SPLITS)
    return asyncio.run(run_stage(stage, run, show_progress=False, **kw)), stage


def prompts_of(llm: FakeLLM) -> list[str]:
    return [m["content"] for c in llm.calls for m in c.messages]


def assert_no_train_text(llm: FakeLLM) -> None:
    seen = set(re.findall(r"[a-z]\d+[a-z]", " ".join(prompts_of(llm))))
    assert seen and not seen & train_tokens()


# ---------------------------------------------------------------- detection


def test_detection_scores_a_run_from_held_out_excerpts_only(tmp_path):
    run = make_run(tmp_path, [explanation()])
    llm = FakeLLM("fake:judge", answers=oracle)
    summary, _ = go(DetectionScorer(llm, spec=llm.spec), run)
    assert (summary.done, summary.failed) == (1, 0)
    (score,) = run.scores()
    # 7 held-out top (all "cat": yes) vs 6 quiet random; the ambiguous one left out.
    # The hard negative holds " cat": the judge says yes → TNR 5/6.
    d = score.details
    assert (d["n_positive"], d["n_negative"], d["n_ambiguous"]) == (7, 6, 1)
    assert d["n_hard_negatives"] == 1 and d["top_tokens"] == ["cat"]
    assert score.metrics["balanced_accuracy"] == pytest.approx((1 + 5 / 6) / 2)
    assert score.metrics["hard_negative_accuracy"] == 0.0
    assert score.metrics["auc"] is None and "no_logprobs" in score.flags
    assert score.primary_metric == "balanced_accuracy" and score.scorer == "detection"
    assert d["prompt_version"] == "detection-v1" and d["n_prompts"] == 3  # 13 items, 5 a prompt
    assert len(llm.calls) == 3 and all(len(_lines(c.messages)) <= 5 for c in llm.calls)
    assert_no_train_text(llm)
    (usage,) = run.usage()
    assert usage.stage == "score-detection" and usage.prompt_tokens > 0
    # The dry run counts exactly the prompts that were sent.
    sent = sum(r.prompt_tokens for r in run.usage())
    stage = ScoreStage(DetectionScorer.planned("fake:judge")[0], run.records(), SPLITS)
    run.path("scores").unlink()
    est = estimate_stage(stage, run)
    assert (est.requests, est.prompt_tokens) == (3, sent)


def test_detection_auc_from_p_yes_and_same_prompts_for_every_explanation(tmp_path):
    def sure(request, **params) -> Completion:
        # P(yes) 0.9 on cat lines, 0.3 elsewhere; the text answers by the larger one.
        toks: list[TokenLogprob] = []
        for k, t in _lines(request):
            p = 0.9 if "cat" in t else 0.3
            word = " yes" if p > 0.5 else " no"
            top = {" yes": math.log(p), " no": math.log(1 - p)}
            toks += [TokenLogprob(str(k)), TokenLogprob(word, top[word], top), TokenLogprob("\n")]
        return Completion("".join(t.token for t in toks), "stop", toks)

    run = make_run(tmp_path, [explanation(), explanation("cats", 1)])
    caps = Capabilities(chat_top_logprobs=True)
    llm = FakeLLM("fake:judge", answers=sure, capabilities=caps)
    scorer = asyncio.run(DetectionScorer.build(llm))
    assert scorer.logprobs
    go(scorer, run)
    scores = run.scores()
    # Positives all 0.9; negatives: the hard one 0.9 (tie: ½ each), five at 0.3.
    assert [s.metrics["auc"] for s in scores] == pytest.approx([(7 * 5 + 7 * 0.5) / 42] * 2)
    assert all(c.params["top_logprobs"] for c in llm.calls)
    # Shuffled by unit + config only: both explanations saw the same excerpt order.
    first = [_lines(c.messages) for c in llm.calls if "the word cat" in _user(c.messages)]
    second = [_lines(c.messages) for c in llm.calls if "Explanation: cats\n" in _user(c.messages)]
    assert sorted(first) == sorted(second)
    assert_no_train_text(llm)


def test_unparseable_answers_are_retried_then_fail_the_unit_never_count_as_no(tmp_path):
    run = make_run(tmp_path, [explanation()])
    calls = {"n": 0}

    def flaky(request, **params) -> str:
        calls["n"] += 1
        return "I think so?" if calls["n"] == 1 else oracle(request, **params)

    llm = FakeLLM("fake:judge", answers=flaky)
    summary, _ = go(DetectionScorer(llm, spec=llm.spec), run)
    assert summary.done == 1 and len(llm.calls) == 4  # one prompt asked twice
    assert {c.params["temperature"] for c in llm.calls} == {0.0, 0.7}

    run2 = make_run(tmp_path / "b", [explanation()])
    bad = FakeLLM("fake:judge", answers=lambda request, **p: "1 yes\n2 yes")
    summary, _ = go(DetectionScorer(bad, spec=bad.spec, max_attempts=2), run2)
    assert (summary.done, summary.failed) == (0, 1) and run2.scores() == []
    (failure,) = run2.failures()
    assert "one yes/no for each of 5 excerpts" in failure.reason
    assert "after 2 attempts" in failure.reason and failure.raw == "1 yes\n2 yes"
    assert sum(u.prompt_tokens for u in run2.usage()) > 0  # what the bad answers cost
    # Resume: the failed unit is skipped, and done again with --retry-failed.
    good = FakeLLM("fake:judge", answers=oracle)
    assert go(DetectionScorer(good, spec=good.spec), run2)[0].skipped == 1
    assert go(DetectionScorer(good, spec=good.spec), run2, retry_failed=True)[0].done == 1


def test_detection_refuses_a_unit_without_non_activating_excerpts():
    rec = unit_record()
    for r in rec.random_sample:
        r.activations[0] = 9.0
    task = ScoreTask(explanation(), rec, split_record(rec, SPLITS), "h")
    with pytest.raises(DataError, match="no held-out random excerpt stays below"):
        DetectionScorer(None, spec="fake:x").items(task)


# ---------------------------------------------------------------- fuzzing


def test_fuzzing_marks_the_right_tokens_and_same_count_decoys(tmp_path):
    run = make_run(tmp_path, [explanation()])
    llm = FakeLLM("fake:judge", answers=oracle)
    summary, _ = go(FuzzingScorer(llm, spec=llm.spec), run)
    assert summary.done == 1
    (score,) = run.scores()
    assert score.scorer == "fuzzing" and score.details["prompt_version"] == "fuzzing-v1"
    lines = [t for c in llm.calls for _, t in _lines(c.messages)]
    assert len(lines) == 14  # 7 held-out top excerpts, each right and wrong
    assert all(line.count("<<") == 1 for line in lines)  # one token marked either way
    assert sum("<<cat>>" in line for line in lines) == 7
    assert score.metrics["balanced_accuracy"] == 1.0 and score.metrics["f1"] == 1.0
    assert score.n_excerpts == 7
    assert_no_train_text(llm)


# ---------------------------------------------------------------- intruder


def test_intruder_shows_two_top_two_mid_and_the_quiet_random_ones(tmp_path):
    run = make_run(tmp_path, [explanation()])
    llm = FakeLLM("fake:judge", answers=oracle)
    summary, _ = go(IntruderScorer(llm, spec=llm.spec), run)
    assert summary.done == 1 and len(llm.calls) == 1  # one multiple-choice prompt
    (score,) = run.scores()
    d = score.details
    assert (d["n_top"], d["n_mid"], d["n_random"]) == (2, 2, 6)
    # The judge also picks the hard negative: 9 of 10 right.
    assert score.metrics["accuracy"] == pytest.approx(0.9) and score.primary_metric == "accuracy"
    assert "auc" not in score.metrics and score.flags == []
    assert "Which excerpts" in _user(llm.calls[0].messages)
    assert_no_train_text(llm)


# ---------------------------------------------------------------- the public API and CLI


@pytest.fixture
def judge_backend():
    """`judge:` specs: a fake judge reachable from a RunConfig, as a real backend is."""
    from neuroscribe.llm.fake import _chat_tokens, tokenize

    info = BackendInfo(
        name="judge",
        prefix="judge:",
        local=True,
        token_counter=lambda spec: (lambda t: len(tokenize(t)), _chat_tokens, "fake"),
    )
    register_backend("judge:", lambda spec, **o: FakeLLM(spec, answers=oracle), info)
    yield "judge:x"
    REGISTRY._entries.pop("judge:", None)


def test_every_scorer_runs_by_name_through_the_api_and_the_cli(tmp_path, judge_backend):
    from _cli import run_cli

    run = make_run(tmp_path, [explanation()])
    base = {"run_dir": run.root, "jobs": {"show_progress": False}}
    for name in ("detection", "fuzzing", "intruder"):
        config = RunConfig.build(**base, score={"scorer": name, "model": judge_backend})
        (est,) = api.estimate(config, ["score"])
        assert est.stage == f"score-{name}" and (est.units, est.cost_usd) == (1, 0.0)
        summary = asyncio.run(api.score_async(config))
        assert summary.done == 1
        (usage,) = [u for u in run.usage() if u.stage == f"score-{name}"]
        assert usage.prompt_tokens == est.prompt_tokens  # the dry run counted what was sent
    assert {s.scorer for s in run.scores()} == {"detection", "fuzzing", "intruder"}
    # The command line: `neuroscribe simulate RUN --scorer detection` (done: skipped).
    out = run_cli("simulate", str(run.root), "--scorer", "detection", "--simulator", judge_backend)
    assert "score-detection" in out.stdout + out.stderr


def long_record(u: int) -> NeuronRecord:
    """A unit with `neuroscribe record`'s default 64-token excerpts."""
    r = random.Random(u)
    words = [f" w{i}" for i in range(50)]

    def ex(hot: bool) -> ActivationRecord:
        toks = [r.choice(words) for _ in range(64)]
        acts = [0.0] * 64
        if hot:
            i = r.randrange(64)
            toks[i], acts[i] = WORD, r.uniform(3, 10)
        return ActivationRecord(tokens=toks, activations=acts)

    return NeuronRecord(
        unit_id=f"m/1/{u}",
        most_positive_activation_records=[ex(True) for _ in range(20)],
        random_sample=[ex(False) for _ in range(20)],
    )


def test_dry_run_shows_the_classifiers_far_cheaper_than_simulation(tmp_path):
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [long_record(u) for u in range(2)])
    base = {"run_dir": run.root, "jobs": {"show_progress": False}}

    def per_unit(name: str) -> float:
        score = {"scorer": name, "model": "fake:judge"}
        config = RunConfig.build(**base, explain={"model": "fake:x"}, score=score)
        est = api.estimate(config, ["explain", "score"])[1]  # typical-length explanations
        assert est.units == 2
        return est.prompt_tokens / est.units

    sim = per_unit("simulation")
    cost = {name: per_unit(name) for name in ("detection", "fuzzing", "intruder")}
    # The bar: the cheapest LLM scorer at most a tenth of simulation's tokens.
    assert min(cost.values()) * 10 <= sim, (cost, sim)
    assert all(c * 5 <= sim for c in cost.values()), (cost, sim)


def test_excerpts_are_cut_to_a_window_that_keeps_what_decides_the_label():
    assert crop(64, 40, 32) == (16, 48) and crop(64, 2, 32) == (0, 32)
    assert crop(64, 63, 32) == (32, 64) and crop(10, 5, 32) == (0, 10)
    rec = long_record(0)
    rec.random_sample[0].tokens[50] = WORD  # a quiet " cat": a hard negative
    task = ScoreTask(explanation(), rec, split_record(rec, SPLITS), "h")
    items, details = DetectionScorer(None, spec="fake:x").items(task)
    assert details["n_hard_negatives"] == 1 and details["window"] == 32
    assert all(it.n_tokens == 32 for it in items)
    assert all("cat" in it.text for it in items if it.kind in ("top", "hard"))
    fuzz, _ = FuzzingScorer(None, spec="fake:x").items(task)
    assert all(("<<cat>>" in it.text) == it.label for it in fuzz)


def test_score_runs_several_scorers_in_one_command(tmp_path, judge_backend):
    from _cli import run_cli

    run = make_run(tmp_path, [explanation()])
    out = run_cli(
        "score", str(run.root), "--scorer", "detection,fuzzing,intruder",
        "--simulator", judge_backend,
    )  # fmt: skip
    assert {s.scorer for s in run.scores()} == {"detection", "fuzzing", "intruder"}
    assert {u.stage for u in run.usage()} >= {"score-detection", "score-fuzzing", "score-intruder"}
    assert "detection" in out.stdout and "intruder" in out.stdout  # the results table
    # Again: everything is done, nothing is sent twice.
    before = len(run.usage())
    run_cli("score", str(run.root), "--scorer", "detection,fuzzing", "--simulator", judge_backend)
    assert len(run.usage()) == before and len(run.scores()) == 3
    # A scorer with its own model, an unknown scorer, a scorer named twice.
    config = RunConfig.build(run_dir=run.root, score={"model": "gpt-4o-mini"})
    (emb,) = api.scorer_configs(config, api.parse_scorers("embedding"))
    assert emb.score.model == "hf:embedded" and emb.score.scorer == "embedding"
    (own,) = api.scorer_configs(config, api.parse_scorers("detection=judge:y"))
    assert own.score.model == "judge:y"
    for bad, says in (("detections", "unknown scorer"), ("detection,detection", "twice"),
                      (" , ", "no scorer")):  # fmt: skip
        with pytest.raises(ConfigError, match=says):
            api.parse_scorers(bad)
    failed = run_cli("score", str(run.root), "--scorer", "simulation,nope", check=False)
    assert failed.returncode != 0 and "unknown scorer 'nope'" in failed.stdout + failed.stderr
