"""Backends register by spec prefix; nothing outside `llm/` branches on a backend's name.

`register_backend("hf:", factory, info)` makes `make_llm("hf:...")` call
`factory(spec, **options)`; a spec with no registered prefix is a model on an
OpenAI-compatible endpoint. `backend_info(spec)` answers what a caller needs to know
without building anything: is it in process (free, nothing to cache, no price needed),
how to count its tokens for a dry run, and which capabilities are known offline.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.capabilities import Capabilities

ChatCounter = Callable[[list[dict[str, Any]]], int]


@dataclass(frozen=True)
class BackendInfo:
    """What is known about a spec's backend before it is built.

    `local`: runs in this process (costs $0, a response cache buys nothing, no price
    table needed). `token_counter(spec)` returns `(count_text, count_chat, name)` with
    the model's exact tokenizer, or None where it is not known offline (API models:
    the caller estimates). `offline_capabilities(spec)` returns capabilities knowable
    without contacting anything (local models: from the tokenizer), else None.
    `endpoint`: an HTTP API backend that takes `base_url` and `api_key` (`make_llm`
    passes them on); always so for the default backend.
    """

    name: str  # "openai", "local", "fake", "vllm", ...
    prefix: str  # "" for the default (OpenAI-compatible) backend
    local: bool = False
    endpoint: bool = False
    token_counter: Callable[[str], tuple[Callable[[str], int], ChatCounter, str] | None] = field(
        default=lambda spec: None, compare=False
    )
    offline_capabilities: Callable[[str], Capabilities | None] = field(
        default=lambda spec: None, compare=False
    )

    @property
    def free(self) -> bool:
        """Calls cost nothing (in-process compute is not priced)."""
        return self.local

    @property
    def needs_pricing(self) -> bool:
        """A budget needs a price for this model (API backends)."""
        return not self.local

    @property
    def needs_cache(self) -> bool:
        """A response cache saves money or time (API backends; local models recompute)."""
        return not self.local


Factory = Callable[..., Any]


@dataclass
class _Entry:
    factory: Factory
    info: BackendInfo


class BackendRegistry:
    """Prefix → backend factory; the longest matching prefix wins."""

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._default: _Entry | None = None
        self._lock = threading.Lock()

    def register(self, prefix: str, factory: Factory, info: BackendInfo | None = None) -> None:
        """Register `factory(spec, **options) -> LLM` for specs starting with `prefix`.

        `prefix=""` sets the default backend (bare model names).
        """
        info = replace(
            info or BackendInfo(name=prefix.rstrip(":") or "default", prefix=""), prefix=prefix
        )
        with self._lock:
            if prefix:
                self._entries[prefix] = _Entry(factory, info)
            else:
                self._default = _Entry(factory, info)

    def _entry(self, spec: str) -> _Entry:
        _ensure_builtins()
        with self._lock:
            matches = [p for p in self._entries if spec.startswith(p)]
            if matches:
                return self._entries[max(matches, key=len)]
            if self._default is None:
                raise ConfigError(f"no backend for model spec {spec!r}")
            return self._default

    def info(self, spec: str) -> BackendInfo:
        return self._entry(spec).info

    def build(self, spec: str, **options: Any) -> Any:
        return self._entry(spec).factory(spec, **options)


REGISTRY = BackendRegistry()


def register_backend(prefix: str, factory: Factory, info: BackendInfo | None = None) -> None:
    """Register a backend on the process registry (see `BackendRegistry.register`)."""
    REGISTRY.register(prefix, factory, info)


def backend_info(spec: str) -> BackendInfo:
    """What is known about the backend `spec` names, without building it."""
    return REGISTRY.info((spec or "").strip())


# --------------------------------------------------------------------------- built-ins

_builtins_done = False


def _ensure_builtins() -> None:
    # Registered lazily, so importing the registry imports neither torch nor httpx.
    global _builtins_done
    if _builtins_done:
        return
    _builtins_done = True
    from neuroscribe.llm import fake, gguf, local, vllm

    REGISTRY.register("", _openai_factory, BackendInfo(name="openai", prefix="", endpoint=True))
    local.register(REGISTRY)
    gguf.register(REGISTRY)
    vllm.register(REGISTRY)  # vllm: (a server) and vllm-local: (the offline engine)
    fake.register(REGISTRY)


def _openai_factory(spec: str, **options: Any) -> Any:
    from neuroscribe.llm.openai.client import OpenAIClient  # lazy: httpx, openai

    return OpenAIClient(spec, **options)


__all__ = ["REGISTRY", "BackendInfo", "BackendRegistry", "backend_info", "register_backend"]
