"""The explainer: top-activating train excerpts in, cleaned explanations out."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel

from neuroscribe.errors import OutputError
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import LLM
from neuroscribe.prompts import ANSWER_PREFIX, EXPLAIN_PROMPT_VERSION, build_explain_prompt
from neuroscribe.prompts.examples import EXAMPLES
from neuroscribe.schema import Usage
from neuroscribe.splits import Excerpt


class ExplainerConfig(BaseModel):
    n_samples: int = 1
    temperature: float = 1.0
    max_tokens: int = 60
    max_attempts: int = 3
    endpoint: Literal["chat", "completions"] = "chat"
    max_prompt_tokens: int | None = None
    n_examples: int = 3


_PREFIX_RE = re.compile(
    r"^\s*(?:(?:explanation|explaining|explain)(?:\s+of)?\s+neuron\s+\d+(?:'s)?\s+behaviou?r\s*:?)?\s*"
    r"(?:the\s+main\s+thing\s+this\s+neuron\s+does\s+is\s+(?:to\s+)?find(?:s|ing)?\s*:?)?\s*",
    re.IGNORECASE,
)


def clean_explanation(raw: str) -> str | None:
    """Normalise an explainer answer; None when nothing usable is left.

    Keeps the first sentence of the first non-empty line, drops an echoed answer prefix,
    surrounding quotes and a trailing period, and collapses whitespace.
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
    if len(text) < 2 or not re.search(r"[A-Za-z\u00C0-\uFFFF]", text):
        return None
    return text


_EXAMPLE_TEXTS = {ex.explanation.lower() for ex in EXAMPLES}


def is_copied_example(text: str) -> bool:
    """Weak explainers parrot the prompt's few-shot answers; those explain nothing here."""
    return text.lower().strip().rstrip(".") in _EXAMPLE_TEXTS


@dataclass
class ExplainOutcome:
    texts: list[tuple[int, str, str]] = field(default_factory=list)  # (sample, text, raw)
    failed: list[tuple[int, str]] = field(default_factory=list)  # (sample, raw)
    usage: Usage = field(default_factory=Usage)
    prompt_version: str = EXPLAIN_PROMPT_VERSION


async def explain_excerpts(
    llm: LLM, train: list[Excerpt], config: ExplainerConfig
) -> ExplainOutcome:
    """Sample `n_samples` explanations; unusable answers are asked again, then reported.

    An answer that is empty, unparseable or a copy of a few-shot example's explanation
    after `max_attempts` rounds is returned in `failed` with its raw text, never as an
    explanation.
    """
    if not train:
        raise OutputError("no train excerpts to explain")
    prompt = build_explain_prompt(
        [(e.record.tokens, e.record.activations) for e in train],
        max_prompt_tokens=config.max_prompt_tokens,
        n_examples=config.n_examples,
    )
    outcome = ExplainOutcome(prompt_version=prompt.prompt_version)
    missing = list(range(config.n_samples))
    last_raw: dict[int, str] = {}
    for _ in range(config.max_attempts):
        if not missing:
            break
        if config.endpoint == "chat":
            resp = await llm.chat(
                prompt.messages,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
            )
        else:
            resp = await llm.complete(
                prompt.text,
                n=len(missing),
                temperature=config.temperature,
                max_tokens=config.max_tokens,
                stop=["\n"],
            )
        outcome.usage = outcome.usage.add(resp.usage)
        still: list[int] = []
        answers = [c.text for c in resp.choices]
        for i, sample in enumerate(missing):
            raw = answers[i] if i < len(answers) else ""
            text = clean_explanation(raw)
            if text is None or is_copied_example(text):
                last_raw[sample] = raw
                still.append(sample)
            else:
                outcome.texts.append((sample, text, raw))
        if still:
            # Else the retry is answered from the response cache with the same answer.
            discard_cached(llm, resp)
        missing = still
    outcome.failed = [(s, last_raw.get(s, "")) for s in missing]
    outcome.texts.sort()
    return outcome


__all__ = [
    "ANSWER_PREFIX",
    "ExplainOutcome",
    "ExplainerConfig",
    "clean_explanation",
    "explain_excerpts",
]
