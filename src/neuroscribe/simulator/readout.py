"""From a slot's value distribution to a prediction, and the contrastive subtraction.

Pure functions shared by the exact (local) and prompt-logprobs (API) simulators, so the
same prompt version gives the same numbers on both paths for the same model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from neuroscribe.errors import ConfigError
from neuroscribe.schema import Usage

if TYPE_CHECKING:
    from neuroscribe.simulator.base import SimulatedExcerpt

READOUTS = ("expected", "p-active")


def read_slot(distribution: Sequence[float] | None, readout: str) -> float | None:
    """`expected`: Σ v·p over 0..max. `p-active`: P(value > 0) scaled to 0..max, so both
    live on the prompt's value scale (the viewer and calibration expect that)."""
    if distribution is None:
        return None
    scale_max = len(distribution) - 1
    if readout == "expected":
        return float(sum(v * p for v, p in enumerate(distribution)))
    if readout == "p-active":
        return float(scale_max * (1.0 - distribution[0]))
    raise ConfigError(f"unknown readout {readout!r}; choose one of {', '.join(READOUTS)}")


def read_excerpt(
    distributions: Sequence[Sequence[float] | None], readout: str
) -> list[float | None]:
    return [read_slot(d, readout) for d in distributions]


def contrast(
    predicted: Sequence[float | None], baseline: Sequence[float | None], *, clip: bool = True
) -> list[float | None]:
    """How much the explanation raises a token's prediction over a generic explanation's.

    `clip`: a token the explanation makes *less* likely than the prior gets 0, not a
    negative value — measured on the ground-truth suite's dev half, those decreases are
    noise (the explanation says what fires, not what is suppressed). A token missing on
    either side stays missing.
    """
    if len(predicted) != len(baseline):
        raise ValueError(f"{len(predicted)} predictions but {len(baseline)} baseline values")
    out: list[float | None] = []
    for p, b in zip(predicted, baseline, strict=True):
        if p is None or b is None:
            out.append(None)
        else:
            out.append(max(0.0, p - b) if clip else p - b)
    return out


def readouts(results: Sequence[SimulatedExcerpt], readout: str) -> tuple[list, Usage]:
    """Every excerpt's readout, and what simulating them cost (a contrast baseline)."""
    usage = Usage()
    for r in results:
        usage = usage.add(r.usage)
    return [read_excerpt(r.distributions or [], readout) for r in results], usage


def apply_style(
    results: list[SimulatedExcerpt],
    readout: str,
    baseline: Sequence[Sequence[float | None]] | None,
    baseline_usage: Usage,
) -> list[SimulatedExcerpt]:
    """Replace each excerpt's expected values by the style's readout (minus the baseline);
    the baseline's cost is charged to the first excerpt. One function for both paths."""
    for k, r in enumerate(results):
        pred = read_excerpt(r.distributions or [], readout)
        r.expected = contrast(pred, baseline[k]) if baseline is not None else pred
    if results:
        results[0].usage = results[0].usage.add(baseline_usage)
    return results
