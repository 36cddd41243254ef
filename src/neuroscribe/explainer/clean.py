"""Cleaning explainer answers, and refusing non-answers (never stored as explanations)."""

from __future__ import annotations

import re

from neuroscribe.prompts.examples import EXAMPLES

# An explanation is a phrase; anything longer after cleaning is a rambling or runaway
# answer (a server that ignored max_tokens), not an explanation.
MAX_EXPLANATION_CHARS = 500

_PREFIX_RE = re.compile(
    r"^\s*(?:(?:explanation|explaining|explain)(?:\s+of)?\s+neuron\s+\d+(?:'s)?\s+behaviou?r\s*:?)?\s*"
    r"(?:the\s+main\s+thing\s+this\s+neuron\s+does\s+is\s+(?:to\s+)?find(?:s|ing)?\s*:?)?\s*",
    re.IGNORECASE,
)


def clean_explanation(raw: str) -> str | None:
    """Normalise an explainer answer; None when nothing usable is left.

    Keeps the first sentence of the first non-empty line, drops an echoed answer prefix,
    surrounding quotes and a trailing period, and collapses whitespace. More than
    `MAX_EXPLANATION_CHARS` characters left is not usable either.
    """
    lines = [ln.strip() for ln in raw.strip().splitlines() if ln.strip()]
    if not lines:
        return None
    text = _PREFIX_RE.sub("", lines[0], count=1)
    text = text.strip().strip("\"'`“”").strip()
    text = re.sub(r"\s+", " ", text)
    # An explanation is one phrase: keep the first sentence of a rambling answer.
    text = re.split(r"(?<=[a-z0-9)\]])[.!?]\s+(?=[A-Z])", text, maxsplit=1)[0]
    text = text.rstrip(".").strip()
    if len(text) < 2 or len(text) > MAX_EXPLANATION_CHARS:
        return None
    if not re.search(r"[A-Za-z\u00C0-\uFFFF]", text):
        return None
    return text


_EXAMPLE_TEXTS = {ex.explanation.lower() for ex in EXAMPLES}


def is_copied_example(text: str) -> bool:
    """Weak explainers parrot the prompt's few-shot answers; those explain nothing here."""
    return text.lower().strip().rstrip(".") in _EXAMPLE_TEXTS
