"""Shared machinery of the output-side scorers (`logit-lens`, `steering`).

Input-side scorers ask whether an explanation predicts *where* a unit fires; these two
ask whether it agrees with what the unit *does* to the model's output. Both need the
unit's weights, so the subject model must be local. What lives here:

- which subject model a unit belongs to (`SubjectResolver`): the `subject` option
  (`hf:<hub id or folder>`, `hf:embedded`, or a folder), else the run manifest's subject
  (`run_dir`, or the run directory this process holds locked while it scores), else the
  record's model name (the embedded model's name, a folder, or a hub id). A model
  named without `hf:` is an API model: refused with a ConfigError;
- the unit's output direction (`UnitDirection`): for an MLP neuron the column of the
  MLP's down/output projection it feeds (a row of GPT-2's Conv1D `c_proj`), for an SAE
  latent its decoder row (SAE files from the `sae` option or the run manifest); both
  are what one unit of activation writes into the residual stream;
- the logit lens of a direction (`lens_logits`): through the final norm (its
  elementwise scale, and centring for LayerNorm: `norm(v) - norm(0)`, which drops the
  bias every unit would share) and the unembedding;
- the judge's answers (`parse_rating`, `parse_ab`) and the control explanation
  (`control_explanation`).

Loaded subject models come from the process's local model store
(`neuroscribe.llm.local`), shared with a local judge of the same spec, and all torch work
on them runs under the model's lock (`run_on_model`), so hooks never meet a judge's
forward pass.
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, DataError, OutputError
from neuroscribe.llm.base import EMBEDDED_SPEC, LOCAL_PREFIX, clip_raw
from neuroscribe.schema import NeuronRecord, Usage
from neuroscribe.scorer.base import ScorerParts

# Where the final norm before the unembedding lives, by family.
FINAL_NORMS = (
    "model.norm",
    "transformer.ln_f",
    "gpt_neox.final_layer_norm",
    "model.decoder.final_layer_norm",
    "model.final_layernorm",
    "transformer.norm",
)

# ---------------------------------------------------------------- the subject model


def local_subject_spec(spec: str, scorer: str) -> str:
    """`hf:...` for a local spec or an existing model folder; an API model is refused."""
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError(f"the {scorer} scorer got an empty subject model spec")
    if spec.startswith(LOCAL_PREFIX):
        return spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return LOCAL_PREFIX + str(path.resolve())
    raise ConfigError(
        f"the {scorer} scorer reads the subject model's weights, so the subject must be a "
        f"local model (hf:<hub id or folder>, hf:embedded, or a model folder), not the API "
        f"model {spec!r}"
    )


@dataclass(frozen=True)
class SubjectRef:
    """Where a unit's weights are: the subject model and, for SAE latents, the SAE."""

    spec: str  # hf:<folder or hub id>
    found: str  # how: "option", "manifest", "record"
    sae: str | None = None
    sae_k: int | None = None
    # Transcoders write elsewhere than they read: (module, "input"/"output") from the manifest.
    sae_writes: tuple[str, str] | None = None


def _manifest(run_dir: str | Path) -> Any:
    from neuroscribe.rundir import RunDir

    return RunDir(run_dir).manifest()


def _unit_entry(manifest: Any, record: NeuronRecord) -> dict[str, Any]:
    rec = (manifest.stages or {}).get("record") or {}
    for entry in rec.get("units") or []:
        if str(entry.get("layer")) == str(record.layer):
            return entry
    return {}


def _spec_from_source(source: str | None, name: str | None) -> str | None:
    """The local spec of a manifest's subject (`source`: a folder or a hub id)."""
    from neuroscribe.embedded import EMBEDDED_NAME

    if source and Path(source).expanduser().is_dir():
        return LOCAL_PREFIX + str(Path(source).expanduser().resolve())
    if name == EMBEDDED_NAME:
        return EMBEDDED_SPEC
    if source and not source.startswith(("/", "~", ".")):
        return LOCAL_PREFIX + source  # a hub id
    if source:
        raise ConfigError(
            f"the run's subject model folder {source} is gone; give the subject option "
            "(hf:<folder or hub id>)"
        )
    return None


class SubjectResolver:
    """Finds, loads (once per process, in the local model store) and describes units."""

    def __init__(
        self,
        scorer: str,
        *,
        subject: str | None = None,
        run_dir: str | Path | None = None,
        sae: str | None = None,
        sae_k: int | None = None,
        device: str | None = None,
        dtype: str | None = None,
        store: Any = None,
    ) -> None:
        self.scorer = scorer
        self.subject = local_subject_spec(subject, scorer) if subject else None
        self.run_dir = str(run_dir) if run_dir is not None else None
        self.sae = sae
        self.sae_k = sae_k
        self.device = device
        self.dtype = dtype
        self.store = store
        self._lock = threading.Lock()
        self._directions: dict[str, UnitDirection] = {}

    def ref(self, record: NeuronRecord) -> SubjectRef:
        """Which model (and SAE) the record's unit lives in."""
        from neuroscribe.rundir import split_unit_id

        name = record.model or split_unit_id(record.unit_id)[0]
        # The run being scored (`run_dir`, given by the score stage's caller); without it
        # the record's own model name is all there is to go on.
        manifest = _manifest(self.run_dir) if self.run_dir is not None else None
        if manifest is not None and manifest.subject.get("model") not in (None, name):
            manifest = None  # a record from another subject model than the run's
        entry = _unit_entry(manifest, record) if manifest is not None else {}
        cfg = ((manifest.stages or {}).get("record") or {}).get("config") or {} if manifest else {}
        sae = self.sae or entry.get("sae") or cfg.get("sae")
        sae_k = self.sae_k if self.sae_k is not None else cfg.get("sae_k")
        writes = entry.get("sae_reconstructs") if entry.get("transcoder") else None
        sae_writes = (writes["module"], writes["hook"]) if writes else None
        kw: dict[str, Any] = {"sae": sae, "sae_k": sae_k, "sae_writes": sae_writes}
        if self.subject is not None:
            return SubjectRef(self.subject, "option", **kw)
        if manifest is not None and manifest.subject:
            spec = _spec_from_source(manifest.subject.get("source"), manifest.subject.get("model"))
            if spec is not None:
                return SubjectRef(spec, "manifest", **kw)
        if not name or name == "unknown":
            raise ConfigError(
                f"unit {record.unit_id} does not name its subject model: give the {self.scorer} "
                "scorer subject=hf:<folder or hub id> (or run_dir=RUN)"
            )
        spec = _spec_from_source(name, name) or LOCAL_PREFIX + name
        return SubjectRef(spec, "record", **kw)

    def load(self, ref: SubjectRef) -> Any:
        """The subject model (`neuroscribe.llm.local.LocalModel`), loaded once per process."""
        from neuroscribe.llm.local import load_local_model

        try:
            return load_local_model(
                ref.spec, device=self.device, dtype=self.dtype, store=self.store
            )
        except ConfigError as e:
            hint = (
                ""
                if ref.found == "option"
                else f" (taken from the {ref.found}; give the subject option to override)"
            )
            raise ConfigError(
                f"{self.scorer}: cannot load subject model {ref.spec}{hint}: {e}"
            ) from e

    def direction(self, loaded: Any, record: NeuronRecord, ref: SubjectRef) -> UnitDirection:
        key = f"{loaded.path}|{record.unit_id}|{ref.sae}"
        with self._lock:
            if key not in self._directions:
                self._directions[key] = unit_direction(loaded.model, record, ref)
            return self._directions[key]


# ---------------------------------------------------------------- a unit's direction


@dataclass(frozen=True)
class UnitDirection:
    """What one unit of activation writes into the residual stream, and where."""

    unit_id: str
    kind: str  # "mlp" | "sae"
    layer: int | None
    index: int
    vector: Any  # torch.Tensor [d_model], float32, CPU
    module: str  # the module whose input/output receives the write (hooked to steer)
    hook: str  # "output" | "input"
    max_activation: float | None  # the unit's largest recorded activation

    @property
    def write_norm(self) -> float | None:
        """|vector| × max activation: how far the unit moves the residual stream at its peak."""
        if self.max_activation is None or self.max_activation <= 0:
            return None
        return float(self.vector.norm()) * self.max_activation

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "layer": self.layer,
            "index": self.index,
            "module": self.module,
            "hook": self.hook,
            "direction_norm": round(float(self.vector.norm()), 6),
            "max_activation": self.max_activation,
        }


def _max_activation(record: NeuronRecord) -> float | None:
    if record.max_activation is not None:
        return float(record.max_activation)
    acts = [a for r in record.most_positive_activation_records for a in r.activations]
    return float(max(acts)) if acts else None


def _unit_kind(record: NeuronRecord) -> tuple[str | None, int | None]:
    extra = record.model_extra or {}
    kind, layer = extra.get("unit_type"), extra.get("layer_index")
    label = record.layer
    if kind is None:
        if isinstance(label, int) or (isinstance(label, str) and label.isdigit()):
            kind = "mlp"
        elif isinstance(label, str) and ":sae:" in label:
            kind = "sae"
    if layer is None and (isinstance(label, int) or (isinstance(label, str) and label.isdigit())):
        layer = int(label)
    if layer is None and isinstance(label, str) and label.split(":", 1)[0].isdigit():
        layer = int(label.split(":", 1)[0])
    return kind, layer


_SAES: dict[tuple[str, int | None], Any] = {}
_SAES_LOCK = threading.Lock()


def shared_sae(path: str, k: int | None) -> Any:
    """One loaded SAE per (path, k) in this process."""
    from neuroscribe.datasets.sae import load_sae

    key = (str(Path(path).expanduser()), k)
    with _SAES_LOCK:
        if key not in _SAES:
            _SAES[key] = load_sae(path, k=k)
        return _SAES[key]


def unembedding(model: Any) -> Any:
    head = model.get_output_embeddings()
    if head is None or getattr(head, "weight", None) is None:
        raise ConfigError(f"{type(model).__name__} has no unembedding (output embeddings)")
    return head.weight  # [vocab, d_model]


def unit_direction(model: Any, record: NeuronRecord, ref: SubjectRef) -> UnitDirection:
    """The unit's output direction in the residual stream (float32, CPU)."""
    import torch

    from neuroscribe.datasets.units import find_layers, get_module, mlp_neuron_path

    kind, layer = _unit_kind(record)
    index = record.index
    if index is None:
        raise DataError(f"unit {record.unit_id} has no index")
    extra = record.model_extra or {}
    d_model = unembedding(model).shape[1]
    with torch.no_grad():
        if kind == "mlp":
            if layer is None:
                raise DataError(f"MLP unit {record.unit_id} does not say its layer")
            path = extra.get("module") or mlp_neuron_path(model, layer)
            mod = get_module(model, path)
            weight = getattr(mod, "weight", None)
            if mod is None or weight is None:
                raise ConfigError(f"unit {record.unit_id}: no output projection at {path}")
            if type(mod).__name__ == "Conv1D":  # GPT-2: weight [d_ff, d_model]
                width, vector = weight.shape[0], lambda: weight[index]
            else:  # nn.Linear: weight [d_model, d_ff]
                width, vector = weight.shape[1], lambda: weight[:, index]
            if not 0 <= index < width:
                raise DataError(f"unit {record.unit_id}: neuron {index} of {width} at {path}")
            vec = vector().detach().float().cpu().clone()
            where = (path, "output")
        elif kind == "sae":
            if not ref.sae:
                raise ConfigError(
                    f"unit {record.unit_id} is an SAE latent: give the SAE (sae=PATH) or the "
                    "run directory whose manifest names it (run_dir=RUN)"
                )
            sae = shared_sae(ref.sae, ref.sae_k)
            if sae.W_dec is None:
                raise ConfigError(f"SAE {ref.sae} has no decoder weights (W_dec)")
            if not 0 <= index < sae.d_sae:
                raise DataError(f"unit {record.unit_id}: latent {index} of {sae.d_sae}")
            vec = sae.W_dec[index].detach().float().cpu().clone()
            if sae.rescale_by_decoder_norm:
                vec = vec / vec.norm().clamp(min=1e-12)
            if sae.decoder_scale is not None:
                vec = vec * float(sae.decoder_scale[index])
            if (
                not sae.transcoder
                and sae.normalize == "expected_average_only_in"
                and sae.norm_scale
            ):
                vec = vec / sae.norm_scale
            if sae.transcoder:
                if ref.sae_writes is not None:
                    where = ref.sae_writes
                elif layer is not None:
                    base, _ = find_layers(model)
                    where = (f"{base}.{layer}", "output")
                else:
                    raise ConfigError(f"transcoder {ref.sae}: where it writes is not known")
            else:
                module = extra.get("module")
                if not module:
                    raise DataError(f"SAE unit {record.unit_id} does not say where it reads")
                where = (module, extra.get("hook") or "output")
        else:
            raise ConfigError(
                f"unit {record.unit_id} ({kind or 'unknown type'}): output-side scorers take "
                "MLP neurons and SAE latents, whose output direction is known"
            )
    if vec.shape[-1] != d_model:
        raise ConfigError(
            f"unit {record.unit_id}: its output direction is {vec.shape[-1]}-wide, but the "
            f"residual stream is {d_model}-wide (an SAE on an MLP's hidden layer or an "
            "attention head writes elsewhere)"
        )
    if get_module(model, where[0]) is None:
        raise ConfigError(f"unit {record.unit_id}: no module {where[0]} in the subject model")
    return UnitDirection(
        record.unit_id, kind, layer, index, vec, where[0], where[1], _max_activation(record)
    )


# ---------------------------------------------------------------- the logit lens


def final_norm(model: Any) -> tuple[str | None, Any]:
    from neuroscribe.datasets.units import get_module

    for path in FINAL_NORMS:
        mod = get_module(model, path)
        if mod is not None:
            return path, mod
    return None, None


def lens_logits(model: Any, vector: Any, *, use_norm: bool = True) -> Any:
    """W_U · norm'(v): the logits a direction adds (float32 [vocab], on the model's device).

    `norm'(v) = norm(v) - norm(0)`: the final norm's elementwise scale (and LayerNorm's
    centring) without the bias that every direction would share.
    """
    import torch

    w_u = unembedding(model)
    v = vector.to(device=w_u.device, dtype=w_u.dtype)
    with torch.no_grad():
        if use_norm:
            _, norm = final_norm(model)
            if norm is not None:
                y = norm(torch.stack([v, torch.zeros_like(v)])[None])[0]
                v = y[0] - y[1]
        return (w_u @ v).float()


@dataclass(frozen=True)
class Lens:
    promoted: list[tuple[int, str, float]]  # (token id, text, logit), strongest first
    suppressed: list[tuple[int, str, float]]  # most negative first


def top_tokens(model: Any, tokenizer: Any, vector: Any, k: int, *, use_norm: bool) -> Lens:
    """The `k` tokens a direction promotes most and the `k` it suppresses most."""
    import torch

    logits = lens_logits(model, vector, use_norm=use_norm)
    n = min(len(tokenizer), logits.shape[0])  # padded vocab rows are no tokens
    logits = logits[:n]
    k = min(k, n)
    up = torch.topk(logits, k)
    down = torch.topk(-logits, k)

    def rows(ids: Any, values: Any, sign: float) -> list[tuple[int, str, float]]:
        return [
            (int(i), tokenizer.decode([int(i)]), round(sign * float(v), 6))
            for i, v in zip(ids.tolist(), values.tolist(), strict=True)
        ]

    return Lens(rows(up.indices, up.values, 1.0), rows(down.indices, down.values, -1.0))


# ---------------------------------------------------------------- judge answers

_WRAP = r"[\s*_\"'`()\[\]]*"
_RATING = re.compile(
    rf"^{_WRAP}(?:(?:score|rating|answer|agreement)\s*[:=]?\s*)?{_WRAP}"
    rf"(-?\d+(?:\.\d+)?)\s*(?:/\s*10|out of 10)?{_WRAP}\.?{_WRAP}$",
    re.I,
)
_AB = re.compile(
    rf"^{_WRAP}(?:answer\s*[:=]?\s*)?{_WRAP}(?:continuation\s+|option\s+|text\s+)?{_WRAP}"
    rf"([AB]){_WRAP}[.:]?{_WRAP}$",
    re.I,
)


def _ends(text: str) -> list[str]:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[:1] + lines[-1:] if len(lines) > 1 else lines


def parse_rating(text: str, hi: float = 10.0) -> float:
    """A 0–`hi` rating given alone on the answer's first or last line ("7", "7/10",
    "Rating: 7"); anything else is an OutputError (never read as a number)."""
    for line in _ends(text):
        m = _RATING.match(line)
        if m:
            value = float(m.group(1))
            if not 0 <= value <= hi:
                raise OutputError(f"the rating {value:g} is outside 0-{hi:g}", raw=clip_raw(text))
            return value
    raise OutputError(f"the answer is not a rating from 0 to {hi:g}", raw=clip_raw(text))


def parse_ab(text: str) -> str:
    """ "A" or "B" given alone on the answer's first or last line; else an OutputError."""
    for line in _ends(text):
        m = _AB.match(line)
        if m:
            return m.group(1).upper()
    raise OutputError("the answer is not A or B", raw=clip_raw(text))


# ---------------------------------------------------------------- the control explanation


def seeded_rng(*parts: object) -> random.Random:
    seed = hashlib.sha256("|".join(map(str, parts)).encode()).digest()
    return random.Random(int.from_bytes(seed[:8], "big"))


def default_controls() -> tuple[str, ...]:
    """Plausible explanations about no unit in particular (the random baseline's list)."""
    from neuroscribe.explainer.baselines import RANDOM_PHRASES

    return RANDOM_PHRASES


def control_explanation(unit_id: str, explanation: str, pool: Sequence[str], salt: str) -> str:
    """The control for a unit: the first text of a per-unit shuffle of `pool` that differs
    from the explanation (every explanation of a unit gets the same one where it can)."""
    order = [t for t in pool if t.strip()]
    seeded_rng(salt, unit_id).shuffle(order)
    own = " ".join(explanation.lower().split())
    for text in order:
        if " ".join(text.lower().split()) != own:
            return text
    raise ConfigError("no control explanation differs from the explanation being scored")


def controls_hash(pool: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(pool).encode()).hexdigest()[:12]


__all__ = [
    "FINAL_NORMS",
    "Lens",
    "SubjectRef",
    "SubjectResolver",
    "UnitDirection",
    "control_explanation",
    "controls_hash",
    "default_controls",
    "final_norm",
    "lens_logits",
    "local_subject_spec",
    "parse_ab",
    "parse_rating",
    "seeded_rng",
    "shared_sae",
    "top_tokens",
    "unembedding",
    "unit_direction",
]


class JudgedOutputScorer(ScorerParts):
    """What the output-side scorers share: a judge model, control explanations, retries,
    and the resolver that finds the unit's weights in its subject model."""

    name: str

    def _init_judged(
        self,
        llm: Any | None,
        spec: str,
        *,
        controls: Sequence[str] | None,
        max_attempts: int,
        subject: str | None,
        run_dir: str | None,
        sae: str | None,
        sae_k: int | None,
        device: str | None,
        dtype: str | None,
        store: Any,
    ) -> None:
        if max_attempts < 1:
            raise ConfigError(f"max_attempts must be at least 1, not {max_attempts}")
        self.llm = llm
        self.model = spec
        self.controls = tuple(controls) if controls else default_controls()
        self.max_attempts = max_attempts
        self.resolver = SubjectResolver(
            self.name,
            subject=subject,
            run_dir=run_dir,
            sae=sae,
            sae_k=sae_k,
            device=device,
            dtype=dtype,
            store=store,
        )
        self._counter: Any = None

    @classmethod
    async def build(cls, llm: Any, **options: Any) -> Any:
        """The live scorer: `llm` is the judge."""
        return cls(llm, spec=llm.spec, **cls._own(options))

    def config(self) -> dict[str, Any]:
        """What changes the numbers: what must match to compare (`comparable`), plus where
        the weights come from and which control explanations the judge rates."""
        return {
            **self.comparable(),
            "subject": self.resolver.subject,
            "sae": self.resolver.sae,
            "controls": controls_hash(self.controls),
        }

    def comparable(self) -> dict[str, Any]:
        raise NotImplementedError

    def _settle(self, results: Sequence[Any]) -> Usage:
        """The judge calls' total usage (failed attempts included); the first unusable
        answer is raised with that total (so the failure line counts every token spent),
        any other error as it came. `results`: `asyncio.gather(..., return_exceptions=True)`
        of calls returning `(value, usage, raw)`."""
        usage = Usage()
        for r in results:
            if isinstance(r, OutputError) and r.usage is not None:
                usage = usage.add(r.usage)
            elif not isinstance(r, BaseException):
                usage = usage.add(r[1])
        for r in results:
            if isinstance(r, OutputError):
                raise OutputError(f"{self.name} judge: {r}", raw=r.raw, usage=usage) from r
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return usage
