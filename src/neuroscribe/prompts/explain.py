"""The explainer prompt: top-activating excerpts in, one short explanation out."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from neuroscribe.errors import ConfigError
from neuroscribe.prompts.examples import EXAMPLES, ExampleExcerpt
from neuroscribe.prompts.format import approx_token_count, format_token
from neuroscribe.scorer import normalize_activations

EXPLAIN_PROMPT_VERSION = "explain-v1"

ANSWER_PREFIX = "the main thing this neuron does is find"

SYSTEM = (
    "You are helping to understand the individual neurons of a language model. "
    "For each neuron you are shown excerpts of text, one token per line, written as "
    "token<TAB>activation. Activations run from 0 (the neuron is silent) to 10 (its "
    "strongest response). Work out what the tokens with high activations have in "
    "common, using the surrounding text where it matters, and describe it in one short "
    "phrase. Describe the pattern, do not just list tokens."
)


class PromptTooLong(ConfigError):
    """Even the shortest deliberate version of a prompt exceeds the context budget."""


@dataclass
class ExplainPrompt:
    messages: list[dict[str, str]]
    text: str  # the same prompt for completion endpoints, ending with ANSWER_PREFIX
    n_excerpts: int
    prompt_version: str = EXPLAIN_PROMPT_VERSION


def _excerpt_block(tokens: Sequence[str], values: Sequence[int]) -> list[str]:
    lines = ["<start>"]
    lines += [f"{format_token(t)}\t{v}" for t, v in zip(tokens, values, strict=True)]
    lines.append("<end>")
    return lines


def _neuron_block(number: int, excerpts: Sequence[tuple[Sequence[str], Sequence[int]]]) -> str:
    lines = [f"Neuron {number}", "Activations:"]
    for tokens, values in excerpts:
        lines += _excerpt_block(tokens, values)
    # Sparse neurons: repeat the non-zero rows so they are not lost among the zeros.
    total = sum(len(v) for _, v in excerpts)
    nonzero = [
        (t, v) for tokens, values in excerpts for t, v in zip(tokens, values, strict=False) if v > 0
    ]
    if nonzero and len(nonzero) < 0.2 * total:
        lines.append("Same activations, non-zero tokens only:")
        lines += _excerpt_block([t for t, _ in nonzero], [v for _, v in nonzero])
    return "\n".join(lines) + "\n"


def _answer(number: int, explanation: str | None = None) -> str:
    head = f"Explanation of neuron {number} behavior: {ANSWER_PREFIX}"
    return head if explanation is None else f"{head} {explanation}."


def _example_pairs(ex: Sequence[ExampleExcerpt]) -> list[tuple[Sequence[str], Sequence[int]]]:
    return [(e.tokens, e.values) for e in ex]


def prompt_builder(
    render: Callable[[list[tuple[Sequence[str], list[int]]], int], ExplainPrompt],
) -> Callable[..., ExplainPrompt]:
    """A style's public builder: `build(excerpts, *, max_prompt_tokens, count_tokens,
    n_examples)` from its `render(pairs, n_examples)` (see `fit_prompt`)."""

    def build(
        excerpts: Sequence[tuple[Sequence[str], Sequence[float]]],
        *,
        max_prompt_tokens: int | None = None,
        count_tokens: Callable[[str], int] = approx_token_count,
        n_examples: int = 3,
    ) -> ExplainPrompt:
        return fit_prompt(
            render,
            excerpts,
            max_prompt_tokens=max_prompt_tokens,
            count_tokens=count_tokens,
            n_examples=n_examples,
        )

    return build


def fit_prompt(
    render: Callable[[list[tuple[Sequence[str], list[int]]], int], ExplainPrompt],
    excerpts: Sequence[tuple[Sequence[str], Sequence[float]]],
    *,
    max_prompt_tokens: int | None,
    count_tokens: Callable[[str], int],
    n_examples: int,
) -> ExplainPrompt:
    """`render(pairs, n_examples)` on values normalised to 0–10, made to fit the budget
    (every prompt style shares this): weakest excerpts dropped first, then examples."""
    if not excerpts:
        raise ValueError("cannot explain a unit without excerpts")
    # Normalise against the max over all excerpts given, so dropping weak ones later
    # does not change the values the explainer sees for the strong ones.
    values = normalize_activations([a for _, a in excerpts])
    pairs = [(tokens, v) for (tokens, _), v in zip(excerpts, values, strict=False)]
    n_ex = min(n_examples, len(EXAMPLES))
    n = len(pairs)
    while True:
        prompt = render(pairs[:n], n_ex)
        if max_prompt_tokens is None or count_tokens(prompt.text) <= max_prompt_tokens:
            return prompt
        if n > 1:
            n -= 1
        elif n_ex > 0:
            n_ex -= 1
        else:
            raise PromptTooLong(
                f"the {prompt.prompt_version} explainer prompt needs "
                f"{count_tokens(prompt.text)} tokens with a single excerpt and no examples, "
                f"over the budget of {max_prompt_tokens}"
            )


def styled_render(
    system: str,
    block: Callable[[int, Sequence[tuple[Sequence[str], Sequence[int]]]], str],
    version: str,
) -> Callable[[list[tuple[Sequence[str], list[int]]], int], ExplainPrompt]:
    """A prompt style's `render(pairs, n_examples)`: the system text, each few-shot neuron
    as `block` writes it with its answer, then the unit's block and the answer to complete.
    Every style shares this frame; only the system text and the block differ."""

    def render(pairs: list[tuple[Sequence[str], list[int]]], n_examples: int) -> ExplainPrompt:
        messages = [{"role": "system", "content": system}]
        text_parts = [system + "\n"]
        for k, ex in enumerate(EXAMPLES[:n_examples], start=1):
            b = block(k, _example_pairs(ex.excerpts))
            messages.append({"role": "user", "content": b})
            messages.append({"role": "assistant", "content": _answer(k, ex.explanation)})
            text_parts.append(f"\n{b}{_answer(k, ex.explanation)}\n")
        target = n_examples + 1
        b = block(target, pairs)
        messages.append(
            {
                "role": "user",
                "content": b + f'\nAnswer in the same form, completing: "{_answer(target)} ..."',
            }
        )
        text_parts.append(f"\n{b}{_answer(target)}")
        return ExplainPrompt(
            messages=messages,
            text="".join(text_parts),
            n_excerpts=len(pairs),
            prompt_version=version,
        )

    return render


_render = styled_render(SYSTEM, _neuron_block, EXPLAIN_PROMPT_VERSION)


# Build the prompt from (tokens, raw activations) excerpts, strongest first. If it would not
# fit in `max_prompt_tokens`, whole excerpts are dropped from the end (weakest first) and
# then few-shot examples; an excerpt is never cut.
build_explain_prompt = prompt_builder(_render)
