"""`UnitProbe`: a recorded unit's real activations on new texts, as the recorder makes them.

What a user (a revision explainer) would notice: probing the text of a recorded excerpt
gives back that excerpt's tokens and activations; the numbers depend on the text and on
the unit; an API subject model, an empty text or a broken model are clear errors, never
made-up numbers.

The recordings use the embedded SmolLM2 on a corpus of short standalone documents, each
shorter than one excerpt: every recorded excerpt is then a whole document, read by the
model with nothing before it (except the recorder's prefix), which is exactly what the
probe does with that text. So the comparison is like for like: same tokens, same
context, same hook; only the batch composition (padding) differs.
"""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from _record_helpers import brute_force, embedded_tokenizer, tiny_model
from neuroscribe.datasets.probe import UnitProbe
from neuroscribe.datasets.record import record_run
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.llm.local import ModelStore, load_local_model
from neuroscribe.schema import NeuronRecord, RunManifest

DOCS = [
    "The cat sat on the mat and looked at the dog.",
    "import numpy as np\nx = np.zeros(3)",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "She sells sea shells by the sea shore.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "The quick brown fox jumps over the lazy dog.",
    "def add(a, b):\n    return a + b",
    "Rain fell all night; by morning the river had burst its banks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "He said: \"I'll be there at 5 o'clock.\"",
]
LAYER = 1
REC = dict(
    max_tokens=10_000,
    excerpt_len=32,  # longer than every document: one excerpt per document
    min_excerpt_len=1,
    batch_size=3,
    n_top=4,
    n_random=3,
    n_quantiles=0,
    max_units=4,
    device="cpu",
)
TOL = 1e-4  # float32 on CPU; only the padding of the batches differs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "docs.txt"
    path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    tok = embedded_tokenizer()
    assert all(
        len(tok(d, add_special_tokens=False)["input_ids"]) < REC["excerpt_len"] for d in DOCS
    )
    return path


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory, corpus):
    out = tmp_path_factory.mktemp("mlp") / "run"
    summary = record_run(out, layers=[LAYER], corpus=str(corpus), **REC)
    return out, read_jsonl(summary.files[0], NeuronRecord)


@pytest.fixture(scope="module")
def store():
    return ModelStore()  # this module's own copy of the embedded model


def _max_diff(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


@pytest.mark.slow  # records and reruns the embedded model: in CI's slow half
def test_probing_recorded_excerpts_gives_back_their_tokens_and_activations(
    mlp_run, store, monkeypatch
):
    import neuroscribe.datasets.probe as probe_module

    run, records = mlp_run
    reads = []
    read = probe_module._manifest
    monkeypatch.setattr(probe_module, "_manifest", lambda d: reads.append(d) or read(d))
    probe = UnitProbe(run_dir=run, device="cpu", store=store)
    worst = 0.0
    for rec in records[:2]:
        excerpts = rec.most_positive_activation_records + rec.random_sample
        texts = ["".join(e.tokens) for e in excerpts]
        assert all(t in DOCS for t in texts)  # whole documents: the same context as recorded
        got = probe.activations(rec, texts)
        for e, g in zip(excerpts, got, strict=True):
            assert g.tokens == e.tokens
            worst = max(worst, _max_diff(g.activations, e.activations))
    assert worst < TOL, worst
    assert len(reads) == 1  # the manifest once for every unit, until it changes:
    manifest = run / "manifest.json"
    manifest.write_text(manifest.read_text() + "\n")
    probe.activations(records[0], ["a changed manifest is read again"])
    assert len(reads) == 2

    # And against a forward pass written here (no recorder code): the input of layer 1's
    # down projection, on a text the recording never saw.
    text = "Probing a neuron on a sentence it has never read."
    rec = records[1]
    loaded = load_local_model("hf:embedded", device="cpu", dtype="float32", store=store)
    ids = loaded.tokenizer(text, add_special_tokens=False)["input_ids"]
    (direct,) = brute_force(loaded.model, loaded.model.model.layers[LAYER].mlp.down_proj, [ids])
    (got,) = probe.activations(rec, [text])
    assert "".join(got.tokens) == text
    assert _max_diff(got.activations, direct[:, rec.index]) < TOL


def test_activations_depend_on_the_text_and_the_unit(mlp_run, store):
    _, records = mlp_run
    # No run directory: the record's model name (the embedded model) is enough.
    probe = UnitProbe(device="cpu", store=store)
    a, b = records[0], records[1]
    assert (a.layer, a.index, b.layer, b.index) == (LAYER, 0, LAYER, 1)
    texts = ["The cat sat on the mat.", "The dog ran in the park."]
    pa = probe.activations(a, texts)
    assert not np.allclose(pa[0].activations[1:], pa[1].activations[1:])  # " cat" vs " dog" ...
    pb = probe.activations(b, texts)
    assert pa[0].tokens == pb[0].tokens
    assert not np.allclose(pa[0].activations, pb[0].activations)  # same text, other neuron
    # The async wrapper gives the same numbers.
    again = asyncio.run(probe.activations_async(b, texts))
    assert [r.activations for r in again] == [r.activations for r in pb]


def test_truncation_keeps_the_first_tokens_and_their_values(mlp_run, store):
    _, records = mlp_run
    text = " ".join(["word"] * 40)
    (full,) = UnitProbe(device="cpu", store=store).activations(records[0], [text])
    assert len(full.tokens) == 40
    (cut,) = UnitProbe(device="cpu", store=store, max_tokens=5).activations(records[0], [text])
    assert cut.tokens == full.tokens[:5]
    # A causal model: later tokens never change earlier activations.
    assert _max_diff(cut.activations, full.activations[:5]) < TOL


@pytest.mark.slow
def test_api_models_empty_texts_and_non_finite_activations_are_errors(mlp_run, store, tmp_path):
    _, records = mlp_run
    api = NeuronRecord(unit_id="gpt-4o-mini/1/3", model="gpt-4o-mini", layer=1, index=3)
    with pytest.raises(ConfigError, match="API model"):
        UnitProbe(device="cpu", store=store).activations(api, ["hello"])
    with pytest.raises(ConfigError, match="local model"):
        UnitProbe(subject="gpt-4o-mini")

    probe = UnitProbe(device="cpu", store=store)
    with pytest.raises(DataError, match=r"text 1 is empty"):
        probe.activations(records[0], ["fine", ""])
    with pytest.raises(DataError, match="list of texts"):
        probe.activations(records[0], "one string")
    assert probe.activations(records[0], []) == []
    beyond = records[0].model_copy(update={"index": 10**6})
    with pytest.raises(DataError, match="index 1000000 of"):
        probe.activations(beyond, ["fine"])

    # A model whose MLP gives NaN: the error names the unit and the text, no zeros appear.
    tok = embedded_tokenizer()
    model = tiny_model("llama", vocab_size=len(tok))
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.fill_(float("nan"))
    folder = tmp_path / "nan-llama"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rec = NeuronRecord(unit_id="nan-llama/0/3", model="nan-llama", layer=0, index=3)
    with pytest.raises(DataError, match=r"nan-llama/0/3.*text 0"):
        UnitProbe(subject=str(folder), device="cpu", store=store).activations(rec, ["a b c"])


@pytest.mark.slow  # records and reruns the embedded model: in CI's slow half
def test_sae_latents_match_the_recording_with_its_bos_prefix(tmp_path, corpus, store):
    # A SAELens folder on SmolLM2's residual stream after block 1, trained (it says) with a
    # BOS token in front: the recorder then prefixes every excerpt with BOS, and so must
    # the probe (SmolLM2's tokenizer adds none by itself).
    d_in, d_sae = 576, 16
    g = torch.Generator().manual_seed(0)
    folder = tmp_path / "sae"
    folder.mkdir()
    save_file(
        {
            "W_enc": torch.randn(d_in, d_sae, generator=g) * 0.05,
            "b_enc": torch.randn(d_sae, generator=g) * 0.1,
            "W_dec": torch.randn(d_sae, d_in, generator=g) * 0.05,
            "b_dec": torch.randn(d_in, generator=g) * 0.1,
        },
        str(folder / "sae_weights.safetensors"),
    )
    cfg = {
        "architecture": "standard",
        "d_in": d_in,
        "d_sae": d_sae,
        "dtype": "float32",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "metadata": {
            "model_name": "smollm2-135m-instruct",
            "hook_name": f"blocks.{LAYER}.hook_resid_post",
            "prepend_bos": True,
        },
    }
    (folder / "cfg.json").write_text(json.dumps(cfg))
    run = tmp_path / "run"
    summary = record_run(run, sae=str(folder), corpus=str(corpus), **{**REC, "max_units": None})
    manifest = RunManifest.model_validate_json((run / "manifest.json").read_text())
    assert manifest.stages["record"]["excluded_prefix_tokens"] == 1

    probe = UnitProbe(run_dir=run, device="cpu", store=store)
    records = read_jsonl(summary.files[0], NeuronRecord)
    firing = [r for r in records if (r.max_activation or 0) > 0][:3]
    assert firing  # a comparison of zeros would prove little
    worst = 0.0
    for rec in firing:
        excerpts = rec.most_positive_activation_records
        got = probe.activations(rec, ["".join(e.tokens) for e in excerpts])
        for e, g_ in zip(excerpts, got, strict=True):
            assert g_.tokens == e.tokens
            worst = max(worst, _max_diff(g_.activations, e.activations))
    assert worst < TOL, worst


@pytest.mark.slow  # reruns the embedded model on other units' excerpts
def test_other_unit_negatives_are_other_units_excerpts_where_this_one_stays_quiet(mlp_run, store):
    # Detection's other-unit negatives (neuroscribe.scorer.other_units) with the real probe.
    import random

    from neuroscribe.scorer.other_units import OtherUnitNegatives, own_texts

    run, records = mlp_run
    probe = UnitProbe(run_dir=run, device="cpu", store=store, max_tokens=512)
    for rec in records[:2]:
        threshold = 0.2 * max(x.max_activation for x in rec.most_positive_activation_records)
        finder = OtherUnitNegatives(3, run_dir=run, probe=probe)
        found = asyncio.run(finder.find(rec, random.Random(0), threshold))
        assert found.excerpts, found.details  # the recording gives each of these one
        others: dict[str, set[str]] = {}
        for r in records:
            for x in r.most_positive_activation_records:
                if r.unit_id != rec.unit_id:
                    others.setdefault("".join(x.tokens), set()).add(r.unit_id)
        for x in found.excerpts:
            text = "".join(x.record.tokens)
            source = x.excerpt_id.split(":")[1]  # other:<unit id>:top:<i>
            assert source in others[text] and text not in own_texts(rec)
            # The unit's real activations there, and quiet: at most the threshold.
            assert max(x.record.activations) <= threshold
            (again,) = probe.activations(rec, [text])
            assert _max_diff(again.activations, x.record.activations) < TOL
        d = found.details
        assert d["n_other_probed"] >= d["n_other_unit_negatives"] + d["n_other_rejected"]
        # Nearest output directions first (the MLP neurons' down-projection columns).
        assert d["other_order"] == "neighbours"
        assert d["other_cosines"] == sorted(d["other_cosines"], reverse=True)
        own = probe.direction(rec)
        for x, c in zip(found.excerpts, d["other_cosines"], strict=True):
            other = next(r for r in records if r.unit_id == x.excerpt_id.split(":")[1])
            v = probe.direction(other)
            assert abs(float(v @ own / (v.norm() * own.norm())) - c) < 1e-3
