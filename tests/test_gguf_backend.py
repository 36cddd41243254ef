"""The gguf: backend: the embedded SmolLM2 GGUF through llama.cpp, no conversion."""

from __future__ import annotations

import asyncio

import pytest

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.gguf import GGUFLLM, gguf_file, load_gguf
from neuroscribe.llm.registry import backend_info
from neuroscribe.prompts import PromptTooLong
from neuroscribe.simulator import choose_strategy

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant. Answer in a few words."},
    {"role": "user", "content": "Name a colour."},
]


@pytest.fixture(scope="module")
def llm() -> GGUFLLM:
    return GGUFLLM("gguf:embedded")


def test_the_embedded_file_runs_without_conversion(llm):
    assert gguf_file("gguf:embedded").suffix == ".gguf"
    assert backend_info("gguf:embedded").local
    assert isinstance(unwrap(make_llm("gguf:embedded")), GGUFLLM)
    caps = asyncio.run(llm.capabilities())
    assert caps.chat and caps.completions and caps.context_length == 8192
    # No logprobs and no in-process logits: a simulator on it uses the JSON strategy.
    assert not caps.prompt_logprobs and not caps.exact_logits and not caps.chat_top_logprobs
    assert choose_strategy(caps) == "json"
    assert caps.count_tokens("hello world") == 2


@pytest.mark.slow
def test_greedy_chat_is_repeatable_and_counts_tokens(llm):
    first = asyncio.run(llm.chat(MESSAGES, temperature=0, max_tokens=12))
    again = asyncio.run(llm.chat(MESSAGES, temperature=0, max_tokens=12))
    text = first.choices[0].text
    assert text.strip() and text == again.choices[0].text
    assert "<|im_end|>" not in text and "<|im_start|>" not in text
    assert first.usage.prompt_tokens > 20 and 0 < first.usage.completion_tokens <= 12
    assert first.usage.cost_usd is None


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_sampling_gives_n_answers_and_greedy_n_copies(llm):
    sampled = asyncio.run(llm.chat(MESSAGES, n=3, temperature=1.0, max_tokens=8))
    assert len(sampled.choices) == 3
    assert sampled.usage.completion_tokens >= 3  # counted over all three decodes
    greedy = asyncio.run(llm.chat(MESSAGES, n=2, temperature=0, max_tokens=8))
    assert greedy.choices[0].text == greedy.choices[1].text


@pytest.mark.slow
def test_concurrent_calls_are_all_answered(llm):
    async def many():
        return await asyncio.gather(
            *(llm.complete(f"Count: {k}, {k + 1},", temperature=0, max_tokens=4) for k in range(4))
        )

    answers = asyncio.run(many())
    alone = asyncio.run(llm.complete("Count: 2, 3,", temperature=0, max_tokens=4))
    assert answers[2].choices[0].text == alone.choices[0].text


def test_stop_strings_cut_the_answer(llm):
    out = asyncio.run(llm.complete("1, 2, 3, 4, 5,", temperature=0, max_tokens=20, stop=[","]))
    assert "," not in out.choices[0].text
    assert out.choices[0].finish_reason == "stop"


def test_what_it_cannot_do_is_refused_clearly(llm, tmp_path):
    with pytest.raises(LLMError, match="no logprobs"):
        asyncio.run(llm.complete("hi", logprobs=3, echo=True))
    with pytest.raises(PromptTooLong, match="8192"):
        asyncio.run(llm.complete("word " * 9000, max_tokens=4))
    with pytest.raises(ConfigError, match=r"gguf:<file>\.gguf"):
        GGUFLLM("gguf: ")
    with pytest.raises(ConfigError):
        GGUFLLM(f"gguf:{tmp_path / 'missing.gguf'}")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError):
        load_gguf(f"gguf:{bad}")
