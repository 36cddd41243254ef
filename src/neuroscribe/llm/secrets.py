"""Keep API keys out of every message and log line, whatever their shape.

`SECRETS` is a registry of secret values: a client adds its key when it is built and
the registry drops it when the client is garbage collected (counted, so two clients
with one key are fine). `scrub(text)` removes every registered secret and anything
that looks like an `sk-` key. `install_log_scrubbing()` hooks the logging record
factory once per process, so every record — from any logger, `openai._base_client`
and `httpx` included, and whichever handlers are attached — is scrubbed before any
handler sees it. (A logging.Filter on a logger does not see its children's records,
and one filter per client instance piles up in a long-running process.)
"""

from __future__ import annotations

import logging
import re
import threading
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any

_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9]*-?)[A-Za-z0-9_\-*]{6,}")
_MIN_LEN = 4  # shorter "secrets" (a placeholder, "x") would mangle ordinary text


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove each of `secrets` (and anything that looks like an `sk-` key) from `text`."""
    for secret in sorted({s for s in secrets if s and len(s) >= _MIN_LEN}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _KEYLIKE.sub(r"\1***", text)


class SecretRegistry:
    """A thread-safe, reference-counted set of secret values to scrub."""

    def __init__(self) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, secret: str | None, owner: object | None = None) -> None:
        """Register `secret`; with `owner`, it is removed again when `owner` is collected."""
        if not secret or len(secret) < _MIN_LEN:
            return
        with self._lock:
            self._counts[secret] += 1
        if owner is not None:
            weakref.finalize(owner, self.remove, secret)

    def remove(self, secret: str | None) -> None:
        if not secret:
            return
        with self._lock:
            if self._counts[secret] <= 1:
                self._counts.pop(secret, None)
            else:
                self._counts[secret] -= 1

    def __contains__(self, secret: object) -> bool:
        with self._lock:
            return secret in self._counts

    def __len__(self) -> int:
        with self._lock:
            return len(self._counts)

    def scrub(self, text: str) -> str:
        with self._lock:
            secrets = list(self._counts)
        return scrub(text, secrets)


SECRETS = SecretRegistry()  # the process's registry (clients add their keys here)


class ScrubFilter(logging.Filter):
    """A logging filter scrubbing a registry's secrets (for a handler of your own)."""

    def __init__(self, secrets: Iterable[str] | SecretRegistry = ()):
        super().__init__()
        if isinstance(secrets, SecretRegistry):
            self.registry = secrets
        else:
            self.registry = SecretRegistry()
            for s in secrets:
                self.registry.add(s)

    def filter(self, record: logging.LogRecord) -> bool:
        _scrub_record(record, self.registry)
        return True


def _scrub_record(record: logging.LogRecord, registry: SecretRegistry) -> None:
    try:
        msg = record.getMessage()
    except Exception:  # a malformed record is logging's problem, not ours
        return
    clean = registry.scrub(msg)
    if clean != msg:
        record.msg, record.args = clean, None


_installed: tuple[Any, Any] | None = None  # (our factory, the one it wraps)
_install_lock = threading.Lock()


def install_log_scrubbing(registry: SecretRegistry = SECRETS) -> None:
    """Scrub `registry`'s secrets from every log record of the process (idempotent)."""
    global _installed
    with _install_lock:
        if _installed is not None and logging.getLogRecordFactory() is _installed[0]:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            if len(registry):  # nothing to do (and no formatting) without secrets
                _scrub_record(record, registry)
            return record

        logging.setLogRecordFactory(factory)
        _installed = (factory, previous)


__all__ = ["SECRETS", "ScrubFilter", "SecretRegistry", "install_log_scrubbing", "scrub"]
