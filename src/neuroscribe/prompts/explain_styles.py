"""Explainer prompt styles, each a versioned prompt builder with the same answer form.

- `explain-v1`: one `token<TAB>value` row per token (the reference's layout;
  `prompts.explain`).
- `explain-highlight-v1`: each excerpt as running text with its activating tokens
  marked `<<like this>>` (adjacent activating tokens share one mark), then that
  excerpt's activating tokens and values listed once, as delphi's explainer shows them.
- `explain-summary-v1`: no full excerpts at all: the tokens that reach at least half the
  unit's maximum, with how often they do and their largest value, then one short context
  (a few tokens either side) around each excerpt's strongest token. Lee et al. (2023)
  found a summary of this kind scores as well as full rows with far fewer input tokens.

Every style shows the same few-shot neurons (`prompts.examples`) in its own layout, asks
for the same answer (`...: the main thing this neuron does is find ...`), so the same
cleaner and the same completion-endpoint prompt apply, and drops the weakest excerpts
first (then few-shot neurons) to fit `max_prompt_tokens`. Activations are normalised to
0–10 against the strongest excerpt given, as in `explain-v1`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from neuroscribe.prompts.explain import (
    EXPLAIN_PROMPT_VERSION,
    ExplainPrompt,
    build_explain_prompt,
    prompt_builder,
    styled_render,
)
from neuroscribe.prompts.format import format_token

HIGHLIGHT_VERSION = "explain-highlight-v1"
SUMMARY_VERSION = "explain-summary-v1"

# Tokens either side of an excerpt's strongest token in a summary context.
CONTEXT_BEFORE = 4
CONTEXT_AFTER = 2
# Top tokens a summary lists at most.
SUMMARY_TOKENS = 12

Pairs = Sequence[tuple[Sequence[str], Sequence[int]]]

HIGHLIGHT_SYSTEM = (
    "You are helping to understand the individual neurons of a language model. For each "
    "neuron you are shown excerpts of text in which the tokens where the neuron is active "
    "are marked <<like this>>; after each excerpt its active tokens are listed with their "
    "activation, from 1 (weak) to 10 (the neuron's strongest response). Work out what the "
    "marked tokens have in common, using the surrounding text where it matters, and "
    "describe it in one short phrase. Describe the pattern, do not just list tokens."
)

SUMMARY_SYSTEM = (
    "You are helping to understand the individual neurons of a language model. For each "
    "neuron you are shown the tokens on which it is most active (how often each reaches "
    "a high activation and its largest activation, from 1 to 10), then short contexts "
    "around its strongest activations with the active token marked <<like this>>. Work "
    "out what these tokens have in common, using the contexts where they matter, and "
    "describe it in one short phrase. Describe the pattern, do not just list tokens."
)


def _escape(token: str) -> str:
    # One excerpt per line, and no stray marks: a token that itself contains << or >>
    # must not read as a highlight.
    return format_token(token).replace("<<", "‹‹").replace(">>", "››")


def highlighted_text(tokens: Sequence[str], values: Sequence[int]) -> str:
    """The excerpt as text, adjacent active tokens (value > 0) inside one `<<...>>`."""
    out: list[str] = []
    open_ = False
    for tok, v in zip(tokens, values, strict=True):
        if v > 0 and not open_:
            out.append("<<")
            open_ = True
        elif v <= 0 and open_:
            out.append(">>")
            open_ = False
        out.append(_escape(tok))
    if open_:
        out.append(">>")
    return "".join(out)


def _highlight_block(number: int, excerpts: Pairs) -> str:
    lines = [f"Neuron {number}"]
    for k, (tokens, values) in enumerate(excerpts, start=1):
        lines.append(f"Excerpt {k}: {highlighted_text(tokens, values)}")
        active = [f'"{_escape(t)}" {v}' for t, v in zip(tokens, values, strict=True) if v > 0]
        lines.append("Activations: " + (", ".join(active) if active else "none"))
    return "\n".join(lines) + "\n"


def summary_tokens(excerpts: Pairs, limit: int = SUMMARY_TOKENS) -> list[tuple[str, int, int]]:
    """(token, count, max value) of tokens reaching half the max, most frequent first.

    Ties: larger max value, then first seen. Tokens are compared as written (" red" and
    "red" differ: the leading space is part of what the model sees).
    """
    top = max((v for _, values in excerpts for v in values), default=0)
    if top <= 0:
        return []
    count: Counter[str] = Counter()
    best: dict[str, int] = {}
    for tokens, values in excerpts:
        for t, v in zip(tokens, values, strict=True):
            if v * 2 >= top:
                count[t] += 1
                best[t] = max(best.get(t, 0), v)
    order = {t: i for i, t in enumerate(count)}
    ranked = sorted(count, key=lambda t: (-count[t], -best[t], order[t]))
    return [(t, count[t], best[t]) for t in ranked[:limit]]


def short_context(tokens: Sequence[str], values: Sequence[int]) -> tuple[str, int] | None:
    """A few tokens around the excerpt's strongest token, that token marked; None if silent."""
    if not values or max(values) <= 0:
        return None
    i = max(range(len(values)), key=lambda k: (values[k], -k))
    lo, hi = max(0, i - CONTEXT_BEFORE), min(len(tokens), i + CONTEXT_AFTER + 1)
    text = (
        ("…" if lo > 0 else "")
        + "".join(_escape(t) for t in tokens[lo:i])
        + f"<<{_escape(tokens[i])}>>"
        + "".join(_escape(t) for t in tokens[i + 1 : hi])
        + ("…" if hi < len(tokens) else "")
    )
    return text, values[i]


def _summary_block(number: int, excerpts: Pairs) -> str:
    lines = [f"Neuron {number}", "Most active tokens (times at a high activation, largest):"]
    rows = summary_tokens(excerpts)
    lines += [f'"{_escape(t)}" ×{n} (max {v})' for t, n, v in rows] or ["none"]
    lines.append("Contexts, strongest first:")
    contexts = [c for c in (short_context(t, v) for t, v in excerpts) if c is not None]
    contexts.sort(key=lambda c: -c[1])
    lines += [f"{k}. {text} ({v})" for k, (text, v) in enumerate(contexts, start=1)]
    return "\n".join(lines) + "\n"


def _styled(
    system: str, block: Callable[[int, Pairs], str], version: str
) -> Callable[..., ExplainPrompt]:
    return prompt_builder(styled_render(system, block, version))


build_highlight_prompt = _styled(HIGHLIGHT_SYSTEM, _highlight_block, HIGHLIGHT_VERSION)
build_summary_prompt = _styled(SUMMARY_SYSTEM, _summary_block, SUMMARY_VERSION)

# Prompt version -> builder(excerpts, *, max_prompt_tokens, count_tokens, n_examples).
EXPLAIN_STYLES: dict[str, Callable[..., ExplainPrompt]] = {
    EXPLAIN_PROMPT_VERSION: build_explain_prompt,
    HIGHLIGHT_VERSION: build_highlight_prompt,
    SUMMARY_VERSION: build_summary_prompt,
}

# Short names the CLI accepts beside the versions.
STYLE_ALIASES = {
    "rows": EXPLAIN_PROMPT_VERSION,
    "highlight": HIGHLIGHT_VERSION,
    "summary": SUMMARY_VERSION,
}


def resolve_style(name: str) -> str:
    """A style's prompt version from its version or short name (ValueError if unknown)."""
    version = STYLE_ALIASES.get(name, name)
    if version not in EXPLAIN_STYLES:
        names = ", ".join([*STYLE_ALIASES, *EXPLAIN_STYLES])
        raise ValueError(f"unknown explainer prompt {name!r}; choose one of {names}")
    return version


def build_styled_prompt(
    style: str,
    excerpts: Sequence[tuple[Sequence[str], Sequence[float]]],
    **kw: object,
) -> ExplainPrompt:
    return EXPLAIN_STYLES[resolve_style(style)](excerpts, **kw)
