"""SAE and transcoder layouts read from the files the tests write in each real layout
(SAELens, sparsify, Gemma Scope, a bare file): latents equal a hand computation written
here with numpy; hook names map to the right Hugging Face modules; `record --sae DIR`
records from the folder alone."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _cli import run_cli
from _record_helpers import brute_force, embedded_tokenizer, tiny_model, tiny_model_dir
from neuroscribe.datasets.corpus import open_corpus
from neuroscribe.datasets.hooks import resolve_hook
from neuroscribe.datasets.record import record_run
from neuroscribe.datasets.sae import load_sae
from neuroscribe.datasets.units import Capture, UnitSource, get_module
from neuroscribe.datasets.windows import iter_windows
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.schema import NeuronRecord, RunManifest

D_IN, D_SAE = 8, 12


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is fastest, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


TOL = dict(rtol=1e-4, atol=1e-4)


def rand(*shape: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def npy(t: torch.Tensor) -> np.ndarray:
    return t.double().numpy()


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def topk_ref(pre: np.ndarray, k: int) -> np.ndarray:
    """Keep each row's k largest pre-activations, then ReLU."""
    out = np.zeros_like(pre)
    idx = np.argsort(-pre, axis=-1)[..., :k]
    np.put_along_axis(out, idx, relu(np.take_along_axis(pre, idx, axis=-1)), axis=-1)
    return out


X = rand(2, 5, D_IN, seed=99, scale=2.0)  # hooked activations [batch, tokens, d_in]


def base_tensors(seed: int = 0, d_out: int = D_IN) -> dict[str, torch.Tensor]:
    return {
        "W_enc": rand(D_IN, D_SAE, seed=seed),
        "b_enc": rand(D_SAE, seed=seed + 1, scale=0.3),
        "W_dec": rand(D_SAE, d_out, seed=seed + 2),
        "b_dec": rand(d_out, seed=seed + 3, scale=0.5),
    }


def write_saelens(
    folder: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None, **cfg
) -> Path:
    """A SAELens ≥ 6 folder: cfg.json (top-level fields + metadata) and sae_weights.safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.contiguous() for k, v in tensors.items()}, str(folder / "sae_weights.safetensors")
    )
    full = {
        "architecture": "standard",
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": "6.18.0",
            "model_name": "tiny",
            "hook_name": "blocks.1.hook_resid_pre",
            "prepend_bos": True,
            "context_size": 128,
            "neuronpedia_id": None,
            **(metadata or {}),
        },
        **cfg,
    }
    (folder / "cfg.json").write_text(json.dumps(full))
    return folder


# ------------------------------------------------------------------ SAELens architectures
def test_saelens_standard_subtracts_b_dec_only_when_asked(tmp_path):
    t = base_tensors()
    w = {k: npy(v) for k, v in t.items()}
    x = npy(X)
    sae = load_sae(write_saelens(tmp_path / "std", t))
    expected = relu((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    np.testing.assert_allclose(sae.encode(X).numpy(), expected, **TOL)
    assert (sae.info.layout, sae.info.architecture, sae.activation) == (
        "saelens",
        "standard",
        "relu",
    )

    no_sub = load_sae(write_saelens(tmp_path / "nosub", t, apply_b_dec_to_input=False))
    np.testing.assert_allclose(no_sub.encode(X).numpy(), relu(x @ w["W_enc"] + w["b_enc"]), **TOL)


def test_saelens_topk(tmp_path):
    t = base_tensors(seed=10)
    w = {k: npy(v) for k, v in t.items()}
    sae = load_sae(write_saelens(tmp_path / "topk", t, architecture="topk", k=3))
    pre = (npy(X) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    z = sae.encode(X).numpy()
    np.testing.assert_allclose(z, topk_ref(pre, 3), **TOL)
    assert ((z != 0).sum(-1) <= 3).all() and sae.activation == "topk(3)"

    # Decoder-norm rescaling changes which latents win, and decoding undoes it.
    resc = load_sae(
        write_saelens(
            tmp_path / "resc", t, architecture="topk", k=3, rescale_acts_by_decoder_norm=True
        )
    )
    norms = np.linalg.norm(w["W_dec"], axis=-1)
    np.testing.assert_allclose(resc.encode(X).numpy(), topk_ref(pre * norms, 3), **TOL)
    _, recon, _ = resc.forward(X)
    expected = (topk_ref(pre * norms, 3) / norms) @ w["W_dec"] + w["b_dec"]
    np.testing.assert_allclose(recon.numpy(), expected, **TOL)


@pytest.mark.parametrize("key", ["threshold", "log_threshold"])
def test_saelens_jumprelu(tmp_path, key):
    t = base_tensors(seed=20)
    thr = torch.rand(D_SAE, generator=torch.Generator().manual_seed(21)) * 2
    t[key] = thr.log() if key == "log_threshold" else thr
    w = {k: npy(v) for k, v in t.items()}
    sae = load_sae(write_saelens(tmp_path / key, t, architecture="jumprelu"))
    pre = (npy(X) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    expected = np.where(pre > npy(thr), relu(pre), 0.0)
    np.testing.assert_allclose(sae.encode(X).numpy(), expected, **TOL)
    assert 0 < (expected != 0).mean() < 1  # the threshold does cut some latents


def test_saelens_gated(tmp_path):
    t = base_tensors(seed=30)
    del t["b_enc"]
    t |= {
        "b_gate": rand(D_SAE, seed=31),
        "b_mag": rand(D_SAE, seed=32),
        "r_mag": rand(D_SAE, seed=33, scale=0.5),
    }
    w = {k: npy(v) for k, v in t.items()}
    sae = load_sae(write_saelens(tmp_path / "gated", t, architecture="gated"))
    xc = npy(X) - w["b_dec"]
    active = (xc @ w["W_enc"] + w["b_gate"]) > 0
    mag = xc @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"]
    expected = active * relu(mag)
    np.testing.assert_allclose(sae.encode(X).numpy(), expected, **TOL)
    assert sae.activation == "gated" and (expected != 0).any()


@pytest.mark.parametrize("arch", ["transcoder", "skip_transcoder", "jumprelu_transcoder"])
def test_saelens_transcoders(tmp_path, arch):
    d_out = 6
    t = base_tensors(seed=40, d_out=d_out)
    if arch == "skip_transcoder":
        t["W_skip"] = rand(d_out, D_IN, seed=41)
    if arch == "jumprelu_transcoder":
        t["threshold"] = torch.rand(D_SAE, generator=torch.Generator().manual_seed(42))
    w = {k: npy(v) for k, v in t.items()}
    meta = {"hook_name": "blocks.1.ln2.hook_normalized", "hook_name_out": "blocks.1.hook_mlp_out"}
    sae = load_sae(
        write_saelens(
            tmp_path / arch, t, meta, architecture=arch, d_out=d_out, apply_b_dec_to_input=False
        )
    )
    x = npy(X)
    pre = x @ w["W_enc"] + w["b_enc"]  # no b_dec: it lives in the output space
    z = np.where(pre > w["threshold"], relu(pre), 0) if "threshold" in w else relu(pre)
    zz, recon, _ = sae.forward(X)
    np.testing.assert_allclose(zz.numpy(), z, **TOL)
    expected = z @ w["W_dec"] + w["b_dec"] + (x @ w["W_skip"].T if "W_skip" in w else 0)
    np.testing.assert_allclose(recon.numpy(), expected, **TOL)
    assert sae.transcoder and sae.d_out == d_out
    assert sae.info.hook_name_out == "blocks.1.hook_mlp_out"

    # A transcoder that claims to subtract b_dec is refused, as SAELens does.
    with pytest.raises(DataError, match="apply_b_dec_to_input"):
        load_sae(write_saelens(tmp_path / "bad", t, architecture=arch, d_out=d_out))


# ------------------------------------------------------------------ normalisation modes
def test_normalize_constant_norm_rescale_and_layer_norm(tmp_path):
    t = base_tensors(seed=50)
    w = {k: npy(v) for k, v in t.items()}
    x = npy(X)

    cnr = load_sae(
        write_saelens(tmp_path / "cnr", t, normalize_activations="constant_norm_rescale")
    )
    coeff = np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
    z = relu((x * coeff - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    np.testing.assert_allclose(cnr.encode(X).numpy(), z, **TOL)
    _, recon, _ = cnr.forward(X)  # decoding undoes the scaling
    np.testing.assert_allclose(recon.numpy(), (z @ w["W_dec"] + w["b_dec"]) / coeff, **TOL)

    ln = load_sae(write_saelens(tmp_path / "ln", t, normalize_activations="layer_norm"))
    mu = x.mean(-1, keepdims=True)
    std = (x - mu).std(-1, ddof=1, keepdims=True)
    z = relu(((x - mu) / (std + 1e-5) - w["b_dec"]) @ w["W_enc"] + w["b_enc"])
    np.testing.assert_allclose(ln.encode(X).numpy(), z, **TOL)
    _, recon, _ = ln.forward(X)
    np.testing.assert_allclose(recon.numpy(), (z @ w["W_dec"] + w["b_dec"]) * std + mu, **TOL)


def test_normalize_expected_average_only_in(tmp_path):
    t = base_tensors(seed=60)
    w = {k: npy(v) for k, v in t.items()}
    x = npy(X)

    def expected(scale: float) -> np.ndarray:
        return relu((x * scale - w["b_dec"]) @ w["W_enc"] + w["b_enc"])

    # A training checkpoint keeps the factor next to the weights (activation_scaler.json).
    folder = write_saelens(tmp_path / "ckpt", t, normalize_activations="expected_average_only_in")
    (folder / "activation_scaler.json").write_text(json.dumps({"scaling_factor": 0.37}))
    sae = load_sae(folder)
    assert sae.norm_scale == pytest.approx(0.37)
    np.testing.assert_allclose(sae.encode(X).numpy(), expected(0.37), **TOL)

    # ... or a user writes SAELens' release-table factor into cfg.json.
    cfg_scale = load_sae(
        write_saelens(
            tmp_path / "cfg",
            t,
            normalize_activations="expected_average_only_in",
            norm_scaling_factor=2.5,
        )
    )
    np.testing.assert_allclose(cfg_scale.encode(X).numpy(), expected(2.5), **TOL)

    # Without a factor SAELens warns and encodes raw inputs; so do we, and say so.
    raw = load_sae(
        write_saelens(tmp_path / "raw", t, normalize_activations="expected_average_only_in")
    )
    np.testing.assert_allclose(raw.encode(X).numpy(), expected(1.0), **TOL)
    assert any("scaling factor" in n for n in raw.info.notes)


def test_center_writing_weights_centres_the_input(tmp_path):
    t = base_tensors(seed=65)
    w = {k: npy(v) for k, v in t.items()}
    meta = {"model_from_pretrained_kwargs": {"center_writing_weights": True}}
    sae = load_sae(write_saelens(tmp_path / "c", t, meta))
    x = npy(X)
    xc = x - x.mean(-1, keepdims=True)
    np.testing.assert_allclose(
        sae.encode(X).numpy(), relu((xc - w["b_dec"]) @ w["W_enc"] + w["b_enc"]), **TOL
    )


def test_pre_6_flat_config_and_metadata(tmp_path):
    t = base_tensors(seed=70)
    w = {k: npy(v) for k, v in t.items()}
    folder = tmp_path / "gpt2-small-res-jb" / "blocks.2.hook_resid_pre"
    folder.mkdir(parents=True)
    save_file(t, str(folder / "sae_weights.safetensors"))
    old = {  # SAELens 3-5 wrote every field at the top level
        "model_name": "gpt2-small",
        "hook_point": "blocks.2.hook_resid_pre",
        "hook_point_layer": 2,
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "activation_fn_str": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "prepend_bos": True,
        "context_size": 128,
        "sae_lens_training_version": "3.1.0",
    }
    (folder / "cfg.json").write_text(json.dumps(old))
    sae = load_sae(folder)
    pre = (npy(X) - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    np.testing.assert_allclose(sae.encode(X).numpy(), topk_ref(pre, 4), **TOL)
    info = sae.info
    assert (info.architecture, info.hook_name, info.layer) == ("topk", "blocks.2.hook_resid_pre", 2)
    assert (info.model_name, info.prepend_bos, info.context_size) == ("gpt2-small", True, 128)
    assert info.sae_id == "gpt2-small-res-jb/blocks.2.hook_resid_pre"
    assert sae.normalize == "none"

    # A v6 metadata block wins, and a neuronpedia id is the SAE's id.
    v6 = load_sae(
        write_saelens(
            tmp_path / "v6", t, {"neuronpedia_id": "gpt2-small/2-res-jb", "context_size": 64}
        )
    )
    assert v6.info.sae_id == "gpt2-small/2-res-jb" and v6.info.context_size == 64


# ------------------------------------------------------------------ sparsify
def write_sparsify(folder: Path, *, seed: int = 80, **cfg) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True, exist_ok=True)
    t = {
        "encoder.weight": rand(D_SAE, D_IN, seed=seed),  # [num_latents, d_in]
        "encoder.bias": rand(D_SAE, seed=seed + 1, scale=0.3),
        "W_dec": rand(D_SAE, D_IN, seed=seed + 2),
        "b_dec": rand(D_IN, seed=seed + 3, scale=0.5),
    }
    if cfg.get("skip_connection"):
        t["W_skip"] = rand(D_IN, D_IN, seed=seed + 4)
    save_file(t, str(folder / "sae.safetensors"))
    full = {
        "activation": "topk",
        "expansion_factor": 32,
        "normalize_decoder": True,
        "num_latents": D_SAE,
        "k": 3,
        "multi_topk": False,
        "skip_connection": False,
        "transcode": False,
        "d_in": D_IN,
        **cfg,
    }
    (folder / "cfg.json").write_text(json.dumps(full))
    return {k: npy(v) for k, v in t.items()}


def test_sparsify_topk_groupmax_and_transcoder(tmp_path):
    x = npy(X)
    w = write_sparsify(tmp_path / "run" / "layers.1")
    (tmp_path / "run" / "config.json").write_text(json.dumps({"model": "tiny-llama"}))
    sae = load_sae(tmp_path / "run" / "layers.1")
    pre = (x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"]
    np.testing.assert_allclose(sae.encode(X).numpy(), topk_ref(relu(pre), 3), **TOL)
    info = sae.info
    assert (info.layout, info.hook_name, info.hook_side, info.model_name) == (
        "sparsify",
        "layers.1",
        "output",
        "tiny-llama",
    )
    # The run folder with exactly one hookpoint loads that hookpoint.
    assert load_sae(tmp_path / "run").info.hook_name == "layers.1"

    w = write_sparsify(tmp_path / "gm" / "layers.2", activation="groupmax", k=4)
    pre = relu((x - w["b_dec"]) @ w["encoder.weight"].T + w["encoder.bias"])
    groups = pre.reshape(*pre.shape[:-1], 4, D_SAE // 4)
    expected = np.where(groups == groups.max(-1, keepdims=True), groups, 0).reshape(pre.shape)
    np.testing.assert_allclose(
        load_sae(tmp_path / "gm" / "layers.2").encode(X).numpy(), expected, **TOL
    )

    w = write_sparsify(tmp_path / "tc" / "layers.1.mlp", transcode=True, skip_connection=True)
    tc = load_sae(tmp_path / "tc" / "layers.1.mlp")
    z = topk_ref(relu(x @ w["encoder.weight"].T + w["encoder.bias"]), 3)  # no b_dec
    zz, recon, _ = tc.forward(X)
    np.testing.assert_allclose(zz.numpy(), z, **TOL)
    np.testing.assert_allclose(
        recon.numpy(), z @ w["W_dec"] + w["b_dec"] + x @ w["W_skip"].T, **TOL
    )
    assert tc.transcoder and tc.info.hook_side == "input"
    assert tc.info.hook_name_out == "layers.1.mlp"
    assert tc.info.architecture == "skip_transcoder"


def test_sparsify_parent_with_several_hookpoints_says_which(tmp_path):
    write_sparsify(tmp_path / "run" / "layers.1")
    write_sparsify(tmp_path / "run" / "layers.2")
    with pytest.raises(DataError, match=r"holds 2 SAEs \(layers\.1, layers\.2\); pass one"):
        load_sae(tmp_path / "run")


# ------------------------------------------------------------------ Gemma Scope
def write_gemmascope(folder: Path, *, seed: int = 90, fmt: str = "npz", d_out: int = D_IN) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    t = {
        "W_enc": rand(D_IN, D_SAE, seed=seed),
        "W_dec": rand(D_SAE, d_out, seed=seed + 1),
        "b_enc": rand(D_SAE, seed=seed + 2, scale=0.3),
        "b_dec": rand(d_out, seed=seed + 3, scale=0.5),
        "threshold": torch.rand(D_SAE, generator=torch.Generator().manual_seed(seed + 4)),
    }
    if fmt == "npz":
        np.savez(folder / "params.npz", **{k: v.numpy() for k, v in t.items()})
    else:
        save_file(t, str(folder / "params.safetensors"))
    return {k: npy(v) for k, v in t.items()}


@pytest.mark.parametrize("fmt", ["npz", "safetensors"])
def test_gemmascope_jumprelu_on_raw_input(tmp_path, fmt):
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_5"
    w = write_gemmascope(folder, fmt=fmt)
    sae = load_sae(folder)
    pre = npy(X) @ w["W_enc"] + w["b_enc"]  # Gemma Scope subtracts no b_dec
    expected = np.where(pre > w["threshold"], relu(pre), 0.0)
    np.testing.assert_allclose(sae.encode(X).numpy(), expected, **TOL)
    info = sae.info
    assert (info.layout, info.architecture, info.layer) == ("gemmascope", "jumprelu", 3)
    assert info.hook_name == "blocks.3.hook_resid_post" and info.model_name == "gemma-2-2b"
    assert info.sae_id == "gemma-scope-2b-pt-res/layer_3/width_16k/average_l0_5"
    assert sae.name == "layer_3-width_16k-average_l0_5"
    assert load_sae(folder / f"params.{fmt}").info.hook_name == info.hook_name


def test_gemmascope_kinds_from_the_path(tmp_path):
    mlp = tmp_path / "gemma-scope-9b-it-mlp" / "layer_2" / "width_16k" / "average_l0_9"
    write_gemmascope(mlp)
    assert load_sae(mlp).info.hook_name == "blocks.2.hook_mlp_out"
    assert load_sae(mlp).info.model_name == "gemma-2-9b-it"
    tc = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_1" / "width_16k" / "average_l0_7"
    write_gemmascope(tc, d_out=D_IN)
    t = load_sae(tc)
    assert t.transcoder and t.info.architecture == "jumprelu_transcoder"
    assert (t.info.hook_name, t.info.hook_name_out) == (
        "blocks.1.ln2.hook_normalized",
        "blocks.1.hook_mlp_out",
    )
    plain = tmp_path / "my-sae" / "layer_4"
    write_gemmascope(plain)
    p = load_sae(plain)
    assert p.info.hook_name == "blocks.4.hook_resid_post" and "assumed" in p.info.notes[0]


# ------------------------------------------------------------------ bad files
def test_bad_files_name_the_key_shape_layout_and_file(tmp_path):
    t = base_tensors()
    t["W_enc"] = rand(D_IN + 1, D_SAE, seed=1)
    folder = write_saelens(tmp_path / "shape", t)
    with pytest.raises(DataError) as e:
        load_sae(folder)
    msg = str(e.value)
    assert "SAELens" in msg and "W_enc has shape (9, 12), expected (8, 12)" in msg
    assert "sae_weights.safetensors" in msg and "architecture standard" in msg

    gated = base_tensors()
    with pytest.raises(DataError, match=r"SAELens .*architecture gated\): missing tensor b_gate"):
        load_sae(write_saelens(tmp_path / "gated", gated, architecture="gated"))
    with pytest.raises(DataError, match="missing tensor threshold"):
        load_sae(write_saelens(tmp_path / "jr", base_tensors(), architecture="jumprelu"))
    with pytest.raises(DataError, match="architecture 'matryoshka' is not supported"):
        load_sae(write_saelens(tmp_path / "arch", base_tensors(), architecture="matryoshka"))
    with pytest.raises(DataError, match="a topk SAE needs k"):
        load_sae(write_saelens(tmp_path / "nok", base_tensors(), architecture="topk"))

    sp = tmp_path / "sp" / "layers.0"
    write_sparsify(sp)
    (sp / "cfg.json").write_text(json.dumps({"d_in": D_IN + 2, "num_latents": D_SAE, "k": 3}))
    with pytest.raises(
        DataError,
        match=r"sparsify SAE file .*sae\.safetensors.*encoder\.weight has shape \(12, 8\), expected \(12, 10\)",
    ):
        load_sae(sp)

    gs = tmp_path / "gemma-scope-2b-pt-res" / "layer_0"
    w = write_gemmascope(gs)
    np.savez(gs / "params.npz", **{**w, "threshold": np.zeros(3)})
    with pytest.raises(
        DataError, match=r"Gemma Scope SAE file .*params\.npz.*threshold has shape \(3,\)"
    ):
        load_sae(gs)

    (tmp_path / "cfgonly").mkdir()
    (tmp_path / "cfgonly" / "cfg.json").write_text("{}")
    with pytest.raises(DataError, match=r"has cfg\.json but no weights"):
        load_sae(tmp_path / "cfgonly")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no SAE found in .*SAELens.*sparsify.*Gemma Scope"):
        load_sae(tmp_path / "empty")


# ------------------------------------------------------------------ hook names → modules
def gemma2_model():
    import transformers as tr

    torch.manual_seed(0)
    cfg = tr.Gemma2Config(
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=1000,
        max_position_embeddings=128,
    )
    return tr.AutoModelForCausalLM.from_config(cfg).eval()


def capture(model, names: list[str]) -> dict[str, np.ndarray]:
    """The activation at each hook name, for one random sequence, via the mapping."""
    points = {n: resolve_hook(model, n) for n in names}
    sources = [
        UnitSource(n, p.layer, p.module_path, p.hook, "module", n) for n, p in points.items()
    ]
    ids = torch.randint(0, 1000, (1, 7), generator=torch.Generator().manual_seed(5))
    with Capture(model, sources, stop_early=False) as cap:
        acts = cap.run(ids, torch.ones_like(ids))
    return {n: a[0].double().numpy() for n, a in zip(names, acts, strict=True)}


EXPECTED_MODULES = {
    "gpt2": {
        "hook_resid_pre": ("transformer.h.1", "input"),
        "hook_resid_mid": ("transformer.h.1.ln_2", "input"),
        "ln2.hook_normalized": ("transformer.h.1.mlp", "input"),
        "hook_mlp_out": ("transformer.h.1.mlp", "output"),
        "attn.hook_z": ("transformer.h.1.attn.c_proj", "input"),
    },
    "llama": {
        "hook_resid_mid": ("model.layers.1.post_attention_layernorm", "input"),
        "hook_mlp_in": ("model.layers.1.post_attention_layernorm", "input"),
        "hook_attn_out": ("model.layers.1.self_attn", "output"),
        "mlp.hook_post": ("model.layers.1.mlp.down_proj", "input"),
    },
    "qwen2": {
        "hook_resid_post": ("model.layers.1", "output"),
        "ln2.hook_normalized": ("model.layers.1.mlp", "input"),
    },
    "gemma2": {
        "hook_resid_mid": ("model.layers.1.pre_feedforward_layernorm", "input"),
        "hook_attn_out": ("model.layers.1.post_attention_layernorm", "output"),
        "hook_mlp_out": ("model.layers.1.post_feedforward_layernorm", "output"),
        "ln2.hook_normalized": ("model.layers.1.mlp", "input"),
    },
}


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen2", "gemma2"])
def test_transformerlens_hooks_map_to_modules_with_the_right_values(family):
    model = gemma2_model() if family == "gemma2" else tiny_model(family)
    for rest, (path, side) in EXPECTED_MODULES[family].items():
        p = resolve_hook(model, f"blocks.1.{rest}")
        assert (p.module_path, p.hook, p.layer) == (path, side, 1), rest

    # The residual identities TransformerLens' hooks obey, measured through the mapping.
    names = ["hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_in"]
    names += ["ln2.hook_normalized", "hook_mlp_out", "hook_resid_post"]
    a = capture(model, [f"blocks.1.{n}" for n in names] + ["blocks.0.hook_resid_post"])
    g = {n: a[f"blocks.1.{n}"] for n in names}
    np.testing.assert_allclose(g["hook_resid_pre"], a["blocks.0.hook_resid_post"], atol=1e-5)
    np.testing.assert_allclose(
        g["hook_resid_pre"] + g["hook_attn_out"], g["hook_resid_mid"], atol=1e-4
    )
    np.testing.assert_allclose(
        g["hook_resid_mid"] + g["hook_mlp_out"], g["hook_resid_post"], atol=1e-4
    )
    np.testing.assert_allclose(g["hook_mlp_in"], g["hook_resid_mid"], atol=1e-6)
    ln2 = {"gpt2": "ln_2", "gemma2": "pre_feedforward_layernorm"}.get(
        family, "post_attention_layernorm"
    )
    block = get_module(model, resolve_hook(model, "blocks.1.hook_resid_post").module_path)
    with torch.no_grad():
        normed = getattr(block, ln2)(torch.tensor(g["hook_resid_mid"]).float()).double().numpy()
    np.testing.assert_allclose(g["ln2.hook_normalized"], normed, atol=1e-4)


def test_parallel_residual_and_module_paths():
    neox = tiny_model("gpt_neox")  # Pythia-style: attention and MLP both read the block input
    a = capture(
        neox,
        [
            f"blocks.1.{n}"
            for n in (
                "hook_resid_pre",
                "hook_attn_out",
                "hook_mlp_out",
                "hook_resid_post",
                "hook_mlp_in",
            )
        ],
    )
    np.testing.assert_allclose(
        a["blocks.1.hook_resid_pre"] + a["blocks.1.hook_attn_out"] + a["blocks.1.hook_mlp_out"],
        a["blocks.1.hook_resid_post"],
        atol=1e-4,
    )
    np.testing.assert_allclose(a["blocks.1.hook_mlp_in"], a["blocks.1.hook_resid_pre"], atol=1e-6)
    with pytest.raises(ConfigError, match="parallel residual"):
        resolve_hook(neox, "blocks.1.hook_resid_mid")

    gpt2, llama = tiny_model("gpt2"), tiny_model("llama")
    assert resolve_hook(gpt2, "h.1").module_path == "transformer.h.1"  # sparsify hookpoints
    p = resolve_hook(llama, "layers.2.mlp", side="input")
    assert (p.module_path, p.hook, p.layer) == ("model.layers.2.mlp", "input", 2)
    assert resolve_hook(llama, "embed_tokens").layer is None
    with pytest.raises(ConfigError, match="layer 7 out of range"):
        resolve_hook(llama, "blocks.7.hook_resid_pre")
    with pytest.raises(ConfigError, match="not supported"):
        resolve_hook(llama, "blocks.1.attn.hook_pattern")
    with pytest.raises(ConfigError, match="no such module"):
        resolve_hook(llama, "layers.1.nope")


# ------------------------------------------------------------------ recording from a folder
REC = dict(
    max_tokens=240,
    excerpt_len=16,
    min_excerpt_len=4,
    batch_size=8,
    n_top=4,
    n_random=3,
    n_quantiles=2,
    per_quantile=2,
)
REC_FLAGS = [
    "--max-tokens",
    "240",
    "--excerpt-len",
    "16",
    "--batch-size",
    "8",
    "--top",
    "4",
    "--random",
    "3",
    "--quantiles",
    "2",
    "--per-quantile",
    "2",
    "--device",
    "cpu",
    "--max-units",
    "0",
]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny-llama", "llama", hidden_act="relu")


def windows() -> list[list[int]]:
    tok = embedded_tokenizer()
    return list(
        iter_windows(
            open_corpus("builtin").texts(),
            tok,
            length=REC["excerpt_len"],
            min_length=REC["min_excerpt_len"],
            max_tokens=REC["max_tokens"],
        )
    )


def hooked(model, module, hook: str, prefix: list[int]) -> list[np.ndarray]:
    """The activation at a module for each window (prefix fed, then dropped), one unpadded
    forward of the base model (no LM head: it is not needed and costs the most) each."""
    fed = [prefix + w for w in windows()]
    return [b[len(prefix) :] for b in brute_force(model.base_model, module, fed, hook=hook)]


def fvu(target: np.ndarray, recon: np.ndarray) -> float:
    return float(((target - recon) ** 2).sum() / ((target - target.mean(0)) ** 2).sum())


def check_records(files: list[Path], latents: list[np.ndarray], n: int) -> None:
    recs = read_jsonl(files[0], NeuronRecord)
    assert [r.index for r in recs] == list(range(n))
    values = np.concatenate(latents)  # [tokens, d_sae]
    assert 0.05 < np.mean(values != 0) < 0.95  # a comparison of mostly zeros would prove little
    for r in recs:
        v = values[:, r.index]
        assert r.mean == pytest.approx(v.mean(), rel=1e-4, abs=1e-6)
        assert r.max_activation == pytest.approx(v.max(), rel=1e-4, abs=1e-6)
        assert r.frac_nonzero == pytest.approx(np.mean(v != 0), abs=2 / len(v))
        top = r.most_positive_activation_records[0]
        best = int(np.argmax([b[:, r.index].max() for b in latents]))
        np.testing.assert_allclose(top.activations, latents[best][:, r.index], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_record_cli_from_a_saelens_folder_alone(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    t = {
        "W_enc": rand(32, 24, seed=1),
        "b_enc": rand(24, seed=2, scale=0.5),
        "W_dec": rand(24, 32, seed=3, scale=0.2),
        "b_dec": rand(32, seed=4, scale=0.1),
        "threshold": torch.rand(24, generator=torch.Generator().manual_seed(5)),
    }
    folder = tmp_path / "tiny-res" / "blocks.1.hook_resid_mid"
    meta = {
        "hook_name": "blocks.1.hook_resid_mid",
        "model_name": "tiny-llama",
        "neuronpedia_id": "tiny-llama/1-res",
    }
    write_saelens(folder, t, meta, architecture="jumprelu", d_in=32, d_sae=24)
    run_cli(
        "record",
        "--sae",
        str(folder),
        "--model",
        str(llama_dir),
        "--out",
        str(tmp_path / "run"),
        *REC_FLAGS,
    )

    w = {k: npy(v) for k, v in t.items()}
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    bos = embedded_tokenizer().bos_token_id  # prepend_bos: true, and this tokenizer adds none
    xs = hooked(model, model.model.layers[1].post_attention_layernorm, "input", [bos])

    def encode(x: np.ndarray) -> np.ndarray:
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        return np.where(pre > w["threshold"], relu(pre), 0.0)

    latents = [encode(x) for x in xs]
    files = sorted((tmp_path / "run" / "records").glob("*.jsonl"))
    assert [f.name for f in files] == ["layer-01-sae-blocks.1.hook_resid_mid.jsonl"]
    check_records(files, latents, 24)

    manifest = RunManifest.model_validate_json((tmp_path / "run" / "manifest.json").read_text())
    entry = manifest.stages["record"]["units"][0]
    assert entry["sae"] == str(folder) and entry["sae_id"] == "tiny-llama/1-res"
    assert (entry["sae_layout"], entry["sae_architecture"], entry["sae_activation"]) == (
        "saelens",
        "jumprelu",
        "jumprelu",
    )
    assert entry["hook_name"] == "blocks.1.hook_resid_mid"
    assert (entry["module"], entry["hook"]) == ("model.layers.1.post_attention_layernorm", "input")
    assert entry["sae_input"]["prepend_bos"] is True and "sae_notes" not in entry
    x_all = np.concatenate(xs)
    recon = np.concatenate(latents) @ w["W_dec"] + w["b_dec"]
    check = entry["reconstruction"]
    assert check["n_tokens"] == len(x_all) == REC["max_tokens"]
    assert check["fvu"] == pytest.approx(fvu(x_all, recon), rel=1e-3)


@pytest.mark.slow
def test_record_sparsify_transcoder_records_both_sides(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    folder = tmp_path / "tc-run" / "layers.1.mlp"
    folder.mkdir(parents=True)
    t = {
        "encoder.weight": rand(40, 32, seed=11),
        "encoder.bias": rand(40, seed=12, scale=0.2),
        "W_dec": rand(40, 32, seed=13, scale=0.3),
        "b_dec": rand(32, seed=14, scale=0.1),
    }
    save_file(t, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(
        json.dumps({"d_in": 32, "num_latents": 40, "k": 6, "activation": "topk", "transcode": True})
    )
    (folder.parent / "config.json").write_text(json.dumps({"model": "someone/other-model"}))
    s = record_run(
        tmp_path / "run",
        sae=str(folder.parent),
        model=str(llama_dir),
        device="cpu",
        max_units=None,
        **REC,
    )

    w = {k: npy(v) for k, v in t.items()}
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    mlp = model.model.layers[1].mlp
    ins, outs = hooked(model, mlp, "input", []), hooked(model, mlp, "output", [])
    latents = [topk_ref(relu(x @ w["encoder.weight"].T + w["encoder.bias"]), 6) for x in ins]
    check_records(s.files, latents, 40)

    entry = RunManifest.model_validate_json(
        (tmp_path / "run" / "manifest.json").read_text()
    ).stages["record"]["units"][0]
    assert entry["transcoder"] is True and entry["sae_layout"] == "sparsify"
    assert entry["hook_name"] == "layers.1.mlp" and entry["sae_id"] == "tc-run/layers.1.mlp"
    assert entry["sae_reads"] == {
        "module": "model.layers.1.mlp",
        "hook": "input",
        "hook_name": "layers.1.mlp",
    }
    assert entry["sae_reconstructs"] == {
        "module": "model.layers.1.mlp",
        "hook": "output",
        "hook_name": "layers.1.mlp",
    }
    recon = np.concatenate(latents) @ w["W_dec"] + w["b_dec"]
    assert entry["reconstruction"]["fvu"] == pytest.approx(
        fvu(np.concatenate(outs), recon), rel=1e-3
    )
    assert entry["reconstruction"]["target"] == "transcoder target"
    assert any("other-model" in n for n in entry["sae_notes"])  # a warning, not an error


def write_gemma_mlp(root: Path) -> tuple[Path, dict[str, np.ndarray]]:
    folder = root / "gemma-scope-2b-pt-mlp" / "layer_2" / "width_16k" / "average_l0_3"
    folder.mkdir(parents=True)
    t = {
        "W_enc": rand(32, 16, seed=21),
        "W_dec": rand(16, 32, seed=22),
        "b_enc": rand(16, seed=23, scale=0.3),
        "b_dec": rand(32, seed=24, scale=0.1),
        "threshold": torch.rand(16, generator=torch.Generator().manual_seed(25)) * 0.5,
    }
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in t.items()})
    return folder, {k: npy(v) for k, v in t.items()}


@pytest.mark.slow
def test_record_gemmascope_npz(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    folder, w = write_gemma_mlp(tmp_path)
    s = record_run(
        tmp_path / "run",
        sae=str(folder / "params.npz"),
        model=str(llama_dir),
        device="cpu",
        max_units=None,
        **REC,
    )
    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    bos = embedded_tokenizer().bos_token_id
    xs = hooked(model, model.model.layers[2].mlp, "output", [bos])  # hook_mlp_out
    pre = [x @ w["W_enc"] + w["b_enc"] for x in xs]
    check_records(s.files, [np.where(p > w["threshold"], relu(p), 0.0) for p in pre], 16)
    entry = RunManifest.model_validate_json((tmp_path / "run" / "manifest.json").read_text())
    unit = entry.stages["record"]["units"][0]
    assert (unit["sae_layout"], unit["hook_name"]) == ("gemmascope", "blocks.2.hook_mlp_out")
    assert unit["sae_id"] == "gemma-scope-2b-pt-mlp/layer_2/width_16k/average_l0_3"
    assert unit["sae_input"]["subtract_b_dec"] is False
    assert any("gemma-2-2b" in n for n in unit["sae_notes"])  # trained on another model


def test_flags_that_conflict_with_the_sae_folder(tmp_path):
    from neuroscribe.datasets.units import build_sources

    folder, _ = write_gemma_mlp(tmp_path)
    sae, model = load_sae(folder), tiny_model("llama", vocab_size=64)

    def build(**kw):
        return build_sources(model, unit_type="sae", sae=sae, layers=kw.pop("layers", None), **kw)

    (src,) = build()
    assert (src.module_path, src.hook, src.layer_index) == ("model.layers.2.mlp", "output", 2)
    assert build(layers=[2], module="mlp", hook="output", hook_given=True)[0].module_path == (
        src.module_path
    )
    for kw, what in (
        ({"layers": [0]}, "--layers 0 conflicts with the SAE's hook 'blocks.2.hook_mlp_out'"),
        ({"module": "self_attn"}, "--module 'self_attn' conflicts"),
        ({"hook": "input", "hook_given": True}, "--hook input conflicts"),
    ):
        with pytest.raises(ConfigError, match=re.escape(what)):
            build(**kw)
    # --sae-hook reads elsewhere on purpose.
    (other,) = build(sae_hook="blocks.0.hook_resid_post", layers=[0])
    assert (other.module_path, other.hook) == ("model.layers.0", "output")
    # A folder that does not say its layer needs one --layers value.
    plain = tmp_path / "plain"
    write_gemmascope(plain, d_out=D_IN)
    nolayer = load_sae(plain)
    assert nolayer.info.hook_name == "blocks.{layer}.hook_resid_post"
    with pytest.raises(ConfigError, match="does not say which layer it reads"):
        build_sources(model, unit_type="sae", sae=nolayer, layers=None)
    (one,) = build_sources(model, unit_type="sae", sae=nolayer, layers=[1])
    assert (one.module_path, one.hook_name) == ("model.layers.1", "blocks.1.hook_resid_post")


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_record_cli_conflicts_are_errors(tmp_path, llama_dir):
    folder, _ = write_gemma_mlp(tmp_path)
    for flags, what in (
        (["--layers", "0"], "--layers 0 conflicts with the SAE's hook"),
        (["--unit-type", "mlp"], "drop --unit-type mlp"),
    ):
        r = run_cli(
            "record",
            "--sae",
            str(folder),
            "--model",
            str(llama_dir),
            "--out",
            str(tmp_path / "bad"),
            *flags,
            *REC_FLAGS,
            check=False,
        )
        assert r.returncode == 1 and what in " ".join(r.stderr.split()), r.stderr
        assert not (tmp_path / "bad" / "manifest.json").exists()


@pytest.mark.slow
def test_record_cli_single_file_with_sae_k_still_works(tmp_path, llama_dir):
    g = torch.Generator().manual_seed(0)
    save_file(
        {
            "W_enc": torch.randn(32, 20, generator=g),
            "b_enc": torch.zeros(20),
            "b_dec": torch.zeros(32),
        },
        str(tmp_path / "old.safetensors"),
    )
    run_cli(
        "record",
        "--sae",
        str(tmp_path / "old.safetensors"),
        "--sae-k",
        "3",
        "--layers",
        "1",
        "--model",
        str(llama_dir),
        "--out",
        str(tmp_path / "run"),
        *REC_FLAGS,
    )
    entry = RunManifest.model_validate_json(
        (tmp_path / "run" / "manifest.json").read_text()
    ).stages["record"]["units"][0]
    assert (entry["sae_layout"], entry["sae_activation"], entry["hook_name"]) == (
        "safetensors",
        "topk(3)",
        None,
    )
    assert entry["module"] == "model.layers.1" and entry["reconstruction"] == {
        "skipped": "the SAE file has no decoder weights (W_dec)"
    }
