"""The vision job as a user runs it: `neuroscribe vision run` and the facade's routing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from _cli import run_cli
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.errors import DataError
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord


def _records(tmp_path: Path) -> tuple[NeuronRecord, NeuronRecord]:
    ref = RunDir(tmp_path).images.put(Image.new("RGB", (8, 8), (9, 9, 9)), caption="grey")
    image = NeuronRecord(
        unit_id="m/head/0",
        most_positive_activation_records=[
            ActivationRecord(tokens=[ref.description], activations=[1.0], image=ref)
        ],
    )
    text = NeuronRecord(
        unit_id="m/3/0",
        most_positive_activation_records=[ActivationRecord(tokens=["a"], activations=[1.0])],
    )
    return image, text


def test_image_units_get_the_image_explainer_and_scorer(tmp_path: Path) -> None:
    image, text = _records(tmp_path)
    config = RunConfig(run_dir=tmp_path)
    assert api.routed(config, [text]) is config
    routed = api.routed(config, [image])
    assert routed.explain.explainer == "image"
    assert routed.score.scorer == "image-simulation"
    assert routed.explain.select.scorer == "image-simulation"
    assert (routed.splits.n_contrast, config.splits.n_contrast) == (3, None)
    # An explicit image scorer (or a baseline explainer) is the user's choice: kept.
    chosen = RunConfig.model_validate(
        {
            "run_dir": tmp_path,
            "score": {"scorer": "clip-similarity"},
            "explain": {"explainer": "random"},
        }
    )
    kept = api.routed(chosen, [image])
    assert (kept.score.scorer, kept.explain.explainer) == ("clip-similarity", "random")
    with pytest.raises(DataError, match="mix text and image units"):
        api.routed(config, [image, text])


@pytest.mark.slow
def test_vision_run_records_explains_scores_checks_and_reports(tmp_path: Path) -> None:
    """The one documented command, offline: embedded vision subject, offline images,
    embedded LLM explaining from captions and simulating per image, the typographic
    check, the report. Rerunning it redoes nothing."""
    run = tmp_path / "vision run"
    args = ("vision", "run", str(run), "--max-images", "80", "--unit-indices", "131,141")
    args += ("--n-contrast", "2")
    out = run_cli(*args, "--quiet", columns=None).stdout
    rd = RunDir(run)
    records = rd.records()
    assert {r.unit_id for r in records} == {
        "efficientnet-lite0/block15/131",
        "efficientnet-lite0/block15/141",
    }
    assert all(r.modality == "image" for r in records)
    explanations = rd.explanations()
    assert {e.unit_id for e in explanations} <= {r.unit_id for r in records}
    # The explainer saw low-activating random pictures as contrast: kept with its train
    # excerpts, so no score is ever computed on them.
    assert all(any(x.startswith("random:") for x in e.train_excerpts) for e in explanations)
    # By default two scorers: the embedded LLM simulating from captions, and the caption
    # similarity (no LLM), each one score per explanation.
    scores = rd.scores()
    assert sorted(s.scorer for s in scores) == sorted(
        ["image-simulation", "caption-similarity"] * len(explanations)
    )
    # Per-image simulations: one position each, the true value is the picture's.
    sims = rd.simulations()
    assert sims and all(len(s.tokens) == 1 and len(s.expected_activations) == 1 for s in sims)
    checks = [json.loads(line) for line in (run / "typographic.jsonl").read_text().splitlines()]
    assert {c["unit_id"] for c in checks} == {e.unit_id for e in explanations}
    html = (run / "report.html").read_text()
    assert "data:image/png;base64," in html
    assert "report.html" in out

    before = {p.name: p.stat().st_size for p in run.glob("*.jsonl")}
    run_cli(*args, "--quiet", columns=None)
    assert {p.name: p.stat().st_size for p in run.glob("*.jsonl")} == before


def test_rescoring_stored_image_simulations_names_the_image_scorer(tmp_path: Path) -> None:
    """After a crash between writing an image unit's simulations and its score, `score`
    (no model) scores them as image-simulation; similarity lines are left to their own
    scorer rather than correlated as simulations."""
    from _vision_runs import make_image_run

    run = make_image_run(tmp_path / "run", typographic=False)
    rd = RunDir(run)
    (run / "scores.jsonl").unlink()
    sims = rd.simulations()
    images = [s.model_copy(update={"prompt_version": "simulate-images-captions-v1"}) for s in sims]
    similar = [
        s.model_copy(update={"strategy": "caption-similarity", "config_hash": "sim2"}) for s in sims
    ]
    (run / "simulations.jsonl").unlink()
    rd.append("simulations", [*images, *similar])
    api.rescore(RunConfig(run_dir=run))
    scores = rd.scores()
    assert len(scores) == len({s.explanation_id for s in sims})
    assert {s.scorer for s in scores} == {"image-simulation"}
    assert {s.config_hash for s in scores} == {"cfg"}


def test_the_report_shows_simulations_before_similarities(tmp_path: Path) -> None:
    """Two scorers wrote per-image lines for one explanation: the report's true-vs-simulated
    view shows the simulator's, whichever was written last."""
    from _vision_runs import make_image_run

    run = make_image_run(tmp_path / "run", typographic=False)
    rd = RunDir(run)
    sims = rd.simulations()
    similar = [
        s.model_copy(update={"strategy": "caption-similarity", "expected_activations": [0.5]})
        for s in sims
    ]
    rd.append("simulations", similar)
    shown = rd.load().simulations_by_explanation()
    assert all(s.strategy != "caption-similarity" for group in shown.values() for s in group)
    assert sum(len(g) for g in shown.values()) == len(sims)


@pytest.mark.slow  # planning the simulator loads the embedded tokenizer (~3 s)
def test_image_route_reaches_the_explainer_and_the_simulator(tmp_path: Path) -> None:
    """`--image-route pixels` makes both stages send pictures (API endpoints do not declare
    image input, so auto would fall back to captions there)."""
    image, _ = _records(tmp_path)
    config = RunConfig.model_validate(
        {
            "run_dir": tmp_path,
            "explain": {"image_route": "pixels"},
            "score": {"image_route": "pixels"},
        }
    )
    config = api.routed(config, [image])
    assert api.explain_stage(config, [image], None).explainer.route == "pixels"
    scorer, _ = api.planned_scorer(config)
    assert scorer.route == "pixels"
    text = api.routed(RunConfig(run_dir=tmp_path), [image])
    assert api.explain_stage(text, [image], None).explainer.route == "auto"
