"""`record_run`: run a subject model over a corpus and write NeuronRecord JSONL.

    RUN/records/layer-05.jsonl   one NeuronRecord per line, one file per hook point
    RUN/manifest.json            subject + stages["record"] (config, corpus, tokens, versions)
    RUN/.record-checkpoint/      collector state while recording (removed when done)

Everything is written at the end through temporary files and renames, so an error leaves
no half-written shard. An interrupted recording resumes from its last checkpoint when
the same command (same configuration) is run again.

With `ray=ADDRESS` (`neuroscribe record --ray ADDRESS`) the streaming pass is sharded over
the workers of a Ray cluster and their summaries merged (`neuroscribe.distributed.record`);
the files written are the same.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, Field, ValidationError

from neuroscribe.datasets.collect import Collector
from neuroscribe.datasets.corpus import Corpus, open_corpus
from neuroscribe.datasets.sae import SAE, ReconStats, load_sae
from neuroscribe.datasets.units import (
    Capture,
    Subject,
    UnitSource,
    build_sources,
    load_subject,
    parse_index_spec,
)
from neuroscribe.datasets.windows import (
    TokenStrings,
    batched,
    iter_windows,
    make_batch,
    special_prefix,
)
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord, RunManifest, utc_now

log = logging.getLogger(__name__)

# The checkpoint folder lives where RunDir says (kept as a name for callers and tests).
CHECKPOINT_DIR = RunDir.CHECKPOINT_DIR


class RecordConfig(BaseModel):
    """Every option of a recording; the defaults are those of `neuroscribe record`."""

    model: str | None = None  # Hub id, local folder, hf:ID, hf:embedded; None = embedded SmolLM2
    revision: str | None = None
    layers: list[int] | Literal["all"] | None = None  # None = first, middle and last
    units: str = "all"  # indices per hook point: "all", "0-31", "0,5,9"
    max_units: int | None = 128  # with units="all": keep the first N (None/0 = all)
    unit_type: Literal["mlp", "module", "sae"] = "mlp"  # "sae" whenever `sae` is given
    module: str | None = None
    hook: Literal["input", "output"] = "output"
    sae: str | None = None  # an SAE file or folder (SAELens, sparsify, Gemma Scope, ...)
    sae_k: int | None = None
    sae_hook: str | None = None  # overrides the SAE's own hook name (or a module path)
    corpus: str = "builtin"
    text_column: str = "text"
    split: str = "train"
    max_tokens: int = Field(20_000, ge=1)
    excerpt_len: int = Field(64, ge=1)
    min_excerpt_len: int = Field(8, ge=1)
    n_top: int = Field(20, ge=1)
    n_random: int = Field(20, ge=0)
    n_quantiles: int = Field(5, ge=0)
    per_quantile: int = Field(4, ge=1)
    pool_size: int = Field(512, ge=1)
    pool_memory_mb: int = Field(
        2048, ge=0
    )  # above this, pool activations are recomputed at the end
    batch_size: int = Field(8, ge=1)
    device: str | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    seed: int = 0
    checkpoint_every: int = Field(50, ge=1)  # batches between checkpoints ...
    checkpoint_seconds: float = Field(60.0, ge=0)  # ... and at least this long between them
    # Distributed recording (neuroscribe.distributed.record): a Ray cluster address
    # (auto, local, local:N, HOST:PORT) and the number of shard workers (default: the
    # cluster's CPUs, or its GPUs when recording on cuda). The records do not depend on them.
    ray: str | None = None
    ray_workers: int | None = Field(None, ge=1)

    def result_hash(self) -> str:
        """Hash of the options that change the records (not device, checkpoint cadence or
        how the work is spread over workers)."""
        data = self.model_dump(
            exclude={"device", "checkpoint_every", "checkpoint_seconds", "ray", "ray_workers"}
        )
        if data["sae_hook"] is None:  # added later: unset, it keeps older hashes valid
            del data["sae_hook"]
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class RecordProgress:
    batches: int
    excerpts: int
    tokens: int
    max_tokens: int


@dataclass
class RecordSummary:
    out: Path
    files: list[Path]
    n_units: int
    n_tokens: int
    n_excerpts: int
    stream_seconds: float
    finalize_seconds: float
    stream_cpu_seconds: float = 0.0  # process CPU time of the streaming pass (all threads)
    resumed_from: int = 0  # excerpts already done when resuming
    skipped: bool = False  # records were already complete


def record_run(
    out: str | Path,
    config: RecordConfig | None = None,
    *,
    progress: Callable[[RecordProgress], None] | None = None,
    restart: bool = False,
    overwrite: bool = False,
    **options: Any,
) -> RecordSummary:
    """Record units of a subject model into `out/records/*.jsonl` and update the manifest.

    `options` override fields of `config` (see `RecordConfig`), e.g.
    `record_run("run", layers=[0, 5], max_units=16, max_tokens=20_000)`.
    `restart` discards a checkpoint; `overwrite` replaces records made with other options.
    With `ray="ADDRESS"` the corpus is sharded over the workers of a Ray cluster
    (`neuroscribe.distributed.record`); the records are the same.
    """
    # Options given on purpose (not defaults): an SAE's own hook must agree with them.
    given = {k for k, v in options.items() if v is not None}
    if config is not None:
        given |= {k for k in config.model_fields_set if getattr(config, k) is not None}
    try:
        cfg = (config or RecordConfig()).model_copy(update=options)
        if cfg.sae and "unit_type" not in given:  # --sae implies --unit-type sae
            cfg = cfg.model_copy(update={"unit_type": "sae"})
        cfg = RecordConfig.model_validate(cfg.model_dump())
    except ValidationError as e:
        raise ConfigError(
            f"bad recording options: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
        ) from None
    out = Path(out)
    if cfg.min_excerpt_len > cfg.excerpt_len:
        cfg = cfg.model_copy(update={"min_excerpt_len": cfg.excerpt_len})
    from neuroscribe.distributed.cluster import check_workers

    check_workers(cfg.ray, cfg.ray_workers)
    if cfg.ray:  # the GPUs, if any, are the workers' (checked there)
        from neuroscribe.distributed.record import record_distributed as recorder
    else:
        if str(cfg.device).startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"--device {cfg.device}: no CUDA GPU is available here (use cpu)")
        recorder = _record
    with RunDir(out).lock():
        return recorder(
            out,
            cfg,
            progress=progress,
            restart=restart,
            overwrite=overwrite,
            hook_given="hook" in given,
        )


@dataclass
class _Setup:
    """What a recording needs before its first batch (the driver and every shard worker
    of a distributed recording build the same one)."""

    corpus: Corpus
    subject: Subject
    sources: list[UnitSource]
    prefix: list[int]  # special tokens before each excerpt, never recorded
    pad_id: int


def _setup(cfg: RecordConfig, *, device: str | None, hook_given: bool = False) -> _Setup:
    """Open the corpus, load the subject (and SAE) on `device`, choose the units."""
    corpus = open_corpus(cfg.corpus, text_column=cfg.text_column, split=cfg.split)
    sae = load_sae(cfg.sae, k=cfg.sae_k) if cfg.sae else None
    if sae is not None and cfg.unit_type != "sae":
        raise ConfigError(f"--sae records SAE latents: drop --unit-type {cfg.unit_type}")
    if sae is None and (cfg.sae_k is not None or cfg.sae_hook is not None):
        raise ConfigError("--sae-k and --sae-hook need --sae")
    subject = load_subject(cfg.model, device=device, dtype=cfg.dtype, revision=cfg.revision)
    sources = build_sources(
        subject.model,
        unit_type=cfg.unit_type,
        layers=cfg.layers,
        module=cfg.module,
        hook=cfg.hook,
        sae=sae,
        sae_hook=cfg.sae_hook,
        hook_given=hook_given,
    )
    if sae is not None:
        _check_sae_model(sae, subject)
        for s in sources:
            s.sae = sae.to(subject.device, torch.float32)
    prefix = _prefix_for(subject, sae)
    if (
        sae is not None
        and sae.info.context_size
        and len(prefix) + cfg.excerpt_len > int(sae.info.context_size)
    ):
        log.warning(
            "SAE %s was trained on %s-token contexts; excerpts here are %d tokens",
            cfg.sae,
            sae.info.context_size,
            len(prefix) + cfg.excerpt_len,
        )
    _probe_widths(subject, sources, prefix, cfg)
    return _Setup(corpus, subject, sources, prefix, _pad_id(subject.tokenizer))


def _existing(
    out: Path, cfg: RecordConfig, setup: _Setup, *, overwrite: bool
) -> tuple[list[Path], RunManifest | None, RecordSummary | None]:
    """(record files, manifest, a summary if these records are already complete).

    Refuses records of other options unless `overwrite`."""
    rundir = RunDir(out)
    files = [rundir.records_dir / f"{s.file_stem}.jsonl" for s in setup.sources]
    manifest = rundir.manifest()
    done = manifest.stages.get("record", {}) if manifest else {}
    if (
        done.get("config_hash") == cfg.result_hash()
        and done.get("status") == "complete"
        and all(f.exists() for f in files)
    ):
        n_units = sum(_n_units(s) for s in setup.sources)
        summary = RecordSummary(
            out,
            files,
            n_units,
            done.get("n_tokens", 0),
            done.get("n_excerpts", 0),
            0.0,
            0.0,
            skipped=True,
        )
        return files, manifest, summary
    existing = [f for f in files if f.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already holds records made with other options; "
            "use a new --out directory or --overwrite"
        )
    return files, manifest, None


def _new_collector(cfg: RecordConfig, setup: _Setup) -> Collector:
    return Collector(
        [_n_units(s) for s in setup.sources],
        length=cfg.excerpt_len,
        n_top=cfg.n_top,
        pool_size=cfg.pool_size,
        seed=cfg.seed,
        device=setup.subject.device,
        keep_pool_acts=_pool_bytes(cfg, setup.sources) <= cfg.pool_memory_mb * 2**20,
    )


def _stream(
    setup: _Setup,
    cfg: RecordConfig,
    collector: Collector,
    recon: list[ReconStats | None],
    *,
    shard: tuple[int, int] | None = None,
    skip_batches: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Run the subject over the corpus and feed the collector, batch by batch.

    Alone (`shard` None) it continues after the collector's `n_excerpts` (a resumed
    checkpoint). As shard (rank, n) of a distributed recording it takes the batches
    rank, rank + n, rank + 2n, ... of the one stream a single process would cut, with
    their global excerpt ids: the same batches, so the same activations, and together
    the n shards cover every excerpt once, `max_tokens` included; a resumed shard skips
    the first `skip_batches` of its batches (its checkpoint holds them).
    `on_batch(i)` runs after the i-th batch this call recorded (1, 2, ...).
    """
    subject, prefix = setup.subject, setup.prefix
    windows = iter_windows(
        setup.corpus.texts(),
        subject.tokenizer,
        length=cfg.excerpt_len,
        min_length=cfg.min_excerpt_len,
        max_tokens=cfg.max_tokens,
    )
    if shard is None:
        windows = itertools.islice(windows, collector.n_excerpts, None)
    capture = Capture(subject.model, setup.sources, recon=recon, skip_prefix=len(prefix))
    done = 0
    own = 0  # this shard's batches seen, skipped ones included
    with capture:
        for b, batch in enumerate(batched(windows, cfg.batch_size)):
            first_id = None
            if shard is not None:
                if b % shard[1] != shard[0]:
                    continue
                own += 1
                if own <= skip_batches:
                    continue
                first_id = b * cfg.batch_size  # every earlier batch is full
            ids, mask, valid = make_batch(batch, prefix, cfg.excerpt_len, setup.pad_id)
            acts = capture.run(ids.to(subject.device), mask.to(subject.device))
            collector.update([a[:, len(prefix) :] for a in acts], valid, batch, first_id=first_id)
            done += 1
            if on_batch is not None:
                on_batch(done)


def _record(
    out: Path,
    cfg: RecordConfig,
    *,
    progress: Callable[[RecordProgress], None] | None,
    restart: bool,
    overwrite: bool,
    hook_given: bool = False,
) -> RecordSummary:
    setup = _setup(cfg, device=cfg.device, hook_given=hook_given)
    files, manifest, skipped = _existing(out, cfg, setup, overwrite=overwrite)
    if skipped is not None:
        return skipped

    chash = cfg.result_hash()
    t0, c0 = time.perf_counter(), time.process_time()
    collector = _new_collector(cfg, setup)
    recon = [_recon_stats(s) for s in setup.sources]
    ckpt = RunDir(out).checkpoint_path
    resumed = _maybe_resume(ckpt, chash, collector, restart, recon)
    last_ckpt = (0, time.perf_counter())  # (batch, time) of the last checkpoint

    def on_batch(nb: int) -> None:
        nonlocal last_ckpt
        due = nb - last_ckpt[0] >= cfg.checkpoint_every
        if due and time.perf_counter() - last_ckpt[1] >= cfg.checkpoint_seconds:
            _save_checkpoint(ckpt, chash, collector, recon)
            last_ckpt = (nb, time.perf_counter())
        if progress is not None:
            progress(RecordProgress(nb, collector.n_excerpts, collector.n_tokens, cfg.max_tokens))

    _stream(setup, cfg, collector, recon, on_batch=on_batch)
    t1, c1 = time.perf_counter(), time.process_time()
    _finish(
        out,
        cfg,
        setup,
        collector,
        recon,
        manifest,
        files,
        overwrite=overwrite,
        seconds=time.perf_counter() - t0,
        run_info={"workers": 1, "device": str(setup.subject.device)},
    )
    return RecordSummary(
        out,
        files,
        sum(_n_units(s) for s in setup.sources),
        collector.n_tokens,
        collector.n_excerpts,
        t1 - t0,
        time.perf_counter() - t1,
        stream_cpu_seconds=c1 - c0,
        resumed_from=resumed,
    )


def _finish(
    out: Path,
    cfg: RecordConfig,
    setup: _Setup,
    collector: Collector,
    recon: list[ReconStats | None],
    manifest: RunManifest | None,
    files: list[Path],
    *,
    overwrite: bool,
    seconds: float,
    run_info: dict[str, Any],
) -> None:
    """Write the records (all through temporary files and renames) and the manifest, and
    remove the checkpoint. `seconds` counts the streaming pass before this; `run_info`
    (workers, device, ...) goes into the manifest's record stage."""
    if collector.n_excerpts == 0:
        raise DataError(
            f"corpus {setup.corpus.spec!r} gave no text to record (empty, or every document "
            f"shorter than {cfg.min_excerpt_len} tokens)"
        )
    t0 = time.perf_counter()
    rundir = RunDir(out)
    records_dir = rundir.records_dir
    records_dir.mkdir(parents=True, exist_ok=True)
    tmps: list[Path] = []
    try:
        _write_records(
            setup.subject,
            setup.sources,
            collector,
            cfg,
            setup.prefix,
            setup.pad_id,
            files,
            tmps,
        )
        for tmp, f in zip(tmps, files, strict=True):
            os.replace(tmp, f)
        tmps.clear()
        if overwrite:  # records of the replaced recording that this one does not rewrite
            for old in set(records_dir.glob("*.jsonl")) - set(files):
                old.unlink()
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    _write_manifest(
        out,
        manifest,
        setup.subject,
        setup.sources,
        setup.corpus,
        cfg,
        cfg.result_hash(),
        collector,
        files,
        seconds + time.perf_counter() - t0,
        setup.prefix,
        recon,
        run_info,
    )
    shutil.rmtree(rundir.checkpoint_path.parent, ignore_errors=True)


def _pool_bytes(cfg: RecordConfig, sources: list[UnitSource]) -> int:
    return 4 * cfg.pool_size * cfg.excerpt_len * sum(_n_units(s) for s in sources)


def _n_units(s: UnitSource) -> int:
    assert s.indices is not None
    return int(s.indices.numel())


def _pad_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, name, None)
        if isinstance(v, int):
            return v
    return 0


def _probe_widths(
    subject: Subject, sources: list[UnitSource], prefix: list[int], cfg: RecordConfig
) -> None:
    """Run two tokens through the model to learn each hook point's width; select units.

    A transcoder's target is probed too: its decoder must write that many dimensions.
    """
    raw = [
        UnitSource(s.label, s.layer_index, s.module_path, s.hook, s.unit_type, s.file_stem)
        for s in sources
    ]
    targets = [s for s in sources if s.target_path is not None]
    raw += [
        UnitSource(s.label, s.layer_index, str(s.target_path), s.target_hook, "sae", s.file_stem)
        for s in targets
    ]
    probe_ids = subject.tokenizer("The", add_special_tokens=False)["input_ids"][:1] or [0]
    ids = torch.tensor([prefix + probe_ids * 2], device=subject.device)
    with Capture(subject.model, raw) as cap:
        shapes = [a.shape[-1] for a in cap.run(ids, torch.ones_like(ids))]
    for s, width in zip(targets, shapes[len(sources) :], strict=True):
        assert s.sae is not None
        if s.sae.d_out != width:
            raise ConfigError(
                f"transcoder {cfg.sae} writes {s.sae.d_out}-dim outputs but what it "
                f"reconstructs, {s.target_path} ({s.target_name}), has {width} dimensions"
            )
    for s, width in zip(sources, shapes[: len(sources)], strict=True):
        if s.sae is not None:
            if s.sae.d_in != width:
                hook = f", hook {s.hook_name}" if s.hook_name else ""
                raise ConfigError(
                    f"SAE {cfg.sae} reads {s.sae.d_in}-dim inputs but {s.module_path} "
                    f"({s.hook}) has {width} dimensions ({s.sae.info.layout} layout{hook})"
                )
            width = s.sae.d_sae
        picked = parse_index_spec(cfg.units, width, what="unit")
        chosen = picked if picked is not None else list(range(width))
        if cfg.max_units and picked is None:  # an explicit --units list is kept whole
            chosen = chosen[: cfg.max_units]
        s.width = width
        s.indices = torch.tensor(chosen, dtype=torch.long, device=subject.device)


def _check_sae_model(sae: SAE, subject: Subject) -> None:
    """Warn when the SAE's files name another model than the subject (names differ in
    form across tools, e.g. `gpt2-small` and `gpt2`, so this is no error)."""
    want = sae.info.model_name
    if not want:
        return

    def norm(name: str) -> str:
        return name.rstrip("/").rsplit("/", 1)[-1].lower()

    a, b = norm(want), norm(subject.name)
    if a not in b and b not in a and norm(subject.source) != a:
        msg = f"SAE {sae.info.path} was trained on {want!r}, but the subject model is {subject.name!r}"
        log.warning(msg)
        sae.info.notes.append(msg)


def _prefix_for(subject: Subject, sae: SAE | None) -> list[int]:
    """The special tokens put before each excerpt: the tokenizer's own, unless the SAE
    says whether it was trained with a BOS token (SAELens `prepend_bos`)."""
    prefix = special_prefix(subject.tokenizer)
    want = None if sae is None else sae.info.prepend_bos
    bos = getattr(subject.tokenizer, "bos_token_id", None)
    if want is True and not prefix and isinstance(bos, int):
        return [bos]
    if want is False:
        return []
    return prefix


def _recon_stats(s: UnitSource) -> ReconStats | None:
    """A reconstruction check for SAE sources that can decode (transcoders need a target)."""
    if s.sae is None or not s.sae.can_decode:
        return None
    if s.sae.transcoder and s.target_path is None:
        return None
    return ReconStats()


def _save_checkpoint(
    path: Path,
    chash: str,
    collector: Collector,
    recon: list[ReconStats | None],
    **extra: Any,
) -> None:
    """Write the collector's state atomically (a kill mid-write leaves the last one);
    `extra` goes with it (a distributed shard's rank, batches done, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    state = {
        "config_hash": chash,
        "collector": collector.state_dict(),
        "recon": [None if r is None else r.state_dict() for r in recon],
        **extra,
    }
    torch.save(state, tmp)
    os.replace(tmp, path)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """A saved checkpoint (`_save_checkpoint`); DataError if it cannot be read."""
    try:
        return torch.load(path, weights_only=False, map_location="cpu")
    except Exception as e:  # a truncated pickle raises several types
        raise DataError(f"{path}: unreadable checkpoint ({e}); rerun with --restart") from None


def _restore(
    state: dict[str, Any], collector: Collector, recon: list[ReconStats | None] | None
) -> None:
    """Put a checkpoint's collector and reconstruction sums back."""
    collector.load_state_dict(state["collector"])
    for r, saved in zip(recon or [], state.get("recon") or [], strict=False):
        if r is not None and saved is not None:
            r.load_state_dict(saved)


def _maybe_resume(
    path: Path,
    chash: str,
    collector: Collector,
    restart: bool,
    recon: list[ReconStats | None] | None = None,
) -> int:
    if not path.exists():
        return 0
    if restart:
        path.unlink()
        return 0
    state = _read_checkpoint(path)
    if state.get("config_hash") != chash:
        raise ConfigError(
            f"{path} is a checkpoint of a recording with other options; "
            "rerun with the same options to resume, or with --restart to start over"
        )
    _restore(state, collector, recon)
    log.info("resuming recording after %d excerpts", collector.n_excerpts)
    return collector.n_excerpts


def _gather_pool(collector: Collector, group: int, need: torch.Tensor) -> np.ndarray:
    """[U, P, L] activations of the pool slots need [U, P] (-1 = none) from the kept pool."""
    acts = collector.groups[group].pool_acts
    assert acts is not None
    u = torch.arange(need.shape[0], device=acts.device)[:, None].expand_as(need)
    slots = need.clamp(min=0).to(acts.device)
    return acts[slots, :, u].cpu().numpy()  # [U, P, L]


def _rerun_pool(
    subject: Subject,
    sources: list[UnitSource],
    collector: Collector,
    needs: list[torch.Tensor],
    prefix: list[int],
    pad_id: int,
    batch_size: int,
) -> list[np.ndarray]:
    """Per-token activations [U, P, L] of the pool excerpts each unit needs (slots in needs[g] [U, P])."""
    length = collector.length
    union = sorted({int(s) for n in needs for s in n.flatten().tolist() if s >= 0})
    pos_of = torch.full((max(len(collector.pool_tokens), 1),), -1, dtype=torch.long)
    for p, slot in enumerate(union):
        pos_of[slot] = p
    need_pos = [torch.where(n >= 0, pos_of[n.clamp(min=0)], -1) for n in needs]
    outs = [torch.zeros((n.shape[0], n.shape[1], length)) for n in needs]
    with Capture(subject.model, sources) as cap:
        for a in range(0, len(union), batch_size):
            slots = union[a : a + batch_size]
            ids, mask, _ = make_batch(
                [collector.pool_tokens[s].tolist() for s in slots], prefix, length, pad_id
            )
            acts = cap.run(ids.to(subject.device), mask.to(subject.device))
            for g, act in enumerate(acts):
                act = act[:, len(prefix) :].cpu()
                npos = need_pos[g]
                m = (npos >= a) & (npos < a + len(slots))
                us, ps = m.nonzero(as_tuple=True)
                if us.numel():
                    outs[g][us, ps] = act[npos[us, ps] - a, :, us]
    return [o.numpy() for o in outs]


def _write_records(
    subject: Subject,
    sources: list[UnitSource],
    collector: Collector,
    cfg: RecordConfig,
    prefix: list[int],
    pad_id: int,
    files: list[Path],
    tmps: list[Path],
) -> None:
    strings = TokenStrings(subject.tokenizer)
    selections = [
        collector.select_from_pool(
            g,
            n_random=cfg.n_random,
            n_quantiles=cfg.n_quantiles,
            per_quantile=cfg.per_quantile,
            seed=cfg.seed,
        )
        for g in range(len(sources))
    ]
    needs = [torch.cat([rand, quant.flatten(1)], dim=1) for rand, quant, _ in selections]
    if collector.keep_pool_acts:
        pool_acts = [_gather_pool(collector, g, n) for g, n in enumerate(needs)]
    else:
        pool_acts = _rerun_pool(subject, sources, collector, needs, prefix, pad_id, cfg.batch_size)
    pool_text = [strings(t.tolist()) for t in collector.pool_tokens]

    for g, (src, path) in enumerate(zip(sources, files, strict=True)):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmps.append(tmp)
        stats = collector.statistics(g)
        _, top_ids, top_acts = collector.top(g)
        top_ids_np = top_ids.cpu().numpy()
        top_acts_np = top_acts.cpu().numpy()
        rand, quant, bounds = selections[g]
        n_rand = rand.shape[1]
        assert src.indices is not None
        with tmp.open("w", encoding="utf-8") as f:
            for j, index in enumerate(src.indices.tolist()):
                top = []
                for r in range(top_ids_np.shape[1]):
                    eid = int(top_ids_np[j, r])
                    if eid < 0:
                        break
                    toks = collector.tokens[eid]
                    top.append(_excerpt(strings(toks.tolist()), top_acts_np[j, r, : len(toks)]))

                def pooled(p: int, slot: int, g: int = g, j: int = j) -> ActivationRecord:
                    text = pool_text[slot]
                    return _excerpt(text, pool_acts[g][j, p, : len(text)])

                random_sample = [pooled(p, int(s)) for p, s in enumerate(rand[j].tolist())]
                by_q = None
                if cfg.n_quantiles > 0:
                    by_q = [
                        [
                            pooled(n_rand + q * cfg.per_quantile + i, s)
                            for i, s in enumerate(row)
                            if s >= 0
                        ]
                        for q, row in enumerate(quant[j].tolist())
                    ]
                record = NeuronRecord(
                    unit_id=f"{subject.name}/{src.label}/{index}",
                    model=subject.name,
                    layer=src.label,
                    index=index,
                    most_positive_activation_records=top,
                    random_sample=random_sample,
                    random_sample_by_quantile=by_q,
                    quantile_boundaries=bounds[j].tolist() if by_q is not None else None,
                    **{k: _finite(v[j]) for k, v in stats.items()},
                    unit_type=src.unit_type,
                    module=src.module_path,
                    hook=src.hook,
                    layer_index=src.layer_index,
                )
                f.write(record.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())


def _excerpt(tokens: list[str], acts: np.ndarray) -> ActivationRecord:
    return ActivationRecord(tokens=tokens, activations=acts.astype(np.float64).tolist())


def _finite(v: Any) -> float | None:
    v = float(v)
    return v if np.isfinite(v) else None


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("neuroscribe", "torch", "transformers", "numpy", "datasets", "safetensors"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def _write_manifest(
    out: Path,
    manifest: RunManifest | None,
    subject: Subject,
    sources: list[UnitSource],
    corpus: Corpus,
    cfg: RecordConfig,
    chash: str,
    collector: Collector,
    files: list[Path],
    seconds: float,
    prefix: list[int],
    recon: list[ReconStats | None],
    run_info: dict[str, Any],
) -> None:
    versions = _versions()
    manifest = manifest or RunManifest(package_version=versions.get("neuroscribe", ""))
    config = subject.model.config
    manifest.subject = {
        "model": subject.name,
        "source": subject.source,
        "revision": subject.revision,
        "model_type": getattr(config, "model_type", None),
        "n_layers": getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None),
        "dtype": cfg.dtype,
    }
    manifest.stages["record"] = {
        "status": "complete",
        "config_hash": chash,
        "config": cfg.model_dump(),
        "units": [
            {
                "layer": s.label,
                "unit_type": s.unit_type,
                "module": s.module_path,
                "hook": s.hook,
                "width": s.width,
                "n_units": _n_units(s),
                "file": str(f.relative_to(out)),
                **(_sae_entry(s, cfg, r, len(prefix)) if s.sae is not None else {}),
            }
            for s, f, r in zip(sources, files, recon, strict=True)
        ],
        "corpus": corpus.describe(),
        "n_tokens": collector.n_tokens,
        "n_excerpts": collector.n_excerpts,
        "excluded_prefix_tokens": len(prefix),
        "seed": cfg.seed,
        **run_info,  # workers (1 = one process), device
        "seconds": round(seconds, 2),
        "versions": versions,
        "finished_at": utc_now(),
    }
    manifest.updated_at = utc_now()
    RunDir(out).write_manifest(manifest)


def _sae_entry(
    s: UnitSource, cfg: RecordConfig, recon: ReconStats | None, n_prefix: int
) -> dict[str, Any]:
    """What the manifest says about an SAE source: which SAE, where it reads, what it
    reconstructs, and how well (so a wrong hook or normalisation shows)."""
    sae = s.sae
    assert sae is not None
    info = sae.info
    reads = {"module": s.module_path, "hook": s.hook, "hook_name": s.hook_name}
    if not sae.transcoder:
        writes: dict[str, Any] | None = {**reads, "what": "the SAE's input"}
    elif s.target_path is not None:
        writes = {"module": s.target_path, "hook": s.target_hook, "hook_name": s.target_name}
    else:
        writes = None
    if recon is not None:
        check: dict[str, Any] = {
            "fvu": None if recon.fvu is None else round(recon.fvu, 6),
            "n_tokens": recon.n,
            "target": "sae input" if not sae.transcoder else "transcoder target",
        }
    elif not sae.can_decode:
        check = {"skipped": "the SAE file has no decoder weights (W_dec)"}
    else:
        check = {"skipped": "the transcoder's files do not say what it reconstructs"}
    entry: dict[str, Any] = {
        "sae": cfg.sae,
        "sae_id": info.sae_id or sae.name,
        "sae_layout": info.layout,
        "sae_architecture": info.architecture,
        "hook_name": s.hook_name,
        "sae_activation": sae.activation,
        "sae_d_in": sae.d_in,
        "sae_d_sae": sae.d_sae,
        "transcoder": sae.transcoder,
        "sae_reads": reads,
        "sae_reconstructs": writes,
        "reconstruction": check,
        "sae_input": {
            "subtract_b_dec": sae.subtract_b_dec,
            "normalize_activations": sae.normalize,
            "norm_scaling_factor": sae.norm_scale,
            "center": sae.center_input,
            "prepend_bos": n_prefix > 0,
        },
    }
    for key in ("model_name", "neuronpedia_id", "context_size"):
        if getattr(info, key) is not None:
            entry[f"sae_{key}"] = getattr(info, key)
    if info.notes:
        entry["sae_notes"] = list(info.notes)
    return entry
