"""Splits are deterministic and disjoint; prompts are versioned and shortened whole."""

from __future__ import annotations

import pytest

from neuroscribe.errors import DataError
from neuroscribe.explainer import clean_explanation
from neuroscribe.prompts import (
    PromptTooLong,
    build_explain_prompt,
    build_simulation_prompt,
)
from neuroscribe.prompts.format import format_token
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.splits import SplitConfig, split_record


def _record(n_top: int = 14, n_random: int = 12) -> NeuronRecord:
    top = [
        ActivationRecord(tokens=[f"t{i}", "x"], activations=[float(i + 1), 0.0])
        for i in range(n_top)
    ]
    rnd = [ActivationRecord(tokens=[f"r{i}", "y"], activations=[0.0, 0.1]) for i in range(n_random)]
    return NeuronRecord(unit_id="m/1/2", most_positive_activation_records=top, random_sample=rnd)


def test_splits_disjoint_deterministic_and_interleaved():
    rec = _record()
    a, b = split_record(rec), split_record(rec)
    assert a == b
    ids = [e.excerpt_id for e in a.train + a.test + a.calibration]
    assert len(ids) == len(set(ids))
    assert len(a.train) == 5 and sum(e.kind == "top" for e in a.test) == 5
    assert sum(e.kind == "random" for e in a.test) == 5
    # strongest excerpt goes to train, the second strongest to test (round-robin)
    assert a.train[0].record.tokens[0] == "t13" and a.test[0].record.tokens[0] == "t12"
    assert {e.role for e in a.calibration} == {"calibration"}


def test_random_excerpt_identical_to_train_is_dropped():
    rec = _record(n_top=3, n_random=0)
    rec.random_sample = [rec.most_positive_activation_records[2]]  # the strongest
    s = split_record(rec, SplitConfig(n_train=1, n_test_top=1, n_calibration_top=0))
    assert all(e.kind == "top" for e in s.test)


def test_unit_without_activation_is_a_clear_error():
    rec = NeuronRecord(
        unit_id="m/0/0",
        most_positive_activation_records=[ActivationRecord(tokens=["a"], activations=[0.0])],
    )
    with pytest.raises(DataError, match="no excerpt has a positive activation"):
        split_record(rec)
    with pytest.raises(DataError, match="no top-activating excerpts"):
        split_record(NeuronRecord(unit_id="m/0/1"))


def test_explain_prompt_rows_and_sparse_repeat():
    p = build_explain_prompt([(["a", " b", "\n"], [0.0, 2.0, 0.0]), (["c"] * 20, [0.0] * 20)])
    assert "a\t0\n b\t10\n\\n\t0" in p.text
    assert "non-zero tokens only:\n<start>\n b\t10\n<end>" in p.text
    assert p.text.endswith("the main thing this neuron does is find")
    assert p.messages[-1]["role"] == "user" and p.prompt_version == "explain-v1"


def test_explain_prompt_shortened_by_whole_excerpts():
    ex = [([f"w{i}"] * 30, [float(i + 1)] * 30) for i in range(6)][::-1]
    full = build_explain_prompt(ex)
    short = build_explain_prompt(ex, max_prompt_tokens=len(full.text) // 5)
    assert short.n_excerpts < full.n_excerpts
    assert short.text.count("<start>") < full.text.count("<start>")
    # every excerpt block that is present is complete
    assert short.text.count("<start>") == short.text.count("<end>")
    with pytest.raises(PromptTooLong):
        build_explain_prompt(ex, max_prompt_tokens=5)


def test_simulation_prompt_slots_and_scale():
    p = build_simulation_prompt("cats", ["The", " cat", "\t"], scale_max=9)
    text = p.text()
    assert text.startswith(p.prefix) and text.endswith("<end>\n")
    assert "The\tunknown\n cat\tunknown\n\\t\tunknown\n" in text
    assert "Explanation: cats" in p.prefix
    assert "\t10\n" not in p.prefix  # few-shot values rescaled to 0–9
    with pytest.raises(PromptTooLong):
        build_simulation_prompt("x", ["y"] * 400, max_prompt_tokens=100)


def test_format_token_escapes():
    assert format_token("a\nb\tc") == "a\\nb\\tc"
    assert format_token("") == "<empty>"


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("  years in dates.  ", "years in dates"),
        ("Explanation of neuron 4 behavior: the main thing this neuron does is find cats.", "cats"),
        ('"negations like not"\nmore text', "negations like not"),
        ("the main thing this neuron does is find   words   about  food", "words about food"),
        ("cats and dogs. The neuron also likes e.g. birds. More", "cats and dogs"),
        ("Explaining neuron 4 behavior: the main thing this neuron does is find dogs", "dogs"),
        ("", None),
        ("   \n  ", None),
        ("...", None),
    ],
)
def test_clean_explanation(raw, clean):
    assert clean_explanation(raw) == clean


def test_copied_few_shot_answers_are_recognised():
    from neuroscribe.explainer import is_copied_example

    assert is_copied_example("Words that negate a statement, such as not and never.")
    assert not is_copied_example("words that negate verbs in French")
