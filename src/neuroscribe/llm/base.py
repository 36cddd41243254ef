"""The one small model interface every backend implements.

A backend is named by a spec string: a bare name (`gpt-4o-mini`, `smollm2`) is a model
served by the OpenAI-compatible endpoint; `hf:<hub id or path>` is a local transformers
model and `hf:embedded` the embedded SmolLM2. Explainer and simulators only talk to
`LLM`, so the same code runs against OpenAI, vLLM, llama.cpp, Ollama or a local model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from neuroscribe.schema import Usage


@dataclass
class TokenLogprob:
    """One token with its log-probability and the top alternatives at its position.

    `top_logprobs` at position i is the distribution the model had *for* token i
    (OpenAI semantics); backends that are off by one are corrected before this.
    """

    token: str
    logprob: float | None = None
    top_logprobs: dict[str, float] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    finish_reason: str | None = None
    # Logprobs of generated tokens (chat `logprobs`/`top_logprobs`, completion `logprobs`).
    tokens: list[TokenLogprob] | None = None
    # Logprobs of the prompt's own tokens (`echo` or vLLM's `prompt_logprobs`).
    prompt_tokens: list[TokenLogprob] | None = None


@dataclass
class LLMResponse:
    choices: list[Completion]
    usage: Usage = field(default_factory=Usage)
    raw: dict[str, Any] | None = None


@runtime_checkable
class LLM(Protocol):
    """A model that answers chat and completion requests."""

    spec: str

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        top_logprobs: int | None = None,
        response_format: dict[str, Any] | None = None,
        stop: list[str] | None = None,
    ) -> LLMResponse: ...

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        logprobs: int | None = None,
        echo: bool = False,
        stop: list[str] | None = None,
    ) -> LLMResponse: ...

    async def aclose(self) -> None: ...


LOCAL_PREFIX = "hf:"
EMBEDDED_SPEC = "hf:embedded"


def is_local_spec(spec: str) -> bool:
    return spec.startswith(LOCAL_PREFIX)
