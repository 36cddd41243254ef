"""`RunDir`: the one owner of a run directory.

Only this module spells the file names of a run directory (see the README):

    run/manifest.json, summary.json, records/*.jsonl, explanations.jsonl,
    simulations.jsonl, scores.jsonl, usage.jsonl, failures.jsonl, .cache/

Everything else asks a `RunDir` for what it needs: validated lines, done-sets and open
failures (computed from typed fields, never by parsing key strings), the manifest and
the summary, and whole-line appends. A missing JSONL file reads as an empty list (a
run may stop after any stage); a malformed line raises `DataError` naming the file
and line.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import append_jsonl, read_jsonl, read_jsonl_if_exists, write_json_atomic
from neuroscribe.schema import (
    SIMILARITY_STRATEGIES,
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    SequenceSimulation,
    UsageRecord,
    utc_now,
)
from neuroscribe.vision.store import ImageStore

log = logging.getLogger(__name__)

# The output files a stage may append to, by name.
OutputName = Literal["explanations", "simulations", "scores", "usage", "failures"]
_FILES: dict[str, tuple[str, type[BaseModel]]] = {
    "explanations": ("explanations.jsonl", Explanation),
    "simulations": ("simulations.jsonl", SequenceSimulation),
    "scores": ("scores.jsonl", Score),
    "usage": ("usage.jsonl", UsageRecord),
    "failures": ("failures.jsonl", Failure),
}


LOCK_NAME = ".lock"
# Locks this process holds, by resolved path: [open file, depth] (re-entrancy).
_HELD: dict[str, list[Any]] = {}

# The key of each output line: a second line with the same key is a duplicate.
_DEDUP: dict[str, Any] = {
    "explanations": lambda e: (e.unit_id, e.config_hash, e.sample_index),
    "simulations": lambda s: (s.explanation_id, s.excerpt_id, s.config_hash),
    "scores": lambda s: (s.explanation_id, s.config_hash, s.scorer),
}


def open_failures(
    failures: Sequence[Failure],
    explanations: Sequence[Explanation],
    scores: Sequence[Score],
    simulations: Sequence[SequenceSimulation] = (),
) -> list[Failure]:
    """Failures not resolved by a later success (e.g. `--retry-failed`), last line per key.

    Resolution compares typed fields: an explain failure of one sample is resolved by
    that sample's explanation, one of a whole unit by any explanation of the unit in the
    same key space; a failure about an explanation (simulating or scoring it) by a score
    of it in the same key space (or, for runs written by 0.1, its simulations).
    """
    samples = {(e.unit_id, e.config_hash, e.sample_index) for e in explanations}
    units = {(e.unit_id, e.config_hash) for e in explanations}
    scored = {(s.explanation_id, s.config_hash) for s in scores}
    scored |= {(s.explanation_id, s.config_hash) for s in simulations}
    still = []
    for f in {f.item_key: f for f in failures}.values():
        if f.explanation_id is not None:
            if (f.explanation_id, f.config_hash) in scored:
                continue
        elif f.sample_index is not None:
            if (f.unit_id, f.config_hash, f.sample_index) in samples:
                continue
        elif (f.unit_id, f.config_hash) in units:
            continue
        still.append(f)
    return still


@dataclass
class Run:
    """A snapshot of everything a run directory holds, as validated models."""

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

    def latest_scores(self, scorer: str | None = None) -> list[Score]:
        """One score per (explanation, scorer): the last line wins (a re-scored explanation).

        With `scorer`, only that scorer's scores (one per explanation).
        """
        latest = {(s.explanation_id, s.scorer): s for s in self.scores}
        return [s for s in latest.values() if scorer is None or s.scorer == scorer]

    def scorers(self) -> list[str]:
        """The scorers that scored this run, in first-seen order."""
        return list(dict.fromkeys(s.scorer for s in self.scores))

    def simulations_by_explanation(self) -> dict[str, list[SequenceSimulation]]:
        """Simulations grouped by explanation, one per excerpt (the last line wins, but a
        similarity scorer's line never hides a simulation of the same excerpt)."""
        seen: dict[tuple[str, str], SequenceSimulation] = {}
        for s in self.simulations:
            key = (s.explanation_id, s.excerpt_id)
            old = seen.get(key)
            if (
                old is not None
                and s.strategy in SIMILARITY_STRATEGIES
                and old.strategy not in SIMILARITY_STRATEGIES
            ):
                continue
            seen[key] = s
        out: dict[str, list[SequenceSimulation]] = defaultdict(list)
        for s in seen.values():
            out[s.explanation_id].append(s)
        return dict(out)

    def open_failures(self) -> list[Failure]:
        return open_failures(self.failures, self.explanations, self.scores, self.simulations)

    def unit_ids(self) -> list[str]:
        """Every unit that appears in records, explanations or scores, in first-seen order."""
        ids: dict[str, None] = {}
        for group in (self.records, self.explanations, self.scores):
            for item in group:
                ids.setdefault(item.unit_id, None)
        return list(ids)


class RunDir:
    """A run directory: paths, validated reads, appends, manifest, summary, failures."""

    CHECKPOINT_DIR = ".record-checkpoint"

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------ paths

    @property
    def records_dir(self) -> Path:
        return self.root / "records"

    @property
    def images(self) -> ImageStore:
        """The run's pictures (vision units): content-addressed files under images/."""
        return ImageStore(self.root)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def summary_path(self) -> Path:
        return self.root / "summary.json"

    @property
    def cache_path(self) -> Path:
        """The response cache: RUN/.cache/responses.sqlite."""
        return self.root / ".cache" / "responses.sqlite"

    @property
    def checkpoint_path(self) -> Path:
        """The recorder's resumable state (removed once the records are written)."""
        return self.root / self.CHECKPOINT_DIR / "state.pt"

    def path(self, name: OutputName) -> Path:
        return self.root / _FILES[name][0]

    # ------------------------------------------------------------ records

    def record_files(self) -> list[Path]:
        return sorted(self.records_dir.glob("*.jsonl")) if self.records_dir.is_dir() else []

    def has_records(self) -> bool:
        return bool(self.record_files())

    def records(self) -> list[NeuronRecord]:
        """Every unit's record; a unit id twice, or no records at all, is a DataError."""
        if not self.records_dir.is_dir():
            raise DataError(
                f"{self.records_dir}: no records directory (run `neuroscribe record` first)"
            )
        files = self.record_files()
        if not files:
            raise DataError(f"{self.records_dir}: no *.jsonl record files")
        out: list[NeuronRecord] = []
        where: dict[str, str] = {}
        for f in files:
            if not f.is_file():
                raise DataError(f"{f}: not a file (record files are JSONL files)")
            records = read_jsonl(f, NeuronRecord, torn_tail_ok=False)
            for lineno, rec in enumerate(records, start=1):
                if rec.unit_id in where:
                    raise DataError(
                        f"{f}:{lineno}: unit {rec.unit_id} already in {where[rec.unit_id]}"
                    )
                where[rec.unit_id] = f"{f.name}:{lineno}"
                out.append(rec)
        if not out:
            raise DataError(f"{self.records_dir}: the record files are empty")
        return out

    # ------------------------------------------------------------ outputs

    def read(self, name: OutputName) -> list[Any]:
        """The file's lines, validated; output lines written twice for one key (two
        processes that raced before the lock existed) are read once, the first kept."""
        filename, model = _FILES[name]
        lines = read_jsonl_if_exists(self.root / filename, model)
        key = _DEDUP.get(name)
        if key is None:
            return lines
        seen: dict[tuple[Any, ...], Any] = {}
        for line in lines:
            seen.setdefault(key(line), line)
        return list(seen.values())

    # ------------------------------------------------------------ the lock

    @contextmanager
    def lock(self) -> Iterator[RunDir]:
        """Hold the run directory exclusively (one writing job at a time).

        A second job on the same directory would send every request again and write
        every result twice; it is refused at once with the holder's pid. Re-entrant in
        one process (`run` records, explains and scores under one lock). The lock is
        the OS's (flock): it goes away with its process, even after `kill -9`.
        """
        key = str(self.root.resolve())
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
            try:
                yield self
            finally:
                held[1] -= 1
            return
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / LOCK_NAME
        f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held across the yield)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise ConfigError(
                f"{self.root} is in use by another neuroscribe job (pid {holder}); "
                "wait for it to finish or stop it, then rerun"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(str(os.getpid()))
        f.flush()
        _HELD[key] = [f, 1]
        try:
            yield self
        finally:
            _HELD.pop(key, None)
            f.close()  # closing releases the lock

    def explanations(self) -> list[Explanation]:
        return self.read("explanations")

    def simulations(self) -> list[SequenceSimulation]:
        return self.read("simulations")

    def scores(self) -> list[Score]:
        return self.read("scores")

    def usage(self) -> list[UsageRecord]:
        return self.read("usage")

    def failures(self) -> list[Failure]:
        return self.read("failures")

    def append(self, name: OutputName, lines: Iterable[BaseModel]) -> int:
        """Append whole validated lines (crash-safe; see `neuroscribe.jsonl`)."""
        return append_jsonl(self.path(name), lines)

    def open_failures(self) -> list[Failure]:
        return open_failures(
            self.failures(), self.explanations(), self.scores(), self.simulations()
        )

    def spend(self, stage: str | None = None) -> tuple[float, float]:
        """(USD spent so far in this run, mean cost of one `stage` unit), from usage.jsonl."""
        usage = self.usage()
        priced = [u.cost_usd for u in usage if u.stage == stage and u.cost_usd]
        mean = sum(priced) / len(priced) if priced else 0.0
        return sum(u.cost_usd or 0.0 for u in usage), mean

    # ------------------------------------------------------------ manifest

    def manifest(self) -> RunManifest | None:
        """manifest.json if present; DataError if it exists but does not parse."""
        path = self.manifest_path
        if not path.exists():
            return None
        if not path.is_file():
            raise DataError(f"{path}: not a file (a run manifest is a JSON file)")
        try:
            return RunManifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except UnicodeDecodeError:
            raise DataError(f"{path}: not a text file (a run manifest is UTF-8 JSON)") from None
        except (json.JSONDecodeError, ValidationError) as e:
            raise DataError(f"{path}: invalid run manifest ({e})") from None

    def write_manifest(self, manifest: RunManifest) -> None:
        write_json_atomic(self.manifest_path, manifest)

    def update_manifest(
        self, stage: str, info: dict[str, Any], probes: dict[str, Any] | None = None
    ) -> None:
        """Record `stage`'s configuration (and endpoint probes) in manifest.json."""
        from neuroscribe import __version__

        manifest = self.manifest() or RunManifest()
        manifest.package_version = __version__
        manifest.updated_at = utc_now()
        manifest.stages[stage] = info
        if probes:
            manifest.probes.update(_redacted(probes))
        self.write_manifest(manifest)

    def record_simulator_check(self, key: str, entry: dict[str, Any]) -> None:
        """Keep a simulator's ground-truth check result with the scores it produced."""
        manifest = self.manifest() or RunManifest()
        manifest.simulator_checks[key] = entry
        self.write_manifest(manifest)

    def config_change(self, stage: str, cfg: dict[str, Any], h: str) -> str | None:
        """A warning when `stage` last ran here with another configuration, else None.

        A changed configuration is not an error: it gets its own config hash, i.e. a
        new key space, so earlier results stay in the files untouched and are not
        reused or mixed.
        """
        manifest = self.manifest()
        old = manifest.stages.get(stage) if manifest else None
        if not old or old.get("config_hash") in (None, h):
            return None
        changed = config_changes(old, {"config_hash": h, **cfg})
        return (
            f"{stage}: the configuration differs from the last {stage} run in {self.root} "
            f"({'; '.join(changed) or 'details changed'}): starting a new key space "
            f"(config {h}, was {old.get('config_hash')}); earlier results are kept but not reused"
        )

    # ------------------------------------------------------------ summary

    def summary(self) -> dict[str, Any]:
        """RUN/summary.json as a dict (empty stages when there is none yet)."""
        try:
            data = json.loads(self.summary_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"stages": {}, "totals": {}}
        return data if isinstance(data, dict) else {"stages": {}, "totals": {}}

    def write_summary(self, stages: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Update RUN/summary.json: each stage's last invocation, plus all-time totals.

        `stages.<stage>` holds the counts of the last invocation of that stage.
        `totals.<stage>` sums usage.jsonl over the whole run (every invocation, cached
        calls included at $0). Written atomically (temporary file + rename).
        """
        data = self.summary()
        data.setdefault("stages", {}).update(stages)
        totals: dict[str, dict[str, Any]] = {}
        for u in self.usage():
            t = totals.setdefault(
                u.stage,
                {"calls": 0, "cached_calls": 0, "prompt_tokens": 0, "completion_tokens": 0},
            )
            t["calls"] += 1
            t["cached_calls"] += int(u.cached)
            t["prompt_tokens"] += u.prompt_tokens
            t["completion_tokens"] += u.completion_tokens
            t["cost_usd"] = round(t.get("cost_usd", 0.0) + (u.cost_usd or 0.0), 6)
        data["totals"] = totals
        data["total_cost_usd"] = round(sum(t.get("cost_usd", 0.0) for t in totals.values()), 6)
        data["updated_at"] = utc_now()
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.summary_path.with_name(f".summary.json.tmp-{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.summary_path)
        return data

    # ------------------------------------------------------------ snapshot

    def load(self) -> Run:
        """Load every file of the run; every line of every file is validated."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a run directory")
        records: list[NeuronRecord] = []
        for f in self.record_files():
            records.extend(read_jsonl(f, NeuronRecord, torn_tail_ok=False))
        run = Run(
            path=self.root,
            manifest=self.manifest(),
            records=records,
            explanations=self.explanations(),
            simulations=self.simulations(),
            scores=self.scores(),
            usage=self.usage(),
            failures=self.failures(),
        )
        if run.manifest is None and not (run.records or run.explanations or run.scores):
            raise DataError(
                f"{self.root}: no manifest.json, records, explanations or scores: not a run"
            )
        return run


def _redacted(obj: Any) -> Any:
    """Credentials never reach a file: every URL-looking string in a probe is redacted."""
    from neuroscribe.llm import redact_url

    if isinstance(obj, dict):
        return {k: _redacted(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_redacted(v) for v in obj]
    if isinstance(obj, str) and "://" in obj:
        return redact_url(obj)
    return obj


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


def load_run(path: Path | str) -> Run:
    """Load a run directory; every line of every file is validated."""
    return RunDir(path).load()


def split_unit_id(unit_id: str) -> tuple[str, str, str]:
    """Split "model/layer/index" from the right (model names may contain '/')."""
    parts = unit_id.rsplit("/", 2)
    if len(parts) < 3:
        return ("", "", unit_id)
    return parts[0], parts[1], parts[2]
