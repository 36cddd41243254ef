"""Explainers: a unit's top-activating train excerpts in, short explanations out.

`base` holds the `Explainer` interface, `token_rows` today's explainer (the
reference's `token<TAB>value` prompt), `baselines` the token-lookup and random
explainers (no LLM), `clean` the answer cleaning and non-explanation check shared by
all, `registry` the names.
"""

from neuroscribe.explainer.base import Explainer, ExplainOutcome, ExplainTask
from neuroscribe.explainer.baselines import (
    BaselineConfig,
    RandomExplainer,
    TokenLookupExplainer,
)
from neuroscribe.explainer.clean import (
    clean_explanation,
    explanation_or_reason,
    is_copied_example,
    why_not_explanation,
)
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
    "BaselineConfig",
    "ExplainOutcome",
    "ExplainTask",
    "Explainer",
    "ExplainerConfig",
    "RandomExplainer",
    "TokenLookupExplainer",
    "TokenRowExplainer",
    "clean_explanation",
    "explain_excerpts",
    "explainer_factory",
    "explanation_or_reason",
    "is_copied_example",
    "register_explainer",
    "why_not_explanation",
]
