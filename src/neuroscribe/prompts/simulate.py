"""Simulator prompts: an explanation in, a predicted activation per token out.

`SimulationPrompt` keeps the all-at-once prompt as pieces (a shared prefix, one row per
token, a suffix) so a local backend can build it token id by token id and an API
backend can find every `unknown` slot without guessing.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from neuroscribe.errors import ConfigError
from neuroscribe.prompts.examples import EXAMPLES, SIMULATION_EXAMPLES_V2, ExampleNeuron
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


def _system_v2(scale_max: int) -> str:
    return (
        "Each neuron below fires on the tokens its explanation describes and on nothing "
        f"else. Next to every token write how well it fits the explanation: 0 if it does "
        f"not fit, 1 to {scale_max} if it does (higher fits better)."
    )


def _example_rows(ex: ExampleNeuron, scale_max: int, slot_text: str = "") -> str:
    rows = []
    for excerpt in ex.excerpts[:1]:
        rows.append("<start>")
        for t, v in zip(excerpt.tokens, excerpt.values, strict=True):
            rows.append(f"{format_token(t)}\t{rescale(v, 10, scale_max)}")
        rows.append("<end>")
    return "\n".join(rows) + "\n"


@dataclass(frozen=True)
class SimulationStyle:
    """One versioned simulation method: the prompt's text, its few-shot units, the slot
    placeholder, and how a slot's value distribution becomes a prediction.

    `readout`: "expected" (Σ v·p, the reference) or "p-active" (P(value > 0), the
    probability that the token fits). `contrast`: an explanation whose prediction is
    subtracted token by token (None: no subtraction). The subtraction removes what the
    model predicts for a token whatever the explanation says (its prior that content
    tokens fire), which otherwise swamps the explanation in small models.
    """

    version: str
    system: Callable[[int], str]
    examples: tuple[ExampleNeuron, ...]
    header: Callable[[int, str], str]
    slot: str = UNKNOWN
    readout: str = "expected"
    contrast: str | None = None
    # "rows": one `token<TAB>slot` line per token; "inline": the excerpt as it reads, the
    # value of each token read at its own last position (one prompt token per token).
    layout: str = "rows"


def _header_v1(k: int, explanation: str) -> str:
    return f"\nNeuron {k}\nExplanation: {explanation}\nActivations:\n<start>\n"


def _header_v2(k: int, explanation: str) -> str:
    # The explanation restated right above the excerpt: small models attend to what is
    # near, and the few-shot explanations in between otherwise compete with it.
    return f'\nNeuron {k} fires on: {explanation}\nFits "{explanation}"?\n<start>\n'


STYLE_V1 = SimulationStyle(
    version="simulate-v1", system=_system, examples=EXAMPLES, header=_header_v1
)

# The generic explanation whose prediction simulate-v2 subtracts.
CONTRAST_EXPLANATION = "nothing in particular"

STYLE_V2 = SimulationStyle(
    version="simulate-v2",
    system=_system_v2,
    examples=SIMULATION_EXAMPLES_V2,
    header=_header_v2,
    slot="?",
    readout="p-active",
    contrast=CONTRAST_EXPLANATION,
)

# simulate-v1 with compact rows: `token<TAB>` and a newline, no `unknown` filler, so a
# one-token row costs 3 tokens instead of 4 (the few-shot rows keep their values). The
# slot has no text to find in an echoed prompt, so it runs on the exact strategy only.
STYLE_V1_COMPACT = SimulationStyle(
    version="simulate-v1-compact",
    system=_system,
    examples=EXAMPLES,
    header=_header_v1,
    slot="",
)

# The prompt a simulator *trained* on the task reads (bench/finetune_simulator.py, the
# bundled `hf:embedded?adapter=simulator`): simulate-v1's instructions and compact rows
# with no few-shot units, the model having learnt the task instead. Other models need
# the few-shot units, so this style is for tuned models only.
STYLE_TUNED_V1 = SimulationStyle(
    version="simulate-tuned-v1",
    system=_system,
    examples=(),
    header=_header_v1,
    slot="",
)


def _system_inline(scale_max: int) -> str:
    return (
        "You are predicting how a neuron of a language model responds to text. You get an "
        "explanation of what the neuron looks for and an excerpt as it reads. At every "
        f"token the neuron's activation is an integer from 0 (no response) to {scale_max} "
        "(strongest response). Most tokens get 0; only tokens that match the explanation "
        "get high values."
    )


# The prompt of a simulator trained on the inline layout (the bundled adapter since
# 2026-12-06): the excerpt as plain text after the explanation, each token's value read
# from the digit distribution at that token. One prompt token per subject token instead
# of three, and the text reads as text (context rules need no reassembling of rows).
# An untrained model reads a next-token guess there, not a value: tuned models only.
STYLE_TUNED_INLINE_V1 = replace(
    STYLE_TUNED_V1, version="simulate-tuned-inline-v1", system=_system_inline, layout="inline"
)

SIMULATION_STYLES: dict[str, SimulationStyle] = {
    s.version: s
    for s in (STYLE_V1, STYLE_V2, STYLE_V1_COMPACT, STYLE_TUNED_V1, STYLE_TUNED_INLINE_V1)
}
# The default stays simulate-v1: on the ground-truth suite's dev half simulate-v2 did not
# rank true explanations first more often with SmolLM2-135M (35% vs 40% of 20 units;
# bench/README.md, "Ground-truth check"). A version becomes the default by winning there.
DEFAULT_SIMULATE_PROMPT = "simulate-v1"


def simulation_style(version: str | None) -> SimulationStyle:
    """The style a prompt version names (None: the default)."""
    key = version or DEFAULT_SIMULATE_PROMPT
    if key not in SIMULATION_STYLES:
        raise ConfigError(
            f"unknown simulation prompt {key!r}; choose one of {', '.join(SIMULATION_STYLES)}"
        )
    return SIMULATION_STYLES[key]


def default_examples(style: SimulationStyle) -> int:
    """Few-shot units a style uses by default (simulate-v1: 2 of its 3, as in 0.1)."""
    return 2 if style in (STYLE_V1, STYLE_V1_COMPACT) else len(style.examples)


@dataclass
class SimulationPrompt:
    """The all-at-once prompt: prefix + one `token<TAB>slot` row per token + suffix."""

    prefix: str
    rows: list[str]
    suffix: str = "<end>\n"
    scale_max: int = 10
    prompt_version: str = SIMULATE_PROMPT_VERSION
    slot: str = UNKNOWN
    # Characters of `prefix` that do not depend on the explanation (instructions and
    # few-shot units): a local backend computes them once for every explanation.
    shared_chars: int = 0
    layout: str = "rows"

    def row_head(self, i: int) -> str:
        """Row i up to its value slot (the slot's distribution is read right after this);
        inline: the token itself."""
        return self.rows[i] if self.layout == "inline" else f"{self.rows[i]}\t"

    def row_fill(self, fill: str | None = None) -> str:
        """What follows a row's head: the slot and a newline (nothing when inline)."""
        if self.layout == "inline":
            return ""
        return f"{self.slot if fill is None else fill}\n"

    def text(self, fill: str | None = None) -> str:
        body = "".join(f"{self.row_head(i)}{self.row_fill(fill)}" for i in range(len(self.rows)))
        return self.prefix + body + self.suffix


def build_simulation_prompt(
    explanation: str,
    tokens: Sequence[str],
    *,
    scale_max: int = 10,
    n_examples: int | None = None,
    max_prompt_tokens: int | None = None,
    count_tokens: Callable[[str], int] = approx_token_count,
    version: str | None = SIMULATE_PROMPT_VERSION,
) -> SimulationPrompt:
    """The completion-style all-at-once prompt, shortened by dropping few-shot examples.

    `n_examples` None: every few-shot unit of the style (simulate-v1: 2 of its 3).
    """
    style = simulation_style(version)
    if n_examples is None:
        n_examples = default_examples(style)
    n_ex = min(n_examples, len(style.examples))
    # Inline, a token stands as it is (newlines included); only an empty one needs a
    # visible stand-in, or it would have no position to read its value from.
    if style.layout == "inline":
        rows = [t if t else format_token(t) for t in tokens]
    else:
        rows = [format_token(t) for t in tokens]
    while True:
        parts = [style.system(scale_max) + "\n"]
        for k, ex in enumerate(style.examples[:n_ex], start=1):
            head = style.header(k, ex.explanation)
            # The header ends by opening the excerpt; the example rows bring their own.
            parts.append(head.removesuffix("<start>\n") + _example_rows(ex, scale_max))
        shared = sum(len(p) for p in parts)
        parts.append(style.header(n_ex + 1, explanation.strip()))
        prompt = SimulationPrompt(
            prefix="".join(parts),
            rows=rows,
            scale_max=scale_max,
            prompt_version=style.version,
            slot=style.slot,
            shared_chars=shared,
            layout=style.layout,
        )
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
