"""Scorers: how good is an explanation? One interface, several plug-ins.

`neuroscribe.scorer.maths` holds the pure maths (re-exported here, so
`from neuroscribe.scorer import correlation` works); `base` the `Scorer` interface and
the generic score it produces; `simulation` the reference scorer (simulate the
held-out excerpts from the explanation, correlate with the truth); `registry` maps
scorer names to factories.
"""

from neuroscribe.scorer.base import ScoreOutcome, Scorer, ScoreTask, heldout_hash
from neuroscribe.scorer.maths import (
    Calibration,
    Correlation,
    ExcerptResult,
    ScoreResult,
    abs_dev_score,
    bootstrap_interval,
    correlation,
    digit_distribution,
    expected_value,
    fit_calibration,
    normalize_activations,
    r2_score,
    score_explanation,
)
from neuroscribe.scorer.registry import SCORERS, register_scorer

__all__ = [
    "SCORERS",
    "Calibration",
    "Correlation",
    "ExcerptResult",
    "ScoreOutcome",
    "ScoreResult",
    "ScoreTask",
    "Scorer",
    "abs_dev_score",
    "bootstrap_interval",
    "correlation",
    "digit_distribution",
    "expected_value",
    "fit_calibration",
    "heldout_hash",
    "normalize_activations",
    "r2_score",
    "register_scorer",
    "score_explanation",
]
