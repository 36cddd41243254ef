"""Best-of-k: sample k explanations, keep the one that scores best on validation.

The k samples come from one request (`n=k`, the configured prompt style), so the prompt
is paid once and each extra candidate costs only its completion. Each distinct usable
text is scored by the `Selector` (any scorer) on the unit's *validation* excerpts;
the best is kept (ties: the earlier sample), and every candidate with its validation
score stays in the explanation's `candidates`. The test split is never looked at: the
score stage scores the kept text on test as it scores any explanation. A unit none of
whose candidates can be scored on validation is a failure with the reason, not a guess.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuroscribe.errors import ConfigError, OutputError
from neuroscribe.explainer.base import ExplainOutcome, ExplainTask, Selected
from neuroscribe.explainer.select import Selector, Verdict
from neuroscribe.explainer.token_rows import (
    ExplainerConfig,
    TokenRowExplainer,
    explain_excerpts,
    explain_prompt,
)
from neuroscribe.llm.base import LLM
from neuroscribe.schema import Candidate, Usage
from neuroscribe.stages.base import Estimate


class SelectConfig(BaseModel):
    """Settings of the explainers that choose among candidates (best-of-k, revision)."""

    model_config = ConfigDict(extra="forbid")

    k: int = Field(4, ge=1, le=100)  # best-of-k: candidates sampled per unit
    scorer: str = "simulation"  # registry name of the selection scorer
    model: str | None = None  # its model; None: the score section's model
    rounds: int = Field(1, ge=1, le=10)  # revision: rounds of probing and revising
    n_probes: int = Field(3, ge=1, le=20)  # revision: texts proposed per side per round


def best_index(verdicts: list[Verdict]) -> int | None:
    """The candidate with the highest finite validation score (ties: the first)."""
    best, top = None, -math.inf
    for i, v in enumerate(verdicts):
        if v.value is None or not math.isfinite(v.value):
            continue
        if best is None or v.value > top:  # a score of 0.0 is a score, not "none"
            best, top = i, v.value
    return best


class _Selecting(TokenRowExplainer):
    """What best-of-k and revision share: the single-sample explainer's prompt, settings,
    hashing and token counter, plus a selector and the validation split's size."""

    name = ""
    selects = True  # the api hands it a Selector and the validation split's size
    probes_subject = False  # revision: also a UnitProbe on the subject model

    def __init__(
        self,
        llm: LLM | None,
        config: ExplainerConfig | None = None,
        *,
        spec: str | None = None,
        select: SelectConfig | None = None,
        selector: Selector | None = None,
        validation: tuple[int, int] = (4, 4),
        probe: Any = None,
    ) -> None:
        super().__init__(llm, config, spec=spec)
        self.select = select or SelectConfig()
        self.selector = selector
        self.validation = validation
        self.probe = probe
        if self.settings.n_samples != 1:
            raise ConfigError(
                f"{self.name} keeps one explanation per unit; --n-explanations must be 1 "
                f"(it samples {self.select.k} candidates itself)"
            )

    def _own(self) -> dict[str, Any]:
        return {"k": self.select.k}

    def config(self) -> dict[str, Any]:
        return {
            **super().config(),
            **self._own(),
            # What chose: the scorer's whole config (model, strategy, prompt version...)
            # and the validation excerpts it saw.
            "selector": self.selector.config() if self.selector is not None else None,
            "selector_name": self.select.scorer,
            "selector_model": self.select.model,
            "validation": list(self.validation),
        }

    def _live(self) -> tuple[LLM, Selector]:
        if self.llm is None or self.selector is None:
            raise OutputError("this explainer was built for planning only (no model)")
        return self.llm, self.selector

    @staticmethod
    def _require_validation(task: ExplainTask) -> None:
        if not task.validation:
            raise OutputError(
                f"unit {task.record.unit_id}: no validation excerpts to choose on (the record "
                "has no top excerpts left after train, test and calibration; record more "
                "or lower --n-test-top)"
            )

    def _finish(
        self,
        outcome: ExplainOutcome,
        task: ExplainTask,
        candidates: list[Candidate],
        verdicts: list[Verdict],
        raws: list[str],
    ) -> ExplainOutcome:
        best = best_index(verdicts)
        sample = task.samples[0] if task.samples else 0
        if best is None:
            reasons = sorted({v.reason for v in verdicts if v.reason}) or ["no candidate"]
            outcome.texts = []
            outcome.failed = [(sample, raws[0] if raws else "")]
            outcome.reasons = {sample: "no candidate scored on validation: " + "; ".join(reasons)}
            return outcome
        candidates[best].selected = True
        outcome.texts = [(sample, candidates[best].text or "", raws[best])]
        outcome.failed, outcome.reasons = [], {}
        outcome.extras = {
            sample: Selected(
                method=self.name,
                validation_score=verdicts[best].value,
                selection_scorer=self.selector.label if self.selector else self.select.scorer,
                candidates=candidates,
                validation_excerpts=[x.excerpt_id for x in task.validation],
            )
        }
        return outcome


class BestOfKExplainer(_Selecting):
    name = "best-of-k"

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        llm, selector = self._live()
        self._require_validation(task)
        k_settings = self.settings.model_copy(update={"n_samples": self.select.k})
        sampled = await explain_excerpts(llm, task.train, k_settings)
        outcome = ExplainOutcome(
            usage=sampled.usage,
            prompt_version=sampled.prompt_version,
            attempts=sampled.attempts,
            selection_model=selector.model,
        )
        texts = {s: (t, r) for s, t, r in sampled.texts}
        failed = dict(sampled.failed)
        # Identical texts are scored once: same text, same validation score.
        distinct = list(dict.fromkeys(t for _, (t, _) in sorted(texts.items())))
        verdict_of = dict(
            zip(
                distinct,
                await asyncio.gather(
                    *(selector.score(task.record, t, task.train, task.validation) for t in distinct)
                ),
                strict=True,
            )
        )
        candidates, verdicts, raws = [], [], []
        for s in range(self.select.k):
            if s in texts:
                text, raw = texts[s]
                v = verdict_of[text]
                candidates.append(Candidate(text=text, validation_score=v.value, reason=v.reason))
                verdicts.append(v)
            else:
                raw = failed.get(s, "")
                reason = sampled.reasons.get(s, "not an explanation")
                candidates.append(Candidate(text=None, reason=reason))
                verdicts.append(Verdict(None, Usage(), reason))
            raws.append(raw)
        usage = Usage()
        for v in verdict_of.values():
            usage = usage.add(v.usage)
        outcome.selection_usage = usage
        return self._finish(outcome, task, candidates, verdicts, raws)

    def estimate(self, task: ExplainTask) -> Estimate:
        prompt = explain_prompt(task.train, self.settings)
        # One request for the k samples; the selector's scoring is not counted here.
        return Estimate(
            1, self.counter.chat(prompt.messages), self.select.k * self.settings.max_tokens
        )
