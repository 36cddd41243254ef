"""On-disk response cache: a rerun, or a second scorer over the same explanations, is free.

One sqlite3 file (stdlib), WAL journal: concurrent readers, atomic writes, and a process
killed with SIGKILL leaves either the whole entry or none of it. Keys are a SHA-256 of
the full request (endpoint, model, prompt or messages, every sampling parameter), but
not of the base URL or key, so the same model behind a proxy or another host shares
entries. Only answers the backend accepted are stored; a caller that later finds an
answer unusable removes it with `delete` (see `OpenAICompatibleLLM.discard`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError

CACHE_VERSION = 1  # bump when the stored shape changes; old entries are then ignored


def default_cache_path() -> Path:
    """`$NEUROSCRIBE_CACHE/llm-cache.sqlite` (default `~/.cache/neuroscribe/...`)."""
    from neuroscribe.embedded import cache_root

    return cache_root() / "llm-cache.sqlite"


def request_key(endpoint: str, request: dict[str, Any]) -> str:
    """A stable hash of one request: canonical JSON (sorted keys) of endpoint + body."""
    blob = json.dumps(
        {"v": CACHE_VERSION, "endpoint": endpoint, "request": request},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class ResponseCache:
    """A key → JSON store in one sqlite file, safe for concurrent use within a process."""

    def __init__(self, path: str | os.PathLike[str] | None = None):
        self.path = Path(path) if path is not None else default_cache_path()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # One connection guarded by a lock: operations take well under a millisecond,
            # so calling them from async code directly is cheaper than a thread hop.
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # durable across process kills
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses ("
                "key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)"
            )
        except (OSError, sqlite3.Error) as exc:
            reason = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"cannot open the response cache {self.path}: {reason}") from None
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        try:
            value = json.loads(row[0])
        except ValueError:  # a damaged entry is a miss, never a crash
            self.delete(key)
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        blob = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, value, created) VALUES (?, ?, ?)",
                (key, blob, time.time()),
            )

    def delete(self, key: str) -> None:
        with self._lock:
            self._conn.execute("DELETE FROM responses WHERE key = ?", (key,))

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._conn.close()
