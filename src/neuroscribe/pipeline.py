"""The explain → simulate → score stages over a run directory.

Each stage reads the previous stage's JSONL, works out which keys are already done
(so a rerun skips them), hands the rest to the job engine and appends its own lines.
Keys: explain = (unit, explainer config); simulate and score = (explanation, simulator
config). A changed configuration gets a new config hash, i.e. a new key space, instead
of mixing with earlier results.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from neuroscribe import __version__
from neuroscribe.engine import JobEngine, JobSummary, WorkItem, WorkResult
from neuroscribe.errors import DataError, OutputError
from neuroscribe.explainer import ExplainerConfig, explain_excerpts
from neuroscribe.jsonl import read_jsonl, read_jsonl_if_exists, write_json_atomic
from neuroscribe.llm.base import LLM
from neuroscribe.rundir import load_manifest
from neuroscribe.schema import (
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    Usage,
    UsageRecord,
    utc_now,
)
from neuroscribe.scorer import ExcerptResult, score_explanation
from neuroscribe.simulator.base import Simulator
from neuroscribe.splits import SplitConfig, split_record

log = logging.getLogger(__name__)


@dataclass
class RunPaths:
    root: Path

    @property
    def records(self) -> Path:
        return self.root / "records"

    @property
    def explanations(self) -> Path:
        return self.root / "explanations.jsonl"

    @property
    def simulations(self) -> Path:
        return self.root / "simulations.jsonl"

    @property
    def scores(self) -> Path:
        return self.root / "scores.jsonl"

    @property
    def usage(self) -> Path:
        return self.root / "usage.jsonl"

    @property
    def failures(self) -> Path:
        return self.root / "failures.jsonl"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"


def config_hash(obj: dict[str, Any]) -> str:
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def explanation_id(unit_id: str, cfg_hash: str, sample: int) -> str:
    return hashlib.sha256(f"{unit_id}|{cfg_hash}|{sample}".encode()).hexdigest()[:16]


# ---------------------------------------------------------------- records and selection


def load_records(run: Path) -> list[NeuronRecord]:
    paths = RunPaths(Path(run))
    if not paths.records.is_dir():
        raise DataError(f"{paths.records}: no records directory (run `neuroscribe record` first)")
    files = sorted(paths.records.glob("*.jsonl"))
    if not files:
        raise DataError(f"{paths.records}: no *.jsonl record files")
    records: list[NeuronRecord] = []
    where: dict[str, str] = {}
    for f in files:
        for lineno, rec in enumerate(read_jsonl(f, NeuronRecord), start=1):
            if rec.unit_id in where:
                raise DataError(f"{f}:{lineno}: unit {rec.unit_id} already in {where[rec.unit_id]}")
            where[rec.unit_id] = f"{f.name}:{lineno}"
            records.append(rec)
    if not records:
        raise DataError(f"{paths.records}: the record files are empty")
    return records


def select_units(
    records: Sequence[NeuronRecord], patterns: Sequence[str] | None, max_units: int | None
) -> list[NeuronRecord]:
    """Units whose id matches any pattern (exact ids or globs like `model/3/*`)."""
    chosen = list(records)
    if patterns:
        chosen = [r for r in chosen if any(fnmatch.fnmatchcase(r.unit_id, p) for p in patterns)]
        if not chosen:
            raise DataError(f"no unit matches {', '.join(patterns)}")
    if max_units is not None:
        chosen = chosen[:max_units]
    return chosen


def failed_keys(paths: RunPaths) -> set[str]:
    return {f.key for f in read_jsonl_if_exists(paths.failures, Failure)}


def update_manifest(
    run: Path, stage: str, info: dict[str, Any], probes: dict | None = None
) -> None:
    paths = RunPaths(Path(run))
    manifest = load_manifest(paths.manifest) or RunManifest()
    manifest.package_version = __version__
    manifest.updated_at = utc_now()
    manifest.stages[stage] = info
    if probes:
        manifest.probes.update(probes)
    write_json_atomic(paths.manifest, manifest)


def run_spend(run: Path, stage: str | None = None) -> tuple[float, float]:
    """(USD spent so far in a run directory, mean cost of one `stage` unit), from usage.jsonl."""
    usage = read_jsonl_if_exists(RunPaths(Path(run)).usage, UsageRecord)
    priced = [u.cost_usd for u in usage if u.stage == stage and u.cost_usd]
    mean = sum(priced) / len(priced) if priced else 0.0
    return sum(u.cost_usd or 0.0 for u in usage), mean


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences between two stage configurations ("a.b: x -> y")."""
    out: list[str] = []
    for k in sorted(set(old) | set(new)):
        if k == "config_hash":
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def check_config_change(run: Path, stage: str, cfg: dict[str, Any], h: str) -> list[str]:
    """Warn (and return the warning) when `stage` last ran here with another configuration.

    A changed configuration is not an error: it gets its own config hash, i.e. a new key
    space, so earlier results stay in the files untouched and are not reused or mixed.
    """
    manifest = load_manifest(RunPaths(Path(run)).manifest)
    old = manifest.stages.get(stage) if manifest else None
    if not old or old.get("config_hash") in (None, h):
        return []
    changed = config_changes(old, {"config_hash": h, **cfg})
    msg = (
        f"{stage}: the configuration differs from the last {stage} run in {run} "
        f"({'; '.join(changed) or 'details changed'}): starting a new key space "
        f"(config {h}, was {old.get('config_hash')}); earlier results are kept but not reused"
    )
    log.warning(msg)
    return [msg]


def _usage(stage: str, model: str, unit_id: str, usage: Any, latency: float) -> UsageRecord:
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


# ---------------------------------------------------------------- explain


class ExplainSettings(BaseModel):
    explainer: ExplainerConfig = ExplainerConfig()
    splits: SplitConfig = SplitConfig()


def explain_config(spec: str, settings: ExplainSettings) -> dict[str, Any]:
    """The explain stage's configuration; its hash keys the explanations it writes."""
    return {"explainer": spec, **settings.model_dump(), "prompt": "explain-v1"}


async def explain_stage(
    run: Path,
    llm: LLM,
    records: Sequence[NeuronRecord],
    settings: ExplainSettings,
    *,
    concurrency: int = 8,
    retry_failed: bool = False,
    max_cost: float | None = None,
    show_progress: bool = True,
) -> JobSummary:
    paths = RunPaths(Path(run))
    cfg = explain_config(llm.spec, settings)
    h = config_hash(cfg)
    warnings = check_config_change(run, "explain", cfg, h)
    # Keyed per (unit, sample): a unit whose samples were only partly written (a crash
    # mid-write) is redone and only its missing samples are appended.
    done: dict[str, set[int]] = {}
    for e in read_jsonl_if_exists(paths.explanations, Explanation):
        if e.config_hash == h:
            done.setdefault(e.unit_id, set()).add(e.sample_index)
    failed = failed_keys(paths)
    n_samples = settings.explainer.n_samples
    items, skipped = [], 0
    for rec in records:
        key = f"explain|{rec.unit_id}|{h}"
        have = done.get(rec.unit_id, set())
        missing = [s for s in range(n_samples) if s not in have]
        if not retry_failed:
            missing = [s for s in missing if f"{key}|sample{s}" not in failed]
        if not missing or (key in failed and not retry_failed):
            skipped += 1
            continue
        items.append(WorkItem(key=key, unit_id=rec.unit_id, payload=rec))

    async def work(item: WorkItem) -> WorkResult:
        rec: NeuronRecord = item.payload
        splits = split_record(rec, settings.splits)
        t0 = time.perf_counter()
        out = await explain_excerpts(llm, splits.train, settings.explainer)
        latency = time.perf_counter() - t0
        train_ids = [e.excerpt_id for e in splits.train]
        explanations = [
            Explanation(
                explanation_id=explanation_id(rec.unit_id, h, sample),
                unit_id=rec.unit_id,
                sample_index=sample,
                text=text,
                explainer=llm.spec,
                prompt_version=out.prompt_version,
                config_hash=h,
                train_excerpts=train_ids,
                raw=raw,
                # The call's usage is booked once, on the first explanation it produced.
                usage=out.usage if k == 0 else Usage(),
            )
            for k, (sample, text, raw) in enumerate(out.texts)
        ]
        have = done.get(rec.unit_id, set())
        explanations = [e for e in explanations if e.sample_index not in have]
        failures = [
            Failure(
                stage="explain",
                unit_id=rec.unit_id,
                key=item.key if not explanations else f"{item.key}|sample{sample}",
                reason=f"no usable explanation after {settings.explainer.max_attempts} attempts",
                raw=raw,
                attempts=settings.explainer.max_attempts,
                config_hash=h,
            )
            for sample, raw in out.failed
        ]
        return WorkResult(
            writes={paths.explanations: explanations} if explanations else {},
            usage=[_usage("explain", llm.spec, rec.unit_id, out.usage, latency)],
            failures=failures,
        )

    spent, unit_cost = run_spend(run, "explain") if max_cost is not None else (0.0, 0.0)
    engine = JobEngine(
        paths.root,
        "explain",
        h,
        concurrency=concurrency,
        max_cost=max_cost,
        show_progress=show_progress,
    )
    if max_cost is not None:
        engine.spent = engine.spent_before = spent
        engine.unit_cost_hint = unit_cost
        engine.check_budget(len(items))  # before anything is written
    # Recorded before the work starts, so a killed job's manifest names its config.
    update_manifest(run, "explain", {"config_hash": h, **cfg})
    summary = await engine.run(items, work, skipped=skipped)
    summary.warnings = warnings
    return summary


# ---------------------------------------------------------------- simulate


def simulator_config(sim: Simulator, splits: SplitConfig) -> dict[str, Any]:
    return {
        "simulator": sim.spec,
        "strategy": sim.strategy,
        "prompt_version": sim.prompt_version,
        "scale_max": getattr(sim, "scale_max", None),
        "n_examples": getattr(sim, "n_examples", None),
        "splits": splits.model_dump(),
    }


async def simulate_stage(
    run: Path,
    sim: Simulator,
    records: Sequence[NeuronRecord],
    splits_cfg: SplitConfig,
    *,
    concurrency: int = 8,
    retry_failed: bool = False,
    max_cost: float | None = None,
    show_progress: bool = True,
    probes: dict | None = None,
) -> JobSummary:
    paths = RunPaths(Path(run))
    cfg = simulator_config(sim, splits_cfg)
    h = config_hash(cfg)
    by_unit = {r.unit_id: r for r in records}
    explanations = [
        e for e in read_jsonl_if_exists(paths.explanations, Explanation) if e.unit_id in by_unit
    ]
    # Keyed per (explanation, excerpt): an explanation whose lines were only partly
    # written (a crash mid-write) is simulated again and only the missing lines appended.
    done: dict[str, set[str]] = {}
    for s in read_jsonl_if_exists(paths.simulations, SequenceSimulation):
        if s.config_hash == h:
            done.setdefault(s.explanation_id, set()).add(s.excerpt_id)
    failed = failed_keys(paths)
    splits_of: dict[str, Any] = {}
    items, skipped = [], 0
    for e in explanations:
        if e.unit_id not in splits_of:
            splits_of[e.unit_id] = split_record(by_unit[e.unit_id], splits_cfg)
        held = splits_of[e.unit_id].held_out
        # A genuinely inconsistent request, refused before anything is sent: these
        # split settings would score the explanation on excerpts its explainer saw.
        leaked = {x.excerpt_id for x in held} & set(e.train_excerpts)
        if leaked:
            raise DataError(
                f"unit {e.unit_id}: held-out excerpts {sorted(leaked)} were shown to the "
                "explainer of its explanation; use the split settings (--n-train, "
                "--n-test-top, --n-test-random) the explanations were made with"
            )
        key = f"simulate|{e.explanation_id}|{h}"
        have = done.get(e.explanation_id, set())
        if (have and {x.excerpt_id for x in held} <= have) or (key in failed and not retry_failed):
            skipped += 1
            continue
        items.append(
            WorkItem(key=key, unit_id=e.unit_id, payload=e, explanation_id=e.explanation_id)
        )
    warnings = check_config_change(run, "simulate", cfg, h)

    async def work(item: WorkItem) -> WorkResult:
        e: Explanation = item.payload
        held = splits_of[e.unit_id].held_out
        t0 = time.perf_counter()
        try:
            results = await sim.simulate(e.text, [x.record.tokens for x in held])
        except OutputError as err:
            # The unusable answers were paid for: their usage goes to usage.jsonl too.
            if err.usage is not None:
                err.usage_records = [  # type: ignore[attr-defined]
                    _usage("simulate", sim.spec, e.unit_id, err.usage, time.perf_counter() - t0)
                ]
            raise
        latency = time.perf_counter() - t0
        sims = [
            SequenceSimulation(
                explanation_id=e.explanation_id,
                unit_id=e.unit_id,
                excerpt_id=x.excerpt_id,
                kind=x.kind,  # type: ignore[arg-type]
                role=x.role,  # type: ignore[arg-type]
                tokens=x.record.tokens,
                true_activations=x.record.activations,
                expected_activations=r.expected,
                distributions=r.distributions,
                scale_max=r.scale_max,
                strategy=sim.strategy,
                simulator=sim.spec,
                prompt_version=sim.prompt_version,
                config_hash=h,
                usage=r.usage,
            )
            for x, r in zip(held, results, strict=True)
        ]
        total = sims[0].usage
        for s in sims[1:]:
            total = total.add(s.usage)
        have = done.get(e.explanation_id, set())
        sims = [s for s in sims if s.excerpt_id not in have]
        return WorkResult(
            writes={paths.simulations: sims},
            usage=[_usage("simulate", sim.spec, e.unit_id, total, latency)],
        )

    spent, unit_cost = run_spend(run, "simulate") if max_cost is not None else (0.0, 0.0)
    engine = JobEngine(
        paths.root,
        "simulate",
        h,
        concurrency=concurrency,
        max_cost=max_cost,
        show_progress=show_progress,
    )
    if max_cost is not None:
        engine.spent = engine.spent_before = spent
        engine.unit_cost_hint = unit_cost
        engine.check_budget(len(items))  # before anything is written
    update_manifest(run, "simulate", {"config_hash": h, **cfg}, probes=probes)
    summary = await engine.run(items, work, skipped=skipped)
    summary.warnings = warnings
    return summary


# ---------------------------------------------------------------- score


def score_stage(
    run: Path, *, sim_config_hash: str | None = None, seed: int = 0, show_progress: bool = False
) -> JobSummary:
    """Score every simulated explanation that has no score yet (pure maths, no LLM calls)."""
    paths = RunPaths(Path(run))
    sims = read_jsonl_if_exists(paths.simulations, SequenceSimulation)
    if sim_config_hash:
        sims = [s for s in sims if s.config_hash == sim_config_hash]
    explanations = {
        e.explanation_id: e for e in read_jsonl_if_exists(paths.explanations, Explanation)
    }
    scored = {(s.explanation_id, s.config_hash) for s in read_jsonl_if_exists(paths.scores, Score)}
    groups: dict[tuple[str, str], list[SequenceSimulation]] = {}
    for s in sims:
        groups.setdefault((s.explanation_id, s.config_hash), []).append(s)
    items, skipped = [], 0
    for (eid, h), group in groups.items():
        if (eid, h) in scored:
            skipped += 1
            continue
        if eid not in explanations:
            raise DataError(f"{paths.simulations}: simulations of unknown explanation {eid}")
        unit = explanations[eid].unit_id
        items.append(WorkItem(f"score|{eid}|{h}", unit, (h, group), explanation_id=eid))

    async def work(item: WorkItem) -> WorkResult:
        h, group = item.payload
        e = explanations[item.explanation_id or ""]
        res = score_explanation(
            [
                ExcerptResult(s.kind, s.role, s.true_activations, s.expected_activations)
                for s in group
            ],
            seed=seed,
        )
        first = group[0]
        score = Score(
            explanation_id=e.explanation_id,
            unit_id=e.unit_id,
            explanation=e.text,
            explainer=e.explainer,
            simulator=first.simulator,
            strategy=first.strategy,
            prompt_version=first.prompt_version,
            config_hash=h,
            score=res.score,
            top_score=res.top_score,
            random_score=res.random_score,
            ci_low=res.ci[0] if res.ci else None,
            ci_high=res.ci[1] if res.ci else None,
            r2=res.r2,
            abs_dev_score=res.abs_dev_score,
            calibration_slope=res.calibration.slope if res.calibration else None,
            calibration_intercept=res.calibration.intercept if res.calibration else None,
            n_excerpts=res.n_excerpts,
            n_tokens=res.n_tokens,
            flags=res.flags,
        )
        return WorkResult(writes={paths.scores: [score]})

    engine = JobEngine(
        paths.root, "score", sim_config_hash or "all", concurrency=1, show_progress=show_progress
    )
    return asyncio.run(engine.run(items, work, skipped=skipped))
