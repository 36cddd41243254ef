"""Unit sources: MLP neurons found in every supported family; module paths; SAE encoders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _record_helpers import tiny_config, tiny_model
from neuroscribe.datasets.sae import load_sae
from neuroscribe.datasets.units import (
    Capture,
    build_sources,
    find_layers,
    mlp_neuron_path,
    parse_index_spec,
    resolve_model_spec,
)
from neuroscribe.errors import ConfigError, DataError

FAMILIES = {
    "gpt2": "transformer.h.1.mlp.c_proj",
    "gpt_neox": "gpt_neox.layers.1.mlp.dense_4h_to_h",
    "llama": "model.layers.1.mlp.down_proj",
    "mistral": "model.layers.1.mlp.down_proj",
    "qwen2": "model.layers.1.mlp.down_proj",
    "qwen3": "model.layers.1.mlp.down_proj",
    "gemma": "model.layers.1.mlp.down_proj",
    "phi3": "model.layers.1.mlp.down_proj",
    "gptj": "transformer.h.1.mlp.fc_out",
    "opt": "model.decoder.layers.1.fc2",
}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mlp_neurons_found_in_each_family(family):
    model = tiny_model(family)
    assert mlp_neuron_path(model, 1) == FAMILIES[family]
    sources = build_sources(model, unit_type="mlp", layers=[0, 2])
    for s in sources:
        s.indices = None
    with Capture(model, sources) as cap:
        acts = cap.run(torch.tensor([[1, 2, 3]]), torch.ones(1, 3, dtype=torch.long))
    config = tiny_config(family)
    width = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "ffn_dim", None)
        or 4 * config.n_embd
    )
    assert [a.shape for a in acts] == [torch.Size([1, 3, width])] * 2


def test_unsupported_family_error_lists_families():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"GPT-2 .*GPT-NeoX.*Llama.*--unit-type module --module"):
        find_layers(model)


def test_capture_stops_after_the_last_recorded_layer():
    model = tiny_model("llama")
    calls = []
    model.model.layers[2].register_forward_hook(lambda *_: calls.append(2))
    sources = build_sources(model, unit_type="mlp", layers=[0])
    with Capture(model, sources) as cap:
        cap.run(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long))
    assert calls == []  # layer 2 never ran
    with Capture(model, sources, stop_early=False) as cap:
        cap.run(torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.long))
    assert calls == [2]


def test_module_paths():
    model = tiny_model("llama")
    rel = build_sources(
        model, unit_type="module", layers=[1], module="self_attn.o_proj", hook="output"
    )
    assert (
        rel[0].module_path == "model.layers.1.self_attn.o_proj"
        and rel[0].label == "1:self_attn.o_proj:output"
    )
    tpl = build_sources(
        model, unit_type="module", layers=[0, 2], module="model.layers.{layer}.input_layernorm"
    )
    assert [s.module_path for s in tpl] == [
        "model.layers.0.input_layernorm",
        "model.layers.2.input_layernorm",
    ]
    absolute = build_sources(model, unit_type="module", layers=None, module="model.norm")
    assert absolute[0].module_path == "model.norm" and absolute[0].layer_index is None
    assert len(build_sources(model, unit_type="mlp", layers="all")) == 3
    with pytest.raises(ConfigError, match="needs --module"):
        build_sources(model, unit_type="module", layers=[0])
    with pytest.raises(ConfigError, match=r"no module 'model\.layers\.0\.nope'"):
        build_sources(model, unit_type="module", layers=[0], module="nope")


def test_index_specs_and_model_specs(tmp_path):
    assert parse_index_spec("0-3,8, 5") == [0, 1, 2, 3, 5, 8]
    assert parse_index_spec("all") is None
    with pytest.raises(ConfigError, match="bad layer list"):
        parse_index_spec("3-1", what="layer")
    with pytest.raises(ConfigError, match="unit 9 out of range"):
        parse_index_spec("9", 4, what="unit")
    assert resolve_model_spec("gpt2") == ("gpt2", "gpt2", False)
    assert resolve_model_spec("hf:EleutherAI/pythia-70m")[1] == "EleutherAI/pythia-70m"
    source, name, embedded = resolve_model_spec("hf:embedded")
    assert embedded and name == "smollm2-135m-instruct"
    assert resolve_model_spec(None)[0] == source
    with pytest.raises(ConfigError, match="not found"):
        resolve_model_spec(str(tmp_path / "nope"))


def _sae_file(path, d_in=6, d_sae=10, **extra):
    g = torch.Generator().manual_seed(1)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g),
        "b_dec": torch.randn(d_in, generator=g),
    }
    t.update(extra)
    save_file(t, str(path))
    return {k: v.double().numpy() for k, v in t.items()}


def test_sae_activations_match_matrix_maths(tmp_path):
    x = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(2))
    xn = x.double().numpy()

    w = _sae_file(tmp_path / "relu.safetensors")
    pre = (xn - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    sae = load_sae(tmp_path / "relu.safetensors")
    assert sae.activation == "relu"
    np.testing.assert_allclose(sae.encode(x).numpy(), np.maximum(pre, 0), rtol=1e-5, atol=1e-5)

    thr = torch.rand(10, generator=torch.Generator().manual_seed(3))
    _sae_file(tmp_path / "jump.safetensors", threshold=thr)
    jump = load_sae(tmp_path / "jump.safetensors")
    assert jump.activation == "jumprelu"
    np.testing.assert_allclose(
        jump.encode(x).numpy(), np.where(pre > thr.double().numpy(), pre, 0), rtol=1e-5, atol=1e-5
    )

    topk = load_sae(tmp_path / "relu.safetensors", k=3)
    z = topk.encode(x).numpy()
    kth = np.sort(pre, axis=-1)[..., -3][..., None]
    np.testing.assert_allclose(z, np.where(pre >= kth, np.maximum(pre, 0), 0), rtol=1e-5, atol=1e-5)
    assert ((z != 0).sum(-1) <= 3).all()

    # sparsify layout: encoder.weight is [d_sae, d_in]
    save_file(
        {
            "encoder.weight": torch.tensor(w["W_enc"].T).float().contiguous(),
            "encoder.bias": torch.tensor(w["b_enc"]).float(),
            "b_dec": torch.tensor(w["b_dec"]).float(),
        },
        str(tmp_path / "sp.safetensors"),
    )
    np.testing.assert_allclose(
        load_sae(tmp_path / "sp.safetensors").encode(x).numpy(),
        np.maximum(pre, 0),
        rtol=1e-5,
        atol=1e-5,
    )


def test_bad_sae_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_sae(tmp_path / "none.safetensors")
    save_file({"weights": torch.zeros(2, 2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(DataError, match="no encoder weights"):
        load_sae(tmp_path / "x.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(DataError, match="not a readable safetensors"):
        load_sae(tmp_path / "junk.safetensors")
    _sae_file(tmp_path / "ok.safetensors")
    with pytest.raises(ConfigError, match="k=11"):
        load_sae(tmp_path / "ok.safetensors", k=11)
