"""Provenance of published rows: what produced each explanation and score.

Every published row (the dataset folder, OpenAI's layout, Neuronpedia's batches) carries
a `Provenance`: explainer and simulator models, prompt versions, split and sampler
settings, seed, package version, subject model, layer, hook and SAE. It is built once
per run (`run_provenance`) from the manifest and the rows' own fields, then shared by
every row of the same layer and explainer/simulator set-up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from neuroscribe.compare import REFERENCE_SCORER
from neuroscribe.rundir import Run
from neuroscribe.schema import NeuronRecord, RunManifest, Score

# The version of the published row layout (explanations.jsonl/.parquet and the
# provenance object). 1: neuroscribe 0.1's rows (no version column). 2: provenance
# columns (`package_version` ... `provenance`) and this `schema_version` column.
PUBLISHED_SCHEMA_VERSION = 2


class UnitSourceProvenance(BaseModel):
    """Where a layer's units were read: the hook point (and SAE) of one record file."""

    layer: str  # the records' `layer` label
    layer_index: int | None = None  # the transformer block, when there is one
    unit_type: str | None = None  # mlp | module | sae (| transcoder)
    module: str | None = None  # the hooked Hugging Face module
    hook: str | None = None  # input | output of that module
    hook_name: str | None = None  # the TransformerLens hook name, when known
    sae_id: str | None = None  # the SAE's id (or the path it was read from)
    sae_path: str | None = None  # the --sae argument
    sae_layout: str | None = None  # saelens | sparsify | gemmascope | ...
    sae_activation: str | None = None
    neuronpedia_id: str | None = None  # the SAE's Neuronpedia id ("model/source"), if known


class Provenance(BaseModel):
    """What produced one published row; the same object for every row of a set-up.

    Fields the run does not record are None (a run made by an older version, or
    imported from OpenAI's files).
    """

    schema_version: int = PUBLISHED_SCHEMA_VERSION
    published_with: str  # the neuroscribe version that wrote the published files
    package_version: str | None  # the neuroscribe version that made the run
    subject_model: str | None
    subject_revision: str | None
    explainer: str | None  # the explainer model of this row's explanation
    explainer_method: str | None
    explain_prompt_version: str | None
    simulator: str | None  # the simulator model of this row's simulation score
    simulation_strategy: str | None
    simulate_prompt_version: str | None
    scorers: dict[str, dict[str, str | None]]  # every scorer of the run: model, prompt
    splits: dict[str, Any] | None  # train / test / calibration excerpt counts
    sampler: dict[str, Any] | None  # how the excerpts were recorded (corpus, sizes)
    seed: int | None  # the recording seed
    unit: UnitSourceProvenance | None  # layer, hook, module, SAE of this row's unit

    def json_text(self) -> str:
        return self.model_dump_json()


# The record-stage options that decide which excerpts a unit gets.
_SAMPLER_KEYS = (
    "corpus",
    "split",
    "text_column",
    "max_tokens",
    "excerpt_len",
    "min_excerpt_len",
    "n_top",
    "n_random",
    "n_quantiles",
    "per_quantile",
    "pool_size",
)


def _str_or_none(v: Any) -> str | None:
    return None if v is None or v == "" else str(v)


def layer_index_of(layer: Any) -> int | None:
    """The block number a record's layer label names: 6, "6", "6:sae:x" -> 6; else None."""
    if isinstance(layer, bool):
        return None
    if isinstance(layer, int):
        return layer
    m = re.match(r"^(-?\d+)(?::|$)", str(layer))
    return int(m.group(1)) if m else None


@dataclass
class RunProvenance:
    """Provenance of a whole run, built once; `for_row` hands out shared `Provenance`s.

    `base` holds what is the same for every row (versions, subject, splits, sampler,
    seed, scorers); `sources` the hook point of each layer label; a row's own explainer,
    prompt version and simulator come from its explanation and score, so a run that
    mixed set-ups stays truthful row by row.
    """

    base: Provenance
    sources: dict[str, UnitSourceProvenance]
    explain_stage: dict[str, Any]
    _cache: dict[tuple, Provenance] = field(default_factory=dict)
    _texts: dict[int, str] = field(default_factory=dict)

    def text(self, p: Provenance) -> str:
        """`p` as JSON, serialised once per shared object (not once per row)."""
        key = id(p)  # the objects live in _cache, so an id is never reused
        if key not in self._texts:
            self._texts[key] = p.json_text()
        return self._texts[key]

    def unit(self, layer: str | None) -> UnitSourceProvenance | None:
        if layer is None:
            return None
        if layer not in self.sources:
            # A layer the manifest does not list (an imported run): what the label says.
            self.sources[layer] = UnitSourceProvenance(
                layer=layer, layer_index=layer_index_of(layer)
            )
        return self.sources[layer]

    def for_layer(self, layer: str | None) -> Provenance:
        """The run's provenance with this layer's source (rows that are not explanations)."""
        key = ("layer", layer)
        if key not in self._cache:
            self._cache[key] = self.base.model_copy(update={"unit": self.unit(layer)})
        return self._cache[key]

    def for_row(
        self,
        layer: str | None,
        explainer: str | None = None,
        explain_prompt_version: str | None = None,
        simulation: Score | None = None,
    ) -> Provenance:
        # An explanation nobody simulated has no simulator (the run's is in `base`).
        sim = (
            (simulation.scorer_model, simulation.strategy, simulation.prompt_version)
            if simulation is not None
            else (None, None, None)
        )
        key = (layer, explainer, explain_prompt_version, sim)
        if key not in self._cache:
            stage = self.explain_stage
            same = stage.get("explainer") == explainer and (
                stage.get("prompt_version") == explain_prompt_version
            )
            update: dict[str, Any] = {"unit": self.unit(layer)}
            if explainer is not None:
                update.update(
                    explainer=explainer,
                    explain_prompt_version=explain_prompt_version,
                    explainer_method=self.base.explainer_method if same else None,
                )
            update.update(
                simulator=sim[0], simulation_strategy=sim[1], simulate_prompt_version=sim[2]
            )
            self._cache[key] = self.base.model_copy(update=update)
        return self._cache[key]


def _record_units(manifest: RunManifest | None) -> list[dict[str, Any]]:
    record = manifest.stages.get("record", {}) if manifest else {}
    units = record.get("units")
    return [u for u in units if isinstance(u, dict)] if isinstance(units, list) else []


def _source_of(entry: dict[str, Any], rec: NeuronRecord | None) -> UnitSourceProvenance:
    extra = (rec.model_extra or {}) if rec is not None else {}
    layer = str(entry.get("layer"))
    index = extra.get("layer_index")
    if not isinstance(index, int) or isinstance(index, bool):
        index = layer_index_of(entry.get("layer"))
    sae = entry.get("sae")
    return UnitSourceProvenance(
        layer=layer,
        layer_index=index,
        unit_type=_str_or_none(entry.get("unit_type")),
        module=_str_or_none(entry.get("module")),
        hook=_str_or_none(entry.get("hook")),
        hook_name=_str_or_none(entry.get("hook_name")),
        sae_id=_str_or_none(entry.get("sae_id")) or _str_or_none(sae),
        sae_path=_str_or_none(sae),
        sae_layout=_str_or_none(entry.get("sae_layout")),
        sae_activation=_str_or_none(entry.get("sae_activation")),
        neuronpedia_id=_str_or_none(entry.get("neuronpedia_id")),
    )


def _source_of_record(rec: NeuronRecord) -> UnitSourceProvenance:
    """A layer the manifest does not describe: what the record itself says."""
    extra = rec.model_extra or {}
    entry = {k: extra.get(k) for k in ("unit_type", "module", "hook", "hook_name", "sae_id")}
    return _source_of({**entry, "layer": rec.layer}, rec)


def _only(values: set[Any]) -> Any:
    """The one value of a set, else None (a run that mixed several)."""
    return next(iter(values)) if len(values) == 1 else None


def run_provenance(run: Run) -> RunProvenance:
    """The provenance of a run, from its manifest (with fallbacks to its rows)."""
    from neuroscribe import __version__

    manifest = run.manifest
    stages = manifest.stages if manifest else {}
    subject = manifest.subject if manifest else {}
    record = stages.get("record", {})
    explain = stages.get("explain", {})
    simulate = stages.get("simulate", {})
    config = record.get("config") if isinstance(record.get("config"), dict) else {}

    sampler = {k: config[k] for k in _SAMPLER_KEYS if k in config}
    if isinstance(record.get("corpus"), dict):
        sampler["corpus"] = record["corpus"]
    seed = record.get("seed", config.get("seed"))
    splits = explain.get("splits") or simulate.get("splits")

    scorers: dict[str, dict[str, str | None]] = {}
    for s in run.latest_scores():
        scorers.setdefault(s.scorer, {"model": s.scorer_model, "prompt_version": s.prompt_version})

    explanations = run.explanations
    sims = run.latest_scores(REFERENCE_SCORER)
    records = run.records
    by_layer = {str(r.layer): r for r in records if r.layer is not None}
    sources = {}
    for entry in _record_units(manifest):
        src = _source_of(entry, by_layer.get(str(entry.get("layer"))))
        sources[src.layer] = src
    for layer, rec in by_layer.items():
        if layer not in sources:
            sources[layer] = _source_of_record(rec)

    base = Provenance(
        published_with=__version__,
        package_version=(manifest.package_version or None) if manifest else None,
        subject_model=_str_or_none(subject.get("model")) or _only({r.model for r in records}),
        subject_revision=_str_or_none(subject.get("revision")),
        explainer=_str_or_none(explain.get("explainer"))
        or _only({e.explainer for e in explanations}),
        explainer_method=_str_or_none(explain.get("method")),
        explain_prompt_version=_str_or_none(explain.get("prompt_version"))
        or _only({e.prompt_version for e in explanations}),
        simulator=_str_or_none(simulate.get("simulator")) or _only({s.scorer_model for s in sims}),
        simulation_strategy=_str_or_none(simulate.get("strategy"))
        or _only({s.strategy for s in sims}),
        simulate_prompt_version=_str_or_none(simulate.get("prompt_version"))
        or _only({s.prompt_version for s in sims}),
        scorers=scorers,
        splits=splits if isinstance(splits, dict) else None,
        sampler=sampler or None,
        seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
        unit=None,
    )
    return RunProvenance(base=base, sources=sources, explain_stage=dict(explain))
