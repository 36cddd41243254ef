"""Retries, timeouts and the cache through the fault-injecting proxy, real server behind it."""

from __future__ import annotations

import asyncio
import re
import time

import pytest

from neuroscribe.errors import LLMError
from neuroscribe.llm import discard_cached
from neuroscribe.llm.cache import ResponseCache
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.openai_api import OpenAICompatibleLLM

pytestmark = pytest.mark.slow

HELLO = [{"role": "user", "content": "Write the digits 1 2 3."}]


def run(coro):
    return asyncio.run(coro)


def through(proxy, *, attempts: int = 6, timeout_s: float = 120, **kw) -> OpenAICompatibleLLM:
    # tiny backoff: a wait of >= 1 s can then only come from Retry-After
    return OpenAICompatibleLLM(
        "smollm2",
        base_url=proxy.base_url,
        timeout_s=timeout_s,
        retry=RetryPolicy(max_attempts=attempts, base_s=0.01, max_wait_s=5),
        **kw,
    )


def ask(llm: OpenAICompatibleLLM):
    return run(llm.chat(HELLO, max_tokens=6, temperature=0))


def test_429_with_retry_after_is_honoured(fault_proxy):
    proxy = fault_proxy(script=["429_retry_after", "ok"], retry_after_s=1.0)
    start = time.monotonic()
    resp = ask(through(proxy))
    assert time.monotonic() - start >= 1.0
    assert resp.choices[0].text
    assert proxy.counts == {"429_retry_after": 1, "ok": 1}
    assert proxy.upstream_requests == 1


def test_429_with_retry_after_ms_is_honoured(fault_proxy):
    proxy = fault_proxy(script=["429_retry_after_ms", "ok"], retry_after_s=0.7)
    start = time.monotonic()
    ask(through(proxy))
    assert time.monotonic() - start >= 0.7
    assert proxy.counts["429_retry_after_ms"] == 1


def test_429_without_retry_after_and_5xx_are_retried(fault_proxy):
    proxy = fault_proxy(script=["429", "500", "502", "503", "ok"])
    llm = through(proxy)
    resp = ask(llm)
    assert resp.choices[0].text
    assert proxy.injected == 4 and proxy.upstream_requests == 1
    assert llm.limits.retries == 4
    assert resp.usage.requests == 1  # usage counts the answer, not the failed attempts


def test_400_is_not_retried(fault_proxy):
    proxy = fault_proxy(script=["400", "ok"])
    llm = through(proxy)
    with pytest.raises(LLMError, match=r"request rejected \(400\)") as ei:
        ask(llm)
    assert ei.value.status == 400 and not ei.value.retryable
    assert sum(proxy.counts.values()) == 1  # the second ("ok") slot was never used


def test_dropped_connection_and_truncated_body_are_retried(fault_proxy):
    proxy = fault_proxy(script=["drop", "truncate", "ok"])
    resp = ask(through(proxy))
    assert resp.choices[0].text
    assert proxy.counts == {"drop": 1, "truncate": 1, "ok": 1}


def test_slow_answer_times_out_and_is_retried(fault_proxy):
    proxy = fault_proxy(script=["slow", "ok"], slow_s=4.0)
    start = time.monotonic()
    resp = ask(through(proxy, timeout_s=1.5))
    assert resp.choices[0].text
    assert time.monotonic() - start >= 1.5
    assert proxy.counts == {"slow": 1, "ok": 1}


def test_gives_up_after_max_attempts_naming_the_last_error(fault_proxy):
    proxy = fault_proxy(script=["503", "503", "503", "ok"])
    with pytest.raises(LLMError, match=r"after 3 attempts: server error \(503\)") as ei:
        ask(through(proxy, attempts=3))
    assert ei.value.retryable
    assert proxy.counts["503"] == 3


def test_unusable_answer_can_be_discarded_from_the_cache(fault_proxy, tmp_path):
    proxy = fault_proxy(script=["unusable"])
    llm = through(proxy, cache=ResponseCache(tmp_path / "cache.sqlite"))
    bad = ask(llm)
    assert not re.search(r"\d", bad.choices[0].text)  # well formed, but no digits
    assert ask(llm).choices[0].text == bad.choices[0].text  # cached as given
    discard_cached(llm, bad)
    good = ask(llm)
    assert re.search(r"\d", good.choices[0].text)
    assert proxy.upstream_requests == 2


def test_cache_hit_costs_nothing_and_skips_the_server(fault_proxy, tmp_path):
    proxy = fault_proxy()
    llm = through(proxy, cache=ResponseCache(tmp_path / "cache.sqlite"))
    run(llm.probe())  # the echo alignment probe is never cached; count what follows
    proxy.reset_counts()
    first = run(llm.complete("One two three", max_tokens=1, logprobs=2, echo=True, temperature=0))
    second = run(llm.complete("One two three", max_tokens=1, logprobs=2, echo=True, temperature=0))
    assert proxy.upstream_requests == 1
    assert second.usage.cached_requests == 1 and second.usage.requests == 0
    assert second.usage.cost_usd == 0.0
    assert first.usage.requests == 1
    assert [t.top_logprobs for t in second.choices[0].prompt_tokens] == [
        t.top_logprobs for t in first.choices[0].prompt_tokens
    ]
    # a different parameter is a different request
    run(llm.complete("One two three", max_tokens=1, logprobs=3, echo=True, temperature=0))
    assert proxy.upstream_requests == 2


def test_random_faults_at_30_percent_all_requests_end_right(fault_proxy, llama_server):
    rates = {"429": 0.05, "429_retry_after": 0.05, "503": 0.05, "drop": 0.05, "truncate": 0.1}
    proxy = fault_proxy(rates=rates, seed=7, retry_after_s=0.2)
    llm = through(proxy, attempts=10, concurrency=4)
    direct = OpenAICompatibleLLM("smollm2", base_url=llama_server.base_url, timeout_s=120)
    prompts = [[{"role": "user", "content": f"Count from {i}:"}] for i in range(10)]

    async def all_of(backend):
        return await asyncio.gather(
            *(backend.chat(p, max_tokens=4, temperature=0) for p in prompts)
        )

    faulty = run(all_of(llm))
    clean = run(all_of(direct))
    assert [r.choices[0].text for r in faulty] == [r.choices[0].text for r in clean]
    assert proxy.injected >= 2
    assert proxy.counts["ok"] == 10 == proxy.upstream_requests - proxy.counts["truncate"]
    assert llm.limits.retries == proxy.injected
