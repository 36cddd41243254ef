"""Explanations that are explanations: echoes, refusals and filler are refused, asked
again, and end up in failures.jsonl with the reason — never in explanations.jsonl."""

from __future__ import annotations

import re

import pytest

from neuroscribe.explainer import (
    ExplainerConfig,
    TokenRowExplainer,
    clean_explanation,
    explanation_or_reason,
    why_not_explanation,
)
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.stages.explain import ExplainStage
from test_stages import SPLITS, go, make_run

ACCEPTED = [
    "the word 'the'",
    "closing brackets )",
    "numbers and digits",
    "tokens inside quotes",
    "none of the above words but 'not'",
    "years in dates",
    "cats",
    "words like not and never",
    "the word the",
    "the token ')'",
    "the token '.'",
    "pronouns with unclear referents",
    "unclear pronoun references",
    "words like 'unclear' and 'sorry'",
    "modal verbs such as can, cannot and must",
    "years such as 1990 and 2001",
    "numbers like 1, 2, 3",
    "HTML tags like <div>",
    "the end-of-text token <|endoftext|>",
    "the letter a",
    "Neuron 4 fires on cats",
    'the tokens "the", ",", "\\n"',
    "mots négatifs en français",
    "the digit 7",
    "verbs in the past tense",
    "French words",
    "common English words",
    "the start of a sentence",
    "the end of a line",
    "'s as a possessive",
    "words describing the behavior of animals",
    "neuroscience terms such as neuron and synapse",
    "I and me as pronouns",
    "you and your",
    "time of day such as 10:30",
]

REJECTED = [
    # echoes of the prompt's format
    ("<start>", "<start>/<end>"),
    ("<end>", "<start>/<end>"),
    ("cat\t5", "token<TAB>value"),
    ("0\t0\t10", "token<TAB>value"),
    ("Neuron 4", "Neuron N"),
    ("Activations:", "Activations:"),
    ("Neuron 4 Activations:", "Activations:"),
    # what SmolLM2-135M answers instead of an explanation
    ("It is about understanding the behavior of neurons", "the task"),
    ("Here is a listing of the various neuron's behaviors", "the task"),
    ("This is a complete example of neuron 4 behavior", "the task"),
    ("Explaining the four neurons behavior in one short paragraph", "the task"),
    ("I'm going to complete your question as follows:", "chat reply"),
    ("Sure, here is the explanation", "chat reply"),
    ("Question: What is the purpose of this text?", "chat reply"),
    ("Script:", "chat reply"),
    ("Your text ends with the requested answer", "chat reply"),
    # the prompt's own text
    ("Describe the pattern, do not just list tokens", "instructions"),
    ("the tokens with high activations", "instructions"),
    ("one short phrase", "instructions"),
    ("Same activations, non-zero tokens only:", "instructions"),
    ("years written as four-digit numbers", "few-shot example's explanation"),
    ("Words that negate a statement, such as not and never", "few-shot example's explanation"),
    ("The treaty was signed in 1648", "few-shot example's text"),
    # refusals and non-answers
    ("There is no straightforward answer", "refusal"),
    ("there is no pattern", "refusal"),
    ("no clear pattern", "refusal"),
    ("I cannot determine this", "refusal"),
    ("I'm sorry, I can't help with that", "refusal"),
    ("I don't know", "refusal"),
    ("unclear", "refusal"),
    ("It is unclear", "refusal"),
    ("the pattern is unclear", "refusal"),
    ("this neuron's function is not clear", "refusal"),
    ("not sure", "refusal"),
    ("As an AI language model, I", "refusal"),
    ("N/A", "refusal"),
    ("none", "refusal"),
    ("nothing", "refusal"),
    ("unknown", "refusal"),
    ("It is hard to say", "refusal"),
    ("not enough information", "refusal"),
    ("random tokens", "refusal"),
    # filler
    ("the", "filler"),
    ("it", "filler"),
    ("this neuron", "filler"),
    ("something", "filler"),
    ("the tokens", "filler"),
    ("various words", "filler"),
    ("a", "too short"),
    # digits and markup
    ("1 2 3 4 5", "no words"),
    ("<|> 12 34 56", "no words"),
    ("1990 2001 years", "mostly digits"),
    ("", "empty"),
]


@pytest.mark.parametrize("text", ACCEPTED)
def test_real_explanations_are_accepted(text):
    assert why_not_explanation(text) is None
    assert clean_explanation(text) is not None


@pytest.mark.parametrize(("text", "why"), REJECTED)
def test_non_explanations_are_refused_with_a_reason(text, why):
    reason = why_not_explanation(text)
    assert reason is not None and why in reason
    # What explainers call refuses it too (with a reason), so nothing is stored.
    cleaned, reason = explanation_or_reason(text)
    assert cleaned is None and reason
    assert clean_explanation(text) is None


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("<start>\ncat\t5\n<end>", "<start>/<end>"),
        ("cat\t5\ndog\t0", "token<TAB>value"),  # rows are seen before whitespace collapses
        ("Explanation of neuron 4 behavior:", "Neuron N"),
        ("Explanation of neuron 4 behavior: the main thing this neuron does is find", "Neuron"),
        ("Explanation of neuron 2 behavior: the main thing this neuron does is find years "
         "written as four-digit numbers.", "few-shot"),
        ("There is no straightforward answer. The neuron fires on many tokens.", "refusal"),
        ("...", "no words"),
    ],
)  # fmt: skip
def test_raw_answers_are_cleaned_then_judged(raw, why):
    text, reason = explanation_or_reason(raw)
    assert text is None and why in reason


def test_a_good_first_line_is_kept_whatever_follows():
    assert explanation_or_reason("cats and dogs\n<start>\ncat\t5") == ("cats and dogs", None)
    assert explanation_or_reason('"negations like not"') == ("negations like not", None)


# ------------------------------------------------------------------ in the explain stage


def _stage(llm, records, **settings) -> ExplainStage:
    base = {"temperature": 0.0, "max_tokens": 40, "n_examples": 0, "max_attempts": 2}
    cfg = ExplainerConfig(**{**base, **settings})
    return ExplainStage(TokenRowExplainer(llm, cfg), records, SPLITS)


def test_a_rejected_answer_is_asked_again_and_the_good_one_stored(tmp_path):
    run = make_run(tmp_path, 2)
    asked: dict[str, int] = {}

    def answers(messages, **params):
        unit = re.findall(r"\bw\d+|zzz", messages[-1]["content"])[0]  # the unit's word
        asked[unit] = asked.get(unit, 0) + 1
        return "<start>" if asked[unit] == 1 else f"the word {unit}"

    llm = FakeLLM("fake:retry", answers=answers)
    s = go(_stage(llm, run.records()), run)
    assert (s.done, s.failed) == (2, 0)
    assert sorted(e.text for e in run.explanations()) == ["the word w0", "the word zzz"]
    assert "<start>" not in {e.text for e in run.explanations()}
    assert len(llm.calls) == 4 and run.failures() == []  # one retry per unit


def test_an_explainer_that_always_refuses_leaves_a_failure_with_raw_text_and_reason(tmp_path):
    run = make_run(tmp_path, 2)
    refusal = "I'm sorry, but there is no straightforward answer."
    llm = FakeLLM("fake:refuses", answers=lambda messages, **p: refusal)
    s = go(_stage(llm, run.records(), n_samples=2), run)
    assert (s.done, s.failed) == (0, 2)
    assert not run.path("explanations").exists() or run.explanations() == []
    fails = run.failures()
    assert sorted((f.unit_id, f.sample_index) for f in fails) == [
        ("m/0/0", 0), ("m/0/0", 1), ("m/0/1", 0), ("m/0/1", 1),
    ]  # fmt: skip
    for f in fails:
        assert f.raw == refusal and f.attempts == 2
        assert f.reason == "no usable explanation after 2 attempts: a refusal or non-answer"
    assert len(llm.calls) == 4  # two rounds per unit, both samples asked at once


def test_echoed_token_rows_are_a_failure_naming_the_echo(tmp_path):
    run = make_run(tmp_path, 1)
    llm = FakeLLM("fake:rows", answers=lambda messages, **p: " a\t0\n w0\t4\n b\t0")
    go(_stage(llm, run.records()), run)
    [f] = run.failures()
    assert "token<TAB>value rows" in f.reason and f.raw.startswith(" a\t0")
