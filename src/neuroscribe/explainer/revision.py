"""Revision with counterexamples: test an explanation on new texts, then revise it.

Round 0 is one explanation from the unit's train excerpts (the configured prompt
style). Each later round: the explainer proposes texts its current explanation says
should activate the unit and texts it says should not (`prompts.revise`); the subject
model runs them (`datasets.probe.UnitProbe`: the unit's real activations, so the subject
must be a local model); the explainer sees its prompt, its answer and what the unit
really did, and writes a revised explanation. Every round is scored on the validation
split by the `Selector` and kept as a candidate with its parent (the candidate it
revised: the best so far), its score and its probes; the best on validation is kept
(round 0 when no revision beats it). The test split is never looked at.

A round whose proposals parse to no text, or whose revision is not an explanation,
ends the revision (kept as a candidate with the reason); the rounds before it stand.
"""

from __future__ import annotations

from typing import Any

from neuroscribe.errors import OutputError
from neuroscribe.explainer.base import ExplainOutcome, ExplainTask
from neuroscribe.explainer.best_of_k import _Selecting, best_index
from neuroscribe.explainer.clean import explanation_or_reason
from neuroscribe.explainer.select import Verdict
from neuroscribe.explainer.token_rows import explain_excerpts, explain_prompt
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import clip_raw
from neuroscribe.prompts.revise import (
    REVISE_PROMPT_VERSION,
    ProbeResult,
    parse_proposals,
    parse_sentence,
    proposal_messages,
    revision_messages,
    sentence_messages,
)
from neuroscribe.schema import ActivationRecord, Candidate, Usage
from neuroscribe.stages.base import Estimate

# Tokens a proposal answer may take: n texts a side, a sentence each.
PROPOSAL_TOKENS_PER_TEXT = 40


def probe_results(
    proposals: list[tuple[str, str]], activations: list[ActivationRecord], scale: float
) -> list[ProbeResult]:
    """Each text's strongest activation, on the explain prompt's 0–10 scale (`scale` is
    the train excerpts' max; above it shows as 10)."""
    out = []
    for (text, kind), rec in zip(proposals, activations, strict=True):
        acts = list(rec.activations)
        i = max(range(len(acts)), key=lambda k: acts[k]) if acts else 0
        raw = float(acts[i]) if acts else 0.0
        value = 0 if scale <= 0 else min(10, max(0, round(10 * raw / scale)))
        out.append(ProbeResult(text, kind, value, raw, rec.tokens[i] if acts else ""))
    return out


class RevisionExplainer(_Selecting):
    name = "revision"
    probes_subject = True

    def _own(self) -> dict[str, Any]:
        return {
            "rounds": self.select.rounds,
            "n_probes": self.select.n_probes,
            "revise_prompt": REVISE_PROMPT_VERSION,
        }

    async def _ask(self, messages: list[dict[str, str]], max_tokens: int) -> tuple[str, Usage]:
        assert self.llm is not None
        resp = await self.llm.chat(
            messages, n=1, temperature=self.settings.temperature, max_tokens=max_tokens
        )
        text = resp.choices[0].text if resp.choices else ""
        return text, resp.usage

    async def _one_side_each(self, explanation: str) -> tuple[list[tuple[str, str]], Usage]:
        """The fallback proposals: each side asked alone, n samples of one sentence."""
        assert self.llm is not None
        out: list[tuple[str, str]] = []
        usage, seen = Usage(), set()
        for kind in ("active", "silent"):
            resp = await self.llm.chat(
                sentence_messages(explanation, kind),
                n=self.select.n_probes,
                # Some spread between the samples, or n copies of one sentence.
                temperature=max(self.settings.temperature, 0.7),
                max_tokens=PROPOSAL_TOKENS_PER_TEXT,
            )
            usage = usage.add(resp.usage)
            for c in resp.choices:
                text = parse_sentence(c.text)
                if text is not None and text.lower() not in seen:
                    seen.add(text.lower())
                    out.append((text, kind))
        return out, usage

    async def _revise(
        self, messages: list[dict[str, str]]
    ) -> tuple[str | None, str, str | None, Usage]:
        """(explanation or None, raw answer, why not, usage) with the configured retries."""
        usage, raw, reason = Usage(), "", None
        for _ in range(self.settings.max_attempts):
            assert self.llm is not None
            resp = await self.llm.chat(
                messages,
                n=1,
                temperature=self.settings.temperature,
                max_tokens=self.settings.max_tokens,
            )
            usage = usage.add(resp.usage)
            raw = resp.choices[0].text if resp.choices else ""
            text, reason = explanation_or_reason(raw)
            if text is not None:
                return text, clip_raw(raw) or "", None, usage
            discard_cached(self.llm, resp)  # else a retry gets the same cached answer
        return None, clip_raw(raw) or "", reason or "not an explanation", usage

    async def explain(self, task: ExplainTask) -> ExplainOutcome:
        llm, selector = self._live()
        self._require_validation(task)
        if self.probe is None:
            raise OutputError("revision needs the subject model's probe (none was given)")
        first = await explain_excerpts(llm, task.train, self.settings, [0])
        outcome = ExplainOutcome(
            usage=first.usage,
            prompt_version=first.prompt_version,
            attempts=first.attempts,
            selection_model=selector.model,
        )
        if not first.texts:
            sample = task.samples[0] if task.samples else 0
            outcome.failed = [(sample, first.failed[0][1] if first.failed else "")]
            outcome.reasons = {sample: first.reasons.get(0, "not an explanation")}
            return outcome
        _, text0, raw0 = first.texts[0]
        sel_usage = Usage()

        async def judge(text: str) -> Verdict:
            nonlocal sel_usage
            v = await selector.score(task.record, text, task.train, task.validation)
            sel_usage = sel_usage.add(v.usage)
            return v

        v0 = await judge(text0)
        candidates = [Candidate(text=text0, validation_score=v0.value, reason=v0.reason)]
        verdicts, raws = [v0], [raw0]
        prompt = explain_prompt(task.train, self.settings)
        number = sum(m["role"] == "assistant" for m in prompt.messages) + 1
        scale = max((max(e.record.activations, default=0.0) for e in task.train), default=0.0)
        best = 0
        for round_ in range(1, self.select.rounds + 1):
            current = candidates[best].text or ""
            answer, used = await self._ask(
                proposal_messages(current, self.select.n_probes),
                2 * self.select.n_probes * PROPOSAL_TOKENS_PER_TEXT,
            )
            outcome.usage = outcome.usage.add(used)
            proposals = parse_proposals(answer, self.select.n_probes)
            if not proposals:
                proposals, used = await self._one_side_each(current)
                outcome.usage = outcome.usage.add(used)
            if not proposals:
                candidates.append(
                    Candidate(
                        text=None,
                        round=round_,
                        parent=best,
                        reason="proposed no test texts (no ACTIVE:/SILENT: lines, no "
                        "sentence when asked one side at a time): "
                        + repr((clip_raw(answer) or "")[:120]),
                    )
                )
                verdicts.append(Verdict(None, Usage(), "no test texts"))
                raws.append(clip_raw(answer) or "")
                break
            acts = await self.probe.activations_async(task.record, [t for t, _ in proposals])
            results = probe_results(proposals, acts, scale)
            probes = [
                {
                    "text": r.text,
                    "expected": r.expected,
                    "value": r.value,
                    "max_activation": r.raw_max,
                    "top_token": r.top_token,
                }
                for r in results
            ]
            revised, raw, why, used = await self._revise(
                revision_messages(prompt.messages, number, current, results)
            )
            outcome.usage = outcome.usage.add(used)
            if revised is None:
                candidates.append(
                    Candidate(text=None, round=round_, parent=best, probes=probes, reason=why)
                )
                verdicts.append(Verdict(None, Usage(), why))
                raws.append(raw)
                break
            v = await judge(revised)
            candidates.append(
                Candidate(
                    text=revised,
                    validation_score=v.value,
                    round=round_,
                    parent=best,
                    probes=probes,
                    reason=v.reason,
                )
            )
            verdicts.append(v)
            raws.append(raw)
            # The next round revises the best so far (ties: the earlier one).
            best = best_index(verdicts) if best_index(verdicts) is not None else best
        outcome.selection_usage = sel_usage
        return self._finish(outcome, task, candidates, verdicts, raws)

    def estimate(self, task: ExplainTask) -> Estimate:
        prompt = explain_prompt(task.train, self.settings)
        tokens = self.counter.chat(prompt.messages)
        rounds = self.select.rounds
        # The first explanation, then per round a proposal and a revision (whose prompt
        # is the explain prompt again plus the results); the selector's scoring apart.
        # An upper bound: a proposal answer that does not parse costs two more requests
        # (each side asked alone).
        return Estimate(
            1 + 4 * rounds,
            tokens * (1 + rounds) + rounds * 200,
            self.settings.max_tokens * (1 + rounds)
            + rounds * 4 * self.select.n_probes * PROPOSAL_TOKENS_PER_TEXT,
        )
