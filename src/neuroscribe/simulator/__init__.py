"""Simulators: explanation + tokens → expected activations, behind one interface.

`make_simulator` asks the backend for its `Capabilities` and picks the strategy with
the pure `choose_strategy(caps, requested)` — the same function a dry run calls on
capabilities read back from the run manifest, so both always agree.
"""

from __future__ import annotations

from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import LLM
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.simulator.api import ChatLogprobSimulator, JsonSimulator, PromptLogprobSimulator
from neuroscribe.simulator.base import SimulatedExcerpt, Simulator

STRATEGIES = ("auto", "exact", "prompt-logprobs", "chat-logprobs", "json")


def choose_strategy(caps: Capabilities, requested: str = "auto") -> str:
    """The strategy `requested` resolves to on a backend with `caps` (pure).

    `auto` prefers exact logits (in-process models), then prompt logprobs (the
    reference's all-at-once method), then chat top-logprobs, then JSON. A named
    strategy is honoured — a probe can miss a feature the user knows is there —
    except `exact`, which cannot run without in-process logits.
    """
    if requested not in STRATEGIES:
        raise ConfigError(f"unknown strategy {requested!r}; choose one of {', '.join(STRATEGIES)}")
    if requested == "exact" and not caps.exact_logits:
        raise ConfigError(
            "the exact strategy needs a model whose logits run in this process "
            "(a local model, hf:...)"
        )
    if requested != "auto":
        return requested
    if caps.exact_logits:
        return "exact"
    if caps.prompt_logprobs:
        return "prompt-logprobs"
    if caps.chat_top_logprobs:
        return "chat-logprobs"
    return "json"


def scale_for(caps: Capabilities) -> int:
    """The top of the value scale: 0–9 when "10" is known to be two tokens, else 0–10."""
    return caps.scale_max


def strategy_from_probe(probe: dict[str, Any]) -> str:
    """What `auto` picks for an endpoint probe (kept for old callers)."""
    return choose_strategy(Capabilities.from_manifest(probe), "auto")


def scale_from_probe(probe: dict[str, Any]) -> int:
    """The value scale for an endpoint probe (kept for old callers)."""
    return scale_for(Capabilities.from_manifest(probe))


def _json_mode(caps: Capabilities) -> str:
    # OpenAI, vLLM and Ollama take json_schema; llama.cpp a schema inside json_object.
    return "json_schema" if caps.json_schema else "json_object"


async def make_simulator(
    llm: LLM, strategy: str = "auto", **options: Any
) -> tuple[Simulator, dict[str, Any]]:
    """Build the simulator for `llm`; returns it with what to record in the manifest.

    The dict holds the backend's probe (API backends; the keys stored before
    capabilities existed), `strategy`, `scale_max` and `capabilities`
    (`Capabilities.to_manifest()`, read back with `Capabilities.from_manifest`).
    """
    caps = await llm.capabilities()
    chosen = choose_strategy(caps, strategy)
    probe = getattr(llm, "probe_result", None)  # API clients: the raw probe, for the record
    record: dict[str, Any] = dict(probe) if isinstance(probe, dict) else {}
    version = options.get("prompt_version")
    if version is not None and chosen != "exact":
        from neuroscribe.prompts.simulate import simulation_style

        if not simulation_style(version).slot:
            raise ConfigError(
                f"the {version} prompt has no slot text to find in an echoed prompt: it runs "
                f"on the exact strategy only (a local hf: simulator), not {chosen}"
            )
    if chosen == "exact":
        from neuroscribe.simulator.exact import ExactSimulator  # lazy: imports torch

        sim: Any = ExactSimulator.from_llm(llm, **options)
        scale_max = sim.scale_max
    else:
        if chosen != "prompt-logprobs":
            # The chat and JSON strategies have one prompt each (recorded as simulate-v1).
            options.pop("prompt_version", None)
        scale_max = options.pop("scale_max", None)
        if scale_max is None:
            scale_max = scale_for(caps)
        cls = {
            "prompt-logprobs": PromptLogprobSimulator,
            "chat-logprobs": ChatLogprobSimulator,
            "json": JsonSimulator,
        }[chosen]
        if cls is JsonSimulator:
            options.setdefault("json_mode", _json_mode(caps))
        sim = cls(llm, scale_max=scale_max, **options)
    record.update(strategy=chosen, scale_max=scale_max, capabilities=caps.to_manifest())
    return sim, record


__all__ = [
    "STRATEGIES",
    "ChatLogprobSimulator",
    "JsonSimulator",
    "PromptLogprobSimulator",
    "SimulatedExcerpt",
    "Simulator",
    "choose_strategy",
    "make_simulator",
    "scale_for",
    "scale_from_probe",
    "strategy_from_probe",
]
