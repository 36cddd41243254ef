"""Fuzzing (delphi's): are the marked tokens the ones the explanation describes?

Each held-out top excerpt (cut to `window` = 32 tokens around its peak) is shown twice, in
a shuffled mix several per prompt: once with its activating tokens marked `<<tok>>` (every token at or above `mark_fraction`, 0.5, of
the excerpt's peak; consecutive ones as one span), once with the same number of tokens
marked at random among its non-activating positions (at or below `negative_fraction`,
0.2, of the peak). The LLM answers yes (the marking matches the explanation) or no for
each. An excerpt with too few non-activating positions for a decoy is shown correctly
marked only (`details.n_without_decoy`).

Metrics as detection's: `balanced_accuracy` (headline), `accuracy`, `f1`, and `auc` over
P("yes") where the backend returns logprobs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.messages import Message
from neuroscribe.prompts.classify import (
    FUZZING_PROMPT_VERSION,
    build_fuzzing_messages,
    build_fuzzing_one_message,
)
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.classify import (
    ClassifierScorer,
    Item,
    label_heldout,
    make_item,
    unit_rng,
    windows,
)


def marked_positions(activations: Sequence[float], fraction: float) -> list[int]:
    """Positions at or above `fraction` of the excerpt's peak (none if the peak is ≤ 0)."""
    peak = max(activations)
    if peak <= 0:
        return []
    return [i for i, a in enumerate(activations) if a >= fraction * peak]


class FuzzingScorer(ClassifierScorer):
    name = "fuzzing"
    stage = "score-fuzzing"
    prompt_version = FUZZING_PROMPT_VERSION
    one_at_a_time: ClassVar[bool] = True
    OPTIONS: ClassVar[tuple[str, ...]] = (*ClassifierScorer.OPTIONS, "mark_fraction")

    def __init__(self, llm: Any | None, *, mark_fraction: float = 0.5, **kw: Any) -> None:
        super().__init__(llm, **kw)
        if not 0 < mark_fraction <= 1 or mark_fraction <= self.negative_fraction:
            raise ConfigError(
                f"mark_fraction must be in (negative_fraction, 1], not {mark_fraction}"
            )
        self.mark_fraction = mark_fraction

    def config(self) -> dict[str, Any]:
        return {**super().config(), "mark_fraction": self.mark_fraction}

    def messages(self, explanation: str, texts: Sequence[str]) -> list[Message]:
        if self.one_by_one:
            (text,) = texts
            return build_fuzzing_one_message(explanation, text)
        return build_fuzzing_messages(explanation, texts)

    def items(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        held = label_heldout(task.heldout, self.negative_fraction)
        if not held.positives:
            raise DataError(f"unit {task.record.unit_id}: no held-out top excerpt activates")
        rng = unit_rng(task, f"{self.name}:decoys")
        cut = windows(held, self.window, rng)
        items: list[Item] = []
        without = 0
        for x in held.positives:
            a, b = span = cut[x.excerpt_id]
            acts = x.record.activations[a:b]  # the window holds the excerpt's peak
            right = marked_positions(acts, self.mark_fraction)
            peak = max(acts)
            quiet = [i for i, v in enumerate(acts) if v <= self.negative_fraction * peak]
            items.append(make_item(x, True, "correct", span, set(right)))
            if len(quiet) < len(right):
                without += 1
                continue
            wrong = set(rng.sample(quiet, len(right)))
            items.append(make_item(x, False, "wrong", span, wrong, suffix="#wrong"))
        if without == len(held.positives):
            raise DataError(
                f"unit {task.record.unit_id}: no held-out top excerpt has enough "
                "non-activating tokens to mark a decoy"
            )
        details = {
            "n_without_decoy": without,
            "mark_fraction": self.mark_fraction,
            "window": self.window,
        }
        return items, details
