"""The OpenAI-compatible backend: OpenAI, vLLM, llama.cpp, Ollama, any `/v1` server.

`OpenAICompatibleLLM` implements the `LLM` protocol with plain JSON posts over a shared
`httpx.AsyncClient` (the `openai` SDK's per-request work cost more CPU than a whole job
step; the SDK is used for `/models` only). `limits.CallLimits` owns retries,
concurrency and rate limits.
It answers from the on-disk cache when it can, prices every call, keeps the API key out
of every message, and reads prompt logprobs from `echo` answers with the alignment fixed:

llama.cpp's server, for models without a BOS token (SmolLM2), returns in an echo answer
`top_logprobs[i]` = the distribution that predicts token i+1 (measured). `probe()` sends a
sentence repeated three times — whose later tokens are near-certain — and checks whether
the top entry at position i is token i (shift 0, OpenAI semantics) or token i+1
(shift 1). `complete(echo=True)` then maps raw entry i-shift to token i, so
`Completion.prompt_tokens[i].top_logprobs` is always the distribution *for* token i.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import os
import ssl
import time
import urllib.parse
from typing import Any

import httpx
import openai

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.base import Completion, LLMResponse, TokenLogprob
from neuroscribe.llm.cache import ResponseCache, request_key
from neuroscribe.llm.limits import (
    CallLimits,
    RetryPolicy,
    ScrubFilter,
    TransientError,
    parse_retry_after,
    scrub,
)
from neuroscribe.llm.pricing import Price, cost, load_prices
from neuroscribe.schema import Usage

log = logging.getLogger(__name__)

OPENAI_URL = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "sk-no-key"  # local servers without auth still need *a* key for the SDK
PROBE_VERSION = 1
_SHARD = 4  # connections per httpx pool (see `_http`)

# The probe's echo prompt: after the first copy the model can predict every token, so the
# argmax of the correctly aligned distribution is the token itself. " 10" at the end
# shows whether the tokenizer has a single token for "10".
_PROBE_SENTENCE = "Apples and pears."
_PROBE_PROMPT = " ".join([_PROBE_SENTENCE] * 3) + " 10"

# Models that take `max_completion_tokens` instead of `max_tokens` on chat.
_REASONING_PREFIXES = ("o1", "o3", "o4", "gpt-5")

# Probe results per (base_url, model) for this process; persist with `probe_result`.
_PROBES: dict[tuple[str, str], dict[str, Any]] = {}


def _is_loopback(url: str) -> bool:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class OpenAICompatibleLLM:
    """A model behind an OpenAI-compatible HTTP API.

    Args:
        model: the model name sent in every request (also the cache and price key).
        base_url: endpoint ending in `/v1`; default `$OPENAI_BASE_URL`, then OpenAI's.
        api_key: default `$OPENAI_API_KEY`; servers other than api.openai.com may run
            without one (a placeholder is sent).
        timeout_s: per-request timeout (one attempt), seconds.
        concurrency / rpm / tpm: simultaneous requests, requests and tokens per minute.
        max_attempts: tries per request for transient failures (429, 5xx, timeouts...).
        retry: a full `RetryPolicy` (overrides max_attempts).
        cache: a `ResponseCache`, a path to its sqlite file, or None (no cache).
        prices: a price table, a path to a price file, or None (built-in + $NEUROSCRIBE_PRICES).
        echo_shift: 0 or 1 to fix the echo alignment; None = take it from `probe`
            or probe lazily on the first echo request.
        probe: a stored `probe()` result (e.g. from the run manifest) to reuse.
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
        rpm: float | None = None,
        tpm: float | None = None,
        max_attempts: int = 6,
        retry: RetryPolicy | None = None,
        cache: ResponseCache | str | os.PathLike[str] | None = None,
        prices: dict[str, Price] | str | os.PathLike[str] | None = None,
        echo_shift: int | None = None,
        probe: dict[str, Any] | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        if not model:
            raise ConfigError("a model name is required")
        self.model = model
        self.spec = model
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
        self.timeout_s = timeout_s
        self.limits = CallLimits(
            concurrency=concurrency,
            rpm=rpm,
            tpm=tpm,
            retry=retry or RetryPolicy(max_attempts=max_attempts),
        )
        if isinstance(cache, (str, os.PathLike)):
            cache = ResponseCache(cache)
        self.cache: ResponseCache | None = cache
        self.prices = prices if isinstance(prices, dict) else load_prices(prices)
        if echo_shift not in (None, 0, 1):
            raise ConfigError(f"echo_shift must be 0 or 1, not {echo_shift!r}")
        self._echo_shift = echo_shift
        if probe is not None:
            _PROBES.setdefault(self._probe_key, dict(probe))
        self.extra_body = dict(extra_body or {})
        self._clients: dict[int, openai.AsyncOpenAI] = {}
        self._https: dict[int, list[httpx.AsyncClient]] = {}
        self._next_shard = 0
        self._probe_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None
        self.usage = Usage()  # running total over this object's calls
        for name in ("openai", "httpx", "httpx2", "neuroscribe"):
            logger = logging.getLogger(name)
            if not any(isinstance(f, ScrubFilter) and key in f.secrets for f in logger.filters):
                logger.addFilter(ScrubFilter([key]))

    # ------------------------------------------------------------------ plumbing
    def __repr__(self) -> str:  # never show the key
        return f"OpenAICompatibleLLM(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def _probe_key(self) -> tuple[str, str]:
        return (self.base_url, self.model)

    def _client(self) -> openai.AsyncOpenAI:
        # One SDK client per event loop: its connection pool belongs to the loop that
        # opened it, and callers may run several `asyncio.run`s with one backend.
        loop = asyncio.get_running_loop()
        client = self._clients.get(id(loop))
        if client is None:
            client = openai.AsyncOpenAI(
                api_key=self._key,
                base_url=self.base_url,
                timeout=self.timeout_s,
                max_retries=0,
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
            n = max(1, math.ceil(self.limits.concurrency / _SHARD))
            # Building an SSL context (loading the CA bundle) costs ~20 ms: one for all
            # shards, and none at all for plain-http local servers.
            verify: ssl.SSLContext | bool = (
                ssl.create_default_context() if self.base_url.startswith("https") else False
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

    def _scrub(self, text: str) -> str:
        return scrub(text, [self._key])

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
    def _translate(self, exc: Exception, endpoint: str) -> LLMError:
        """Turn an SDK exception into our error types, with the key scrubbed."""
        where = f"{self.base_url}{endpoint}"
        if isinstance(exc, openai.APITimeoutError):
            return TransientError(f"no answer from {where} within {self.timeout_s:g} s")
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc.__context__
            detail = f": {type(cause).__name__}: {cause}" if cause else ""
            return TransientError(self._scrub(f"cannot connect to {where}{detail}"))
        if isinstance(exc, openai.APIStatusError):
            return self._status_error(
                exc.status_code,
                self._scrub(_error_message(exc)),
                _retry_after(exc),
                str(getattr(exc, "code", "")),
                endpoint,
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return TransientError(f"malformed response from {where}")
        return LLMError(self._scrub(f"request to {where} failed: {type(exc).__name__}: {exc}"))

    def _status_error(
        self, status: int, detail: str, retry_after: float | None, code: str, endpoint: str
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
                retry_after_s=retry_after,
            )
        if status >= 500 or status in (408, 409):
            return TransientError(
                f"server error ({status}) at {where}: {detail}",
                status=status,
                retry_after_s=retry_after,
            )
        return LLMError(
            f"request rejected ({status}) by {where} for model {self.model!r}: {detail}",
            status=status,
        )

    # ------------------------------------------------------------------ core request
    async def _request(
        self,
        endpoint: str,
        body: dict[str, Any],
        mapper: Any,
        *,
        use_cache: bool = True,
        estimate_tokens: int = 0,
    ) -> LLMResponse:
        """Send one request (cache → limits → SDK → mapper), return the mapped response.

        `mapper(data) -> list[Completion]` runs inside the retry loop, so an answer
        whose JSON has the wrong shape is retried like a truncated body.
        """
        cache = self.cache if use_cache else None
        key = request_key(endpoint, {"model": self.model, **body}) if cache is not None else None
        if cache is not None and key is not None:
            hit = cache.get(key)
            if hit is not None:
                try:
                    choices = mapper(hit)
                except (KeyError, TypeError, ValueError, IndexError):
                    cache.delete(key)  # stale shape: fetch again
                else:
                    usage = Usage(cached_requests=1, cost_usd=0.0)
                    self.usage = self.usage.add(usage)
                    return LLMResponse(choices=choices, usage=usage, raw=_with_key(hit, key))

        async def attempt() -> tuple[dict[str, Any], list[Completion]]:
            data = await self._send(endpoint, body)
            try:
                return data, mapper(data)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise TransientError(
                    f"unexpected answer shape from {self.base_url}{endpoint}: "
                    f"{type(exc).__name__}: {exc}"
                ) from None

        started = time.monotonic()
        data, choices = await self.limits.run(
            attempt,
            tokens=estimate_tokens,
            describe=f"{endpoint.strip('/')} request to {self.model!r} at {self.base_url}",
        )
        usage = self._usage(data)
        if self.limits.tpm is not None and estimate_tokens:
            spent = usage.prompt_tokens + usage.completion_tokens
            if spent > estimate_tokens:
                self.limits.tpm.charge(spent - estimate_tokens)
        self.usage = self.usage.add(usage)
        log.debug(
            "%s %s: %d+%d tokens in %.2f s",
            self.model,
            endpoint,
            usage.prompt_tokens,
            usage.completion_tokens,
            time.monotonic() - started,
        )
        if cache is not None and key is not None:
            cache.put(key, data)
        return LLMResponse(choices=choices, usage=usage, raw=_with_key(data, key))

    async def _send(self, endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
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
                self._scrub(f"cannot connect to {where}: {type(exc).__name__}: {exc}")
            ) from None
        if resp.status_code >= 400:
            raise self._status_error(
                resp.status_code,
                self._scrub(_body_message(content, resp.reason_phrase)),
                parse_retry_after(resp.headers),
                _body_code(content),
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
                raise TransientError(self._scrub(f"error body from {where}: {data['error']}"))
            raise TransientError(f"answer without choices from {where}")
        return data

    def _usage(self, data: dict[str, Any]) -> Usage:
        u = data.get("usage") or {}
        prompt = int(u.get("prompt_tokens") or 0)
        completion = int(u.get("completion_tokens") or 0)
        price = cost(self.model, prompt, completion, self.prices)
        if price is None and data.get("model") and data["model"] != self.model:
            price = cost(str(data["model"]), prompt, completion, self.prices)
        return Usage(prompt_tokens=prompt, completion_tokens=completion, requests=1, cost_usd=price)

    def discard(self, response: LLMResponse) -> None:
        """Remove `response` from the cache (the caller found it unusable, e.g. no digits).

        Call this before retrying the same request, or the retry gets the cached answer.
        """
        key = (response.raw or {}).get("_cache_key")
        if self.cache is not None and key:
            self.cache.delete(key)

    # ------------------------------------------------------------------ LLM protocol
    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        top_logprobs: int | None = None,
        response_format: dict[str, Any] | None = None,
        stop: list[str] | None = None,
    ) -> LLMResponse:
        """POST /chat/completions; `top_logprobs=k` also asks for generated-token logprobs."""
        body: dict[str, Any] = {"messages": messages, "n": n, "temperature": temperature}
        limit_name = (
            "max_completion_tokens" if self.model.startswith(_REASONING_PREFIXES) else "max_tokens"
        )
        body[limit_name] = max(1, max_tokens)
        if top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        if response_format is not None:
            body["response_format"] = response_format
        if stop:
            body["stop"] = stop
        estimate = _estimate_tokens(json.dumps(messages)) + n * max_tokens
        return await self._request(
            "/chat/completions", body, map_chat_choices, estimate_tokens=estimate
        )

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        logprobs: int | None = None,
        echo: bool = False,
        stop: list[str] | None = None,
    ) -> LLMResponse:
        """POST /completions. With `echo` and `logprobs`, `prompt_tokens` holds the prompt's
        own tokens with their (alignment-corrected) top logprobs.

        `max_tokens=0` is sent as 1 (llama.cpp reads 0 as "until the context is full")
        and the generated token is then dropped from the answer.
        """
        body: dict[str, Any] = {
            "prompt": prompt,
            "n": n,
            "temperature": temperature,
            "max_tokens": max(1, max_tokens),
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if echo:
            body["echo"] = True
        if stop:
            body["stop"] = stop
        shift = 0
        if echo and logprobs is not None:
            shift = await self.echo_shift()

        def mapper(data: dict[str, Any]) -> list[Completion]:
            return map_completion_choices(
                data, prompt=prompt, echo=echo, shift=shift, drop_generated=max_tokens <= 0
            )

        estimate = _estimate_tokens(prompt) * (2 if echo else 1) + n * max(1, max_tokens)
        return await self._request("/completions", body, mapper, estimate_tokens=estimate)

    # ------------------------------------------------------------------ capabilities
    @property
    def probe_result(self) -> dict[str, Any] | None:
        """The last probe result for this base URL + model (a JSON-able dict), if any."""
        return _PROBES.get(self._probe_key)

    async def echo_shift(self) -> int:
        """The echo alignment shift: the constructor's, the stored probe's, or probe now."""
        if self._echo_shift is not None:
            return self._echo_shift
        result = await self.probe()
        shift = result.get("echo_shift")
        return int(shift) if shift in (0, 1) else 0

    async def check_model(self, *, require_reachable: bool = False) -> list[str] | None:
        """Raise LLMError if the server lists its models and ours is not among them.

        Needed because llama.cpp's server silently answers any model name with its
        default model. Returns the served model ids (None if the server cannot list them).
        With `require_reachable`, a server that cannot be reached at all is an error too
        (the CLI's check before a job, so a typo in --base-url fails at once).
        """
        try:
            page = await self._client().models.list()
            ids = [m.id for m in page.data]
        except openai.AuthenticationError as exc:
            raise self._translate(exc, "/models") from None
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            if require_reachable:
                raise LLMError(str(self._translate(exc, "/models"))) from None
            return None
        except openai.OpenAIError:
            return None
        if ids and self.model not in ids:
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise LLMError(
                f"model {self.model!r} is not served at {self.base_url} (it serves: {shown})",
                status=404,
            )
        return ids

    async def probe(self, *, refresh: bool = False) -> dict[str, Any]:
        """Detect what this endpoint + model supports; cached per (base_url, model).

        Keys: `base_url`, `model`, `probe_version`, `served_models`, `model_listed`,
        `completions`, `echo_logprobs`, `echo_shift` (0, 1 or None), `echo_tokens`,
        `ten_single_token`, `prompt_logprobs` (vLLM extension), `chat`, `chat_logprobs`,
        `json_mode`, `json_valid`, `errors` (capability → message). Never raises for
        a missing capability; a 401 is raised since nothing can work without a key.
        """
        loop = asyncio.get_running_loop()
        if self._probe_lock is None or self._probe_lock[0] is not loop:
            self._probe_lock = (loop, asyncio.Lock())
        async with self._probe_lock[1]:
            if not refresh and self._probe_key in _PROBES:
                return _PROBES[self._probe_key]
            result = await self._run_probe()
            _PROBES[self._probe_key] = result
            return result

    async def _run_probe(self) -> dict[str, Any]:
        r: dict[str, Any] = {
            "probe_version": PROBE_VERSION,
            "base_url": self.base_url,
            "model": self.model,
            "served_models": None,
            "model_listed": None,
            "completions": False,
            "echo_logprobs": False,
            "echo_shift": None,
            "echo_tokens": None,
            "ten_single_token": None,
            "prompt_logprobs": False,
            "chat": False,
            "chat_logprobs": False,
            "json_mode": False,
            "json_valid": False,
            "json_schema": False,
            "errors": {},
        }
        errors: dict[str, str] = r["errors"]
        try:
            ids = await self.check_model()
            r["served_models"] = ids
            r["model_listed"] = None if ids is None else True
        except LLMError as exc:
            if exc.status == 401:
                raise
            r["model_listed"] = False
            errors["model"] = str(exc)

        # /completions with echo + logprobs: alignment and "10" tokenisation.
        try:
            resp = await self._request(
                "/completions",
                {
                    "prompt": _PROBE_PROMPT,
                    "max_tokens": 1,
                    "temperature": 0.0,
                    "logprobs": 5,
                    "echo": True,
                },
                lambda data: [_raw_completion_choice(data)],
                use_cache=False,
            )
            r["completions"] = True
            raw_lp = resp.choices[0]
            tokens, tops = raw_lp["tokens"], raw_lp["top_logprobs"]
            if tokens and any(t for t in tops if t):
                r["echo_logprobs"] = True
                r["echo_tokens"] = tokens
                r["echo_shift"] = detect_echo_shift(tokens, tops, raw_lp["text_offset"])
                r["ten_single_token"] = any(t.strip() == "10" for t in tokens)
                if r["echo_shift"] is None:
                    errors["echo_shift"] = "could not tell the echo alignment apart"
            else:
                errors["echo_logprobs"] = "echo answer carried no prompt logprobs"
        except LLMError as exc:
            if exc.status == 401:
                raise
            errors["completions"] = str(exc)

        if r["completions"]:  # vLLM's prompt_logprobs extension (ignored by others)
            try:
                resp = await self._request(
                    "/completions",
                    {
                        "prompt": _PROBE_SENTENCE,
                        "max_tokens": 1,
                        "temperature": 0.0,
                        "extra_body": {"prompt_logprobs": 1},
                    },
                    lambda data: [data["choices"][0]],
                    use_cache=False,
                )
                r["prompt_logprobs"] = bool(resp.choices[0].get("prompt_logprobs"))
            except LLMError as exc:
                errors["prompt_logprobs"] = str(exc)

        try:
            resp = await self.chat_raw_probe()
            r["chat"] = True
            r["chat_logprobs"] = bool(resp.choices[0].tokens) and any(
                t.top_logprobs for t in resp.choices[0].tokens or []
            )
        except LLMError as exc:
            if exc.status == 401:
                raise
            errors["chat"] = str(exc)

        if r["chat"]:
            try:
                resp = await self._request(
                    "/chat/completions",
                    {
                        "messages": [
                            {
                                "role": "user",
                                "content": 'Answer with a JSON object like {"answer": 7}.',
                            }
                        ],
                        "max_tokens": 24,
                        "temperature": 0.0,
                        "response_format": {"type": "json_object"},
                    },
                    map_chat_choices,
                    use_cache=False,
                )
                r["json_mode"] = True
                try:
                    json.loads(resp.choices[0].text)
                    r["json_valid"] = True
                except ValueError:
                    r["json_valid"] = False
            except LLMError as exc:
                errors["json_mode"] = str(exc)
            # OpenAI-style structured output; llama.cpp's server rejects this type and
            # takes a schema inside {"type": "json_object", "schema": ...} instead.
            try:
                # One attempt, no retries: llama.cpp answers an unknown type with a 500.
                await self._send(
                    "/chat/completions",
                    {
                        "messages": [{"role": "user", "content": "Give the number 7 as JSON."}],
                        "max_tokens": 12,
                        "temperature": 0.0,
                        "response_format": {
                            "type": "json_schema",
                            "json_schema": {
                                "name": "answer",
                                "schema": {
                                    "type": "object",
                                    "properties": {"answer": {"type": "integer"}},
                                    "required": ["answer"],
                                },
                            },
                        },
                    },
                )
                r["json_schema"] = True
            except LLMError as exc:
                r["json_schema"] = False
                errors["json_schema"] = str(exc)[:300]
        return r

    async def chat_raw_probe(self) -> LLMResponse:
        """One tiny chat request with top_logprobs=2, uncached (used by `probe`)."""
        limit_name = (
            "max_completion_tokens" if self.model.startswith(_REASONING_PREFIXES) else "max_tokens"
        )
        return await self._request(
            "/chat/completions",
            {
                "messages": [{"role": "user", "content": "Reply with the number 7."}],
                limit_name: 3,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": 2,
            },
            map_chat_choices,
            use_cache=False,
        )


# ---------------------------------------------------------------------- pure mapping


def _with_key(data: dict[str, Any], key: str | None) -> dict[str, Any]:
    return {**data, "_cache_key": key} if key else data


def _estimate_tokens(text: str) -> int:
    # ~4 characters per token for English; only used for the tokens-per-minute bucket.
    return max(1, math.ceil(len(text) / 4))


def _error_message(exc: openai.APIStatusError, limit: int = 300) -> str:
    body = exc.body
    text = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            text = str(inner["message"])
        elif body.get("detail") is not None:
            text = str(body["detail"])
    text = text or str(getattr(exc, "message", "") or exc)
    text = " ".join(text.split())  # one line: servers put tracebacks in here
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _retry_after(exc: openai.APIStatusError) -> float | None:
    return parse_retry_after(getattr(exc.response, "headers", None))


def _body_message(content: bytes, fallback: str, limit: int = 300) -> str:
    """The error message in an error body (OpenAI's {"error": {"message"}}, FastAPI's
    {"detail"}), else the body's text, else the HTTP reason; one line, capped."""
    text = ""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            text = str(inner["message"])
        elif isinstance(inner, str):
            text = inner
        elif body.get("detail") is not None:
            text = str(body["detail"])
    if not text:
        text = content[:limit].decode("utf-8", "replace") if content else fallback
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _body_code(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    inner = body.get("error") if isinstance(body, dict) else None
    return str(inner.get("code") or inner.get("type") or "") if isinstance(inner, dict) else ""


def _raw_completion_choice(data: dict[str, Any]) -> dict[str, Any]:
    lp = data["choices"][0].get("logprobs") or {}
    return {
        "tokens": list(lp.get("tokens") or []),
        "top_logprobs": list(lp.get("top_logprobs") or []),
        "text_offset": list(lp.get("text_offset") or []),
    }


def detect_echo_shift(
    tokens: list[str], top_logprobs: list[dict[str, float] | None], text_offset: list[int]
) -> int | None:
    """Which alignment an echo answer uses, from a prompt that repeats one sentence.

    In the later copies every token is predictable, so the argmax of the distribution
    for token j is token j. Count positions where the argmax of raw entry i is token i
    (shift 0) and where it is token i+1 (shift 1). Returns the clear winner, or None.
    The token's own entry is ignored: llama.cpp adds it to each dict whatever its rank.
    """
    n = len(tokens)
    start = n // 3  # skip the first copy, which the model cannot predict
    votes = [0, 0]
    for i in range(start, n - 1):
        top = top_logprobs[i] if i < len(top_logprobs) else None
        if not top:
            continue
        best = max(top.items(), key=lambda kv: kv[1])[0]
        if best == tokens[i]:
            votes[0] += 1
        if best == tokens[i + 1]:
            votes[1] += 1
    if max(votes) < 3 or votes[0] == votes[1]:
        return None
    return 0 if votes[0] > votes[1] else 1


def map_chat_choices(data: dict[str, Any]) -> list[Completion]:
    """Chat answer → Completions (text, finish reason, generated-token logprobs)."""
    out = []
    for choice in data["choices"]:
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = ""
        tokens = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and lp.get("content") is not None:
            tokens = [
                TokenLogprob(
                    token=item["token"],
                    logprob=item.get("logprob"),
                    top_logprobs={
                        alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []
                    },
                )
                for item in lp["content"]
            ]
        out.append(Completion(text=text, finish_reason=choice.get("finish_reason"), tokens=tokens))
    return out


def map_completion_choices(
    data: dict[str, Any],
    *,
    prompt: str,
    echo: bool,
    shift: int = 0,
    drop_generated: bool = False,
) -> list[Completion]:
    """Completion answer → Completions; with echo, split prompt and generated tokens.

    The split uses `text_offset` (character offsets into prompt + completion; tokens that
    start before len(prompt) are the prompt's). With `shift=1` raw entry i-1 is the
    distribution for token i (llama.cpp without BOS); the token's own logprob is then
    read from that distribution (None when it is outside the returned top-k). When the
    server's token strings do not add up to the prompt (llama.cpp returns "" for pieces
    of a multi-byte character), prompt token texts are rebuilt from the offsets, so
    they always concatenate to the prompt exactly.
    """
    out = []
    for choice in data["choices"]:
        text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        lp = choice.get("logprobs")
        prompt_tokens = None
        tokens = None
        if isinstance(lp, dict) and lp.get("tokens") is not None:
            raw_tokens: list[str] = list(lp["tokens"])
            raw_lps: list[float | None] = list(lp.get("token_logprobs") or [None] * len(raw_tokens))
            raw_tops: list[dict[str, float] | None] = list(
                lp.get("top_logprobs") or [None] * len(raw_tokens)
            )
            offsets: list[int] = list(lp.get("text_offset") or [])
            entries = []
            for i, tok in enumerate(raw_tokens):
                if echo and shift:
                    j = i - shift
                    top = dict(raw_tops[j] or {}) if 0 <= j < len(raw_tops) else {}
                    logprob = top.get(tok)
                else:
                    top = dict(raw_tops[i] or {}) if i < len(raw_tops) else {}
                    logprob = raw_lps[i] if i < len(raw_lps) else None
                entries.append(TokenLogprob(token=tok, logprob=logprob, top_logprobs=top))
            if echo:
                n_prompt = _count_prompt_tokens(raw_tokens, offsets, prompt)
                prompt_tokens = entries[:n_prompt]
                _rebuild_prompt_texts(prompt_tokens, offsets[:n_prompt], prompt)
                tokens = entries[n_prompt:]
            else:
                tokens = entries
        if drop_generated:
            text = prompt if echo else ""
            tokens = [] if tokens is not None else None
        out.append(
            Completion(text=text, finish_reason=finish, tokens=tokens, prompt_tokens=prompt_tokens)
        )
    return out


def _count_prompt_tokens(tokens: list[str], offsets: list[int], prompt: str) -> int:
    if len(offsets) == len(tokens) and offsets:
        return sum(1 for off in offsets if off < len(prompt))
    # No offsets: accumulate token texts until they cover the prompt.
    covered = 0
    for i, tok in enumerate(tokens):
        if covered >= len(prompt):
            return i
        covered += len(tok)
    return len(tokens)


def _rebuild_prompt_texts(entries: list[TokenLogprob], offsets: list[int], prompt: str) -> None:
    if "".join(e.token for e in entries) == prompt or len(offsets) != len(entries):
        return
    bounds = [*offsets, len(prompt)]
    if any(b > a for a, b in zip(bounds[1:], bounds[:-1], strict=True)) or bounds[0] != 0:
        return  # offsets not usable (not monotonic): keep the server's strings
    for i, entry in enumerate(entries):
        entry.token = prompt[bounds[i] : bounds[i + 1]]


__all__ = [
    "OpenAICompatibleLLM",
    "detect_echo_shift",
    "map_chat_choices",
    "map_completion_choices",
]
