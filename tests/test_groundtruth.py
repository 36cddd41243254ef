"""The ground-truth suite and the simulator check: rules, file format, ranking maths,
and the check run through a real simulator strategy on an in-process backend."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from neuroscribe.config import RunConfig
from neuroscribe.errors import DataError
from neuroscribe.groundtruth import load_suite, select
from neuroscribe.groundtruth.check import candidate_score, check_simulator, summarize, verdict
from neuroscribe.groundtruth.rules import (
    UNITS,
    after,
    depth_rule,
    inside_double_quotes,
    list_position,
    words,
)
from neuroscribe.schema import Usage

# -- rules --------------------------------------------------------------------------------


def test_context_rules_read_the_excerpt():
    toks = ["The", " cat", " saw", " the", " dog", "."]
    assert after(lambda t: t.strip().lower() == "the")(toks) == [0, 10, 0, 0, 10, 0]
    assert words("the")(toks) == [10, 0, 0, 10, 0, 0]
    quoted = ["say", ' "', "hello", " world", '"', " now"]
    assert inside_double_quotes(quoted) == [0, 0, 10, 10, 0, 0]
    nested = ["f", "(", "a", " [", "b", "]", ")", " c"]
    assert depth_rule("([", ")]", graded=True)(nested) == [0, 0, 4, 0, 8, 0, 0, 0]


def test_graded_list_rule_rises_with_each_item():
    toks = ["red", ",", " green", ",", " blue", ",", " black", "."]
    values = list_position(toks)
    assert values[2] < values[4] < values[6]
    assert values[0] == 0


def test_every_rule_gives_one_value_per_token():
    toks = ["def", " f", "(", "x", "):", "\n", "    ", "return", " None", "  # ", "Python"]
    for spec in UNITS:
        for rule in [spec.true, *(r for _, r in spec.false)]:
            assert len(rule(toks)) == len(toks), rule.explanation


# -- the suite file ----------------------------------------------------------------------


def test_builtin_suite_has_two_halves_of_every_kind_of_rule():
    units = load_suite()
    dev, test = select(units, "dev"), select(units, "test")
    assert len(dev) >= 15 and len(test) >= 15
    assert {u.category for u in dev} == {u.category for u in test}
    assert {u.category for u in units} >= {"token", "context", "graded", "sparse", "dense"}
    for u in units:
        assert len(u.false_explanations) >= 2
        assert u.explain_excerpts and u.score_excerpts
        # A perfect simulator ranks the true explanation first by a clear margin.
        assert all(
            f.oracle_score is not None and f.oracle_score <= 0.7 for f in u.false_explanations
        )
        kinds = {f.kind for f in u.false_explanations}
        assert kinds <= {"over-general", "over-specific", "neighbouring-concept", "wrong-context"}


def _unit(**over):
    line = {
        "id": "u1",
        "split": "test",
        "explanation": "the word cat",
        "false_explanations": [{"text": "the word dog", "kind": "neighbouring-concept"}],
        "excerpts": [{"tokens": ["a", " cat"], "activations": [0, 5]}],
    }
    line.update(over)
    return line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"excerpts": [{"tokens": ["a"], "activations": [0, 1]}]}, "1 tokens but 2 activations"),
        ({"excerpts": [{"tokens": ["a", "b"], "activations": [0, math.nan]}]}, "not a finite"),
        ({"false_explanations": []}, "at least one false explanation"),
        ({"explanation": " "}, "cannot be empty"),
        ({"excerpts": [{"tokens": ["a", "b"], "activations": [1, 1]}]}, "constant"),
        ({"split": "train"}, "split"),
    ],
)
def test_a_bad_suite_line_names_its_line_and_field(tmp_path, change, message):
    path = tmp_path / "suite.jsonl"
    good = json.dumps(_unit())
    bad = json.dumps(_unit(id="u2", **change)).replace("NaN", "NaN")
    path.write_text(good + "\n" + bad + "\n")
    with pytest.raises(DataError) as e:
        load_suite(path)
    assert "line 2" in str(e.value)
    assert message in str(e.value)


def test_duplicate_ids_and_non_json_are_refused(tmp_path):
    path = tmp_path / "suite.jsonl"
    path.write_text(json.dumps(_unit()) + "\n" + json.dumps(_unit()) + "\n")
    with pytest.raises(DataError, match="appears twice"):
        load_suite(path)
    path.write_text("{not json\n")
    with pytest.raises(DataError, match="line 1: not JSON"):
        load_suite(path)


def test_a_user_suite_loads(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(_unit()) + "\n")
    (unit,) = load_suite(path)
    assert unit.candidates() == [("true", "the word cat"), ("neighbouring-concept", "the word dog")]


# -- ranking maths -----------------------------------------------------------------------


def _rules_by_text():
    out = {}
    for spec in UNITS:
        for rule in [spec.true, *(r for _, r in spec.false)]:
            out[rule.explanation] = rule
    return out


def _run(units, simulate):
    return asyncio.run(
        check_simulator(
            units,
            simulate,
            simulator="test",
            strategy="test",
            prompt_version="v",
            suite="builtin",
            split="test",
        )
    )


def test_a_perfect_simulator_is_trusted_and_a_blind_one_is_called_noise():
    units = select(load_suite(), "test")
    rules = _rules_by_text()

    async def oracle(text, excerpts):
        return [rules[text](t) for t in excerpts], Usage(prompt_tokens=10)

    async def blind(text, excerpts):
        # What a weak simulator does: "content tokens fire", whatever the explanation.
        return [[float(len(t.strip()) > 3) for t in e] for e in excerpts], Usage()

    good = _run(units, oracle).summary
    assert good.top1_rate == 1.0
    assert good.mean_margin >= 0.3
    assert good.trustworthy and "tells true explanations from false ones" in good.verdict
    assert good.prompt_tokens_per_unit > 0
    bad = _run(units, blind).summary
    assert bad.top1_rate == 0.0  # every candidate gets the same score: a tie is no win
    assert not bad.trustworthy and "scores from it are noise" in bad.verdict


def test_failed_candidates_get_no_credit():
    units = select(load_suite(), "test")[:3]

    async def fails_on_true(text, excerpts):
        from neuroscribe.errors import OutputError

        if text == units[0].explanation:
            raise OutputError("no digits at the slots")
        return [[1.0] * len(e) for e in excerpts], Usage()

    report = _run(units, fails_on_true)
    first = report.units[0]
    assert first.candidates[0].score is None and "no digits" in first.candidates[0].error
    assert not first.true_first
    assert report.summary.n_failed_candidates == 1


def test_candidate_score_leaves_out_missing_predictions():
    assert candidate_score([[0, 1, 0, 1]], [[0, 1, None, 1]]) == pytest.approx(1.0)
    assert candidate_score([[0, 1]], [[2, 2]]) == 0.0  # constant prediction: no signal


def test_verdict_lines():
    assert verdict(0.8, 0.25, 0.2, (0.1, 0.3))[1]
    assert "noise" in verdict(0.3, 0.25, 0.01, (-0.02, 0.04))[0]
    assert "weakly" in verdict(0.6, 0.25, 0.05, (0.01, 0.09))[0]
    with pytest.raises(ValueError):
        summarize([])


# -- through a real simulator strategy -----------------------------------------------------


def test_check_runs_the_prompt_logprob_simulator_with_the_contrastive_prompt():
    """The real PromptLogprobSimulator on an in-process backend that knows the rules: the
    v2 prompt's `?` slots are found, P(active) is read and the contrast subtracted."""
    from neuroscribe.groundtruth.runner import check_simulator_async
    from neuroscribe.llm.capabilities import Capabilities
    from neuroscribe.llm.fake import FakeLLM

    rules = _rules_by_text()
    units = select(load_suite(), "test")[:2]

    def logprobs(tokens, i):
        text = "".join(tokens[:i])
        line = text.rsplit("\n", 1)[-1]
        if not line.endswith("\t") or "fires on:" not in text:
            return {tokens[i]: 0.0}
        explanation = text.rsplit("fires on: ", 1)[1].split("\n", 1)[0]
        body = text.rsplit("<start>\n", 1)[1].split("\n")
        row_tokens = [r.split("\t")[0] for r in body]
        rule = rules.get(explanation)
        if rule is None:  # the contrast explanation: the same prior everywhere
            return {"0": math.log(0.5), "1": math.log(0.5)}
        # Row tokens are the excerpt's tokens as far as written: the rule decides.
        value = rule(row_tokens)[-1]
        return {"0": 0.0} if value == 0 else {"9": 0.0}

    llm = FakeLLM(
        "fake:rules",
        prompt_logprobs=logprobs,
        capabilities=Capabilities(completions=True, prompt_logprobs=True),
    )
    config = RunConfig.build(
        score={"model": "fake:rules", "strategy": "prompt-logprobs", "prompt": "simulate-v2"}
    )
    report = asyncio.run(check_simulator_async(config, split="test", max_units=2, llm=llm))
    assert report.prompt_version == "simulate-v2"
    assert report.strategy == "prompt-logprobs"
    assert [u.unit_id for u in report.units] == [u.id for u in units]
    assert report.summary.n_failed_candidates == 0
    # The first test units are token rules, which the row-by-row fake executes exactly.
    assert [u.category for u in units] == ["token", "token"]
    for u in report.units:
        assert u.true_first
        assert u.candidates[0].score == pytest.approx(1.0)
