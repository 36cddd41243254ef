"""Detection (delphi's): does the neuron activate on this excerpt, given the explanation?

The scorer LLM sees the explanation and a shuffled mix of held-out excerpts, several per
prompt (`batch_size`, 5 as delphi batches them; each cut to `window` = 32 tokens), and
answers yes or no for each:

- activating: the held-out top excerpts;
- non-activating: held-out random excerpts whose peak stays at or below
  `negative_fraction` (0.2) of the strongest held-out top excerpt's; random excerpts
  above that are neither and are left out (counted in `details.n_ambiguous`);
- hard negatives: those non-activating excerpts that contain one of the unit's top
  tokens (the peak token of a held-out top excerpt) and still do not activate. They are
  scored like the others and also reported alone (`hard_negative_accuracy`: the share
  answered "no"; None when the held-out data has none).

- other-unit negatives (`other_units` = N > 0, `--other-unit-negatives N`; off by
  default, as delphi's neighbour negatives are): up to N excerpts that strongly activate
  *other* units of the run and leave this one quiet, found by running the unit's subject
  model on them, the units with the closest output directions first (`other_order`
  "neighbours"; or "random"; `scorer.other_units`). Reported alone as
  `other_unit_accuracy`.

Metrics: `balanced_accuracy` (the headline: every backend gives it, and it does not
reward always answering the majority class), `accuracy`, `f1` (of "activates"), and
`auc` over P("yes") where the backend returns generated-token logprobs (a local `hf:`
model: the exact next-token distribution); None otherwise (flag `no_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError
from neuroscribe.llm.messages import Message
from neuroscribe.prompts.classify import (
    DETECTION_PROMPT_VERSION,
    build_detection_messages,
    build_detection_one_message,
)
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.classify import (
    ClassifierScorer,
    Item,
    crop,
    label_heldout,
    make_item,
    require_both,
    unit_rng,
    windows,
)
from neuroscribe.scorer.other_units import KIND, Found, OtherUnitNegatives


class DetectionScorer(ClassifierScorer):
    name = "detection"
    stage = "score-detection"
    prompt_version = DETECTION_PROMPT_VERSION
    one_at_a_time: ClassVar[bool] = True
    reports_hard: ClassVar[bool] = True
    # api passes the score section's `other_unit_negatives` as `other_units`.
    takes_other_units: ClassVar[bool] = True
    OPTIONS = (
        *ClassifierScorer.OPTIONS, "other_units", "other_order", "run_dir", "other_negatives",
    )  # fmt: skip

    def __init__(
        self,
        llm: Any | None,
        *,
        other_units: int = 0,
        other_order: str = "neighbours",
        run_dir: str | Path | None = None,
        other_negatives: OtherUnitNegatives | None = None,
        **options: Any,
    ) -> None:
        super().__init__(llm, **options)
        if other_units < 0:
            raise ConfigError(f"other_units must be 0 or more, not {other_units}")
        self.other_units = other_units
        self.others = other_negatives
        if self.others is None and other_units:
            self.others = OtherUnitNegatives(other_units, run_dir=run_dir, order=other_order)

    def config(self) -> dict[str, Any]:
        # Only when used: detection scores from before the option keep their hash.
        extra = {}
        if self.others is not None:
            extra = {"other_units": self.others.n, "other_order": self.others.order}
        return {**super().config(), **extra}

    def messages(self, explanation: str, texts: Sequence[str]) -> list[Message]:
        if self.one_by_one:
            (text,) = texts
            return build_detection_one_message(explanation, text)
        return build_detection_messages(explanation, texts)

    async def prepare(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        if self.others is None:
            return self.items(task)
        held = label_heldout(task.heldout, self.negative_fraction)
        require_both(held, task.record.unit_id, self.negative_fraction)
        threshold = self.negative_fraction * held.positives[0].record.max_activation
        rng = unit_rng(task, f"{self.name}:other-units")
        found = await self.others.find(task.record, rng, threshold)
        items, details = self.items(task, found)
        if not found.excerpts:
            details["flags"] = ["no_other_unit_negatives"]
        return items, details

    def planned_items(self, task: ScoreTask) -> list[Item]:
        if self.others is None:
            return self.items(task)[0]
        rng = unit_rng(task, f"{self.name}:other-units")
        return self.items(task, self.others.planned(task.record, rng))[0]

    def items(
        self, task: ScoreTask, others: Found | None = None
    ) -> tuple[list[Item], dict[str, Any]]:
        held = label_heldout(task.heldout, self.negative_fraction)
        require_both(held, task.record.unit_id, self.negative_fraction)
        cut = windows(held, self.window, unit_rng(task, f"{self.name}:windows"))
        items = [make_item(x, True, "top", cut[x.excerpt_id]) for x in held.positives] + [
            make_item(
                x, False, "hard" if x.excerpt_id in held.hard else "random", cut[x.excerpt_id]
            )
            for x in held.negatives
        ]
        if others is not None:
            items += [
                make_item(
                    x,
                    False,
                    KIND,
                    crop(len(x.record.tokens), others.anchors[x.excerpt_id], self.window),
                )
                for x in others.excerpts
            ]
        details = {
            "window": self.window,
            "n_hard_negatives": len(held.hard),
            "n_ambiguous": len(held.ambiguous),
            "top_tokens": held.top_tokens,
            "negative_fraction": self.negative_fraction,
            **(others.details if others is not None else {}),
        }
        return items, details
