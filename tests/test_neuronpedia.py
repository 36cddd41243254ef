"""publish --format neuronpedia: the batches round-trip through a reader written from the
documented layout and field list (README, "Neuronpedia export"), not from the writer.

The reader walks `<modelId>/<sourceId>/` folders, reads the batches the way Neuronpedia's
importer does (one JSON object per line; the first line's keys are the columns, so every
line of a file must have the same keys) and checks each documented field's type.
"""

from __future__ import annotations

import gzip
import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from _cli import run_cli
from _reportruns import HOSTILE, make_run
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import read_jsonl, write_json_atomic
from neuroscribe.publish import publish_run
from neuroscribe.rundir import load_run
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord, RunManifest

SCORES = {"tiny/gpt/0/1": [0.5, 0.7], "tiny/gpt/0/2": [0.1], "tiny/gpt/3/4": [0.9, -0.2]}
TRICKY = 'say "hi"\nthen \\ leave\t</script><script>alert(1)</script> é 🙂'

# ---------------------------------------------------------------- the documented fields

STR, INT, NUM, LIST, BOOL, OBJ = str, int, (int, float), list, bool, dict
OPT_STR, OPT_NUM = (str, type(None)), (int, float, type(None))
EXPLANATION = {
    "id": STR,
    "modelId": STR,
    "layer": STR,
    "index": STR,
    "description": STR,
    "authorId": STR,
    "typeName": STR,
    "explanationModelName": STR,
    "scoreV1": NUM,
    "createdAt": STR,
    "neuroscribe": OBJ,
}
SCORE = {
    "id": STR,
    "explanationId": STR,
    "value": NUM,
    "explanationScoreTypeName": STR,
    "explanationScoreModelName": STR,
    "initiatedByUserId": STR,
    "jsonDetails": STR,
    "createdAt": STR,
}
ACTIVATION = {
    "id": STR,
    "modelId": STR,
    "layer": STR,
    "index": STR,
    "tokens": LIST,
    "values": LIST,
    "maxValue": NUM,
    "maxValueTokenIndex": INT,
    "minValue": NUM,
    "creatorId": STR,
    "dataIndex": STR,
    "dataSource": OPT_STR,
    "binMin": OPT_NUM,
    "binMax": OPT_NUM,
    "createdAt": STR,
    "neuroscribe": OBJ,
}
FEATURE = {
    "modelId": STR,
    "layer": STR,
    "index": STR,
    "creatorId": STR,
    "sourceSetName": STR,
    "maxActApprox": NUM,
    "frac_nonzero": NUM,
    "hookName": OPT_STR,
    "createdAt": STR,
    "neuroscribe": OBJ,
}
META = {
    "model.jsonl": {"id": STR, "creatorId": STR, "owner": STR, "layers": INT},
    "sourceset.jsonl": {"modelId": STR, "name": STR, "creatorId": STR, "description": STR},
    "source.jsonl": {"id": STR, "modelId": STR, "setName": STR, "creatorId": STR},
}
KINDS = {
    "features": FEATURE,
    "activations": ACTIVATION,
    "explanations": EXPLANATION,
    "explanation_scores": SCORE,
}


def _lines(path: Path) -> list[dict[str, Any]]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = raw.decode("utf-8")
    assert text.endswith("\n") and "NaN" not in text and "Infinity" not in text
    rows = [json.loads(line) for line in text.splitlines()]
    assert rows, f"{path} is empty"
    keys = set(rows[0])
    assert all(set(r) == keys for r in rows), f"{path}: lines with other keys than the first"
    return rows


def _check(row: dict[str, Any], fields: dict[str, Any], where: str) -> None:
    for name, kind in fields.items():
        assert name in row, f"{where}: no {name}"
        assert isinstance(row[name], kind), f"{where}: {name}={row[name]!r}"


def read_neuronpedia(out: Path) -> dict[str, Any]:
    """Every source folder of an export: its metadata rows and its batches, in order."""
    sources = {}
    for folder in sorted(p.parent for p in out.glob("*/*/source.jsonl")):
        entry: dict[str, Any] = {"files": {}}
        for name, fields in META.items():
            (row,) = _lines(folder / name)
            _check(row, fields, f"{folder}/{name}")
            entry[name.split(".")[0]] = row
        for kind, fields in KINDS.items():
            files = sorted(
                (folder / kind).glob("batch-*.jsonl*"),
                key=lambda p: int(re.match(r"batch-(\d+)", p.name).group(1)),
            )
            entry["files"][kind] = files
            rows = [r for f in files for r in _lines(f)]
            for r in rows:
                _check(r, fields, f"{folder}/{kind}")
            entry[kind] = rows
        sources[(folder.parent.name, folder.name)] = entry
    return sources


# ---------------------------------------------------------------- runs


def _add_record_stage(run: Path, units: list[dict[str, Any]], **subject: Any) -> None:
    """The manifest a real `neuroscribe record` + explain + simulate leaves behind."""
    m = RunManifest.model_validate_json((run / "manifest.json").read_text())
    m.package_version = "0.1.0"
    m.subject = {"model": "HuggingFaceTB/SmolLM2-135M", "revision": "abc123", "n_layers": 30}
    m.subject.update(subject)
    m.stages["record"] = {
        "status": "complete",
        "config": {"corpus": "builtin", "n_top": 4, "n_random": 3, "excerpt_len": 6, "seed": 7},
        "corpus": {"spec": "builtin", "kind": "builtin"},
        "units": units,
        "seed": 7,
        "finished_at": "2026-01-02T03:04:05+00:00",
    }
    splits = {"n_train": 2, "n_test_top": 1, "n_test_random": 1}
    m.stages["explain"].update(method="token-rows", splits=splits)
    m.stages["simulate"]["splits"] = splits
    write_json_atomic(run / "manifest.json", m)


def _rewrite(path: Path, model: type, change) -> None:
    items = [change(x) for x in read_jsonl(path, model)]
    path.write_text("".join(x.model_dump_json() + "\n" for x in items), encoding="utf-8")


def mlp_run(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "run", SCORES, hostile_unit="tiny/gpt/0/2")
    _add_record_stage(
        run,
        [
            {"layer": layer, "unit_type": "mlp", "module": f"model.layers.{layer}.mlp.down_proj"}
            | {"hook": "input", "width": 1536}
            for layer in (0, 3)
        ],
    )

    def tricky(e: Explanation) -> Explanation:
        if e.explanation_id == "tiny/gpt/3/4#explainer-a#1":
            e.text = TRICKY
        return e

    def quantiles(r: NeuronRecord) -> NeuronRecord:
        if r.unit_id == "tiny/gpt/3/4":
            r.random_sample_by_quantile = [
                [ActivationRecord(tokens=[" a", " b"], activations=[0.0, 0.5])],
                [ActivationRecord(tokens=[" c"], activations=[1.5])],
            ]
            r.quantile_boundaries = [0.0, 1.0, 2.0]
        return r

    _rewrite(run / "explanations.jsonl", Explanation, tricky)
    _rewrite(run / "records" / "layer.jsonl", NeuronRecord, quantiles)
    return run


def sae_run(tmp_path: Path, **unit: Any) -> Path:
    scores = {"tiny/gpt/6/1": [0.4], "tiny/gpt/6/2": [0.6, 0.2], "tiny/gpt/6/5": [0.3]}
    run = make_run(tmp_path / "run", scores)
    label = "6:sae:res"

    def relabel(r: NeuronRecord) -> NeuronRecord:
        r.layer = label
        return r

    _rewrite(run / "records" / "layer.jsonl", NeuronRecord, relabel)
    entry = {
        "layer": label,
        "unit_type": "sae",
        "module": "model.layers.6",
        "hook": "output",
        "sae": "/saes/gpt2-res-6",
        "sae_activation": "topk",
        "sae_id": "blocks.6.hook_resid_post",
        "sae_layout": "saelens",
        "hook_name": "blocks.6.hook_resid_post",
        "width": 24576,
    }
    _add_record_stage(run, [entry | unit])
    return run


# ---------------------------------------------------------------- round trip


def test_round_trip_every_row_equals_the_runs_data(tmp_path):
    run_dir = mlp_run(tmp_path)
    out = tmp_path / "np"
    res = run_cli("publish", str(run_dir), "--out", str(out), "--format", "neuronpedia")
    assert "wrote 5 explanations of 3 units" in res.stdout
    run = load_run(run_dir)
    got = read_neuronpedia(out)
    assert set(got) == {("smollm2-135m", "0"), ("smollm2-135m", "3")}  # neurons: bare layer
    for (model, source), entry in got.items():
        assert entry["source"]["id"] == source and entry["source"]["setName"] == "neurons"
        assert entry["sourceset"]["name"] == "neurons" and entry["model"]["id"] == model
        assert entry["model"]["layers"] == 30 and entry["model"]["neuronsPerLayer"] == 1536
        assert [f.name for f in entry["files"]["explanations"]] == ["batch-0.jsonl.gz"]

    explanations = {
        r["neuroscribe"]["explanation_id"]: (source, r)
        for (_, source), entry in got.items()
        for r in entry["explanations"]
    }
    assert set(explanations) == set(run.explanations_by_id())
    for eid, e in run.explanations_by_id().items():
        source, row = explanations[eid]
        _, layer, index = e.unit_id.rsplit("/", 2)
        assert (row["modelId"], row["layer"], row["index"]) == ("smollm2-135m", layer, index)
        assert source == layer
        assert row["description"] == e.text  # hostile text is data, byte for byte
        assert row["explanationModelName"] == "explainer-a"
        assert row["typeName"] == "neuroscribe_explain-v1"
        assert row["authorId"] == "clkht01d40000jv08hvalcvly"
    assert explanations["tiny/gpt/3/4#explainer-a#1"][1]["description"] == TRICKY
    assert (
        explanations["tiny/gpt/0/2#explainer-a#0"][1]["description"]
        == HOSTILE[0] + " " + HOSTILE[1]
    )

    by_np_id = {row["id"]: eid for eid, (_, row) in explanations.items()}
    assert len(by_np_id) == len(explanations)  # ids are unique
    scores = [r for entry in got.values() for r in entry["explanation_scores"]]
    assert len(scores) == len(run.latest_scores())
    for row in scores:
        eid = by_np_id[row["explanationId"]]  # every score points at its explanation
        (s,) = [s for s in run.latest_scores() if s.explanation_id == eid]
        assert row["value"] == s.metrics["score"]
        assert row["explanationScoreTypeName"] == "neuroscribe_simulation"
        assert row["explanationScoreModelName"] == "sim-x"
        details = json.loads(row["jsonDetails"])["neuroscribe"]
        assert details["metrics"] == s.metrics and details["explanation_id"] == eid
        assert details["interval"]["low"] == s.interval.low

    activations = [r for entry in got.values() for r in entry["activations"]]
    expected = 0
    for rec in run.records:
        _, layer, index = rec.unit_id.rsplit("/", 2)
        rows = {
            r["dataIndex"]: r for r in activations if (r["layer"], r["index"]) == (layer, index)
        }
        excerpts = [(f"top:{i}", a) for i, a in enumerate(rec.most_positive_activation_records)]
        excerpts += [(f"random:{i}", a) for i, a in enumerate(rec.random_sample)]
        for q, group in enumerate(rec.random_sample_by_quantile or []):
            excerpts += [(f"quantile:{q}:{i}", a) for i, a in enumerate(group)]
        expected += len(excerpts)
        assert set(rows) == {x for x, _ in excerpts}
        for excerpt_id, a in excerpts:
            row = rows[excerpt_id]
            assert row["tokens"] == a.tokens and row["values"] == a.activations
            assert len(row["values"]) == len(row["tokens"])  # one value per token
            assert row["maxValue"] == max(a.activations) == row["values"][row["maxValueTokenIndex"]]
            assert row["minValue"] == min(a.activations)
            assert row["dataSource"] == "builtin"
    assert len(activations) == expected
    quantile = [r for r in activations if r["dataIndex"].startswith("quantile:1:")]
    assert [(r["binMin"], r["binMax"]) for r in quantile] == [(1.0, 2.0)]
    hostile = [r for r in activations if r["tokens"][1:2] == [HOSTILE[0]]]
    assert hostile and hostile[0]["tokens"][3] == HOSTILE[1]

    features = {(r["layer"], r["index"]): r for e in got.values() for r in e["features"]}
    assert set(features) == {("0", "1"), ("0", "2"), ("3", "4")}
    top = max(a for x in run.records[2].most_positive_activation_records for a in x.activations)
    assert features[("3", "4")]["maxActApprox"] == top


def test_every_row_carries_its_provenance(tmp_path):
    out = tmp_path / "np"
    publish_run(load_run(mlp_run(tmp_path)), out, format="neuronpedia")
    (entry, _) = read_neuronpedia(out).values()
    rows = entry["explanations"] + entry["activations"] + entry["features"]
    provs = [r["neuroscribe"]["provenance"] for r in rows]
    provs += [
        json.loads(r["jsonDetails"])["neuroscribe"]["provenance"]
        for r in entry["explanation_scores"]
    ]
    for p in provs:
        assert p["subject_model"] == "HuggingFaceTB/SmolLM2-135M"
        assert p["package_version"] == "0.1.0" and p["seed"] == 7
        assert p["explainer"] == "explainer-a" and p["explain_prompt_version"] == "explain-v1"
        assert p["simulator"] == "sim-x" and p["simulate_prompt_version"] == "sim-v1"
        assert p["splits"]["n_train"] == 2 and p["sampler"]["n_top"] == 4
        unit = p["unit"]
        assert unit["layer"] == "0" and unit["hook"] == "input"
        assert unit["module"] == "model.layers.0.mlp.down_proj"
    summary = json.loads((out / "neuroscribe-export.json").read_text())
    assert summary["counts"]["explanations"] == 5 and summary["provenance"]["seed"] == 7


def test_sae_source_ids_options_and_batches(tmp_path):
    run_dir = sae_run(tmp_path)
    out = tmp_path / "np"
    run_cli(
        "publish",
        str(run_dir),
        "--out",
        str(out),
        "--format",
        "neuronpedia",
        "--np-model-id",
        "GPT2-Small",
        "--np-source-id",
        "{layer}-res-jb",
        "--np-batch-size",
        "2",
        "--np-no-gzip",
        "--np-creator-id",
        "user-1",
    )
    got = read_neuronpedia(out)
    ((key, entry),) = got.items()
    assert key == ("gpt2-small", "6-res-jb")  # Neuronpedia lower-cases model ids
    assert entry["sourceset"]["name"] == entry["source"]["setName"] == "res-jb"
    files = entry["files"]["explanations"]
    assert [f.name for f in files] == ["batch-0.jsonl", "batch-1.jsonl"]  # 4 rows, 2 a file
    assert [len(_lines(f)) for f in files] == [2, 2]
    assert {r["authorId"] for r in entry["explanations"]} == {"user-1"}
    feature = entry["features"][0]
    assert feature["hookName"] == "blocks.6.hook_resid_post"
    unit = feature["neuroscribe"]["provenance"]["unit"]
    assert unit["sae_id"] == "blocks.6.hook_resid_post" and unit["sae_layout"] == "saelens"
    assert unit["layer_index"] == 6

    # Defaults: the source id names the layer and the SAE set; gzip is on.
    publish_run(load_run(run_dir), tmp_path / "np2", format="neuronpedia")
    ((key, entry),) = read_neuronpedia(tmp_path / "np2").items()
    assert key == ("smollm2-135m", "6-neuroscribe-sae")
    assert all(f.suffix == ".gz" for fs in entry["files"].values() for f in fs)


def test_an_saes_own_neuronpedia_id_is_the_default(tmp_path):
    run_dir = sae_run(tmp_path, neuronpedia_id="gpt2-small/6-res-jb")
    publish_run(load_run(run_dir), tmp_path / "np", format="neuronpedia")
    assert set(read_neuronpedia(tmp_path / "np")) == {("gpt2-small", "6-res-jb")}


def test_export_is_the_same_bytes_every_time(tmp_path):
    run = load_run(mlp_run(tmp_path))
    for name in ("a", "b"):
        publish_run(run, tmp_path / name, format="neuronpedia")
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.*"))
    assert files
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f


def test_old_run_without_a_record_manifest_still_exports(tmp_path):
    run_dir = make_run(tmp_path / "run", SCORES)  # no record stage: ids from the records
    publish_run(load_run(run_dir), tmp_path / "np", format="neuronpedia")
    got = read_neuronpedia(tmp_path / "np")
    assert set(got) == {("gpt", "0"), ("gpt", "3")}
    p = got[("gpt", "0")]["explanations"][0]["neuroscribe"]["provenance"]
    assert p["seed"] is None and p["explainer"] == "explainer-a"


# ---------------------------------------------------------------- refusals


def test_nan_and_infinity_are_refused_before_anything_is_written(tmp_path):
    run = load_run(mlp_run(tmp_path))
    run.records[0].most_positive_activation_records[1].activations[2] = math.nan
    out = tmp_path / "np"
    with pytest.raises(DataError, match=r"unit tiny/gpt/0/1, excerpt top:1.*not finite"):
        publish_run(run, out, format="neuronpedia")
    assert not out.exists()

    run = load_run(tmp_path / "run")
    score = run.scores[0]
    score.metrics[score.primary_metric] = math.inf
    with pytest.raises(DataError, match="not finite"):
        publish_run(run, out, format="neuronpedia")
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"model_id": "gpt 2/small"}, "not a Neuronpedia model id"),
        ({"source_id": "{layer}-{width}"}, "unknown placeholder"),
        ({"source_id": "res-jb"}, "would both be Neuronpedia source"),  # two layers
        ({"source_id": "{layer}/../x"}, "not a Neuronpedia source id"),
    ],
)
def test_bad_ids_are_refused(tmp_path, options, message):
    from neuroscribe.neuronpedia import NeuronpediaOptions

    run = load_run(mlp_run(tmp_path))
    with pytest.raises(ConfigError, match=message):
        publish_run(
            run, tmp_path / "np", format="neuronpedia", neuronpedia=NeuronpediaOptions(**options)
        )
    assert not (tmp_path / "np").exists()


def test_cli_refuses_options_of_the_other_format(tmp_path):
    run_dir = make_run(tmp_path / "run", SCORES)
    out = str(tmp_path / "np")
    res = run_cli("publish", str(run_dir), "--out", out, "--np-model-id", "x", check=False)
    assert res.returncode != 0 and "--format neuronpedia" in res.stderr + res.stdout
    res = run_cli(
        "publish",
        str(run_dir),
        "--out",
        out,
        "--format",
        "neuronpedia",
        "--openai-layout",
        check=False,
    )
    assert res.returncode != 0 and "--openai-layout" in res.stderr + res.stdout
    assert not Path(out).exists()
