"""Simulators: explanation + tokens → expected activations, behind one interface.

`make_simulator` picks the strategy from what the backend supports (probed once per
endpoint and model, cached by the client) unless the user forces one.
"""

from __future__ import annotations

from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import LLM, is_local_spec
from neuroscribe.simulator.api import ChatLogprobSimulator, JsonSimulator, PromptLogprobSimulator
from neuroscribe.simulator.base import SimulatedExcerpt, Simulator

STRATEGIES = ("auto", "exact", "prompt-logprobs", "chat-logprobs", "json")


def strategy_from_probe(probe: dict[str, Any]) -> str:
    """What `auto` picks for an endpoint: prompt logprobs, else chat logprobs, else JSON."""
    if probe.get("echo_logprobs"):
        return "prompt-logprobs"
    if probe.get("chat_logprobs"):
        return "chat-logprobs"
    return "json"


def scale_from_probe(probe: dict[str, Any]) -> int:
    """A tokenizer without a single-token "10" cannot express 10 in one slot: use 0–9."""
    return 9 if probe.get("ten_single_token") is False else 10


async def make_simulator(
    llm: LLM, strategy: str = "auto", **options: Any
) -> tuple[Simulator, dict[str, Any]]:
    """Build the simulator for `llm`; returns it with the probe result (for the manifest)."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if is_local_spec(llm.spec):
        if strategy not in ("auto", "exact"):
            raise ConfigError(
                f"local model {llm.spec} simulates exactly from its logits; "
                f"strategy {strategy!r} is for API endpoints"
            )
        from neuroscribe.simulator.exact import ExactSimulator

        sim = ExactSimulator.from_llm(llm, **options)
        return sim, {"strategy": "exact", "scale_max": sim.scale_max}
    if strategy == "exact":
        raise ConfigError(f"the exact strategy needs a local model (hf:...), not {llm.spec}")

    probe: dict[str, Any] = await llm.probe()  # type: ignore[attr-defined]
    if strategy == "auto":
        strategy = strategy_from_probe(probe)
    scale_max = options.pop("scale_max", None)
    if scale_max is None:
        scale_max = scale_from_probe(probe)
    cls = {
        "prompt-logprobs": PromptLogprobSimulator,
        "chat-logprobs": ChatLogprobSimulator,
        "json": JsonSimulator,
    }[strategy]
    if cls is JsonSimulator:
        # OpenAI, vLLM and Ollama take json_schema; llama.cpp a schema inside json_object.
        options.setdefault(
            "json_mode", "json_schema" if probe.get("json_schema") else "json_object"
        )
    sim = cls(llm, scale_max=scale_max, **options)
    return sim, {**probe, "strategy": strategy, "scale_max": scale_max}


__all__ = [
    "STRATEGIES",
    "ChatLogprobSimulator",
    "JsonSimulator",
    "PromptLogprobSimulator",
    "SimulatedExcerpt",
    "Simulator",
    "make_simulator",
    "scale_from_probe",
    "strategy_from_probe",
]
