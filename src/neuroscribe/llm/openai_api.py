"""Old import path of the OpenAI-compatible backend (now `neuroscribe.llm.openai`).

`OpenAICompatibleLLM(model, **options)` builds what `make_llm(model, **options)` builds
for a bare model name — the `OpenAIClient` with the usage, cache and rate-limit layers
— and keeps accepting the options it always did (cache, prices, rpm, tpm, ...).
"""

from __future__ import annotations

from typing import Any

from neuroscribe.llm.openai.client import OpenAIClient
from neuroscribe.llm.openai.mapping import map_chat_choices, map_completion_choices
from neuroscribe.llm.openai.probe import detect_echo_shift


def OpenAICompatibleLLM(
    model: str, **options: Any
) -> Any:  # a function now; the name is the old class's
    """The OpenAI-compatible backend for `model` with the standard layers (an `LLM`)."""
    from neuroscribe.llm import wrap

    wrapper_options = {k: options.pop(k) for k in ("cache", "prices", "rpm", "tpm") if k in options}
    return wrap(OpenAIClient(model, **options), **wrapper_options)


__all__ = [
    "OpenAIClient",
    "OpenAICompatibleLLM",
    "detect_echo_shift",
    "map_chat_choices",
    "map_completion_choices",
]
