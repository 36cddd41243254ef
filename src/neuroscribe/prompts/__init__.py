"""Every prompt template and few-shot example, versioned."""

from neuroscribe.prompts.explain import (
    ANSWER_PREFIX,
    EXPLAIN_PROMPT_VERSION,
    ExplainPrompt,
    PromptTooLong,
    build_explain_prompt,
)
from neuroscribe.prompts.simulate import (
    SIMULATE_PROMPT_VERSION,
    UNKNOWN,
    SimulationPrompt,
    activations_json_schema,
    build_chat_simulation_messages,
    build_json_simulation_messages,
    build_simulation_prompt,
)

__all__ = [
    "ANSWER_PREFIX",
    "EXPLAIN_PROMPT_VERSION",
    "SIMULATE_PROMPT_VERSION",
    "UNKNOWN",
    "ExplainPrompt",
    "PromptTooLong",
    "SimulationPrompt",
    "activations_json_schema",
    "build_chat_simulation_messages",
    "build_explain_prompt",
    "build_json_simulation_messages",
    "build_simulation_prompt",
]
