"""publish: the folder loads with `datasets` and pandas, round-trips, and its card parses."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from _cli import run_cli
from _reportruns import (
    HOSTILE,
    add_scorer,
    detection_metrics,
    downgrade_scores_to_v1,
    make_run,
)
from neuroscribe.cli.app import _register_commands, app
from neuroscribe.errors import ConfigError, DataError, NeuroscribeError
from neuroscribe.jsonl import append_jsonl, read_jsonl
from neuroscribe.publish import (
    PublishedExplanation,
    arrow_schema,
    build_rows,
    publish_run,
    push_folder_to_hub,
)
from neuroscribe.rundir import load_run
from neuroscribe.schema import Failure, NeuronRecord

# Today's score columns of a simulation-scored run, which existing users read by name.
SIMULATION_COLUMNS = ["score", "top_score", "random_score", "r2", "abs_dev_score"]
SIMULATION_COLUMNS += ["ci_low", "ci_high"]

SCORES = {
    "tiny/gpt/0/1": [0.5, 0.7],
    "tiny/gpt/0/2": [0.1],
    "tiny/gpt/3/4": [0.9, -0.2, 0.3],
}


@pytest.fixture()
def run_dir(tmp_path):
    return make_run(tmp_path / "run", SCORES, hostile_unit="tiny/gpt/0/2")


def _canon(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        # pandas reads a null float as NaN; compare it as the None it was written as.
        r = {k: None if isinstance(v, float) and v != v else v for k, v in r.items()}
        r["flags"] = list(r["flags"])
        out.append(r)
    return sorted(out, key=lambda r: r["explanation_id"])


def test_schema_matches_model():
    schema = arrow_schema(["score", "x_auc"])
    assert schema.names == [*PublishedExplanation.model_fields, "score", "x_auc"]
    assert schema.field("x_auc").type == pa.float64()


def test_simulation_run_keeps_todays_columns(run_dir, tmp_path):
    out = tmp_path / "ds"
    publish_run(load_run(run_dir), out)
    schema = pq.read_schema(out / "explanations.parquet")
    assert schema.names[-len(SIMULATION_COLUMNS) :] == SIMULATION_COLUMNS
    # r2 and abs_dev_score are null on every row, yet typed.
    for name in SIMULATION_COLUMNS:
        assert schema.field(name).type == pa.float64()
    for name in ("simulator", "strategy", "prompt_version", "scorer"):
        assert schema.field(name).type == pa.string()
    row = json.loads((out / "explanations.jsonl").read_text().splitlines()[0])
    assert row["scorer"] == "simulation" and row["r2"] is None
    assert row["ci_low"] == pytest.approx(row["score"] - 0.1)


def test_publish_round_trips_through_jsonl_parquet_and_datasets(run_dir, tmp_path):
    out = tmp_path / "ds"
    res = publish_run(load_run(run_dir), out, with_records=True)
    assert res.n_rows == 6 and res.n_units == 3

    jsonl_rows = [
        r.model_dump() for r in read_jsonl(out / "explanations.jsonl", PublishedExplanation)
    ]
    assert len(jsonl_rows) == 6
    by_id = {r["explanation_id"]: r for r in jsonl_rows}
    r = by_id["tiny/gpt/3/4#explainer-a#1"]
    assert (r["unit_id"], r["model"], r["layer"], r["index"]) == (
        "tiny/gpt/3/4",
        "tiny/gpt",
        "3",
        4,
    )
    assert r["score"] == -0.2 and r["random_score"] == -0.1
    assert r["explainer"] == "explainer-a" and r["simulator"] == "sim-x"
    assert r["prompt_version"] == "sim-v1" and r["explainer_prompt_version"] == "explain-v1"
    assert [x["explanation_id"] for x in jsonl_rows if x["best_for_unit"]] == [
        "tiny/gpt/0/1#explainer-a#1",
        "tiny/gpt/0/2#explainer-a#0",
        "tiny/gpt/3/4#explainer-a#0",
    ]
    # Untrusted text is published verbatim (it is data), never altered.
    assert by_id["tiny/gpt/0/2#explainer-a#0"]["explanation"] == HOSTILE[0] + " " + HOSTILE[1]

    df = pd.read_parquet(out / "explanations.parquet")
    assert _canon(df.to_dict("records")) == _canon(jsonl_rows)

    from datasets import load_dataset

    # A cache of its own: `datasets` keys its cache by folder name, not content, so a
    # cache from an earlier run with other columns would be read back instead.
    cache = str(tmp_path / "hf-cache")
    ds = load_dataset(str(out), split="train", cache_dir=cache)
    assert ds.num_rows == 6
    assert _canon(ds.to_list()) == _canon(jsonl_rows)
    recs = load_dataset(str(out), "records", split="train", cache_dir=cache)
    assert sorted(recs["unit_id"]) == sorted(SCORES)
    # The records file is our NeuronRecord schema (OpenAI's field names).
    assert len(read_jsonl(out / "records.jsonl", NeuronRecord)) == 3


def test_card_front_matter_parses(run_dir, tmp_path):
    out = tmp_path / "ds"
    publish_run(load_run(run_dir), out, license="mit")
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    assert meta["license"] == "mit"
    assert "interpretability" in meta["tags"]
    assert meta["configs"] == [
        {
            "config_name": "default",
            "data_files": [{"split": "train", "path": "explanations.parquet"}],
        }
    ]
    assert "tiny/gpt" in meta["pretty_name"]
    # (0.5+0.7+0.1+0.9-0.2+0.3)/6
    assert "mean explanation score (simulation `score`): 0.383" in text
    columns = [line.split(" | ")[0][2:] for line in text.splitlines() if line.startswith("| ")]
    for name in SIMULATION_COLUMNS:
        assert name in columns
    assert not any(c.startswith("detection_") for c in columns)


def test_openai_layout(run_dir, tmp_path):
    out = tmp_path / "ds"
    publish_run(load_run(run_dir), out, openai_layout=True)
    path = out / "openai" / "explanations" / "3" / "4.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 1
    doc = json.loads(lines[0])
    assert doc["neuron_id"]["layer_index"] == 3 and doc["neuron_id"]["neuron_index"] == 4
    scored = doc["scored_explanations"]
    assert [s["scored_simulation"]["ev_correlation_score"] for s in scored] == [0.9, -0.2, 0.3]
    seqs = scored[0]["scored_simulation"]["scored_sequence_simulations"]
    assert len(seqs) == 2  # the two test excerpts; the calibration one is left out
    for seq in seqs:
        sim = seq["simulation"]
        assert (
            len(sim["tokens"]) == len(sim["expected_activations"]) == len(seq["true_activations"])
        )
        assert -1.0 <= seq["ev_correlation_score"] <= 1.0


def test_refuses_failures_unless_allowed(tmp_path):
    run = make_run(tmp_path / "run", SCORES, failures=2)
    with pytest.raises(DataError, match="2 open failures"):
        publish_run(load_run(run), tmp_path / "ds")
    res = publish_run(load_run(run), tmp_path / "ds", allow_failures=True)
    assert res.n_rows == 6


def test_failures_resolved_by_a_retry_do_not_block(tmp_path):
    run = make_run(tmp_path / "run", SCORES)
    sim = load_run(run).simulations[0]
    # The first attempt failed, a --retry-failed run then simulated the explanation.
    append_jsonl(
        run / "failures.jsonl",
        [
            Failure(
                stage="simulate",
                unit_id=sim.unit_id,
                key=f"simulate|{sim.explanation_id}|{sim.config_hash}",
                explanation_id=sim.explanation_id,
                reason="timeout",
                config_hash=sim.config_hash,
            )
        ],
    )
    assert load_run(run).open_failures() == []
    assert publish_run(load_run(run), tmp_path / "ds").n_rows == 6


def test_refuses_invalid_run_and_non_empty_out(run_dir, tmp_path):
    with (run_dir / "scores.jsonl").open("a") as f:
        f.write('{"explanation_id": "x"}\n')
    with pytest.raises(DataError, match=r"scores.jsonl:7: invalid Score"):
        load_run(run_dir)
    good = make_run(tmp_path / "good", SCORES)
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        publish_run(load_run(good), out)


def test_push_to_hub_gives_a_clear_error_offline(run_dir, tmp_path, monkeypatch):
    # No network here: the Hub call fails and the user gets one clear error.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", "hf_invalid")
    out = tmp_path / "ds"
    publish_run(load_run(run_dir), out)
    with pytest.raises(NeuroscribeError, match="could not push"):
        push_folder_to_hub(out, "someone/some-dataset")


def test_cli_publish(run_dir, tmp_path):
    _register_commands()
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["publish", str(run_dir), "--out", str(out), "--openai-layout"])
    assert res.exit_code == 0, res.output
    assert "wrote 6 explanations of 3 units" in res.output
    assert (out / "openai" / "explanations" / "0" / "1.jsonl").exists()


def _with_detection(tmp_path):
    run = make_run(tmp_path / "run", SCORES, hostile_unit="tiny/gpt/0/2")
    add_scorer(
        run,
        "detection",
        detection_metrics,
        primary_metric="balanced_accuracy",
        interval_metric="auc",
        flags=["few_negatives"],
    )
    return run


def test_a_new_scorer_gets_its_own_columns(tmp_path):
    run = _with_detection(tmp_path)
    out = tmp_path / "ds"
    publish_run(load_run(run), out)
    new = ["detection_balanced_accuracy", "detection_auc"]
    new += ["detection_ci_low", "detection_ci_high"]

    rows = [r.model_dump() for r in read_jsonl(out / "explanations.jsonl", PublishedExplanation)]
    r = next(x for x in rows if x["explanation_id"] == "tiny/gpt/3/4#explainer-a#1")
    # The simulation columns are unchanged; the detection ones sit beside them.
    assert r["score"] == -0.2 and r["random_score"] == -0.1 and r["scorer"] == "simulation"
    assert r["detection_balanced_accuracy"] == pytest.approx(0.5 - 0.2 / 4)
    assert r["detection_auc"] == pytest.approx(0.5 - 0.2 / 2)
    assert r["detection_ci_low"] == pytest.approx(r["detection_auc"] - 0.05)
    assert r["flags"] == ["detection:few_negatives"]

    table = pq.read_table(out / "explanations.parquet")
    assert table.schema.names[-len(SIMULATION_COLUMNS + new) :] == SIMULATION_COLUMNS + new
    for name in new:
        assert table.schema.field(name).type == pa.float64()
    assert _canon(table.to_pandas().to_dict("records")) == _canon(rows)

    card = (out / "README.md").read_text()
    columns = [line.split(" | ")[0][2:] for line in card.splitlines() if line.startswith("| ")]
    assert [c for c in columns if c.startswith("detection_")] == new
    assert "mean `detection_auc`: " in card


def test_a_new_scorer_alone_gets_bare_columns(tmp_path):
    # A run scored only by another scorer: its metrics are the bare, primary columns.
    run = _with_detection(tmp_path)
    lines = (run / "scores.jsonl").read_text().splitlines()
    kept = [line for line in lines if '"scorer":"detection"' in line.replace(" ", "")]
    assert len(kept) == 6
    (run / "scores.jsonl").write_text("\n".join(kept) + "\n")
    rows = build_rows(load_run(run))
    assert list(rows[0].metrics) == ["balanced_accuracy", "auc", "ci_low", "ci_high"]
    assert {r.scorer for r in rows} == {"detection"}
    best = [r.explanation_id for r in rows if r.best_for_unit]
    assert "tiny/gpt/3/4#explainer-a#0" in best  # highest balanced accuracy of its unit
    with pytest.raises(DataError, match="--openai-layout needs simulation scores"):
        publish_run(load_run(run), tmp_path / "ds", openai_layout=True)


def test_cli_publish_with_a_new_scorer(tmp_path):
    run = _with_detection(tmp_path)
    out = tmp_path / "ds"
    run_cli("publish", str(run), "--out", str(out))
    df = pd.read_parquet(out / "explanations.parquet")
    assert {"score", "detection_balanced_accuracy", "detection_auc"} <= set(df.columns)
    assert df["detection_auc"].notna().all()


def test_v1_scores_publish_identically(tmp_path):
    v2 = make_run(tmp_path / "v2", SCORES, hostile_unit="tiny/gpt/0/2")
    v1 = tmp_path / "v1"
    shutil.copytree(v2, v1)
    downgrade_scores_to_v1(v1)
    assert '"top_score"' in (v1 / "scores.jsonl").read_text().splitlines()[0]
    for name in ("v1", "v2"):
        publish_run(load_run(tmp_path / name), tmp_path / f"ds-{name}", openai_layout=True)
    for f in ("explanations.jsonl", "openai/explanations/3/4.jsonl"):
        assert (tmp_path / "ds-v1" / f).read_text() == (tmp_path / "ds-v2" / f).read_text()
    a = pq.read_table(tmp_path / "ds-v1" / "explanations.parquet")
    assert a.equals(pq.read_table(tmp_path / "ds-v2" / "explanations.parquet"))


def test_every_row_carries_its_provenance(tmp_path):
    from test_neuronpedia import sae_run

    run = sae_run(tmp_path)
    out = tmp_path / "ds"
    publish_run(load_run(run), out, openai_layout=True)
    df = pd.read_parquet(out / "explanations.parquet")
    assert len(df) == 4
    for _, r in df.iterrows():
        assert r["schema_version"] == 2 and r["package_version"] == "0.1.0"
        assert (r["unit_type"], r["module"], r["hook"]) == ("sae", "model.layers.6", "output")
        assert r["hook_name"] == "blocks.6.hook_resid_post"
        assert r["sae_id"] == "blocks.6.hook_resid_post" and r["seed"] == 7
        p = json.loads(r["provenance"])
        assert (p["explainer"], p["explain_prompt_version"]) == (r["explainer"], "explain-v1")
        assert (p["simulator"], p["simulate_prompt_version"]) == ("sim-x", "sim-v1")
        assert p["simulation_strategy"] == "all_at_once" and p["explainer_method"] == "token-rows"
        assert p["splits"] == {"n_train": 2, "n_test_top": 1, "n_test_random": 1}
        assert p["sampler"]["n_top"] == 4 and p["sampler"]["corpus"]["spec"] == "builtin"
        assert p["subject_model"] == "HuggingFaceTB/SmolLM2-135M"
        assert p["unit"]["sae_layout"] == "saelens" and p["unit"]["layer"] == "6:sae:res"
        assert p["scorers"] == {"simulation": {"model": "sim-x", "prompt_version": "sim-v1"}}
    # OpenAI's documents stay exactly OpenAI's; the provenance sits beside them.
    side = json.loads((out / "openai" / "provenance.json").read_text())
    assert side["provenance"]["seed"] == 7
    assert side["layers"]["6:sae:res"]["sae_id"] == "blocks.6.hook_resid_post"
    doc = json.loads((out / "openai" / "explanations" / "6%3Asae%3Ares" / "2.jsonl").read_text())
    assert set(doc) == {"dataclass_name", "neuron_id", "scored_explanations"}
    card = (out / "README.md").read_text()
    assert "## Provenance" in card and "SAE blocks.6.hook_resid_post" in card


def test_a_run_without_a_manifest_record_stage_has_empty_provenance_fields(run_dir):
    rows = build_rows(load_run(run_dir))
    assert {(r.unit_type, r.sae_id, r.seed, r.package_version) for r in rows} == {
        (None, None, None, None)
    }
    p = json.loads(rows[0].provenance)
    assert p["explainer"] == "explainer-a" and p["simulator"] == "sim-x"
    assert p["unit"]["layer_index"] == int(rows[0].layer)
