"""Publish a run as a dataset folder: JSONL + Parquet + a dataset card others can load.

    out/
      README.md             dataset card; its YAML `configs:` make `datasets.load_dataset(out)` work
      explanations.jsonl    one `PublishedExplanation` per line (one row per unit and explanation)
      explanations.parquet  the same rows, typed
      records.jsonl         with `with_records`: the NeuronRecords (OpenAI's field names)
      records.parquet       the same records, for `load_dataset(out, "records")`
      openai/explanations/<layer>/<index>.jsonl
                            with `openai_layout`: OpenAI's NeuronSimulationResults per neuron
      openai/provenance.json
                            with `openai_layout`: the run's provenance (OpenAI's documents
                            have no field for it)
      image_excerpts.jsonl  image runs (vision units): one `PublishedImageExcerpt` per
                            picture of each unit's top and random samples
      image_excerpts.parquet
                            the same rows, for `load_dataset(out, "image_excerpts")`
      images/thumbs/<sha256>.png
                            image runs: every such picture's thumbnail (the full pictures
                            stay in the run directory; `sha256` identifies them)

With `format="neuronpedia"` the folder holds Neuronpedia's import layout instead (see
`neuroscribe.neuronpedia`).

Every published row carries its provenance (`Provenance`): explainer and simulator
models, prompt versions, split and sampler settings, seed, package version, subject
model, layer, hook and SAE. It is built once per run (`RunProvenance`) from the
manifest and the rows' own fields, then shared by every row of the same layer and
explainer/simulator set-up.

The folder is written into a temporary sibling folder and moved into place only when
everything is written, so a failure leaves no half-written folder behind. Paths built
from the run's data (a layer name, an index) are encoded as one safe file name and
checked to stay inside the folder.

`push_folder_to_hub` uploads the folder with `huggingface_hub` (imported lazily: an
optional dependency, `pip install neuroscribe[hub]`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from neuroscribe.compare import REFERENCE_SCORER, default_scorer
from neuroscribe.errors import ConfigError, DataError, NeuroscribeError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.provenance import (
    PUBLISHED_SCHEMA_VERSION,
    RunProvenance,
    UnitSourceProvenance,
    run_provenance,
)
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import ImageRef, Score, SequenceSimulation
from neuroscribe.scorer import correlation
from neuroscribe.vision.store import IMAGES_DIR, THUMBS_DIR, ImageStore, png_bytes, thumbnail_of

PublishFormat = Literal["hf", "neuronpedia"]
FORMATS: tuple[str, ...] = ("hf", "neuronpedia")


class PublishedExplanation(BaseModel):
    """One row of the published dataset: an explanation of a unit with its scores.

    The declared fields are the same for every run. The score columns are extra fields,
    named after the metrics the run's scorers wrote (`metric_columns`): the primary
    scorer's metrics under their own names (`score`, `top_score`, ... and `ci_low`,
    `ci_high` of its interval, for the simulation scorer), every other scorer's as
    `<scorer>_<metric>`. All are floats or None.
    """

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, float | None] = Field(init=False)  # the score columns

    unit_id: str
    model: str | None
    layer: str | None  # a string: layers may be numbers or module names
    index: int | None
    explanation_id: str
    sample_index: int
    explanation: str
    n_excerpts: int | None
    n_tokens: int | None
    best_for_unit: bool  # best by the primary scorer's primary metric
    explainer: str
    explainer_prompt_version: str
    scorer: str | None  # the primary scorer, whose metrics have bare column names
    simulator: str | None  # the primary scorer's model
    strategy: str | None
    prompt_version: str | None  # the prompt the primary score was computed with
    flags: list[str]  # the primary scorer's flags; another scorer's as "<scorer>:<flag>"
    # Provenance (schema 2): the most-filtered fields as columns, everything as JSON.
    schema_version: int = PUBLISHED_SCHEMA_VERSION
    package_version: str | None = None  # the neuroscribe version that made the run
    unit_type: str | None = None
    module: str | None = None
    hook: str | None = None
    hook_name: str | None = None
    sae_id: str | None = None
    seed: int | None = None
    provenance: str = ""  # a `Provenance` as one JSON document

    @property
    def metrics(self) -> dict[str, float | None]:
        """The score columns of this row, by column name."""
        return dict(self.__pydantic_extra__ or {})


# Arrow types of the declared columns; the score columns are all float64. The schema is
# written explicitly so all-null columns still get their real type.
_BASE_TYPES: dict[str, pa.DataType] = {
    "unit_id": pa.string(),
    "model": pa.string(),
    "layer": pa.string(),
    "index": pa.int64(),
    "explanation_id": pa.string(),
    "sample_index": pa.int64(),
    "explanation": pa.string(),
    "n_excerpts": pa.int64(),
    "n_tokens": pa.int64(),
    "best_for_unit": pa.bool_(),
    "explainer": pa.string(),
    "explainer_prompt_version": pa.string(),
    "scorer": pa.string(),
    "simulator": pa.string(),
    "strategy": pa.string(),
    "prompt_version": pa.string(),
    "flags": pa.list_(pa.string()),
    "schema_version": pa.int64(),
    "package_version": pa.string(),
    "unit_type": pa.string(),
    "module": pa.string(),
    "hook": pa.string(),
    "hook_name": pa.string(),
    "sae_id": pa.string(),
    "seed": pa.int64(),
    "provenance": pa.string(),
}


@dataclass(frozen=True)
class MetricColumn:
    """A score column: which scorer's metric (or interval bound) it holds."""

    name: str
    scorer: str
    metric: str  # a metric name, or "ci_low" / "ci_high" for the interval bounds
    primary: bool  # the primary scorer's (bare column name)


def primary_scorer(run: Run) -> str | None:
    """The scorer whose metrics get bare column names: simulation if present, else the first."""
    return default_scorer(run)


def metric_columns(run: Run) -> list[MetricColumn]:
    """The score columns of this run, from the metric names its scorers wrote.

    The primary scorer first (its metrics, then `ci_low`, `ci_high`), then each other
    scorer in first-seen order (`<scorer>_<metric>`, plus `<scorer>_ci_low/high` if any
    of its scores has an interval). A name that collides with another column is a
    DataError (rename the metric).
    """
    primary = primary_scorer(run)
    order = [primary] + [x for x in run.scorers() if x != primary] if primary else []
    columns: list[MetricColumn] = []
    for scorer in order:
        scores = run.latest_scores(scorer)
        names = list(dict.fromkeys(m for s in scores for m in s.metrics))
        is_primary = scorer == primary
        if is_primary or any(s.interval is not None for s in scores):
            names += ["ci_low", "ci_high"]
        for metric in names:
            name = metric if is_primary else f"{scorer}_{metric}"
            columns.append(MetricColumn(name, scorer, metric, is_primary))
    seen: dict[str, MetricColumn] = {}
    for c in columns:
        other = seen.get(c.name)
        if c.name in _BASE_TYPES or other is not None:
            what = f"{other.scorer}'s {other.metric!r}" if other else "a fixed column"
            raise DataError(
                f"{run.path}: the {c.scorer} metric {c.metric!r} would be published as column "
                f"{c.name!r}, which is already {what}"
            )
        seen[c.name] = c
    return columns


def arrow_schema(columns: list[str]) -> pa.Schema:
    """The Parquet schema of rows with these score columns (declared columns first)."""
    return pa.schema([*_BASE_TYPES.items(), *((c, pa.float64()) for c in columns)])


@dataclass
class PublishResult:
    out: Path
    n_rows: int
    n_units: int
    files: list[Path]
    format: str = "hf"
    counts: dict[str, int] = field(default_factory=dict)  # rows per file kind (neuronpedia)


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


def _value(s: Score | None, metric: str) -> float | None:
    if s is None:
        return None
    if metric == "ci_low":
        return s.ci_low
    if metric == "ci_high":
        return s.ci_high
    return s.metrics.get(metric)


def _headline(s: Score | None) -> float | None:
    return None if s is None else s.metrics.get(s.primary_metric)


def build_rows(run: Run, provenance: RunProvenance | None = None) -> list[PublishedExplanation]:
    """One row per explanation (latest line wins), joined with its scores and unit record.

    Every row has every score column of `metric_columns(run)` (None where that scorer
    did not score it), so the Parquet table has one typed column per metric, and the
    provenance of its layer and set-up (`provenance`, built once when not given).
    """
    prov = provenance or run_provenance(run)
    sims = {s.explanation_id: s for s in run.latest_scores(REFERENCE_SCORER)}
    records = run.records_by_unit()
    primary = primary_scorer(run)
    columns = metric_columns(run)
    by_scorer: dict[str, dict[str, Score]] = {
        name: {s.explanation_id: s for s in run.latest_scores(name)} for name in run.scorers()
    }
    main = by_scorer.get(primary or "", {})
    explanations = list(run.explanations_by_id().values())
    best: dict[str, tuple[float, str]] = {}
    for e in explanations:
        v = _headline(main.get(e.explanation_id))
        if v is not None and (e.unit_id not in best or v > best[e.unit_id][0]):
            best[e.unit_id] = (v, e.explanation_id)
    rows = []
    for e in explanations:
        s = main.get(e.explanation_id)
        rec = records.get(e.unit_id)
        model, layer, index = split_unit_id(e.unit_id)
        if rec is not None:
            model = rec.model or model
            layer = str(rec.layer) if rec.layer is not None else layer
            index = rec.index if rec.index is not None else index
        flags = list(s.flags) if s else []
        for name, scores in by_scorer.items():
            other = scores.get(e.explanation_id)
            if name != primary and other is not None:
                flags += [f"{name}:{f}" for f in other.flags]
        metrics = {
            c.name: _value(by_scorer[c.scorer].get(e.explanation_id), c.metric) for c in columns
        }
        layer_name = str(layer) if layer != "" else None
        p = prov.for_row(layer_name, e.explainer, e.prompt_version, sims.get(e.explanation_id))
        unit = p.unit or UnitSourceProvenance(layer="")
        rows.append(
            PublishedExplanation(
                unit_id=e.unit_id,
                model=model or None,
                layer=layer_name,
                index=int(index) if str(index).lstrip("-").isdigit() else None,
                explanation_id=e.explanation_id,
                sample_index=e.sample_index,
                explanation=e.text,
                n_excerpts=s.n_excerpts if s else None,
                n_tokens=s.n_tokens if s else None,
                best_for_unit=best.get(e.unit_id, (None, None))[1] == e.explanation_id,
                explainer=e.explainer,
                explainer_prompt_version=e.prompt_version,
                scorer=s.scorer if s else None,
                simulator=s.scorer_model if s else None,
                strategy=s.strategy if s else None,
                prompt_version=s.prompt_version if s else None,
                flags=flags,
                package_version=p.package_version,
                unit_type=unit.unit_type,
                module=unit.module,
                hook=unit.hook,
                hook_name=unit.hook_name,
                sae_id=unit.sae_id,
                seed=p.seed,
                provenance=prov.text(p),
                **metrics,
            )
        )
    return rows


def rows_to_table(rows: list[PublishedExplanation]) -> pa.Table:
    """The rows as an Arrow table with an explicit schema (every row has the same columns)."""
    columns = list(rows[0].metrics) if rows else []
    return pa.Table.from_pylist([r.model_dump() for r in rows], schema=arrow_schema(columns))


def rows_to_frame(rows: list[PublishedExplanation]) -> pd.DataFrame:
    return rows_to_table(rows).to_pandas()


# ---------------------------------------------------------------- image units


IMAGE_EXCERPTS = "image_excerpts"  # the file stem and the `datasets` config name


class PublishedImageExcerpt(BaseModel):
    """One picture of an image unit in the published dataset, with the unit's response.

    `excerpt_id` is the run's ("top:3", "random:0"): held-out simulations name the
    pictures they simulated by it. `thumbnail` is relative to the dataset folder.
    """

    unit_id: str
    excerpt_id: str
    kind: Literal["top", "random"]
    rank: int  # position in the record's list (top: strongest first)
    sha256: str  # of the full picture's PNG bytes in the run directory
    thumbnail: str  # images/thumbs/<sha256>.png
    width: int  # of the full picture
    height: int
    caption: str | None
    labels: list[str]
    activation: float  # the unit's pooled activation on the picture
    pooling: str  # how the activation was pooled over positions: max or mean
    spatial: list[list[float]] | None  # the unit's map (rows of cells/patches); None: none


_IMAGE_TYPES: dict[str, pa.DataType] = {
    "unit_id": pa.string(),
    "excerpt_id": pa.string(),
    "kind": pa.string(),
    "rank": pa.int64(),
    "sha256": pa.string(),
    "thumbnail": pa.string(),
    "width": pa.int64(),
    "height": pa.int64(),
    "caption": pa.string(),
    "labels": pa.list_(pa.string()),
    "activation": pa.float64(),
    "pooling": pa.string(),
    "spatial": pa.list_(pa.list_(pa.float64())),
}


def thumbnail_path(sha256: str) -> str:
    """Where a picture's thumbnail sits in the published folder (and in the run)."""
    return f"{IMAGES_DIR}/{THUMBS_DIR}/{sha256}.png"


def image_excerpt_rows(run: Run) -> tuple[list[PublishedImageExcerpt], dict[str, ImageRef]]:
    """The pictures of the run's image units, and each distinct picture's reference.

    Empty for text runs. Top and random samples, as the record lists them.
    """
    rows: list[PublishedImageExcerpt] = []
    refs: dict[str, ImageRef] = {}
    for rec in run.records:
        if rec.modality != "image":
            continue
        pools = (("top", rec.most_positive_activation_records), ("random", rec.random_sample))
        for kind, pool in pools:
            for i, r in enumerate(pool):
                if r.image is None:
                    continue
                ref = r.image
                refs.setdefault(ref.sha256, ref)
                rows.append(
                    PublishedImageExcerpt(
                        unit_id=rec.unit_id,
                        excerpt_id=f"{kind}:{i}",
                        kind=kind,  # type: ignore[arg-type]
                        rank=i,
                        sha256=ref.sha256,
                        thumbnail=thumbnail_path(ref.sha256),
                        width=ref.width,
                        height=ref.height,
                        caption=ref.caption,
                        labels=list(ref.labels),
                        activation=r.activations[0],
                        pooling=ref.pooling,
                        spatial=ref.spatial,
                    )
                )
    return rows, refs


def _thumbnail_bytes(run: Run, store: ImageStore, ref: ImageRef) -> bytes:
    """The picture's thumbnail file, or one made from the picture when it has none."""
    try:
        return store.file(ref, thumbnail=True).read_bytes()
    except DataError:
        pass
    try:
        return png_bytes(thumbnail_of(store.open(ref)))
    except DataError as e:
        raise DataError(
            f"{run.path}: cannot publish picture {ref.sha256[:12]}: {e} (image runs publish "
            "a thumbnail of every top and random picture; restore the run's images/ folder)"
        ) from None


def _write_images(
    run: Run, out: Path, rows: list[PublishedImageExcerpt], refs: dict[str, ImageRef]
) -> list[Path]:
    files = []
    jsonl = out / f"{IMAGE_EXCERPTS}.jsonl"
    append_jsonl(jsonl, rows)
    parquet = out / f"{IMAGE_EXCERPTS}.parquet"
    table = pa.Table.from_pylist([r.model_dump() for r in rows], schema=pa.schema(_IMAGE_TYPES))
    pq.write_table(table, parquet)
    files += [jsonl, parquet]
    store = ImageStore(run.path)
    for sha, ref in refs.items():
        # sha is 64 hex digits (checked by ImageRef), so the name cannot leave the folder.
        dest = out / thumbnail_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(_thumbnail_bytes(run, store, ref))
        files.append(dest)
    return files


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

    Simulation scores only (OpenAI's format has no other scorer). Only the held-out test
    excerpts go into `scored_sequence_simulations`; the explanation-level scores are ours (correlation over all test tokens concatenated,
    the same definition as theirs).
    """
    sims = run.simulations_by_explanation()
    scores = {s.explanation_id: s for s in run.latest_scores(REFERENCE_SCORER)}
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
                    "ev_correlation_score": s.metrics.get("score"),
                    "rsquared_score": s.metrics.get("r2"),
                    "absolute_dev_explained_score": s.metrics.get("abs_dev_score"),
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


# What the reference scorer's metrics mean, for the card; any other metric gets a
# generic line naming its scorer, so a new scorer needs no edit here.
_METRIC_NOTES: dict[tuple[str, str], str] = {
    (REFERENCE_SCORER, "score"): "correlation of true and simulated activations, all held-out "
    "excerpts",
    (REFERENCE_SCORER, "top_score"): "the same correlation over top-activating excerpts only",
    (REFERENCE_SCORER, "random_score"): "the same correlation over random excerpts only",
    (REFERENCE_SCORER, "r2"): "R² after linear calibration on calibration excerpts",
    (REFERENCE_SCORER, "abs_dev_score"): "absolute deviation explained, after calibration",
}


def _column_notes(run: Run, columns: list[MetricColumn]) -> list[tuple[str, str]]:
    """(column, meaning) for each score column, from the scores themselves."""
    intervals: dict[str, tuple[str, float]] = {}
    primary_metrics: dict[str, str] = {}
    for s in run.scores:
        primary_metrics.setdefault(s.scorer, s.primary_metric)
        if s.interval is not None:
            intervals.setdefault(s.scorer, (s.interval.metric, s.interval.level))
    out = []
    for c in columns:
        if c.metric in ("ci_low", "ci_high"):
            metric, level = intervals.get(c.scorer, (primary_metrics.get(c.scorer, "?"), 0.95))
            bound = "lower" if c.metric == "ci_low" else "upper"
            shown = metric if c.primary else f"{c.scorer}_{metric}"
            note = f"{bound} bound of the {level:.0%} interval of `{shown}` ({c.scorer} scorer)"
        else:
            note = _METRIC_NOTES.get((c.scorer, c.metric), f"metric `{c.metric}`")
            note += f" ({c.scorer} scorer"
            note += ", its primary metric)" if primary_metrics.get(c.scorer) == c.metric else ")"
        out.append((c.name, note))
    return out


def _provenance_lines(prov: RunProvenance) -> list[str]:
    b = prov.base

    def show(v: Any) -> str:
        return "n/a" if v is None else f"`{v}`" if not isinstance(v, dict) else f"`{json.dumps(v)}`"

    lines = [
        f"- made with neuroscribe {show(b.package_version)}, published with {show(b.published_with)}",
        f"- subject model: {show(b.subject_model)} (revision {show(b.subject_revision)})",
        f"- explainer: {show(b.explainer)}, prompt {show(b.explain_prompt_version)}",
        f"- simulator: {show(b.simulator)}, prompt {show(b.simulate_prompt_version)}, "
        f"strategy {show(b.simulation_strategy)}",
        f"- splits: {show(b.splits)}",
        f"- sampler: {show(b.sampler)}, seed {show(b.seed)}",
    ]
    for src in prov.sources.values():
        where = f"{src.module or '?'} ({src.hook or '?'})"
        if src.hook_name:
            where += f", hook {src.hook_name}"
        if src.sae_id:
            where += f", SAE {src.sae_id}"
        lines.append(f"- layer `{src.layer}`: {src.unit_type or 'units'} at {where}")
    return lines


def dataset_card(
    run: Run,
    rows: list[PublishedExplanation],
    license: str,
    with_records: bool,
    provenance: RunProvenance | None = None,
    n_images: int = 0,
) -> str:
    """README.md with YAML front matter that `datasets` and the Hub read.

    `n_images`: the image excerpt rows of an image run (0: a text run, no image section).
    """
    n_units = len({r.unit_id for r in rows})
    columns = metric_columns(run)
    primary = primary_scorer(run)
    headline = next((s.primary_metric for s in run.scores if s.scorer == primary), None)
    scored = [v for r in rows if (v := r.metrics.get(headline or "")) is not None]
    best = [v for r in rows if r.best_for_unit and (v := r.metrics.get(headline or "")) is not None]
    explainers = sorted({r.explainer for r in rows})
    models = sorted({r.model for r in rows if r.model})
    scorer_models: dict[str, set[str]] = defaultdict(set)
    for s in run.scores:
        scorer_models[s.scorer].add(s.scorer_model or "")
    scored_by = ", ".join(
        f"{name} ({', '.join(sorted(m for m in scorer_models[name] if m)) or 'no model'})"
        for name in run.scorers()
    )
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
    if n_images:
        configs += [
            f"- config_name: {IMAGE_EXCERPTS}",
            "  data_files:",
            "  - split: train",
            f"    path: {IMAGE_EXCERPTS}.parquet",
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

    stats = [f"- rows: {len(rows)} (one per unit and explanation), scored: {len(scored)}"]
    if primary and headline:
        stats.append(
            f"- mean explanation score ({primary} `{headline}`): {mean(scored)}; "
            f"mean of each unit's best explanation: {mean(best)}"
        )
    for c in columns:
        if not c.primary and c.metric not in ("ci_low", "ci_high"):
            values = [v for r in rows if (v := r.metrics.get(c.name)) is not None]
            stats.append(f"- mean `{c.name}`: {mean(values)} over {len(values)} explanations")
    about = ""
    if REFERENCE_SCORER in run.scorers():
        about = """
The simulation score is the correlation between the unit's true activations and the
activations a simulator model predicts from the explanation alone, over held-out excerpts
(top-activating and random ones concatenated), as in Bills et al. (2023), "Language models
can explain neurons in language models".
"""
    if len(run.scorers()) > 1 or (primary and primary != REFERENCE_SCORER):
        about += f"""
The primary scorer ({primary}) has bare column names; every other scorer's metrics are
columns named `<scorer>_<metric>`.
"""
    images = ""
    if n_images:
        images = f"""
## Images

The units are vision units: their excerpts are pictures. `{IMAGE_EXCERPTS}.parquet`
(config `{IMAGE_EXCERPTS}`) has {n_images} rows, one per picture of each unit's top and
random samples: `unit_id`, `excerpt_id` (`top:N` / `random:N`, as the held-out
simulations name them), `sha256` of the full picture, `thumbnail` (a PNG in this folder,
`images/thumbs/<sha256>.png`), `width` and `height` of the full picture, `caption` and
`labels` (untrusted text), the unit's pooled `activation` and its `pooling` (max or mean
over positions), and `spatial`, the unit's map over the picture (rows of cells or
patches; empty for units without positions). The full pictures are not included.
"""
    column_rows = "\n".join(f"| {name} | {note} |" for name, note in _column_notes(run, columns))
    manifest = run.manifest.model_dump(mode="json") if run.manifest else {}
    provenance_lines = "\n".join(_provenance_lines(provenance or run_provenance(run)))
    body = f"""
# Explanations of {", ".join(models) or "model"} units

Natural-language explanations of {n_units} units, written by {", ".join(explainers)} and
scored by {scored_by or "no scorer yet"} (made with
[neuroscribe](https://pypi.org/project/neuroscribe/)).

{chr(10).join(stats)}
{about}{images}
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
{column_rows}
| n_excerpts, n_tokens | held-out excerpts and tokens the primary score used |
| best_for_unit | the explanation of its unit with the highest primary score |
| explainer, explainer_prompt_version | who wrote the explanation, with which prompt |
| scorer, simulator, strategy, prompt_version | the primary scorer, its model and settings |
| flags | scorer warnings (e.g. constant prediction); another scorer's as `scorer:flag` |
| schema_version | the version of this row layout ({PUBLISHED_SCHEMA_VERSION}) |
| package_version | the neuroscribe version that made the run |
| unit_type, module, hook, hook_name | where the unit was read: unit type, hooked module, its input or output, the TransformerLens hook name |
| sae_id | the sparse autoencoder the unit is a latent of (empty for neurons) |
| seed | the recording seed |
| provenance | everything above and more as one JSON document: explainer and simulator models, explain and simulate prompt versions, simulation strategy, every scorer's model and prompt, split and sampler settings, subject model and revision |

## Provenance

{provenance_lines}

## Run manifest

```json
{json.dumps(manifest, indent=2)}
```
"""
    return "\n".join(front) + "\n" + body


# ---------------------------------------------------------------- publish


# A file name is at most 255 bytes on common file systems; leave room for ".jsonl".
_MAX_NAME = 200


def safe_path_name(text: str, what: str) -> str:
    """One file or folder name made from untrusted text, never a path.

    Letters, digits and `_ . - ~` are kept, everything else (`/`, `\\`, NUL, spaces,
    `%`, non-ASCII) is percent-encoded, and a leading `.` becomes `%2E` (so `.`, `..`
    and hidden names cannot occur). The encoding is one-to-one, so different layers
    never share a file. `what` names the value in the error for an empty or overlong
    name.
    """
    name = quote(text, safe="")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if not name:
        raise DataError(f"{what} is empty, so it cannot name a file")
    if len(name) > _MAX_NAME:
        raise DataError(f"{what} is too long to name a file ({len(name)} characters encoded)")
    return name


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _check_out(run: Run, out: Path, overwrite: bool) -> None:
    """Refuse an --out that is a file, is (inside) the run directory, or is not empty."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is an existing file; publish writes a folder")
    run_root, target = Path(run.path).resolve(), out.resolve()
    if _inside(target, run_root):
        raise ConfigError(
            f"--out {out} is inside the run directory {run.path}: publishing there would mix "
            "with or overwrite the run's own files; choose a folder outside the run"
        )
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty (pass --overwrite to replace)")


def _write_folder(
    run: Run,
    out: Path,
    rows: list[PublishedExplanation],
    *,
    with_records: bool,
    openai_layout: bool,
    license: str,
    provenance: RunProvenance,
) -> list[Path]:
    """Write every file of the dataset folder into `out` (a fresh folder); returns them."""
    files = []

    jsonl = out / "explanations.jsonl"
    append_jsonl(jsonl, rows)
    files.append(jsonl)

    parquet = out / "explanations.parquet"
    pq.write_table(rows_to_table(rows), parquet)
    files.append(parquet)

    if with_records:
        if not run.records:
            raise DataError(f"{run.path}: --with-records but the run has no records/")
        rec_path = out / "records.jsonl"
        append_jsonl(rec_path, run.records)
        # `datasets` picks one builder for the whole folder, so the records config gets a
        # Parquet twin; pyarrow's JSON reader unifies the (nested, optional) fields.
        rec_parquet = out / "records.parquet"
        pq.write_table(pa_json.read_json(rec_path), rec_parquet)
        files += [rec_path, rec_parquet]

    if openai_layout:
        docs = openai_neuron_files(run)
        if not docs:
            raise DataError(
                f"{run.path}: --openai-layout needs {REFERENCE_SCORER} scores "
                f"(this run has: {', '.join(run.scorers()) or 'none'})"
            )
        base = out / "openai" / "explanations"
        for (layer, index), doc in docs.items():
            # Layer and index come from the run's data: each becomes one safe name.
            unit = f"{layer}/{index}"
            folder = safe_path_name(layer, f"{run.path}: the layer of unit {unit!r}")
            name = safe_path_name(index, f"{run.path}: the index of unit {unit!r}")
            p = base / folder / f"{name}.jsonl"
            if not _inside(p.resolve(), base.resolve()):  # belt and braces
                raise DataError(f"{run.path}: unit {unit!r} would be written outside {base}")
            p.parent.mkdir(parents=True, exist_ok=True)
            # One JSON document on one line, as in OpenAI's public files.
            p.write_text(json.dumps(doc, allow_nan=False) + "\n", encoding="utf-8")
            files.append(p)
        # OpenAI's documents have no field for provenance (their loaders take only known
        # fields), so it sits beside them: the run's, and each layer's hook point.
        side = out / "openai" / "provenance.json"
        side.write_text(
            json.dumps(openai_provenance(provenance), indent=2, allow_nan=False) + "\n",
            encoding="utf-8",
        )
        files.append(side)

    image_rows, refs = image_excerpt_rows(run)
    if image_rows:
        files += _write_images(run, out, image_rows, refs)

    card = out / "README.md"
    text = dataset_card(run, rows, license, with_records, provenance, n_images=len(image_rows))
    card.write_text(text, encoding="utf-8")
    files.append(card)
    return files


def openai_provenance(prov: RunProvenance) -> dict[str, Any]:
    """openai/provenance.json: the run's provenance and each layer's source."""
    return {
        "schema_version": PUBLISHED_SCHEMA_VERSION,
        "provenance": prov.base.model_dump(mode="json", exclude={"unit"}),
        "layers": {k: v.model_dump(mode="json") for k, v in prov.sources.items()},
    }


def _move_into_place(run: Run, tmp: Path, out: Path, files: list[Path]) -> list[Path]:
    """Move the finished files from `tmp` to `out`; every destination is checked first."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)  # one rename: the folder appears complete or not at all
        return [out / f.relative_to(tmp) for f in files]
    root, run_root = out.resolve(), Path(run.path).resolve()
    moves = []
    for f in files:
        dest = out / f.relative_to(tmp)
        real = dest.resolve()  # follows a symlink already in the folder
        if not _inside(real, root):
            raise ConfigError(f"{dest} leads outside {out} (a symbolic link?); not writing there")
        if _inside(real, run_root):
            raise ConfigError(
                f"--out {out} contains the run directory {run.path}: publishing would "
                f"overwrite the run's file {dest}; choose a folder outside the run"
            )
        if dest.is_dir():
            raise ConfigError(f"{dest} is a folder; cannot replace it with a file")
        moves.append((f, dest))
    for f, dest in moves:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(f, dest)
    return [dest for _, dest in moves]


def publish_run(
    run: Run,
    out: Path,
    *,
    with_records: bool = False,
    openai_layout: bool = False,
    allow_failures: bool = False,
    license: str = "cc-by-4.0",
    overwrite: bool = False,
    format: PublishFormat = "hf",
    neuronpedia: Any = None,
) -> PublishResult:
    """Validate the run and write the dataset folder; returns what was written.

    `format="hf"` (the default) writes the dataset folder above; `"neuronpedia"` writes
    Neuronpedia's import layout (`neuroscribe.neuronpedia`), with `neuronpedia` a
    `NeuronpediaOptions` (None: the defaults). Everything is written into a temporary
    sibling folder first and moved into `out` only once complete: on any failure `out`
    is as it was (a rerun is not blocked). With `overwrite`, files of the same name in
    `out` are replaced; others are kept.
    """
    if format not in FORMATS:
        raise ConfigError(f"unknown publish format {format!r}; choose one of {', '.join(FORMATS)}")
    if format == "neuronpedia" and (with_records or openai_layout):
        flag = "--with-records" if with_records else "--openai-layout"
        raise ConfigError(f"{flag} belongs to the default format, not --format neuronpedia")
    if format != "neuronpedia" and neuronpedia is not None:
        raise ConfigError("Neuronpedia options (--np-...) need --format neuronpedia")
    out = Path(out)
    validate_for_publish(run, allow_failures=allow_failures)
    _check_out(run, out, overwrite)
    provenance = run_provenance(run)
    rows = build_rows(run, provenance)
    counts: dict[str, int] = {}
    export = None
    if format == "neuronpedia":
        from neuroscribe import neuronpedia as np_export

        # Built (and checked) before anything is written.
        export = np_export.build_export(run, rows, provenance, neuronpedia)
        counts = export.counts()
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.resolve().name}.publish-", dir=parent))
    try:
        if export is not None:
            written = np_export.write_export(export, tmp)
        else:
            written = _write_folder(
                run,
                tmp,
                rows,
                with_records=with_records,
                openai_layout=openai_layout,
                license=license,
                provenance=provenance,
            )
        files = _move_into_place(run, tmp, out, written)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return PublishResult(
        out=out,
        n_rows=len(rows),
        n_units=len({r.unit_id for r in rows}),
        files=files,
        format=format,
        counts=counts,
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
