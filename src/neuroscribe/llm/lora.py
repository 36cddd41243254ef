"""Low-rank adapters for a local model's linear layers: train small, ship small, merge.

A LoRA adapter adds `scale · B @ A` to a linear layer's weight (A: rank × in, B: out ×
rank, B starting at zero so training starts from the base model). Only A and B train; a
rank-8 adapter over every projection of SmolLM2-135M is ~2.4M numbers (~5 MB in bfloat16)
against the model's 135M. `merge` folds an adapter into the weights once at load, so the
adapted model runs at exactly the base model's speed.

The file is a safetensors dict: `<module path>.lora_A` / `.lora_B` per adapted layer and
a metadata entry `scale`.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError

# Every projection of a Llama-style block.
DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Adapters shipped with the package, by the name a spec gives them (`?adapter=simulator`).
BUNDLED = {
    # SmolLM2-135M trained to simulate (bench/finetune_simulator.py): with the
    # `simulate-tuned-inline-v1` prompt (its metadata says so); bench/README.md has its
    # ground-truth figures and those of the earlier row-layout adapters.
    "simulator": Path(__file__).parent
    / "adapters"
    / "smollm2-135m-simulate-tuned-inline-v1.safetensors",
}


def resolve_adapter(name: str) -> Path:
    """The file an `adapter=` option names: a bundled name or a path to a .safetensors file."""
    path = BUNDLED.get(name) or Path(name).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"LoRA adapter {name!r} not found: give a .safetensors file or one of "
            + ", ".join(BUNDLED)
        )
    return path


def metadata(path: Path) -> dict[str, str]:
    """The adapter file's metadata (`scale`, `rank`, and `prompt`: the simulation prompt
    version it was trained on, when it was trained to simulate)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def adapter_prompt(spec: str | None) -> str | None:
    """The simulation prompt a local spec's adapter was trained on (None: no adapter, or
    an adapter that declares none). A model trained without few-shot units simulates
    badly from another prompt, so a simulator given no prompt takes this one."""
    name = _adapter_name(spec)
    return metadata(resolve_adapter(name)).get("prompt") if name else None


def _adapter_name(spec: str | None) -> str | None:
    """The `adapter=` option of a local spec (None: none)."""
    if not spec or "?" not in spec:
        return None
    from neuroscribe.llm.local import split_spec

    return split_spec(spec)[1].get("adapter")


def adapter_digest(spec: str | None) -> str | None:
    """A short content hash of a local spec's adapter file (None: no adapter, or a file
    this machine does not have). The spec names the adapter, the digest its weights: a
    retrained bundled adapter keeps its name (`adapter=simulator`), so results and check
    reports are keyed by the digest too and never mix two adapters' numbers."""
    try:
        name = _adapter_name(spec)
        if not name:
            return None
        path = resolve_adapter(name)
        stat = path.stat()
    except (ConfigError, OSError):
        return None
    return _digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _digest(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _targets(model: Any, targets: Iterable[str]) -> list[tuple[str, Any]]:
    import torch

    wanted = tuple(targets)
    return [
        (name, mod)
        for name, mod in model.named_modules()
        if isinstance(mod, torch.nn.Linear) and name.rsplit(".", 1)[-1] in wanted
    ]


class LoraLinear:
    """Forward hook state: x → base(x) + scale · (x @ Aᵀ) @ Bᵀ, with A and B trainable."""

    def __init__(self, linear: Any, rank: int, scale: float):
        import torch

        self.A = torch.nn.Parameter(torch.randn(rank, linear.in_features) / linear.in_features**0.5)
        self.B = torch.nn.Parameter(torch.zeros(linear.out_features, rank))
        self.scale = scale

    def __call__(self, module: Any, inputs: tuple, output: Any) -> Any:
        x = inputs[0]
        return output + ((x.to(self.A.dtype) @ self.A.T) @ self.B.T).to(output.dtype) * self.scale


def attach(
    model: Any, rank: int = 8, alpha: float = 16.0, targets: Iterable[str] = DEFAULT_TARGETS
) -> dict[str, LoraLinear]:
    """Freeze the model and hook a trainable adapter onto every target linear layer."""
    if rank < 1:
        raise ConfigError(f"LoRA rank must be at least 1, got {rank}")
    for p in model.parameters():
        p.requires_grad_(False)
    adapters: dict[str, LoraLinear] = {}
    for name, mod in _targets(model, targets):
        lora = LoraLinear(mod, rank, alpha / rank)
        mod.register_forward_hook(lora)
        adapters[name] = lora
    if not adapters:
        raise ConfigError(f"the model has no linear layers named {', '.join(targets)}")
    return adapters


def parameters(adapters: dict[str, LoraLinear]) -> list[Any]:
    return [p for a in adapters.values() for p in (a.A, a.B)]


def save(adapters: dict[str, LoraLinear], path: Path, extra: dict[str, str] | None = None) -> None:
    """The adapters as a bfloat16 safetensors file (A and B per layer, the scale, and
    `extra` metadata such as the prompt it was trained on)."""
    import torch
    from safetensors.torch import save_file

    scales = {a.scale for a in adapters.values()}
    tensors = {}
    for name, a in adapters.items():
        tensors[f"{name}.lora_A"] = a.A.detach().to(torch.bfloat16).contiguous()
        tensors[f"{name}.lora_B"] = a.B.detach().to(torch.bfloat16).contiguous()
    meta = {"scale": repr(scales.pop()), **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)


def merge(model: Any, path: Path) -> int:
    """Fold the adapter file into the model's weights in place; returns layers changed.

    Every adapter entry must name a linear layer of this model with matching shapes: an
    adapter trained for another model is refused, never half applied.
    """
    import torch
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ConfigError(f"LoRA adapter {path} not found")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        scale = float(meta.get("scale", "nan"))
        keys = list(f.keys())
        tensors = {k: f.get_tensor(k) for k in keys}
    if scale != scale:
        raise ConfigError(f"LoRA adapter {path} has no scale in its metadata")
    modules = dict(model.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in keys})
    updates = []
    for name in names:
        mod = modules.get(name)
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        if not isinstance(mod, torch.nn.Linear) or a is None or b is None:
            raise ConfigError(f"LoRA adapter {path}: {name} is not a linear layer of this model")
        if a.shape[1] != mod.in_features or b.shape[0] != mod.out_features:
            raise ConfigError(
                f"LoRA adapter {path}: {name} expects {a.shape[1]}→{b.shape[0]}, "
                f"the model's layer is {mod.in_features}→{mod.out_features}"
            )
        updates.append((mod, (b.float() @ a.float()) * scale))
    with torch.no_grad():
        for mod, delta in updates:
            mod.weight += delta.to(mod.weight.dtype)
    return len(updates)
