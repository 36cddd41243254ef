"""The HTTP side of the OpenAI-compatible client: connections, errors, retries, the key.

Requests go out as plain JSON posts over shared `httpx.AsyncClient`s (the `openai`
SDK's per-request work cost more CPU than a whole job step; the SDK is used for
`/models` only). `limits.CallLimits` owns concurrency and retries of transient
failures (429, 5xx, timeouts, dropped connections, bodies that are not the JSON
expected). Every error is translated to `LLMError`/`TransientError` with the URL, the
status and the server's message — and with the key and any credentials of the URL
(`user:password@`, `?api_key=`) scrubbed out: `base_url` and every URL shown is the
redacted one, the credentials only go into the requests. Answers are read up to
`max_response_bytes` (a server that ignores `max_tokens` cannot fill memory) and
checked for shape before use. A `transport`
(`httpx.AsyncBaseTransport`, e.g. `httpx.MockTransport(handler)`) replaces the network
for every request, the SDK's included, so tests run this exact code without a server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, TypeVar

import httpx
import openai

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.limits import CallLimits, RetryPolicy, TransientError, parse_retry_after
from neuroscribe.llm.openai.mapping import (
    MalformedAnswer,
    body_code,
    body_message,
    error_message,
    retry_after,
)
from neuroscribe.llm.secrets import SECRETS, install_log_scrubbing, redact_url, scrub, url_secrets

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "sk-no-key"  # local servers without auth still need *a* key for the SDK
_SHARD = 4  # connections per httpx pool (see `_http`)
MAX_RESPONSE_BYTES = 8 * 1024 * 1024  # an answer larger than this is refused
_EXCERPT = 200  # characters of a malformed body shown in its error

T = TypeVar("T")

# What a mapper may raise on an answer of the wrong shape (then retried like a bad body).
# The mappers check what they read (`mapping.MalformedAnswer`, a ValueError); the rest
# is a backstop so that no AttributeError or OverflowError ever reaches a caller.
SHAPE_ERRORS = (KeyError, TypeError, ValueError, IndexError, AttributeError, ArithmeticError)


def _has_control_chars(text: str) -> bool:
    return any(ord(ch) < 32 or ord(ch) == 127 for ch in text)


def _positive(name: str, value: Any, *, whole: bool = False, minimum: float = 0.0) -> None:
    """ConfigError unless `value` is a finite number > `minimum` (>= 1 for whole numbers)."""
    if whole:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
        if not ok:
            raise ConfigError(f"{name} must be a whole number >= 1, not {value!r}")
        return
    ok = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value > minimum
    )
    if not ok:
        raise ConfigError(f"{name} must be a finite number > {minimum:g}, not {value!r}")


def _excerpt(text: str | bytes, limit: int = _EXCERPT) -> str:
    if isinstance(text, bytes):
        text = text[: 4 * limit].decode("utf-8", "replace")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Wire:
    """One endpoint + key: sends JSON requests and returns parsed answers, retrying.

    Args:
        model: the model name (only for error messages here).
        base_url: endpoint ending in `/v1`; default `$OPENAI_BASE_URL`, then OpenAI's.
        api_key: default `$OPENAI_API_KEY`; servers other than api.openai.com may run
            without one (a placeholder is sent).
        timeout_s: per-attempt timeout, seconds.
        concurrency: simultaneous requests.
        max_attempts / retry: tries per request for transient failures.
        transport: an `httpx.AsyncBaseTransport` to use instead of the network.
        extra_body: extra JSON fields sent with every request (e.g. vLLM options).
        max_response_bytes: the largest answer body read (default 8 MiB); a larger one
            is an error (not retried).

    `base_url` may carry `user:password@` (sent as HTTP basic auth) and query
    parameters (sent with every request); `self.base_url` is the redacted URL
    (`redact_url`) that messages, the probe record and `repr` show.
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_attempts: int = 6,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        extra_body: dict[str, Any] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
    ):
        self.model = model
        _positive("timeout_s", timeout_s)
        _positive("concurrency", concurrency, whole=True)
        _positive("max_attempts", max_attempts, whole=True)
        _positive("max_response_bytes", max_response_bytes, whole=True)
        url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL
        self._set_url(url, "--base-url" if base_url else "OPENAI_BASE_URL")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if key and _has_control_chars(key):
            # httpx would print the header value, key and all, in its error. Never the
            # key here: say where it came from and what is wrong with it.
            source = "--api-key" if api_key else "OPENAI_API_KEY"
            raise ConfigError(
                f"the API key ({source}) contains a control character (a newline, carriage "
                "return, NUL or tab?); remove it, e.g. a trailing newline from the key file"
            )
        if not key:
            if self._hostname == "api.openai.com":
                raise ConfigError(
                    "no API key: set OPENAI_API_KEY (or pass --api-key), "
                    "or point --base-url at a local OpenAI-compatible server"
                )
            key = PLACEHOLDER_KEY
        self._key = key
        # One process-wide scrubber; the key leaves the registry with this object.
        SECRETS.add(key, owner=self)
        install_log_scrubbing()
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self.limits = CallLimits(
            concurrency=concurrency, retry=retry or RetryPolicy(max_attempts=max_attempts)
        )
        self.transport = transport
        self.extra_body = dict(extra_body or {})
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        self._https: dict[int, list[httpx.AsyncClient]] = {}
        self._next_shard = 0

    def _set_url(self, url: str, source: str) -> None:
        """Split `url` into what requests use (plain URL, query, basic auth) and what is
        shown (`self.base_url`, redacted); register its credentials with the scrubber."""
        url = url.strip()
        if _has_control_chars(url):
            raise ConfigError(f"the base URL ({source}) contains a control character")
        try:
            parts = urllib.parse.urlsplit(url)
            _ = parts.port  # raises on a port that is not a number
        except ValueError as exc:
            raise ConfigError(f"invalid base URL {redact_url(url)!r} ({source}): {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"invalid base URL {redact_url(url)!r} ({source}): give http(s)://HOST[:PORT]/v1"
            )
        self._hostname = parts.hostname
        host = parts.netloc.rpartition("@")[2]
        path = parts.path.rstrip("/")
        self._url = urllib.parse.urlunsplit((parts.scheme, host, path, "", ""))
        self._query = parts.query
        self._params = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        self._auth: httpx.BasicAuth | None = None
        if parts.username is not None or parts.password is not None:
            self._auth = httpx.BasicAuth(
                urllib.parse.unquote(parts.username or ""),
                urllib.parse.unquote(parts.password or ""),
            )
        self._url_secrets = url_secrets(url)
        for secret in self._url_secrets:
            SECRETS.add(secret, owner=self)
        self.base_url = redact_url(
            urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        )

    def where(self, endpoint: str) -> str:
        """The (redacted) URL of `endpoint`, for messages."""
        query = f"?{self._query}" if self._query else ""
        return redact_url(f"{self._url}{endpoint}{query}")

    def __repr__(self) -> str:  # never show the key or the URL's credentials
        return f"Wire(model={self.model!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        return scrub(text, [self._key, *self._url_secrets])

    # ------------------------------------------------------------------ connections
    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK client (for `/models`), one per event loop."""
        # Its connection pool belongs to the loop that opened it, and callers may run
        # several `asyncio.run`s with one backend.
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            http = (
                httpx.AsyncClient(transport=self.transport, auth=self._auth)
                if self.transport or self._auth
                else None
            )
            client = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self._url,
                timeout=self.timeout_s,
                max_retries=0,
                http_client=http,
                default_query=dict(self._params) or None,
            )
            self._clients = {id(loop): client}  # drop clients of finished loops
        return client

    def _http(self) -> httpx.AsyncClient:
        """A plain `httpx.AsyncClient` for the request path (per event loop, sharded).

        The SDK's per-request work (TypedDict transforms of the body, header and option
        objects) cost 2-5 ms of CPU per request, more than everything else a job does,
        so requests go out as plain JSON posts. httpcore scans its whole pool for every
        request (O(pool) with a socket poll per idle connection), which at 128
        connections costs more than the request itself: requests are spread round-robin
        over small pools of `_SHARD` connections instead, enough for `concurrency`.
        """
        loop = asyncio.get_running_loop()
        shards = self._https.get(id(loop))
        if shards is None:
            n = 1 if self.transport else max(1, math.ceil(self.limits.concurrency / _SHARD))
            # Building an SSL context (loading the CA bundle) costs ~20 ms: one for all
            # shards, and none at all for plain-http local servers.
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context()
                if self._url.startswith("https") and not self.transport
                else False
            )
            shards = [
                httpx.AsyncClient(
                    base_url=self._url + "/",
                    params=self._params or None,
                    auth=self._auth,
                    headers={
                        "Authorization": f"Bearer {self._key}",
                        "Content-Type": "application/json",
                        "Accept": "application/json",
                    },
                    timeout=httpx.Timeout(self.timeout_s),
                    verify=verify,
                    transport=self.transport,
                    # 2x slack: round-robin can give one shard more than its share.
                    limits=httpx.Limits(
                        max_connections=2 * _SHARD, max_keepalive_connections=2 * _SHARD
                    ),
                )
                for _ in range(n)
            ]
            self._https = {id(loop): shards}
        self._next_shard = (self._next_shard + 1) % len(shards)
        return shards[self._next_shard]

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            with contextlib.suppress(Exception):  # a client of a closed loop cannot close
                await client.close()
        https, self._https = self._https, {}
        for shards in https.values():
            for http in shards:
                with contextlib.suppress(Exception):
                    await http.aclose()

    # ------------------------------------------------------------------ errors
    def translate(self, exc: Exception, endpoint: str) -> LLMError:
        """Turn an SDK exception into our error types, with the key scrubbed."""
        where = self.where(endpoint)
        if isinstance(exc, openai.APITimeoutError):
            return TransientError(f"no answer from {where} within {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f": {type(cause).__name__}: {cause}" if cause else ""
            return TransientError(self.scrub(f"cannot connect to {where}{detail}"))
        if isinstance(exc, openai.APIStatusError):
            return self.status_error(
                exc.status_code,
                self.scrub(error_message(exc)),
                retry_after(exc),
                str(getattr(exc, "code", "")),
                endpoint,
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return TransientError(f"malformed response from {where}")
        return LLMError(self.scrub(f"request to {where} failed: {type(exc).__name__}: {exc}"))

    def status_error(
        self, status: int, detail: str, retry_after_s: float | None, code: str, endpoint: str
    ) -> LLMError:
        """An HTTP error status → LLMError (not retried) or TransientError (retried).

        401 and 403 are `fatal`: no other request of the job can succeed either.
        """
        where = self.where(endpoint)
        if status == 401:
            return LLMError(
                f"authentication failed (401) at {self.base_url}: check OPENAI_API_KEY "
                f"or --api-key ({detail})",
                status=401,
                fatal=True,
            )
        if status == 403:
            return LLMError(
                f"permission denied (403) for model {self.model!r} at {self.base_url}: {detail}",
                status=403,
                fatal=True,
            )
        if status == 404:
            return LLMError(
                f"not found (404): model {self.model!r} or endpoint {endpoint} at "
                f"{self.base_url} ({detail}); check the model name and that the base "
                "URL ends in /v1",
                status=404,
            )
        if status == 429:
            if "insufficient_quota" in detail or "quota" in code:
                return LLMError(f"quota exhausted (429) at {self.base_url}: {detail}", status=429)
            return TransientError(
                f"rate limited (429) by {self.base_url}: {detail}",
                status=429,
                retry_after_s=retry_after_s,
            )
        if status >= 500 or status in (408, 409):
            return TransientError(
                f"server error ({status}) at {where}: {detail}",
                status=status,
                retry_after_s=retry_after_s,
            )
        return LLMError(
            f"request rejected ({status}) by {where} for model {self.model!r}: {detail}",
            status=status,
        )

    # ------------------------------------------------------------------ requests
    async def send(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
        """One attempt: POST `body` (plus the model and extra_body), return the parsed JSON."""
        payload = {"model": self.model, **body}
        extra = {**self.extra_body, **payload.pop("extra_body", {})}
        payload.update(extra)  # as the SDK does with extra_body: merged into the JSON
        where = self.where(endpoint)
        try:
            async with self._http().stream(
                "POST", endpoint.lstrip("/"), content=json.dumps(payload).encode("utf-8")
            ) as resp:
                content = await self._read(resp, where)
        except httpx.TimeoutException:
            raise TransientError(f"no answer from {where} within {self.timeout_s:g} s") from None
        except httpx.TransportError as exc:  # refused, reset, dropped mid-body
            raise TransientError(
                self.scrub(f"cannot connect to {where}: {type(exc).__name__}: {exc}")
            ) from None
        if resp.status_code >= 400:
            raise self.status_error(
                resp.status_code,
                self.scrub(body_message(content, resp.reason_phrase)),
                parse_retry_after(resp.headers),
                body_code(content),
                endpoint,
            )
        try:
            data = json.loads(content)
        except ValueError:
            raise TransientError(
                self.scrub(
                    f"truncated or invalid JSON from {where} ({len(content)} bytes): "
                    f"{_excerpt(content)!r}"
                )
            ) from None
        if not isinstance(data, dict) or not data.get("choices"):
            if isinstance(data, dict) and "error" in data:
                error = _excerpt(str(data["error"]), 300)
                raise TransientError(self.scrub(f"error body from {where}: {error}"))
            raise TransientError(
                self.scrub(f"answer without choices from {where}: {_excerpt(content)!r}")
            )
        return data

    async def _read(self, resp: httpx.Response, where: str) -> bytes:
        """The body, at most `max_response_bytes` of it: a larger answer is an error (not
        retried: the same request would get the same answer); a larger error body is cut."""
        cap = self.max_response_bytes
        ok = resp.status_code < 400

        def too_large(size: str) -> LLMError:
            return LLMError(
                f"the answer from {where} is too large ({size}; the limit is {cap:,} bytes, "
                "max_response_bytes): does the server ignore max_tokens?",
                status=resp.status_code,
                retryable=False,
            )

        declared = resp.headers.get("content-length", "")
        if ok and declared.isdigit() and int(declared) > cap:
            raise too_large(f"{int(declared):,} bytes")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.aiter_bytes():
            size += len(chunk)
            if size > cap:
                if ok:
                    raise too_large(f"over {cap:,} bytes read")
                chunks.append(chunk[: len(chunk) - (size - cap)])
                break
            chunks.append(chunk)
        return b"".join(chunks)

    async def request(
        self, endpoint: str, body: dict[str, Any], mapper: Callable[[dict[str, Any]], T]
    ) -> tuple[dict[str, Any], T]:
        """Send with retries; returns the answer and `mapper(answer)`.

        The mapper runs inside the retry loop, so an answer whose JSON has the wrong
        shape is retried like a truncated body.
        """

        async def attempt() -> tuple[dict[str, Any], T]:
            data = await self.send(endpoint, body)
            try:
                return data, mapper(data)
            except SHAPE_ERRORS as exc:
                raw = json.dumps(data, ensure_ascii=False, default=str)
                detail = (
                    str(exc)
                    if isinstance(exc, MalformedAnswer)
                    else (f"{type(exc).__name__}: {exc}")
                )
                raise TransientError(
                    self.scrub(
                        f"unexpected answer shape from {self.where(endpoint)}: "
                        f"{_excerpt(detail, 300)} (body: {_excerpt(raw)})"
                    )
                ) from None

        started = time.monotonic()
        result = await self.limits.run(
            attempt, describe=f"{endpoint.strip('/')} request to {self.model!r} at {self.base_url}"
        )
        log.debug("%s %s answered in %.2f s", self.model, endpoint, time.monotonic() - started)
        return result

    async def list_models(self, *, require_reachable: bool = False) -> list[str] | None:
        """The served model ids, or None when the server cannot list them.

        A 401 is raised; an unreachable server too with `require_reachable`.
        """
        try:
            page = await self.sdk().models.list()
            return [m.id for m in page.data]
        except openai.AuthenticationError as exc:
            raise self.translate(exc, "/models") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            if require_reachable:
                raise LLMError(str(self.translate(exc, "/models"))) from None
            return None
        except openai.OpenAIError:
            return None


__all__ = ["MAX_RESPONSE_BYTES", "OPENAI_URL", "PLACEHOLDER_KEY", "SHAPE_ERRORS", "Wire"]
