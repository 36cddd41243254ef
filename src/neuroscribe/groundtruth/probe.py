"""`RuleProbe`: a built-in suite unit's activations on new texts, from its known rule.

A synthetic unit has no subject model to run, but its activations *are* a rule over the
embedded tokenizer's token strings (`groundtruth.rules`). Revision with counterexamples
needs the unit's real response to the texts the explainer proposes: for a built-in
unit that is the rule applied to the text, tokenised as the suite was built. Units a user
added to a suite file carry excerpts but no rule, so revision cannot probe them (a
ConfigError says so).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.schema import ActivationRecord, NeuronRecord

UNIT_PREFIX = "groundtruth/"


class RuleProbe:
    """The `UnitProbe` interface for suite units: `activations(record, texts)`."""

    def __init__(self, max_tokens: int = 64) -> None:
        self.max_tokens = max_tokens
        self._tokenizer: Any = None

    def _strings(self, text: str) -> list[str]:
        from transformers import AutoTokenizer

        from neuroscribe.datasets.windows import TokenStrings
        from neuroscribe.embedded import embedded_model_dir

        if self._tokenizer is None:
            # The built-in suite's tokens are the embedded model's (see its `source`).
            self._tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"][: self.max_tokens]
        return TokenStrings(self._tokenizer)(ids)

    def activations(self, record: NeuronRecord, texts: Sequence[str]) -> list[ActivationRecord]:
        from neuroscribe.groundtruth.rules import unit_specs

        uid = record.unit_id.removeprefix(UNIT_PREFIX)
        specs = {s.id: s for s in unit_specs()}
        if uid not in specs:
            raise ConfigError(
                f"suite unit {uid!r} has no built-in rule to probe (revision on a suite "
                "needs its rules: the built-in units only)"
            )
        out = []
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"probe text {i} for unit {uid} is empty")
            tokens = self._strings(text)
            out.append(ActivationRecord(tokens=tokens, activations=specs[uid].true(tokens)))
        return out

    async def activations_async(
        self, record: NeuronRecord, texts: Sequence[str]
    ) -> list[ActivationRecord]:
        return await asyncio.to_thread(self.activations, record, texts)
