"""The interface every simulation strategy implements."""

from __future__ import annotations

from collections.abc import Sequence
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
