"""The real OpenAI-compatible client over `httpx.MockTransport`: retries, errors, mapping.

No server: the transport answers in process, so each test runs the real request,
retry, error and mapping code in milliseconds.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from neuroscribe.errors import LLMError
from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.fake import tokenize
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.openai import OpenAIClient
from neuroscribe.llm.openai.probe import PROBE_PROMPT

URL = "http://mock.test/v1"
HI = [{"role": "user", "content": "hi"}]


def run(coro):
    return asyncio.run(coro)


def chat_answer(text: str = "hello", **extra: Any) -> dict[str, Any]:
    return {
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, **extra}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1},
    }


class Script:
    """A MockTransport handler answering from a list of (status, body, headers)."""

    def __init__(self, *answers: tuple[int, Any, dict[str, str]] | Callable[..., Any]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if callable(answer):
            return answer(request)
        status, body, headers = answer
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return httpx.Response(status, content=content, headers=headers)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests if r.content]


def llm_on(handler: Any, **kw: Any):
    kw.setdefault("retry", RetryPolicy(max_attempts=3, base_s=0.001, max_wait_s=1))
    return make_llm("m", base_url=URL, transport=httpx.MockTransport(handler), **kw)


def test_429_with_retry_after_then_success():
    script = Script(
        (429, {"error": {"message": "slow down"}}, {"Retry-After": "0.2"}),
        (200, chat_answer("ok"), {}),
    )
    llm = llm_on(script)
    start = time.monotonic()
    resp = run(llm.chat(HI, max_tokens=3))
    assert time.monotonic() - start >= 0.2  # the server's hint, not the tiny backoff
    assert resp.choices[0].text == "ok"
    assert llm.limits.attempts == 2 and llm.limits.retries == 1
    assert resp.usage.requests == 1 and llm.usage.requests == 1


def test_500_then_success_and_body_sent():
    script = Script((500, {"detail": "boom"}, {}), (200, chat_answer("fine"), {}))
    llm = llm_on(script)
    resp = run(llm.chat(HI, max_tokens=3, temperature=0.0, stop=["\n"]))
    assert resp.choices[0].text == "fine"
    first, second = script.bodies()
    assert first == second
    assert first == {
        "model": "m",
        "messages": HI,
        "n": 1,
        "temperature": 0.0,
        "max_tokens": 3,
        "stop": ["\n"],
    }
    assert script.requests[0].url == httpx.URL(f"{URL}/chat/completions")


def test_malformed_json_body_is_retried_then_a_clear_error():
    script = Script((200, b'{"choices": [{"mess', {}))
    llm = llm_on(script)
    with pytest.raises(
        LLMError,
        match=r"after 3 attempts: truncated or invalid JSON from http://mock\.test/v1/chat/completions",
    ) as ei:
        run(llm.chat(HI))
    assert ei.value.retryable
    assert len(script.requests) == 3


def test_wrong_shape_and_client_errors():
    shape = Script((200, {"choices": [{"message": None, "logprobs": {"content": [{}]}}]}, {}))
    with pytest.raises(LLMError, match="unexpected answer shape"):
        run(llm_on(shape).chat(HI, top_logprobs=2))
    bad = Script((400, {"error": {"message": "max_tokens too large"}}, {}))
    with pytest.raises(LLMError, match=r"request rejected \(400\).*max_tokens too large") as ei:
        run(llm_on(bad).chat(HI))
    assert not ei.value.retryable and len(bad.requests) == 1  # never retried


def test_401_never_shows_the_key():
    key = "custom-shaped-SECRET-0123456789"

    def echo_key(request: httpx.Request) -> httpx.Response:
        # A server that quotes the key it was sent in its error message.
        sent = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(401, json={"error": {"message": f"bad key {sent}"}})

    llm = llm_on(Script(echo_key), api_key=key)
    with pytest.raises(LLMError, match=r"authentication failed \(401\)") as ei:
        run(llm.chat(HI))
    assert key not in str(ei.value) and "SECRET" not in str(ei.value)
    assert key not in repr(llm)


def test_chat_top_logprobs_mapping():
    content = [
        {
            "token": "3",
            "logprob": -0.1,
            "top_logprobs": [{"token": "3", "logprob": -0.1}, {"token": "4", "logprob": -2.4}],
        },
        {"token": "\n", "logprob": -0.5, "top_logprobs": [{"token": "\n", "logprob": -0.5}]},
    ]
    script = Script(
        (200, chat_answer("3\n", logprobs={"content": content}, finish_reason="stop"), {})
    )
    resp = run(llm_on(script).chat(HI, top_logprobs=2))
    [c] = resp.choices
    assert c.finish_reason == "stop" and c.text == "3\n"
    assert [t.token for t in c.tokens] == ["3", "\n"]
    assert c.tokens[0].logprob == -0.1
    assert c.tokens[0].top_logprobs == {"3": -0.1, "4": -2.4}
    assert script.bodies()[0]["logprobs"] is True and script.bodies()[0]["top_logprobs"] == 2


def shifted_server(calls: list[str]) -> Callable[[httpx.Request], httpx.Response]:
    """A llama.cpp-like server whose echo entries are off by one (entry i predicts i+1)."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(path)
        if path.endswith("/models"):
            return httpx.Response(
                200,
                json={
                    "object": "list",
                    "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "me"}],
                },
            )
        body = json.loads(request.content)
        if path.endswith("/chat/completions"):
            return httpx.Response(200, json=chat_answer("7"))
        prompt = body["prompt"]
        toks = [*tokenize(prompt), "!"]  # the prompt, then one generated token
        offsets = [sum(len(t) for t in toks[:i]) for i in range(len(toks))]
        tops = [{toks[i + 1]: -0.01, "zz": -5.0} for i in range(len(toks) - 1)] + [{"?": -0.1}]
        logprobs = {
            "tokens": toks,
            "token_logprobs": [-0.01] * len(toks),
            "top_logprobs": tops,
            "text_offset": offsets,
        }
        return httpx.Response(
            200,
            json={
                "model": "m",
                "choices": [
                    {
                        "text": prompt + "!",
                        "finish_reason": "length",
                        "logprobs": logprobs if body.get("logprobs") else None,
                    }
                ],
                "usage": {"prompt_tokens": len(toks) - 1, "completion_tokens": 1},
            },
        )

    return handle


def test_echo_prompt_logprobs_are_shifted_back_after_the_probe():
    calls: list[str] = []
    llm = llm_on(shifted_server(calls))
    prompt = "one two three"
    resp = run(llm.complete(prompt, max_tokens=1, logprobs=2, echo=True, temperature=0))
    # The first echo request probes the endpoint once (its echo prompt is the probe's).
    assert run(llm.echo_shift()) == 1
    assert llm.probe_result["echo_shift"] == 1 and llm.probe_result["echo_tokens"] == [
        *tokenize(PROBE_PROMPT),
        "!",
    ]
    [c] = resp.choices
    assert [t.token for t in c.prompt_tokens] == tokenize(prompt)
    # Raw entry i-1 (which predicts token i) is now the entry of token i.
    for t in c.prompt_tokens[1:]:
        assert max(t.top_logprobs, key=t.top_logprobs.get) == t.token
        assert t.logprob == -0.01
    assert c.prompt_tokens[0].top_logprobs == {}
    assert c.tokens[0].token == "!"
    n_probe = len(calls)
    run(llm.complete(prompt, max_tokens=1, logprobs=2, echo=True))
    assert len(calls) == n_probe + 1  # probed once per client
    caps = run(llm.capabilities())
    assert caps.prompt_logprobs and caps.echo_shift == 1 and caps.chat


def test_transport_serves_the_model_list_too():
    calls: list[str] = []
    llm = llm_on(shifted_server(calls))
    assert run(llm.check_model()) == ["m"]
    other = make_llm("nope", base_url=URL, transport=httpx.MockTransport(shifted_server(calls)))
    with pytest.raises(LLMError, match="'nope' is not served"):
        run(other.check_model(require_reachable=True))
    assert isinstance(unwrap(llm), OpenAIClient)
