"""Prompts of the classifier scorers (detection, fuzzing, intruder), versioned.

Kept deliberately short: the excerpts are most of every prompt, so the instructions and
the answer format are a few dozen tokens, with no few-shot examples. That is what makes
these scorers a small fraction of simulation's cost (one prompt per few excerpts instead
of a few-shot prompt per excerpt).

Excerpts are written on one numbered line each: the subject model's tokens joined, with
newlines and tabs spelled as escapes so a line is always one excerpt. Fuzzing marks
tokens as `<<tok>>` (delphi's convention), consecutive marked tokens as one span.
"""

from __future__ import annotations

from collections.abc import Sequence

from neuroscribe.llm.messages import Message

DETECTION_PROMPT_VERSION = "detection-v1"
FUZZING_PROMPT_VERSION = "fuzzing-v1"
INTRUDER_PROMPT_VERSION = "intruder-v1"

_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})
OPEN, CLOSE = "<<", ">>"

_SYSTEM = (
    "You check explanations of neurons in a language model. A neuron activates on the "
    "text its explanation describes."
)

_YES_NO = "Answer with one line per excerpt: its number, then yes or no."


def render_excerpt(tokens: Sequence[str], marked: set[int] | frozenset[int] = frozenset()) -> str:
    """One excerpt on one line; tokens at `marked` positions between << and >>."""
    out: list[str] = []
    for i, tok in enumerate(tokens):
        text = tok.translate(_ESCAPES)
        if i in marked and i - 1 not in marked:
            # Keep a leading space outside the marks: "the <<cat>>", not "the<< cat>>".
            stripped = text.lstrip(" ")
            out.append(text[: len(text) - len(stripped)] + OPEN)
            text = stripped
        out.append(text)
        if i in marked and i + 1 not in marked:
            out.append(CLOSE)
    return "".join(out).strip()


def _numbered(excerpts: Sequence[str]) -> str:
    return "\n".join(f"{k}. {text}" for k, text in enumerate(excerpts, 1))


def build_detection_messages(explanation: str, excerpts: Sequence[str]) -> list[Message]:
    """Does the neuron activate on each excerpt? (yes/no per excerpt)."""
    user = (
        f"Explanation: {explanation.strip()}\n\nExcerpts:\n{_numbered(excerpts)}\n\n"
        f"For each excerpt: does the neuron activate on it? {_YES_NO}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


# One excerpt per prompt, answered by its first token: for judges whose yes/no is read
# from the next-token distribution (local models; `ClassifierScorer` readout
# "first-token"), so small models that cannot keep a numbered answer format still answer.
ONE_SUFFIX = "-one"
_ONE = "Answer yes or no."


def build_detection_one_message(explanation: str, excerpt: str) -> list[Message]:
    """Does the neuron activate on this one excerpt? (answered by the first token)."""
    user = (
        f"Explanation: {explanation.strip()}\n\nExcerpt: {excerpt}\n\n"
        f"Does the neuron activate on this excerpt? {_ONE}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def build_fuzzing_one_message(explanation: str, excerpt: str) -> list[Message]:
    """Are this excerpt's marked tokens the ones the explanation describes?"""
    user = (
        f"Explanation: {explanation.strip()}\n\nExcerpt, some tokens marked {OPEN}like "
        f"this{CLOSE}: {excerpt}\n\nAre the marked tokens where the neuron activates, as "
        f"the explanation says? {_ONE}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def build_fuzzing_messages(explanation: str, excerpts: Sequence[str]) -> list[Message]:
    """Are the marked tokens of each excerpt the ones the explanation describes?"""
    user = (
        f"Explanation: {explanation.strip()}\n\nExcerpts, some tokens marked {OPEN}like "
        f"this{CLOSE}:\n{_numbered(excerpts)}\n\nFor each excerpt: are the marked tokens "
        f"where the neuron activates, as the explanation says? {_YES_NO}"
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def build_intruder_messages(explanation: str, excerpts: Sequence[str]) -> list[Message]:
    """Which of these excerpts does the neuron activate on? (SAEBench's multiple choice)."""
    user = (
        f"Explanation: {explanation.strip()}\n\nExcerpts:\n{_numbered(excerpts)}\n\n"
        "Which excerpts does the neuron activate on? Answer with their numbers separated "
        "by commas, or none."
    )
    return [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]


def yes_no_answer(answers: Sequence[bool]) -> str:
    """The well-formed answer to a yes/no prompt (what a dry run counts as completion)."""
    return "\n".join(f"{k} {'yes' if a else 'no'}" for k, a in enumerate(answers, 1))


def intruder_answer(picked: Sequence[int]) -> str:
    return ", ".join(str(k) for k in picked) or "none"


__all__ = [
    "CLOSE",
    "DETECTION_PROMPT_VERSION",
    "FUZZING_PROMPT_VERSION",
    "INTRUDER_PROMPT_VERSION",
    "OPEN",
    "build_detection_messages",
    "build_fuzzing_messages",
    "build_intruder_messages",
    "intruder_answer",
    "render_excerpt",
    "yes_no_answer",
]
