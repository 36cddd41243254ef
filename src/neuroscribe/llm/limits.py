"""Concurrency, rate limits and retries for LLM calls.

`CallLimits.run(fn, tokens=...)` runs one request under a concurrency semaphore (and
optional requests/tokens-per-minute buckets) and retries it with `tenacity`
(exponential backoff with full jitter, honouring `Retry-After` / `retry-after-ms`,
capped) when it raises a `TransientError` (429, 5xx, timeouts, dropped connections,
truncated or invalid bodies). Any other exception — a 400, a 401, a wrong model — is
raised at once. The HTTP client uses it for its attempts; it translates its library's
exceptions into these types, so this module knows nothing about HTTP libraries.

`RateLimitedLLM` is the rate-limit layer `make_llm` puts in front of any backend
(`rpm=`, `tpm=`): one bucket acquire per call, before the backend's own retries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.base import LLM, LLMResponse
from neuroscribe.llm.messages import Message, to_wire
from neuroscribe.llm.secrets import ScrubFilter, scrub  # here for old callers
from neuroscribe.llm.wrappers import LLMWrapper

log = logging.getLogger(__name__)

T = TypeVar("T")


class TransientError(LLMError):
    """A failure worth retrying; `retry_after_s` is the server's hint, if it gave one."""

    def __init__(
        self, message: str, *, status: int | None = None, retry_after_s: float | None = None
    ):
        super().__init__(message, status=status, retryable=True)
        self.retry_after_s = retry_after_s


# --------------------------------------------------------------------------- Retry-After


def parse_retry_after(headers: object) -> float | None:
    """Seconds to wait from `retry-after-ms`, `Retry-After` (seconds or HTTP date), or None."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            seconds = float(ms) / 1000.0
        except ValueError:
            pass
        else:
            if not math.isnan(seconds):
                return max(0.0, seconds)
    ra = get("retry-after")
    if not ra:
        return None
    try:
        seconds = float(ra)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    try:
        return max(0.0, parsedate_to_datetime(ra).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- rate limits


class TokenBucket:
    """An async token bucket refilled continuously at `per_minute` units per minute.

    `acquire(n)` waits until n units are available (requests larger than the capacity
    wait for a full bucket, then drive it negative, so one huge request cannot block
    forever). `charge(n)` takes units after the fact (e.g. tokens the estimate missed),
    possibly going into debt that later callers wait out.
    """

    def __init__(self, per_minute: float, *, capacity: float | None = None, clock=time.monotonic):
        if per_minute <= 0:
            raise ValueError("a rate limit must be positive")
        self.rate = per_minute / 60.0
        self.capacity = float(capacity if capacity is not None else per_minute)
        self._clock = clock
        self._level = self.capacity
        self._last = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._last) * self.rate)
        self._last = now

    async def acquire(self, n: float = 1.0) -> None:
        # The lock makes waiters queue in arrival order (fair), so no one starves.
        async with self._lock:
            need = min(n, self.capacity)
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= n
                    return
                await asyncio.sleep((need - self._level) / self.rate)

    def charge(self, n: float) -> None:
        self._refill()
        self._level -= n


# --------------------------------------------------------------------------- retries


@dataclass
class RetryPolicy:
    """How often and how long to retry transient failures.

    Waits are `uniform(0, min(max_wait_s, base_s * 2**attempt))` (full jitter); when the
    server sends Retry-After the wait is that value plus a little jitter (up to 10 %) so
    that concurrent callers do not return in lockstep. No wait, jitter included, is ever
    longer than `max_wait_s`: a hint at or above it waits 90-100 % of `max_wait_s`.
    """

    max_attempts: int = 6
    base_s: float = 0.5
    max_wait_s: float = 60.0

    def __post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ConfigError(f"max_attempts must be a whole number, not {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {self.max_attempts}")
        for name in ("base_s", "max_wait_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ConfigError(f"{name} must be a finite number >= 0, not {value!r}")

    def wait(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        hint = getattr(exc, "retry_after_s", None)
        cap = self.max_wait_s
        if hint is not None:
            if hint >= cap:  # jitter below the cap, never above it
                return cap - random.uniform(0, 0.1 * cap)
            return min(cap, hint + random.uniform(0, 0.1 * max(hint, 0.1)))
        ceiling = min(cap, self.base_s * 2 ** (state.attempt_number - 1))
        return random.uniform(0, ceiling)


class CallLimits:
    """Concurrency, rpm/tpm limits and retries for one backend (shared by all its calls)."""

    def __init__(
        self,
        *,
        concurrency: int = 8,
        rpm: float | None = None,
        tpm: float | None = None,
        retry: RetryPolicy | None = None,
    ):
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        self.concurrency = concurrency
        self._sem = asyncio.Semaphore(concurrency)
        self._loop: object | None = None
        self.rpm = TokenBucket(rpm) if rpm else None
        self.tpm = TokenBucket(tpm) if tpm else None
        self.retry = retry or RetryPolicy()
        self.attempts = 0  # every attempt made (first tries and retries)
        self.retries = 0  # attempts after a transient failure

    async def run(
        self,
        fn: Callable[[], Awaitable[T]],
        *,
        tokens: int = 0,
        describe: str = "request",
    ) -> T:
        """Run `fn` under the limits, retrying transient failures; returns its result.

        `tokens` is the caller's estimate of the request's tokens (prompt + max output)
        for the tokens-per-minute bucket (the backend charges the difference to
        `self.tpm` once the real usage is known).
        """
        self._bind_loop()
        last: TransientError | None = None
        policy = self.retry
        warned = False

        def wait(state: RetryCallState) -> float:
            # Say once per request that the server asked for more than we wait.
            nonlocal warned
            exc = state.outcome.exception() if state.outcome else None
            hint = getattr(exc, "retry_after_s", None)
            if hint is not None and hint > policy.max_wait_s and not warned:
                warned = True
                log.warning(
                    "%s: the server asked to wait %.0f s (Retry-After); waiting at most "
                    "%g s (max_wait_s)",
                    scrub(describe),
                    hint,
                    policy.max_wait_s,
                )
            return policy.wait(state)

        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retry.max_attempts),
            wait=wait,
            retry=retry_if_exception_type(TransientError),
            reraise=True,
            before_sleep=self._before_sleep(describe),
        )
        try:
            async for attempt in retrying:
                with attempt:
                    self.attempts += 1
                    if attempt.retry_state.attempt_number > 1:
                        self.retries += 1
                    if self.rpm:
                        await self.rpm.acquire(1)
                    if self.tpm and tokens:
                        await self.tpm.acquire(tokens)
                    async with self._sem:
                        return await fn()
        except TransientError as exc:
            last = exc
        assert last is not None
        raise LLMError(
            f"{describe} failed after {self.retry.max_attempts} attempts: {last}",
            status=last.status,
            retryable=True,
        ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _bind_loop(self) -> None:
        # asyncio primitives belong to one event loop; a backend reused across several
        # `asyncio.run` calls gets fresh ones (rate-limit levels carry over).
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            self._sem = asyncio.Semaphore(self.concurrency)
            for bucket in (self.rpm, self.tpm):
                if bucket is not None:
                    bucket._lock = asyncio.Lock()

    @staticmethod
    def _before_sleep(describe: str) -> Callable[[RetryCallState], None]:
        def log_retry(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            wait = state.next_action.sleep if state.next_action else 0.0
            # exc text is already scrubbed by the backend that raised it
            log.info(
                "%s: attempt %d failed (%s); retrying in %.2f s",
                describe,
                state.attempt_number,
                exc,
                wait,
            )

        return log_retry


# --------------------------------------------------------------------------- the layer


def estimate_tokens(text: str) -> int:
    """~4 characters per token for English; only feeds the tokens-per-minute bucket."""
    return max(1, math.ceil(len(text) / 4))


class RateLimitedLLM(LLMWrapper):
    """Requests- and tokens-per-minute limits in front of any backend.

    Each call takes one request and its estimated tokens (prompt + n·max_tokens) from
    the buckets before it goes out; once the real usage is known the tokens the
    estimate missed are charged as debt that later calls wait out.
    """

    def __init__(self, inner: LLM, *, rpm: float | None = None, tpm: float | None = None):
        super().__init__(inner)
        self.rpm = TokenBucket(rpm) if rpm else None
        self.tpm = TokenBucket(tpm) if tpm else None
        self._loop: object | None = None

    async def chat(self, messages: Sequence[Message], **params: Any) -> LLMResponse:
        n, max_tokens = params.get("n", 1), params.get("max_tokens", 60)
        estimate = estimate_tokens(json.dumps(to_wire(messages))) + n * max(1, max_tokens)
        return await self._limited(estimate, lambda: self.inner.chat(messages, **params))

    async def complete(self, prompt: str, **params: Any) -> LLMResponse:
        n, max_tokens = params.get("n", 1), params.get("max_tokens", 60)
        echo = 2 if params.get("echo") else 1  # echo answers carry the prompt again
        estimate = estimate_tokens(prompt) * echo + n * max(1, max_tokens)
        return await self._limited(estimate, lambda: self.inner.complete(prompt, **params))

    async def _limited(
        self, estimate: int, call: Callable[[], Awaitable[LLMResponse]]
    ) -> LLMResponse:
        self._bind_loop()
        if self.rpm:
            await self.rpm.acquire(1)
        if self.tpm:
            await self.tpm.acquire(estimate)
        response = await call()
        if self.tpm:
            spent = response.usage.prompt_tokens + response.usage.completion_tokens
            if spent > estimate:
                self.tpm.charge(spent - estimate)
        return response

    def _bind_loop(self) -> None:
        # A bucket's lock belongs to one event loop; levels carry over between loops.
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop = loop
            for bucket in (self.rpm, self.tpm):
                if bucket is not None:
                    bucket._lock = asyncio.Lock()


__all__ = [
    "CallLimits",
    "RateLimitedLLM",
    "RetryPolicy",
    "ScrubFilter",
    "TokenBucket",
    "TransientError",
    "estimate_tokens",
    "parse_retry_after",
    "scrub",
]
