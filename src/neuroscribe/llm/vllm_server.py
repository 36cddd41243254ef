"""`vllm:<model>`: a `vllm serve <model>` endpoint, read the vLLM way.

The OpenAI-compatible client with its prompt-logprobs style fixed to "vllm": a
`complete(echo=True, logprobs=k)` is sent as `prompt_logprobs=k` (and `logprobs=k` for
the generated token), never as `echo`, and mapped by `neuroscribe.llm.vllm`. Everything
else — chat, JSON modes, retries, errors, the key, the probe — is the client's.
"""

from __future__ import annotations

import os
from typing import Any

from neuroscribe.llm.openai.client import OpenAIClient
from neuroscribe.llm.vllm import VLLM_DEFAULT_URL, server_model


class VLLMServerClient(OpenAIClient):
    """A vLLM server behind the `LLM` interface.

    `VLLMServerClient("vllm:Qwen/Qwen2.5-1.5B-Instruct", base_url="http://gpu:8000/v1")`.
    The base URL defaults to `$OPENAI_BASE_URL`, then `vllm serve`'s own
    http://127.0.0.1:8000/v1. Other options are `OpenAIClient`'s. `spec` keeps the
    `vllm:` prefix (cache keys, manifest); `model` is what the server was started with.
    """

    def __init__(self, spec: str, **options: Any):
        model = server_model(spec)
        if not options.get("base_url") and not os.environ.get("OPENAI_BASE_URL"):
            options["base_url"] = VLLM_DEFAULT_URL
        options.setdefault("prompt_logprobs_style", "vllm")
        super().__init__(model, **options)
        self.spec = spec

    def __repr__(self) -> str:  # never show the key
        return f"VLLMServerClient(model={self.model!r}, base_url={self.base_url!r})"


__all__ = ["VLLMServerClient"]
