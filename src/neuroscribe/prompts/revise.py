"""Prompts of revision with counterexamples: propose test texts, then revise.

Round r of the revision explainer asks the explainer twice:

1. `proposal_messages`: given its explanation, write texts the unit should fire on
   (`ACTIVE:` lines) and texts it should stay silent on (`SILENT:` lines). Small models
   rarely keep that format, so when it parses to nothing each side is asked on its own
   (`sentence_messages`: "write one sentence that ..."; n samples, the first line of each);
2. `revision_messages`: the explain prompt it answered (same style, same excerpts), its
   answer, then what the unit really did on those texts (each text with its strongest
   token and activation on the prompt's 0–10 scale), asking for a revised explanation
   in the same answer form.

Proposed texts are untrusted model output: kept to one line each, at most
`MAX_PROBE_CHARS` characters, deduplicated, and shown back escaped like any token.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from neuroscribe.prompts.explain import _answer
from neuroscribe.prompts.format import format_token

REVISE_PROMPT_VERSION = "revise-v2"  # v2: each side asked alone when the format fails
MAX_PROBE_CHARS = 200

_LINE = re.compile(r"^\s*(?:[-*•]|\d+[.)])?\s*(active|silent)\s*[:\-]\s*(.+?)\s*$", re.I)


@dataclass(frozen=True)
class ProbeResult:
    text: str
    expected: str  # "active" | "silent"
    value: int  # the strongest activation on the prompt's 0–10 scale
    raw_max: float  # the same in the unit's own units
    top_token: str  # where it was strongest


def proposal_messages(explanation: str, n: int) -> list[dict[str, str]]:
    return [
        {
            "role": "system",
            "content": "You design tests for explanations of language-model neurons.",
        },
        {
            "role": "user",
            "content": (
                f'A neuron is explained as: "{explanation}".\n'
                f"Write {n} short, varied texts (one sentence each) on which this neuron "
                f"should be strongly active, and {n} similar-looking texts on which it "
                "should stay silent. One per line, each line starting with ACTIVE: or "
                "SILENT:, nothing else."
            ),
        },
    ]


def sentence_messages(explanation: str, kind: str) -> list[dict[str, str]]:
    """One side of the proposals on its own: a single sentence, which small models manage."""
    want = (
        f"that contains a clear example of: {explanation}"
        if kind == "active"
        else f"about something else entirely, with no example of: {explanation}"
    )
    return [{"role": "user", "content": f"Write one short sentence {want}. Only the sentence."}]


def parse_sentence(answer: str) -> str | None:
    """The first line of an answer as a probe text (bullets and quotes stripped), or None."""
    for line in answer.splitlines():
        text = re.sub(r"^\s*(?:[-*•]|\d+[.)]|sentence\s*:)\s*", "", line, flags=re.I)
        text = text.strip().strip("\"'“”").strip()[:MAX_PROBE_CHARS].strip()
        if text and "write one short sentence" not in text.lower():
            return text
    return None


def parse_proposals(answer: str, n: int) -> list[tuple[str, str]]:
    """(text, "active"|"silent") pairs from the answer: at most n of each, deduplicated."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    counts = {"active": 0, "silent": 0}
    for line in answer.splitlines():
        m = _LINE.match(line)
        if not m:
            continue
        kind, text = m.group(1).lower(), m.group(2).strip().strip("\"'“”")
        text = text[:MAX_PROBE_CHARS].strip()
        if not text or text.lower() in seen or counts[kind] >= n:
            continue
        seen.add(text.lower())
        counts[kind] += 1
        out.append((text, kind))
    return out


def _show(text: str) -> str:
    return format_token(text)


def revision_messages(
    explain_messages: Sequence[dict[str, str]],
    number: int,
    explanation: str,
    results: Sequence[ProbeResult],
) -> list[dict[str, str]]:
    """The explain prompt, the explainer's answer, the test results, a request to revise."""
    lines = [
        "Your explanation was tested on new texts. For each: what you expected, then the "
        "neuron's strongest activation on it (0–10, the scale above) and on which token.",
    ]
    for r in results:
        where = f' on "{_show(r.top_token)}"' if r.value > 0 else ""
        lines.append(f"- expected {r.expected}: {_show(r.text)} → {r.value}{where}")
    lines.append(
        "Revise the explanation so it predicts both these results and the excerpts above; "
        "keep what was right. Answer in the same form, completing: "
        f'"{_answer(number)} ..."'
    )
    return [
        *explain_messages,
        {"role": "assistant", "content": _answer(number, explanation)},
        {"role": "user", "content": "\n".join(lines)},
    ]
