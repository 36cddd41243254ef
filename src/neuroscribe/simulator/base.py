"""The interface every simulation strategy implements."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from neuroscribe.schema import Usage


@dataclass
class SimulatedExcerpt:
    """Expected activation (0..scale_max) for every token of one excerpt.

    A None marks a token the simulator gave no value for; strategies keep these rare
    (an excerpt with too many is an OutputError) and the scorer leaves them out.
    """

    expected: list[float | None]
    distributions: list[list[float] | None] | None
    scale_max: int
    usage: Usage = field(default_factory=Usage)


class Simulator(Protocol):
    """Turns an explanation and excerpts (subject-model tokens) into expected activations.

    `simulate` takes all held-out excerpts of one explanation at once so a backend can
    share work between them (a prefix cache, batching, concurrent requests). It returns
    one result per excerpt, in order, or raises `OutputError` naming the excerpt that
    could not be simulated; it never fills in zeros.
    """

    strategy: str  # "echo-logprobs", "prompt-logprobs", "chat-logprobs", "json", "exact"
    spec: str  # the simulator model spec
    prompt_version: str

    async def simulate(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]: ...


class BaselineCache:
    """Predictions for the contrast explanation, per excerpt (keyed by its tokens).

    Every explanation of a unit is scored on the same held-out excerpts, so the contrast
    explanation's prediction on an excerpt is computed once and reused (bounded: the
    oldest entries go first). Only the first computation is charged in usage.
    """

    def __init__(self, max_entries: int = 4096) -> None:
        self._data: OrderedDict[tuple[str, ...], list[float | None]] = OrderedDict()
        self._max = max_entries

    def _split(self, excerpts: Sequence[Sequence[str]]):
        keys = [tuple(e) for e in excerpts]
        missing = list(dict.fromkeys(k for k in keys if k not in self._data))
        return keys, missing

    def _store(self, keys: Sequence[tuple[str, ...]], values: Sequence[list[float | None]]):
        for k, v in zip(keys, values, strict=True):
            self._data[k] = list(v)
            self._data.move_to_end(k)
        while len(self._data) > self._max:
            self._data.popitem(last=False)

    def _result(self, keys, fresh: dict) -> list[list[float | None]]:
        out = []
        for k in keys:
            v = fresh.get(k, self._data.get(k))
            assert v is not None
            out.append(v)
        return out

    def get_or_compute(
        self,
        excerpts: Sequence[Sequence[str]],
        compute: Callable[[list[tuple[str, ...]]], tuple[list[list[float | None]], Usage]],
    ) -> tuple[list[list[float | None]], Usage]:
        keys, missing = self._split(excerpts)
        usage = Usage()
        fresh: dict = {}
        if missing:
            values, usage = compute(missing)
            fresh = dict(zip(missing, values, strict=True))
            self._store(missing, values)
        return self._result(keys, fresh), usage

    async def aget_or_compute(
        self,
        excerpts: Sequence[Sequence[str]],
        compute: Callable[
            [list[tuple[str, ...]]], Awaitable[tuple[list[list[float | None]], Usage]]
        ],
    ) -> tuple[list[list[float | None]], Usage]:
        keys, missing = self._split(excerpts)
        usage = Usage()
        fresh: dict = {}
        if missing:
            values, usage = await compute(missing)
            fresh = dict(zip(missing, values, strict=True))
            self._store(missing, values)
        return self._result(keys, fresh), usage
