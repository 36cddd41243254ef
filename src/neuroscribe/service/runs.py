"""Run directories under the server's root: names, results (paged, filtered), live progress.

A run is named by one path segment (`[A-Za-z0-9][A-Za-z0-9._-]*`), a direct child of
the root: no separators, no `..`, no hidden names (the service keeps its own files in
`ROOT/.neuroscribe`), and the resolved path must still lie under the root (a symlink
pointing elsewhere is refused). Results are read with the viewer's `ReportData`, built
once per state of the run's files and rebuilt when they change.
"""

from __future__ import annotations

import json
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.rundir import RunDir, load_run, open_failures
from neuroscribe.view.data import ReportData

RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
SERVICE_DIR = ".neuroscribe"


class NotFound(LookupError):
    """A run, unit or job that does not exist (HTTP 404)."""


def run_path(root: Path, name: str, *, must_exist: bool = True) -> Path:
    """The directory of run `name` under `root`, or ConfigError saying what is wrong."""
    if not isinstance(name, str) or not RUN_NAME.match(name) or ".." in name:
        raise ConfigError(
            f"run name {name[:80]!r} is not allowed: use 1-128 letters, digits, '.', '_' or "
            "'-', starting with a letter or digit (one folder directly under the server's root)"
        )
    path = root / name
    resolved, rroot = path.resolve(), root.resolve()
    if resolved == rroot or not resolved.is_relative_to(rroot):
        raise ConfigError(f"run {name!r} points outside the server's root")
    if must_exist and not path.is_dir():
        raise NotFound(f"no run {name!r} under the server's root")
    return path


def list_runs(root: Path) -> list[dict[str, Any]]:
    out = []
    for p in sorted(root.iterdir()) if root.is_dir() else []:
        if not p.is_dir() or not RUN_NAME.match(p.name):
            continue
        rd = RunDir(p)
        has_records = rd.has_records()
        if not (has_records or rd.manifest_path.exists()):
            continue
        out.append(
            {
                "name": p.name,
                "has_records": has_records,
                "has_explanations": rd.path("explanations").exists(),
                "has_scores": rd.path("scores").exists(),
            }
        )
    return out


# ---------------------------------------------------------------- results


def _signature(path: Path) -> tuple:
    """What changes when the run's files do (cheap: a stat per file)."""
    sig = []
    for p in [path / "manifest.json", *sorted((path / "records").glob("*.jsonl"))] + [
        path / f"{n}.jsonl"
        for n in ("explanations", "simulations", "scores", "failures", "typographic")
    ]:
        try:
            st = p.stat()
            sig.append((p.name, st.st_size, st.st_mtime_ns))
        except OSError:
            sig.append((p.name, None, None))
    return tuple(sig)


class ResultCache:
    """`ReportData` per run, rebuilt when the run's files change (a few runs kept)."""

    def __init__(self, size: int = 8) -> None:
        self.size = size
        self._items: OrderedDict[Path, tuple[tuple, ReportData]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: Path) -> ReportData:
        sig = _signature(path)
        with self._lock:
            hit = self._items.get(path)
            if hit is not None and hit[0] == sig:
                self._items.move_to_end(path)
                return hit[1]
        try:
            data = ReportData(load_run(path))
        except DataError as e:
            raise NotFound(str(e)) from None
        with self._lock:
            self._items[path] = (sig, data)
            self._items.move_to_end(path)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return data


def summaries(data: ReportData) -> list[Any]:
    """The unit list, built once per state of the run (the cache keeps `data` per state)."""
    rows = getattr(data, "_service_summaries", None)
    if rows is None:
        rows = data.summaries()
        data._service_summaries = rows  # type: ignore[attr-defined]
    return list(rows)


def _in_range(v: float | None, lo: float | None, hi: float | None) -> bool:
    if lo is None and hi is None:
        return True
    if v is None:
        return False
    return (lo is None or v >= lo) and (hi is None or v <= hi)


def page(items: list[Any], offset: int, limit: int) -> dict[str, Any]:
    return {"items": items[offset : offset + limit], "total": len(items), "offset": offset,
            "limit": limit}  # fmt: skip


def query_units(
    data: ReportData,
    *,
    layer: str | None = None,
    q: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
    sort: str = "unit",
) -> list[dict[str, Any]]:
    rows = summaries(data)
    if layer is not None:
        rows = [r for r in rows if r.layer == layer]
    if q:
        ql = q.lower()
        rows = [
            r
            for r in rows
            if ql in r.unit_id.lower() or any(ql in e.lower() for e in r.explanations)
        ]
    rows = [r for r in rows if _in_range(r.best_score, min_score, max_score)]
    if sort == "score":
        rows.sort(key=lambda r: (r.best_score is None, -(r.best_score or 0.0)))
    return [r.model_dump(mode="json") for r in rows]


def query_explanations(
    data: ReportData,
    *,
    unit: str | None = None,
    layer: str | None = None,
    q: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
) -> list[dict[str, Any]]:
    out = []
    ql = q.lower() if q else None
    for unit_id in data.unit_ids:
        if unit is not None and unit_id != unit:
            continue
        _, unit_layer, _ = data._ids(unit_id)
        if layer is not None and unit_layer != layer:
            continue
        for e, s in data._ranked(unit_id):
            score = None if s is None else s.metrics.get(s.primary_metric)
            if ql and ql not in e.text.lower() and ql not in unit_id.lower():
                continue
            if not _in_range(score, min_score, max_score):
                continue
            out.append(
                {
                    "explanation_id": e.explanation_id,
                    "unit_id": e.unit_id,
                    "layer": unit_layer,
                    "sample_index": e.sample_index,
                    "text": e.text,
                    "explainer": e.explainer,
                    "prompt_version": e.prompt_version,
                    "config_hash": e.config_hash,
                    "score": score,
                    "created_at": e.created_at,
                }
            )
    return out


def query_scores(
    data: ReportData,
    *,
    unit: str | None = None,
    layer: str | None = None,
    scorer: str | None = None,
    min_score: float | None = None,
    max_score: float | None = None,
) -> list[dict[str, Any]]:
    out = []
    for s in data.run.latest_scores(scorer):
        if unit is not None and s.unit_id != unit:
            continue
        _, unit_layer, _ = data._ids(s.unit_id)
        if layer is not None and unit_layer != layer:
            continue
        if not _in_range(s.metrics.get(s.primary_metric), min_score, max_score):
            continue
        d = s.model_dump(mode="json")
        d["layer"] = unit_layer
        out.append(d)
    return out


def query_failures(
    data: ReportData, *, unit: str | None = None, stage: str | None = None, all_: bool = False
) -> list[dict[str, Any]]:
    run = data.run
    fails = run.failures if all_ else run.open_failures()
    return [
        f.model_dump(mode="json")
        for f in fails
        if (unit is None or f.unit_id == unit) and (stage is None or f.stage == stage)
    ]


# ---------------------------------------------------------------- live progress


class ProgressTracker:
    """A job's progress read from its run directory, incrementally (byte offsets).

    Counts only what the job's own key spaces hold (the config hashes in the manifest
    for its stages), so the numbers are the same after a restart: the files are the
    truth. Tokens and cost are the usage lines written since the job was created.
    """

    def __init__(self, root: Path, units: Iterable[str] | None, usage_offset: int,
                 explain_stage: str = "explain", score_stage: str | None = "simulate") -> None:  # fmt: skip
        self.run = RunDir(root)
        self.units = set(units) if units is not None else None
        self.explain_stage = explain_stage
        self.score_stage = score_stage
        self._offsets: dict[str, int] = {"usage": usage_offset}
        self.explained: dict[str, set[str]] = {}  # config hash -> units
        self.scored: dict[str, set[str]] = {}
        self.failed: dict[str, dict[str, list[dict[str, Any]]]] = {}  # hash -> unit -> lines
        self.explanation_keys: dict[str, set[tuple]] = {}
        self.score_keys: set[tuple] = set()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost_usd = 0.0
        self.requests = 0

    def _tail(self, name: str) -> list[dict[str, Any]]:
        path = self.run.root / f"{name}.jsonl"
        start = self._offsets.get(name, 0)
        try:
            with open(path, "rb") as f:
                f.seek(start)
                chunk = f.read()
        except OSError:
            return []
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self._offsets[name] = start + end + 1
        out = []
        for line in chunk[: end + 1].splitlines():
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                out.append(obj)
        return out

    def _hash(self, stage: str | None) -> str | None:
        if stage is None:
            return None
        try:
            m = self.run.manifest()
        except Exception:  # a manifest being rewritten: try again at the next poll
            return None
        return (m.stages.get(stage) or {}).get("config_hash") if m else None

    def poll(self) -> dict[str, Any]:
        for u in self._tail("usage"):
            self.prompt_tokens += int(u.get("prompt_tokens") or 0)
            self.completion_tokens += int(u.get("completion_tokens") or 0)
            self.cost_usd += float(u.get("cost_usd") or 0.0)
            self.requests += 1
        for e in self._tail("explanations"):
            self.explained.setdefault(e.get("config_hash", ""), set()).add(e.get("unit_id"))
        for s in self._tail("scores"):
            self.scored.setdefault(s.get("config_hash", ""), set()).add(s.get("unit_id"))
        for f in self._tail("failures"):
            by_unit = self.failed.setdefault(f.get("config_hash", ""), {})
            by_unit.setdefault(f.get("unit_id"), []).append(f)
        return self.snapshot()

    def snapshot(self) -> dict[str, Any]:
        units = self.units or set()
        eh, sh = self._hash(self.explain_stage), self._hash(self.score_stage)
        explained = self.explained.get(eh, set()) & units if eh else set()
        scored = self.scored.get(sh, set()) & units if sh else set()
        done = scored if self.score_stage else explained
        failed = set()
        for h, resolved in ((eh, explained), (sh, scored)):
            for unit in self.failed.get(h, {}) if h else {}:
                # A failure resolved by a later success (--retry-failed) is not open.
                if unit in units and unit not in done and unit not in resolved:
                    failed.add(unit)
        total = len(units)
        return {
            "units_total": total,
            "units_done": len(done),
            "units_failed": len(failed),
            "units_left": max(0, total - len(done) - len(failed)),
            "units_explained": len(explained),
            "units_scored": len(scored),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": round(self.cost_usd, 6),
        }


def usage_size(root: Path) -> int:
    try:
        return (root / "usage.jsonl").stat().st_size
    except OSError:
        return 0


__all__ = [
    "NotFound",
    "ProgressTracker",
    "ResultCache",
    "list_runs",
    "open_failures",
    "page",
    "query_explanations",
    "query_failures",
    "query_scores",
    "query_units",
    "run_path",
    "usage_size",
]
