"""The job store: one SQLite file next to the run directories (`ROOT/.neuroscribe/jobs.sqlite`).

It holds what a job *is* (its run, its configuration without any API key, its state)
and what happened to it (events, the last progress, stage summaries); the results
themselves stay in the run directory, which is the truth a restarted server resumes
from. WAL journaling: a server killed with SIGKILL loses at most the event it was
writing, never a committed state. One connection, guarded by a lock, serves the HTTP
threads and the scheduler thread.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neuroscribe.llm.secrets import SECRETS

scrub = SECRETS.scrub

ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled")
STATES = ACTIVE + TERMINAL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    run TEXT NOT NULL,
    stages TEXT NOT NULL,
    config TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    usage_offset INTEGER NOT NULL DEFAULT 0,
    progress TEXT,
    summaries TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    started_at TEXT,
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    at TEXT NOT NULL,
    kind TEXT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
);
"""


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


def _row(r: sqlite3.Row) -> dict[str, Any]:
    d = dict(r)
    d["config"] = json.loads(d["config"])
    d["progress"] = json.loads(d["progress"]) if d["progress"] else None
    d["summaries"] = json.loads(d["summaries"])
    return d


class JobStore:
    """Jobs and their events. Every text written is scrubbed of secrets first."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")  # durable against a process crash
            self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------ jobs

    def create(self, run: str, stages: str, config: dict[str, Any], usage_offset: int) -> str:
        job_id = new_job_id()
        t = now()
        text = scrub(json.dumps(config, sort_keys=True))
        with self._lock:
            self._db.execute(
                "INSERT INTO jobs (id, run, stages, config, state, usage_offset, created_at,"
                " updated_at) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
                (job_id, run, stages, text, usage_offset, t, t),
            )
        self.event(job_id, "state", {"state": "queued"})
        return job_id

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            r = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _row(r) if r else None

    def list(
        self,
        *,
        states: Iterable[str] | None = None,
        run: str | None = None,
        offset: int = 0,
        limit: int | None = None,
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        if states is not None:
            states = list(states)
            where.append(f"state IN ({', '.join('?' * len(states))})")
            args += states
        if run is not None:
            where.append("run = ?")
            args.append(run)
        cond = f" WHERE {' AND '.join(where)}" if where else ""
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM jobs{cond}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM jobs{cond} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*args, -1 if limit is None else limit, offset],
            ).fetchall()
        return [_row(r) for r in rows], total

    def update(self, job_id: str, **fields: Any) -> None:
        """Set columns; `progress`, `summaries` and `config` are given as Python objects."""
        for k in ("progress", "summaries", "config"):
            if k in fields and not isinstance(fields[k], str):
                fields[k] = json.dumps(fields[k], sort_keys=True, allow_nan=False)
        if "error" in fields and fields["error"] is not None:
            fields["error"] = scrub(str(fields["error"]))[:4000]
        fields["updated_at"] = now()
        cols = ", ".join(f"{k} = ?" for k in fields)
        with self._lock:
            self._db.execute(f"UPDATE jobs SET {cols} WHERE id = ?", [*fields.values(), job_id])

    def set_state(self, job_id: str, state: str, **fields: Any) -> None:
        assert state in STATES, state
        if state in TERMINAL:
            fields.setdefault("finished_at", now())
        self.update(job_id, state=state, **fields)
        data: dict[str, Any] = {"state": state}
        if fields.get("error"):
            data["error"] = scrub(str(fields["error"]))[:4000]
        self.event(job_id, "state", data)

    def transition(self, job_id: str, from_state: str, state: str) -> bool:
        """Set `state` only if the job is still in `from_state` (one atomic statement), so
        two threads deciding a job's fate cannot both win; True when this call did."""
        assert state in STATES, state
        t = now()
        finished = t if state in TERMINAL else None
        with self._lock:
            cur = self._db.execute(
                "UPDATE jobs SET state = ?, updated_at = ?, finished_at = COALESCE(?, finished_at)"
                " WHERE id = ? AND state = ?",
                (state, t, finished, job_id, from_state),
            )
        if cur.rowcount != 1:
            return False
        self.event(job_id, "state", {"state": state})
        return True

    # ------------------------------------------------------------ events

    def event(self, job_id: str, kind: str, data: dict[str, Any]) -> int:
        text = scrub(json.dumps(data, sort_keys=True, allow_nan=False, default=str))
        with self._lock:
            seq = self._db.execute(
                "SELECT COALESCE(MAX(seq), 0) + 1 FROM events WHERE job_id = ?", (job_id,)
            ).fetchone()[0]
            self._db.execute(
                "INSERT INTO events (job_id, seq, at, kind, data) VALUES (?, ?, ?, ?, ?)",
                (job_id, seq, now(), kind, text),
            )
        return seq

    def events(self, job_id: str, after: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, at, kind, data FROM events WHERE job_id = ? AND seq > ?"
                " ORDER BY seq LIMIT ?",
                (job_id, after, limit),
            ).fetchall()
        return [
            {"seq": r["seq"], "at": r["at"], "kind": r["kind"], "data": json.loads(r["data"])}
            for r in rows
        ]
