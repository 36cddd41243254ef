"""OpenAI's per-neuron JSON files round-trip through import-openai and export-openai unchanged."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from neuroscribe.datasets.openai_format import export_openai, import_openai
from neuroscribe.errors import DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.schema import NeuronRecord, RunManifest
from neuroscribe.splits import split_record


def _ar(tokens, acts):
    return {"dataclass_name": "ActivationRecord", "tokens": tokens, "activations": acts}


def openai_neuron(layer: int, neuron: int, *, nan_kurtosis: bool = False) -> dict:
    """A neuron file as OpenAI's fast_dataclasses serialise it (GPT-2 XL public data layout)."""
    top = [_ar([" the", " cat", " sat"], [0.1 * i, 2.5 - 0.1 * i, 0.0]) for i in range(20)]
    rnd = [_ar([" a", " dog"], [0.0, -0.05 * i]) for i in range(10)]
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": layer, "neuron_index": neuron},
        "random_sample": rnd,
        "random_sample_by_quantile": [rnd[:2], rnd[2:4], top[:2]],
        "quantile_boundaries": [0.0, 0.01, 0.3, 2.5],
        "mean": 0.0123,
        "variance": 0.456,
        "skewness": 1.5,
        "kurtosis": math.nan if nan_kurtosis else 7.25,
        "most_positive_activation_records": top,
        "some_future_key": {"kept": [1, 2]},
    }


def _write_src(src: Path) -> dict[Path, dict]:
    files = {}
    for layer, neuron, nan in ((0, 0, False), (0, 7, True), (11, 3, False)):
        path = src / str(layer) / f"{neuron}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        obj = openai_neuron(layer, neuron, nan_kurtosis=nan)
        path.write_text(json.dumps(obj))
        files[path.relative_to(src)] = obj
    return files


def test_round_trip_unchanged(tmp_path):
    files = _write_src(tmp_path / "src")
    written = import_openai(tmp_path / "src", tmp_path / "run", model="gpt2-xl")
    assert [p.name for p in written] == ["layer-00.jsonl", "layer-11.jsonl"]
    recs = read_jsonl(tmp_path / "run" / "records" / "layer-00.jsonl", NeuronRecord)
    assert [r.unit_id for r in recs] == ["gpt2-xl/0/0", "gpt2-xl/0/7"]
    assert recs[1].kurtosis is None and recs[0].kurtosis == 7.25
    assert len(split_record(recs[0]).train) == 5  # usable by the explainer as is
    m = RunManifest.model_validate_json((tmp_path / "run" / "manifest.json").read_text())
    assert m.stages["record"]["source"] == "import-openai" and m.subject["model"] == "gpt2-xl"

    export_openai(tmp_path / "run", tmp_path / "out")
    for rel, obj in files.items():
        back = json.loads((tmp_path / "out" / rel).read_text())
        assert json.dumps(back, sort_keys=True) == json.dumps(obj, sort_keys=True)
        assert list(back) == list(obj)  # same key order too


@pytest.mark.slow  # loads a model: seconds; runs in CI
def test_cli_round_trip(tmp_path):
    files = _write_src(tmp_path / "src")
    cli = [sys.executable, "-c", "from neuroscribe.cli.app import main; main()"]
    subprocess.run(
        [*cli, "import-openai", str(tmp_path / "src"), "--out", str(tmp_path / "run")],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [*cli, "export-openai", str(tmp_path / "run"), "--out", str(tmp_path / "out")],
        check=True,
        capture_output=True,
    )
    for rel, obj in files.items():
        assert json.dumps(
            json.loads((tmp_path / "out" / rel).read_text()), sort_keys=True
        ) == json.dumps(obj, sort_keys=True)


def test_our_records_export_in_openai_layout(tmp_path):
    rec = NeuronRecord(
        model="m",
        layer=2,
        index=5,
        most_positive_activation_records=[{"tokens": ["a", "b"], "activations": [1.0, 0.0]}],
        random_sample=[{"tokens": ["c"], "activations": [0.5]}],
        mean=0.1,
        variance=0.2,
        skewness=0.3,
        kurtosis=0.4,
        max_activation=1.0,
        frac_nonzero=0.5,
    )
    (tmp_path / "run" / "records").mkdir(parents=True)
    (tmp_path / "run" / "records" / "layer-02.jsonl").write_text(rec.model_dump_json() + "\n")
    export_openai(tmp_path / "run", tmp_path / "out")
    obj = json.loads((tmp_path / "out" / "2" / "5.json").read_text())
    assert obj["dataclass_name"] == "NeuronRecord"
    assert obj["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 2, "neuron_index": 5}
    assert obj["most_positive_activation_records"][0] == {
        "dataclass_name": "ActivationRecord",
        "tokens": ["a", "b"],
        "activations": [1.0, 0.0],
    }
    assert "unit_id" not in obj and "frac_nonzero" not in obj and obj["mean"] == 0.1


def test_bad_openai_input(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        import_openai(tmp_path / "missing", tmp_path / "run")
    (tmp_path / "src" / "0").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no \.json neuron files"):
        import_openai(tmp_path / "src", tmp_path / "run")
    (tmp_path / "src" / "0" / "1.json").write_text('{"random_sample": []}')
    with pytest.raises(DataError, match=r"1.json: not an OpenAI neuron record"):
        import_openai(tmp_path / "src", tmp_path / "run")
    bad = openai_neuron(0, 1)
    bad["most_positive_activation_records"][0]["activations"] = [1.0]
    (tmp_path / "src" / "0" / "1.json").write_text(json.dumps(bad))
    with pytest.raises(DataError, match="3 tokens but 1 activations"):
        import_openai(tmp_path / "src", tmp_path / "run")
    assert not (tmp_path / "run" / "records").exists()
