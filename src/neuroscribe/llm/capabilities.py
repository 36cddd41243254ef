"""What a backend can do, declared once, so callers check a declaration instead of a name.

Every backend answers `await llm.capabilities()` with a `Capabilities`: the API client
from its probe of the endpoint (run once per client, or reused from a stored probe), a
local model from its tokenizer and config, the fake from its constructor. The simulator
picks its strategy from these fields alone (`neuroscribe.simulator.choose_strategy`),
and a dry run can do the same from the copy stored in a run manifest
(`Capabilities.from_manifest`) without contacting anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

CAPABILITIES_VERSION = 1

TokenCounter = Callable[[str], int]
PromptLogprobsStyle = Literal["echo", "vllm"]


class Capabilities(BaseModel):
    """The features of one backend + model (False/None = absent or unknown).

    `prompt_logprobs`: `complete(echo=True, logprobs=k)` returns the prompt's own tokens
    with their top-k logprobs, already aligned (entry i is the distribution *for* token i).
    `prompt_logprobs_style` records how the backend gets them, for the manifest:
    "echo" (`echo` + `logprobs` on /completions: OpenAI legacy, llama.cpp), "vllm"
    (vLLM's `prompt_logprobs` extension, or its offline engine), None (unknown or n/a).
    The caller asks the same way whatever the style; the backend translates.
    `echo_shift` records the raw server's alignment (0, 1, or None when unknown/not
    applicable) for the manifest; backends correct it before answering.
    `exact_logits`: the model runs in process and exposes its logits (exact simulation).
    `ten_single_token`: whether "10" is one token; False means a 0–9 value scale.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    chat: bool = True
    completions: bool = False
    prompt_logprobs: bool = False
    chat_top_logprobs: bool = False
    json_object: bool = False
    json_schema: bool = False
    image_input: bool = False
    exact_logits: bool = False
    context_length: int | None = None
    ten_single_token: bool | None = None
    echo_shift: int | None = None
    prompt_logprobs_style: PromptLogprobsStyle | None = None

    # The tokenizer, when the backend knows it exactly (local models); never serialised.
    _counter: TokenCounter | None = PrivateAttr(default=None)

    def with_counter(self, counter: TokenCounter | None) -> Capabilities:
        """A copy whose `count_tokens` uses `counter` (exact tokenizers only)."""
        copy = self.model_copy()
        copy._counter = counter
        return copy

    def count_tokens(self, text: str) -> int | None:
        """Tokens in `text` by the model's own tokenizer, or None when it is not known here."""
        return None if self._counter is None else self._counter(text)

    @property
    def scale_max(self) -> int:
        """9 when "10" is known to be two tokens (a slot's distribution cannot see it), else 10."""
        return 9 if self.ten_single_token is False else 10

    # ------------------------------------------------------------------ manifest

    def to_manifest(self) -> dict[str, Any]:
        """A JSON-able dict for the run manifest (read back with `from_manifest`)."""
        return {"capabilities_version": CAPABILITIES_VERSION, **self.model_dump()}

    @classmethod
    def from_manifest(cls, data: dict[str, Any]) -> Capabilities:
        """Read capabilities from what a manifest stores for a simulator.

        Accepts a `to_manifest()` dict, the dict `make_simulator` returns (which holds one
        under "capabilities"), or a bare endpoint probe from before capabilities existed.
        """
        inner = data.get("capabilities")
        if isinstance(inner, dict):
            return cls.model_validate(inner)
        if "capabilities_version" in data:
            return cls.model_validate(data)
        if "probe_version" in data or "echo_logprobs" in data:
            return cls.from_probe(data)
        return cls.model_validate(data)

    @classmethod
    def from_probe(cls, probe: dict[str, Any]) -> Capabilities:
        """Capabilities of an OpenAI-compatible endpoint from its probe result.

        Prompt logprobs come from `echo` where the endpoint serves them, else from vLLM's
        `prompt_logprobs` (a probe from before the style was recorded means echo).
        """
        shift = probe.get("echo_shift")
        style = probe.get("prompt_logprobs_style")
        if style not in ("echo", "vllm"):
            style = "echo" if probe.get("echo_logprobs") else None
        return cls(
            chat=bool(probe.get("chat")),
            completions=bool(probe.get("completions")),
            prompt_logprobs=bool(probe.get("echo_logprobs"))
            or (style == "vllm" and bool(probe.get("prompt_logprobs"))),
            chat_top_logprobs=bool(probe.get("chat_logprobs")),
            json_object=bool(probe.get("json_mode")),
            json_schema=bool(probe.get("json_schema")),
            image_input=bool(probe.get("image_input", False)),
            context_length=probe.get("context_length"),
            ten_single_token=probe.get("ten_single_token"),
            echo_shift=shift if shift in (0, 1) else None,
            prompt_logprobs_style=style,
        )


__all__ = ["CAPABILITIES_VERSION", "Capabilities", "PromptLogprobsStyle", "TokenCounter"]
