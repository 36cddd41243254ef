"""Simulator prompts: an explanation in, a predicted activation per token out.

`SimulationPrompt` keeps the all-at-once prompt as pieces (a shared prefix, one row per
token, a suffix) so a local backend can build it token id by token id and an API
backend can find every `unknown` slot without guessing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuroscribe.prompts.examples import EXAMPLES, ExampleNeuron
from neuroscribe.prompts.explain import PromptTooLong
from neuroscribe.prompts.format import approx_token_count, format_token, rescale

SIMULATE_PROMPT_VERSION = "simulate-v1"
UNKNOWN = "unknown"


def _system(scale_max: int) -> str:
    return (
        "You are predicting how a neuron of a language model responds to text. You get an "
        "explanation of what the neuron looks for and an excerpt, one token per line. For "
        f"every token give the neuron's activation, an integer from 0 (no response) to "
        f"{scale_max} (strongest response). Most tokens get 0; only tokens that match the "
        "explanation get high values."
    )


def _example_rows(ex: ExampleNeuron, scale_max: int) -> str:
    rows = []
    for excerpt in ex.excerpts[:1]:
        rows.append("<start>")
        for t, v in zip(excerpt.tokens, excerpt.values, strict=True):
            rows.append(f"{format_token(t)}\t{rescale(v, 10, scale_max)}")
        rows.append("<end>")
    return "\n".join(rows) + "\n"


@dataclass
class SimulationPrompt:
    """The all-at-once prompt: prefix + one `token<TAB>unknown` row per token + suffix."""

    prefix: str
    rows: list[str]
    suffix: str = "<end>\n"
    scale_max: int = 10
    prompt_version: str = SIMULATE_PROMPT_VERSION

    def row_head(self, i: int) -> str:
        """Row i up to its value slot (the slot's distribution is read right after this)."""
        return f"{self.rows[i]}\t"

    def text(self, fill: str = UNKNOWN) -> str:
        body = "".join(f"{self.row_head(i)}{fill}\n" for i in range(len(self.rows)))
        return self.prefix + body + self.suffix


def build_simulation_prompt(
    explanation: str,
    tokens: Sequence[str],
    *,
    scale_max: int = 10,
    n_examples: int = 2,
    max_prompt_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_token_count,
) -> SimulationPrompt:
    """The completion-style all-at-once prompt, shortened by dropping few-shot examples."""
    n_ex = min(n_examples, len(EXAMPLES))
    rows = [format_token(t) for t in tokens]
    while True:
        parts = [_system(scale_max) + "\n"]
        for k, ex in enumerate(EXAMPLES[:n_ex], start=1):
            parts.append(
                f"\nNeuron {k}\nExplanation: {ex.explanation}\nActivations:\n"
                + _example_rows(ex, scale_max)
            )
        k = n_ex + 1
        parts.append(f"\nNeuron {k}\nExplanation: {explanation.strip()}\nActivations:\n<start>\n")
        prompt = SimulationPrompt(prefix="".join(parts), rows=rows, scale_max=scale_max)
        if max_prompt_tokens is None or count_tokens(prompt.text()) <= max_prompt_tokens:
            return prompt
        if n_ex == 0:
            raise PromptTooLong(
                f"the simulation prompt for a {len(tokens)}-token excerpt needs "
                f"{count_tokens(prompt.text())} tokens without examples, over the budget "
                f"of {max_prompt_tokens}"
            )
        n_ex -= 1


def _token_list(tokens: Sequence[str]) -> str:
    return "<start>\n" + "".join(f"{format_token(t)}\n" for t in tokens) + "<end>"


def build_chat_simulation_messages(
    explanation: str, tokens: Sequence[str], *, scale_max: int = 10, n_examples: int = 2
) -> list[dict[str, str]]:
    """Chat prompt: the model rewrites each token with its value (`token<TAB>value`)."""
    instructions = (
        _system(scale_max)
        + " Answer with exactly one line per token, in order: the token as given, a tab, "
        "and its activation. Write nothing else."
    )
    messages = [{"role": "system", "content": instructions}]
    for ex in EXAMPLES[:n_examples]:
        e = ex.excerpts[0]
        messages.append(
            {"role": "user", "content": f"Explanation: {ex.explanation}\n{_token_list(e.tokens)}"}
        )
        answer = "\n".join(
            f"{format_token(t)}\t{rescale(v, 10, scale_max)}"
            for t, v in zip(e.tokens, e.values, strict=True)
        )
        messages.append({"role": "assistant", "content": answer})
    messages.append(
        {"role": "user", "content": f"Explanation: {explanation.strip()}\n{_token_list(tokens)}"}
    )
    return messages


def build_json_simulation_messages(
    explanation: str, tokens: Sequence[str], *, scale_max: int = 10, n_examples: int = 2
) -> list[dict[str, str]]:
    """Chat prompt for JSON output: {"activations": [one integer per token]}."""
    instructions = (
        _system(scale_max)
        + ' Answer with a JSON object {"activations": [...]} holding exactly one integer '
        "per token, in order, and nothing else."
    )
    messages = [{"role": "system", "content": instructions}]
    for ex in EXAMPLES[:n_examples]:
        e = ex.excerpts[0]
        messages.append(
            {
                "role": "user",
                "content": f"Explanation: {ex.explanation}\n{len(e.tokens)} tokens:\n"
                + _token_list(e.tokens),
            }
        )
        values = [rescale(v, 10, scale_max) for v in e.values]
        messages.append({"role": "assistant", "content": json.dumps({"activations": values})})
    messages.append(
        {
            "role": "user",
            "content": f"Explanation: {explanation.strip()}\n{len(tokens)} tokens:\n"
            + _token_list(tokens),
        }
    )
    return messages


def activations_json_schema(n_tokens: int, scale_max: int = 10) -> dict:
    return {
        "type": "object",
        "properties": {
            "activations": {
                "type": "array",
                "items": {"type": "integer", "minimum": 0, "maximum": scale_max},
                "minItems": n_tokens,
                "maxItems": n_tokens,
            }
        },
        "required": ["activations"],
        "additionalProperties": False,
    }
