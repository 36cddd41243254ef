"""publish: the folder loads with `datasets` and pandas, round-trips, and its card parses."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from _reportruns import HOSTILE, make_run
from neuroscribe.cli.app import _register_commands, app
from neuroscribe.errors import ConfigError, DataError, NeuroscribeError
from neuroscribe.jsonl import append_jsonl, read_jsonl
from neuroscribe.publish import (
    _ARROW_SCHEMA,
    PublishedExplanation,
    publish_run,
    push_folder_to_hub,
)
from neuroscribe.rundir import load_run
from neuroscribe.schema import Failure, NeuronRecord

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
    assert set(_ARROW_SCHEMA.names) == set(PublishedExplanation.model_fields)


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

    ds = load_dataset(str(out), split="train")
    assert ds.num_rows == 6
    assert _canon(ds.to_list()) == _canon(jsonl_rows)
    recs = load_dataset(str(out), "records", split="train")
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
    assert "mean explanation score: 0.383" in text  # (0.5+0.7+0.1+0.9-0.2+0.3)/6


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
