"""Subject models and the units recorded inside them.

A *unit source* is one hook point (a module's input or output) plus the unit indices
kept from it; it yields activations [batch, tokens, units]:

- `mlp`: MLP neurons = the input of the MLP's output projection (after the
  non-linearity / gating), found by family;
- `module`: any module by path, input or output, one unit per dimension;
- `sae`: the latents of a sparse autoencoder or transcoder applied to a hooked
  activation; where it reads comes from its files (`SAE.info.hook_name`, mapped to a
  module by `neuroscribe.datasets.hooks`) or from --layers / --module.

Hooks copy out what they need and, once every source has fired, stop the forward pass:
layers after the last recorded one (and the LM head) are never computed.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from neuroscribe.datasets.hooks import HookPoint, default_output_hook, resolve_hook
from neuroscribe.datasets.sae import SAE, ReconStats
from neuroscribe.errors import ConfigError

log = logging.getLogger(__name__)

# Where the list of transformer blocks lives, by family.
LAYER_LISTS = (
    "model.layers",
    "transformer.h",
    "gpt_neox.layers",
    "model.decoder.layers",
    "transformer.layers",
)
# The MLP output projection inside a block; its input is the neuron activation.
MLP_OUT_PROJ = ("mlp.down_proj", "mlp.c_proj", "mlp.dense_4h_to_h", "mlp.fc_out", "mlp.fc2", "fc2")
SUPPORTED_FAMILIES = (
    "GPT-2 (mlp.c_proj), GPT-NeoX/Pythia (mlp.dense_4h_to_h), "
    "Llama/SmolLM/Mistral/Qwen2/Qwen3/Gemma/Phi-3 (mlp.down_proj), GPT-J (mlp.fc_out), OPT (fc2)"
)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class Subject:
    """A loaded subject model with its tokenizer and how it was named."""

    model: Any
    tokenizer: Any
    name: str  # goes into unit ids
    source: str  # what was loaded: a folder or a Hub id
    revision: str | None
    device: torch.device


def resolve_model_spec(spec: str | None) -> tuple[str, str, bool]:
    """(what to load, display name, is_embedded) for `None`, `hf:embedded`, `hf:ID`, a folder or an id."""
    if spec is not None and spec.startswith("hf:"):
        spec = spec[3:]
    if spec in (None, "", "embedded"):
        from neuroscribe.embedded import EMBEDDED_NAME, embedded_model_dir

        return str(embedded_model_dir()), EMBEDDED_NAME, True
    path = Path(spec).expanduser()
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(f"model folder {path} has no config.json")
        return str(path), path.resolve().name, False
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ConfigError(f"model folder {path} not found")
    return spec, spec, False


def pick_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_subject(
    spec: str | None,
    *,
    device: str | None = None,
    dtype: str = "float32",
    revision: str | None = None,
) -> Subject:
    """Load a causal LM and its tokenizer; a ConfigError says why one cannot be loaded."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    source, name, _ = resolve_model_spec(spec)
    dev = pick_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=DTYPES[dtype])
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load model {spec!r}: not a local model folder, and the Hub copy could "
            f"not be loaded ({str(e).splitlines()[0]})"
        ) from None
    model.to(dev).eval()
    rev = revision or getattr(model.config, "_commit_hash", None)
    return Subject(model, tokenizer, name, source, rev, dev)


def get_module(root: torch.nn.Module, path: str) -> torch.nn.Module | None:
    """The submodule at a dotted path (list indices as numbers), or None."""
    mod: Any = root
    for part in path.split("."):
        if part.isdigit() and isinstance(mod, (torch.nn.ModuleList, torch.nn.Sequential)):
            idx = int(part)
            if idx >= len(mod):
                return None
            mod = mod[idx]
        else:
            mod = getattr(mod, part, None)
            if not isinstance(mod, torch.nn.Module):
                return None
    return mod


def find_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The path and list of transformer blocks."""
    for path in LAYER_LISTS:
        mod = get_module(model, path)
        if isinstance(mod, torch.nn.ModuleList) and len(mod) > 0:
            return path, mod
    raise ConfigError(
        f"cannot find the transformer blocks of {type(model).__name__}; supported families: "
        f"{SUPPORTED_FAMILIES}. For other models name a module by path: "
        "--unit-type module --module 'path.to.{layer}.module'"
    )


def mlp_neuron_path(model: torch.nn.Module, layer: int) -> str:
    """The module whose input holds the MLP neurons of a layer."""
    base, layers = find_layers(model)
    for rel in MLP_OUT_PROJ:
        if get_module(layers[layer], rel) is not None:
            return f"{base}.{layer}.{rel}"
    raise ConfigError(
        f"cannot find the MLP output projection in layer {layer} of {type(model).__name__} "
        f"(model_type {getattr(model.config, 'model_type', '?')}); supported families: "
        f"{SUPPORTED_FAMILIES}. Name the module yourself: --unit-type module "
        "--module 'mlp.<proj>' --hook input"
    )


def parse_index_spec(
    spec: str | None, n: int | None = None, what: str = "index"
) -> list[int] | None:
    """'0,5,11' / '0-3,8' / 'all' -> sorted indices (None for 'all'); checks the range when n is known."""
    if spec is None or spec.strip().lower() in ("", "all"):
        return None
    out: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = part.split("-", 1)
                a, b = int(lo), int(hi)
                if b < a:
                    raise ValueError
                out.update(range(a, b + 1))
            else:
                out.add(int(part))
        except ValueError:
            raise ConfigError(f"bad {what} list {spec!r}: use e.g. '0,5,11' or '0-31'") from None
    if n is not None:
        bad = [i for i in sorted(out) if not 0 <= i < n]
        if bad:
            raise ConfigError(f"{what} {bad[0]} out of range: there are {n} (0-{n - 1})")
    return sorted(out)


@dataclass
class UnitSource:
    """One hook point and the units kept from it."""

    label: str | int  # the record's `layer` field
    layer_index: int | None
    module_path: str
    hook: str  # "input" | "output"
    unit_type: str
    file_stem: str  # records/<file_stem>.jsonl
    sae: SAE | None = None
    indices: torch.Tensor | None = None  # None until the width is known
    width: int | None = None  # units before selection
    hook_name: str | None = None  # the SAE's own name for the hook point, as given
    # Transcoders: the activation they reconstruct (read only for the reconstruction check).
    target_path: str | None = None
    target_hook: str = "output"
    target_name: str | None = None

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """Hooked tensor [B, T, d] -> recorded activations [B, T, U] (float32)."""
        if self.sae is not None:
            x = self.sae.encode(x)
        return self.select(x)

    def select(self, x: torch.Tensor) -> torch.Tensor:
        """Activations of all units [B, T, width] -> the kept ones [B, T, U] (float32)."""
        if self.indices is not None and self.indices.numel() != x.shape[-1]:
            x = x.index_select(-1, self.indices)
        return x.float()


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "-" for c in text).strip("-")


def build_sources(
    model: torch.nn.Module,
    *,
    unit_type: str,
    layers: list[int] | str | None,
    module: str | None = None,
    hook: str = "output",
    sae: SAE | None = None,
    sae_hook: str | None = None,
    hook_given: bool = False,
) -> list[UnitSource]:
    """The unit sources for a recording; ConfigError for a bad layer or module.

    `layers`: indices, "all", or None for the default (first, middle and last layer).
    An SAE whose files name its hook (or `sae_hook`, which overrides them) reads there;
    `layers`, `module` and an explicit `hook` (`hook_given`) must then agree with it.
    """
    if isinstance(layers, str):
        if layers.strip().lower() != "all":
            raise ConfigError(f"bad layers {layers!r}: give indices or 'all'")
        layers = list(range(len(find_layers(model)[1])))
    if unit_type not in ("mlp", "module", "sae"):
        raise ConfigError(f"unknown unit type {unit_type!r}; use mlp, module or sae")
    if hook not in ("input", "output"):
        raise ConfigError(f"hook must be 'input' or 'output', not {hook!r}")
    if unit_type == "mlp":
        if module:
            raise ConfigError("--module is for --unit-type module or sae")
        _, blocks = find_layers(model)
        chosen = default_layers(len(blocks)) if layers is None else layers
        _check_layers(chosen, len(blocks))
        return [
            UnitSource(i, i, mlp_neuron_path(model, i), "input", "mlp", f"layer-{i:02d}")
            for i in chosen
        ]
    if unit_type == "sae":
        if sae is None:
            raise ConfigError("--unit-type sae needs --sae (an SAE file or folder)")
        name = sae_hook or sae.info.hook_name
        if name is not None:
            return [
                _sae_source(
                    model, sae, name, layers, module, hook if hook_given else None, sae_hook
                )
            ]
        if layers is not None and len(layers) != 1 and (module is None or "{layer}" in module):
            raise ConfigError("an SAE reads one hook point: give exactly one --layers value")
    elif not module:
        raise ConfigError(
            "--unit-type module needs --module PATH (e.g. 'self_attn.o_proj' or 'model.norm')"
        )

    points = _module_points(model, module, layers, unit_type)
    sources = []
    for layer_index, path in points:
        where = path if layer_index is None else f"{layer_index}"
        if unit_type == "sae":
            assert sae is not None
            label = f"{where}:sae:{sae.name}"
            stem = f"{_prefix(layer_index)}sae-{_slug(sae.name)}"
        else:
            rel = path.split(f".{layer_index}.", 1)[-1] if layer_index is not None else path
            label = f"{where}:{rel}:{hook}"
            stem = f"{_prefix(layer_index)}{_slug(rel)}-{hook}"
        sources.append(UnitSource(label, layer_index, path, hook, unit_type, stem, sae=sae))
    return sources


def _sae_source(
    model: torch.nn.Module,
    sae: SAE,
    name: str,
    layers: list[int] | None,
    module: str | None,
    hook: str | None,
    override: str | None,
) -> UnitSource:
    """The one source of an SAE that names its hook point."""
    info = sae.info
    placeholder = "{layer}" in name
    if placeholder:  # e.g. a Gemma Scope folder whose path has no layer_N
        if layers is None or len(layers) != 1:
            raise ConfigError(
                f"SAE {info.path} does not say which layer it reads "
                f"({name.format(layer='L')}): give one --layers value"
            )
        name = name.format(layer=layers[0])
    side = (hook if override else None) or info.hook_side or "output"
    point = resolve_hook(model, name, side=side)
    where = f"the SAE's hook {name!r} ({point.module_path}, {point.hook})"
    fix = "drop it, or give --sae-hook to read elsewhere"
    if layers is not None and not placeholder and layers != [point.layer]:
        raise ConfigError(
            f"--layers {','.join(map(str, layers))} conflicts with {where}, which is layer "
            f"{point.layer}; {fix}"
        )
    if module is not None and point.module_path not in _module_candidates(model, module, point):
        raise ConfigError(f"--module {module!r} conflicts with {where}; {fix}")
    if hook is not None and hook != point.hook:
        raise ConfigError(f"--hook {hook} conflicts with {where}; {fix}")

    target = None
    if sae.transcoder:
        out = info.hook_name_out if not override else default_output_hook(name, point.hook)
        if out is not None:
            out = out.format(layer=point.layer) if "{layer}" in out else out
            target = resolve_hook(model, out, side="output")
    layer = point.layer
    label = f"{layer if layer is not None else point.module_path}:sae:{sae.name}"
    return UnitSource(
        label,
        layer,
        point.module_path,
        point.hook,
        "sae",
        f"{_prefix(layer)}sae-{_slug(sae.name)}",
        sae=sae,
        hook_name=name,
        target_path=None if target is None else target.module_path,
        target_name=None if target is None else target.name,
        target_hook="output" if target is None else target.hook,
    )


def _module_candidates(model: torch.nn.Module, module: str, point: HookPoint) -> set[str]:
    """The absolute paths a --module value can mean at the SAE's layer."""
    out = {module}
    if point.layer is not None:
        out.add(module.format(layer=point.layer))
        try:
            base, _ = find_layers(model)
            out.add(f"{base}.{point.layer}.{module}")
        except ConfigError:
            pass
    return out


def _prefix(layer_index: int | None) -> str:
    return "" if layer_index is None else f"layer-{layer_index:02d}-"


def default_layers(n: int) -> list[int]:
    """First, middle and last layer."""
    return sorted({0, n // 2, n - 1})


def _check_layers(layers: list[int], n: int) -> None:
    if not layers:
        raise ConfigError("no layers selected")
    for i in layers:
        if not 0 <= i < n:
            raise ConfigError(f"layer {i} out of range: the model has {n} layers (0-{n - 1})")


def _module_points(
    model: torch.nn.Module, module: str | None, layers: list[int] | None, unit_type: str
) -> list[tuple[int | None, str]]:
    """(layer index or None, absolute module path) for each hook point."""
    if module is None:  # SAE default: the residual stream after the block
        base, blocks = find_layers(model)
        chosen = layers if layers is not None else [len(blocks) // 2]
        _check_layers(chosen, len(blocks))
        return [(i, f"{base}.{i}") for i in chosen]
    if "{layer}" in module:
        if layers is None:
            raise ConfigError(f"--module {module!r} has a {{layer}} placeholder: give --layers")
        _, blocks = find_layers(model)
        _check_layers(layers, len(blocks))
        points = [(i, module.format(layer=i)) for i in layers]
    elif get_module(model, module) is not None and layers is None:
        return [(None, module)]
    else:
        base, blocks = find_layers(model)
        chosen = layers if layers is not None else default_layers(len(blocks))
        _check_layers(chosen, len(blocks))
        points = [(i, f"{base}.{i}.{module}") for i in chosen]
    for _, path in points:
        if get_module(model, path) is None:
            raise ConfigError(
                f"no module {path!r} in {type(model).__name__}; module paths are dotted "
                "attribute names as in model.named_modules() (relative to the block when "
                "--layers is given, or with a {layer} placeholder)"
            )
    return points


class _StopForward(Exception):
    """Raised by the last hook: nothing after the recorded modules is needed."""


@dataclass
class Capture:
    """Installs hooks for all sources and runs the model far enough to fill them.

    With `recon` (one `ReconStats` or None per source), SAE sources also decode their
    latents and add the reconstruction error over the recorded tokens (not the first
    `skip_prefix` positions, not padding): against the SAE's input, or for a transcoder
    against its target module's output, which is then hooked as well.
    """

    model: torch.nn.Module
    sources: list[UnitSource]
    stop_early: bool = True
    recon: list[ReconStats | None] | None = None
    skip_prefix: int = 0
    captured: dict[int, torch.Tensor] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list)
    _bt: tuple[int, int] = (0, 0)
    _fired: set[tuple[int, str]] = field(default_factory=set)
    _n_hooks: int = 0
    _pending: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)
    _mask: torch.Tensor | None = None

    def __enter__(self) -> Capture:
        for k, src in enumerate(self.sources):
            self._install(k, src.module_path, src.hook, "main")
            if self._checks(k) and src.sae is not None and src.sae.transcoder:
                assert src.target_path is not None
                self._install(k, src.target_path, src.target_hook, "target")
        self._n_hooks = len(self._handles)
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _checks(self, k: int) -> bool:
        return self.recon is not None and self.recon[k] is not None

    def _install(self, k: int, path: str, side: str, role: str) -> None:
        mod = get_module(self.model, path)
        assert mod is not None
        if side == "input":
            self._handles.append(
                mod.register_forward_pre_hook(self._pre_hook(k, role), with_kwargs=True)
            )
        else:
            self._handles.append(mod.register_forward_hook(self._hook(k, role)))

    def _tensor(self, path: str, x: Any) -> torch.Tensor:
        if isinstance(x, (tuple, list)):
            x = x[0]
        if not isinstance(x, torch.Tensor):
            raise ConfigError(f"module {path} gives no tensor to record")
        if x.ndim == 2 and x.shape[0] == self._bt[0] * self._bt[1]:
            x = x.view(*self._bt, x.shape[-1])  # OPT flattens batch and tokens in its MLP
        if x.ndim != 3 or tuple(x.shape[:2]) != self._bt:
            raise ConfigError(
                f"module {path} gives a tensor of shape {tuple(x.shape)}, "
                f"not [batch, tokens, dim] = [{self._bt[0]}, {self._bt[1]}, ...]"
            )
        return x.detach()

    def _store(self, k: int, role: str, x: Any) -> None:
        src = self.sources[k]
        x = self._tensor(src.module_path if role == "main" else str(src.target_path), x)
        if role == "target":
            self._pending[(k, "target")] = x
        elif src.sae is not None and self._checks(k):
            z, recon, target = src.sae.forward(x)
            self.captured[k] = src.select(z)
            assert recon is not None
            self._pending[(k, "recon")] = recon
            if not src.sae.transcoder:
                self._pending[(k, "target")] = target
        else:
            self.captured[k] = src.transform(x)
        if (k, "recon") in self._pending and (k, "target") in self._pending:
            stats = self.recon[k] if self.recon is not None else None
            assert stats is not None and self._mask is not None
            stats.update(
                self._pending.pop((k, "target")), self._pending.pop((k, "recon")), self._mask
            )
        self._fired.add((k, role))
        if self.stop_early and len(self._fired) == self._n_hooks:
            raise _StopForward

    def _pre_hook(self, k: int, role: str) -> Callable[..., None]:
        def hook(_mod: Any, args: tuple, kwargs: dict) -> None:
            x = (
                args[0]
                if args
                else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
            )
            self._store(k, role, x)

        return hook

    def _hook(self, k: int, role: str) -> Callable[..., None]:
        def hook(_mod: Any, _args: Any, out: Any) -> None:
            self._store(k, role, out)

        return hook

    @torch.inference_mode()
    def run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[torch.Tensor]:
        """Activations [B, T, U] per source for one batch."""
        self.captured, self._fired, self._pending = {}, set(), {}
        self._bt = (input_ids.shape[0], input_ids.shape[1])
        mask = attention_mask.bool().clone()
        mask[:, : self.skip_prefix] = False
        self._mask = mask
        with contextlib.suppress(_StopForward):
            self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        missing = [
            self.sources[k].module_path for k in range(len(self.sources)) if k not in self.captured
        ]
        if missing:
            raise ConfigError(f"module {missing[0]} was not called during the forward pass")
        if self._pending:
            (k, _), *_ = self._pending
            raise ConfigError(
                f"module {self.sources[k].target_path} (what the transcoder reconstructs) "
                "was not called during the forward pass"
            )
        return [self.captured[k] for k in range(len(self.sources))]
