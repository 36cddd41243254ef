"""The OpenAI-compatible backend, by job: `_wire` (HTTP, errors, retries, the key),
`probe` (what an endpoint supports, echo alignment), `mapping` (answers → Completions),
`client` (the `LLM` itself)."""

from neuroscribe.llm.openai.client import OpenAIClient
from neuroscribe.llm.openai.probe import ProbeCache, detect_echo_shift

__all__ = ["OpenAIClient", "ProbeCache", "detect_echo_shift"]
