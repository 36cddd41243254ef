"""Intruder / multiple choice (SAEBench's autointerp protocol): which excerpts activate?

One prompt per explanation shows a shuffled set of held-out excerpts, SAEBench's 2 top +
2 importance-weighted + 10 random adapted to what the held-out split holds:
`n_top` (2) strongest held-out top excerpts, `n_mid` (2) more drawn from the remaining
held-out top excerpts with probability proportional to their peak (SAEBench's
importance weighting), and up to `n_random` (10) non-activating held-out random excerpts
(as in detection: peak at most `negative_fraction` of the top), each cut to `window` (32)
tokens as detection cuts them. With the default splits (7 top and 7 random held out)
that is 4 activating among up to 11.

The LLM answers with the numbers of the excerpts it thinks activate (or "none").
Metrics: `accuracy` (the headline, SAEBench's: the share of excerpts classified right),
`balanced_accuracy` and `f1`; no AUC (a list of numbers has no per-excerpt probability).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from neuroscribe.llm.base import Completion
from neuroscribe.llm.messages import Message
from neuroscribe.prompts.classify import (
    INTRUDER_PROMPT_VERSION,
    build_intruder_messages,
    intruder_answer,
)
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.classify import (
    ClassifierScorer,
    Item,
    _Answered,
    label_heldout,
    make_item,
    parse_choice,
    require_both,
    unit_rng,
    windows,
)


class IntruderScorer(ClassifierScorer):
    name = "intruder"
    stage = "score-intruder"
    prompt_version = INTRUDER_PROMPT_VERSION
    primary_metric: ClassVar[str] = "accuracy"
    reads_p_yes: ClassVar[bool] = False
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "negative_fraction", "max_attempts", "window", "n_top", "n_mid", "n_random",
    )  # fmt: skip

    def __init__(
        self, llm: Any | None, *, n_top: int = 2, n_mid: int = 2, n_random: int = 10, **kw: Any
    ) -> None:
        super().__init__(llm, **kw)
        self.n_top, self.n_mid, self.n_random = n_top, n_mid, n_random
        self.logprobs = False  # an answer of numbers: no per-excerpt probability to read

    @classmethod
    async def build(cls, llm: Any, **options: Any) -> IntruderScorer:
        return cls(llm, spec=llm.spec, **cls._own(options))

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        del cfg["batch_size"]
        return {**cfg, "n_top": self.n_top, "n_mid": self.n_mid, "n_random": self.n_random}

    def messages(self, explanation: str, texts: Sequence[str]) -> list[Message]:
        return build_intruder_messages(explanation, texts)

    def parse(self, choice: Completion, n: int) -> _Answered:
        return _Answered(parse_choice(choice.text, n), [None] * n)

    def ideal_answer(self, batch: Sequence[Item]) -> str:
        return intruder_answer([k for k, it in enumerate(batch, 1) if it.label])

    def max_tokens(self, n: int) -> int:
        return 3 * n + 16

    def batches(self, task: ScoreTask, items: list[Item]) -> list[list[Item]]:
        shuffled = list(items)
        unit_rng(task, self.name).shuffle(shuffled)
        return [shuffled]  # one multiple-choice prompt

    def items(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        held = label_heldout(task.heldout, self.negative_fraction)
        require_both(held, task.record.unit_id, self.negative_fraction)
        rng = unit_rng(task, f"{self.name}:pick")
        top = held.positives[: self.n_top]
        rest = held.positives[self.n_top :]
        mid = []
        while rest and len(mid) < self.n_mid:  # weighted sampling without replacement
            x = rng.choices(rest, weights=[r.record.max_activation for r in rest])[0]
            rest.remove(x)
            mid.append(x)
        negatives = list(held.negatives)
        rng.shuffle(negatives)
        negatives = negatives[: self.n_random]

        cut = windows(held, self.window, unit_rng(task, f"{self.name}:windows"))

        def item(x: Any, label: bool, kind: str) -> Item:
            return make_item(x, label, kind, cut[x.excerpt_id])

        items = (
            [item(x, True, "top") for x in top]
            + [item(x, True, "mid") for x in mid]
            + [item(x, False, "random") for x in negatives]
        )
        n = {"n_top": len(top), "n_mid": len(mid), "n_random": len(negatives)}
        return items, {**n, "window": self.window}
