"""The ground-truth explainer check with best-of-k and revision (fake LLMs, real rules).

The explainer and simulator are in-process fakes with scripted answers; the suite unit
and, for revision, the unit's activations on proposed texts are the real built-in rule.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from neuroscribe.config import RunConfig
from neuroscribe.errors import ConfigError
from neuroscribe.groundtruth.probe import RuleProbe
from neuroscribe.groundtruth.runner import check_explainer_async, unit_record
from neuroscribe.groundtruth.suite import load_suite, write_suite
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM


def _text(messages) -> str:
    return "\n".join(m["content"] for m in messages if isinstance(m["content"], str))


def simulator_answers(request, **params) -> str:
    """Predicts 9 on digit tokens when the explanation says "digits", else 0 everywhere."""
    text = _text(request)
    fmt = params["response_format"]
    schema = fmt.get("schema") or fmt["json_schema"]["schema"]
    rows = text.rsplit("<start>\n", 1)[-1].split("\n<end>")[0].split("\n")
    assert len(rows) == schema["properties"]["activations"]["minItems"]
    digits = "digits written out" in text
    return json.dumps({"activations": [9 if digits and re.search(r"\d", r) else 0 for r in rows]})


def explainer_answers(request, **params) -> str:
    text = _text(request)
    if "design tests" in text:
        return "ACTIVE: The year 1990 and 42 apples.\nSILENT: Nothing but words here."
    if "was tested on new texts" in text:
        return "digits written out as numerals"
    # Sampled: a wrong candidate first, the right one second.
    return ["vowels at the start of words", "digits written out as numerals"][
        params.get("index", 0) % 2
    ]


@pytest.fixture
def suite(tmp_path):
    unit = next(u for u in load_suite() if u.id == "digits")
    path = tmp_path / "suite.jsonl"
    write_suite(path, [unit])
    return path


def _check(suite, method: str, **select):
    config = RunConfig.build(
        run_dir="unused",
        explain={
            "model": "fake:explainer",
            "explainer": method,
            "settings": {"n_examples": 0, "max_attempts": 1, "temperature": 0.0},
            "select": {"k": 2, **select},
        },
        score={"model": "fake:sim", "strategy": "json", "n_examples": 0},
    )
    explain = FakeLLM("fake:explainer", answers=explainer_answers)
    sim = FakeLLM(
        "fake:sim", answers=simulator_answers, capabilities=Capabilities(json_object=True)
    )
    report = asyncio.run(
        check_explainer_async(config, suite=suite, explain_llm=explain, simulate_llm=sim)
    )
    return report, explain


def test_single_sample_keeps_the_first_answer_and_misses_the_rule(suite):
    report, _ = _check(suite, "token-rows")
    (row,) = report.units
    assert row.explanation == "vowels at the start of words" and not row.recovered


def test_best_of_k_chooses_on_explain_excerpts_and_recovers_the_rule(suite):
    report, _ = _check(suite, "best-of-k")
    (row,) = report.units
    assert row.explanation == "digits written out as numerals"
    assert row.recovered and report.recovery_rate == 1.0 and report.method == "best-of-k"
    # Choosing cost simulator tokens, counted in the unit's usage.
    assert row.usage.requests > 1


def test_revision_probes_the_known_rule_and_recovers_it(suite):
    report, explain = _check(suite, "revision", rounds=1)
    (row,) = report.units
    assert row.explanation == "digits written out as numerals" and row.recovered
    assert any("was tested on new texts" in _text(c.messages) for c in explain.calls)
    # What the explainer was shown is the rule's response: 10 on "1990", 0 on words.
    shown = next(_text(c.messages) for c in explain.calls if "tested on new" in _text(c.messages))
    assert "expected active: The year 1990 and 42 apples. → 10" in shown
    assert "expected silent: Nothing but words here. → 0" in shown


def test_the_rule_probe_refuses_units_without_a_rule():
    unit = next(u for u in load_suite() if u.id == "digits")
    record = unit_record(unit).model_copy(update={"unit_id": "groundtruth/my-own"})
    with pytest.raises(ConfigError, match="no built-in rule"):
        RuleProbe().activations(record, ["x"])
