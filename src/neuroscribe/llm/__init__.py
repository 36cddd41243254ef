"""LLM backends behind one interface, chosen by a spec string.

make_llm("gpt-4o-mini")                      # OpenAI (OPENAI_API_KEY)
make_llm("smollm2", base_url="http://127.0.0.1:8080/v1")   # llama.cpp, vLLM, Ollama...
make_llm("hf:embedded")                      # the embedded SmolLM2, in process
"""

from __future__ import annotations

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

__all__ = [
    "EMBEDDED_SPEC",
    "LLM",
    "LOCAL_PREFIX",
    "Completion",
    "LLMResponse",
    "TokenLogprob",
    "discard_cached",
    "is_local_spec",
    "make_llm",
]


def make_llm(
    spec: str,
    *,
    base_url: str | None = None,
    api_key: str | None = None,
    **options: Any,
) -> LLM:
    """Build the backend named by `spec`.

    A bare name is a model on the OpenAI-compatible endpoint (`base_url`/`api_key`, or
    `$OPENAI_BASE_URL`/`$OPENAI_API_KEY`); `options` go to `OpenAICompatibleLLM`
    (timeout_s, concurrency, rpm, tpm, max_attempts, cache, prices, echo_shift, probe,
    extra_body). `hf:<id or path>` is a local transformers model (`hf:embedded` the
    embedded SmolLM2); `options` then go to `LocalLLM` (device, dtype).
    """
    spec = (spec or "").strip()
    if not spec:
        raise ConfigError("empty model spec: give a model name or hf:<model>")
    if is_local_spec(spec):
        if spec == LOCAL_PREFIX:
            raise ConfigError("'hf:' needs a hub id or path, e.g. hf:embedded")
        from neuroscribe.llm.local import LocalLLM  # lazy: imports torch

        return LocalLLM(spec, **options)
    from neuroscribe.llm.openai_api import OpenAICompatibleLLM

    return OpenAICompatibleLLM(spec, base_url=base_url, api_key=api_key, **options)


def discard_cached(llm: LLM, response: LLMResponse) -> None:
    """Drop an unusable `response` from `llm`'s cache before retrying (no-op without one)."""
    discard = getattr(llm, "discard", None)
    if callable(discard):
        discard(response)
