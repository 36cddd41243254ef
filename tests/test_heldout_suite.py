"""bench/data/heldout-val.jsonl: the held-out rules that choose simulator training stages.

The file is what `check simulator --suite` reads; the rules that made it live in
bench/heldout_suite.py. These tests keep the two in step and keep the file what its
README section says it is: tuning data on concepts no test unit names.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from neuroscribe.groundtruth.suite import load_suite

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, mod)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def units():
    return load_suite(BENCH / "data" / "heldout-val.jsonl")


def test_every_unit_is_tuning_data_apart_from_the_builtin_suite(units):
    builtin = load_suite()
    assert len(units) >= 25
    assert {u.split for u in units} == {"dev"}  # never a report split
    assert not {u.id for u in units} & {u.id for u in builtin}
    assert not {u.explanation for u in units} & {u.explanation for u in builtin}
    assert all(len(u.false_explanations) >= 2 for u in units)


def test_no_text_names_a_test_half_concept(units):
    """The training script's own filter: a text it would drop names a test concept."""
    allowed = _module("finetune_simulator").allowed
    for u in units:
        for text in (u.explanation, *(f.text for f in u.false_explanations)):
            assert allowed(text), (u.id, text)


def test_stored_activations_are_the_rules_applied_to_the_tokens(units):
    specs = {s.id: s for s in _module("heldout_suite").UNITS}
    assert {u.id for u in units} <= set(specs)
    for u in units:
        spec = specs[u.id]
        assert u.explanation == spec.true.explanation
        for ex in u.excerpts:
            assert ex.activations == spec.true(ex.tokens), u.id
