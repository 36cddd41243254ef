"""Few-shot neurons written for neuroscribe's prompts (kept as data, not prose).

Each example is a made-up but plausible neuron: its explanation and a few excerpts
with activations already on the 0–10 scale.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExampleExcerpt:
    tokens: tuple[str, ...]
    values: tuple[int, ...]


@dataclass(frozen=True)
class ExampleNeuron:
    explanation: str
    excerpts: tuple[ExampleExcerpt, ...]


def _ex(pairs: list[tuple[str, int]]) -> ExampleExcerpt:
    return ExampleExcerpt(tuple(t for t, _ in pairs), tuple(v for _, v in pairs))


EXAMPLES: tuple[ExampleNeuron, ...] = (
    ExampleNeuron(
        explanation="years written as four-digit numbers",
        excerpts=(
            _ex(
                [
                    ("The", 0),
                    (" treaty", 0),
                    (" was", 0),
                    (" signed", 0),
                    (" in", 1),
                    (" 16", 8),
                    ("48", 10),
                    (" and", 0),
                    (" revised", 0),
                    (" in", 1),
                    (" 17", 7),
                    ("13", 9),
                    (".", 0),
                ]
            ),
            _ex(
                [
                    ("Born", 0),
                    (" in", 1),
                    (" 1990", 9),
                    (",", 0),
                    (" she", 0),
                    (" moved", 0),
                    (" to", 0),
                    (" Paris", 0),
                    (".", 0),
                ]
            ),
        ),
    ),
    ExampleNeuron(
        explanation="words that negate a statement, such as not and never",
        excerpts=(
            _ex(
                [
                    ("She", 0),
                    (" did", 0),
                    (" not", 10),
                    (" want", 1),
                    (" to", 0),
                    (" leave", 0),
                    (",", 0),
                    (" and", 0),
                    (" he", 0),
                    (" never", 9),
                    (" asked", 1),
                    (".", 0),
                ]
            ),
            _ex([("It", 0), (" isn", 6), ("'t", 8), (" true", 0), (".", 0)]),
        ),
    ),
    ExampleNeuron(
        explanation="names of animals, strongest for plural nouns",
        excerpts=(
            _ex(
                [
                    ("Wild", 0),
                    (" horses", 9),
                    (" and", 0),
                    (" two", 0),
                    (" dogs", 10),
                    (" ran", 0),
                    (" past", 0),
                    (" the", 0),
                    (" farm", 1),
                    (".", 0),
                ]
            ),
            _ex(
                [
                    ("A", 0),
                    (" cat", 6),
                    (" slept", 0),
                    (" on", 0),
                    (" the", 0),
                    (" mat", 0),
                    (".", 0),
                ]
            ),
        ),
    ),
)


def _words(text: str, values: dict[str, int]) -> ExampleExcerpt:
    """An excerpt from space-separated words (a leading space on all but the first),
    with the listed words' values and 0 for the rest."""
    toks = text.split(" ")
    pairs = [(t if i == 0 else " " + t, values.get(t, 0)) for i, t in enumerate(toks)]
    return _ex(pairs)


# simulate-v2's few-shot units: short, varied, and chosen so no example shares a concept
# with the ground-truth suite (animals, weekdays, colours, a context rule, a symbol).
# Each shows the one thing a small simulator has to learn: tokens that fit the
# explanation get high values, every other token 0 — including the right word in the
# wrong context.
SIMULATION_EXAMPLES_V2: tuple[ExampleNeuron, ...] = (
    ExampleNeuron(
        explanation="names of animals",
        excerpts=(_words("The dog chased two cats past the old barn", {"dog": 9, "cats": 8}),),
    ),
    ExampleNeuron(
        explanation="the word right after 'very'",
        excerpts=(_words("It was very cold and the road was very long", {"cold": 9, "long": 8}),),
    ),
    ExampleNeuron(
        explanation="colour words such as red and blue",
        excerpts=(_words("She painted the red door a bright blue again", {"red": 9, "blue": 9}),),
    ),
    ExampleNeuron(
        explanation="question marks",
        excerpts=(
            _ex(
                [
                    ("Why", 0),
                    (" now", 0),
                    ("?", 9),
                    (" Nobody", 0),
                    (" knows", 0),
                    (".", 0),
                    (" Really", 0),
                    ("?", 9),
                ]
            ),
        ),
    ),
)
