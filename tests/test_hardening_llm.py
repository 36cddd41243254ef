"""Hardening of the model client against hostile or broken input: keys, URLs with
credentials, Retry-After, answers of the wrong shape or size, usage, 401/403, options.

All in process: the real client over `httpx.MockTransport`, or `FakeLLM`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.explainer import clean_explanation
from neuroscribe.explainer.clean import MAX_EXPLANATION_CHARS
from neuroscribe.explainer.token_rows import ExplainerConfig, explain_excerpts
from neuroscribe.llm import make_llm, redact_url, unwrap
from neuroscribe.llm.base import MAX_RAW_CHARS, Completion
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.limits import RetryPolicy, TransientError
from neuroscribe.llm.secrets import scrub
from neuroscribe.schema import ActivationRecord
from neuroscribe.simulator.api import parse_activation_json
from neuroscribe.splits import Excerpt

URL = "http://mock.test/v1"
HI = [{"role": "user", "content": "hi"}]


def run(coro):
    return asyncio.run(coro)


def chat_answer(text: Any = "hello", *, usage: Any = None, **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, **extra}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1} if usage is None else usage,
    }


def always(status: int, body: Any, headers: dict[str, str] | None = None, seen=None):
    def handle(request: httpx.Request) -> httpx.Response:
        if seen is not None:
            seen.append(request)
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers or {})

    return handle


def llm_on(handler: Any, **kw: Any):
    kw.setdefault("retry", RetryPolicy(max_attempts=3, base_s=0.001, max_wait_s=0.01))
    kw.setdefault("base_url", URL)
    return make_llm("m", transport=httpx.MockTransport(handler), **kw)


# --------------------------------------------------------------------------- 2. keys


@pytest.mark.parametrize("bad", ["\n", "\r\n", "\x00", "\t", "\x1b"])
def test_key_with_control_characters_is_refused_without_printing_it(bad, monkeypatch):
    key = f"corp-KEY-0123456789{bad}"
    with pytest.raises(ConfigError, match="control character") as ei:
        llm_on(always(200, chat_answer()), api_key=key)
    assert "corp-KEY" not in str(ei.value) and "0123456789" not in str(ei.value)
    assert "--api-key" in str(ei.value)
    if bad == "\x00":
        return  # the environment cannot hold a NUL
    monkeypatch.setenv("OPENAI_API_KEY", key)
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY\) contains a control") as ei:
        llm_on(always(200, chat_answer()))
    assert "corp-KEY" not in str(ei.value)


def test_unshaped_key_is_scrubbed_by_value_also_in_escaped_form(caplog):
    key = "corp-KEY-0123456789\n"
    # What an HTTP library prints for an illegal header value:
    leaked = f"Illegal header value {('Bearer ' + key).encode()!r}"
    assert "corp-KEY" not in scrub(leaked, [key])
    assert "corp-KEY" not in scrub(f"sent {key!r}", [key])
    # A key of no known shape, in an error message and a log line (by value, registered).
    plain = "corp-KEY-0123456789"
    llm = llm_on(always(401, {"error": {"message": f"bad key {plain}"}}), api_key=plain)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("neuroscribe.test").warning("the key is %s", plain)
        with pytest.raises(LLMError) as ei:
            run(llm.chat(HI))
    assert plain not in str(ei.value) and plain not in caplog.text


# --------------------------------------------------------------------------- 3. URLs


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8080/v1", "http://127.0.0.1:8080/v1"),
        ("https://bob:hunter2@host/v1", "https://***@host/v1"),
        ("https://tok3n@host:8443/v1", "https://***@host:8443/v1"),
        ("http://h/v1?api_key=abc123", "http://h/v1?api_key=***"),
        (
            "http://h/v1?api-version=2024-01&key=k&token=t&access_token=a&sig=s&apiKey=z",
            "http://h/v1?api-version=2024-01&key=***&token=***&access_token=***&sig=***&apiKey=***",
        ),
        ("http://h/v1?monkey=1&model=x", "http://h/v1?monkey=1&model=x"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_credentials_in_the_base_url_are_used_but_never_shown(caplog):
    url = "http://bob:hunter2pass@mock.test/v1?api_key=qtoken123&api-version=2"
    secrets = ("hunter2pass", "qtoken123")
    seen: list[httpx.Request] = []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        return httpx.Response(500, json={"detail": f"upstream {request.url} failed"})

    llm = llm_on(handle, base_url=url)
    assert llm.base_url == "http://***@mock.test/v1?api_key=***&api-version=2"
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(LLMError) as ei:
            run(llm.chat(HI))
        probe = run(llm.probe())
        caps = run(llm.capabilities())
    # The requests carried them: basic auth from the userinfo, the query on every request.
    chat = seen[0]
    assert chat.headers["authorization"] == httpx.BasicAuth("bob", "hunter2pass")._auth_header
    assert chat.url.params["api_key"] == "qtoken123" and chat.url.params["api-version"] == "2"
    assert chat.url.host == "mock.test" and chat.url.path == "/v1/chat/completions"
    assert any(r.url.path == "/v1/models" and r.url.params.get("api_key") for r in seen)
    shown = [
        str(ei.value),
        repr(llm),
        repr(unwrap(llm)),
        json.dumps(probe),
        json.dumps(caps.model_dump(mode="json"), default=str),
        caplog.text,
    ]
    for text in shown:
        for secret in secrets:
            assert secret not in text
    assert probe["base_url"] == llm.base_url
    assert "mock.test/v1/chat/completions" in str(ei.value)


def test_a_stored_probe_with_credentials_is_redacted():
    stored = {"probe_version": 1, "base_url": "http://u:sekrit99@h/v1", "chat": True}
    llm = llm_on(always(200, chat_answer()), base_url="http://h/v1", probe=stored)
    assert "sekrit99" not in json.dumps(run(llm.probe()))


@pytest.mark.parametrize("url", ["127.0.0.1:8080/v1", "ftp://h/v1", "http://h:port/v1"])
def test_unusable_base_url_is_a_config_error(url):
    with pytest.raises(ConfigError, match="invalid base URL"):
        llm_on(always(200, chat_answer()), base_url=url)


# --------------------------------------------------------------------------- 4. Retry-After


def _state(hint: float | None, attempt: int = 1) -> Any:
    exc = TransientError("429", status=429, retry_after_s=hint)
    return SimpleNamespace(outcome=SimpleNamespace(exception=lambda: exc), attempt_number=attempt)


@pytest.mark.parametrize("hint", [3600.0, 60.0, 59.0, 58.5, math.inf])
def test_retry_after_wait_with_jitter_never_exceeds_max_wait(hint):
    policy = RetryPolicy(max_wait_s=60.0)
    waits = [policy.wait(_state(hint)) for _ in range(2000)]
    assert max(waits) <= 60.0
    assert min(waits) >= 54.0 if hint >= 60 else min(waits) >= hint


def test_a_retry_after_over_the_cap_is_warned_about_once_per_request(caplog):
    answers = [
        httpx.Response(429, json={"error": {"message": "slow"}}, headers={"Retry-After": "3600"}),
        httpx.Response(429, json={"error": {"message": "slow"}}, headers={"Retry-After": "3600"}),
        httpx.Response(200, json=chat_answer("ok")),
    ]
    llm = llm_on(lambda request: answers.pop(0))
    with caplog.at_level(logging.WARNING, logger="neuroscribe.llm.limits"):
        assert run(llm.chat(HI)).choices[0].text == "ok"
    warnings = [r for r in caplog.records if "asked to wait 3600 s" in r.getMessage()]
    assert len(warnings) == 1 and "max_wait_s" in warnings[0].getMessage()


# --------------------------------------------------------------------------- 10. shapes


WRONG_CHAT = {
    "choices a string": {"choices": "abc", "usage": {}},
    "choice a string": {"choices": ["abc"]},
    "message a list": {"choices": [{"message": ["x"]}]},
    "content an int": chat_answer(5),
    "usage a string": chat_answer("ok", usage="lots"),
    "usage negative": chat_answer("ok", usage={"prompt_tokens": -500, "completion_tokens": 1}),
    "usage fractional": chat_answer("ok", usage={"prompt_tokens": 2.5}),
    "usage absurd": chat_answer("ok", usage={"completion_tokens": 10**15}),
    "usage a bool": chat_answer("ok", usage={"prompt_tokens": True}),
    "logprobs a string": chat_answer("ok", logprobs="yes"),
    "logprobs content a string": chat_answer("ok", logprobs={"content": "abc"}),
    "top_logprobs of strings": chat_answer(
        "ok", logprobs={"content": [{"token": "o", "logprob": -1, "top_logprobs": ["o"]}]}
    ),
    "logprob +1000": chat_answer(
        "3",
        logprobs={
            "content": [
                {"token": "3", "logprob": -0.1, "top_logprobs": [{"token": "3", "logprob": 1000}]}
            ]
        },
    ),
    "logprob a string": chat_answer(
        "3", logprobs={"content": [{"token": "3", "logprob": "high", "top_logprobs": []}]}
    ),
    "token an int": chat_answer(
        "3", logprobs={"content": [{"token": 3, "logprob": -0.1, "top_logprobs": []}]}
    ),
}


@pytest.mark.parametrize("name", list(WRONG_CHAT))
def test_wrong_shape_chat_answers_are_retried_then_a_clear_error(name):
    seen: list[httpx.Request] = []
    llm = llm_on(always(200, WRONG_CHAT[name], seen=seen))
    with pytest.raises(LLMError, match="after 3 attempts: unexpected answer shape") as ei:
        run(llm.chat(HI, top_logprobs=2))
    assert len(seen) == 3  # retried like a truncated body
    assert "(body: {" in str(ei.value) and len(str(ei.value)) < 1200
    assert "AttributeError" not in str(ei.value) and "Overflow" not in str(ei.value)
    assert llm.usage.prompt_tokens >= 0  # nothing of the bad usage was booked


def _completion_body(token_logprob: str, top: str) -> bytes:
    # Raw JSON text: Python's json reads NaN / Infinity / 1e999, so servers can send them.
    return (
        '{"choices": [{"text": " a", "logprobs": {"tokens": [" a"], '
        f'"token_logprobs": [{token_logprob}], "top_logprobs": [{{" a": {top}}}], '
        '"text_offset": [0]}}], "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
    ).encode()


@pytest.mark.parametrize(
    ("lp", "top"),
    [("NaN", "-0.1"), ("-0.1", "NaN"), ("Infinity", "-1"), ("-0.1", "1e999"), ("-0.1", "0.5")],
)
def test_non_finite_or_positive_logprobs_are_unusable(lp, top):
    seen: list[httpx.Request] = []
    llm = llm_on(always(200, _completion_body(lp, top), seen=seen))
    with pytest.raises(LLMError, match="not a log-probability"):
        run(llm.complete("x", max_tokens=1, logprobs=1))
    assert len(seen) == 3


def test_a_float_error_above_zero_is_clamped_to_zero():
    llm = llm_on(always(200, _completion_body("1e-7", "2e-6")))
    [c] = run(llm.complete("x", max_tokens=1, logprobs=1)).choices
    assert c.tokens[0].logprob == 0.0 and c.tokens[0].top_logprobs == {" a": 0.0}


def test_usage_as_integral_floats_is_accepted():
    llm = llm_on(always(200, chat_answer("ok", usage={"prompt_tokens": 7.0})))
    assert run(llm.chat(HI)).usage.prompt_tokens == 7


def test_content_as_text_parts_is_joined():
    parts = [{"type": "text", "text": "cat"}, {"type": "text", "text": "s"}]
    assert run(llm_on(always(200, chat_answer(parts))).chat(HI)).choices[0].text == "cats"


# --------------------------------------------------------------------------- 13. size


def test_an_answer_over_max_response_bytes_is_refused_and_not_retried():
    seen: list[httpx.Request] = []
    llm = llm_on(always(200, chat_answer("x" * 5000), seen=seen), max_response_bytes=1000)
    with pytest.raises(LLMError, match=r"too large \(5,[0-9]{3} bytes.*1,000 bytes") as ei:
        run(llm.chat(HI))
    assert not ei.value.retryable and len(seen) == 1
    assert unwrap(make_llm("m", base_url=URL)).wire.max_response_bytes == 8 * 1024 * 1024


def test_a_streamed_answer_without_length_is_cut_off_at_the_cap():
    sent = []

    async def endless():
        for _ in range(10_000):  # 10 MB if read to the end
            sent.append(1)
            yield b"x" * 1000

    llm = llm_on(lambda r: httpx.Response(200, content=endless()), max_response_bytes=20_000)
    with pytest.raises(LLMError, match="too large") as ei:
        run(llm.chat(HI))
    assert not ei.value.retryable and len(sent) <= 25  # it stopped reading


def test_a_large_error_body_is_cut_not_refused():
    llm = llm_on(always(400, b"E" * 50_000), max_response_bytes=1000)
    with pytest.raises(LLMError, match=r"request rejected \(400\)") as ei:
        run(llm.chat(HI))
    assert len(str(ei.value)) < 600


def _train() -> list[Excerpt]:
    rec = ActivationRecord(tokens=["a", "cat"], activations=[0.0, 5.0])
    return [Excerpt("top:0", "top", "train", rec)]


@pytest.mark.slow
def test_runaway_explanations_are_not_usable_and_their_raw_text_is_cut():
    assert clean_explanation("w" * MAX_EXPLANATION_CHARS) is not None
    assert clean_explanation("w" * (MAX_EXPLANATION_CHARS + 1)) is None
    huge = "cats and dogs " * 100_000  # one line, one sentence, 1.4 MB
    # A Completion is returned as is: a server that ignores max_tokens.
    llm = FakeLLM("fake:runaway", answers=lambda messages, **p: Completion(text=huge))
    out = run(explain_excerpts(llm, _train(), ExplainerConfig(max_attempts=2)))
    assert out.texts == [] and len(out.failed) == 1
    [(_, raw)] = out.failed
    assert len(raw) <= MAX_RAW_CHARS and raw.startswith("cats and dogs") and "cut" in raw
    assert len(llm.calls) == 2  # asked again before giving up


def test_simulator_errors_carry_a_cut_raw_text():
    from neuroscribe.errors import OutputError

    with pytest.raises(OutputError) as ei:
        parse_activation_json("[" + "1, " * 100_000, 3, 10)
    assert len(ei.value.raw) <= MAX_RAW_CHARS


# --------------------------------------------------------------------------- extras


def test_401_and_403_are_fatal_other_errors_not():
    assert LLMError("x").fatal is False
    assert LLMError("x", status=401, fatal=True).fatal is True
    for status in (401, 403):
        with pytest.raises(LLMError) as ei:
            run(llm_on(always(status, {"error": {"message": "no"}})).chat(HI))
        assert ei.value.status == status and ei.value.fatal
    for status in (400, 404, 500):
        with pytest.raises(LLMError) as ei:
            run(llm_on(always(status, {"error": {"message": "no"}})).chat(HI))
        assert not ei.value.fatal


def test_403_on_chat_while_models_answers_is_fatal():
    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m"}]})
        return httpx.Response(403, json={"error": {"message": "model not allowed"}})

    llm = llm_on(handle)
    assert run(llm.check_model()) == ["m"]
    with pytest.raises(LLMError, match=r"permission denied \(403\)") as ei:
        run(llm.chat(HI))
    assert ei.value.fatal


@pytest.mark.parametrize(
    "options",
    [
        {"timeout_s": 0},
        {"timeout_s": -1},
        {"timeout_s": math.nan},
        {"concurrency": 0},
        {"concurrency": 2.5},
        {"max_attempts": 0},
        {"max_response_bytes": 0},
        {"rpm": 0},
        {"rpm": -5},
        {"tpm": math.nan},
        {"tpm": math.inf},
        {"retry": None, "max_attempts": -1},
    ],
)
def test_bad_numeric_options_are_config_errors(options):
    with pytest.raises(ConfigError):
        llm_on(always(200, chat_answer()), **options)


@pytest.mark.parametrize("policy", [{"max_attempts": 0}, {"base_s": -1}, {"max_wait_s": math.nan}])
def test_bad_retry_policy_is_a_config_error(policy):
    with pytest.raises(ConfigError):
        RetryPolicy(**policy)


def test_fake_backend_keeps_working_with_validated_layers():
    llm = make_llm("fake:ok", answers=lambda m, **p: "fine", rpm=600, capabilities=Capabilities())
    assert run(llm.chat(HI)).choices[0].text == "fine"
