"""Simulation strategies for OpenAI-compatible endpoints.

- `PromptLogprobSimulator` ("prompt-logprobs"): the reference's all-at-once method.
  One request per excerpt with `unknown` in every value slot; the prompt's own top
  logprobs at each slot give the value distribution (`echo` on /completions as
  llama.cpp and legacy OpenAI serve it, or vLLM's `prompt_logprobs`).
- `ChatLogprobSimulator` ("chat-logprobs"): for chat-only APIs with `top_logprobs` on
  generated tokens; the model writes `token<TAB>value` lines and the digit
  distribution at each value gives the expected value.
- `JsonSimulator` ("json"): structured output without logprobs, one integer per token,
  validated against the excerpt; a mismatch is asked again, then reported.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

from neuroscribe.errors import OutputError
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import LLM, TokenLogprob, clip_raw
from neuroscribe.prompts import (
    SIMULATE_PROMPT_VERSION,
    activations_json_schema,
    build_chat_simulation_messages,
    build_json_simulation_messages,
    build_simulation_prompt,
)
from neuroscribe.prompts.simulate import default_examples, simulation_style
from neuroscribe.schema import Usage
from neuroscribe.scorer import digit_distribution, expected_value
from neuroscribe.simulator.base import BaselineCache, SimulatedExcerpt
from neuroscribe.simulator.readout import apply_style, readouts
from neuroscribe.simulator.slots import find_echo_slots, find_generated_values

TOP_LOGPROBS = 15


# An excerpt whose slots mostly have no value token is not a simulation of it.
MAX_MISSING_FRACTION = 0.5


def _read_distributions(
    positions: Sequence[TokenLogprob], where: str, scale_max: int
) -> tuple[list[float | None], list[list[float] | None]]:
    """Expected value and distribution at each slot; None where no value token is listed.

    Weak simulators sometimes put all of a slot's top-k mass on other tokens. Those slots
    are marked missing (and left out of the scores) rather than guessed; more than
    MAX_MISSING_FRACTION of them fails the excerpt.
    """
    expected: list[float | None] = []
    dists: list[list[float] | None] = []
    missing = []
    for k, pos in enumerate(positions):
        dist = digit_distribution(pos.top_logprobs, scale_max)
        if dist is None:
            missing.append(k)
        dists.append(dist)
        expected.append(None if dist is None else expected_value(dist))
    if len(missing) > MAX_MISSING_FRACTION * len(positions):
        raise OutputError(
            f"{where}: no value token among the top {TOP_LOGPROBS} logprobs at "
            f"{len(missing)} of {len(positions)} slots (first: token {missing[0]})"
        )
    return expected, dists


class _Base:
    strategy = ""

    def __init__(
        self,
        llm: LLM,
        *,
        scale_max: int = 10,
        n_examples: int | None = 2,
        max_attempts: int = 2,
        max_prompt_tokens: int | None = None,
    ) -> None:
        self.llm = llm
        self.spec = llm.spec
        self.scale_max = scale_max
        self.n_examples = 2 if n_examples is None else n_examples
        self.max_attempts = max_attempts
        self.max_prompt_tokens = max_prompt_tokens
        self.prompt_version = SIMULATE_PROMPT_VERSION

    async def simulate(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        results = await asyncio.gather(
            *(self._simulate_one(explanation, t) for t in excerpts), return_exceptions=True
        )
        usage = Usage()
        first: tuple[int, OutputError] | None = None
        for k, r in enumerate(results):
            if isinstance(r, OutputError):
                usage = usage.add(r.usage or Usage())
                first = first or (k, r)
            elif isinstance(r, BaseException):
                raise r
            else:
                usage = usage.add(r.usage)
        if first is not None:
            k, e = first
            # Every excerpt's tokens were spent, the failed ones included.
            raise OutputError(f"excerpt {k}: {e}", raw=e.raw, usage=usage)
        return results  # type: ignore[return-value]

    async def _simulate_one(self, explanation: str, tokens: Sequence[str]) -> SimulatedExcerpt:
        raise NotImplementedError


class PromptLogprobSimulator(_Base):
    """All at once from the prompt's own logprobs; any `SimulationStyle` (prompt version).

    A style's readout and contrast are applied exactly as the exact simulator applies
    them (`simulator.readout`), so both paths give the same numbers for the same model.
    """

    strategy = "prompt-logprobs"

    def __init__(self, llm: LLM, *, prompt_version: str | None = None, **kw: Any) -> None:
        super().__init__(llm, **kw)
        self.style = simulation_style(prompt_version)
        self.prompt_version = self.style.version
        if kw.get("n_examples") is None:
            self.n_examples = default_examples(self.style)
        self._baselines = BaselineCache()

    async def simulate(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        results = await super().simulate(explanation, excerpts)
        if self.style.readout == "expected" and self.style.contrast is None:
            return results
        baseline: list[list[float | None]] | None = None
        base_usage = Usage()
        if self.style.contrast is not None:
            baseline, base_usage = await self._baselines.aget_or_compute(excerpts, self._baseline)
        return apply_style(results, self.style.readout, baseline, base_usage)

    async def _baseline(self, excerpts: Sequence[Sequence[str]]) -> tuple[list, Usage]:
        assert self.style.contrast is not None
        return readouts(await super().simulate(self.style.contrast, excerpts), self.style.readout)

    async def _simulate_one(self, explanation: str, tokens: Sequence[str]) -> SimulatedExcerpt:
        prompt = build_simulation_prompt(
            explanation,
            tokens,
            scale_max=self.scale_max,
            n_examples=self.n_examples,
            max_prompt_tokens=self.max_prompt_tokens,
            version=self.prompt_version,
        )
        # max_tokens=1: llama.cpp reads 0 as "until the context is full".
        resp = await self.llm.complete(
            prompt.text(), max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS, echo=True
        )
        choice = resp.choices[0]
        if not choice.prompt_tokens:
            raise OutputError("the endpoint returned no prompt logprobs (echo unsupported?)")
        try:
            slots = find_echo_slots(
                [t.token for t in choice.prompt_tokens], len(tokens), slot_text=prompt.slot
            )
            expected, dists = _read_distributions(
                [choice.prompt_tokens[i] for i in slots], "prompt logprobs", self.scale_max
            )
        except OutputError as e:
            raise OutputError(str(e), usage=resp.usage) from None
        return SimulatedExcerpt(expected, dists, self.scale_max, resp.usage)


class ChatLogprobSimulator(_Base):
    strategy = "chat-logprobs"

    async def _simulate_one(self, explanation: str, tokens: Sequence[str]) -> SimulatedExcerpt:
        messages = build_chat_simulation_messages(
            explanation, tokens, scale_max=self.scale_max, n_examples=self.n_examples
        )
        usage = Usage()
        problem = ""
        raw = ""
        for attempt in range(self.max_attempts):
            resp = await self.llm.chat(
                messages,
                temperature=0.0 if attempt == 0 else 0.7,
                max_tokens=12 * len(tokens) + 16,
                top_logprobs=TOP_LOGPROBS,
            )
            usage = usage.add(resp.usage)
            choice = resp.choices[0]
            raw = clip_raw(choice.text) or ""
            if not choice.tokens:
                problem = "the endpoint returned no logprobs for the generated tokens"
                discard_cached(self.llm, resp)
                continue
            values = find_generated_values([t.token for t in choice.tokens])
            if len(values) != len(tokens):
                problem = f"the answer has {len(values)} values for {len(tokens)} tokens"
                discard_cached(self.llm, resp)
                continue
            try:
                expected, dists = _read_distributions(
                    [choice.tokens[i] for i in values], "chat logprobs", self.scale_max
                )
            except OutputError as e:
                problem = str(e)
                discard_cached(self.llm, resp)
                continue
            return SimulatedExcerpt(expected, dists, self.scale_max, usage)
        raise OutputError(f"{problem} after {self.max_attempts} attempts", raw=raw, usage=usage)


def parse_activation_json(text: str, n_tokens: int, scale_max: int) -> list[float]:
    """Validate a JSON answer: exactly one number in 0..scale_max per token."""
    raw = clip_raw(text)  # what an error carries: never megabytes
    try:
        obj: Any = json.loads(text)
    except json.JSONDecodeError as e:
        raise OutputError(f"the answer is not valid JSON ({e.msg})", raw=raw) from None
    values = obj.get("activations") if isinstance(obj, dict) else obj
    if not isinstance(values, list):
        raise OutputError('the answer has no "activations" list', raw=raw)
    if len(values) != n_tokens:
        raise OutputError(f"the answer has {len(values)} values for {n_tokens} tokens", raw=raw)
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= scale_max:
            raise OutputError(f"value {v!r} is not a number in 0..{scale_max}", raw=raw)
        out.append(float(v))
    return out


class JsonSimulator(_Base):
    strategy = "json"

    def __init__(self, llm: LLM, *, json_mode: str = "json_schema", **kw: Any) -> None:
        super().__init__(llm, **kw)
        self.json_mode = json_mode

    def _response_format(self, n_tokens: int) -> dict[str, Any]:
        schema = activations_json_schema(n_tokens, self.scale_max)
        if self.json_mode == "json_object":
            # llama.cpp's server turns a schema given here into a grammar.
            return {"type": "json_object", "schema": schema}
        return {
            "type": "json_schema",
            "json_schema": {"name": "activations", "schema": schema},
        }

    async def _simulate_one(self, explanation: str, tokens: Sequence[str]) -> SimulatedExcerpt:
        messages = build_json_simulation_messages(
            explanation, tokens, scale_max=self.scale_max, n_examples=self.n_examples
        )
        usage = Usage()
        last: OutputError | None = None
        for attempt in range(self.max_attempts):
            resp = await self.llm.chat(
                messages,
                temperature=0.0 if attempt == 0 else 0.7,
                max_tokens=4 * len(tokens) + 32,
                response_format=self._response_format(len(tokens)),
            )
            usage = usage.add(resp.usage)
            try:
                values = parse_activation_json(resp.choices[0].text, len(tokens), self.scale_max)
            except OutputError as e:
                last = e
                discard_cached(self.llm, resp)
                continue
            return SimulatedExcerpt(values, None, self.scale_max, usage)
        assert last is not None
        raise OutputError(f"{last} after {self.max_attempts} attempts", raw=last.raw, usage=usage)
