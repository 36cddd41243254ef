"""No hidden global state: key scrubbing, probe caches, model stores, model facts."""

from __future__ import annotations

import asyncio
import gc
import json
import logging

import httpx
import pytest

from neuroscribe.llm import make_llm, unwrap
from neuroscribe.llm.openai import ProbeCache
from neuroscribe.llm.secrets import SECRETS, ScrubFilter, SecretRegistry, install_log_scrubbing

LOGGERS = ("openai", "openai._base_client", "httpx", "httpcore", "neuroscribe", "neuroscribe.llm")


def run(coro):
    return asyncio.run(coro)


def test_two_clients_with_different_keys_are_both_scrubbed_without_piling_filters(caplog):
    caplog.set_level(logging.DEBUG)
    key_a = "sk-proj-AAAAaaaa11112222"  # OpenAI-shaped
    key_b = "tok_custom.BBBB-bbbb/3333"  # any other shape: scrubbed by value
    filters_before = {name: list(logging.getLogger(name).filters) for name in LOGGERS}
    a = make_llm("m", base_url="http://a.test/v1", api_key=key_a)
    factory = logging.getLogRecordFactory()
    b = make_llm("m", base_url="http://b.test/v1", api_key=key_b)
    assert logging.getLogRecordFactory() is factory  # installed once, not per client
    assert {name: list(logging.getLogger(name).filters) for name in LOGGERS} == filters_before
    assert key_a in SECRETS and key_b in SECRETS

    # Child loggers too (a logger's own filters never see its children's records).
    logging.getLogger("openai._base_client").debug("headers: %s", {"auth": key_a})
    logging.getLogger("neuroscribe.llm.whatever").warning("sent %s and %s", key_b, key_a)
    logging.getLogger("some.other.library").error(f"leaked {key_b}")
    assert "AAAAaaaa" not in caplog.text and "BBBB-bbbb" not in caplog.text
    assert caplog.text.count("***") >= 4
    assert key_a not in repr(a) and key_b not in repr(b)

    # A key leaves the registry with its last client.
    del a, b
    gc.collect()
    assert key_a not in SECRETS and key_b not in SECRETS


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_registry_counts_owners_and_filter_is_reusable():
    reg = SecretRegistry()

    class Owner:
        pass

    one, two = Owner(), Owner()
    reg.add("shared-secret-1", owner=one)
    reg.add("shared-secret-1", owner=two)
    del one
    gc.collect()
    assert "shared-secret-1" in reg  # still used by `two`
    assert reg.scrub("x shared-secret-1 y") == "x *** y"
    record = logging.LogRecord("n", logging.INFO, __file__, 1, "v=%s", ("shared-secret-1",), None)
    ScrubFilter(reg).filter(record)
    assert record.getMessage() == "v=***"
    del two
    gc.collect()
    assert len(reg) == 0
    install_log_scrubbing()  # idempotent
    factory = logging.getLogRecordFactory()
    install_log_scrubbing()
    assert logging.getLogRecordFactory() is factory


def probe_server(seen: list[str]):
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.url.host}{request.url.path}")
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []})
        body = json.loads(request.content)
        if "messages" in body:
            msg = {"role": "assistant", "content": "7"}
            return httpx.Response(200, json={"choices": [{"message": msg}]})
        return httpx.Response(200, json={"choices": [{"text": "x", "logprobs": None}]})

    return handle


def test_probe_results_live_in_an_explicit_cache():
    seen: list[str] = []
    transport = httpx.MockTransport(probe_server(seen))
    a = make_llm("m", base_url="http://x.test/v1", transport=transport)
    b = make_llm("m", base_url="http://x.test/v1", transport=transport)
    run(a.probe())
    n = len(seen)
    run(b.probe())  # its own cache: probes again
    assert len(seen) == 2 * n
    shared = ProbeCache()
    c = make_llm("m", base_url="http://x.test/v1", transport=transport, probes=shared)
    d = make_llm("m", base_url="http://x.test/v1", transport=transport, probes=shared)
    run(c.capabilities())
    run(d.capabilities())
    assert len(seen) == 3 * n and len(shared) == 1
    other_host = make_llm("m", base_url="http://y.test/v1", transport=transport, probes=shared)
    run(other_host.probe())
    assert len(shared) == 2  # keyed by endpoint + model
    shared.clear()
    assert c.probe_result is None


@pytest.fixture(scope="module")
def tiny_parts():
    torch = pytest.importorskip("torch")
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from neuroscribe.embedded import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(embedded_model_dir())

    def model(seed: int):
        torch.manual_seed(seed)
        config = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=512,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(config).eval()

    return tok, model


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_two_model_stores_are_independent(tiny_parts, tmp_path):
    from neuroscribe.llm.local import LocalLLM, ModelStore

    tok, model = tiny_parts
    folder = tmp_path / "m"
    model(0).save_pretrained(folder)
    tok.save_pretrained(folder)
    one, two = ModelStore(), ModelStore()
    a = one.load(f"hf:{folder}", device="cpu")
    assert one.load(f"hf:{folder}", device="cpu") is a  # loaded once per store
    b = two.load(f"hf:{folder}", device="cpu")
    assert b is not a and len(one) == len(two) == 1
    one.clear()
    assert len(one) == 0 and two.load(f"hf:{folder}", device="cpu") is b
    llm = make_llm(f"hf:{folder}", device="cpu", store=two)
    assert unwrap(llm).loaded is b
    assert isinstance(unwrap(llm), LocalLLM)
    registered = one.register("hf:mine", model(1), tok)
    assert registered.path == "hf:mine" and len(two) == 1
    # An empty store passed in is used (not mistaken for "none given").
    empty = ModelStore()
    assert unwrap(make_llm(f"hf:{folder}", device="cpu", store=empty)).loaded is not b
    assert len(empty) == 1


def test_model_facts_are_kept_beside_the_model_not_on_it(tiny_parts):
    from neuroscribe.llm.local import LocalModel
    from neuroscribe.simulator.exact import ExactSimulator

    tok, model = tiny_parts
    m = model(2)
    attrs = set(vars(m))
    loaded = LocalModel("tiny", m, tok, "cpu")
    ExactSimulator("hf:tiny", loaded=loaded).simulate_sync("cats", [["The", " cat"]])
    assert set(vars(m)) == attrs  # nothing was set on the HF model
    assert loaded.memo["plain_head"] is True
    # The shared instructions' KV cache is kept beside the model too, not on it.
    assert set(loaded.memo) == {"plain_head", "sim-shared"}
    # The same weights in another LocalModel (another store) compute their own facts.
    assert LocalModel("tiny", m, tok, "cpu").memo == {}
