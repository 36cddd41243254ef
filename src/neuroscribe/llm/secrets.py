"""Keep API keys out of every message and log line, whatever their shape.

`SECRETS` is a registry of secret values: a client adds its key when it is built and
the registry drops it when the client is garbage collected (counted, so two clients
with one key are fine). `scrub(text)` removes every registered secret (also in its
escaped forms, as `repr` of a header would print it), anything that looks like an `sk-`
key, the `user:password@` of URLs and the values of query parameters named like
credentials (`?api_key=`, `?key=`, `?token=`...); `redact_url(url)` does the last two
for one URL. `install_log_scrubbing()` hooks the logging record
factory once per process, so every record — from any logger, `openai._base_client`
and `httpx` included, and whichever handlers are attached — is scrubbed before any
handler sees it. (A logging.Filter on a logger does not see its children's records,
and one filter per client instance piles up in a long-running process.)
"""

from __future__ import annotations

import logging
import re
import threading
import urllib.parse
import weakref
from collections import Counter
from collections.abc import Iterable
from typing import Any

_KEYLIKE = re.compile(r"\b(sk-[A-Za-z0-9]*-?)[A-Za-z0-9_\-*]{6,}")
_MIN_LEN = 4  # shorter "secrets" (a placeholder, "x") would mangle ordinary text


# Query parameters whose values are credentials, by the words of their names
# (api_key, api-key, apiKey, key, token, access_token, sig, password, client_secret...).
_SENSITIVE_WORDS = frozenset(
    [
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "sig",
        "signature",
        "auth",
        "authorization",
        "credential",
        "credentials",
        "session",
        "code",
    ]
)

# `scheme://user:pass@` (or `user@`) in free text.
_URL_USERINFO = re.compile(r"(\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/\s@?#'\"<>]+@")
# `?name=value` / `&name=value` in free text, for the names above.
_URL_PARAM = re.compile(r"([?&;]([A-Za-z0-9_.\-]+)=)([^&#\s'\"<>]*)")


def _is_sensitive_param(name: str) -> bool:
    name = urllib.parse.unquote_plus(name).lower()
    words = set(re.split(r"[^a-z0-9]+", name))
    return bool(words & _SENSITIVE_WORDS) or name.startswith("x-amz-")


def redact_url(url: str) -> str:
    """`url` fit to show or store: `user:password@` and credential-like query values
    (`api_key`, `key`, `token`, `sig`...) replaced by `***`; everything else kept.

    >>> redact_url("https://bob:hunter2@host/v1?api-version=2&api_key=abc")
    'https://***@host/v1?api-version=2&api_key=***'
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # not parseable as a URL: fall back to the text scrubber
        return _scrub_urls(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, eq, _value = piece.partition("=")
            pieces.append(f"{name}=***" if eq and _is_sensitive_param(name) else piece)
        query = "&".join(pieces)
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url: str) -> list[str]:
    """The credential values in `url` (`user:password`, the password, sensitive query
    values), raw and percent-decoded, for the scrubber's registry."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    if "@" in parts.netloc:
        # Not the user name alone: a common word ("admin") would be scrubbed everywhere.
        userinfo = parts.netloc.rpartition("@")[0]
        found += [userinfo, userinfo.partition(":")[2]]
    for name, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
        if _is_sensitive_param(name):
            found.append(value)
    for piece in parts.query.split("&"):
        name, eq, value = piece.partition("=")
        if eq and _is_sensitive_param(name):
            found.append(value)
    found += [urllib.parse.unquote(v) for v in found]
    return [v for v in dict.fromkeys(found) if v and len(v) >= _MIN_LEN]


def _scrub_urls(text: str) -> str:
    text = _URL_USERINFO.sub(r"\1***@", text)

    def param(m: re.Match[str]) -> str:
        return m.group(1) + "***" if _is_sensitive_param(m.group(2)) else m.group(0)

    return _URL_PARAM.sub(param, text)


def _forms(secret: str) -> set[str]:
    """A secret as it may appear in text: itself, stripped, and escaped as `repr` of a
    str or bytes (a header error prints b'Bearer <key>\\n')."""
    forms = {secret, secret.strip()}
    escaped = secret.encode("unicode_escape").decode("ascii", "replace")
    forms |= {escaped, escaped.strip(), repr(secret)[1:-1]}
    return {f for f in forms if len(f) >= _MIN_LEN}


def scrub(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Remove each of `secrets` (by value, whatever its shape, and in its escaped forms),
    anything that looks like an `sk-` key and credentials in URLs from `text`."""
    forms: set[str] = set()
    for s in secrets:
        if s and len(s) >= _MIN_LEN:
            forms |= _forms(s)
    for secret in sorted(forms, key=len, reverse=True):
        text = text.replace(secret, "***")
    return _scrub_urls(_KEYLIKE.sub(r"\1***", text))


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


__all__ = [
    "SECRETS",
    "ScrubFilter",
    "SecretRegistry",
    "install_log_scrubbing",
    "redact_url",
    "scrub",
    "url_secrets",
]
