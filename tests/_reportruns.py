"""Synthetic run directories for the compare / publish / view tests.

Built with the real schema models and `append_jsonl`, exactly as the pipeline writes
them; scores are given so tests know the truth they check against. `add_scorer` appends
a second scorer's lines (a made-up one, as a plug-in would write them) and
`downgrade_scores_to_v1` rewrites scores.jsonl as neuroscribe 0.1 wrote it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from neuroscribe.jsonl import append_jsonl, read_jsonl, write_json_atomic
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    Failure,
    NeuronRecord,
    RunManifest,
    Score,
    ScoreInterval,
    SequenceSimulation,
    UsageRecord,
)
from neuroscribe.scorer.base import fingerprint

MODEL = "tiny/gpt"
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


WORDS = [
    "",
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "while",
    "rain",
    "fell",
    "over",
    "old",
    "stone",
    "bridges",
    "and",
    "quiet",
    "rivers",
    "carried",
    "boats",
    "past",
    "the",
    "harbour",
    "of",
    "the",
    "city",
    "at",
    "night",
][1:]


def _excerpt(rng: np.random.Generator, i: int, n: int = 6) -> ActivationRecord:
    tokens = [" " + str(w) for w in rng.choice(WORDS, size=n)]
    acts = np.round(rng.uniform(0, 1, n) * (3 if i < 3 else 0.5), 4).tolist()
    return ActivationRecord(tokens=tokens, activations=acts)


def make_run(
    path: Path,
    scores: dict[str, list[float]],
    *,
    explainer: str = "explainer-a",
    simulator: str = "sim-x",
    sim_prompt: str = "sim-v1",
    explain_prompt: str = "explain-v1",
    excerpt_seed: int = 0,
    hostile_unit: str | None = None,
    tokens_per_call: int = 100,
    cost_per_call: float | None = 0.001,
    failures: int = 0,
) -> Path:
    """Write a run with the given per-unit explanation scores (unit id → list of scores)."""
    path.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        path / "manifest.json",
        RunManifest(
            subject={"model": MODEL},
            stages={
                "explain": {"explainer": explainer, "prompt_version": explain_prompt},
                "simulate": {
                    "simulator": simulator,
                    "strategy": "all_at_once",
                    "prompt_version": sim_prompt,
                },
            },
        ),
    )
    records, explanations, sims, score_rows, usage = [], [], [], [], []
    for u, unit_id in enumerate(scores):
        _, layer, index = unit_id.rsplit("/", 2)
        rng = np.random.default_rng(excerpt_seed * 1000 + u)
        top = [_excerpt(rng, i) for i in range(4)]
        rnd = [_excerpt(rng, 10 + i) for i in range(3)]
        if unit_id == hostile_unit:
            top[0] = ActivationRecord(
                tokens=[" hello", HOSTILE[0], " and", HOSTILE[1], " bye"],
                activations=[0.1, 3.0, 0.0, 2.0, 0.2],
            )
        records.append(
            NeuronRecord(
                unit_id=unit_id,
                model=MODEL,
                layer=int(layer),
                index=int(index),
                most_positive_activation_records=top,
                random_sample=rnd,
            )
        )
        for k, value in enumerate(scores[unit_id]):
            eid = f"{unit_id}#{explainer}#{k}"
            text = f"words about topic {u} (sample {k})"
            if unit_id == hostile_unit and k == 0:
                text = HOSTILE[0] + " " + HOSTILE[1]
            explanations.append(
                Explanation(
                    explanation_id=eid,
                    unit_id=unit_id,
                    sample_index=k,
                    text=text,
                    explainer=explainer,
                    prompt_version=explain_prompt,
                    config_hash="cfg",
                    train_excerpts=["top:1", "top:3"],
                )
            )
            held = [("top:0", "top", "test", top[0]), ("random:0", "random", "test", rnd[0])]
            held.append(("top:2", "top", "calibration", top[2]))
            for excerpt_id, kind, role, rec in held:
                mx = max(max(rec.activations), 1e-6)
                sims.append(
                    SequenceSimulation(
                        explanation_id=eid,
                        unit_id=unit_id,
                        excerpt_id=excerpt_id,
                        kind=kind,
                        role=role,
                        tokens=rec.tokens,
                        true_activations=rec.activations,
                        expected_activations=[
                            round(10 * a / mx * (0.5 + 0.5 * value), 3) for a in rec.activations
                        ],
                        strategy="all_at_once",
                        simulator=simulator,
                        prompt_version=sim_prompt,
                        config_hash="cfg",
                    )
                )
            score_rows.append(
                Score(
                    explanation_id=eid,
                    unit_id=unit_id,
                    explanation=text,
                    explainer=explainer,
                    scorer="simulation",
                    scorer_model=simulator,
                    config_hash="cfg",
                    # The simulation scorer's metrics, in the order it writes them.
                    metrics={
                        "score": value,
                        "top_score": value,
                        "random_score": value / 2,
                        "r2": None,
                        "abs_dev_score": None,
                    },
                    primary_metric="score",
                    interval=ScoreInterval(
                        metric="score", low=value - 0.1, high=min(1.0, value + 0.1)
                    ),
                    n_excerpts=2,
                    n_tokens=12,
                    heldout_hash=fingerprint(
                        (x_id, role, rec.tokens, rec.activations) for x_id, _, role, rec in held
                    ),
                    comparable={
                        "scorer": "simulation",
                        "simulator": simulator,
                        "strategy": "all_at_once",
                        "prompt_version": sim_prompt,
                    },
                    details={"strategy": "all_at_once", "prompt_version": sim_prompt},
                )
            )
            usage.append(
                UsageRecord(
                    stage="explain",
                    model=explainer,
                    unit_id=unit_id,
                    prompt_tokens=tokens_per_call,
                    completion_tokens=10,
                    cost_usd=cost_per_call,
                )
            )
            usage.append(
                UsageRecord(stage="simulate", model=simulator, unit_id=unit_id, prompt_tokens=50)
            )
    append_jsonl(path / "records" / "layer.jsonl", records)
    append_jsonl(path / "explanations.jsonl", explanations)
    append_jsonl(path / "simulations.jsonl", sims)
    append_jsonl(path / "scores.jsonl", score_rows)
    append_jsonl(path / "usage.jsonl", usage)
    if failures:
        append_jsonl(
            path / "failures.jsonl",
            [
                # Distinct units: failures are told apart by their typed key fields.
                Failure(stage="simulate", unit_id=f"x/0/{i}", reason="boom", config_hash="cfg")
                for i in range(failures)
            ],
        )
    return path


def add_scorer(
    path: Path,
    name: str,
    metrics: Callable[[Score], dict[str, float | None]],
    *,
    primary_metric: str,
    model: str = "judge-llm",
    prompt_version: str = "v1",
    interval_metric: str | None = None,
    flags: list[str] | None = None,
) -> int:
    """Append one `name` Score line per simulation score of the run, as a plug-in would.

    `metrics` maps the explanation's simulation score to the new scorer's metrics; the
    held-out fingerprint is the simulation score's (the same excerpts were scored).
    """
    lines = []
    for s in read_jsonl(path / "scores.jsonl", Score):
        if s.scorer != "simulation":
            continue
        m = metrics(s)
        interval = None
        if interval_metric is not None and m.get(interval_metric) is not None:
            v = m[interval_metric]
            interval = ScoreInterval(metric=interval_metric, low=v - 0.05, high=v + 0.05, level=0.9)
        lines.append(
            Score(
                explanation_id=s.explanation_id,
                unit_id=s.unit_id,
                explanation=s.explanation,
                explainer=s.explainer,
                scorer=name,
                scorer_model=model,
                config_hash="cfg-" + name,
                metrics=m,
                primary_metric=primary_metric,
                interval=interval,
                n_excerpts=s.n_excerpts,
                n_tokens=s.n_tokens,
                heldout_hash=s.heldout_hash,
                comparable={"scorer": name, "model": model, "prompt_version": prompt_version},
                details={"prompt_version": prompt_version},
                flags=list(flags or []),
            )
        )
    return append_jsonl(path / "scores.jsonl", lines)


def detection_metrics(s: Score) -> dict[str, float | None]:
    """A made-up detection scorer's metrics, derived from the simulation score."""
    return {
        "balanced_accuracy": round(0.5 + s.score / 4, 6),
        "auc": round(min(1.0, 0.5 + s.score / 2), 6),
    }


def downgrade_scores_to_v1(path: Path) -> None:
    """Rewrite scores.jsonl as neuroscribe 0.1 wrote it: flat simulation columns only."""
    lines: list[dict[str, Any]] = []
    for s in read_jsonl(path / "scores.jsonl", Score):
        assert s.scorer == "simulation", "0.1 had only the simulation scorer"
        lines.append(
            {
                "schema_version": 1,
                "explanation_id": s.explanation_id,
                "unit_id": s.unit_id,
                "explanation": s.explanation,
                "explainer": s.explainer,
                "simulator": s.scorer_model,
                "strategy": s.strategy,
                "prompt_version": s.prompt_version,
                "config_hash": s.config_hash,
                **s.metrics,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "n_excerpts": s.n_excerpts,
                "n_tokens": s.n_tokens,
                "flags": s.flags,
                "created_at": s.created_at,
            }
        )
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (path / "scores.jsonl").write_text(text, encoding="utf-8")
