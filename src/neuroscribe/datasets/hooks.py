"""Hook names from other tools mapped to the Hugging Face module (input or output) to hook.

SAEs name where they read in TransformerLens terms (`blocks.8.hook_resid_pre`) or as
sparsify hookpoints (module paths relative to the base model: `layers.8`, `h.8.mlp`).
TransformerLens block hooks, and where they are in a Hugging Face block:

    hook_resid_pre        input of block L
    hook_resid_post       output of block L
    hook_resid_mid        input of the MLP's layer norm (the residual after attention)
    hook_mlp_in           = hook_resid_mid (the residual, before the norm); with a
                          parallel residual (GPT-NeoX, GPT-J) the block input
    ln2.hook_normalized   input of the MLP (the second norm's output); also mlp.hook_in
    hook_mlp_out          output of the MLP (Gemma 2/3: of post_feedforward_layernorm)
    hook_attn_out         output of attention (Gemma 2/3: of post_attention_layernorm)
    ln1.hook_normalized   output of the first norm
    attn.hook_z           input of the attention output projection (heads concatenated)
    mlp.hook_post         input of the MLP output projection (the neurons)

These match TransformerLens models loaded without weight processing (what SAELens
trains on); `center_writing_weights` is undone by the SAE itself (`center_input`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from neuroscribe.errors import ConfigError

TL_BLOCK_HOOKS = (
    "hook_resid_pre",
    "hook_resid_mid",
    "hook_resid_post",
    "hook_mlp_in",
    "ln2.hook_normalized",
    "mlp.hook_in",
    "hook_mlp_out",
    "hook_attn_out",
    "ln1.hook_normalized",
    "attn.hook_z",
    "mlp.hook_post",
)
_ATTN = ("self_attn", "attn", "attention")
_O_PROJ = ("self_attn.o_proj", "attn.c_proj", "attention.dense", "self_attn.dense", "attn.out_proj")
_LN1 = ("input_layernorm", "ln_1")
_LN2 = ("post_attention_layernorm", "ln_2")


@dataclass(frozen=True)
class HookPoint:
    """A module to hook, which side of it, and the block it belongs to."""

    module_path: str
    hook: str  # "input" | "output"
    layer: int | None
    name: str  # the name it was resolved from


def is_transformerlens_name(name: str) -> bool:
    return name.startswith(("blocks.", "hook_", "ln_final."))


def resolve_hook(model: torch.nn.Module, name: str, *, side: str = "output") -> HookPoint:
    """The module and side for a TransformerLens hook name or a module path.

    A module path is tried as given and relative to the base model (sparsify's
    hookpoints); `side` applies to module paths only.
    """
    if is_transformerlens_name(name):
        return _transformerlens(model, name)
    return module_point(model, name, side)


def module_point(model: torch.nn.Module, name: str, side: str) -> HookPoint:
    from neuroscribe.datasets.units import get_module

    prefix = getattr(model, "base_model_prefix", "") or ""
    for path in (name, f"{prefix}.{name}" if prefix else None):
        if path and get_module(model, path) is not None:
            return HookPoint(path, side, layer_of(model, path), name)
    raise ConfigError(
        f"hook {name!r}: no such module in {type(model).__name__} (tried {name!r}"
        + (f" and {prefix + '.' + name!r}" if prefix else "")
        + "); use a TransformerLens name such as blocks.8.hook_resid_post or a module path "
        "from model.named_modules()"
    )


def layer_of(model: torch.nn.Module, path: str) -> int | None:
    """The block index a module path lies in, if any."""
    from neuroscribe.datasets.units import find_layers

    try:
        base, _ = find_layers(model)
    except ConfigError:
        return None
    m = re.match(rf"{re.escape(base)}\.(\d+)(\.|$)", path)
    return int(m.group(1)) if m else None


def _transformerlens(model: torch.nn.Module, name: str) -> HookPoint:
    from neuroscribe.datasets.units import find_layers, get_module, mlp_neuron_path

    m = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if m is None:
        raise ConfigError(
            f"hook {name!r} is outside the transformer blocks; supported: "
            f"blocks.L.{{{', '.join(TL_BLOCK_HOOKS)}}}"
        )
    layer, rest = int(m.group(1)), m.group(2)
    base, blocks = find_layers(model)
    if layer >= len(blocks):
        raise ConfigError(
            f"hook {name!r}: layer {layer} out of range: the model has {len(blocks)} layers"
        )
    blk = f"{base}.{layer}"

    def first(rels: tuple[str, ...]) -> str | None:
        return next(
            (f"{blk}.{r}" for r in rels if get_module(model, f"{blk}.{r}") is not None), None
        )

    mlp = first(("mlp",))
    # Gemma 2/3 norm both sides of each sublayer; their second pre-norm has its own name.
    sandwich = first(("pre_feedforward_layernorm",))
    post_ffn = first(("post_feedforward_layernorm",))
    ln2 = sandwich or (None if post_ffn else first(_LN2))  # Olmo 2: no norm before the MLP
    parallel = _parallel_residual(model)
    point: tuple[str | None, str] | None = None
    if rest == "hook_resid_pre":
        point = (blk, "input")
    elif rest == "hook_resid_post":
        point = (blk, "output")
    elif rest in ("hook_resid_mid", "hook_mlp_in"):
        if parallel:
            if rest == "hook_resid_mid":
                raise ConfigError(
                    f"hook {name!r}: {type(model).__name__} has a parallel residual "
                    "(attention and MLP both read the block input), so there is no resid_mid"
                )
            point = (blk, "input")
        else:
            point = (ln2, "input") if ln2 else (mlp, "input")
    elif rest in ("ln2.hook_normalized", "mlp.hook_in"):
        point = (mlp, "input")
    elif rest == "hook_mlp_out":
        point = ((post_ffn if sandwich else None) or mlp, "output")
    elif rest == "hook_attn_out":
        post_attn = first(("post_attention_layernorm",)) if sandwich else None
        point = (post_attn or first(_ATTN), "output")
    elif rest == "ln1.hook_normalized":
        point = (first(_LN1), "output")
    elif rest == "attn.hook_z":
        point = (first(_O_PROJ), "input")
    elif rest == "mlp.hook_post":
        point = (mlp_neuron_path(model, layer), "input")
    if point is None:
        raise ConfigError(
            f"hook {name!r} is not supported; supported: blocks.L.{{{', '.join(TL_BLOCK_HOOKS)}}}"
            " (or give a module path with --sae-hook)"
        )
    if point[0] is None:
        raise ConfigError(
            f"hook {name!r}: cannot find the matching module in block {blk} of "
            f"{type(model).__name__} (model_type {_model_type(model)}); give a module path "
            "with --sae-hook"
        )
    return HookPoint(point[0], point[1], layer, name)


def default_output_hook(name: str, side: str) -> str | None:
    """What a transcoder reading `name` reconstructs, when its files do not say.

    Reading the MLP input (TransformerLens names) means reconstructing the MLP output of
    the block; reading a module's input (sparsify) means reconstructing its output.
    """
    m = re.fullmatch(r"blocks\.(\d+)\.(ln2\.hook_normalized|hook_mlp_in|mlp\.hook_in)", name)
    if m:
        return f"blocks.{m.group(1)}.hook_mlp_out"
    if not is_transformerlens_name(name) and side == "input":
        return name
    return None


def _model_type(model: Any) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", "?"))


def _parallel_residual(model: Any) -> bool:
    config = getattr(model, "config", None)
    if getattr(config, "use_parallel_residual", False):
        return True
    return _model_type(model) in ("gptj", "phi", "codegen")
