"""The local transformers backend: specs, loading once, generation, logprobs, stops."""

from __future__ import annotations

import asyncio
import copy

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from neuroscribe.config import RunConfig
from neuroscribe.embedded import embedded_model_dir
from neuroscribe.errors import ConfigError
from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.base import LLM
from neuroscribe.llm.local import (
    LocalLLM,
    LocalModel,
    chat_prompt_ids,
    cut_at_stop,
    load_local_model,
    resolve_local_spec,
    split_spec,
)
from neuroscribe.prompts import PromptTooLong

MESSAGES = [
    {"role": "system", "content": "You explain neurons."},
    {"role": "user", "content": "What does this neuron do?"},
]


def tiny_llama(vocab_size: int, *, context: int = 512) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,
        eos_token_id=2,
        bos_token_id=1,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(embedded_model_dir())


@pytest.fixture(scope="module")
def tiny(tokenizer) -> LocalModel:
    return LocalModel("tiny", tiny_llama(len(tokenizer)), tokenizer, "cpu")


@pytest.fixture(scope="module")
def llm(tiny) -> LocalLLM:
    return LocalLLM("hf:tiny", loaded=tiny)


def greedy_by_hand(model, ids: list[int], steps: int) -> list[int]:
    out = list(ids)
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([out])).logits[0, -1].argmax()))
    return out[len(ids) :]


def test_specs_local_only_with_the_prefix(tmp_path):
    with pytest.raises(ConfigError, match="not a local model spec"):
        resolve_local_spec("smollm2")
    with pytest.raises(ConfigError, match="empty"):
        resolve_local_spec("hf:")
    assert resolve_local_spec("hf:embedded") == str(embedded_model_dir())
    assert resolve_local_spec("hf:gpt2") == "gpt2"  # a hub id, loaded by transformers
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        resolve_local_spec(f"hf:{tmp_path / 'notamodel'}")
    assert isinstance(unwrap(make_llm("hf:embedded")), LocalLLM)
    assert isinstance(LocalLLM("hf:embedded"), LLM)


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_a_folder_is_loaded_once_and_shared(tmp_path, tokenizer):
    folder = tmp_path / "tiny-model"
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    first = load_local_model(f"hf:{folder}", device="cpu")
    again = load_local_model(f"hf:{folder}", device="cpu")
    assert first is again
    assert first.max_context == 512
    assert LocalLLM(f"hf:{folder}", device="cpu").loaded is first
    with pytest.raises(ConfigError, match="dtype"):
        load_local_model(f"hf:{folder}", device="cpu", dtype="int3")


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_a_spec_carries_its_dtype_to_every_loader(tmp_path, tokenizer):
    folder = tmp_path / "tiny-model"
    tiny_llama(len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    spec = f"hf:{folder}?dtype=bfloat16"
    assert resolve_local_spec(spec) == str(folder.resolve())
    half = load_local_model(spec, device="cpu")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    assert load_local_model(f"hf:{folder}", device="cpu") is not half  # float32: its own copy
    assert LocalLLM(spec).loaded is half  # what `--explainer`/`--simulator` build
    assert split_spec("hf:embedded?dtype=float32&device=cpu") == (
        "hf:embedded",
        {"dtype": "float32", "device": "cpu"},
    )
    for bad in ("?dtype=int3", "?dtyp=bfloat16", "?dtype", "?dtype=float32&dtype=float32"):
        with pytest.raises(ConfigError, match="dtype"):
            split_spec("hf:embedded" + bad)
    with pytest.raises(ConfigError, match="dtyp=bfloat16"):  # caught when the config is made
        RunConfig.build(score={"model": "hf:embedded?dtyp=bfloat16"})
    with pytest.raises(ConfigError, match="device string: gpu"):
        RunConfig.build(score={"model": "hf:embedded?device=gpu"})
    if not torch.cuda.is_available():  # a clear error, not torch's AssertionError
        with pytest.raises(ConfigError, match=r"cannot put local model .* on device 'cuda'"):
            load_local_model(f"hf:{folder}?device=cuda")


def test_a_missing_hub_model_is_a_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match="cannot load local model"):
        load_local_model("hf:nobody/no-such-model-neuroscribe", device="cpu")


def test_greedy_chat_is_the_argmax_continuation(llm, tiny):
    ids = chat_prompt_ids(tiny.tokenizer, MESSAGES)
    # SmolLM2's tokenizer has a chat template: the prompt is the templated conversation.
    assert tiny.tokenizer.decode(ids).startswith("<|im_start|>system\nYou explain neurons.")
    response = asyncio.run(llm.chat(MESSAGES, n=2, temperature=0, max_tokens=8))
    expected = greedy_by_hand(tiny.model, ids, 8)
    eos = tiny.tokenizer.eos_token_id
    if eos in expected:
        expected = expected[: expected.index(eos)]
    assert [c.text for c in response.choices] == [tiny.tokenizer.decode(expected)] * 2
    assert response.usage.prompt_tokens == len(ids)
    assert response.usage.requests == 1


def test_sampling_gives_n_choices_with_token_logprobs(llm, tiny):
    ids = chat_prompt_ids(tiny.tokenizer, MESSAGES)
    torch.manual_seed(1)
    response = asyncio.run(llm.chat(MESSAGES, n=3, temperature=1.0, max_tokens=6, top_logprobs=3))
    assert len(response.choices) == 3
    assert 0 < response.usage.completion_tokens <= 18
    with torch.no_grad():
        first = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0, -1], -1)
    for choice in response.choices:
        assert choice.finish_reason in ("stop", "length")
        assert choice.tokens, "asked for logprobs"
        head = choice.tokens[0]
        assert len(head.top_logprobs) <= 3
        token_id = tiny.tokenizer.convert_tokens_to_ids(
            tiny.tokenizer.convert_ids_to_tokens(tiny.tokenizer.encode(head.token))
        )[0]
        assert head.logprob == pytest.approx(float(first[token_id]), abs=1e-4)
        assert max(head.top_logprobs.values()) == pytest.approx(float(first.max()), abs=1e-4)


def test_complete_echo_gives_prompt_logprobs(llm, tiny):
    prompt = "The cat sat on the mat"
    ids = tiny.tokenizer(prompt)["input_ids"]
    response = asyncio.run(llm.complete(prompt, temperature=0, max_tokens=3, logprobs=2, echo=True))
    choice = response.choices[0]
    assert choice.text.startswith(prompt)
    assert [t.token for t in choice.prompt_tokens] == [tiny.tokenizer.decode([i]) for i in ids]
    with torch.no_grad():
        logprobs = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0], -1)
    assert choice.prompt_tokens[0].logprob is None
    for i in range(1, len(ids)):
        assert choice.prompt_tokens[i].logprob == pytest.approx(
            float(logprobs[i - 1, ids[i]]), abs=1e-4
        )
        assert len(choice.prompt_tokens[i].top_logprobs) <= 2


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_stop_strings_cut_the_text(llm, tiny):
    assert cut_at_stop("abc\n\ndef", ["\n\n", "zz"]) == ("abc", True)
    assert cut_at_stop("abc", ["zz"]) == ("abc", False)
    free = asyncio.run(llm.complete("Once upon a time", temperature=0, max_tokens=12))
    text = free.choices[0].text
    assert len(text) > 4
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    cut = asyncio.run(llm.complete("Once upon a time", temperature=0, max_tokens=12, stop=[stop]))
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_without_a_chat_template_the_messages_are_joined(tokenizer):
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    ids = chat_prompt_ids(plain, MESSAGES)
    assert plain.decode(ids) == "You explain neurons.\n\nWhat does this neuron do?\n\n"


def test_a_prompt_past_the_context_is_refused(llm):
    with pytest.raises(PromptTooLong, match="512-token context"):
        asyncio.run(llm.complete("word " * 600, max_tokens=5))


def test_concurrent_calls_are_serialised_and_all_answered(llm):
    async def many():
        return await asyncio.gather(
            *(llm.complete(f"Number {k}", temperature=0, max_tokens=3) for k in range(4))
        )

    responses = asyncio.run(many())
    assert len(responses) == 4
    single = asyncio.run(llm.complete("Number 2", temperature=0, max_tokens=3))
    assert responses[2].choices[0].text == single.choices[0].text


@pytest.mark.slow
def test_embedded_smollm2_answers_a_chat():
    llm = LocalLLM("hf:embedded")
    response = asyncio.run(
        llm.chat([{"role": "user", "content": "Say hello."}], n=2, temperature=0.7, max_tokens=12)
    )
    assert len(response.choices) == 2
    assert all(c.text.strip() for c in response.choices)
    assert response.usage.completion_tokens > 0
    asyncio.run(llm.aclose())
