"""The HTTP side of the OpenAI-compatible client: connections, errors, retries, the key.

Requests go out as plain JSON posts over shared `httpx.AsyncClient`s (the `openai`
SDK's per-request work cost more CPU than a whole job step; the SDK is used for
`/models` only). `limits.CallLimits` owns concurrency and retries of transient
failures (429, 5xx, timeouts, dropped connections, bodies that are not the JSON
expected). Every error is translated to `LLMError`/`TransientError` with the URL, the
status and the server's message — and with the key scrubbed out. A `transport`
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
from neuroscribe.llm.openai.mapping import body_code, body_message, error_message, retry_after
from neuroscribe.llm.secrets import SECRETS, install_log_scrubbing, scrub

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "sk-no-key"  # local servers without auth still need *a* key for the SDK
_SHARD = 4  # connections per httpx pool (see `_http`)

T = TypeVar("T")

# What a mapper may raise on an answer of the wrong shape (then retried like a bad body).
SHAPE_ERRORS = (KeyError, TypeError, ValueError, IndexError)


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
    ):
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_URL).rstrip("/")
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if urllib.parse.urlsplit(self.base_url).hostname == "api.openai.com":
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
        self.limits = CallLimits(
            concurrency=concurrency, retry=retry or RetryPolicy(max_attempts=max_attempts)
        )
        self.transport = transport
        self.extra_body = dict(extra_body or {})
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        self._https: dict[int, list[httpx.AsyncClient]] = {}
        self._next_shard = 0

    def __repr__(self) -> str:  # never show the key
        return f"Wire(model={self.model!r}, base_url={self.base_url!r})"

    def scrub(self, text: str) -> str:
        return scrub(text, [self._key])

    # ------------------------------------------------------------------ connections
    def sdk(self) -> openai.AsyncOpenAI:
        """The SDK client (for `/models`), one per event loop."""
        # Its connection pool belongs to the loop that opened it, and callers may run
        # several `asyncio.run`s with one backend.
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            http = httpx.AsyncClient(transport=self.transport) if self.transport else None
            client = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,
                http_client=http,
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
                if self.base_url.startswith("https") and not self.transport
                else False
            )
            shards = [
                httpx.AsyncClient(
                    base_url=self.base_url + "/",
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
        where = f"{self.base_url}{endpoint}"
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
        """An HTTP error status → LLMError (not retried) or TransientError (retried)."""
        where = f"{self.base_url}{endpoint}"
        if status == 401:
            return LLMError(
                f"authentication failed (401) at {self.base_url}: check OPENAI_API_KEY "
                f"or --api-key ({detail})",
                status=401,
            )
        if status == 403:
            return LLMError(
                f"permission denied (403) for model {self.model!r} at {self.base_url}: {detail}",
                status=403,
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
        where = f"{self.base_url}{endpoint}"
        try:
            resp = await self._http().post(
                endpoint.lstrip("/"), content=json.dumps(payload).encode("utf-8")
            )
            content = resp.content
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
                f"truncated or invalid JSON from {where} ({len(content)} bytes)"
            ) from None
        if not isinstance(data, dict) or not data.get("choices"):
            if isinstance(data, dict) and "error" in data:
                raise TransientError(self.scrub(f"error body from {where}: {data['error']}"))
            raise TransientError(f"answer without choices from {where}")
        return data

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
                raise TransientError(
                    f"unexpected answer shape from {self.base_url}{endpoint}: "
                    f"{type(exc).__name__}: {exc}"
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


__all__ = ["OPENAI_URL", "PLACEHOLDER_KEY", "SHAPE_ERRORS", "Wire"]
