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
