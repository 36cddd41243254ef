"""`record_run` on tiny random-weight models: exact against brute force, resumable, safe on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from safetensors.torch import save_file

from _record_helpers import SMALL_RECORDING, brute_force, embedded_tokenizer, tiny_model_dir
from neuroscribe.datasets.corpus import open_corpus
from neuroscribe.datasets.record import CHECKPOINT_DIR, RecordConfig, record_run
from neuroscribe.datasets.windows import TokenStrings, iter_windows
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.schema import NeuronRecord, RunManifest

SMALL = SMALL_RECORDING


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory) -> Path:
    # ReLU so that exact zeros occur and frac_nonzero means something.
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny-llama", "llama", hidden_act="relu")


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("m") / "tiny-gpt2", "gpt2")


def _windows(cfg: dict) -> list[list[int]]:
    return list(
        iter_windows(
            open_corpus(cfg.get("corpus", "builtin")).texts(),
            embedded_tokenizer(),
            length=cfg["excerpt_len"],
            min_length=cfg["min_excerpt_len"],
            max_tokens=cfg["max_tokens"],
        )
    )


def _match(tokens: list[str], acts: list[float], u: int, strings, windows, brute) -> int:
    """Index of the brute-force excerpt with these tokens and (close) activations."""
    if not hasattr(strings, "index"):
        strings.index = {}
        for e, w in enumerate(windows):
            strings.index.setdefault(tuple(strings(w)), []).append(e)
    for e in strings.index.get(tuple(tokens), []):
        if np.allclose(acts, brute[e][:, u], rtol=1e-4, atol=1e-5):
            return e
    raise AssertionError(f"excerpt {''.join(tokens)[:60]!r} matches no brute-force excerpt")


# The llama family runs in the fast suite; the gpt2 one (a second architecture) in CI.
@pytest.mark.parametrize("family", ["llama", pytest.param("gpt2", marks=pytest.mark.slow)])
def test_records_match_brute_force(tmp_path, family, llama_dir, gpt2_dir):
    from transformers import AutoModelForCausalLM

    from neuroscribe.datasets.units import get_module, mlp_neuron_path

    mdir = llama_dir if family == "llama" else gpt2_dir
    summary = record_run(tmp_path / "run", model=str(mdir), layers=[0, 2], **SMALL)
    windows = _windows(SMALL)
    assert summary.n_excerpts == len(windows)
    assert summary.n_tokens == sum(len(w) for w in windows) == SMALL["max_tokens"]
    model = AutoModelForCausalLM.from_pretrained(mdir).eval()
    strings = TokenStrings(embedded_tokenizer())

    for layer, path in zip([0, 2], summary.files, strict=True):
        assert path.name == f"layer-{layer:02d}.jsonl"
        records = read_jsonl(path, NeuronRecord)
        brute = brute_force(model, get_module(model, mlp_neuron_path(model, layer)), windows)
        width = brute[0].shape[1]
        assert [r.index for r in records] == list(range(width))
        maxes = np.array([b.max(axis=0) for b in brute])  # [excerpts, units]
        for r in records:
            u = r.index
            assert r.unit_id == f"{mdir.name}/{layer}/{u}" and r.layer == layer
            values = np.concatenate([b[:, u] for b in brute])
            assert r.mean == pytest.approx(values.mean(), rel=1e-4, abs=1e-7)
            assert r.variance == pytest.approx(values.var(), rel=1e-4, abs=1e-9)
            assert r.skewness == pytest.approx(scipy.stats.skew(values), rel=1e-3, abs=1e-5)
            assert r.kurtosis == pytest.approx(scipy.stats.kurtosis(values), rel=1e-3, abs=1e-5)
            assert r.max_activation == pytest.approx(values.max(), rel=1e-5)
            assert r.frac_nonzero == pytest.approx(np.mean(values != 0), abs=1e-12)

            # Top excerpts: the n_top largest per-excerpt maxima, strongest first.
            expected = np.sort(maxes[:, u])[::-1][: SMALL["n_top"]]
            got = [max(a.activations) for a in r.most_positive_activation_records]
            np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
            for a in r.most_positive_activation_records:
                _match(a.tokens, a.activations, u, strings, windows, brute)

            # Random sample: distinct real excerpts.
            idx = [
                _match(a.tokens, a.activations, u, strings, windows, brute) for a in r.random_sample
            ]
            assert len(r.random_sample) == SMALL["n_random"]

            # Quantile samples: every excerpt sits in its bin; bins are as full as they can be.
            levels = np.linspace(0, 1, SMALL["n_quantiles"] + 1)
            np.testing.assert_allclose(
                r.quantile_boundaries, np.quantile(maxes[:, u], levels), rtol=1e-4, atol=1e-6
            )
            b = np.array(r.quantile_boundaries)
            bins = np.clip(np.searchsorted(b, maxes[:, u], side="right") - 1, 0, len(b) - 2)
            assert len(r.random_sample_by_quantile) == SMALL["n_quantiles"]
            for q, sample in enumerate(r.random_sample_by_quantile):
                idx = [_match(a.tokens, a.activations, u, strings, windows, brute) for a in sample]
                assert len(set(idx)) == len(idx)
                for e in idx:
                    assert b[q] - 1e-5 <= maxes[e, u] <= b[q + 1] + 1e-5
                near_edge = np.min(np.abs(maxes[:, u][:, None] - b[None, :])) < 1e-5
                if not near_edge:
                    assert len(sample) == min(SMALL["per_quantile"], int((bins == q).sum()))


@pytest.mark.slow  # several recordings: seconds each
def test_manifest_and_determinism(tmp_path, llama_dir):
    a = record_run(tmp_path / "a", model=str(llama_dir), layers=[1], **SMALL)
    b = record_run(tmp_path / "b", model=str(llama_dir), layers=[1], **SMALL)
    c = record_run(tmp_path / "c", model=str(llama_dir), layers=[1], **{**SMALL, "seed": 7})
    assert a.files[0].read_bytes() == b.files[0].read_bytes()
    ra, rc = read_jsonl(a.files[0], NeuronRecord), read_jsonl(c.files[0], NeuronRecord)
    assert [x.most_positive_activation_records for x in ra] == [
        x.most_positive_activation_records for x in rc
    ]
    assert [x.random_sample for x in ra] != [x.random_sample for x in rc]

    m = RunManifest.model_validate_json((tmp_path / "a" / "manifest.json").read_text())
    st = m.stages["record"]
    assert m.subject["model"] == llama_dir.name and m.subject["model_type"] == "llama"
    assert st["status"] == "complete" and st["n_tokens"] == SMALL["max_tokens"] and st["seed"] == 0
    assert (
        st["units"][0]["module"] == "model.layers.1.mlp.down_proj"
        and st["units"][0]["n_units"] == 48
    )
    assert st["corpus"]["kind"] == "builtin" and "torch" in st["versions"]
    assert not (tmp_path / "a" / CHECKPOINT_DIR).exists()

    # Same options again: nothing to do. Other options into the same run: refused.
    assert record_run(tmp_path / "a", model=str(llama_dir), layers=[1], **SMALL).skipped
    with pytest.raises(ConfigError, match="other options"):
        record_run(tmp_path / "a", model=str(llama_dir), layers=[1], **{**SMALL, "n_top": 3})


def test_manifest_keeps_other_stages(tmp_path, llama_dir):
    from neuroscribe.jsonl import write_json_atomic

    run = tmp_path / "run"
    write_json_atomic(run / "manifest.json", RunManifest(stages={"explain": {"explainer": "x"}}))
    record_run(run, model=str(llama_dir), layers=[0], **{**SMALL, "max_units": 4})
    m = RunManifest.model_validate_json((run / "manifest.json").read_text())
    assert m.stages["explain"] == {"explainer": "x"} and "record" in m.stages


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_interrupted_recording_resumes_to_the_same_records(tmp_path, llama_dir):
    opts = {
        **SMALL,
        "checkpoint_every": 2,
        "checkpoint_seconds": 0,
        "pool_size": 7,
    }  # a real reservoir: 7 < excerpts
    full = record_run(tmp_path / "full", model=str(llama_dir), layers=[0, 2], **opts)

    class Stop(Exception):
        pass

    def stop_after_5(p):
        if p.batches == 5:
            raise Stop

    run = tmp_path / "run"
    with pytest.raises(Stop):
        record_run(run, model=str(llama_dir), layers=[0, 2], progress=stop_after_5, **opts)
    assert (run / CHECKPOINT_DIR / "state.pt").exists()
    assert not list((run).glob("records/*.jsonl"))  # nothing half-written

    with pytest.raises(ConfigError, match="checkpoint"):
        record_run(run, model=str(llama_dir), layers=[0, 2], **{**opts, "seed": 1})
    resumed = record_run(run, model=str(llama_dir), layers=[0, 2], **opts)
    assert resumed.resumed_from == 4 * opts["batch_size"]
    for f, g in zip(full.files, resumed.files, strict=True):
        assert f.read_bytes() == g.read_bytes()
    assert not (run / CHECKPOINT_DIR).exists()


@pytest.mark.slow  # two recordings
def test_recompute_path_equals_kept_pool(tmp_path, llama_dir):
    """With no memory for the pool's activations they are recomputed: same records."""
    kept = record_run(tmp_path / "a", model=str(llama_dir), layers=[1], **SMALL)
    again = record_run(tmp_path / "b", model=str(llama_dir), layers=[1], pool_memory_mb=0, **SMALL)
    for x, y in zip(
        read_jsonl(kept.files[0], NeuronRecord),
        read_jsonl(again.files[0], NeuronRecord),
        strict=True,
    ):
        for qa, qb in zip(x.random_sample_by_quantile, y.random_sample_by_quantile, strict=True):
            for ea, eb in zip(qa, qb, strict=True):
                assert ea.tokens == eb.tokens
                np.testing.assert_allclose(ea.activations, eb.activations, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_tokens_concatenate_to_the_text(tmp_path, llama_dir):
    text = "The quick brown fox jumps over the lazy dog near the riverbank today.\n\n" * 3
    text += "Numbers like 12345 and words like antidisestablishmentarianism split into pieces."
    corpus = tmp_path / "c.txt"
    corpus.write_text(text)
    s = record_run(
        tmp_path / "run",
        model=str(llama_dir),
        layers=[0],
        corpus=str(corpus),
        **{**SMALL, "max_units": 2, "excerpt_len": 8},
    )
    docs = [d.strip() for d in text.split("\n\n")]
    for r in read_jsonl(s.files[0], NeuronRecord):
        for a in r.most_positive_activation_records + r.random_sample:
            assert any("".join(a.tokens) in d for d in docs)


@pytest.mark.slow  # several recordings: seconds each
def test_unit_selection_and_module_units(tmp_path, llama_dir):
    s = record_run(
        tmp_path / "a",
        model=str(llama_dir),
        layers=[2],
        units="3,10-12",
        **{**SMALL, "max_units": 2},
    )
    assert [r.index for r in read_jsonl(s.files[0], NeuronRecord)] == [3, 10, 11, 12]
    s = record_run(
        tmp_path / "b", model=str(llama_dir), layers=[2], units="all", **{**SMALL, "max_units": 5}
    )
    assert [r.index for r in read_jsonl(s.files[0], NeuronRecord)] == [0, 1, 2, 3, 4]

    # Any module by path: attention output projection's output, one unit per model dimension.
    s = record_run(
        tmp_path / "c",
        model=str(llama_dir),
        layers=[1],
        unit_type="module",
        module="self_attn.o_proj",
        hook="output",
        **SMALL,
    )
    recs = read_jsonl(s.files[0], NeuronRecord)
    assert s.files[0].name == "layer-01-self_attn.o_proj-output.jsonl"
    assert len(recs) == 32 and recs[0].unit_id == f"{llama_dir.name}/1:self_attn.o_proj:output/0"
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    brute = brute_force(
        model, model.model.layers[1].self_attn.o_proj, _windows(SMALL), hook="output"
    )
    values = np.concatenate([b[:, 7] for b in brute])
    assert recs[7].mean == pytest.approx(values.mean(), rel=1e-4, abs=1e-7)
    assert recs[7].max_activation == pytest.approx(values.max(), rel=1e-5)


def _save_sae(path: Path, d_in: int, d_sae: int, *, threshold: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t = {
        "W_enc": torch.randn(d_in, d_sae, generator=g),
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if threshold:
        t["threshold"] = torch.rand(d_sae, generator=g)
    save_file(t, str(path))
    return {k: v.double().numpy() for k, v in t.items()}


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_sae_latents_match_a_direct_matrix_computation(tmp_path, llama_dir):
    from transformers import AutoModelForCausalLM

    w = _save_sae(tmp_path / "sae.safetensors", 32, 40, threshold=True)
    s = record_run(
        tmp_path / "run",
        model=str(llama_dir),
        layers=[1],
        unit_type="sae",
        sae=str(tmp_path / "sae.safetensors"),
        **SMALL,
    )
    assert s.files[0].name == "layer-01-sae-sae.jsonl"
    recs = read_jsonl(s.files[0], NeuronRecord)
    assert len(recs) == 40

    def encode(x: np.ndarray) -> np.ndarray:
        pre = (x - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
        return np.where(pre > w["threshold"], pre, 0.0)

    model = AutoModelForCausalLM.from_pretrained(llama_dir).eval()
    windows = _windows(SMALL)
    brute = brute_force(model, model.model.layers[1], windows, hook="output", transform=encode)
    for r in recs:
        values = np.concatenate([b[:, r.index] for b in brute])
        assert r.mean == pytest.approx(values.mean(), rel=1e-4, abs=1e-6)
        assert r.frac_nonzero == pytest.approx(np.mean(values != 0), abs=2 / len(values))
        assert r.max_activation == pytest.approx(values.max(), rel=1e-4, abs=1e-6)
        top = r.most_positive_activation_records[0]
        e = int(np.argmax([b[:, r.index].max() for b in brute]))
        np.testing.assert_allclose(top.activations, brute[e][:, r.index], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ bad input
def _nothing_written(run: Path) -> bool:
    return not list(run.glob("records/*.jsonl")) and not (run / "manifest.json").exists()


def test_unknown_model_path(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        record_run(tmp_path / "run", model=str(tmp_path / "no-such-model"), **SMALL)
    with pytest.raises(ConfigError, match=r"config\.json"):
        record_run(tmp_path / "run", model=str(tmp_path), **SMALL)
    assert _nothing_written(tmp_path / "run")


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_layer_out_of_range(tmp_path, llama_dir):
    with pytest.raises(ConfigError, match=r"layer 3 out of range: the model has 3 layers \(0-2\)"):
        record_run(tmp_path / "run", model=str(llama_dir), layers=[0, 3], **SMALL)
    assert _nothing_written(tmp_path / "run")


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_empty_corpus(tmp_path, llama_dir):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match="gave no text"):
        record_run(tmp_path / "run", model=str(llama_dir), corpus=str(empty), **SMALL)
    assert _nothing_written(tmp_path / "run")


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_corpus_without_text_column(tmp_path, llama_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "hello there"}) + "\n")
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: body\)"):
        record_run(tmp_path / "run", model=str(llama_dir), corpus=str(rows), **SMALL)
    pq.write_table(pa.table({"body": ["hello there"]}), tmp_path / "rows.parquet")
    with pytest.raises(DataError, match="no text column 'text'"):
        record_run(
            tmp_path / "run", model=str(llama_dir), corpus=str(tmp_path / "rows.parquet"), **SMALL
        )
    assert _nothing_written(tmp_path / "run")


def test_sae_width_mismatch(tmp_path, llama_dir):
    _save_sae(tmp_path / "sae.safetensors", 64, 16)
    with pytest.raises(
        ConfigError, match=r"reads 64-dim inputs but model\.layers\.1 \(output\) has 32"
    ):
        record_run(
            tmp_path / "run",
            model=str(llama_dir),
            layers=[1],
            unit_type="sae",
            sae=str(tmp_path / "sae.safetensors"),
            **SMALL,
        )
    assert _nothing_written(tmp_path / "run")


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_bad_options_are_config_errors(tmp_path, llama_dir):
    with pytest.raises(ConfigError, match="unit 48 out of range"):
        record_run(tmp_path / "run", model=str(llama_dir), layers=[0], units="40-48", **SMALL)
    with pytest.raises(ConfigError, match="no module"):
        record_run(
            tmp_path / "run",
            model=str(llama_dir),
            layers=[0],
            unit_type="module",
            module="mlp.nope",
            **SMALL,
        )
    with pytest.raises(ConfigError, match="bad recording options"):
        record_run(tmp_path / "run", model=str(llama_dir), **{**SMALL, "n_top": 0})
    assert _nothing_written(tmp_path / "run")


def test_default_config_is_the_documented_one():
    cfg = RecordConfig()
    assert (cfg.excerpt_len, cfg.n_top, cfg.n_random, cfg.corpus, cfg.model) == (
        64,
        20,
        20,
        "builtin",
        None,
    )


# ------------------------------------------------------------------ real model
@pytest.mark.slow
def test_smollm2_records_feed_the_explainer(tmp_path):
    from neuroscribe.prompts import build_explain_prompt
    from neuroscribe.splits import split_record

    s = record_run(
        tmp_path / "run", layers=[3], max_units=8, max_tokens=3000, batch_size=16, device="cpu"
    )
    recs = read_jsonl(s.files[0], NeuronRecord)
    assert len(recs) == 8 and recs[0].unit_id == "smollm2-135m-instruct/3/0"
    assert s.n_tokens == 3000
    for r in recs:
        assert len(r.most_positive_activation_records) == 20 and len(r.random_sample) == 20
        splits = split_record(r)
        assert len(splits.train) == 5 and len(splits.test) == 10
        prompt = build_explain_prompt(
            [(e.record.tokens, e.record.activations) for e in splits.train]
        )
        assert r.most_positive_activation_records[0].tokens[0] in prompt.text


@pytest.mark.slow  # several recordings: seconds each
def test_cli_record_and_clear_errors(tmp_path, llama_dir):
    import subprocess
    import sys

    cli = [sys.executable, "-c", "from neuroscribe.cli.app import main; main()", "record"]
    ok = subprocess.run(
        [
            *cli,
            "--model",
            str(llama_dir),
            "--layers",
            "0,2",
            "--max-units",
            "3",
            "--max-tokens",
            "300",
            "--excerpt-len",
            "16",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert "wrote 6 units from 300 tokens" in ok.stderr
    recs = read_jsonl(tmp_path / "run" / "records" / "layer-02.jsonl", NeuronRecord)
    assert [r.index for r in recs] == [0, 1, 2]
    bad = subprocess.run(
        [*cli, "--model", str(llama_dir), "--layers", "7", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1
    assert "layer 7 out of range" in bad.stderr and "Traceback" not in bad.stderr
