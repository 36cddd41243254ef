"""LoRA adapters: training hooks, the saved file, merging at load, and the spec option."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from _record_helpers import embedded_tokenizer, tiny_model, tiny_model_dir
from neuroscribe.errors import ConfigError
from neuroscribe.llm import lora
from neuroscribe.llm.local import ModelStore, split_spec


def _trained(model, seed: int = 1):
    """Adapters on `model` with non-zero updates (as after some training)."""
    adapters = lora.attach(model, rank=4, alpha=8.0)
    gen = torch.Generator().manual_seed(seed)
    for a in adapters.values():
        with torch.no_grad():
            a.B.copy_(torch.randn(a.B.shape, generator=gen) * 0.05)
    return adapters


def test_a_fresh_adapter_changes_nothing_and_only_it_trains():
    model = tiny_model("llama")
    ids = torch.tensor([[1, 5, 9, 2, 7]])
    before = model(input_ids=ids).logits
    adapters = lora.attach(model, rank=4)
    assert torch.equal(model(input_ids=ids).logits, before)  # B starts at zero
    assert not any(p.requires_grad for p in model.parameters())
    params = lora.parameters(adapters)
    assert params and all(p.requires_grad for p in params)
    # Every projection of every block is adapted.
    assert len(adapters) == 7 * model.config.num_hidden_layers


def test_a_saved_adapter_merges_to_the_hooked_model(tmp_path):
    model = tiny_model("llama")
    adapters = _trained(model)
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    with torch.no_grad():
        hooked = model(input_ids=ids).logits
    path = tmp_path / "adapter.safetensors"
    lora.save(adapters, path, {"rank": "4"})

    fresh = tiny_model("llama")  # same seed: the same base weights
    with torch.no_grad():
        base = fresh(input_ids=ids).logits
    assert lora.merge(fresh, path) == len(adapters)
    with torch.no_grad():
        merged = fresh(input_ids=ids).logits
    assert not torch.allclose(base, hooked, atol=1e-3)  # the adapter does something
    # The file holds bfloat16 A and B, so the merged model matches to their rounding.
    assert torch.allclose(merged, hooked, atol=2e-2)


def test_an_adapter_for_another_model_is_refused_whole(tmp_path):
    model = tiny_model("llama")
    path = tmp_path / "adapter.safetensors"
    lora.save(_trained(model), path)
    other = tiny_model("llama", intermediate_size=40)
    weights = [p.detach().clone() for p in other.parameters()]
    with pytest.raises(ConfigError, match="expects"):
        lora.merge(other, path)
    assert all(torch.equal(a, b) for a, b in zip(weights, other.parameters(), strict=True))

    tensors = load_file(str(path))
    save_file(tensors, str(tmp_path / "no-scale.safetensors"))
    with pytest.raises(ConfigError, match="no scale"):
        lora.merge(tiny_model("llama"), tmp_path / "no-scale.safetensors")
    with pytest.raises(ConfigError, match="not found"):
        lora.merge(model, tmp_path / "missing.safetensors")


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_a_spec_names_an_adapter_and_loads_it_merged(tmp_path):
    folder = tiny_model_dir(tmp_path / "tiny")
    path = tmp_path / "adapter.safetensors"
    lora.save(_trained(tiny_model("llama", vocab_size=len(embedded_tokenizer()))), path)

    spec = f"hf:{folder}?adapter={path}"
    assert split_spec(spec) == (f"hf:{folder}", {"adapter": str(path)})
    store = ModelStore()
    adapted = store.load(spec, device="cpu")
    plain = store.load(f"hf:{folder}", device="cpu")
    assert adapted is not plain  # its own copy, keyed apart
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        a, p = adapted.model(input_ids=ids).logits, plain.model(input_ids=ids).logits
        assert not torch.allclose(a, p)
    assert store.load(spec, device="cpu") is adapted
    with pytest.raises(ConfigError, match=r"adapter 'nope\.safetensors' not found"):
        split_spec(f"hf:{folder}?adapter=nope.safetensors")


@pytest.mark.slow
def test_a_simulator_reads_the_prompt_its_adapter_was_trained_on(tmp_path):
    from neuroscribe.scorer.simulation import SimulationScorer
    from neuroscribe.simulator.exact import ExactSimulator

    path = tmp_path / "adapter.safetensors"
    lora.save(_trained(tiny_model("llama")), path, {"prompt": "simulate-tuned-v1"})
    spec = f"hf:embedded?adapter={path}"
    assert lora.adapter_prompt(spec) == "simulate-tuned-v1"
    assert lora.adapter_prompt("hf:embedded") is None
    sim = ExactSimulator(spec)  # nothing loads until it simulates
    assert sim.prompt_version == "simulate-tuned-v1"
    assert sim.n_examples == 0  # the tuned prompt has no few-shot units
    # A prompt the user names wins; a dry run plans the same prompt as a real run.
    assert ExactSimulator(spec, prompt_version="simulate-v1").prompt_version == "simulate-v1"
    planned, _ = SimulationScorer.planned(spec)
    assert planned.config()["prompt_version"] == "simulate-tuned-v1"
    assert planned.config()["n_examples"] == 0


def test_the_bundled_simulator_adapter_fits_the_embedded_model():
    path = lora.resolve_adapter("simulator")
    tensors = load_file(str(path))
    # SmolLM2-135M: hidden 576, MLP 1536, 30 blocks; every projection adapted.
    a = tensors["model.layers.0.mlp.down_proj.lora_A"]
    b = tensors["model.layers.0.mlp.down_proj.lora_B"]
    assert a.shape[1] == 1536 and b.shape[0] == 576
    assert len({k.rsplit(".", 1)[0] for k in tensors}) == 7 * 30
    assert lora.metadata(path)["prompt"] == "simulate-tuned-inline-v1"


@pytest.mark.slow
def test_the_tuned_embedded_simulator_scores_true_explanations_higher():
    """The bundled adapter on the suite's test half (rules it was not trained on): true
    explanations score above false ones on average, where the plain 135M model does not."""
    import asyncio

    from neuroscribe.config import RunConfig
    from neuroscribe.groundtruth.runner import check_simulator_async

    config = RunConfig.build(
        score={"model": "hf:embedded?adapter=simulator", "strategy": "exact"},
        jobs={"cache": False},
    )
    report = asyncio.run(check_simulator_async(config, split="test"))
    s = report.summary
    assert report.prompt_version == "simulate-tuned-inline-v1"
    assert s.n_units >= 15
    assert s.mean_true_score > s.mean_false_score + 0.05
    assert s.top1_rate > s.chance_rate


def test_the_trained_simulator_is_the_default_for_simulation_only(tmp_path):
    """Simulation runs on the embedded model with its simulation adapter by default;
    judges and the embedding scorer, and a selector that judges, read the plain model."""
    from neuroscribe.api import scorer_configs, selection_spec
    from neuroscribe.config import RunConfig, ScoreSection

    assert ScoreSection().model == "hf:embedded?adapter=simulator"
    for judge in ("detection", "fuzzing", "intruder", "embedding"):
        assert ScoreSection(scorer=judge).model == "hf:embedded"
    # A model the user names is kept, whatever the scorer.
    assert ScoreSection(scorer="detection", model="hf:other").model == "hf:other"
    config = RunConfig.build(run_dir=tmp_path)
    by_name = {
        c.score.scorer: c.score.model
        for c in scorer_configs(config, [("simulation", None), ("detection", None)])
    }
    assert by_name == {"simulation": "hf:embedded?adapter=simulator", "detection": "hf:embedded"}
    judged = RunConfig.build(run_dir=tmp_path, explain={"select": {"scorer": "detection"}})
    assert selection_spec(judged) == "hf:embedded"
    assert selection_spec(config) == "hf:embedded?adapter=simulator"


def test_the_service_simulates_with_the_trained_simulator_by_default():
    from neuroscribe.service.calls import _check_strategy
    from neuroscribe.service.models import ScoreRequest, SimulateRequest

    excerpt = {"tokens": [" the", " cat"], "activations": [0.0, 1.0], "kind": "top"}
    sim = SimulateRequest(explanation="cats", excerpts=[excerpt])
    assert _check_strategy(sim) == "hf:embedded?adapter=simulator"
    judge = ScoreRequest(explanation="cats", excerpts=[excerpt], scorer="detection")
    assert _check_strategy(judge) == "hf:embedded"


@pytest.mark.slow
def test_a_retrained_adapter_under_the_same_spec_gets_new_keys(tmp_path):
    """The spec names the adapter file; its weights change when it is retrained. Scores
    and check reports are keyed by the weights too, so old numbers are never reused."""
    from neuroscribe.groundtruth.store import check_key
    from neuroscribe.scorer.simulation import SimulationScorer

    path = tmp_path / "adapter.safetensors"
    adapters = _trained(tiny_model("llama"), seed=1)
    lora.save(adapters, path, {"prompt": "simulate-tuned-v1"})
    spec = f"hf:embedded?adapter={path}"
    first = (SimulationScorer.planned(spec)[0].config(), check_key(spec, "exact", "v"))
    assert first[0]["adapter"] == lora.adapter_digest(spec)
    for a in adapters.values():  # more training: other weights, the same file name
        with torch.no_grad():
            a.B.add_(0.01)
    lora.save(adapters, path, {"prompt": "simulate-tuned-v1"})
    second = (SimulationScorer.planned(spec)[0].config(), check_key(spec, "exact", "v"))
    assert first[0]["adapter"] != second[0]["adapter"] and first[1] != second[1]
    # Without an adapter the keys are those of earlier versions (no digest in them).
    assert "adapter" not in SimulationScorer.planned("hf:embedded")[0].config()


def test_a_soup_of_adapters_applies_their_average_update(tmp_path):
    """bench/lora_soup.py: one adapter whose merged update is the mean of the inputs'."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "bench" / "lora_soup.py"
    spec = importlib.util.spec_from_file_location("lora_soup", script)
    soup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(soup)

    paths = []
    for seed in (1, 2):
        path = tmp_path / f"a{seed}.safetensors"
        lora.save(_trained(tiny_model("llama"), seed), path, {"rank": "4", "prompt": "p"})
        paths.append(path)
    out = tmp_path / "soup.safetensors"
    assert soup.soup(paths, out)["rank"] == "8"

    def weights(*adapters):
        model = tiny_model("llama")
        for a in adapters:
            lora.merge(model, a)
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    base, one, two, mixed = weights(), weights(paths[0]), weights(paths[1]), weights(out)
    changed = 0
    for name, w in base.items():
        expected = w + ((one[name] - w) + (two[name] - w)) / 2
        assert torch.allclose(mixed[name], expected, atol=1e-3), name
        changed += not torch.equal(mixed[name], w)
    assert changed == 7 * tiny_model("llama").config.num_hidden_layers

    other = tmp_path / "other.safetensors"
    lora.save(_trained(tiny_model("llama"), 3), other, {"rank": "4", "prompt": "q"})
    with pytest.raises(SystemExit, match="prompt"):
        soup.soup([paths[0], other], tmp_path / "bad.safetensors")
