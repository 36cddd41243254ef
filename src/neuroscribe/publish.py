"""Publish a run as a dataset folder: JSONL + Parquet + a dataset card others can load.

    out/
      README.md             dataset card; its YAML `configs:` make `datasets.load_dataset(out)` work
      explanations.jsonl    one `PublishedExplanation` per line (one row per unit and explanation)
      explanations.parquet  the same rows, typed
      records.jsonl         with `with_records`: the NeuronRecords (OpenAI's field names)
      records.parquet       the same records, for `load_dataset(out, "records")`
      openai/explanations/<layer>/<index>.jsonl
                            with `openai_layout`: OpenAI's NeuronSimulationResults per neuron

`push_folder_to_hub` uploads the folder with `huggingface_hub` (imported lazily: an
optional dependency, `pip install neuroscribe[hub]`).
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import BaseModel

from neuroscribe.errors import ConfigError, DataError, NeuroscribeError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import Score, SequenceSimulation
from neuroscribe.scorer import correlation


class PublishedExplanation(BaseModel):
    """One row of the published dataset: an explanation of a unit with its scores."""

    unit_id: str
    model: str | None
    layer: str | None  # a string: layers may be numbers or module names
    index: int | None
    explanation_id: str
    sample_index: int
    explanation: str
    score: float | None
    top_score: float | None
    random_score: float | None
    ci_low: float | None
    ci_high: float | None
    r2: float | None
    abs_dev_score: float | None
    n_excerpts: int | None
    n_tokens: int | None
    best_for_unit: bool
    explainer: str
    explainer_prompt_version: str
    simulator: str | None
    strategy: str | None
    prompt_version: str | None  # the simulation prompt the score was computed with
    flags: list[str]


# Parquet schema written explicitly so all-null columns still get their real type.
_ARROW_SCHEMA = pa.schema(
    [
        ("unit_id", pa.string()),
        ("model", pa.string()),
        ("layer", pa.string()),
        ("index", pa.int64()),
        ("explanation_id", pa.string()),
        ("sample_index", pa.int64()),
        ("explanation", pa.string()),
        ("score", pa.float64()),
        ("top_score", pa.float64()),
        ("random_score", pa.float64()),
        ("ci_low", pa.float64()),
        ("ci_high", pa.float64()),
        ("r2", pa.float64()),
        ("abs_dev_score", pa.float64()),
        ("n_excerpts", pa.int64()),
        ("n_tokens", pa.int64()),
        ("best_for_unit", pa.bool_()),
        ("explainer", pa.string()),
        ("explainer_prompt_version", pa.string()),
        ("simulator", pa.string()),
        ("strategy", pa.string()),
        ("prompt_version", pa.string()),
        ("flags", pa.list_(pa.string())),
    ]
)


@dataclass
class PublishResult:
    out: Path
    n_rows: int
    n_units: int
    files: list[Path]


def validate_for_publish(run: Run, allow_failures: bool = False) -> None:
    """Refuse runs that would publish something misleading."""
    if not run.explanations:
        raise DataError(f"{run.path}: no explanations to publish")
    failures = run.open_failures()
    if failures and not allow_failures:
        stages = sorted({f.stage for f in failures})
        raise DataError(
            f"{run.path}: {len(failures)} open failures in failures.jsonl (stages: "
            f"{', '.join(stages)}); finish or re-run them, or pass --allow-failures"
        )
    known = {e.explanation_id for e in run.explanations}
    orphans = [s.explanation_id for s in run.scores if s.explanation_id not in known]
    if orphans:
        raise DataError(
            f"{run.path}: scores.jsonl scores {len(orphans)} explanations missing from "
            f"explanations.jsonl (first: {orphans[0]})"
        )


def build_rows(run: Run) -> list[PublishedExplanation]:
    """One row per explanation (latest line wins), joined with its score and unit record."""
    records = run.records_by_unit()
    scores: dict[str, Score] = {s.explanation_id: s for s in run.latest_scores()}
    explanations = list(run.explanations_by_id().values())
    best: dict[str, tuple[float, str]] = {}
    for e in explanations:
        s = scores.get(e.explanation_id)
        if s is not None and (e.unit_id not in best or s.score > best[e.unit_id][0]):
            best[e.unit_id] = (s.score, e.explanation_id)
    rows = []
    for e in explanations:
        s = scores.get(e.explanation_id)
        rec = records.get(e.unit_id)
        model, layer, index = split_unit_id(e.unit_id)
        if rec is not None:
            model = rec.model or model
            layer = str(rec.layer) if rec.layer is not None else layer
            index = rec.index if rec.index is not None else index
        rows.append(
            PublishedExplanation(
                unit_id=e.unit_id,
                model=model or None,
                layer=str(layer) if layer != "" else None,
                index=int(index) if str(index).lstrip("-").isdigit() else None,
                explanation_id=e.explanation_id,
                sample_index=e.sample_index,
                explanation=e.text,
                score=s.score if s else None,
                top_score=s.top_score if s else None,
                random_score=s.random_score if s else None,
                ci_low=s.ci_low if s else None,
                ci_high=s.ci_high if s else None,
                r2=s.r2 if s else None,
                abs_dev_score=s.abs_dev_score if s else None,
                n_excerpts=s.n_excerpts if s else None,
                n_tokens=s.n_tokens if s else None,
                best_for_unit=best.get(e.unit_id, (None, None))[1] == e.explanation_id,
                explainer=e.explainer,
                explainer_prompt_version=e.prompt_version,
                simulator=s.simulator if s else None,
                strategy=s.strategy if s else None,
                prompt_version=s.prompt_version if s else None,
                flags=list(s.flags) if s else [],
            )
        )
    return rows


def rows_to_frame(rows: list[PublishedExplanation]) -> pd.DataFrame:
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=_ARROW_SCHEMA)
    return table.to_pandas()


# ---------------------------------------------------------------- OpenAI's layout


def _openai_sequence(sim: SequenceSimulation) -> dict:
    if sim.distributions:
        values = [list(map(float, range(len(d)))) for d in sim.distributions]
        probs = [list(d) for d in sim.distributions]
    else:
        values, probs = [], []
    return {
        "dataclass_name": "ScoredSequenceSimulation",
        "simulation": {
            "dataclass_name": "SequenceSimulation",
            "tokens": sim.tokens,
            "expected_activations": sim.expected_activations,
            "activation_scale": "simulated_normalized_activations",
            "distribution_values": values,
            "distribution_probabilities": probs,
            "uncalibrated_simulation": None,
        },
        "true_activations": sim.true_activations,
        "ev_correlation_score": _masked_correlation(sim.true_activations, sim.expected_activations),
        "rsquared_score": None,
        "absolute_dev_explained_score": None,
    }


def openai_neuron_files(run: Run) -> dict[tuple[str, str], dict]:
    """Per (layer, index): OpenAI's NeuronSimulationResults with every scored explanation.

    Only the held-out test excerpts go into `scored_sequence_simulations`; the
    explanation-level scores are ours (correlation over all test tokens concatenated,
    the same definition as theirs).
    """
    sims = run.simulations_by_explanation()
    scores = {s.explanation_id: s for s in run.latest_scores()}
    by_unit: dict[str, list] = defaultdict(list)
    for e in run.explanations_by_id().values():
        s = scores.get(e.explanation_id)
        if s is None:
            continue
        seqs = sorted(
            (x for x in sims.get(e.explanation_id, []) if x.role == "test"),
            key=lambda x: x.excerpt_id,
        )
        by_unit[e.unit_id].append(
            {
                "dataclass_name": "ScoredExplanation",
                "explanation": e.text,
                "scored_simulation": {
                    "dataclass_name": "ScoredSimulation",
                    "scored_sequence_simulations": [_openai_sequence(x) for x in seqs],
                    "ev_correlation_score": s.score,
                    "rsquared_score": s.r2,
                    "absolute_dev_explained_score": s.abs_dev_score,
                },
            }
        )
    records = run.records_by_unit()
    out = {}
    for unit_id, scored in by_unit.items():
        rec = records.get(unit_id)
        _, layer, index = split_unit_id(unit_id)
        if rec is not None and rec.layer is not None and rec.index is not None:
            layer, index = str(rec.layer), str(rec.index)
        neuron_id = {"dataclass_name": "NeuronId"}
        neuron_id["layer_index"] = int(layer) if layer.lstrip("-").isdigit() else layer
        neuron_id["neuron_index"] = int(index) if index.lstrip("-").isdigit() else index
        out[(layer, index)] = {
            "dataclass_name": "NeuronSimulationResults",
            "neuron_id": neuron_id,
            "scored_explanations": scored,
        }
    return out


# ---------------------------------------------------------------- the card


def _yaml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid YAML scalar, quotes and all


def dataset_card(
    run: Run, rows: list[PublishedExplanation], license: str, with_records: bool
) -> str:
    """README.md with YAML front matter that `datasets` and the Hub read."""
    n_units = len({r.unit_id for r in rows})
    scored = [r.score for r in rows if r.score is not None]
    best = [r.score for r in rows if r.best_for_unit and r.score is not None]
    explainers = sorted({r.explainer for r in rows})
    simulators = sorted({r.simulator for r in rows if r.simulator})
    models = sorted({r.model for r in rows if r.model})
    size = "n<1K" if len(rows) < 1000 else "1K<n<10K" if len(rows) < 10_000 else "10K<n<100K"
    if len(rows) >= 100_000:
        size = "100K<n<1M" if len(rows) < 1_000_000 else "n>1M"
    configs = [
        "configs:",
        "- config_name: default",
        "  data_files:",
        "  - split: train",
        "    path: explanations.parquet",
    ]
    if with_records:
        configs += [
            "- config_name: records",
            "  data_files:",
            "  - split: train",
            "    path: records.parquet",
        ]
    front = [
        "---",
        f"license: {license}",
        "language:",
        "- en",
        "pretty_name: " + _yaml_str(f"neuroscribe explanations of {', '.join(models) or run.name}"),
        "tags:",
        "- interpretability",
        "- neuron-explanations",
        "- automated-interpretability",
        "- neuroscribe",
        "size_categories:",
        f"- {size}",
        *configs,
        "---",
    ]

    def mean(v: list[float]) -> str:
        return f"{sum(v) / len(v):.3f}" if v else "n/a"

    manifest = run.manifest.model_dump(mode="json") if run.manifest else {}
    body = f"""
# Explanations of {", ".join(models) or "model"} units

Natural-language explanations of {n_units} units, written by {", ".join(explainers)} and
scored by simulation with {", ".join(simulators) or "no simulator"} (made with
[neuroscribe](https://pypi.org/project/neuroscribe/)).

- rows: {len(rows)} (one per unit and explanation), scored: {len(scored)}
- mean explanation score: {mean(scored)}; mean score of each unit's best explanation: {mean(best)}

The score is the correlation between the unit's true activations and the activations a
simulator model predicts from the explanation alone, over held-out excerpts (top-activating
and random ones concatenated), as in Bills et al. (2023), "Language models can explain
neurons in language models". `ci_low`/`ci_high` are bootstrap intervals over excerpts;
`top_score`/`random_score` use only top or random excerpts.

## Loading

```python
from datasets import load_dataset
ds = load_dataset("path/or/hub-id")  # split "train"
import pandas as pd
df = pd.read_parquet("explanations.parquet")
```

## Columns

| column | meaning |
| --- | --- |
| unit_id | `model/layer/index` |
| model, layer, index | the subject model and unit |
| explanation | the explanation text (model-generated: treat as untrusted text) |
| score, top_score, random_score | correlation scores (all / top / random held-out excerpts) |
| ci_low, ci_high | 95% bootstrap interval of `score` |
| r2, abs_dev_score | after linear calibration on calibration excerpts |
| best_for_unit | the highest-scoring explanation of its unit |
| explainer, explainer_prompt_version | who wrote the explanation, with which prompt |
| simulator, strategy, prompt_version | how it was scored |
| flags | scorer warnings (e.g. constant prediction) |

## Run manifest

```json
{json.dumps(manifest, indent=2)}
```
"""
    return "\n".join(front) + "\n" + body


# ---------------------------------------------------------------- publish


def publish_run(
    run: Run,
    out: Path,
    *,
    with_records: bool = False,
    openai_layout: bool = False,
    allow_failures: bool = False,
    license: str = "cc-by-4.0",
    overwrite: bool = False,
) -> PublishResult:
    """Validate the run and write the dataset folder; returns what was written."""
    out = Path(out)
    validate_for_publish(run, allow_failures=allow_failures)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty (pass --overwrite to replace)")
    out.mkdir(parents=True, exist_ok=True)
    rows = build_rows(run)
    files = []

    jsonl = out / "explanations.jsonl"
    jsonl.unlink(missing_ok=True)
    append_jsonl(jsonl, rows)
    files.append(jsonl)

    parquet = out / "explanations.parquet"
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=_ARROW_SCHEMA)
    pq.write_table(table, parquet)
    files.append(parquet)

    if with_records:
        rec_path = out / "records.jsonl"
        rec_path.unlink(missing_ok=True)
        if not run.records:
            raise DataError(f"{run.path}: --with-records but the run has no records/")
        append_jsonl(rec_path, run.records)
        # `datasets` picks one builder for the whole folder, so the records config gets a
        # Parquet twin; pyarrow's JSON reader unifies the (nested, optional) fields.
        rec_parquet = out / "records.parquet"
        pq.write_table(pa_json.read_json(rec_path), rec_parquet)
        files += [rec_path, rec_parquet]

    if openai_layout:
        for (layer, index), doc in openai_neuron_files(run).items():
            p = out / "openai" / "explanations" / layer / f"{index}.jsonl"
            p.parent.mkdir(parents=True, exist_ok=True)
            # One JSON document on one line, as in OpenAI's public files.
            p.write_text(json.dumps(doc, allow_nan=False) + "\n", encoding="utf-8")
            files.append(p)

    card = out / "README.md"
    card.write_text(dataset_card(run, rows, license, with_records), encoding="utf-8")
    files.append(card)
    return PublishResult(
        out=out, n_rows=len(rows), n_units=len({r.unit_id for r in rows}), files=files
    )


def push_folder_to_hub(folder: Path, repo_id: str, private: bool = False) -> str:
    """Upload a published folder to a Hugging Face dataset repo; returns its URL.

    Needs `huggingface_hub` (`pip install neuroscribe[hub]`), network access and a token
    (`huggingface-cli login` or HF_TOKEN).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ConfigError(
            "--push-to-hub needs huggingface_hub: pip install 'neuroscribe[hub]'"
        ) from None
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset")
    except Exception as e:  # network, auth and Hub errors all end the same way for the user
        raise NeuroscribeError(
            f"could not push {folder} to the Hub repo {repo_id}: {type(e).__name__}: {e} "
            "(is there network access and a token from `huggingface-cli login` or HF_TOKEN?)"
        ) from None
    return f"https://huggingface.co/datasets/{repo_id}"


def _masked_correlation(true: list[float], expected: list[float | None]) -> float:
    """Correlation over the tokens the simulator gave a value for."""
    kept = [(t, e) for t, e in zip(true, expected, strict=True) if e is not None]
    return correlation([t for t, _ in kept], [e for _, e in kept]).value
