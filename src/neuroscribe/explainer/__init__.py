"""Explainers: a unit's top-activating train excerpts in, short explanations out.

`base` holds the `Explainer` interface, `token_rows` today's explainer (the
reference's `token<TAB>value` prompt), `clean` the answer cleaning shared by all,
`registry` the names.
"""

from neuroscribe.explainer.base import Explainer, ExplainOutcome, ExplainTask
from neuroscribe.explainer.clean import clean_explanation, is_copied_example
from neuroscribe.explainer.registry import EXPLAINERS, explainer_factory, register_explainer
from neuroscribe.explainer.token_rows import (
    ANSWER_PREFIX,
    ExplainerConfig,
    TokenRowExplainer,
    explain_excerpts,
)

__all__ = [
    "ANSWER_PREFIX",
    "EXPLAINERS",
    "ExplainOutcome",
    "ExplainTask",
    "Explainer",
    "ExplainerConfig",
    "TokenRowExplainer",
    "clean_explanation",
    "explain_excerpts",
    "explainer_factory",
    "is_copied_example",
    "register_explainer",
]
