"""On-disk response cache: a rerun, or a second scorer over the same explanations, is free.

One sqlite3 file (stdlib), WAL journal: concurrent readers, atomic writes, and a process
killed with SIGKILL leaves either the whole entry or none of it. Keys are a SHA-256 of
the full request (call kind, model spec, prompt or messages, every sampling parameter),
but not of the base URL or key, so the same model behind a proxy or another host shares
entries. `CachedLLM` puts the cache in front of any backend, storing the *mapped*
answer (texts and aligned logprobs), so a hit needs no backend at all. Only answers the
backend accepted are stored; a caller that later finds an answer unusable removes it
with `discard_cached(llm, response)` before retrying.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import LLM, Completion, LLMResponse, TokenLogprob
from neuroscribe.llm.messages import Message, to_wire
from neuroscribe.llm.wrappers import LLMWrapper
from neuroscribe.schema import Usage

# Bump when the stored shape changes; old entries are then never looked up.
# v2: entries are mapped `LLMResponse`s keyed by call kind + spec (v1: raw API JSON).
CACHE_VERSION = 2


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


# --------------------------------------------------------------------------- the layer


def response_to_json(response: LLMResponse) -> dict[str, Any]:
    """What a cache entry holds: the choices (texts, logprobs) and the served model."""
    served = (response.raw or {}).get("model")
    return {"choices": [asdict(c) for c in response.choices], "model": served}


def response_from_json(data: dict[str, Any]) -> list[Completion]:
    """Choices back from a cache entry (KeyError/TypeError on a stale shape)."""

    def tokens(items: list[dict[str, Any]] | None) -> list[TokenLogprob] | None:
        return None if items is None else [TokenLogprob(**t) for t in items]

    return [
        Completion(
            text=c["text"],
            finish_reason=c["finish_reason"],
            tokens=tokens(c["tokens"]),
            prompt_tokens=tokens(c["prompt_tokens"]),
        )
        for c in data["choices"]
    ]


class CachedLLM(LLMWrapper):
    """Answers repeated requests from a `ResponseCache`; forwards the rest and stores them.

    A hit costs nothing: its usage is `cached_requests=1, cost_usd=0.0`. Each answer's
    `raw["_cache_key"]` names its entry so `discard` can drop an unusable one.
    """

    def __init__(self, inner: LLM, cache: ResponseCache | str | os.PathLike[str]):
        super().__init__(inner)
        self.cache = cache if isinstance(cache, ResponseCache) else ResponseCache(cache)

    async def chat(self, messages: Sequence[Message], **params: Any) -> LLMResponse:
        key = request_key("chat", {"model": self.spec, "messages": to_wire(messages), **params})
        return await self._cached(key, lambda: self.inner.chat(messages, **params))

    async def complete(self, prompt: str, **params: Any) -> LLMResponse:
        key = request_key("complete", {"model": self.spec, "prompt": prompt, **params})
        return await self._cached(key, lambda: self.inner.complete(prompt, **params))

    async def _cached(self, key: str, call: Any) -> LLMResponse:
        hit = self.cache.get(key)
        if hit is not None:
            try:
                choices = response_from_json(hit)
            except (KeyError, TypeError, ValueError):
                self.cache.delete(key)  # stale shape: ask again
            else:
                usage = Usage(cached_requests=1, cost_usd=0.0)
                return LLMResponse(
                    choices, usage, raw={"model": hit.get("model"), "_cache_key": key}
                )
        response: LLMResponse = await call()
        self.cache.put(key, response_to_json(response))
        response.raw = {**(response.raw or {}), "_cache_key": key}
        return response

    def discard(self, response: LLMResponse) -> None:
        """Remove `response`'s entry (call before retrying the same request)."""
        key = (response.raw or {}).get("_cache_key")
        if key:
            self.cache.delete(key)
