"""Pricing, the response cache, the rate limiter, retries and the pure response mapping."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from email.utils import formatdate

import pytest

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.cache import ResponseCache, request_key
from neuroscribe.llm.limits import (
    CallLimits,
    RetryPolicy,
    TokenBucket,
    TransientError,
    parse_retry_after,
    scrub,
)
from neuroscribe.llm.openai_api import detect_echo_shift, map_completion_choices
from neuroscribe.llm.pricing import Price, cost, load_prices, price_for

# ---------------------------------------------------------------------------- pricing


def test_cost_of_known_models_per_million_tokens():
    assert cost("gpt-4o", 1_000_000, 1_000_000) == pytest.approx(2.50 + 10.00)
    assert cost("gpt-4o-mini", 2000, 500) == pytest.approx((2000 * 0.15 + 500 * 0.60) / 1e6)


def test_snapshot_and_provider_prefixed_names_use_the_base_price():
    assert price_for("gpt-4o-2024-08-06") == price_for("gpt-4o")
    assert price_for("openai/gpt-4o-mini") == price_for("gpt-4o-mini")


def test_unknown_model_has_no_price_not_zero():
    assert cost("smollm2", 100, 100) is None
    assert price_for("gpt-4o-turbo-ultra") is None


def test_override_file_declares_local_model_free_and_overrides(tmp_path, monkeypatch):
    f = tmp_path / "prices.json"
    f.write_text(
        json.dumps(
            {
                "_comment": "ignored",
                "smollm2": {"input": 0, "output": 0},
                "gpt-4o": {"input": 1, "output": 2},
            }
        )
    )
    table = load_prices(f)
    assert cost("smollm2", 5000, 5000, table) == 0.0
    assert cost("gpt-4o", 1_000_000, 1_000_000, table) == pytest.approx(3.0)
    monkeypatch.setenv("NEUROSCRIBE_PRICES", str(f))
    assert cost("smollm2", 1, 1) == 0.0  # picked up from the environment


def test_bad_price_file_names_the_file_and_model(tmp_path):
    f = tmp_path / "p.json"
    f.write_text('{"m": {"input": "cheap"}}')
    with pytest.raises(ConfigError, match=r"p\.json.*'m'"):
        load_prices(f)
    f.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_prices(f)
    with pytest.raises(ConfigError, match="cannot read"):
        load_prices(tmp_path / "missing.json")
    f.write_text('{"m": {"input": -1, "output": 1}}')
    with pytest.raises(ConfigError, match="negative"):
        load_prices(f)


# ---------------------------------------------------------------------------- cache


def test_request_key_depends_on_every_parameter():
    base = {"model": "m", "prompt": "hi", "temperature": 0.0, "max_tokens": 1}
    key = request_key("/completions", base)
    assert key == request_key("/completions", dict(reversed(list(base.items()))))
    for change in (
        {"model": "m2"},
        {"prompt": "hi!"},
        {"temperature": 1.0},
        {"max_tokens": 2},
        {"echo": True},
    ):
        assert request_key("/completions", {**base, **change}) != key
    assert request_key("/chat/completions", base) != key


def test_cache_roundtrip_reopen_and_delete(tmp_path):
    path = tmp_path / "c.sqlite"
    c = ResponseCache(path)
    assert c.get("k") is None
    c.put("k", {"choices": [{"text": "é 日本"}]})
    c.close()
    c2 = ResponseCache(path)
    assert c2.get("k") == {"choices": [{"text": "é 日本"}]}
    assert len(c2) == 1
    c2.delete("k")
    assert c2.get("k") is None
    assert (c2.hits, c2.misses) == (1, 1)


def test_cache_concurrent_writers_in_threads(tmp_path):
    c = ResponseCache(tmp_path / "c.sqlite")

    def work(t: int) -> None:
        for i in range(50):
            c.put(f"{t}-{i}", {"v": i})
            assert c.get(f"{t}-{i}") == {"v": i}

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(c) == 200


def test_cache_survives_sigkill(tmp_path):
    path = tmp_path / "c.sqlite"
    code = (
        "import os, signal\n"
        "from neuroscribe.llm.cache import ResponseCache\n"
        f"c = ResponseCache({str(path)!r})\n"
        "for i in range(100):\n"
        "    c.put(str(i), {'i': i})\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False)
    assert proc.returncode == -signal.SIGKILL
    c = ResponseCache(path)
    assert len(c) == 100
    assert c.get("99") == {"i": 99}


def test_unopenable_cache_is_a_config_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="response cache"):
        ResponseCache(blocker / "sub" / "c.sqlite")


# ---------------------------------------------------------------------------- limits


@pytest.mark.slow
def test_token_bucket_limits_rate_after_burst():
    async def main() -> float:
        bucket = TokenBucket(per_minute=600, capacity=1)  # 10 per second, no burst
        start = time.monotonic()
        for _ in range(6):
            await bucket.acquire()
        return time.monotonic() - start

    elapsed = asyncio.run(main())
    assert 0.45 <= elapsed < 1.5  # first is free, 5 more at 0.1 s each


@pytest.mark.slow
def test_token_bucket_charge_creates_debt():
    async def main() -> float:
        bucket = TokenBucket(per_minute=6000, capacity=100)  # 100 per second
        await bucket.acquire(100)
        bucket.charge(30)  # the estimate missed 30 tokens
        start = time.monotonic()
        await bucket.acquire(20)
        return time.monotonic() - start

    assert asyncio.run(main()) >= 0.45  # 50 tokens of deficit at 100/s


def test_concurrency_limit_is_respected():
    limits = CallLimits(concurrency=3)
    in_flight = 0
    peak = 0

    async def call() -> int:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        return 1

    async def main() -> list[int]:
        return await asyncio.gather(*(limits.run(call) for _ in range(12)))

    assert sum(asyncio.run(main())) == 12
    assert peak == 3


def test_transient_errors_are_retried_then_succeed():
    limits = CallLimits(retry=RetryPolicy(max_attempts=4, base_s=0.01))
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls < 3:
            raise TransientError("server error (503)", status=503)
        return "ok"

    assert asyncio.run(limits.run(flaky)) == "ok"
    assert calls == 3
    assert limits.retries == 2


def test_permanent_errors_are_not_retried():
    limits = CallLimits(retry=RetryPolicy(max_attempts=4, base_s=0.01))
    calls = 0

    async def bad() -> str:
        nonlocal calls
        calls += 1
        raise LLMError("request rejected (400)", status=400)

    with pytest.raises(LLMError, match="400"):
        asyncio.run(limits.run(bad))
    assert calls == 1


def test_gives_up_after_max_attempts_with_last_reason():
    limits = CallLimits(retry=RetryPolicy(max_attempts=3, base_s=0.01))

    async def down() -> str:
        raise TransientError("cannot connect to http://x/v1")

    with pytest.raises(LLMError, match=r"after 3 attempts: cannot connect to http://x/v1") as ei:
        asyncio.run(limits.run(down, describe="chat"))
    assert ei.value.retryable


def test_retry_after_hint_is_honoured():
    limits = CallLimits(retry=RetryPolicy(max_attempts=2, base_s=0.001))
    calls = 0

    async def limited() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise TransientError("rate limited (429)", status=429, retry_after_s=0.4)
        return "ok"

    start = time.monotonic()
    assert asyncio.run(limits.run(limited)) == "ok"
    assert time.monotonic() - start >= 0.4


def test_parse_retry_after_forms():
    assert parse_retry_after({"retry-after-ms": "250"}) == pytest.approx(0.25)
    assert parse_retry_after({"retry-after": "3"}) == 3.0
    future = formatdate(time.time() + 30, usegmt=True)
    assert 25 < parse_retry_after({"retry-after": future}) <= 31
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


def test_scrub_removes_key_and_key_like_strings():
    key = "sk-proj-abcdefghijklmnop1234"
    text = f"bad key {key} and Incorrect API key provided: sk-proj-****************1234."
    clean = scrub(text, [key])
    assert key not in clean
    assert "1234" not in clean.replace("***", "")
    assert "bad key" in clean


# ---------------------------------------------------------------------------- mapping


def _echo_answer(tokens, tops, offsets):
    return {
        "choices": [
            {
                "text": "".join(tokens),
                "finish_reason": "length",
                "logprobs": {
                    "tokens": tokens,
                    "token_logprobs": [None] + [-1.0] * (len(tokens) - 1),
                    "top_logprobs": tops,
                    "text_offset": offsets,
                },
            }
        ]
    }


def test_shift_one_maps_entry_i_minus_1_to_token_i():
    # Raw llama.cpp-style answer for "a b c" + generated " d": entry i predicts token i+1.
    tokens = ["a", " b", " c", " d"]
    tops = [None, {" c": -0.1}, {" d": -0.2}, {" e": -0.3}]
    data = _echo_answer(tokens, tops, [0, 1, 3, 5])
    [c] = map_completion_choices(data, prompt="a b c", echo=True, shift=1)
    assert [t.token for t in c.prompt_tokens] == ["a", " b", " c"]
    assert c.prompt_tokens[2].top_logprobs == {" c": -0.1}
    assert c.prompt_tokens[2].logprob == -0.1
    assert c.tokens[0].token == " d" and c.tokens[0].top_logprobs == {" d": -0.2}
    [c0] = map_completion_choices(data, prompt="a b c", echo=True, shift=0)
    assert c0.prompt_tokens[2].top_logprobs == {" d": -0.2}


def test_detect_echo_shift_votes():
    toks = ["x", " y", " z"] * 4
    shifted = [None] + [{toks[i + 1]: -0.1, toks[i]: -9.0} for i in range(1, len(toks) - 1)]
    shifted.append({"?": -0.1})
    aligned = [None] + [{toks[i]: -0.1} for i in range(1, len(toks))]
    assert detect_echo_shift(toks, shifted, []) == 1
    assert detect_echo_shift(toks, aligned, []) == 0
    assert detect_echo_shift(toks, [None] * len(toks), []) is None


def test_prompt_token_texts_rebuilt_from_offsets_for_multibyte():
    # llama.cpp returns "" for pieces of a multi-byte character; offsets stay right.
    prompt = "a 日本"
    tokens = ["a", " ", "", "本"]
    data = _echo_answer(tokens, [None, {}, {}, {}], [0, 1, 2, 3])
    [c] = map_completion_choices(data, prompt=prompt, echo=True, shift=0)
    assert "".join(t.token for t in c.prompt_tokens) == prompt
    assert c.prompt_tokens[2].token == "日"


def test_env_is_not_needed_for_pricing(monkeypatch):
    monkeypatch.delenv("NEUROSCRIBE_PRICES", raising=False)
    assert load_prices()["gpt-4o-mini"] == Price(0.15, 0.60)
    assert os.environ.get("NEUROSCRIBE_PRICES") is None
