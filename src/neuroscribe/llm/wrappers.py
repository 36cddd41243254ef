"""Layers around any backend: `Wrapper(inner)` is itself an `LLM`.

`make_llm` stacks them the same way for every backend (outermost first):
`UsageLLM` (running usage total, prices) → `CachedLLM` (sqlite response cache) →
`RateLimitedLLM` (requests/tokens per minute) → the backend. A layer overrides the calls
it cares about and passes the rest through; attributes it does not have (a backend's
`probe()`, `limits`, `loaded`...) are read from the layer below, so a wrapped client is
used exactly like a bare one. `unwrap(llm)` gives the backend itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from neuroscribe.llm.base import LLM, LLMResponse
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import Message


class LLMWrapper:
    """Pass-through base for layers: every call goes to `inner` unless overridden."""

    def __init__(self, inner: LLM):
        self.inner = inner
        self.spec = inner.spec

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes this layer lacks: read them from the layer below.
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"

    async def capabilities(self) -> Capabilities:
        return await self.inner.capabilities()

    async def chat(self, messages: Sequence[Message], **params: Any) -> LLMResponse:
        return await self.inner.chat(messages, **params)

    async def complete(self, prompt: str, **params: Any) -> LLMResponse:
        return await self.inner.complete(prompt, **params)

    async def aclose(self) -> None:
        await self.inner.aclose()


def layers(llm: Any) -> Iterator[Any]:
    """`llm` and every layer below it, outermost first (the backend last)."""
    while True:
        yield llm
        inner = llm.__dict__.get("inner") if hasattr(llm, "__dict__") else None
        if inner is None:
            return
        llm = inner


def unwrap(llm: Any) -> Any:
    """The backend under every layer (the `OpenAIClient`, `LocalLLM`, `FakeLLM`...)."""
    *_, last = layers(llm)
    return last


def find_layer(llm: Any, kind: type) -> Any | None:
    """The first layer of type `kind` in `llm`'s stack, or None."""
    return next((x for x in layers(llm) if isinstance(x, kind)), None)


__all__ = ["LLMWrapper", "find_layer", "layers", "unwrap"]
