"""Neuronpedia export: a run as the JSONL batches Neuronpedia's importer reads.

`neuroscribe publish RUN --out DIR --format neuronpedia` writes:

    DIR/
      neuroscribe-export.json         what was exported: options, counts, sources, provenance
      config/explanation_type.jsonl         ExplanationType rows (one per explain prompt)
      config/explanation_model_type.jsonl   ExplanationModelType rows (one per explainer)
      config/explanation_score_type.jsonl   ExplanationScoreType rows (one per scorer)
      config/explanation_score_model.jsonl  ExplanationScoreModel rows (one per scorer model)
      <modelId>/<sourceId>/
        model.jsonl  sourceset.jsonl  source.jsonl      one row each
        features/batch-<n>.jsonl.gz            Neuron rows: one per unit
        activations/batch-<n>.jsonl.gz         Activation rows: one per recorded excerpt
        explanations/batch-<n>.jsonl.gz        Explanation rows: one per explanation
        explanation_scores/batch-<n>.jsonl.gz  ExplanationScore rows: one per score

This is the layout of Neuronpedia's own exports and of its `utils/neuronpedia-utils`
converters; its admin import (`/api/admin/import?modelId=..&sourceId=..`) reads
`<modelId>/<sourceId>/{model,sourceset,source}.jsonl` and the `.jsonl.gz` batches of
`features/`, `activations/` and `explanations/`, inserting each line's keys into the
table columns of the same name (keys that are not columns are ignored; every line of a
file has the same keys, since the first line decides the columns). It does not read
`explanation_scores/` or `config/`: those rows are ready for the `ExplanationScore`
table and the four config tables, for an administrator to load.

Field names are Neuronpedia's database columns (its Prisma schema). A source id is
`<layer>` for MLP neurons (source set `neurons`) and `<layer>-<set>` otherwise (e.g.
`6-res-jb`; Neuronpedia reads the layer from the part before the first `-` and the
source set name from the rest, up to an optional `__suffix`). Ids are derived from the
run's own ids by hashing, so a re-export writes the same ids (and a re-import inserts
nothing twice). Every row of the batches carries its provenance: in a `neuroscribe`
field (not a column: the importer skips it) and, for scores, inside `jsonDetails`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.provenance import (
    PUBLISHED_SCHEMA_VERSION,
    Provenance,
    RunProvenance,
    UnitSourceProvenance,
)
from neuroscribe.publish import (
    PublishedExplanation,
    _inside,
    openai_provenance,
    safe_path_name,
)
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord, Score, utc_now

# The user a local Neuronpedia instance seeds (prisma/seed.ts) and its converters default
# to (DEFAULT_CREATOR_ID): rows need an existing user as author and creator.
DEFAULT_CREATOR_ID = "clkht01d40000jv08hvalcvly"
NEURONS_SOURCE_SET = "neurons"  # Neuronpedia's source set of a bare-number source id
DEFAULT_BATCH_SIZE = 1024  # rows per batch file, as in Neuronpedia's exports

# Neuronpedia's model id rule (its zod schema): letters, digits, `-` and `_`, lower case.
_MODEL_ID = re.compile(r"^[a-z0-9_-]{1,128}$")
# A source id: `<layer>` or `<layer>-<set>[__suffix]`; it also names a folder here.
_SOURCE_ID = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9][A-Za-z0-9._-]*)?$")


class NeuronpediaOptions(BaseModel):
    """The `--np-*` options of `publish --format neuronpedia`."""

    model_config = ConfigDict(extra="forbid")

    model_id: str | None = None  # None: from the SAE's neuronpedia_id or the subject model
    # A source id, or a template with `{layer}` (the block number), e.g. "{layer}-res-jb".
    # None: `{layer}` for MLP neurons, `{layer}-neuroscribe-sae` for SAE latents,
    # `{layer}-<module>-<hook>` for other modules.
    source_id: str | None = None
    creator_id: str = DEFAULT_CREATOR_ID
    creator_name: str = "neuroscribe"
    batch_size: int = Field(DEFAULT_BATCH_SIZE, ge=1)
    gzip: bool = True


# ---------------------------------------------------------------- rows (Neuronpedia's columns)


class _Row(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NpExplanation(_Row):
    """A row of Neuronpedia's `Explanation` table."""

    id: str
    modelId: str
    layer: str  # the source id
    index: str
    description: str
    authorId: str
    typeName: str
    explanationModelName: str
    scoreV1: float  # Neuronpedia orders explanations by it: the simulation score, else 0
    createdAt: str
    neuroscribe: dict[str, Any]  # not a column: ids, provenance


class NpExplanationScore(_Row):
    """A row of Neuronpedia's `ExplanationScore` table."""

    id: str
    explanationId: str
    value: float
    explanationScoreTypeName: str
    explanationScoreModelName: str
    initiatedByUserId: str
    jsonDetails: str  # a JSON document (a text column): all metrics, flags, provenance
    createdAt: str


class NpActivation(_Row):
    """A row of Neuronpedia's `Activation` table: one excerpt of one unit."""

    id: str
    modelId: str
    layer: str
    index: str
    tokens: list[str]
    values: list[float]  # one per token
    maxValue: float
    maxValueTokenIndex: int
    minValue: float
    creatorId: str
    dataIndex: str  # the excerpt id: top:<i>, random:<i> or quantile:<q>:<i>
    dataSource: str | None  # the corpus
    binMin: float | None  # quantile excerpts: the bin's bounds
    binMax: float | None
    createdAt: str
    neuroscribe: dict[str, Any]


class NpFeature(_Row):
    """A row of Neuronpedia's `Neuron` table (a "feature"): one unit."""

    modelId: str
    layer: str
    index: str
    creatorId: str
    sourceSetName: str
    maxActApprox: float
    frac_nonzero: float  # 0 when the run did not record it (the column's default)
    hookName: str | None
    createdAt: str
    neuroscribe: dict[str, Any]


class NpModel(_Row):
    id: str
    displayName: str
    displayNameShort: str
    creatorId: str
    owner: str
    layers: int
    neuronsPerLayer: int
    instruct: bool
    inferenceEnabled: bool
    visibility: str
    createdAt: str
    updatedAt: str


class NpSourceSet(_Row):
    modelId: str
    name: str
    creatorId: str
    creatorName: str
    description: str
    type: str
    hasDashboards: bool
    visibility: str
    urls: list[str]
    createdAt: str


class NpSource(_Row):
    id: str
    modelId: str
    setName: str
    creatorId: str
    hasDashboards: bool
    inferenceEnabled: bool
    visibility: str
    dataset: str | None
    num_tokens_in_prompt: int | None
    notes: str
    createdAt: str


class NpExplanationType(_Row):
    name: str
    displayName: str
    description: str
    creatorName: str
    creatorId: str
    settings: str


class NpExplanationModelType(_Row):
    name: str
    displayName: str
    description: str
    creatorName: str


class NpExplanationScoreType(_Row):
    name: str
    displayName: str
    description: str
    creatorName: str
    creatorId: str
    settings: str


class NpExplanationScoreModel(_Row):
    name: str
    displayName: str
    description: str
    creatorName: str


@dataclass
class SourceExport:
    """Everything written under `<modelId>/<sourceId>/`."""

    model_id: str
    source_id: str
    layer: str  # the run's layer label
    model: NpModel
    source_set: NpSourceSet
    source: NpSource
    features: list[NpFeature] = field(default_factory=list)
    activations: list[NpActivation] = field(default_factory=list)
    explanations: list[NpExplanation] = field(default_factory=list)
    scores: list[NpExplanationScore] = field(default_factory=list)


@dataclass
class NeuronpediaExport:
    options: NeuronpediaOptions
    provenance: RunProvenance
    sources: list[SourceExport]
    explanation_types: list[NpExplanationType]
    explanation_model_types: list[NpExplanationModelType]
    score_types: list[NpExplanationScoreType]
    score_models: list[NpExplanationScoreModel]
    skipped_scores: int = 0  # scores without a value for their primary metric

    def counts(self) -> dict[str, int]:
        return {
            "sources": len(self.sources),
            "features": sum(len(s.features) for s in self.sources),
            "activations": sum(len(s.activations) for s in self.sources),
            "explanations": sum(len(s.explanations) for s in self.sources),
            "scores": sum(len(s.scores) for s in self.sources),
            "skipped_scores": self.skipped_scores,
        }


# ---------------------------------------------------------------- ids


def row_id(*parts: str) -> str:
    """A 25-character id shaped like Neuronpedia's cuids, the same on every export."""
    digest = hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()
    return "c" + digest[:24]


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def default_model_id(name: str | None) -> str | None:
    """A Neuronpedia model id from a Hub id: "HuggingFaceTB/SmolLM2-135M" -> "smollm2-135m"."""
    if not name:
        return None
    tail = name.rstrip("/").rsplit("/", 1)[-1].removeprefix("hf:")
    return re.sub(r"[^a-z0-9_-]+", "-", tail.lower()).strip("-") or None


def check_model_id(model_id: str, flag: str = "--np-model-id") -> str:
    mid = model_id.strip().lower()  # Neuronpedia lower-cases model ids itself
    if not _MODEL_ID.match(mid):
        raise ConfigError(
            f"{flag} {model_id!r} is not a Neuronpedia model id: use 1-128 letters, digits, "
            "'-' or '_' (e.g. gpt2-small)"
        )
    return mid


def source_set_of(source_id: str) -> str:
    """The source set Neuronpedia reads from a source id ("6-res-jb__x" -> "res-jb")."""
    if re.fullmatch(r"-?\d+", source_id):
        return NEURONS_SOURCE_SET
    return source_id.split("-", 1)[1].split("__", 1)[0]


def _default_source_id(src: UnitSourceProvenance) -> str:
    if src.neuronpedia_id and "/" in src.neuronpedia_id:
        return src.neuronpedia_id.split("/", 1)[1]  # the SAE's own, e.g. "6-res-jb"
    if src.unit_type == "mlp" or (src.unit_type is None and re.fullmatch(r"-?\d+", src.layer)):
        return "{layer}"  # neurons (a run imported from OpenAI's files names no unit type)
    if src.unit_type == "sae" or src.sae_id or src.sae_path:
        return "{layer}-neuroscribe-sae"
    module = src.module or src.layer
    if src.layer_index is not None:
        module = module.split(f".{src.layer_index}.", 1)[-1]
    return "{layer}-" + "-".join(x for x in (_slug(module), _slug(src.hook or "")) if x)


def _fill_template(template: str, src: UnitSourceProvenance, flag: str) -> str:
    names = set(re.findall(r"{([^{}]*)}", template))
    if names - {"layer"}:
        raise ConfigError(
            f"{flag} {template!r}: unknown placeholder(s) "
            f"{', '.join('{' + n + '}' for n in sorted(names - {'layer'}))}; only {{layer}}"
        )
    if "layer" in names:
        if src.layer_index is None:
            raise ConfigError(
                f"layer {src.layer!r} has no layer number for {{layer}} in {flag} {template!r}; "
                "give a source id without it, e.g. --np-source-id 0-my-set"
            )
        template = template.replace("{layer}", str(src.layer_index))
    if not _SOURCE_ID.match(template) or len(template) > 128:
        raise ConfigError(
            f"{flag} gives {template!r} for layer {src.layer!r}, which is not a Neuronpedia "
            "source id: use <layer> or <layer>-<set> (letters, digits, '-', '.', '_'; "
            "e.g. 6-res-jb)"
        )
    return template


# ---------------------------------------------------------------- building

_KINDS = {"mlp": "MLP neurons", "sae": "SAE latents", "module": "module units"}


def _finite(values: list[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    for i, v in enumerate(out):
        if not math.isfinite(v):
            raise DataError(
                f"{what}: value {v!r} at position {i} is not finite; NaN and infinity "
                "cannot be published (JSON has no such numbers)"
            )
    return out


def _excerpts(rec: NeuronRecord) -> list[tuple[str, ActivationRecord, float | None, float | None]]:
    """(excerpt id, excerpt, bin min, bin max) for every excerpt of a unit's record."""
    out: list[tuple[str, ActivationRecord, float | None, float | None]] = []
    out += [(f"top:{i}", a, None, None) for i, a in enumerate(rec.most_positive_activation_records)]
    out += [(f"random:{i}", a, None, None) for i, a in enumerate(rec.random_sample)]
    groups = rec.random_sample_by_quantile or []
    bounds = rec.quantile_boundaries or []
    for q, group in enumerate(groups):
        lo, hi = (bounds[q], bounds[q + 1]) if len(bounds) == len(groups) + 1 else (None, None)
        out += [(f"quantile:{q}:{i}", a, lo, hi) for i, a in enumerate(group)]
    return out


def _index_of(index: Any, unit_id: str) -> str:
    text = str(index) if index is not None else split_unit_id(unit_id)[2]
    if not re.fullmatch(r"\d+", text):
        raise DataError(
            f"unit {unit_id}: index {text!r} is not a non-negative integer, which Neuronpedia "
            "needs to name a feature"
        )
    return text


class _ProvenanceDicts:
    """Parsed provenance, once per distinct object (rows share them)."""

    def __init__(self) -> None:
        self._by_text: dict[str, dict[str, Any]] = {}
        self._by_id: dict[int, dict[str, Any]] = {}

    def of_text(self, text: str) -> dict[str, Any]:
        if text not in self._by_text:
            self._by_text[text] = json.loads(text)
        return self._by_text[text]

    def of(self, p: Provenance) -> dict[str, Any]:
        if id(p) not in self._by_id:
            self._by_id[id(p)] = p.model_dump(mode="json")
        return self._by_id[id(p)]


@dataclass
class _Context:
    """What every row of one export shares."""

    model_id: str
    creator: str
    made: str  # createdAt of rows the run has no time for (the recording's end)
    corpus: str | None
    dicts: _ProvenanceDicts


def _add_unit_rows(
    out: SourceExport,
    units: dict[str, tuple[str, NeuronRecord | None]],
    hook_name: str | None,
    p: dict[str, Any],
    ctx: _Context,
) -> None:
    """One Neuron row per unit and one Activation row per recorded excerpt of it."""
    model_id, creator, made, corpus = ctx.model_id, ctx.creator, ctx.made, ctx.corpus
    for unit_id, (index, rec) in sorted(units.items(), key=lambda x: int(x[1][0])):
        excerpts = _excerpts(rec) if rec is not None else []
        max_act = 0.0
        for excerpt_id, a, lo, hi in excerpts:
            values = _finite(a.activations, f"unit {unit_id}, excerpt {excerpt_id} (activations)")
            top = max(values)
            max_act = max(max_act, top)
            out.activations.append(
                NpActivation(
                    id=row_id(model_id, out.source_id, index, excerpt_id),
                    modelId=model_id,
                    layer=out.source_id,
                    index=index,
                    tokens=list(a.tokens),
                    values=values,
                    maxValue=top,
                    maxValueTokenIndex=values.index(top),
                    minValue=min(values),
                    creatorId=creator,
                    dataIndex=excerpt_id,
                    dataSource=corpus,
                    binMin=lo,
                    binMax=hi,
                    createdAt=made,
                    neuroscribe={
                        "unit_id": unit_id,
                        "excerpt_id": excerpt_id,
                        "provenance": p,
                    },
                )
            )
        stats = {}
        if rec is not None:
            stats = {
                k: getattr(rec, k)
                for k in ("max_activation", "frac_nonzero", "mean", "variance")
                if getattr(rec, k) is not None
            }
        _finite(list(stats.values()), f"unit {unit_id} (statistics)")
        out.features.append(
            NpFeature(
                modelId=model_id,
                layer=out.source_id,
                index=index,
                creatorId=creator,
                sourceSetName=out.source_set.name,
                maxActApprox=float(stats.get("max_activation", max_act)),
                frac_nonzero=float(stats.get("frac_nonzero", 0.0)),
                hookName=hook_name,
                createdAt=made,
                neuroscribe={"unit_id": unit_id, "statistics": stats, "provenance": p},
            )
        )


def _explanation_row(
    r: PublishedExplanation, e: Explanation, out: SourceExport, index: str, ctx: _Context
) -> NpExplanation:
    sim = r.metrics.get("score") if r.scorer == "simulation" else None
    return NpExplanation(
        id=row_id(ctx.model_id, out.source_id, r.explanation_id),
        modelId=ctx.model_id,
        layer=out.source_id,
        index=index,
        description=e.text,
        authorId=ctx.creator,
        typeName=f"neuroscribe_{e.prompt_version}",
        explanationModelName=e.explainer or "none",
        scoreV1=float(sim) if sim is not None else 0.0,
        createdAt=e.created_at,
        neuroscribe={
            "explanation_id": r.explanation_id,
            "unit_id": r.unit_id,
            "sample_index": r.sample_index,
            "best_for_unit": r.best_for_unit,
            "provenance": ctx.dicts.of_text(r.provenance),
        },
    )


def _score_row(s: Score, explanation: NpExplanation, ctx: _Context) -> NpExplanationScore:
    """One scorer's verdict: its primary metric as `value`, everything in `jsonDetails`."""
    ours = explanation.neuroscribe
    eid = ours["explanation_id"]
    value = _finite([s.metrics[s.primary_metric]], f"explanation {eid}, {s.scorer} score")[0]
    details = {
        "scorer": s.scorer,
        "primary_metric": s.primary_metric,
        "metrics": s.metrics,
        "interval": s.interval.model_dump() if s.interval else None,
        "flags": s.flags,
        "n_excerpts": s.n_excerpts,
        "n_tokens": s.n_tokens,
        "heldout_hash": s.heldout_hash,
        "details": s.details,
        "explanation_id": eid,
        "unit_id": ours["unit_id"],
        "provenance": ours["provenance"],
    }
    return NpExplanationScore(
        id=row_id(ctx.model_id, explanation.layer, eid, s.scorer),
        explanationId=explanation.id,
        value=value,
        explanationScoreTypeName=f"neuroscribe_{s.scorer}",
        explanationScoreModelName=s.scorer_model or "none",
        initiatedByUserId=ctx.creator,
        jsonDetails=_dumps({"neuroscribe": details}, f"the {s.scorer} score of {eid}"),
        createdAt=s.created_at,
    )


def _pick_model_id(
    run: Run,
    rows: list[PublishedExplanation],
    opts: NeuronpediaOptions,
    base: Provenance,
    layer_sources: dict[str, UnitSourceProvenance | None],
) -> str:
    """The option, an SAE's own Neuronpedia id ("model/source"), or the subject's name."""
    np_ids = {src.neuronpedia_id for src in layer_sources.values() if src and src.neuronpedia_id}
    model_id = opts.model_id
    if model_id is None and len(np_ids) == 1:
        model_id = next(iter(np_ids)).split("/", 1)[0]
    if model_id is not None:
        return check_model_id(model_id)
    derived = default_model_id(base.subject_model or next(iter({r.model for r in rows}), None))
    if derived is None:
        raise ConfigError(
            f"{run.path}: the run names no subject model to derive a Neuronpedia model id "
            "from; pass --np-model-id (e.g. gpt2-small)"
        )
    return check_model_id(derived, "the model id derived from the subject model")


def _pick_source_ids(
    layer_sources: dict[str, UnitSourceProvenance | None], opts: NeuronpediaOptions
) -> dict[str, str]:
    """One source id per layer label; two layers in one source are refused."""
    source_ids: dict[str, str] = {}
    for layer, src in layer_sources.items():
        assert src is not None
        if opts.source_id is not None:
            sid = _fill_template(opts.source_id, src, "--np-source-id")
        else:
            sid = _fill_template(_default_source_id(src), src, "the default source id")
        clash = next((k for k, v in source_ids.items() if v == sid), None)
        if clash is not None:
            raise ConfigError(
                f"layers {clash!r} and {layer!r} would both be Neuronpedia source {sid!r}; "
                "give --np-source-id a {layer} placeholder (e.g. '{layer}-res-jb')"
            )
        source_ids[layer] = sid
    return source_ids


def build_export(
    run: Run,
    rows: list[PublishedExplanation],
    provenance: RunProvenance,
    options: NeuronpediaOptions | None = None,
) -> NeuronpediaExport:
    """Every Neuronpedia row of the run, checked (ids, finiteness) before anything is written."""
    opts = options or NeuronpediaOptions()
    manifest = run.manifest
    subject = manifest.subject if manifest else {}
    stages = manifest.stages if manifest else {}
    record_stage = stages.get("record", {})
    base = provenance.base
    creator = opts.creator_id
    if not creator.strip():
        raise ConfigError("--np-creator-id is empty; give the Neuronpedia user id to credit")
    made = str(
        record_stage.get("finished_at") or (manifest.created_at if manifest else None) or utc_now()
    )
    corpus = None
    if isinstance(record_stage.get("corpus"), dict):
        corpus = _str(record_stage["corpus"].get("spec"))
    corpus = corpus or _str((base.sampler or {}).get("corpus"))
    dicts = _ProvenanceDicts()

    # Units: every recorded unit and every explained one, by layer label.
    records = run.records_by_unit()
    units: dict[str, dict[str, tuple[str, NeuronRecord | None]]] = {}
    for rec in run.records:
        units.setdefault(_layer_of(rec.layer, rec.unit_id), {})[rec.unit_id] = (
            _index_of(rec.index, rec.unit_id),
            rec,
        )
    for r in rows:
        units.setdefault(_layer_of(r.layer, r.unit_id), {}).setdefault(
            r.unit_id, (_index_of(r.index, r.unit_id), records.get(r.unit_id))
        )
    layer_sources = {layer: provenance.unit(layer) for layer in units}

    model_id = _pick_model_id(run, rows, opts, base, layer_sources)
    source_ids = _pick_source_ids(layer_sources, opts)

    n_layers = subject.get("n_layers")
    widths = [
        u.get("width")
        for u in record_stage.get("units", []) or []
        if isinstance(u, dict) and isinstance(u.get("width"), int)
    ]
    all_indices = [int(i) for us in units.values() for i, _ in us.values()]
    layer_numbers = [
        src.layer_index
        for src in layer_sources.values()
        if src is not None and src.layer_index is not None
    ]
    subject_name = base.subject_model or model_id
    owner = subject_name.split("/", 1)[0] if "/" in subject_name else "unknown"
    model_row = NpModel(
        id=model_id,
        displayName=subject_name,
        displayNameShort=model_id,
        creatorId=creator,
        owner=owner,
        layers=n_layers
        if isinstance(n_layers, int)
        else (max(layer_numbers) + 1 if layer_numbers else 0),
        neuronsPerLayer=max(widths) if widths else (max(all_indices) + 1 if all_indices else 0),
        instruct=False,
        inferenceEnabled=False,
        visibility="PUBLIC",
        createdAt=made,
        updatedAt=made,
    )

    sources: dict[str, SourceExport] = {}
    for layer, sid in source_ids.items():
        src = layer_sources[layer]
        assert src is not None
        set_name = source_set_of(sid)
        what = _KINDS.get(
            src.unit_type or "", f"{src.unit_type} units" if src.unit_type else "units"
        )
        where = f"{src.module or layer} ({src.hook or '?'})"
        if src.sae_id:
            where += f", SAE {src.sae_id}"
        sources[layer] = SourceExport(
            model_id=model_id,
            source_id=sid,
            layer=layer,
            model=model_row,
            source_set=NpSourceSet(
                modelId=model_id,
                name=set_name,
                creatorId=creator,
                creatorName=opts.creator_name,
                description=f"{what} explained by neuroscribe",
                type="",
                hasDashboards=True,
                visibility="PUBLIC",
                urls=[],
                createdAt=made,
            ),
            source=NpSource(
                id=sid,
                modelId=model_id,
                setName=set_name,
                creatorId=creator,
                hasDashboards=True,
                inferenceEnabled=False,
                visibility="PUBLIC",
                dataset=corpus,
                num_tokens_in_prompt=_int((base.sampler or {}).get("excerpt_len")),
                notes=f"neuroscribe {base.package_version or '?'}: {what} at {where}; "
                f"explainer {base.explainer or '?'}, simulator {base.simulator or '?'}",
                createdAt=made,
            ),
        )

    # Features and activations, from the recorded excerpts.
    ctx = _Context(model_id, creator, made, corpus, dicts)
    for layer, us in units.items():
        src = layer_sources[layer]
        p = dicts.of(provenance.for_layer(layer))
        _add_unit_rows(sources[layer], us, src.hook_name if src else None, p, ctx)

    # Explanations and their scores.
    explanations = run.explanations_by_id()
    by_explanation: dict[str, list[Score]] = {}
    for sc in run.latest_scores():
        by_explanation.setdefault(sc.explanation_id, []).append(sc)
    type_settings: dict[str, dict[str, Any]] = {}
    model_names: set[str] = set()
    score_types: dict[str, dict[str, Any]] = {}
    score_models: set[str] = set()
    explain_stage = provenance.explain_stage
    skipped = 0
    keyed = [(_layer_of(r.layer, r.unit_id), r) for r in rows]
    keyed.sort(key=lambda x: (x[0], int(units[x[0]][x[1].unit_id][0]), x[1].explanation_id))
    for layer, r in keyed:
        out = sources[layer]
        e = explanations[r.explanation_id]
        row = _explanation_row(r, e, out, units[layer][r.unit_id][0], ctx)
        out.explanations.append(row)
        if row.typeName not in type_settings:
            same = explain_stage.get("prompt_version") == e.prompt_version
            type_settings[row.typeName] = (
                {k: v for k, v in explain_stage.items() if k != "config_hash"}
                if same
                else {"prompt_version": e.prompt_version}
            )
        model_names.add(row.explanationModelName)
        for sc in by_explanation.get(r.explanation_id, []):
            if sc.metrics.get(sc.primary_metric) is None:
                skipped += 1  # nothing to put in the non-null `value` column
                continue
            score = _score_row(sc, row, ctx)
            out.scores.append(score)
            score_types.setdefault(
                score.explanationScoreTypeName,
                {"scorer": sc.scorer, "primary_metric": sc.primary_metric},
            )
            score_models.add(score.explanationScoreModelName)

    return NeuronpediaExport(
        options=opts,
        provenance=provenance,
        sources=list(sources.values()),
        explanation_types=[
            NpExplanationType(
                name=name,
                displayName=f"neuroscribe {settings.get('prompt_version', name)}",
                description="explanations written by neuroscribe with this explain prompt",
                creatorName=opts.creator_name,
                creatorId=creator,
                settings=_dumps(settings, f"explanation type {name}"),
            )
            for name, settings in type_settings.items()
        ],
        explanation_model_types=[
            NpExplanationModelType(
                name=name,
                displayName=name,
                description="explainer model (neuroscribe)",
                creatorName=opts.creator_name,
            )
            for name in sorted(model_names)
        ],
        score_types=[
            NpExplanationScoreType(
                name=name,
                displayName=f"neuroscribe {settings['scorer']}",
                description=f"neuroscribe's {settings['scorer']} scorer; value = its "
                f"{settings['primary_metric']}",
                creatorName=opts.creator_name,
                creatorId=creator,
                settings=_dumps(settings, f"score type {name}"),
            )
            for name, settings in score_types.items()
        ],
        score_models=[
            NpExplanationScoreModel(
                name=name,
                displayName=name,
                description="scorer model (neuroscribe)",
                creatorName=opts.creator_name,
            )
            for name in sorted(score_models)
        ],
        skipped_scores=skipped,
    )


def _layer_of(layer: Any, unit_id: str) -> str:
    return str(layer) if layer is not None else split_unit_id(unit_id)[1]


def _str(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def _int(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


# ---------------------------------------------------------------- writing


def _dumps(data: Any, what: str) -> str:
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except ValueError as e:
        raise DataError(f"{what}: {e} (NaN and infinity cannot be published)") from None


def _line(row: BaseModel, what: str) -> bytes:
    text = _dumps(row.model_dump(mode="json"), what)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError as e:
        raise DataError(f"{what}: text that is not valid Unicode ({e.reason})") from None


def _write(path: Path, rows: list[BaseModel], gz: bool, what: str) -> Path:
    payload = b"".join(_line(r, what) for r in rows)
    if gz:
        payload = gzip.compress(payload, compresslevel=5, mtime=0)  # same bytes every time
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path


def _batches(folder: Path, rows: list[Any], opts: NeuronpediaOptions, what: str) -> list[Path]:
    ext = ".jsonl.gz" if opts.gzip else ".jsonl"
    n = opts.batch_size
    return [
        _write(folder / f"batch-{k // n}{ext}", rows[k : k + n], opts.gzip, what)
        for k in range(0, len(rows), n)
    ]


def write_export(export: NeuronpediaExport, out: Path) -> list[Path]:
    """Write the export into `out` (a fresh folder); returns the files written."""
    opts = export.options
    files: list[Path] = []
    config = out / "config"
    for name, rows in (
        ("explanation_type", export.explanation_types),
        ("explanation_model_type", export.explanation_model_types),
        ("explanation_score_type", export.score_types),
        ("explanation_score_model", export.score_models),
    ):
        files.append(_write(config / f"{name}.jsonl", list(rows), False, f"config/{name}"))
    for src in export.sources:
        model = safe_path_name(src.model_id, "the Neuronpedia model id")
        folder = out / model / safe_path_name(src.source_id, "the Neuronpedia source id")
        if not _inside(folder.resolve(), out.resolve()):  # belt and braces
            raise DataError(f"source {src.source_id!r} would be written outside {out}")
        where = f"{src.model_id}/{src.source_id}"
        files.append(_write(folder / "model.jsonl", [src.model], False, where))
        files.append(_write(folder / "sourceset.jsonl", [src.source_set], False, where))
        files.append(_write(folder / "source.jsonl", [src.source], False, where))
        for kind, rows in (
            ("features", src.features),
            ("activations", src.activations),
            ("explanations", src.explanations),
            ("explanation_scores", src.scores),
        ):
            files += _batches(folder / kind, rows, opts, f"{where} {kind}")
    summary = {
        "schema_version": PUBLISHED_SCHEMA_VERSION,
        "format": "neuronpedia",
        "options": opts.model_dump(),
        "counts": export.counts(),
        "sources": [
            {
                "modelId": s.model_id,
                "sourceId": s.source_id,
                "sourceSet": s.source_set.name,
                "layer": s.layer,
                "folder": f"{s.model_id}/{s.source_id}",
            }
            for s in export.sources
        ],
        **openai_provenance(export.provenance),
    }
    path = out / "neuroscribe-export.json"
    path.write_text(
        json.dumps(summary, indent=2, ensure_ascii=False, allow_nan=False) + "\n", encoding="utf-8"
    )
    files.append(path)
    return files
