"""Prices per million tokens, and the cost of a call.

The built-in table covers common hosted models; a JSON (or YAML, if PyYAML is
installed) file overrides or extends it — e.g. to declare a local model free:

    {"smollm2": {"input": 0, "output": 0},
     "my-org/llama-3.1-70b": {"input": 0.88, "output": 0.88}}

`cost()` returns None for a model with no known price, so callers can tell "free" (0.0)
from "unknown" (None) — `--max-cost` must refuse to run on unknown prices.

`UsageLLM` is the accounting layer `make_llm` puts outermost on every backend: it
prices each answer the backend produced (cache hits are already free) and keeps the
running total in `.usage`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import LLM, LLMResponse
from neuroscribe.llm.messages import Message
from neuroscribe.llm.wrappers import LLMWrapper
from neuroscribe.schema import Usage

PRICES_ENV = "NEUROSCRIBE_PRICES"


@dataclass(frozen=True)
class Price:
    input: float  # USD per 1M prompt tokens
    output: float  # USD per 1M completion tokens


# USD per 1M tokens (input, output), standard (non-batch, non-cached-input) tier.
# OpenAI list prices as published on openai.com/api/pricing, taken 2025-08; check before
# relying on them for budgets — override with a file when in doubt.
BUILTIN_PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4-turbo": Price(10.00, 30.00),
    "gpt-4": Price(30.00, 60.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    "gpt-3.5-turbo-instruct": Price(1.50, 2.00),  # the legacy /completions model with echo
    "davinci-002": Price(2.00, 2.00),
    "babbage-002": Price(0.40, 0.40),
    "o1": Price(15.00, 60.00),
    "o1-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),  # after the 2025-06 price cut
    "o3-mini": Price(1.10, 4.40),
    "o4-mini": Price(1.10, 4.40),
    "gpt-5": Price(1.25, 10.00),  # 2025-08, not re-checked since
    "gpt-5-mini": Price(0.25, 2.00),  # 2025-08, not re-checked since
    "gpt-5-nano": Price(0.05, 0.40),  # 2025-08, not re-checked since
    # Open-weight models on common hosts (Together AI "Turbo" list prices, 2025-08;
    # UNSURE — hosts differ and change often; override with a file for real budgets).
    "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo": Price(0.18, 0.18),
    "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo": Price(0.88, 0.88),
}

# Dated snapshots ("gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18") cost what their base does.
_SNAPSHOT = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


def load_prices(path: str | os.PathLike[str] | None = None) -> dict[str, Price]:
    """The built-in table updated with `path` (or `$NEUROSCRIBE_PRICES`) if given."""
    table = dict(BUILTIN_PRICES)
    path = path or os.environ.get(PRICES_ENV)
    if path:
        table.update(read_price_file(path))
    return table


def read_price_file(path: str | os.PathLike[str]) -> dict[str, Price]:
    """Read `{model: {"input": usd_per_1m, "output": usd_per_1m}}` from JSON or YAML."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read price file {p}: {exc.strerror}") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml  # type: ignore[import-untyped]
            except ImportError:
                raise ConfigError(
                    f"{p}: YAML price files need PyYAML (pip install pyyaml); or use JSON"
                ) from None
            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{p}: not valid JSON/YAML: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("models"), dict):
        data = data["models"]
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected an object mapping model names to prices")
    out: dict[str, Price] = {}
    for model, entry in data.items():
        if str(model).startswith("_"):  # "_comment" keys
            continue
        try:
            inp, outp = float(entry["input"]), float(entry["output"])
        except (TypeError, KeyError, ValueError):
            raise ConfigError(
                f'{p}: model {model!r} needs numeric "input" and "output" prices per 1M tokens'
            ) from None
        if inp < 0 or outp < 0 or inp != inp or outp != outp:
            raise ConfigError(f"{p}: model {model!r} has a negative or NaN price")
        out[str(model)] = Price(inp, outp)
    return out


def price_for(model: str, table: dict[str, Price] | None = None) -> Price | None:
    """The price of `model`: exact name, then without a provider prefix / snapshot date."""
    table = table if table is not None else load_prices()
    candidates = [model]
    if "/" in model and model not in table:
        candidates.append(model.split("/")[-1])  # "openai/gpt-4o" → "gpt-4o"
    for name in list(candidates):
        base = _SNAPSHOT.sub("", name)
        if base != name:
            candidates.append(base)
    for name in candidates:
        if name in table:
            return table[name]
    return None


def cost(
    model: str,
    prompt_tokens: int,
    completion_tokens: int,
    table: dict[str, Price] | None = None,
) -> float | None:
    """USD cost of one call, or None when the model's price is unknown."""
    price = price_for(model, table)
    if price is None:
        return None
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


PriceTable = dict[str, Price]


class UsageLLM(LLMWrapper):
    """Prices every answer and keeps the running `usage` total of a backend's calls.

    `prices` is a table, a price file, or None (built-in + $NEUROSCRIBE_PRICES);
    `priced=False` leaves `cost_usd` as the backend set it (in-process models are not
    priced). The price is looked up by the spec, then by the model the server says it
    served (`raw["model"]`).
    """

    def __init__(
        self,
        inner: LLM,
        *,
        prices: PriceTable | str | os.PathLike[str] | None = None,
        priced: bool = True,
    ):
        super().__init__(inner)
        self.prices: PriceTable | None = None
        if priced:
            self.prices = prices if isinstance(prices, dict) else load_prices(prices)
        self.usage = Usage()  # running total over this object's calls

    async def chat(self, messages: Sequence[Message], **params: Any) -> LLMResponse:
        return self._account(await self.inner.chat(messages, **params))

    async def complete(self, prompt: str, **params: Any) -> LLMResponse:
        return self._account(await self.inner.complete(prompt, **params))

    def _account(self, response: LLMResponse) -> LLMResponse:
        u = response.usage
        if self.prices is not None and u.requests and u.cost_usd is None:
            price = cost(self.spec, u.prompt_tokens, u.completion_tokens, self.prices)
            served = (response.raw or {}).get("model")
            if price is None and served and served != self.spec:
                price = cost(str(served), u.prompt_tokens, u.completion_tokens, self.prices)
            response.usage = u = u.model_copy(update={"cost_usd": price})
        self.usage = self.usage.add(u)
        return response
