"""The OpenAI-compatible client against a real llama.cpp server (SmolLM2-135M)."""

from __future__ import annotations

import asyncio
import logging

import pytest

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.base import LLM
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.openai import OpenAIClient, ProbeCache
from neuroscribe.llm.openai_api import OpenAICompatibleLLM
from neuroscribe.llm.pricing import Price
from servers import free_port

pytestmark = pytest.mark.slow

REPEATED = "The cat sat. The cat sat. The cat sat."


def run(coro):
    return asyncio.run(coro)


def client(server, **kw):
    kw.setdefault("timeout_s", 120)
    return make_llm(server.model, base_url=server.base_url, **kw)  # type: ignore[return-value]


def test_make_llm_picks_the_backend_and_reads_env(llama_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", llama_server.base_url)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    llm = make_llm("smollm2")
    assert isinstance(unwrap(llm), OpenAIClient) and isinstance(llm, LLM)
    assert llm.base_url == llama_server.base_url
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        make_llm("gpt-4o-mini")  # OpenAI itself needs a key


def test_chat_answers_with_usage_and_cost(llama_server):
    llm = client(llama_server, prices={"smollm2": Price(input=1.0, output=2.0)})
    resp = run(llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=5, temperature=0))
    [c] = resp.choices
    assert c.text.strip()
    assert c.finish_reason in ("length", "stop")
    u = resp.usage
    assert u.requests == 1 and u.cached_requests == 0
    assert u.prompt_tokens > 5 and 1 <= u.completion_tokens <= 5
    assert u.cost_usd == pytest.approx((u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6)
    assert llm.usage.requests == 1


def test_unknown_price_gives_none_cost(llama_server):
    resp = run(client(llama_server).chat([{"role": "user", "content": "Hi"}], max_tokens=2))
    assert resp.usage.cost_usd is None


def test_chat_top_logprobs(llama_server):
    resp = run(
        client(llama_server).chat(
            [{"role": "user", "content": "Count: 1, 2, 3,"}],
            max_tokens=4,
            temperature=0,
            top_logprobs=3,
        )
    )
    tokens = resp.choices[0].tokens
    assert tokens and len(tokens) == resp.usage.completion_tokens
    for t in tokens:
        assert 1 <= len(t.top_logprobs) <= 3
        assert t.logprob is not None and t.logprob <= 0
        # greedy decoding: the chosen token is the most likely one
        assert max(t.top_logprobs.values()) == pytest.approx(t.logprob)
    assert "".join(t.token for t in tokens) == resp.choices[0].text


def test_json_mode_returns_json(llama_server):
    import json

    resp = run(
        client(llama_server).chat(
            [{"role": "user", "content": 'Return {"n": 3} as JSON.'}],
            max_tokens=16,
            temperature=0,
            response_format={"type": "json_object"},
        )
    )
    text = resp.choices[0].text.strip()
    assert text.startswith("{")
    if resp.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)


def test_echo_prompt_logprobs_are_aligned_after_correction(llama_server):
    llm = client(llama_server)
    resp = run(llm.complete(REPEATED, max_tokens=1, logprobs=3, echo=True, temperature=0))
    assert run(llm.echo_shift()) == 1  # measured on llama.cpp + SmolLM2 (no BOS)
    [c] = resp.choices
    toks = c.prompt_tokens
    assert "".join(t.token for t in toks) == REPEATED
    third = range(len(toks) * 2 // 3, len(toks))  # the third copy is fully predictable
    for i in third:
        top = max(toks[i].top_logprobs.items(), key=lambda kv: kv[1])[0]
        assert top == toks[i].token, (i, toks[i])
        assert toks[i].logprob == pytest.approx(toks[i].top_logprobs[toks[i].token])
    # Without the correction the same answer is off by one: the argmax is the next token.
    raw = client(llama_server, echo_shift=0)
    [r] = run(raw.complete(REPEATED, max_tokens=1, logprobs=3, echo=True, temperature=0)).choices
    hits = sum(
        max(r.prompt_tokens[i].top_logprobs.items(), key=lambda kv: kv[1])[0]
        == r.prompt_tokens[i].token
        for i in third
    )
    assert hits == 0


def test_echo_with_max_tokens_zero_returns_only_the_prompt(llama_server):
    resp = run(
        client(llama_server).complete(
            "One two three.", max_tokens=0, logprobs=1, echo=True, temperature=0
        )
    )
    [c] = resp.choices
    assert c.text == "One two three."
    assert c.tokens == []
    assert "".join(t.token for t in c.prompt_tokens) == "One two three."
    assert resp.usage.completion_tokens == 1  # sent as 1, never 0


def test_non_ascii_prompt_tokens_concatenate_to_the_prompt(llama_server):
    prompt = "Café naïve 日本語 x"
    resp = run(
        client(llama_server).complete(prompt, max_tokens=1, logprobs=1, echo=True, temperature=0)
    )
    toks = resp.choices[0].prompt_tokens
    assert "".join(t.token for t in toks) == prompt
    assert len(toks) == resp.usage.prompt_tokens


def test_completion_logprobs_without_echo(llama_server):
    resp = run(
        client(llama_server).complete("1, 2, 3, 4,", max_tokens=3, logprobs=2, temperature=0)
    )
    [c] = resp.choices
    assert c.prompt_tokens is None
    assert "".join(t.token for t in c.tokens) == c.text
    assert all(t.logprob == pytest.approx(max(t.top_logprobs.values())) for t in c.tokens)


def test_probe_reports_capabilities_once(llama_server):
    shared = ProbeCache()
    llm = client(llama_server, probes=shared)
    result = run(llm.probe())
    assert result["model_listed"] is True and result["served_models"] == ["smollm2"]
    assert result["completions"] and result["echo_logprobs"]
    assert result["echo_shift"] == 1
    assert result["ten_single_token"] is False  # SmolLM2 splits "10" into "1", "0"
    assert result["chat"] and result["chat_logprobs"] and result["json_mode"]
    assert result["prompt_logprobs"] is False
    # llama.cpp takes a schema only inside json_object, not OpenAI's json_schema type.
    assert result["json_schema"] is False
    assert set(result["errors"]) == {"json_schema", "image_input"}
    assert result["image_input"] is False  # a text model: llama.cpp refuses the picture
    # cached per base_url + model: a client sharing the cache asks nothing
    other = client(llama_server, probes=shared)
    assert run(other.probe()) is result
    assert other.usage.requests == 0 and other.limits.attempts == 0
    caps = run(other.capabilities())
    assert caps.prompt_logprobs and caps.chat_top_logprobs and caps.echo_shift == 1
    assert caps.ten_single_token is False and caps.scale_max == 9
    # a stored result (e.g. from the manifest) can be passed in
    seeded = OpenAICompatibleLLM("other-name", base_url=llama_server.base_url, probe=result)
    assert seeded.probe_result["echo_shift"] == 1


def test_wrong_model_name_is_reported(llama_server):
    llm = client(llama_server)
    llm_bad = OpenAICompatibleLLM("gpt-nonexistent", base_url=llama_server.base_url)
    assert run(llm.check_model()) == ["smollm2"]
    with pytest.raises(LLMError, match=r"'gpt-nonexistent' is not served at http://127\.0\.0\.1"):
        run(llm_bad.check_model())


def test_wrong_endpoint_404_names_model_and_url(llama_server):
    llm = OpenAICompatibleLLM(
        "smollm2", base_url=llama_server.root_url, retry=RetryPolicy(max_attempts=2)
    )  # forgot /v1
    with pytest.raises(LLMError, match="404") as ei:
        run(llm.chat([{"role": "user", "content": "hi"}], max_tokens=1))
    msg = str(ei.value)
    assert "'smollm2'" in msg and llama_server.root_url in msg and "/v1" in msg
    assert ei.value.status == 404


def test_unreachable_server_names_the_url():
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = OpenAICompatibleLLM(
        "smollm2", base_url=url, timeout_s=5, retry=RetryPolicy(max_attempts=2, base_s=0.01)
    )
    with pytest.raises(LLMError, match="cannot connect to") as ei:
        run(llm.chat([{"role": "user", "content": "hi"}], max_tokens=1))
    assert url in str(ei.value)
    assert "after 2 attempts" in str(ei.value)


def test_401_is_clear_and_never_leaks_the_key(llama_server_with_key, caplog):
    caplog.set_level(logging.DEBUG)
    leaky = "sk-LEAKCHECK-9d8c7b6a5f4e3d2c1b0a"
    llm = OpenAICompatibleLLM(
        llama_server_with_key.model, base_url=llama_server_with_key.base_url, api_key=leaky
    )
    with pytest.raises(LLMError) as ei:
        run(llm.chat([{"role": "user", "content": "hi"}], max_tokens=1))
    msg = str(ei.value)
    assert "authentication failed (401)" in msg
    assert ei.value.status == 401
    assert llama_server_with_key.base_url in msg
    assert "LEAKCHECK" not in msg and leaky not in repr(llm)
    assert "LEAKCHECK" not in caplog.text
    with pytest.raises(LLMError, match="401"):
        run(llm.probe(refresh=True))
    assert "LEAKCHECK" not in caplog.text
    # the right key works
    good = OpenAICompatibleLLM(
        llama_server_with_key.model,
        base_url=llama_server_with_key.base_url,
        api_key=llama_server_with_key.api_key,
    )
    assert run(good.chat([{"role": "user", "content": "hi"}], max_tokens=1)).choices


def test_bad_request_is_not_retried(llama_server):
    llm = client(llama_server, retry=RetryPolicy(max_attempts=5, base_s=0.01))
    with pytest.raises(LLMError, match=r"request rejected \(400\).*context") as ei:
        run(llm.complete("hello " * 2500, max_tokens=1))  # more tokens than n_ctx=2048
    assert ei.value.retryable is False
    assert llm.limits.attempts == 1


def test_one_client_survives_several_event_loops(llama_server):
    llm = client(llama_server)
    for _ in range(2):
        resp = run(llm.chat([{"role": "user", "content": "hi"}], max_tokens=1, temperature=0))
        assert resp.choices[0].text is not None
