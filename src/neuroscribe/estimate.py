"""`--dry-run`'s counting and pricing: tokens of the prompts a job would send.

What is sent comes from the stages themselves (`engine.estimate_stage`: the stage's
own plan, then each plug-in's `estimate` of one item, built with the same prompt
builders); this module counts those prompts with the model's tokenizer where it is
known:

- `hf:` specs: the model's own `transformers` tokenizer and chat template (exact);
- API model names: `tiktoken` when it is installed and has the model's encoding
  (OpenAI models; it downloads its BPE files once, so offline it may be unavailable);
- otherwise an estimate of 4 characters per token (English text; code and digits
  run denser), plus OpenAI's 3 tokens per chat message and 3 for the reply.

Completion tokens are what the answer is expected to hold: the explainer's
`max_tokens` per sample (an upper bound), one token per all-at-once simulation, and the
length of a well-formed answer for the chat and JSON simulators. Costs come from the
price table (`None` when the model's price is unknown; local `hf:` models cost 0).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuroscribe.llm.messages import counted_text
from neuroscribe.llm.pricing import Price, cost
from neuroscribe.prompts import (
    build_chat_simulation_messages,
    build_json_simulation_messages,
    build_simulation_prompt,
)

# --------------------------------------------------------------------------- tokenizers


@dataclass
class TokenCounter:
    """Counts tokens of text and of chat messages for one model."""

    name: str  # how it counts: "hf:<path>", "tiktoken:<encoding>" or "chars/4"
    _count: Callable[[str], int]
    _count_chat: Callable[[list[dict[str, str]]], int] | None = None

    def text(self, text: str) -> int:
        return self._count(text)

    def chat(self, messages: list[dict[str, str]]) -> int:
        if self._count_chat is not None:
            return self._count_chat(messages)
        # OpenAI's accounting: 3 tokens of framing per message, 3 to prime the reply.
        return sum(3 + self._count(counted_text(m)) for m in messages) + 3


def chars_per_4(text: str) -> int:
    """The fallback estimate: one token per 4 characters (at least 1 for non-empty text)."""
    return math.ceil(len(text) / 4)


def token_counter(spec: str) -> TokenCounter:
    """The best token counter available for a model spec (see the module docstring)."""
    from neuroscribe.llm.registry import backend_info

    exact = backend_info(spec).token_counter(spec)
    if exact is not None:
        count_text, count_chat, name = exact
        return TokenCounter(name, count_text, count_chat)
    try:
        import tiktoken  # type: ignore[import-not-found]

        try:
            enc = tiktoken.encoding_for_model(spec.split("/")[-1])
        except KeyError:
            enc = tiktoken.get_encoding("o200k_base")
        return TokenCounter(f"tiktoken:{enc.name}", lambda t: len(enc.encode(t)))
    except Exception:  # not installed, or its BPE file cannot be fetched offline
        return TokenCounter("chars/4", chars_per_4)


# --------------------------------------------------------------------------- estimates


@dataclass
class StageEstimate:
    """What one stage would send: units, requests, tokens and the expected cost."""

    stage: str
    model: str
    units: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0
    tokenizer: str = ""
    notes: list[str] = field(default_factory=list)

    def price(self, table: dict[str, Price]) -> None:
        from neuroscribe.llm.registry import backend_info

        if backend_info(self.model).free:
            self.cost_usd = 0.0  # in-process compute is not priced
        else:
            self.cost_usd = cost(self.model, self.prompt_tokens, self.completion_tokens, table)

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "model": self.model,
            "units": self.units,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
            "tokenizer": self.tokenizer,
            "notes": self.notes,
        }


def simulation_tokens(
    counter: TokenCounter,
    strategy: str,
    explanation: str,
    tokens: Sequence[str],
    scale_max: int,
    n_examples: int,
    prompt_version: str | None = None,
) -> tuple[int, int]:
    """(prompt, completion) tokens of simulating one excerpt with one strategy.

    A contrastive prompt version also simulates its contrast explanation on the excerpt;
    counted here in full (an upper bound: it is shared by a unit's explanations).
    """
    if strategy in ("prompt-logprobs", "exact"):
        from neuroscribe.prompts.simulate import simulation_style

        style = simulation_style(prompt_version or "simulate-v1")
        texts = [explanation] + ([style.contrast] if style.contrast is not None else [])
        total = 0
        for e in texts:
            total += counter.text(
                build_simulation_prompt(
                    e, tokens, scale_max=scale_max, n_examples=n_examples, version=style.version
                ).text()
            )
        return total, len(texts)
    if strategy == "chat-logprobs":
        msgs = build_chat_simulation_messages(
            explanation, tokens, scale_max=scale_max, n_examples=n_examples
        )
        answer = "".join(f"{t}\t0\n" for t in tokens)
        return counter.chat(msgs), counter.text(answer)
    msgs = build_json_simulation_messages(
        explanation, tokens, scale_max=scale_max, n_examples=n_examples
    )
    answer = json.dumps({"activations": [0] * len(tokens)})
    return counter.chat(msgs), counter.text(answer)


def total_cost(estimates: Sequence[StageEstimate]) -> float | None:
    """The sum of the stages' costs, or None if any stage's price is unknown."""
    costs = [e.cost_usd for e in estimates]
    return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
