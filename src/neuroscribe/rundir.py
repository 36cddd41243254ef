"""Load a finished (or partial) run directory into memory, validating every file.

The layout is the one the pipeline writes (see the README):

    run/manifest.json, records/*.jsonl, explanations.jsonl, simulations.jsonl,
    scores.jsonl, usage.jsonl, failures.jsonl

A missing JSONL file reads as an empty list (a run may stop after any stage); a
malformed line raises `DataError` naming the file and line.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from neuroscribe.errors import DataError
from neuroscribe.jsonl import read_jsonl, read_jsonl_if_exists
from neuroscribe.schema import (
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    UsageRecord,
)


@dataclass
class Run:
    """Everything a run directory holds, as validated models."""

    path: Path
    manifest: RunManifest | None
    records: list[NeuronRecord] = field(default_factory=list)
    explanations: list[Explanation] = field(default_factory=list)
    simulations: list[SequenceSimulation] = field(default_factory=list)
    scores: list[Score] = field(default_factory=list)
    usage: list[UsageRecord] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name

    def records_by_unit(self) -> dict[str, NeuronRecord]:
        return {r.unit_id: r for r in self.records}

    def explanations_by_id(self) -> dict[str, Explanation]:
        return {e.explanation_id: e for e in self.explanations}

    def latest_scores(self) -> list[Score]:
        """One score per explanation: the last line wins (a re-scored explanation)."""
        return list({s.explanation_id: s for s in self.scores}.values())

    def simulations_by_explanation(self) -> dict[str, list[SequenceSimulation]]:
        """Simulations grouped by explanation, one per excerpt (the last line wins)."""
        seen: dict[tuple[str, str], SequenceSimulation] = {}
        for s in self.simulations:
            seen[(s.explanation_id, s.excerpt_id)] = s
        out: dict[str, list[SequenceSimulation]] = defaultdict(list)
        for s in seen.values():
            out[s.explanation_id].append(s)
        return dict(out)

    def open_failures(self) -> list[Failure]:
        """Failures not resolved by a later success (e.g. `--retry-failed`), last line per key."""
        explained = {(e.unit_id, e.config_hash) for e in self.explanations}
        samples = {(e.unit_id, e.config_hash, e.sample_index) for e in self.explanations}
        simulated = {(s.explanation_id, s.config_hash) for s in self.simulations}
        scored = {(s.explanation_id, s.config_hash) for s in self.scores}
        still = []
        for f in {f.key: f for f in self.failures}.values():
            if f.stage == "explain":
                # "explain|unit|hash" for a whole unit, "...|sampleK" for one failed sample.
                _, _, sample = f.key.rpartition("|sample")
                if sample.isdigit():
                    if (f.unit_id, f.config_hash, int(sample)) in samples:
                        continue
                elif (f.unit_id, f.config_hash) in explained:
                    continue
            if f.stage == "simulate" and (f.explanation_id, f.config_hash) in simulated:
                continue
            if f.stage == "score" and (f.explanation_id, f.config_hash) in scored:
                continue
            still.append(f)
        return still

    def unit_ids(self) -> list[str]:
        """Every unit that appears in records, explanations or scores, in first-seen order."""
        ids: dict[str, None] = {}
        for group in (self.records, self.explanations, self.scores):
            for item in group:
                ids.setdefault(item.unit_id, None)
        return list(ids)


def load_manifest(path: Path) -> RunManifest | None:
    """Read manifest.json if present; raise DataError if it exists but does not parse."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return RunManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (json.JSONDecodeError, ValidationError) as e:
        raise DataError(f"{path}: invalid run manifest ({e})") from None


def load_run(path: Path | str) -> Run:
    """Load a run directory; every line of every file is validated."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: not a run directory")
    records: list[NeuronRecord] = []
    for f in sorted((root / "records").glob("*.jsonl")):
        records.extend(read_jsonl(f, NeuronRecord))
    run = Run(
        path=root,
        manifest=load_manifest(root / "manifest.json"),
        records=records,
        explanations=read_jsonl_if_exists(root / "explanations.jsonl", Explanation),
        simulations=read_jsonl_if_exists(root / "simulations.jsonl", SequenceSimulation),
        scores=read_jsonl_if_exists(root / "scores.jsonl", Score),
        usage=read_jsonl_if_exists(root / "usage.jsonl", UsageRecord),
        failures=read_jsonl_if_exists(root / "failures.jsonl", Failure),
    )
    if run.manifest is None and not (run.records or run.explanations or run.scores):
        raise DataError(f"{root}: no manifest.json, records, explanations or scores: not a run")
    return run


def split_unit_id(unit_id: str) -> tuple[str, str, str]:
    """Split "model/layer/index" from the right (model names may contain '/')."""
    parts = unit_id.rsplit("/", 2)
    if len(parts) < 3:
        return ("", "", unit_id)
    return parts[0], parts[1], parts[2]
