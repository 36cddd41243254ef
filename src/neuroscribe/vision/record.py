"""`record_images`: run a vision subject over an image source and write NeuronRecords.

    RUN/records/<layer>.jsonl   one NeuronRecord per unit, image excerpts
    RUN/images/                 the pictures kept (content-addressed PNG + thumbnails)
    RUN/manifest.json           subject (modality "image") + stages["record"]
    RUN/.record-checkpoint/     streaming state while recording (removed when done)

The source is streamed once in batches. Per unit the recorder keeps, in memory that does
not grow with the number of pictures:

- the top `n_top` pictures by pooled activation (value, picture index, small spatial
  map), ties going to the earlier picture, so the result equals a sort of the whole set
  whatever the batch size;
- a pool of `pool_size` pictures shared by all units: those with the smallest seeded
  64-bit priority of their index (the text recorder's bottom-k sample), so the pool does
  not depend on batching or order; each unit's random sample and per-quantile samples
  are drawn from it at the end, as in the text recorder;
- streaming moments of the pooled activation (mean, variance, skewness, kurtosis in
  float64, merged batch by batch), its maximum and the fraction of non-zero values.

A picture's pooled activation is the max (or mean) of the unit's map over positions;
the map kept is the unit's map shrunk to at most `spatial_side` cells a side by adaptive
max (or average) pooling, so with max pooling the map's peak is the pooled value.

At the end only the pictures kept are opened again (by index), stored as the subject
sees them (`VisionSubject.view`, so maps lie over them) and the records written through
temporary files and renames. Rerunning the same configuration on a finished run does
nothing; an interrupted one resumes from its last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from neuroscribe.datasets.collect import batch_moments, excerpt_priority, merge_moments
from neuroscribe.datasets.units import parse_index_spec
from neuroscribe.errors import ConfigError, DataError, NeuroscribeError
from neuroscribe.rundir import RunDir
from neuroscribe.schema import (
    MAX_ABS_ACTIVATION,
    ActivationRecord,
    ImageRef,
    NeuronRecord,
    RunManifest,
    utc_now,
)
from neuroscribe.vision.sources import ImageSource, SourceImage, open_images
from neuroscribe.vision.subjects import (
    EMBEDDED_SUBJECT,
    VisionSubject,
    load_vision_subject,
    with_sae,
)

log = logging.getLogger(__name__)

# The embedded default, chosen by measurement (issue 16's report): over the default
# offline subset (600 pictures, seed 0), the units of `block15` (the last MBConv block,
# 7x7 cells) whose top 20 pictures most often share an emoji subcategory (at most two
# units per subcategory), with max pooling. Their top 20 share a subcategory 52% of the
# time there (chance 14%) and 54% on the 1,323 emoji left out of that subset (chance
# 16%). `head` (after ReLU6) saturates at 6.0 under max pooling: 94% of its units tie
# within their top 20, and its chosen units fell to 36% on the held-out emoji.
DEFAULT_LAYER = "block15"
DEFAULT_UNITS = "11,89,131,141,153,286,310,311"
GENERIC_UNITS = "0-7"  # other subjects and layers: the first eight units
DEFAULT_MAX_IMAGES = 600
SIGNIFICANT_DIGITS = 6
STORE_SIDE = 512  # stored pictures are shrunk to this many pixels on the longer side
MAX_SKIPPED_LISTED = 50  # skipped pictures named in the manifest (all are counted)


class VisionRecordConfig(BaseModel):
    """Every option of a vision recording; the defaults are those of `neuroscribe vision record`."""

    subject: str = EMBEDDED_SUBJECT
    images: str = "offline"
    layers: list[str] | None = None  # None: the subject's default layer
    units: str | list[int] | int | None = None  # "0-7,12", [0, 5], 8 (the first 8); None: default
    n_top: int = Field(20, ge=1)
    n_random: int = Field(20, ge=0)
    n_quantiles: int = Field(0, ge=0)
    per_quantile: int = Field(4, ge=1)
    pool_size: int = Field(200, ge=1)
    pooling: Literal["max", "mean"] = "max"
    # Labels for kept pictures with neither caption nor labels (what the text-only route
    # reads): "auto" = the subject's own CLIP zero-shot labels when it is an image-text
    # model, "none", or an image-text model spec (hf:...) to label with.
    zero_shot: str = "auto"
    zero_shot_k: int = Field(3, ge=1, le=20)
    batch_size: int = Field(32, ge=1)
    max_images: int | None = Field(DEFAULT_MAX_IMAGES, ge=1)  # None: every picture
    seed: int = 0
    spatial_side: int = Field(8, ge=1, le=32)
    store_side: int = Field(STORE_SIDE, ge=16)
    image_column: str | None = None  # hf-dataset sources: override the detected columns
    caption_column: str | None = None
    label_columns: list[str] | None = None
    sae: str | None = None  # an SAE (any layout neuroscribe reads) on the one layer given
    sae_k: int | None = Field(None, ge=1)
    device: str = "cpu"
    checkpoint_seconds: float = Field(60.0, ge=0)

    def result_hash(self) -> str:
        """Hash of the options that change the records (not device, batching, cadence)."""
        data = self.model_dump(exclude={"device", "batch_size", "checkpoint_seconds"})
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class VisionRecordProgress:
    images_read: int  # pictures taken from the source (recorded or skipped)
    images_recorded: int
    images_skipped: int
    total: int | None


@dataclass
class VisionRecordSummary:
    out: Path
    files: list[Path]
    n_units: int
    n_images: int  # pictures recorded
    n_skipped: int  # pictures that could not be read (or processed) and were left out
    n_stored: int  # distinct pictures written to images/
    seconds: float
    images_per_second: float
    resumed_from: int = 0
    skipped: bool = False  # the records were already complete: nothing was done
    layers: list[str] = field(default_factory=list)


def sig(v: float, digits: int = SIGNIFICANT_DIGITS) -> float:
    """`v` rounded to `digits` significant digits (activations are float32 anyway)."""
    return float(f"{v:.{digits}g}")


def spatial_summary(
    maps: torch.Tensor, side: int, pooling: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(pooled [N, U], small maps [N, U, h, w] or None) of activations [N, U, H, W] or [N, U].

    With max pooling the small map is an adaptive max pool, so its peak is the pooled
    value; with mean pooling an adaptive average pool.
    """
    if maps.ndim == 2:
        return maps, None
    if maps.ndim != 4:
        raise DataError(f"activations of shape {tuple(maps.shape)}: expected [N, U, H, W]")
    n, u, h, w = maps.shape
    out = (min(h, side), min(w, side))
    flat = maps.reshape(n * u, 1, h, w)
    if pooling == "max":
        pooled = maps.amax(dim=(2, 3))
        small = torch.nn.functional.adaptive_max_pool2d(flat, out)
    else:
        pooled = maps.mean(dim=(2, 3))
        small = torch.nn.functional.adaptive_avg_pool2d(flat, out)
    return pooled, small.reshape(n, u, *out)


# ---------------------------------------------------------------- streaming state


@dataclass
class LayerState:
    """One layer's per-unit summaries."""

    layer: str
    units: list[int]  # unit indices in the layer
    top_vals: torch.Tensor  # [U, k] float32, -inf where empty
    top_ids: torch.Tensor  # [U, k] int64 picture index, -1 where empty
    top_maps: torch.Tensor | None  # [U, k, h, w]; None for layers without positions
    mean: torch.Tensor  # [U] float64
    m2: torch.Tensor
    m3: torch.Tensor
    m4: torch.Tensor
    nonzero: torch.Tensor  # [U] int64
    vmax: torch.Tensor  # [U] float32
    pool_vals: torch.Tensor  # [P, U] float32, rows in pool order
    pool_maps: torch.Tensor | None  # [P, U, h, w]


class VisionCollector:
    """Merges batches of pooled activations and maps into bounded per-unit summaries."""

    def __init__(self, layers: dict[str, list[int]], *, n_top: int, pool_size: int, seed: int):
        self.n_top, self.pool_size, self.seed = n_top, pool_size, seed
        self.n = 0  # pictures recorded
        self.pool_ids = np.zeros(0, dtype=np.int64)  # picture index per pool row
        self.pool_prio = np.zeros(0, dtype=np.uint64)
        self.states = {name: self._empty(name, units) for name, units in layers.items()}

    def _empty(self, name: str, units: list[int]) -> LayerState:
        u, k = len(units), self.n_top
        f64 = dict(dtype=torch.float64)
        return LayerState(
            layer=name,
            units=list(units),
            top_vals=torch.full((u, k), -torch.inf),
            top_ids=torch.full((u, k), -1, dtype=torch.long),
            top_maps=None,
            mean=torch.zeros(u, **f64),
            m2=torch.zeros(u, **f64),
            m3=torch.zeros(u, **f64),
            m4=torch.zeros(u, **f64),
            nonzero=torch.zeros(u, dtype=torch.long),
            vmax=torch.full((u,), -torch.inf),
            pool_vals=torch.zeros((0, u)),
            pool_maps=None,
        )

    def update(
        self, ids: list[int], batch: dict[str, tuple[torch.Tensor, torch.Tensor | None]]
    ) -> None:
        """Merge one batch: ids are picture indices (increasing along the stream);
        batch[layer] = (pooled [B, U], maps [B, U, h, w] or None)."""
        if not ids:
            return
        ids_t = torch.tensor(ids, dtype=torch.long)
        prio = excerpt_priority(self.seed, np.asarray(ids, dtype=np.int64))
        keep_rows, new_rows = self._pool_merge(prio)
        for name, (pooled, maps) in batch.items():
            st = self.states[name]
            pooled = pooled.float()
            self._merge_top(st, pooled, maps, ids_t)
            self._merge_moments(st, pooled)
            st.pool_vals = torch.cat([st.pool_vals, pooled[new_rows]])[keep_rows]
            if maps is not None:
                old = st.pool_maps if st.pool_maps is not None else maps[:0]
                st.pool_maps = torch.cat([old, maps[new_rows]])[keep_rows]
        self.pool_ids = np.concatenate([self.pool_ids, np.asarray(ids)[new_rows]])[keep_rows]
        self.pool_prio = np.concatenate([self.pool_prio, prio[new_rows]])[keep_rows]
        self.n += len(ids)

    def _pool_merge(self, prio: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows of [old pool; entering batch rows] to keep, batch rows entering)."""
        if len(self.pool_prio) >= self.pool_size:
            new_rows = np.flatnonzero(prio < self.pool_prio.max())
        else:
            new_rows = np.arange(len(prio))
        both = np.concatenate([self.pool_prio, prio[new_rows]])
        keep = np.sort(np.argsort(both, kind="stable")[: self.pool_size])
        return keep, new_rows

    def _merge_top(
        self, st: LayerState, pooled: torch.Tensor, maps: torch.Tensor | None, ids: torch.Tensor
    ) -> None:
        new_vals = pooled.T  # [U, B]
        if not bool((new_vals > st.top_vals[:, -1:]).any()):
            return
        u, b, k = new_vals.shape[0], new_vals.shape[1], self.n_top
        cand_vals = torch.cat([st.top_vals, new_vals], dim=1)
        cand_ids = torch.cat([st.top_ids, ids[None, :].expand(u, b)], dim=1)
        # Stable: on ties the earlier picture (already kept, or earlier in the batch) wins.
        order = torch.sort(cand_vals, dim=1, descending=True, stable=True).indices[:, :k]
        st.top_vals = cand_vals.gather(1, order)
        st.top_ids = cand_ids.gather(1, order)
        if maps is not None:
            h, w = maps.shape[2], maps.shape[3]
            old = st.top_maps if st.top_maps is not None else torch.zeros((u, k, h, w))
            cand = torch.cat([old, maps.permute(1, 0, 2, 3)], dim=1)  # [U, k+B, h, w]
            st.top_maps = cand.gather(1, order[:, :, None, None].expand(u, k, h, w))

    def _merge_moments(self, st: LayerState, x: torch.Tensor) -> None:
        st.nonzero += (x != 0).sum(dim=0)
        st.vmax = torch.maximum(st.vmax, x.amax(dim=0))
        st.mean, st.m2, st.m3, st.m4 = merge_moments(
            self.n, (st.mean, st.m2, st.m3, st.m4), x.shape[0], batch_moments(x)
        )

    # ------------------------------------------------------------ results

    def statistics(self, name: str) -> dict[str, np.ndarray]:
        """Population moments (ddof 0) of the pooled activation, skewness, excess kurtosis
        (NaN for a constant unit), maximum and fraction of non-zero values."""
        st, n = self.states[name], max(self.n, 1)
        m2 = (st.m2 / n).numpy()
        m3 = (st.m3 / n).numpy()
        m4 = (st.m4 / n).numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            const = m2 <= 1e-300
            skew = np.where(const, np.nan, m3 / np.power(np.where(const, 1, m2), 1.5))
            kurt = np.where(const, np.nan, m4 / np.where(const, 1, m2) ** 2 - 3.0)
        return {
            "mean": st.mean.numpy(),
            "variance": m2,
            "skewness": skew,
            "kurtosis": kurt,
            "max_activation": st.vmax.double().numpy(),
            "frac_nonzero": (st.nonzero.double() / n).numpy(),
        }

    def select_from_pool(
        self, name: str, *, n_random: int, n_quantiles: int, per_quantile: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each unit's random pool rows [U, n_random], per-quantile rows [U, Q, per_q]
        (-1 where a bin is short) and quantile boundaries [U, Q + 1] of the pooled value.

        Rows are taken in picture-index order and permuted per unit by a seeded
        generator, so the choice depends only on the pool's pictures (not on batching).
        """
        st = self.states[name]
        r, u = len(self.pool_ids), len(st.units)
        canon = torch.from_numpy(np.argsort(self.pool_ids, kind="stable"))  # pos -> row
        group = sorted(self.states).index(name)
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + group)
        perm = torch.argsort(torch.rand(u, r, generator=gen), dim=1)
        rand = canon[perm[:, : min(n_random, r)]] if r else torch.zeros((u, 0), dtype=torch.long)
        if n_quantiles <= 0 or r == 0:
            return rand, torch.full((u, 0, per_quantile), -1), torch.zeros((u, 0))
        vals = st.pool_vals[canon].T.double().contiguous()  # [U, R] in index order
        levels = torch.linspace(0, 1, n_quantiles + 1, dtype=torch.float64)
        bounds = torch.quantile(vals, levels, dim=1).T.contiguous()
        bins = (torch.searchsorted(bounds, vals, right=True) - 1).clamp(0, n_quantiles - 1)
        bins_perm = bins.gather(1, perm)
        chosen = torch.full((u, n_quantiles, per_quantile), -1, dtype=torch.long)
        take = min(per_quantile, r)
        for q in range(n_quantiles):  # the first `per_quantile` of each bin, in perm order
            in_bin = bins_perm == q
            sel = in_bin & (in_bin.long().cumsum(1) <= per_quantile)
            first = torch.sort((~sel).to(torch.int8), dim=1, stable=True).indices[:, :take]
            rows = canon[perm.gather(1, first)]
            chosen[:, q, :take] = torch.where(sel.gather(1, first), rows, torch.full_like(rows, -1))
        return rand, chosen, bounds

    def state_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "pool_ids": self.pool_ids.tolist(),
            "states": {k: dict(vars(v)) for k, v in self.states.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n = state["n"]
        self.pool_ids = np.asarray(state["pool_ids"], dtype=np.int64)
        self.pool_prio = excerpt_priority(self.seed, self.pool_ids)
        self.states = {k: LayerState(**v) for k, v in state["states"].items()}


# ---------------------------------------------------------------- the recording


def record_images(
    config: VisionRecordConfig | None = None,
    run_dir: str | Path = ".",
    progress: Callable[[VisionRecordProgress], None] | None = None,
    *,
    loaded_subject: VisionSubject | None = None,
    restart: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> VisionRecordSummary:
    """Record units of a vision subject over an image source into `run_dir`.

    `options` override fields of `config` (see `VisionRecordConfig`). `loaded_subject`
    passes an already loaded subject (its name must match `config.subject`). `restart`
    discards a checkpoint; `overwrite` replaces records made with other options.
    """
    try:
        cfg = VisionRecordConfig.model_validate(
            {**(config or VisionRecordConfig()).model_dump(), **options}
        )
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(
            f"bad vision recording options: {'.'.join(map(str, err['loc']))}: {err['msg']}"
        ) from None
    out = Path(run_dir)
    with RunDir(out).lock():
        return _record(cfg, out, progress, loaded_subject, restart=restart, overwrite=overwrite)


def default_layers(subject: VisionSubject) -> list[str]:
    layers = subject.layers()
    if subject.name == EMBEDDED_SUBJECT:
        return [DEFAULT_LAYER]
    # The last MLP block (transformers) or stage (ConvNeXt); else whatever comes last.
    blocks = [x for x in layers if x.startswith(("mlp", "stage"))]
    return [blocks[-1]] if blocks else [layers[-1]]


def _default_units(subject: VisionSubject, layer: str) -> str:
    if subject.name == EMBEDDED_SUBJECT and layer == DEFAULT_LAYER:
        return DEFAULT_UNITS
    return GENERIC_UNITS


def resolve_units(
    spec: str | list[int] | int | None, width: int, layer: str, default: str
) -> list[int]:
    """Unit indices of one layer from "0-7,12", a list, a count or None (`default`)."""
    if spec is None:
        spec = default
    if isinstance(spec, bool):
        raise ConfigError(f"bad units {spec!r}")
    if isinstance(spec, int):  # a count: the first n units
        if spec < 1:
            raise ConfigError(f"units: need at least 1, not {spec}")
        return list(range(min(spec, width)))
    if isinstance(spec, list):
        bad = [i for i in spec if not 0 <= int(i) < width]
        if bad:
            raise ConfigError(
                f"unit {bad[0]} out of range: layer {layer} has {width} (0-{width - 1})"
            )
        return sorted({int(i) for i in spec})
    out = parse_index_spec(spec, width, what=f"layer {layer} unit")
    return list(range(width)) if out is None else out


def unit_type(layer: str) -> str:
    """What a layer's units are: channel, mlp, resid, embedding, logit or sae."""
    if ":sae:" in layer:
        return "sae"
    for prefix, kind in (("mlp", "mlp"), ("resid", "resid"), ("embeds", "embedding")):
        if layer.startswith(prefix):
            return kind
    return "logit" if layer == "logits" else "channel"


def _file_for(out: Path, layer: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in layer)
    return RunDir(out).records_dir / f"{safe}.jsonl"


def _record(
    cfg: VisionRecordConfig,
    out: Path,
    progress: Callable[[VisionRecordProgress], None] | None,
    subject: VisionSubject | None,
    *,
    restart: bool,
    overwrite: bool,
) -> VisionRecordSummary:
    rundir = RunDir(out)
    chash = cfg.result_hash()
    manifest = rundir.manifest()
    done = manifest.stages.get("record", {}) if manifest else {}
    if done.get("config_hash") == chash and done.get("status") == "complete":
        files = [out / f for f in done.get("files", [])]
        if files and all(f.exists() for f in files):
            return VisionRecordSummary(
                out,
                files,
                int(done.get("n_units", 0)),
                int(done.get("n_images", 0)),
                int(done.get("n_skipped", 0)),
                int(done.get("n_stored", 0)),
                0.0,
                0.0,
                skipped=True,
                layers=list(done.get("layers", [])),
            )
    t0 = time.perf_counter()
    if subject is None:
        subject = load_vision_subject(cfg.subject, device=cfg.device)
    elif subject.name != cfg.subject:
        raise ConfigError(f"subject {subject.name!r} given, but the config names {cfg.subject!r}")
    layers = cfg.layers or default_layers(subject)
    if cfg.sae:
        if len(layers) != 1:
            raise ConfigError(f"--sae reads one layer; {len(layers)} given ({', '.join(layers)})")
        subject = with_sae(subject, layers[0], cfg.sae, k=cfg.sae_k)
        layers = [subject.label]
    elif cfg.sae_k is not None:
        raise ConfigError("--sae-k needs --sae")
    known = subject.layers()
    for layer in layers:
        if layer not in known:
            raise ConfigError(
                f"{subject.name} has no layer {layer!r}; its layers: {', '.join(known)}"
            )
    units = {
        layer: resolve_units(
            cfg.units, subject.n_units(layer), layer, _default_units(subject, layer)
        )
        for layer in dict.fromkeys(layers)
    }
    files = [_file_for(out, layer) for layer in units]
    existing = rundir.record_files()
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already holds records made with other options; "
            "use a new --out directory or --overwrite"
        )
    source = open_images(
        cfg.images,
        max_images=cfg.max_images,
        seed=cfg.seed,
        image_column=cfg.image_column,
        caption_column=cfg.caption_column,
        label_columns=cfg.label_columns,
    )
    collector = VisionCollector(units, n_top=cfg.n_top, pool_size=cfg.pool_size, seed=cfg.seed)
    ckpt = rundir.checkpoint_path
    position, skipped = _maybe_resume(ckpt, chash, collector, restart)
    resumed = position
    total = source.length

    def report() -> None:
        if progress is not None:
            progress(VisionRecordProgress(position, collector.n, len(skipped), total))

    last_ckpt = time.perf_counter()
    report()
    t_stream = time.perf_counter()
    n_streamed = 0
    batch: list[tuple[SourceImage, Any]] = []
    for item in source:
        if item.index < position:
            continue
        try:
            batch.append((item, item.load()))
        except DataError as exc:
            _skip(skipped, item, str(exc))
        if len(batch) >= cfg.batch_size:
            n_streamed += _run_batch(subject, units, batch, cfg, collector, skipped)
            position = item.index + 1
            batch = []
            if time.perf_counter() - last_ckpt >= cfg.checkpoint_seconds:
                _save_checkpoint(ckpt, chash, collector, position, skipped)
                last_ckpt = time.perf_counter()
            report()
    if batch:
        n_streamed += _run_batch(subject, units, batch, cfg, collector, skipped)
    position = total if total is not None else position
    report()
    stream_seconds = time.perf_counter() - t_stream
    if collector.n == 0:
        raise DataError(
            f"image source {cfg.images!r} gave no readable picture "
            f"({len(skipped)} skipped: {skipped[0]['reason'] if skipped else 'empty'})"
        )
    n_stored = _finish(out, cfg, subject, source, collector, files, overwrite=overwrite)
    seconds = time.perf_counter() - t0
    ips = n_streamed / stream_seconds if stream_seconds > 0 else 0.0
    _write_manifest(
        out,
        manifest,
        cfg,
        chash,
        subject,
        source,
        collector,
        files,
        skipped,
        n_stored,
        seconds=seconds,
        images_per_second=ips,
    )
    shutil.rmtree(ckpt.parent, ignore_errors=True)
    return VisionRecordSummary(
        out,
        files,
        sum(len(u) for u in units.values()),
        collector.n,
        len(skipped),
        n_stored,
        seconds,
        ips,
        resumed_from=resumed,
        layers=list(units),
    )


def _skip(skipped: list[dict[str, str]], item: SourceImage, reason: str) -> None:
    log.warning("skipping image %s: %s", item.key, reason)
    skipped.append({"key": item.key, "reason": reason})


def _run_batch(
    subject: VisionSubject,
    units: dict[str, list[int]],
    batch: list[tuple[SourceImage, Any]],
    cfg: VisionRecordConfig,
    collector: VisionCollector,
    skipped: list[dict[str, str]],
) -> int:
    """Run one batch through the subject and merge it; returns the pictures recorded.

    A batch the subject cannot process is retried picture by picture, so one odd
    picture (a 1-pixel image, say) is skipped rather than ending the recording."""
    layers = list(units)
    try:
        acts = subject.activations([im for _, im in batch], layers)
        good = batch
    except NeuroscribeError:
        raise
    except Exception as exc:
        if len(batch) == 1:
            _skip(skipped, batch[0][0], f"the subject could not process it ({exc})")
            return 0
        good, parts = [], []
        for pair in batch:
            try:
                parts.append(subject.activations([pair[1]], layers))
                good.append(pair)
            except NeuroscribeError:
                raise
            except Exception as exc1:
                _skip(skipped, pair[0], f"the subject could not process it ({exc1})")
        if not good:
            return 0
        acts = {name: torch.cat([p[name] for p in parts]) for name in layers}
    merged: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for name in layers:
        a = acts[name][:, units[name]].float()
        _check_finite(subject.name, name, units[name], a, [it for it, _ in good])
        merged[name] = spatial_summary(a, cfg.spatial_side, cfg.pooling)
    collector.update([it.index for it, _ in good], merged)
    return len(good)


def _check_finite(
    model: str, layer: str, units: list[int], a: torch.Tensor, items: list[SourceImage]
) -> None:
    bad = ~torch.isfinite(a) | (a.abs() > MAX_ABS_ACTIVATION)
    if bool(bad.any()):
        n, u = (int(x) for x in bad.nonzero()[0][:2])
        value = a[n, u].flatten()[bad[n, u].flatten()][0].item()
        raise DataError(
            f"unit {model}/{layer}/{units[u]} is {value!r} on image {items[n].key}: "
            "refusing to record a non-finite or out-of-range activation"
        )


# ---------------------------------------------------------------- writing


def _finish(
    out: Path,
    cfg: VisionRecordConfig,
    subject: VisionSubject,
    source: ImageSource,
    collector: VisionCollector,
    files: list[Path],
    *,
    overwrite: bool,
) -> int:
    """Store the kept pictures and write the records atomically; returns pictures stored."""
    selections = {
        name: collector.select_from_pool(
            name,
            n_random=cfg.n_random,
            n_quantiles=cfg.n_quantiles,
            per_quantile=cfg.per_quantile,
        )
        for name in collector.states
    }
    keep: set[int] = set()
    for name, st in collector.states.items():
        keep.update(int(i) for i in st.top_ids.flatten().tolist() if i >= 0)
        rand, quant, _ = selections[name]
        rows = [int(r) for r in torch.cat([rand.flatten(), quant.flatten()]).tolist() if r >= 0]
        keep.update(int(collector.pool_ids[r]) for r in rows)
    refs = _store_images(out, cfg, subject, source, keep)
    rundir = RunDir(out)
    rundir.records_dir.mkdir(parents=True, exist_ok=True)
    tmps: list[Path] = []
    try:
        for name, path in zip(collector.states, files, strict=True):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmps.append(tmp)
            _write_layer(tmp, name, cfg, subject, collector, selections[name], refs)
        for tmp, path in zip(tmps, files, strict=True):
            os.replace(tmp, path)
        tmps.clear()
        if overwrite:
            for old in set(rundir.records_dir.glob("*.jsonl")) - set(files):
                old.unlink()
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    return len({r.sha256 for r in refs.values()})


def _store_images(
    out: Path, cfg: VisionRecordConfig, subject: VisionSubject, source: ImageSource, keep: set[int]
) -> dict[int, ImageRef]:
    """Open the kept pictures again and store each as the subject saw it."""
    store = RunDir(out).images
    refs: dict[int, ImageRef] = {}
    views: dict[int, tuple[Any, Any]] = {}
    items = source.pick(keep)
    for index in sorted(keep):
        item = items.get(index)
        try:
            if item is None:
                raise DataError(f"picture {index} is no longer in the source {cfg.images!r}")
            view = _shrink(subject.view(item.load()), cfg.store_side)
        except DataError as exc:
            # It was readable while streaming; it changed since. Leave it out, loudly.
            log.warning("image %s could not be stored (%s): left out of the records", index, exc)
            continue
        views[index] = (item, view)
    labels = _zero_shot_labels(cfg, subject, views)
    for index, (item, view) in views.items():
        refs[index] = store.put(
            view,
            source=item.key,
            caption=item.caption,
            labels=list(item.labels) or labels.get(index, []),
        )
    return refs


def zero_shot_labeler(cfg: VisionRecordConfig, subject: VisionSubject) -> str | None:
    """The image-text model that labels uncaptioned pictures, or None."""
    if cfg.zero_shot == "none":
        return None
    if cfg.zero_shot != "auto":
        return cfg.zero_shot
    model = getattr(subject, "model", None)
    source = getattr(subject, "source", None)
    if source is not None and hasattr(model, "get_text_features"):
        return f"hf:{source}"
    return None


def _zero_shot_labels(
    cfg: VisionRecordConfig, subject: VisionSubject, views: dict[int, tuple[Any, Any]]
) -> dict[int, list[str]]:
    """CLIP-Dissect-style labels (the k nearest concepts of the shipped vocabulary) for the
    kept pictures the source says nothing about."""
    bare = [i for i, (item, _) in views.items() if not item.caption and not item.labels]
    spec = zero_shot_labeler(cfg, subject) if bare else None
    if spec is None:
        return {}
    from neuroscribe.vision.clip import load_clip

    try:
        clip = load_clip(spec, device=cfg.device)
        found = clip.zero_shot_labels([views[i][1] for i in bare], k=cfg.zero_shot_k)
    except NeuroscribeError as exc:
        if cfg.zero_shot != "auto":
            raise
        # The subject's own text tower was a guess (e.g. a folder without a tokenizer):
        # the pictures keep no labels, and the log says why.
        log.warning("no zero-shot labels from %s: %s", spec, exc)
        return {}
    return dict(zip(bare, found, strict=True))


def _shrink(image: Any, side: int) -> Any:
    if max(image.size) <= side:
        return image
    from PIL import Image

    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def _excerpt(
    ref: ImageRef, value: float, spatial: torch.Tensor | None, pooling: str
) -> ActivationRecord:
    grid = None if spatial is None else [[sig(v) for v in row] for row in spatial.tolist()]
    image = ref.model_copy(update={"pooling": pooling, "spatial": grid})
    return ActivationRecord(tokens=[image.description], activations=[sig(value)], image=image)


def _write_layer(
    tmp: Path,
    name: str,
    cfg: VisionRecordConfig,
    subject: VisionSubject,
    collector: VisionCollector,
    selection: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    refs: dict[int, ImageRef],
) -> None:
    st = collector.states[name]
    stats = collector.statistics(name)
    rand, quant, bounds = selection

    def pooled(j: int, row: int) -> ActivationRecord | None:
        ref = refs.get(int(collector.pool_ids[row]))
        if ref is None:
            return None
        maps = st.pool_maps[row, j] if st.pool_maps is not None else None
        return _excerpt(ref, float(st.pool_vals[row, j]), maps, cfg.pooling)

    with tmp.open("w", encoding="utf-8") as f:
        for j, index in enumerate(st.units):
            top = []
            for r in range(st.top_ids.shape[1]):
                pid = int(st.top_ids[j, r])
                if pid < 0:
                    break
                if pid in refs:
                    maps = st.top_maps[j, r] if st.top_maps is not None else None
                    top.append(_excerpt(refs[pid], float(st.top_vals[j, r]), maps, cfg.pooling))
            random_sample = [x for x in (pooled(j, int(r)) for r in rand[j].tolist()) if x]
            by_q = None
            if cfg.n_quantiles > 0:
                by_q = [
                    [x for x in (pooled(j, int(r)) for r in row if r >= 0) if x]
                    for row in quant[j].tolist()
                ]
            record = NeuronRecord(
                unit_id=f"{subject.name}/{name}/{index}",
                model=subject.name,
                layer=name,
                index=index,
                most_positive_activation_records=top,
                random_sample=random_sample,
                random_sample_by_quantile=by_q,
                quantile_boundaries=[sig(b) for b in bounds[j].tolist()]
                if by_q is not None
                else None,
                **{k: _finite(v[j]) for k, v in stats.items()},
                unit_type=unit_type(name),
                pooling=cfg.pooling,
            )
            f.write(record.model_dump_json() + "\n")
        f.flush()
        os.fsync(f.fileno())


def _finite(v: Any) -> float | None:
    v = float(v)
    return sig(v) if math.isfinite(v) else None


def _write_manifest(
    out: Path,
    manifest: RunManifest | None,
    cfg: VisionRecordConfig,
    chash: str,
    subject: VisionSubject,
    source: ImageSource,
    collector: VisionCollector,
    files: list[Path],
    skipped: list[dict[str, str]],
    n_stored: int,
    *,
    seconds: float,
    images_per_second: float,
) -> None:
    from neuroscribe.datasets.record import _versions

    versions = _versions()
    manifest = manifest or RunManifest(package_version=versions.get("neuroscribe", ""))
    images = source.describe()
    layers = list(collector.states)
    manifest.subject = {
        "model": subject.name,
        "source": cfg.subject,
        "modality": "image",
        "architecture": getattr(subject, "architecture", type(subject).__name__),
        "layers": layers,
        "layer": layers[0] if len(layers) == 1 else None,
        "pooling": cfg.pooling,
        "images": images,
        "n_images": collector.n,
        "n_skipped": len(skipped),
    }
    manifest.stages["record"] = {
        "status": "complete",
        "modality": "image",
        "config_hash": chash,
        "config": cfg.model_dump(),
        "layers": layers,
        "units": [
            {
                "layer": name,
                "unit_type": unit_type(name),
                "width": subject.n_units(name),
                "n_units": len(st.units),
                "indices": st.units,
                "spatial": st.top_maps is not None,
                "file": str(f.relative_to(out)),
                **_sae_entry(subject, name),
            }
            for (name, st), f in zip(collector.states.items(), files, strict=True)
        ],
        "files": [str(f.relative_to(out)) for f in files],
        "images": images,
        "n_units": sum(len(st.units) for st in collector.states.values()),
        "n_images": collector.n,
        "n_skipped": len(skipped),
        "skipped": skipped[:MAX_SKIPPED_LISTED],
        "n_stored": n_stored,
        "seed": cfg.seed,
        "device": cfg.device,
        "seconds": round(seconds, 2),
        "images_per_second": round(images_per_second, 2),
        "versions": versions,
        "finished_at": utc_now(),
    }
    manifest.updated_at = utc_now()
    RunDir(out).write_manifest(manifest)


def _sae_entry(subject: VisionSubject, layer: str) -> dict[str, Any]:
    sae = getattr(subject, "sae", None)
    if sae is None or layer != getattr(subject, "label", None):
        return {}
    return {
        "unit_type": "sae",
        "sae": str(sae.info.path) if getattr(sae.info, "path", None) else sae.name,
        "sae_id": sae.info.sae_id or sae.name,
        "sae_layout": sae.info.layout,
        "sae_activation": sae.activation,
        "sae_d_in": sae.d_in,
        "sae_d_sae": sae.d_sae,
        "sae_reads": subject.layer,
    }


# ---------------------------------------------------------------- checkpoints


def _save_checkpoint(
    path: Path, chash: str, collector: VisionCollector, position: int, skipped: list[dict[str, str]]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(
        {
            "kind": "vision",
            "config_hash": chash,
            "position": position,
            "skipped": skipped,
            "collector": collector.state_dict(),
        },
        tmp,
    )
    os.replace(tmp, path)


def _maybe_resume(
    path: Path, chash: str, collector: VisionCollector, restart: bool
) -> tuple[int, list[dict[str, str]]]:
    if not path.exists():
        return 0, []
    if restart:
        path.unlink()
        return 0, []
    try:
        state = torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # a truncated pickle raises several types
        raise DataError(f"{path}: unreadable checkpoint ({e}); rerun with --restart") from None
    if state.get("kind") != "vision" or state.get("config_hash") != chash:
        raise ConfigError(
            f"{path} is a checkpoint of a recording with other options; "
            "rerun with the same options to resume, or with --restart to start over"
        )
    collector.load_state_dict(state["collector"])
    log.info("resuming the vision recording after %d pictures", state["position"])
    return int(state["position"]), list(state["skipped"])
