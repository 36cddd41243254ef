"""LLM backends behind one interface, chosen by a spec string.

make_llm("gpt-4o-mini")                      # OpenAI (OPENAI_API_KEY)
make_llm("smollm2", base_url="http://127.0.0.1:8080/v1")   # llama.cpp, vLLM, Ollama...
make_llm("hf:embedded")                      # the embedded SmolLM2, in process
make_llm("vllm:Qwen/Qwen2.5-1.5B-Instruct", base_url="http://gpu:8000/v1")  # vllm serve
make_llm("vllm-local:Qwen/Qwen2.5-1.5B-Instruct")  # vLLM's engine in process (GPU, extra)
make_llm("fake:test", answers=lambda msgs, **kw: "hi")     # the in-process test double

Every backend gets the same layers (`wrappers`): usage accounting and prices, an
optional response cache, optional rate limits. `await llm.capabilities()` says what
it can do; `backend_info(spec)` what is known before building it.
"""

from __future__ import annotations

import math
import os
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import (
    EMBEDDED_SPEC,
    LLM,
    LOCAL_PREFIX,
    Completion,
    LLMResponse,
    TokenLogprob,
    is_local_spec,
)
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import ContentPart, Message, image_part, text_part
from neuroscribe.llm.registry import BackendInfo, backend_info, register_backend
from neuroscribe.llm.secrets import redact_url
from neuroscribe.llm.wrappers import LLMWrapper, layers, unwrap

__all__ = [
    "EMBEDDED_SPEC",
    "LLM",
    "LOCAL_PREFIX",
    "BackendInfo",
    "Capabilities",
    "Completion",
    "ContentPart",
    "LLMResponse",
    "LLMWrapper",
    "Message",
    "TokenLogprob",
    "backend_info",
    "discard_cached",
    "image_part",
    "is_local_spec",
    "layers",
    "make_llm",
    "preflight",
    "redact_url",
    "register_backend",
    "text_part",
    "unwrap",
    "wrap",
]


def make_llm(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    cache: Any = None,
    prices: Any = None,
    rpm: float | None = None,
    tpm: float | None = None,
    **options: Any,
) -> LLM:
    """Build the backend named by `spec`, with the standard layers around it.

    A bare name is a model on the OpenAI-compatible endpoint (`base_url`/`api_key`, or
    `$OPENAI_BASE_URL`/`$OPENAI_API_KEY`); `options` then go to `OpenAIClient`
    (timeout_s, concurrency, max_attempts, retry, transport, echo_shift, probe, probes,
    extra_body, max_response_bytes). `hf:<id or path>` is a local transformers model (`hf:embedded` the
    embedded SmolLM2; options: device, dtype, store, loaded); `fake:<name>` a `FakeLLM`
    (options: answers, capabilities, ...). `vllm:<model>` is a `vllm serve` endpoint
    (`base_url`/`api_key` and the OpenAI client's options; prompt logprobs through vLLM's
    `prompt_logprobs`), `vllm-local:<hub id or folder>` vLLM's offline engine (options:
    seed, max_batch, and `vllm.LLM` engine arguments). Other prefixes come from
    `register_backend`; those whose `BackendInfo.endpoint` is set take `base_url` and
    `api_key` too.

    Layers, for every backend: `cache` (a `ResponseCache` or the path of its sqlite
    file; None = no cache), `rpm`/`tpm` (requests and tokens per minute), `prices` (a
    table or price file; API backends only — in-process ones are not priced).
    """
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("empty model spec: give a model name or hf:<model>")
    info = backend_info(spec)
    if info.prefix and spec == info.prefix:
        raise ConfigError(f"{info.prefix!r} needs a name after it, e.g. {EMBEDDED_SPEC}")
    if not info.prefix or info.endpoint:
        options.update(base_url=base_url, api_key=api_key)
    from neuroscribe.llm.registry import REGISTRY

    backend = REGISTRY.build(spec, **options)
    return wrap(backend, cache=cache, prices=prices, rpm=rpm, tpm=tpm, priced=info.needs_pricing)


def wrap(
    backend: LLM,
    *,
    cache: Any = None,
    prices: Any = None,
    rpm: float | None = None,
    tpm: float | None = None,
    priced: bool = True,
) -> LLM:
    """Put the standard layers around a built backend (what `make_llm` does).

    Order, outermost first: usage/prices → cache → rate limits → backend, so a cache
    hit is free and takes nothing from the rate limits.
    """
    from neuroscribe.llm.cache import CachedLLM, ResponseCache
    from neuroscribe.llm.limits import RateLimitedLLM
    from neuroscribe.llm.pricing import UsageLLM

    for name, value in (("rpm", rpm), ("tpm", tpm)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise ConfigError(f"{name} must be a positive number (or None), not {value!r}")
    llm: LLM = backend
    if rpm or tpm:
        llm = RateLimitedLLM(llm, rpm=rpm, tpm=tpm)
    if cache is not None:
        if not isinstance(cache, (ResponseCache, str, os.PathLike)):
            raise ConfigError(f"cache must be a ResponseCache or a file path, not {cache!r}")
        llm = CachedLLM(llm, cache)
    return UsageLLM(llm, prices=prices, priced=priced)


def discard_cached(llm: LLM, response: LLMResponse) -> None:
    """Drop an unusable `response` from `llm`'s cache before retrying (no-op without one)."""
    for layer in layers(llm):
        discard = getattr(type(layer), "discard", None)
        if callable(discard):
            discard(layer, response)


async def preflight(llm: LLM) -> None:
    """Fail early on a backend that cannot work (unreachable server, 401, unserved model).

    Backends without anything to check (in-process models) pass at once.
    """
    check = getattr(unwrap(llm), "preflight", None)
    if check is not None:
        await check()
