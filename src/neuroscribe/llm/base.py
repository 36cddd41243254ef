"""The one small model interface every backend implements.

A backend is named by a spec string: a bare name (`gpt-4o-mini`, `smollm2`) is a model
served by the OpenAI-compatible endpoint; a prefix picks another registered backend
(`hf:<hub id or path>` a local transformers model, `hf:embedded` the embedded SmolLM2,
`fake:` the in-process test double; see `registry`). Explainer and simulators only talk
to `LLM` and its declared `Capabilities`, so the same code runs against OpenAI, vLLM,
llama.cpp, Ollama or a local model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from neuroscribe.llm.messages import Message
from neuroscribe.schema import Usage

if TYPE_CHECKING:
    from neuroscribe.llm.capabilities import Capabilities


MAX_RAW_CHARS = 2000  # of a model's raw answer kept in a failure or an error


def clip_raw(text: str | None, limit: int = MAX_RAW_CHARS) -> str | None:
    """`text` cut to at most `limit` characters (a note says how much was cut), so an
    answer of megabytes is never copied whole into a failure record."""
    if text is None or len(text) <= limit:
        return text
    note = f" ... [{len(text) - limit:,} more characters cut]"
    return text[: max(0, limit - len(note))] + note


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
    # The backend's answer as received (API JSON), plus "_cache_key" when a cache
    # layer stored it (what `discard_cached` deletes).
    raw: dict[str, Any] | None = None


@runtime_checkable
class LLM(Protocol):
    """A model that answers chat and completion requests.

    `messages` are `Message`s: content a string or a list of parts (see `messages`).
    Parameters a backend cannot honour (logprobs it does not have) are ignored, as
    servers do; `capabilities()` says beforehand which ones it honours.
    """

    spec: str

    async def capabilities(self) -> Capabilities: ...

    async def chat(
        self,
        messages: Sequence[Message],
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
# The embedded model with its bundled simulation adapter (neuroscribe.llm.lora.BUNDLED).
TUNED_SIMULATOR_SPEC = "hf:embedded?adapter=simulator"
# The score section's default model: the trained simulator, because on the ground-truth
# suite it ranks true explanations above false ones where the plain model does not
# (bench/README.md). Scorers that do not simulate read the plain model instead
# (`config.model_for_scorer`): the adapter was trained to simulate, not to judge.
DEFAULT_SIMULATOR_SPEC = TUNED_SIMULATOR_SPEC


def is_local_spec(spec: str) -> bool:
    """Whether `spec` names an in-process backend (kept for old callers: prefer
    `neuroscribe.llm.backend_info(spec).local`)."""
    from neuroscribe.llm.registry import backend_info

    return backend_info(spec).local
