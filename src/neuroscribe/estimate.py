"""`--dry-run`: count the tokens a job would send and price them, sending nothing.

The prompts are built exactly as the stages build them (same builders, same splits,
same skip-if-done rules), then counted with the model's tokenizer where it is known:

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
from pathlib import Path
from typing import Any

from neuroscribe.llm.base import is_local_spec
from neuroscribe.llm.pricing import Price, cost, load_prices
from neuroscribe.prompts import (
    build_chat_simulation_messages,
    build_explain_prompt,
    build_json_simulation_messages,
    build_simulation_prompt,
)
from neuroscribe.schema import Explanation, NeuronRecord, SequenceSimulation
from neuroscribe.simulator import scale_from_probe, strategy_from_probe
from neuroscribe.splits import SplitConfig, split_record

# A typical explanation (~13 tokens) stands in for explanations a `run` has not made yet.
TYPICAL_EXPLANATION = "the word 'the' and other determiners at the start of a noun phrase"


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
        return sum(3 + self._count(m.get("content", "")) for m in messages) + 3


def chars_per_4(text: str) -> int:
    """The fallback estimate: one token per 4 characters (at least 1 for non-empty text)."""
    return math.ceil(len(text) / 4)


def token_counter(spec: str) -> TokenCounter:
    """The best token counter available for a model spec (see the module docstring)."""
    if is_local_spec(spec):
        from transformers import AutoTokenizer

        from neuroscribe.llm.local import chat_prompt_ids, resolve_local_spec

        path = resolve_local_spec(spec)
        tok = AutoTokenizer.from_pretrained(path)
        return TokenCounter(
            f"hf:{path}",
            lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
            lambda msgs: len(chat_prompt_ids(tok, msgs)),
        )
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
        if is_local_spec(self.model):
            self.cost_usd = 0.0  # local compute is not priced
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


def estimate_explain(
    records: Sequence[NeuronRecord],
    spec: str,
    *,
    splits: SplitConfig,
    n_samples: int = 1,
    max_tokens: int = 60,
    n_examples: int = 3,
    max_prompt_tokens: int | None = None,
    skip_units: set[str] | None = None,
    counter: TokenCounter | None = None,
    prices: dict[str, Price] | None = None,
) -> StageEstimate:
    """Tokens and cost of explaining `records` (units in `skip_units` are already done)."""
    counter = counter or token_counter(spec)
    est = StageEstimate("explain", spec, tokenizer=counter.name)
    for rec in records:
        if skip_units and rec.unit_id in skip_units:
            continue
        train = split_record(rec, splits).train
        prompt = build_explain_prompt(
            [(e.record.tokens, e.record.activations) for e in train],
            max_prompt_tokens=max_prompt_tokens,
            n_examples=n_examples,
        )
        est.units += 1
        est.requests += 1  # one request asks for all n samples (n=...)
        est.prompt_tokens += counter.chat(prompt.messages)
        est.completion_tokens += n_samples * max_tokens
    est.notes.append(f"completion tokens are the upper bound max_tokens={max_tokens} per sample")
    est.price(prices if prices is not None else load_prices())
    return est


def _simulation_tokens(
    counter: TokenCounter,
    strategy: str,
    explanation: str,
    tokens: Sequence[str],
    scale_max: int,
    n_examples: int,
) -> tuple[int, int]:
    """(prompt, completion) tokens of simulating one excerpt with one strategy."""
    if strategy in ("prompt-logprobs", "exact"):
        text = build_simulation_prompt(
            explanation, tokens, scale_max=scale_max, n_examples=n_examples
        ).text()
        return counter.text(text), 1
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


def resolve_strategy(
    spec: str, strategy: str, probe: dict[str, Any] | None
) -> tuple[str, int, str]:
    """The strategy and value scale a job would use, without probing the endpoint.

    Mirrors `make_simulator`: a stored probe (from the run manifest) decides `auto`;
    without one, `auto` on an API model is assumed to be chat-logprobs (said in a note).
    """
    if is_local_spec(spec):
        from transformers import AutoTokenizer

        from neuroscribe.llm.local import resolve_local_spec
        from neuroscribe.simulator.exact import value_token_ids

        tokenizer = AutoTokenizer.from_pretrained(resolve_local_spec(spec))
        return "exact", value_token_ids(tokenizer)[0], ""
    note = ""
    if strategy == "auto":
        if probe:
            strategy = strategy_from_probe(probe)
        else:
            strategy = "chat-logprobs"
            note = "strategy auto is not probed in a dry run: assumed chat-logprobs (--strategy)"
    return strategy, scale_from_probe(probe or {}), note


def estimate_simulate(
    records: Sequence[NeuronRecord],
    explanations: Sequence[Explanation],
    spec: str,
    *,
    splits: SplitConfig,
    strategy: str = "auto",
    probe: dict[str, Any] | None = None,
    n_examples: int = 2,
    planned_units: Sequence[str] = (),
    n_samples: int = 1,
    done_explanations: set[str] | None = None,
    counter: TokenCounter | None = None,
    prices: dict[str, Price] | None = None,
) -> StageEstimate:
    """Tokens and cost of simulating `explanations` (plus, for `run`, the explanations
    `planned_units` will get, `n_samples` each, at a typical explanation's length)."""
    counter = counter or token_counter(spec)
    strategy, scale_max, note = resolve_strategy(spec, strategy, probe)
    est = StageEstimate("simulate", spec, tokenizer=f"{counter.name}, {strategy}")
    if note:
        est.notes.append(note)
    by_unit = {r.unit_id: r for r in records}
    jobs: list[tuple[str, str]] = [
        (e.unit_id, e.text)
        for e in explanations
        if e.unit_id in by_unit and e.explanation_id not in (done_explanations or set())
    ]
    jobs += [(u, TYPICAL_EXPLANATION) for u in planned_units for _ in range(n_samples)]
    if planned_units:
        est.notes.append(
            f"explanations not written yet are counted at a typical length "
            f"({counter.text(TYPICAL_EXPLANATION)} tokens)"
        )
    held_of: dict[str, list] = {}
    for unit, text in jobs:
        if unit not in held_of:
            held_of[unit] = split_record(by_unit[unit], splits).held_out
        est.units += 1
        for x in held_of[unit]:
            p, c = _simulation_tokens(
                counter, strategy, text, x.record.tokens, scale_max, n_examples
            )
            est.requests += 1
            est.prompt_tokens += p
            est.completion_tokens += c
    est.price(prices if prices is not None else load_prices())
    return est


def done_simulations(path: Path, spec: str) -> set[str]:
    """Explanations already simulated by `spec` (any configuration) in simulations.jsonl."""
    from neuroscribe.jsonl import read_jsonl_if_exists

    return {
        s.explanation_id
        for s in read_jsonl_if_exists(path, SequenceSimulation)
        if s.simulator == spec
    }


def total_cost(estimates: Sequence[StageEstimate]) -> float | None:
    """The sum of the stages' costs, or None if any stage's price is unknown."""
    costs = [e.cost_usd for e in estimates]
    return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)
