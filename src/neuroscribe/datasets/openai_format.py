"""Import and export OpenAI's public per-neuron JSON files (the GPT-2 XL / small layout).

Their files hold one serialised `NeuronRecord` each, at `<dir>/<layer>/<neuron>.json`,
written by their `fast_dataclasses`: every object carries a `"dataclass_name"` key
("NeuronRecord", "NeuronId", "ActivationRecord") and unset statistics may be NaN.

Import strips those tags (our `ActivationRecord` forbids unknown keys) and remembers,
in the record's extra field `openai_source`, the original top-level keys, whether the
tags were there and which statistics were NaN; export puts all of it back, so an
imported file is exported with the same JSON content. Records we recorded ourselves are
exported with the tags and only OpenAI's fields, so their loader reads them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from neuroscribe.errors import DataError
from neuroscribe.jsonl import iter_jsonl
from neuroscribe.rundir import RunDir
from neuroscribe.schema import NeuronRecord, RunManifest, utc_now

TAG = "dataclass_name"
OPENAI_KEYS = (
    "neuron_id",
    "random_sample",
    "random_sample_by_quantile",
    "quantile_boundaries",
    "mean",
    "variance",
    "skewness",
    "kurtosis",
    "most_positive_activation_records",
)
STATS = ("mean", "variance", "skewness", "kurtosis")
SOURCE_KEY = "openai_source"


def _strip_tags(obj: Any) -> tuple[Any, bool]:
    """Remove every `dataclass_name` key; report whether any was present."""
    if isinstance(obj, dict):
        found = TAG in obj
        out = {}
        for k, v in obj.items():
            if k == TAG:
                continue
            out[k], sub = _strip_tags(v)
            found = found or sub
        return out, found
    if isinstance(obj, list):
        items = [_strip_tags(v) for v in obj]
        return [v for v, _ in items], any(f for _, f in items)
    return obj, False


def parse_openai_neuron(
    obj: dict[str, Any], *, model: str | None = None, where: str = ""
) -> NeuronRecord:
    """One OpenAI neuron file's JSON object -> NeuronRecord (with `openai_source`)."""
    if not isinstance(obj, dict) or "neuron_id" not in obj:
        raise DataError(f"{where}: not an OpenAI neuron record (no neuron_id)")
    keys = list(obj)
    clean, tagged = _strip_tags(obj)
    nan_stats = [k for k in STATS if isinstance(clean.get(k), float) and math.isnan(clean[k])]
    for k in nan_stats:
        clean[k] = None
    clean[SOURCE_KEY] = {"keys": keys, "tagged": tagged, "nan": nan_stats}
    if model is not None:
        clean["model"] = model
    try:
        return NeuronRecord.model_validate(clean)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise DataError(f"{where}: invalid neuron record: {loc}: {err['msg']}") from None


def to_openai_neuron(record: NeuronRecord) -> dict[str, Any]:
    """NeuronRecord -> the JSON object of an OpenAI neuron file."""
    source = getattr(record, SOURCE_KEY, None) or {}
    data = record.model_dump(mode="json")
    if record.neuron_id is None:
        layer = (
            record.layer if isinstance(record.layer, int) else getattr(record, "layer_index", None)
        )
        if not isinstance(layer, int) or record.index is None:
            raise DataError(
                f"unit {record.unit_id}: no integer layer and index to name an OpenAI file"
            )
        data["neuron_id"] = {"layer_index": layer, "neuron_index": record.index}
    keys = source.get("keys") or [TAG, *OPENAI_KEYS]
    tagged = source.get("tagged", True) if source else True
    for k in source.get("nan", []):
        data[k] = math.nan
    out: dict[str, Any] = {}
    for k in keys:
        if k == TAG:
            out[k] = "NeuronRecord"
        elif k in data:
            out[k] = data[k]
    if tagged:
        out = _tag(out)
    return out


def _tag(rec: dict[str, Any]) -> dict[str, Any]:
    def ar(a: dict[str, Any]) -> dict[str, Any]:
        return {TAG: "ActivationRecord", **a} if TAG not in a else a

    out = dict(rec)
    if isinstance(out.get("neuron_id"), dict) and TAG not in out["neuron_id"]:
        out["neuron_id"] = {TAG: "NeuronId", **out["neuron_id"]}
    for k in ("random_sample", "most_positive_activation_records"):
        if isinstance(out.get(k), list):
            out[k] = [ar(a) for a in out[k]]
    if isinstance(out.get("random_sample_by_quantile"), list):
        out["random_sample_by_quantile"] = [
            [ar(a) for a in q] for q in out["random_sample_by_quantile"]
        ]
    return out


def _neuron_files(src: Path) -> list[Path]:
    def key(p: Path) -> tuple:
        parts = p.relative_to(src).with_suffix("").parts
        return tuple((0, int(x), "") if x.isdigit() else (1, 0, x) for x in parts)

    return sorted(src.rglob("*.json"), key=key)


def import_openai(src: str | Path, out: str | Path, *, model: str | None = None) -> list[Path]:
    """Read OpenAI neuron files under `src` into `out/records/layer-XX.jsonl`; returns the files.

    All files are validated before anything is written; shards are replaced atomically.
    """
    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise DataError(f"{src}: not a folder of OpenAI neuron files")
    files = _neuron_files(src)
    if not files:
        raise DataError(f"{src}: no .json neuron files found")
    by_layer: dict[Any, list[NeuronRecord]] = {}
    for path in files:
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: malformed JSON ({e})") from None
        rec = parse_openai_neuron(obj, model=model, where=str(path))
        by_layer.setdefault(rec.layer, []).append(rec)
    written = []
    records_dir = RunDir(out).records_dir
    records_dir.mkdir(parents=True, exist_ok=True)
    for layer, recs in by_layer.items():
        name = f"layer-{layer:02d}.jsonl" if isinstance(layer, int) else f"layer-{layer}.jsonl"
        path = records_dir / name
        tmp = path.with_name(f".{name}.tmp-{os.getpid()}")
        with tmp.open("w", encoding="utf-8") as f:
            for r in recs:
                f.write(r.model_dump_json() + "\n")
        os.replace(tmp, path)
        written.append(path)
    _update_manifest(out, src, model, sum(len(r) for r in by_layer.values()))
    return written


def _update_manifest(out: Path, src: Path, model: str | None, n: int) -> None:
    rundir = RunDir(out)
    manifest = rundir.manifest()
    if manifest is None:
        from neuroscribe import __version__

        manifest = RunManifest(package_version=__version__)
    if model:
        manifest.subject.setdefault("model", model)
    manifest.stages["record"] = {
        "status": "complete",
        "source": "import-openai",
        "from": str(src),
        "n_units": n,
        "finished_at": utc_now(),
    }
    manifest.updated_at = utc_now()
    rundir.write_manifest(manifest)


def export_openai(run: str | Path, out: str | Path) -> list[Path]:
    """Write every record of `run/records/*.jsonl` as `out/<layer>/<neuron>.json`."""
    run, out = Path(run), Path(out)
    shards = RunDir(run).record_files()
    if not shards:
        raise DataError(f"{run}/records: no record files to export")
    written = []
    for shard in shards:
        for rec in iter_jsonl(shard, NeuronRecord):
            obj = to_openai_neuron(rec)
            nid = obj["neuron_id"]
            path = out / str(nid["layer_index"]) / f"{nid['neuron_index']}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(obj), encoding="utf-8")
            os.replace(tmp, path)
            written.append(path)
    return written
