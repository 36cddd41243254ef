"""Logit lens: does the explanation agree with the tokens the unit's output promotes?

For a unit of a local subject model (an MLP neuron: the column of the MLP's output
projection it feeds; an SAE latent: its decoder row) the output direction is projected
through the final norm (`final_norm=True`: its elementwise scale, and centring for
LayerNorm; no bias) and the unembedding, and the `top_k` most promoted tokens (and the
`top_k` most suppressed, kept in the details) are read off. A judge LLM (the scorer's
model) rates, 0 to 10, how well the explanation agrees with the promoted tokens; the
same judge rates a *control* explanation on the same tokens: a plausible explanation of
no unit in particular (the random baseline's list, or the `controls` option: e.g. other
units' explanations), chosen per unit by a seeded shuffle, so every explanation of a
unit is compared against the same control.

Metrics: `agreement_minus_control` (the headline: how much better than a generic
explanation), `agreement`, `control_agreement`. An answer that is not a 0–10 rating is
asked again (temperature 0.7, its cached copy dropped) and after `max_attempts` the
explanation fails with the raw answer; no number is ever made up.

The subject model is found as `output_side.SubjectResolver` says (the `subject` option,
the run manifest, the record); an API subject model is a ConfigError. No excerpt is
shown, so train excerpts cannot leak.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError
from neuroscribe.llm.messages import Message
from neuroscribe.schema import Usage
from neuroscribe.scorer.base import ScoreOutcome, ScoreTask
from neuroscribe.scorer.classify import ask
from neuroscribe.scorer.output_side import (
    JudgedOutputScorer,
    Lens,
    control_explanation,
    parse_rating,
    top_tokens,
)
from neuroscribe.stages.base import Estimate

LOGIT_LENS_VERSION = "logit-lens-v1"
MAX_TOKENS = 16

SYSTEM = (
    "You check explanations of neurons in a language model against what the neuron's "
    "output does. You answer with a single number."
)


def build_logit_lens_messages(explanation: str, promoted: Sequence[str]) -> list[Message]:
    tokens = ", ".join(json.dumps(t, ensure_ascii=False) for t in promoted)
    user = (
        "A neuron in a language model was explained as:\n"
        f"{json.dumps(explanation.strip(), ensure_ascii=False)}\n\n"
        "When this neuron fires, its output raises the probability of these next tokens "
        f"most (strongest first):\n{tokens}\n\n"
        "How well does the explanation agree with these tokens (what they are, or what "
        "they have in common)? 0 = unrelated, 10 = the explanation names exactly these "
        "tokens or their common theme. Answer with one integer from 0 to 10 and nothing else."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


_LENSES: dict[tuple[Any, ...], Lens] = {}
_LENSES_LOCK = threading.Lock()


class LogitLensScorer(JudgedOutputScorer):
    """A judge rates the explanation against the unit's logit-lens tokens, minus a control."""

    name = "logit-lens"
    stage = "score-logit-lens"
    primary_metric = "agreement_minus_control"
    prompt_version = LOGIT_LENS_VERSION
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "subject", "run_dir", "sae", "sae_k", "top_k", "final_norm", "controls",
        "max_attempts", "device", "dtype", "store",
    )  # fmt: skip

    def __init__(
        self,
        llm: Any | None,
        *,
        spec: str,
        subject: str | None = None,
        run_dir: str | None = None,
        sae: str | None = None,
        sae_k: int | None = None,
        top_k: int = 10,
        final_norm: bool = True,
        controls: Sequence[str] | None = None,
        max_attempts: int = 3,
        device: str | None = None,
        dtype: str | None = None,
        store: Any = None,
    ) -> None:
        if top_k < 1:
            raise ConfigError(f"top_k must be at least 1, not {top_k}")
        self.top_k = top_k
        self.final_norm = final_norm
        self._init_judged(
            llm, spec, controls=controls, max_attempts=max_attempts, subject=subject,
            run_dir=run_dir, sae=sae, sae_k=sae_k, device=device, dtype=dtype, store=store,
        )  # fmt: skip

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[LogitLensScorer, str]:
        """For dry runs: nothing loaded or sent; promoted tokens are counted as placeholders."""
        note = "promoted tokens counted as placeholders (the subject model is not loaded)"
        return cls(None, spec=spec, **cls._own(options)), note

    def comparable(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "top_k": self.top_k,
            "final_norm": self.final_norm,
        }

    # ------------------------------------------------------------------ the lens

    def lens(self, record: Any) -> tuple[Lens, dict[str, Any]]:
        """The unit's promoted and suppressed tokens (cached per process), and where from."""
        ref = self.resolver.ref(record)
        loaded = self.resolver.load(ref)
        direction = self.resolver.direction(loaded, record, ref)
        where = {"subject": ref.spec, "subject_from": ref.found, **direction.describe()}
        key = (loaded.path, record.unit_id, ref.sae, self.top_k, self.final_norm)
        with _LENSES_LOCK:
            hit = _LENSES.get(key)
        if hit is None:
            with loaded.lock:
                hit = top_tokens(
                    loaded.model,
                    loaded.tokenizer,
                    direction.vector,
                    self.top_k,
                    use_norm=self.final_norm,
                )
            with _LENSES_LOCK:
                _LENSES[key] = hit
        return hit, where

    async def _rate(self, explanation: str, promoted: Sequence[str]) -> tuple[float, Usage, str]:
        def parse(choice: Any) -> tuple[float, str]:
            return parse_rating(choice.text), choice.text

        (value, raw), usage = await ask(
            self.llm,
            build_logit_lens_messages(explanation, promoted),
            parse,
            max_tokens=MAX_TOKENS,
            top_logprobs=None,
            max_attempts=self.max_attempts,
        )
        return value, usage, raw

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.llm is None:
            raise ConfigError(f"this {self.name} scorer was built for planning only")
        lens, where = await asyncio.to_thread(self.lens, task.record)
        promoted = [t for _, t, _ in lens.promoted]
        control = control_explanation(
            task.record.unit_id, task.explanation.text, self.controls, self.name
        )
        results = await asyncio.gather(
            self._rate(task.explanation.text, promoted),
            self._rate(control, promoted),
            return_exceptions=True,
        )
        usage = self._settle(results)
        (value, _, raw), (ctrl, _, ctrl_raw) = results  # type: ignore[misc]
        return ScoreOutcome(
            metrics={
                "agreement_minus_control": value - ctrl,
                "agreement": value,
                "control_agreement": ctrl,
            },
            primary_metric=self.primary_metric,
            n_excerpts=0,
            n_tokens=0,
            details={
                "prompt_version": self.prompt_version,
                "top_k": self.top_k,
                "final_norm": self.final_norm,
                **where,
                "promoted": [{"id": i, "token": t, "logit": v} for i, t, v in lens.promoted],
                "suppressed": [{"id": i, "token": t, "logit": v} for i, t, v in lens.suppressed],
                "control": control,
                "answer": raw,
                "control_answer": ctrl_raw,
            },
            usage=usage,
        )

    # ------------------------------------------------------------------ dry run

    def estimate(self, task: ScoreTask) -> Estimate:
        placeholder = [" token"] * self.top_k
        control = control_explanation(
            task.record.unit_id, task.explanation.text, self.controls, self.name
        )
        est = Estimate()
        for text in (task.explanation.text, control):
            msgs = build_logit_lens_messages(text, placeholder)
            est = est + Estimate(1, self.counter.chat(msgs), self.counter.text("7"))
        return est


__all__ = ["LOGIT_LENS_VERSION", "LogitLensScorer", "build_logit_lens_messages"]
