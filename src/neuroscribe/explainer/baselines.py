"""Baseline explainers that need no LLM: the yardstick and the floor of a comparison.

`token-lookup` is the token-lookup baseline of OpenAI's paper: it names the unit's most
frequent high-activating tokens. Every occurrence of a token whose activation is at
least half the unit's largest activation over its train excerpts counts once; the
`n_tokens` most frequent (ties: larger summed activation, then first seen) are written
as `the tokens "X", "Y", "Z"`. Tokens are shown without surrounding whitespace (so " the"
and "the" count as one token), whitespace-only tokens as `\\n`, `\\t` or `␣`. An
explanation an LLM writes should beat it: it is what reading off the strongest tokens
already gives. It is deterministic, so it writes one sample per unit whatever
`n_samples` says (more would be the same text, scored again for nothing).

`random` is the floor: a plausible-looking phrase ("verbs in the past tense") drawn from
a fixed list, independent of the unit's activations. Each unit gets its own shuffle of
the list, seeded by `seed` and the unit id, and sample k takes the k-th phrase (so a
unit's samples differ); the same unit, sample and seed always get the same phrase. A
scorer that gives it more than chance is measuring something other than explanations.

Both cost nothing (zero usage, no requests) and take the settings `BaselineConfig`
describes; built from the explain stage's `ExplainerConfig` they keep its `n_samples`.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuroscribe.explainer.base import ExplainOutcome, ExplainTask
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate

# A token counts for token-lookup when its activation reaches this share of the max.
HIGH_FRACTION = 0.5


class BaselineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n_samples: int = Field(1, ge=1)  # random only: token-lookup writes one sample
    n_tokens: int = Field(5, ge=1)  # token-lookup: tokens named in the explanation
    seed: int = 0  # random: which phrases each unit gets


_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣", '"': '\\"'})


def show_token(token: str) -> str:
    """A token as an explanation names it: without surrounding whitespace, a
    whitespace-only token spelled out (`\\n`, `␣`), quotes escaped."""
    if token == "":
        return "<empty>"
    return (token.strip() or token).translate(_ESCAPES)


def top_tokens(
    excerpts: Sequence[tuple[Sequence[str], Sequence[float]]], n_tokens: int = 5
) -> list[tuple[str, int]]:
    """The `n_tokens` most frequent high-activating tokens, as (shown token, count).

    High: an activation of at least `HIGH_FRACTION` of the largest over all `excerpts`
    (which must be positive; none otherwise). Tokens are grouped by `show_token`; ties
    go to the larger summed activation, then to the token seen first.
    """
    peak = max((a for _, acts in excerpts for a in acts), default=0.0)
    if peak <= 0:
        return []
    counts: Counter[str] = Counter()
    mass: Counter[str] = Counter()
    first: dict[str, int] = {}
    for tokens, acts in excerpts:
        for token, a in zip(tokens, acts, strict=True):
            if a >= HIGH_FRACTION * peak:
                shown = show_token(token)
                counts[shown] += 1
                mass[shown] += a
                first.setdefault(shown, len(first))
    ranked = sorted(counts, key=lambda t: (-counts[t], -mass[t], first[t]))
    return [(t, counts[t]) for t in ranked[:n_tokens]]


def token_list_explanation(tokens: Sequence[str]) -> str:
    """`the token "X"` or `the tokens "X", "Y", "Z"`."""
    quoted = ", ".join(f'"{t}"' for t in tokens)
    return f"the token {quoted}" if len(tokens) == 1 else f"the tokens {quoted}"


# Plausible explanations of the kind explainers write, none about any unit in
# particular. The list's hash is part of the random baseline's config (its key space).
RANDOM_PHRASES: tuple[str, ...] = (
    "words about food and cooking",
    "verbs in the past tense",
    "names of people",
    "numbers in dates and times",
    "punctuation at the end of a sentence",
    "words about the weather",
    "plural nouns",
    "place names such as cities and countries",
    "adjectives describing size",
    "words inside parentheses",
    "the first word of a sentence",
    "pronouns referring to people",
    "words about sports and games",
    "units of measurement",
    "words related to music",
    "prepositions of place such as in and on",
    "names of colours",
    "words about money and prices",
    "legal and official language",
    "items in a list",
    "parts of the body",
    "days of the week and months",
    "technical terms from computing",
    "words for family members",
    "question words such as what and why",
    "words in titles and headings",
    "words expressing emotions",
    "opening quotation marks",
    "conjunctions joining two clauses",
    "words about travel and transport",
    "scientific terms",
    "words about health and medicine",
    "comparative adjectives ending in er",
    "words about school and learning",
    "numbers written as words",
    "abbreviations and acronyms",
    "words about buildings and rooms",
    "verbs describing motion",
    "modal verbs such as can and should",
    "words about politics and government",
    "the last word of a line",
    "words about nature and plants",
)
RANDOM_VERSION = "baseline-random-v1"
TOKEN_LOOKUP_VERSION = "baseline-token-lookup-v1"


def random_explanation(unit_id: str, sample: int, seed: int = 0) -> str:
    """The `random` baseline's phrase for one unit and sample (deterministic)."""
    key = hashlib.sha256(f"{seed}|{unit_id}".encode()).digest()
    order = list(RANDOM_PHRASES)
    random.Random(int.from_bytes(key[:8], "big")).shuffle(order)
    return order[sample % len(order)]


def _settings(config: BaselineConfig | BaseModel | None) -> BaselineConfig:
    if config is None or isinstance(config, BaselineConfig):
        return config or BaselineConfig()
    # The explain stage's ExplainerConfig: only its sample count applies here.
    return BaselineConfig(n_samples=getattr(config, "n_samples", 1))


def _pairs(train: list[Excerpt]) -> list[tuple[list[str], list[float]]]:
    return [(e.record.tokens, e.record.activations) for e in train]


class _Baseline:
    """What both baselines share: no model, no requests, zero usage."""

    name = ""
    prompt_version = ""

    def __init__(
        self,
        llm: Any = None,
        config: BaselineConfig | BaseModel | None = None,
        *,
        spec: str | None = None,
    ) -> None:
        # The explain stage hands every explainer its model (or a spec when planning):
        # a baseline never asks it anything.
        del llm, spec
        self.settings = _settings(config)
        self.model = self.name

    @property
    def n_samples(self) -> int:
        return self.settings.n_samples

    def _own_settings(self) -> dict[str, Any]:
        return self.settings.model_dump()

    def config(self) -> dict[str, Any]:
        return {
            "explainer": self.model,
            "method": self.name,
            "settings": self._own_settings(),
            "prompt_version": self.prompt_version,
        }

    def estimate(self, task: ExplainTask) -> Estimate:
        return Estimate(0, 0, 0)


class TokenLookupExplainer(_Baseline):
    """Names the unit's most frequent high-activating train tokens (see module doc)."""

    name = "token-lookup"
    prompt_version = TOKEN_LOOKUP_VERSION

    @property
    def n_samples(self) -> int:
        return 1  # deterministic: every sample would be the same text

    def _own_settings(self) -> dict[str, Any]:
        return {"n_tokens": self.settings.n_tokens, "high_fraction": HIGH_FRACTION}

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        out = ExplainOutcome(prompt_version=self.prompt_version, attempts=1)
        top = top_tokens(_pairs(task.train), self.settings.n_tokens)
        if not top:
            out.failed = [(s, "") for s in task.samples]
            out.reasons = {s: "no token has a positive activation" for s in task.samples}
            return out
        text = token_list_explanation([t for t, _ in top])
        # The "raw answer" of a lookup: how often each named token was high.
        raw = "counts: " + ", ".join(f'"{t}" ×{n}' for t, n in top)
        out.texts = [(s, text, raw) for s in sorted(task.samples)]
        return out


class RandomExplainer(_Baseline):
    """A plausible but uninformative phrase per unit and sample (see module doc)."""

    name = "random"
    prompt_version = RANDOM_VERSION

    def _own_settings(self) -> dict[str, Any]:
        # n_samples only says how many are wanted; each sample's text does not depend on it.
        phrases = hashlib.sha256("\n".join(RANDOM_PHRASES).encode()).hexdigest()[:12]
        return {"seed": self.settings.seed, "phrases": phrases}

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        unit, seed = task.record.unit_id, self.settings.seed
        texts = [(s, random_explanation(unit, s, seed)) for s in sorted(task.samples)]
        return ExplainOutcome(
            texts=[(s, t, f"random phrase (seed {seed})") for s, t in texts],
            prompt_version=self.prompt_version,
            attempts=1,
        )


__all__ = [
    "HIGH_FRACTION",
    "RANDOM_PHRASES",
    "BaselineConfig",
    "RandomExplainer",
    "TokenLookupExplainer",
    "random_explanation",
    "show_token",
    "token_list_explanation",
    "top_tokens",
]
