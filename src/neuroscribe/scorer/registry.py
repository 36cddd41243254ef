"""Scorer names → factories. A new scorer is one module plus one line here.

Factories are imported lazily (by dotted path), so `neuroscribe.scorer` stays light and
free of import cycles: the simulation scorer pulls in the simulators and prompts.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from neuroscribe.errors import ConfigError

# name -> "module:Class": the class has `async build(llm, **options)` (a live scorer) and
# `planned(spec, probe=..., **options) -> (scorer, note)` for dry runs (no model, no calls).
SCORERS: dict[str, str] = {
    "simulation": "neuroscribe.scorer.simulation:SimulationScorer",
    "detection": "neuroscribe.scorer.detection:DetectionScorer",
    "fuzzing": "neuroscribe.scorer.fuzzing:FuzzingScorer",
    "intruder": "neuroscribe.scorer.intruder:IntruderScorer",
    "embedding": "neuroscribe.scorer.embedding:EmbeddingScorer",
    "logit-lens": "neuroscribe.scorer.logit_lens:LogitLensScorer",
    "steering": "neuroscribe.scorer.steering:SteeringScorer",
    # Image units (neuroscribe.vision): simulate from captions or pixels; CLIP, no LLM.
    "image-simulation": "neuroscribe.vision.simulate:ImageSimulationScorer",
    "clip-similarity": "neuroscribe.vision.clip_similarity:ClipSimilarityScorer",
    "caption-similarity": "neuroscribe.vision.clip_similarity:CaptionSimilarityScorer",
}


def register_scorer(name: str, factory: str | Callable[..., Any]) -> None:
    """Register a scorer factory under `name` (a callable, or a "module:attr" path)."""
    SCORERS[name] = factory  # type: ignore[assignment]


def scorer_factory(name: str) -> Callable[..., Any]:
    if name not in SCORERS:
        raise ConfigError(f"unknown scorer {name!r}; choose one of {', '.join(sorted(SCORERS))}")
    target: Any = SCORERS[name]
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def stage_name(scorer: str, default: str | None = None) -> str:
    """The stage a scorer writes its usage and summary under (`simulate` for simulation,
    `score-<name>` for the others); `default` (else `score-<name>`) for a name this
    process cannot load, e.g. a plug-in of another installation."""
    from neuroscribe.errors import NeuroscribeError

    fallback = default if default is not None else f"score-{scorer}"
    try:
        return getattr(scorer_factory(scorer), "stage", fallback)
    except NeuroscribeError:
        return fallback
