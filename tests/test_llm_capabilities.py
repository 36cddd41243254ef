"""Capabilities decide the simulator; backends register by prefix; the fake drives all."""

from __future__ import annotations

import asyncio
import json
import math

import pytest

from neuroscribe.errors import ConfigError
from neuroscribe.llm import Capabilities, backend_info, make_llm, register_backend, unwrap
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.registry import BackendInfo, BackendRegistry
from neuroscribe.simulator import (
    ChatLogprobSimulator,
    JsonSimulator,
    PromptLogprobSimulator,
    choose_strategy,
    make_simulator,
    scale_for,
    scale_from_probe,
    strategy_from_probe,
)

EXCERPTS = [["The", " cat", " sat"], [" dogs", "!"]]
# A probe stored in a manifest before capabilities existed (llama.cpp + SmolLM2).
LLAMA_PROBE = {
    "probe_version": 1,
    "completions": True,
    "echo_logprobs": True,
    "echo_shift": 1,
    "ten_single_token": False,
    "chat": True,
    "chat_logprobs": True,
    "json_mode": True,
    "json_schema": False,
}


def run(coro):
    return asyncio.run(coro)


# ---------------------------------------------------------------------- the pure choice


@pytest.mark.parametrize(
    ("caps", "strategy"),
    [
        (Capabilities(exact_logits=True, prompt_logprobs=True), "exact"),
        (Capabilities(prompt_logprobs=True, chat_top_logprobs=True), "prompt-logprobs"),
        (Capabilities(chat_top_logprobs=True), "chat-logprobs"),
        (Capabilities(json_schema=True), "json"),
        (Capabilities(), "json"),
    ],
)
def test_auto_prefers_exact_then_prompt_then_chat_logprobs_then_json(caps, strategy):
    assert choose_strategy(caps, "auto") == strategy


def test_named_strategies_are_honoured_but_exact_needs_logits():
    assert choose_strategy(Capabilities(), "prompt-logprobs") == "prompt-logprobs"
    with pytest.raises(ConfigError, match="exact strategy needs"):
        choose_strategy(Capabilities(prompt_logprobs=True), "exact")
    with pytest.raises(ConfigError, match="unknown strategy"):
        choose_strategy(Capabilities(), "telepathy")


def test_scale_is_0_to_9_only_when_ten_is_known_to_split():
    assert scale_for(Capabilities(ten_single_token=False)) == 9
    assert scale_for(Capabilities(ten_single_token=True)) == 10
    assert scale_for(Capabilities()) == 10


def test_manifest_roundtrip_and_old_probes():
    caps = Capabilities(chat_top_logprobs=True, context_length=8192, ten_single_token=False)
    stored = json.loads(json.dumps(caps.to_manifest()))
    assert Capabilities.from_manifest(stored) == caps
    old = Capabilities.from_manifest(LLAMA_PROBE)
    assert old.prompt_logprobs and old.chat_top_logprobs and old.echo_shift == 1
    assert not old.json_schema and old.json_object
    assert choose_strategy(old) == "prompt-logprobs" and scale_for(old) == 9
    # the old helpers are wrappers of the new ones
    assert strategy_from_probe(LLAMA_PROBE) == "prompt-logprobs"
    assert scale_from_probe(LLAMA_PROBE) == 9
    assert strategy_from_probe({}) == "json" and scale_from_probe({}) == 10


def test_counter_is_not_serialised():
    caps = Capabilities().with_counter(len)
    assert caps.count_tokens("abcd") == 4
    assert Capabilities.from_manifest(caps.to_manifest()).count_tokens("abcd") is None


# ---------------------------------------------------------------------- the registry


def test_backend_info_without_building_anything():
    api, local, fake = (
        backend_info("gpt-4o-mini"),
        backend_info("hf:embedded"),
        backend_info("fake:x"),
    )
    assert (api.name, api.local, api.needs_pricing, api.needs_cache) == (
        "openai",
        False,
        True,
        True,
    )
    assert (local.name, local.local, local.free, local.needs_pricing) == (
        "local",
        True,
        True,
        False,
    )
    assert fake.local and fake.prefix == "fake:"
    assert api.token_counter("gpt-4o-mini") is None  # the caller estimates API tokens
    count_text, count_chat, name = fake.token_counter("fake:x")
    assert count_text("a b") == 3 and count_chat([{"role": "user", "content": "a"}]) == 7
    assert name == "fake"


@pytest.mark.slow
def test_local_token_counter_and_offline_capabilities_use_the_tokenizer():
    info = backend_info("hf:embedded")
    count_text, count_chat, name = info.token_counter("hf:embedded")
    assert count_text("10") == 2 and name.startswith("hf:")
    assert count_chat([{"role": "user", "content": "hi"}]) > 2
    caps = info.offline_capabilities("hf:embedded")
    assert caps.exact_logits and caps.ten_single_token is False and caps.context_length == 8192
    assert choose_strategy(caps) == "exact" and scale_for(caps) == 9
    assert caps.count_tokens("10") == 2


def test_register_backend_by_prefix():
    registry = BackendRegistry()
    registry.register("", lambda spec, **kw: ("default", spec))
    registry.register(
        "my:", lambda spec, **kw: ("mine", spec, kw), BackendInfo("mine", "", local=True)
    )
    registry.register("my:sub:", lambda spec, **kw: ("sub", spec))
    assert registry.build("my:x", a=1) == ("mine", "my:x", {"a": 1})
    assert registry.build("my:sub:x") == ("sub", "my:sub:x")  # the longest prefix wins
    assert registry.build("plain") == ("default", "plain")
    assert registry.info("my:x").prefix == "my:" and registry.info("my:x").local

    register_backend(
        "test-echo:", lambda spec, **kw: FakeLLM(spec, **kw), BackendInfo("echo", "", local=True)
    )
    llm = make_llm("test-echo:one", answers=lambda m, **kw: "pong")
    assert run(llm.chat([{"role": "user", "content": "ping"}])).choices[0].text == "pong"
    with pytest.raises(ConfigError, match="needs a name"):
        make_llm("hf:")


# ---------------------------------------------------------------------- fakes drive every strategy


def slot_logprobs(tokens, i):
    # At each "unknown" value slot: half "3", half "7" (expected 5); elsewhere certain.
    if tokens[i] == "unknown" and tokens[i - 1] == "\t":
        return {"3": math.log(0.5), "7": math.log(0.5), "unknown": -3.0}
    return {tokens[i]: 0.0}


def test_prompt_logprobs_capability_drives_the_prompt_logprob_simulator():
    caps = Capabilities(completions=True, prompt_logprobs=True, ten_single_token=True)
    llm = make_llm("fake:echo", capabilities=caps, prompt_logprobs=slot_logprobs)
    sim, record = run(make_simulator(llm))
    assert isinstance(sim, PromptLogprobSimulator)
    assert record["strategy"] == "prompt-logprobs" and record["scale_max"] == 10
    assert Capabilities.from_manifest(record) == caps
    results = run(sim.simulate("cats", EXCERPTS))
    assert [r.expected for r in results] == [[5.0] * 3, [5.0] * 2]
    calls = unwrap(llm).calls
    assert {c.kind for c in calls} == {"complete"}
    assert all(c.params["echo"] and c.params["logprobs"] == 15 for c in calls)


def test_chat_top_logprobs_capability_drives_the_chat_logprob_simulator():
    caps = Capabilities(chat_top_logprobs=True, ten_single_token=False)

    def answers(messages, **params):
        n = messages[-1]["content"].count("\n") - 2  # rows between <start> and <end>
        return "".join(f"tok\t{k % 10}\n" for k in range(n))

    llm = make_llm("fake:chat", capabilities=caps, answers=answers)
    sim, record = run(make_simulator(llm))
    assert isinstance(sim, ChatLogprobSimulator) and sim.scale_max == 9
    assert record["capabilities"]["chat_top_logprobs"] is True
    results = run(sim.simulate("cats", EXCERPTS))
    assert [r.expected for r in results] == [[0.0, 1.0, 2.0], [0.0, 1.0]]


def test_json_only_capability_drives_the_json_simulator():
    caps = Capabilities(json_object=True)

    def answers(messages, **params):
        schema = params["response_format"]["schema"]
        return json.dumps({"activations": [4] * schema["properties"]["activations"]["minItems"]})

    llm = make_llm("fake:json", capabilities=caps, answers=answers)
    sim, _ = run(make_simulator(llm))
    assert isinstance(sim, JsonSimulator) and sim.json_mode == "json_object"
    results = run(sim.simulate("cats", EXCERPTS))
    assert [r.expected for r in results] == [[4.0] * 3, [4.0] * 2]
    call = unwrap(llm).calls[0]
    assert call.kind == "chat" and call.params["response_format"]["type"] == "json_object"


def test_a_forced_strategy_the_backend_lacks_fails_as_output_not_silently():
    from neuroscribe.errors import OutputError

    llm = make_llm("fake:plain")  # no prompt logprobs: the fake ignores echo logprobs
    sim, _ = run(make_simulator(llm, "prompt-logprobs"))
    with pytest.raises(OutputError, match="no prompt logprobs"):
        run(sim.simulate("cats", EXCERPTS[:1]))
    with pytest.raises(ConfigError, match="exact strategy"):
        run(make_simulator(llm, "exact"))


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_local_backend_capabilities_choose_exact():
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.llm.local import LocalModel
    from neuroscribe.simulator.exact import ExactSimulator

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=300,
    )
    loaded = LocalModel("tiny", LlamaForCausalLM(config).eval(), tok, "cpu")
    llm = make_llm("hf:tiny", loaded=loaded)
    caps = run(llm.capabilities())
    assert caps.exact_logits and caps.prompt_logprobs and not caps.json_schema
    assert caps.context_length == 300 and caps.ten_single_token is False
    assert caps.count_tokens("10") == 2
    sim, record = run(make_simulator(llm))
    assert isinstance(sim, ExactSimulator) and sim.loaded is loaded
    assert record["strategy"] == "exact" and record["scale_max"] == 9
    assert record["capabilities"]["exact_logits"] is True
    # A local model can also run the API strategies through its own logprobs.
    sim2, _ = run(make_simulator(llm, "prompt-logprobs"))
    assert isinstance(sim2, PromptLogprobSimulator)
