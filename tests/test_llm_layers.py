"""Cache, rate limits and usage/prices are layers: the same for every backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from neuroscribe.errors import ConfigError
from neuroscribe.llm import Completion, discard_cached, layers, make_llm, text_part, unwrap, wrap
from neuroscribe.llm.cache import CachedLLM, ResponseCache
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.limits import RateLimitedLLM, TokenBucket
from neuroscribe.llm.messages import image_part, to_wire
from neuroscribe.llm.pricing import Price, UsageLLM

ASK = [{"role": "user", "content": "Say a number."}]


def run(coro):
    return asyncio.run(coro)


def counting_answers():
    counter = {"n": 0}

    def answers(request, **params):
        counter["n"] += 1
        return f"answer {counter['n']}"

    return answers


def test_make_llm_stacks_the_same_layers_on_any_backend(tmp_path):
    llm = make_llm("fake:a", cache=tmp_path / "c.sqlite", rpm=600)
    assert [type(x) for x in layers(llm)] == [UsageLLM, CachedLLM, RateLimitedLLM, FakeLLM]
    assert isinstance(unwrap(llm), FakeLLM)
    assert llm.spec == "fake:a"
    assert llm.calls == []  # attributes of the backend read through the layers
    assert [type(x) for x in layers(make_llm("fake:b"))] == [UsageLLM, FakeLLM]
    with pytest.raises(ConfigError, match="cache must be"):
        make_llm("fake:c", cache=42)


def test_fake_backend_gets_cache_hits_and_discard_works(tmp_path):
    llm = make_llm("fake:cached", answers=counting_answers(), cache=tmp_path / "c.sqlite")
    first = run(llm.chat(ASK, temperature=0, max_tokens=5))
    second = run(llm.chat(ASK, temperature=0, max_tokens=5))
    assert first.choices[0].text == second.choices[0].text == "answer 1"
    assert len(unwrap(llm).calls) == 1
    assert second.usage.cached_requests == 1 and second.usage.requests == 0
    assert second.usage.cost_usd == 0.0
    assert llm.usage.requests == 1 and llm.usage.cached_requests == 1
    # A different parameter is a different request; a part list is the same as a string.
    run(llm.chat(ASK, temperature=0, max_tokens=6))
    parts = [{"role": "user", "content": [text_part("Say a "), text_part("number.")]}]
    assert run(llm.chat(parts, temperature=0, max_tokens=5)).usage.cached_requests == 1
    assert len(unwrap(llm).calls) == 2
    # An unusable answer is dropped before the retry, so the retry asks the backend.
    discard_cached(llm, second)
    third = run(llm.chat(ASK, temperature=0, max_tokens=5))
    assert third.choices[0].text == "answer 3" and third.usage.requests == 1
    # A new process (a new cache object on the same file) still hits.
    again = make_llm("fake:cached", answers=counting_answers(), cache=tmp_path / "c.sqlite")
    assert run(again.chat(ASK, temperature=0, max_tokens=5)).choices[0].text == "answer 3"
    assert unwrap(again).calls == []


def test_cached_logprobs_survive_the_roundtrip(tmp_path):
    from neuroscribe.llm.capabilities import Capabilities

    caps = Capabilities(completions=True, prompt_logprobs=True)
    llm = make_llm("fake:lp", capabilities=caps, cache=ResponseCache(tmp_path / "c.sqlite"))
    a = run(llm.complete("one two", max_tokens=1, logprobs=3, echo=True))
    b = run(llm.complete("one two", max_tokens=1, logprobs=3, echo=True))
    assert b.usage.cached_requests == 1
    assert b.choices == a.choices and b.choices[0].prompt_tokens[2].token == "two"


def test_local_backend_gets_cache_hits(tmp_path):
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.llm.local import LocalLLM, LocalModel

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=256,
    )
    loaded = LocalModel("tiny", LlamaForCausalLM(config).eval(), tok, "cpu")
    llm = make_llm("hf:tiny", loaded=loaded, cache=tmp_path / "c.sqlite")
    assert isinstance(unwrap(llm), LocalLLM)
    first = run(llm.complete("The cat", temperature=0, max_tokens=4, logprobs=2, echo=True))
    second = run(llm.complete("The cat", temperature=0, max_tokens=4, logprobs=2, echo=True))
    assert second.usage.cached_requests == 1 and first.usage.requests == 1
    assert second.choices[0].text == first.choices[0].text
    assert second.choices[0].prompt_tokens == first.choices[0].prompt_tokens
    assert first.usage.cost_usd is None  # in-process models are not priced


def test_prices_apply_to_api_like_backends_and_served_model_names():
    table = {"fake:p": Price(input=1.0, output=2.0), "served-name": Price(10.0, 10.0)}
    llm = wrap(FakeLLM("fake:p"), prices=table)
    resp = run(llm.chat(ASK, max_tokens=5))
    u = resp.usage
    assert u.cost_usd == pytest.approx((u.prompt_tokens * 1.0 + u.completion_tokens * 2.0) / 1e6)
    assert llm.usage.cost_usd == u.cost_usd
    unknown = wrap(FakeLLM("fake:unknown"), prices=table)
    assert run(unknown.chat(ASK)).usage.cost_usd is None  # unknown, not free
    # make_llm does not price in-process backends at all
    assert run(make_llm("fake:p", prices=table).chat(ASK)).usage.cost_usd is None


def test_rate_limit_layer_spaces_calls_for_any_backend():
    llm = RateLimitedLLM(FakeLLM(), rpm=600)
    llm.rpm = TokenBucket(600, capacity=1)  # 10 per second, no burst

    async def three():
        for _ in range(3):
            await llm.chat(ASK)

    start = time.monotonic()
    run(three())
    assert time.monotonic() - start >= 0.18
    assert len(unwrap(llm).calls) == 3


def test_tokens_per_minute_charges_what_the_estimate_missed():
    long = Completion(text="word " * 50)  # a Completion is used as is, not cut at max_tokens
    llm = RateLimitedLLM(FakeLLM(answers=lambda r, **kw: long), tpm=6000)
    run(llm.chat(ASK, max_tokens=1))  # estimated ~10 tokens, spent ~110
    assert llm.tpm._level < 6000 - 90


def test_messages_with_parts_are_sent_as_the_same_text():
    assert to_wire([{"role": "user", "content": [text_part("a"), text_part("b")]}]) == [
        {"role": "user", "content": "ab"}
    ]
    with_image = [
        {"role": "user", "content": [text_part("see"), image_part("data:image/png;base64,xx")]}
    ]
    assert to_wire(with_image)[0]["content"][1]["type"] == "image_url"
    with pytest.raises(ConfigError, match="role"):
        to_wire([{"role": "robot", "content": "x"}])
    with pytest.raises(ConfigError, match="content part"):
        to_wire([{"role": "user", "content": [{"type": "audio"}]}])
    with pytest.raises(ConfigError, match="image_input=False"):
        run(FakeLLM().chat(with_image))


def test_local_backend_joins_text_parts_and_refuses_images():
    from transformers import AutoTokenizer

    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.llm.local import chat_prompt_ids

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    plain = chat_prompt_ids(tok, [{"role": "user", "content": "Hello there"}])
    split = chat_prompt_ids(
        tok, [{"role": "user", "content": [text_part("Hello"), text_part(" there")]}]
    )
    assert plain == split
    with pytest.raises(ConfigError, match="image_input=False"):
        chat_prompt_ids(tok, [{"role": "user", "content": [image_part("https://x/y.png")]}])
