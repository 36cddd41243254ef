"""Batched generation from a cached prefix on the local backend: same answers as one call
at a time with the whole prompt, fewer passes."""

from __future__ import annotations

import asyncio

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from neuroscribe.embedded import embedded_model_dir
from neuroscribe.llm.local import LocalLLM, LocalModel, chat_prompt_ids
from neuroscribe.llm.local_batch import (
    MIN_PREFIX,
    batcher_for,
    declared_prefix,
    prompt_states,
)
from neuroscribe.prompts import PromptTooLong

FEW_SHOT = [
    {"role": "system", "content": "You explain neurons. " * 12},
    {"role": "user", "content": "Neuron 1\nthe\t0\ncat\t9\nsat\t0"},
    {"role": "assistant", "content": "Explanation of neuron 1: animals."},
]


def chat(k: int) -> list[dict[str, str]]:
    rows = "\n".join(f"word{k}{j}\t{(j * k) % 10}" for j in range(3 + 2 * k))
    return [*FEW_SHOT, {"role": "user", "content": f"Neuron {k + 2}\n{rows}"}]


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


def tiny_model(tokenizer) -> LocalModel:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        initializer_range=0.3,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LocalModel("tiny", LlamaForCausalLM(config).eval(), tokenizer, "cpu")


def answer_all(llm: LocalLLM, chats, **kw):
    async def go():
        return await asyncio.gather(*(llm.chat(c, **kw) for c in chats))

    return asyncio.run(go())


@pytest.mark.slow
def test_batched_prefix_cached_answers_match_one_at_a_time(tokenizer):
    tiny = tiny_model(tokenizer)
    plain = LocalLLM("hf:tiny", loaded=tiny, max_batch=1, prefix_cache=False)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)
    chats = [chat(k) for k in range(6)]
    kw = {"temperature": 0, "max_tokens": 12, "top_logprobs": 3}
    slow = answer_all(plain, chats, **kw)
    quick = answer_all(fast, chats, **kw)
    for a, b in zip(slow, quick, strict=True):
        ca, cb = a.choices[0], b.choices[0]
        assert cb.text == ca.text
        assert cb.finish_reason == ca.finish_reason
        assert a.usage.completion_tokens == b.usage.completion_tokens
        assert b.usage.prompt_tokens == a.usage.prompt_tokens  # the whole prompt is counted
        assert [t.token for t in cb.tokens] == [t.token for t in ca.tokens]
        for x, y in zip(ca.tokens, cb.tokens, strict=True):
            assert y.logprob == pytest.approx(x.logprob, abs=1e-4)
            assert y.top_logprobs.keys() == x.top_logprobs.keys()


def test_concurrent_calls_share_one_batch_and_the_prefix_is_computed_once(tokenizer):
    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=4)
    chats = [chat(k) for k in range(6)]

    async def go():
        first = await asyncio.gather(*(fast.chat(c, temperature=0, max_tokens=4) for c in chats))
        again = await asyncio.gather(*(fast.chat(c, temperature=0, max_tokens=4) for c in chats))
        return first, again, batcher_for(tiny, 4).batches

    first, again, batches = asyncio.run(go())
    assert [r.choices[0].text for r in first] == [r.choices[0].text for r in again]
    # Twelve calls in batches of at most four: far fewer generate calls than calls.
    assert sum(batches) == 12 and max(batches) == 4 and len(batches) <= 6
    assert prompt_states(tiny).prefixes_computed == 1


def test_sampling_rows_and_different_settings_batch_apart(tokenizer):
    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)

    async def go():
        return await asyncio.gather(
            fast.chat(chat(0), n=3, temperature=1.0, max_tokens=5),
            fast.chat(chat(1), n=2, temperature=1.0, max_tokens=5),
            fast.chat(chat(2), temperature=0, max_tokens=5),
            fast.complete("no prefix here", temperature=0, max_tokens=5),
        )

    sampled3, sampled2, greedy, completion = asyncio.run(go())
    assert len(sampled3.choices) == 3 and len(sampled2.choices) == 2
    assert all(c.text is not None for c in sampled3.choices + sampled2.choices)
    alone = asyncio.run(
        LocalLLM("hf:tiny", loaded=tiny, max_batch=1, prefix_cache=False).chat(
            chat(2), temperature=0, max_tokens=5
        )
    )
    assert greedy.choices[0].text == alone.choices[0].text
    assert completion.usage.prompt_tokens == len(tokenizer("no prefix here")["input_ids"])


def test_a_request_that_cannot_run_fails_alone(tokenizer):
    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)
    too_long = [*FEW_SHOT, {"role": "user", "content": "word " * 600}]

    async def go():
        return await asyncio.gather(
            fast.chat(chat(0), temperature=0, max_tokens=4),
            fast.chat(too_long, temperature=0, max_tokens=4),
            fast.chat(chat(1), temperature=0, max_tokens=4),
            return_exceptions=True,
        )

    ok0, failed, ok1 = asyncio.run(go())
    assert isinstance(failed, PromptTooLong)
    assert ok0.choices[0].text is not None and ok1.choices[0].text is not None


def test_the_declared_prefix_stops_short_of_the_prompt(tokenizer):
    ids = chat_prompt_ids(tokenizer, chat(3))
    head = chat_prompt_ids(tokenizer, FEW_SHOT)  # with a generation prompt: diverges later
    n = declared_prefix(tokenizer, head, ids)
    assert MIN_PREFIX <= n < len(head)
    assert ids[:n] == head[:n]
    # A prefix as long as the prompt still leaves one token to start generating from.
    assert declared_prefix(tokenizer, ids, ids) == len(ids) - 1


def test_a_one_token_prompt_is_answered(tokenizer):
    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)
    plain = LocalLLM("hf:tiny", loaded=tiny, max_batch=1, prefix_cache=False)
    got = asyncio.run(fast.complete("a", temperature=0, max_tokens=4))
    want = asyncio.run(plain.complete("a", temperature=0, max_tokens=4))
    assert got.choices[0].text == want.choices[0].text


def test_a_prompt_asked_again_reuses_its_state_and_answers_the_same(tokenizer):
    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)
    first = asyncio.run(fast.chat(chat(4), temperature=0, max_tokens=6))
    again = asyncio.run(fast.chat(chat(4), temperature=0, max_tokens=6))
    assert again.choices[0].text == first.choices[0].text
    assert prompt_states(tiny).hits == 1


def test_kept_prompt_states_stay_within_their_byte_budget(tokenizer):
    from neuroscribe.llm.local_batch import PromptStates

    tiny = tiny_model(tokenizer)
    fast = LocalLLM("hf:tiny", loaded=tiny, max_batch=8)
    asyncio.run(fast.chat(chat(0), temperature=0, max_tokens=2))
    one = prompt_states(tiny)._used
    assert one > 0
    tiny.memo["prompt-states"] = PromptStates(budget_bytes=int(2.5 * one))
    for k in range(6):
        asyncio.run(fast.chat(chat(0 if k % 2 else 1), temperature=0, max_tokens=2))
    states = prompt_states(tiny)
    assert states._used <= int(2.5 * one) and len(states._states) <= 3
    assert states.hits >= 4  # the two prompts in turn stay kept
