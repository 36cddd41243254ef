"""Explainer names → factories ("module:attr", imported when used)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from neuroscribe.errors import ConfigError

EXPLAINERS: dict[str, Any] = {
    "token-rows": "neuroscribe.explainer.token_rows:TokenRowExplainer",
    # Choosing on the validation split (explain.select: k, scorer, rounds).
    "best-of-k": "neuroscribe.explainer.best_of_k:BestOfKExplainer",
    "revision": "neuroscribe.explainer.revision:RevisionExplainer",
    # Baselines without an LLM: the yardstick and the floor of a comparison.
    "token-lookup": "neuroscribe.explainer.baselines:TokenLookupExplainer",
    "random": "neuroscribe.explainer.baselines:RandomExplainer",
    "image": "neuroscribe.vision.explain:ImageExplainer",  # image units: captions or pixels
}


def register_explainer(name: str, factory: str | Callable[..., Any]) -> None:
    EXPLAINERS[name] = factory


def explainer_factory(name: str) -> Callable[..., Any]:
    if name not in EXPLAINERS:
        raise ConfigError(
            f"unknown explainer {name!r}; choose one of {', '.join(sorted(EXPLAINERS))}"
        )
    target = EXPLAINERS[name]
    if callable(target):
        return target
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)
