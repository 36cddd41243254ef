"""`UnitProbe`: a recorded unit's real per-token activations on new texts.

An explainer that revises its explanation with counterexamples proposes texts that
should (or should not) make a unit fire; this module answers with what the unit really
does on them, by running the unit's subject model exactly as `neuroscribe record` did:

- the same model and hook point: the subject model is found by
  `neuroscribe.scorer.output_side.SubjectResolver` (the `subject` option, the run
  manifest in `run_dir`, or the record's model name) and loaded once per process in the
  local model store; the hook point is the one the recorder wrote into the record
  (`module`, `hook`), else the run manifest's unit entry, else the recorder's own
  `build_sources`; the hooks are the recorder's `Capture`;
- the same input: each text is tokenised as the recorder tokenises a document (no
  special tokens), the recorder's prefix (`_prefix_for`: the tokenizer's BOS, or what an
  SAE says it was trained with) goes in front and is not reported, and batches are
  right-padded by the recorder's `make_batch`;
- the same numbers: float32 (or the dtype the run was recorded in), tokens as the
  recorder writes them (`TokenStrings`), activations as float64 lists.

So probing the text of an excerpt that was a whole document gives back that excerpt's
tokens and activations. (An excerpt cut from the middle of a longer document saw the
document's earlier windows as separate inputs, not as context, so it matches too; one
whose text does not round-trip through the tokenizer may tokenise differently.)
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.base import EMBEDDED_SPEC, LOCAL_PREFIX
from neuroscribe.schema import MAX_ABS_ACTIVATION, ActivationRecord, NeuronRecord
from neuroscribe.scorer.output_side import (
    SubjectRef,
    SubjectResolver,
    _manifest,
    _unit_entry,
    _unit_kind,
    shared_sae,
)

# The name SubjectResolver puts into its error messages.
CALLER = "unit-probe"
# What the recorder records in when the run does not say (RecordConfig.dtype).
RECORD_DTYPE = "float32"


@dataclass
class _Unit:
    """Where one record's unit lives in a loaded subject model."""

    unit_id: str
    loaded: Any  # neuroscribe.llm.local.LocalModel
    source: Any  # neuroscribe.datasets.units.UnitSource, all units of its hook point
    index: int  # the unit's index at its hook point
    column: int  # where it is in what the source captures
    sae: Any  # the SAE on the model's device (None for neurons), for the prefix
    n_prefix: int | None  # prefix length the recording excluded, when the manifest says


class UnitProbe:
    """Runs a recorded unit's subject model on new texts: the unit's real per-token activations.

    `run_dir`: the run the records come from (its manifest names the subject model, the
    dtype it was recorded in, and any SAE); `subject`: a local model spec
    (`hf:<hub id or folder>`, `hf:embedded`, or a folder) that overrides it; `sae`,
    `sae_k`: the SAE of SAE latents, when the manifest does not name it. `device`: where
    the model runs (default: a GPU if there is one). `dtype`: None = the run's recording
    dtype (float32 unless the manifest says otherwise), so the numbers are the recorder's.
    `store`: the local model store (default: the process's, shared with local LLMs).

    Each text is cut to its first `max_tokens` tokens (and to the model's context);
    `batch_size` texts run in one forward pass.
    """

    def __init__(
        self,
        *,
        run_dir: str | Path | None = None,
        subject: str | None = None,
        sae: str | None = None,
        device: str | None = None,
        store: Any = None,
        sae_k: int | None = None,
        dtype: str | None = None,
        max_tokens: int = 64,
        batch_size: int = 8,
    ) -> None:
        if max_tokens < 1:
            raise ConfigError(f"max_tokens must be at least 1, not {max_tokens}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        # Refuses an API model given as `subject` (local_subject_spec) right away.
        self.resolver = SubjectResolver(
            CALLER, subject=subject, run_dir=run_dir, sae=sae, sae_k=sae_k, device=device,
            store=store,
        )  # fmt: skip
        self.run_dir = None if run_dir is None else str(run_dir)
        self.device = device
        self.dtype = dtype
        self.store = store
        self.max_tokens = max_tokens
        self.batch_size = batch_size
        self._lock = threading.Lock()
        self._loaders: dict[str, SubjectResolver] = {}
        self._saes: dict[tuple[str, int | None, str], Any] = {}
        # The run manifest as last read, with the file's (mtime, size) then: read again
        # only when a stage has rewritten it, not once per unit.
        self._manifest_seen: tuple[tuple[int, int] | None, Any] = (None, None)

    # ------------------------------------------------------------------ public API

    def activations(self, record: NeuronRecord, texts: Sequence[str]) -> list[ActivationRecord]:
        """One ActivationRecord (tokens as the recorder writes them, float activations) per text.

        Texts are cut to `max_tokens` tokens. An empty text (no tokens) or a non-finite
        activation is a DataError; a unit whose subject model is not local (an API model)
        is a ConfigError. Synchronous and CPU/GPU bound; callers run it in a thread
        (asyncio.to_thread), or use `activations_async`.
        """
        texts = _check_texts(record, texts)
        if not texts:
            return []
        unit = self._locate(record)
        # The model may be shared with a local explainer or judge: one user at a time.
        with unit.loaded.lock:
            return self._run(unit, texts)

    async def activations_async(
        self, record: NeuronRecord, texts: Sequence[str]
    ) -> list[ActivationRecord]:
        """`activations` in a worker thread.

        Loading runs in a plain thread; the forward passes wait their turn on the model's
        queue of this event loop (`queued_for_model`), as the exact simulator's do, so
        calls waiting for a busy model do not hold the loop's small thread pool.
        """
        from neuroscribe.llm.local import queued_for_model

        texts = _check_texts(record, texts)
        if not texts:
            return []
        unit = await asyncio.to_thread(self._locate, record)

        def locked() -> list[ActivationRecord]:
            with unit.loaded.lock:
                return self._run(unit, texts)

        return await queued_for_model(unit.loaded, locked)

    def direction(self, record: NeuronRecord) -> Any:
        """What the unit writes into the residual stream (`output_side.unit_direction`:
        an MLP neuron's output-projection column, an SAE latent's decoder row), float32 on
        the CPU, from the same loaded subject model as the activations."""
        from neuroscribe.scorer.output_side import unit_direction

        ref, loaded, _, _, _ = self._load(record)
        return unit_direction(loaded.model, record, ref).vector

    def _load(self, record: NeuronRecord) -> tuple[Any, Any, Any, dict[str, Any], dict[str, Any]]:
        """(subject ref, loaded model, run manifest, the record's unit entry, recording
        config) of a record: the model in the dtype the run was recorded in."""
        ref = self.resolver.ref(record)
        _refuse_unknown_name(ref, record)
        manifest, entry, cfg = self._run_info(record)
        dtype = self.dtype or (manifest.subject.get("dtype") if manifest else None)
        loaded = self._loader(dtype or cfg.get("dtype") or RECORD_DTYPE).load(ref)
        return ref, loaded, manifest, entry, cfg

    # ------------------------------------------------------------------ finding the unit

    def _locate(self, record: NeuronRecord) -> _Unit:
        """The loaded model, hook point and index of the record's unit (no forward pass)."""
        import torch

        from neuroscribe.datasets.units import UnitSource, build_sources, get_module

        if record.index is None:
            raise DataError(f"unit {record.unit_id} has no index")
        ref, loaded, manifest, entry, cfg = self._load(record)
        model = loaded.model
        kind, layer = _unit_kind(record)
        extra = record.model_extra or {}
        module = extra.get("module") or entry.get("module")
        hook = extra.get("hook") or entry.get("hook")

        sae = None
        if kind == "sae":
            if not ref.sae:
                raise ConfigError(
                    f"unit {record.unit_id} is an SAE latent: give the SAE (sae=PATH) or the "
                    "run directory whose manifest names it (run_dir=RUN)"
                )
            sae = self._sae(ref, loaded.device)
            if not 0 <= record.index < sae.d_sae:
                raise DataError(f"unit {record.unit_id}: latent {record.index} of {sae.d_sae}")

        if module and hook:
            # Exactly what the recorder hooked (it writes its source's module and hook).
            if get_module(model, module) is None:
                raise ConfigError(
                    f"unit {record.unit_id} was recorded at {module}, which the subject model "
                    f"{ref.spec} does not have"
                )
            label = "" if record.layer is None else record.layer
            source = UnitSource(label, layer, module, hook, kind or "module", "")
            source.sae = sae
        elif kind == "mlp" and layer is not None:
            (source,) = build_sources(model, unit_type="mlp", layers=[layer])
        elif kind == "sae" and sae is not None:
            (source,) = build_sources(
                model,
                unit_type="sae",
                layers=None if layer is None else [layer],
                sae=sae,
                sae_hook=cfg.get("sae_hook"),
            )
            source.sae = sae
        else:
            raise DataError(
                f"unit {record.unit_id} does not say where it was recorded (no module and "
                "hook in the record or the run manifest, and it is no MLP neuron of a layer)"
            )
        # An SAE's latents are many (often 10^5) and its index is checked: keep only the
        # unit. Other hook points give all their units back, and the column is picked after
        # a width check (their width is only known from the forward pass).
        source.indices = None
        column = int(record.index)
        if sae is not None:
            source.indices = torch.tensor([column], dtype=torch.long, device=loaded.device)
            column = 0
        n_prefix = None
        if manifest is not None:
            n_prefix = ((manifest.stages or {}).get("record") or {}).get("excluded_prefix_tokens")
        return _Unit(record.unit_id, loaded, source, int(record.index), column, sae, n_prefix)

    def _run_info(self, record: NeuronRecord) -> tuple[Any, dict[str, Any], dict[str, Any]]:
        """(manifest, the record's unit entry, the recording config) of `run_dir`, when the
        run's subject is the record's (SubjectResolver's rule); else (None, {}, {})."""
        from neuroscribe.rundir import split_unit_id

        if self.run_dir is None:
            return None, {}, {}
        manifest = self._manifest()
        name = record.model or split_unit_id(record.unit_id)[0]
        if manifest is None or manifest.subject.get("model") not in (None, name):
            return None, {}, {}
        rec = (manifest.stages or {}).get("record") or {}
        return manifest, _unit_entry(manifest, record), rec.get("config") or {}

    def _manifest(self) -> Any:
        """`run_dir`'s manifest (None without one), re-read when the file changed."""
        from neuroscribe.rundir import RunDir

        assert self.run_dir is not None
        try:
            st = RunDir(self.run_dir).manifest_path.stat()
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        with self._lock:
            seen, manifest = self._manifest_seen
            if stamp is None or stamp != seen:
                manifest = _manifest(self.run_dir)
                self._manifest_seen = (stamp, manifest)
            return manifest

    def _loader(self, dtype: str) -> SubjectResolver:
        """A resolver that loads in `dtype` (SubjectResolver fixes its dtype when built)."""
        with self._lock:
            if dtype not in self._loaders:
                r = self.resolver
                self._loaders[dtype] = SubjectResolver(
                    CALLER, subject=r.subject, run_dir=r.run_dir, sae=r.sae, sae_k=r.sae_k,
                    device=self.device, dtype=dtype, store=self.store,
                )  # fmt: skip
            return self._loaders[dtype]

    def _sae(self, ref: SubjectRef, device: str) -> Any:
        """The shared SAE as the recorder uses it: float32 on the model's device (a copy,
        so the process's shared CPU SAE is left as it is)."""
        import torch

        assert ref.sae is not None
        key = (ref.sae, ref.sae_k, str(device))
        with self._lock:
            if key not in self._saes:
                self._saes[key] = shared_sae(ref.sae, ref.sae_k).to(device, torch.float32)
            return self._saes[key]

    # ------------------------------------------------------------------ the forward passes

    def _run(self, unit: _Unit, texts: list[str]) -> list[ActivationRecord]:
        """Tokenise, run and read the unit; call it holding `unit.loaded.lock` (the
        tokenizer is shared too, and fast tokenizers refuse concurrent use)."""
        import numpy as np
        import torch

        from neuroscribe.datasets.record import _pad_id, _prefix_for
        from neuroscribe.datasets.units import Capture, Subject
        from neuroscribe.datasets.windows import TokenStrings, batched, make_batch

        loaded = unit.loaded
        tok = loaded.tokenizer
        device = torch.device(loaded.device)
        subject = Subject(loaded.model, tok, "", loaded.path, None, device)
        prefix = _prefix_for(subject, unit.sae)
        if unit.n_prefix is not None and unit.n_prefix != len(prefix):
            raise ConfigError(
                f"unit {unit.unit_id}: the recording put {unit.n_prefix} special token(s) "
                f"before each excerpt, but this tokenizer (and SAE) give {len(prefix)}; "
                "the activations would not be comparable"
            )
        limit = self.max_tokens
        if loaded.max_context is not None:
            limit = max(1, min(limit, loaded.max_context - len(prefix)))
        # As the recorder tokenises a document: no special tokens (the prefix is its own).
        encoded = tok(texts, add_special_tokens=False, verbose=False)["input_ids"]
        windows = [list(ids[:limit]) for ids in encoded]
        for i, w in enumerate(windows):
            if not w:
                raise DataError(f"unit {unit.unit_id}: text {i} has no tokens to probe")
        strings = loaded.remember("token_strings", lambda: TokenStrings(tok))

        out: list[ActivationRecord] = []
        with Capture(loaded.model, [unit.source], skip_prefix=len(prefix)) as capture:
            for batch in batched(windows, self.batch_size):
                length = max(len(w) for w in batch)
                ids, mask, _ = make_batch(batch, prefix, length, _pad_id(tok))
                (acts,) = capture.run(ids.to(device), mask.to(device))  # [B, P + L, width]
                width = acts.shape[-1]
                if unit.column >= width:
                    raise DataError(
                        f"unit {unit.unit_id}: index {unit.index} of {width} units at "
                        f"{unit.source.module_path} ({unit.source.hook})"
                    )
                column = acts[:, len(prefix) :, unit.column].cpu().numpy().astype(np.float64)
                for b, w in enumerate(batch):
                    values = column[b, : len(w)]
                    i = len(out)
                    bad = [
                        j
                        for j, v in enumerate(values.tolist())
                        if not math.isfinite(v) or abs(v) > MAX_ABS_ACTIVATION
                    ]
                    if bad:
                        # Never written as zeros: a broken model (or dtype overflow) must show.
                        raise DataError(
                            f"unit {unit.unit_id}: activation {values[bad[0]]!r} at token "
                            f"{bad[0]} of text {i} is not a finite number"
                        )
                    out.append(ActivationRecord(tokens=strings(w), activations=values.tolist()))
        return out


# ---------------------------------------------------------------------- helpers


def _check_texts(record: NeuronRecord, texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):  # one string would be probed character by character
        raise DataError(f"unit {record.unit_id}: give a list of texts, not one string")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise DataError(f"unit {record.unit_id}: text {i} is a {type(t).__name__}, not text")
        if not t:
            raise DataError(f"unit {record.unit_id}: text {i} is empty; there is nothing to probe")
    return out


def _refuse_unknown_name(ref: SubjectRef, record: NeuronRecord) -> None:
    """A subject taken from the record's model name alone must be a local model.

    SubjectResolver reads a bare record name as a hub id; an API model's name
    (`gpt-4o-mini`) reads the same way and would end in a download attempt. Without a
    `subject` option or a run manifest, accept only the embedded model, a folder, a GGUF
    file, or a hub id already in the local Hugging Face cache.
    """
    if ref.found != "record" or ref.spec == EMBEDDED_SPEC:
        return
    target = ref.spec[len(LOCAL_PREFIX) :]
    path = Path(target).expanduser()
    if path.is_dir() or (path.suffix.lower() == ".gguf" and path.exists()):
        return
    if _in_hub_cache(target):
        return
    raise ConfigError(
        f"unit {record.unit_id}: its subject model {target!r} is not a local model (not the "
        "embedded model, a model folder, or a hub model in the local cache); an API model "
        "cannot be probed. Give subject=hf:<hub id or folder>, or run_dir=RUN"
    )


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # not a valid repo id (e.g. "openai:gpt-4o"), or no huggingface_hub
        return False


__all__ = ["UnitProbe"]
