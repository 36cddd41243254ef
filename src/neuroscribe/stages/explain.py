"""The explain stage: every selected unit gets the explainer's n samples.

Keyed per (unit, explainer config, sample): a unit whose samples were only partly
written (a crash mid-write) is asked only for the missing ones; a sample recorded in
failures.jsonl is not asked again unless `retry_failed`.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from neuroscribe.errors import NeuroscribeError
from neuroscribe.explainer.base import Explainer, ExplainTask
from neuroscribe.schema import Explanation, Failure, ItemKey, NeuronRecord, Usage, UsageRecord
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.stages.base import Estimate, Plan, StageBase, WorkItem, WorkResult

if TYPE_CHECKING:
    from neuroscribe.rundir import RunDir


def explanation_id(unit_id: str, cfg_hash: str, sample: int) -> str:
    """Deterministic, so a plan knows the ids of explanations not written yet."""
    return hashlib.sha256(f"{unit_id}|{cfg_hash}|{sample}".encode()).hexdigest()[:16]


def usage_record(stage: str, model: str, unit_id: str, usage: Usage, latency: float):
    return UsageRecord(
        stage=stage,
        model=model,
        unit_id=unit_id,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        cached=usage.cached_requests > 0 and usage.requests == 0,
        cost_usd=usage.cost_usd,
        latency_s=round(latency, 4),
    )


def _selected(sel: Any, usage: Usage) -> dict[str, Any]:
    if sel is None:
        return {}
    return {
        "selection_usage": usage,
        "method": sel.method,
        "validation_score": sel.validation_score,
        "selection_scorer": sel.selection_scorer,
        "candidates": sel.candidates,
        "validation_excerpts": sel.validation_excerpts,
    }


class ExplainStage(StageBase):
    name = "explain"

    def __init__(
        self, explainer: Explainer, records: Sequence[NeuronRecord], splits: SplitConfig
    ) -> None:
        self.explainer = explainer
        self.model = explainer.model
        self.records = {r.unit_id: r for r in records}
        self.splits = splits
        self._done: dict[str, set[int]] = {}

    def config(self) -> dict[str, Any]:
        return {**self.explainer.config(), "splits": self.splits.hashed()}

    def _key(self, unit_id: str, sample: int | None = None) -> ItemKey:
        return ItemKey(
            stage=self.name, config_hash=self.config_hash, unit_id=unit_id, sample_index=sample
        )

    def plan(self, run: RunDir, *, retry_failed: bool = False) -> Plan:
        h = self.config_hash
        done: dict[str, set[int]] = {}
        for e in run.explanations():
            if e.config_hash == h:
                done.setdefault(e.unit_id, set()).add(e.sample_index)
        self._done = done
        failed = {f.item_key for f in run.failures()} if not retry_failed else set()
        items, skipped = [], 0
        for unit in self.records:
            have = done.get(unit, set())
            missing = [s for s in range(self.explainer.n_samples) if s not in have]
            missing = [s for s in missing if self._key(unit, s) not in failed]
            if not missing or self._key(unit) in failed:
                skipped += 1
                continue
            items.append(WorkItem(key=self._key(unit), samples=tuple(missing)))
        return Plan(items, skipped)

    def _task(self, item: WorkItem) -> ExplainTask:
        rec = self.records[item.unit_id]
        splits = split_record(rec, self.splits)
        return ExplainTask(
            rec, splits.train, list(item.samples), splits.validation, splits.contrast
        )

    async def do(self, item: WorkItem) -> WorkResult:
        task = self._task(item)
        h = self.config_hash
        t0 = time.perf_counter()
        out = await self.explainer.explain(task)
        latency = time.perf_counter() - t0
        have = self._done.get(item.unit_id, set())
        train_ids = [e.excerpt_id for e in (*task.train, *task.contrast)]
        texts = [(s, t, r) for s, t, r in out.texts if s not in have]
        explanations = [
            # The call's usage is booked once, on the first explanation it produced.
            self._explanation(
                item.unit_id, sample, text, train_ids, raw=raw, usage=out.usage if k == 0 else None
            ).model_copy(update=_selected(out.extras.get(sample), out.selection_usage))
            for k, (sample, text, raw) in enumerate(texts)
        ]
        failures = [
            Failure(
                stage=self.name,
                unit_id=item.unit_id,
                sample_index=sample,
                reason=f"no usable explanation after {out.attempts} attempts"
                + (f": {out.reasons[sample]}" if sample in out.reasons else ""),
                raw=raw,
                attempts=out.attempts,
                config_hash=h,
            )
            for sample, raw in out.failed
        ]
        usage = [usage_record(self.name, self.model, item.unit_id, out.usage, latency)]
        sel = out.selection_usage
        if sel.requests or sel.cached_requests or sel.prompt_tokens:
            # Scoring candidates on the validation split: its own line, so the explainer's
            # tokens stay comparable with a single-sample explainer's.
            usage.append(usage_record("explain-select", out.selection_model, item.unit_id, sel, 0))
        return WorkResult(
            writes={"explanations": explanations} if explanations else {},
            usage=usage,
            failures=failures,
        )

    def estimate(self, item: WorkItem) -> Estimate:
        return self.explainer.estimate(self._task(item))

    def planned_explanations(self, plan: Plan, text: str) -> list[Explanation]:
        """Stand-ins for the explanations `plan` will write (ids are deterministic).

        Units the job would record as failures (nothing to explain) get none.
        """
        out = []
        for item in plan.items:
            try:
                train = split_record(self.records[item.unit_id], self.splits).train
            except NeuroscribeError:
                continue
            ids = [e.excerpt_id for e in train]
            out += [self._explanation(item.unit_id, s, text, ids) for s in item.samples]
        return out

    def _explanation(
        self,
        unit_id: str,
        sample: int,
        text: str,
        train_ids: list[str],
        *,
        raw: str | None = None,
        usage: Usage | None = None,
    ) -> Explanation:
        h = self.config_hash
        return Explanation(
            explanation_id=explanation_id(unit_id, h, sample),
            unit_id=unit_id,
            sample_index=sample,
            text=text,
            explainer=self.model,
            prompt_version=self.explainer.prompt_version,
            config_hash=h,
            train_excerpts=train_ids,
            method=self.explainer.name,
            raw=raw,
            usage=usage or Usage(),
        )
