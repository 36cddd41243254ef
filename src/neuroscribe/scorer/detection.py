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

Metrics: `balanced_accuracy` (the headline: every backend gives it, and it does not
reward always answering the majority class), `accuracy`, `f1` (of "activates"), and
`auc` over P("yes") where the backend returns generated-token logprobs (a local `hf:`
model: the exact next-token distribution); None otherwise (flag `no_logprobs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from neuroscribe.llm.messages import Message
from neuroscribe.prompts.classify import DETECTION_PROMPT_VERSION, build_detection_messages
from neuroscribe.scorer.base import ScoreTask
from neuroscribe.scorer.classify import (
    ClassifierScorer,
    Item,
    label_heldout,
    make_item,
    require_both,
    unit_rng,
    windows,
)


class DetectionScorer(ClassifierScorer):
    name = "detection"
    stage = "score-detection"
    prompt_version = DETECTION_PROMPT_VERSION
    reports_hard: ClassVar[bool] = True

    def messages(self, explanation: str, texts: Sequence[str]) -> list[Message]:
        return build_detection_messages(explanation, texts)

    def items(self, task: ScoreTask) -> tuple[list[Item], dict[str, Any]]:
        held = label_heldout(task.heldout, self.negative_fraction)
        require_both(held, task.record.unit_id, self.negative_fraction)
        cut = windows(held, self.window, unit_rng(task, f"{self.name}:windows"))
        items = [make_item(x, True, "top", cut[x.excerpt_id]) for x in held.positives] + [
            make_item(
                x, False, "hard" if x.excerpt_id in held.hard else "random", cut[x.excerpt_id]
            )
            for x in held.negatives
        ]
        details = {
            "window": self.window,
            "n_hard_negatives": len(held.hard),
            "n_ambiguous": len(held.ambiguous),
            "top_tokens": held.top_tokens,
            "negative_fraction": self.negative_fraction,
        }
        return items, details
