"""Ground truth for scores: synthetic units with known explanations, and the check that
measures whether a simulator (or an explainer) recovers them."""

from neuroscribe.groundtruth.suite import (
    FalseExplanation,
    GroundTruthUnit,
    SuiteExcerpt,
    builtin_suite_path,
    load_suite,
    select,
    write_suite,
)

__all__ = [
    "FalseExplanation",
    "GroundTruthUnit",
    "SuiteExcerpt",
    "builtin_suite_path",
    "load_suite",
    "select",
    "write_suite",
]
