"""Revision with counterexamples: proposals run through the real subject model.

The explainer and simulator are the in-process fake LLM (their answers are scripted);
the probe is the real `UnitProbe` on the embedded SmolLM2, so the activations the
explainer is shown are the unit's real ones on the texts it proposed.
"""

from __future__ import annotations

import asyncio

import pytest

from _fake_words import text_of, word_simulator
from neuroscribe.datasets.probe import UnitProbe
from neuroscribe.datasets.record import record_run
from neuroscribe.engine import run_stage
from neuroscribe.explainer.best_of_k import SelectConfig
from neuroscribe.explainer.revision import RevisionExplainer, probe_results
from neuroscribe.explainer.select import Selector
from neuroscribe.explainer.token_rows import ExplainerConfig
from neuroscribe.jsonl import read_jsonl
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.local import ModelStore
from neuroscribe.prompts.revise import parse_proposals, revision_messages
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.scorer.simulation import SimulationScorer
from neuroscribe.simulator.api import JsonSimulator
from neuroscribe.splits import SplitConfig
from neuroscribe.stages.explain import ExplainStage

DOCS = [
    "The cat sat on the mat and looked at the dog.",
    "Paris is the capital of France, and Rome is the capital of Italy.",
    "She sells sea shells by the sea shore.",
    "1, 2, 3, 4, 5, 6, 7, 8, 9, 10",
    "The quick brown fox jumps over the lazy dog.",
    "Rain fell all night; by morning the river had burst its banks.",
    "Photosynthesis turns light, water and carbon dioxide into sugar.",
    "He said: \"I'll be there at 5 o'clock.\"",
]
SPLITS = SplitConfig(
    n_train=2, n_test_top=1, n_test_random=1, n_calibration_top=0, n_calibration_random=0,
    n_validation_top=2, n_validation_random=1,
)  # fmt: skip
PROPOSALS = [
    ("The cat and the dog sat together.", "active"),
    ("Numbers: 1, 2, 3.", "silent"),
]


def test_proposals_parse_leniently_and_stay_bounded():
    answer = (
        "Sure! Here are tests:\n1. ACTIVE: the cat sat\n- silent - numbers 1 2 3\n"
        "ACTIVE: the cat sat\nACTIVE: " + "x" * 500 + "\nACTIVE: a third\nnoise"
    )
    got = parse_proposals(answer, 2)
    assert got[0] == ("the cat sat", "active") and got[1] == ("numbers 1 2 3", "silent")
    assert len(got[2][0]) == 200 and len(got) == 3  # deduplicated, capped, at most 2 a side


def test_results_are_shown_on_the_explain_scale_escaped():
    acts = [
        ActivationRecord(tokens=["a", "\n", "b"], activations=[0.0, 3.0, 1.0]),
        ActivationRecord(tokens=["c"], activations=[-1.0]),
    ]
    res = probe_results([("a\nb", "active"), ("c", "silent")], acts, scale=2.0)
    assert [(r.value, r.top_token) for r in res] == [(10, "\n"), (0, "c")]
    msgs = revision_messages([{"role": "user", "content": "X"}], 4, "cats", res)
    assert '- expected active: a\\nb → 10 on "\\n"' in msgs[-1]["content"]
    assert msgs[-2]["content"].endswith("find cats.")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus") / "docs.txt"
    corpus.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    out = tmp_path_factory.mktemp("rev") / "run"
    summary = record_run(
        out, layers=[1], corpus=str(corpus), max_tokens=10_000, excerpt_len=32,
        min_excerpt_len=1, batch_size=4, n_top=6, n_random=2, n_quantiles=0, max_units=2,
        device="cpu",
    )  # fmt: skip
    return out, read_jsonl(summary.files[0], NeuronRecord)


_text = text_of


def answers(request, **params) -> str:
    text = _text(request)
    if params.get("response_format"):  # the simulator: fires on the word it is told
        return word_simulator(text, params)
    if "design tests" in text:
        return "\n".join(f"{kind.upper()}: {t}" for t, kind in PROPOSALS)
    if "was tested on new texts" in text:
        return "the word the, revised"
    return "the word zebra"


def revision(llm, run_dir, **select) -> tuple[RevisionExplainer, UnitProbe]:
    """The revision explainer on `llm` (explainer and simulator), the real subject probe."""
    sim = JsonSimulator(llm, scale_max=9, n_examples=0, json_mode="json_object")
    scorer = SimulationScorer(sim, spec=llm.spec, strategy="json", scale_max=9, n_examples=0)
    probe = UnitProbe(run_dir=run_dir, store=ModelStore())
    explainer = RevisionExplainer(
        llm,
        ExplainerConfig(temperature=0.0, max_tokens=16, n_examples=0, max_attempts=1),
        select=SelectConfig(**select),
        selector=Selector(scorer),
        validation=(2, 1),
        probe=probe,
    )
    return explainer, probe


@pytest.mark.slow
def test_revision_runs_proposals_through_the_subject_and_keeps_the_lineage(recorded):
    run_dir, records = recorded
    llm = FakeLLM("fake:m", answers=answers, capabilities=Capabilities(json_object=True))
    explainer, probe = revision(llm, run_dir, rounds=2, n_probes=1)
    run = RunDir(run_dir)
    s = asyncio.run(
        run_stage(ExplainStage(explainer, records[:1], SPLITS), run, show_progress=False)
    )
    assert (s.done, s.failed) == (1, 0)
    (e,) = run.explanations()
    assert e.method == "revision" and [c.round for c in e.candidates] == [0, 1, 2]
    assert e.candidates[0].text == "the word zebra"
    assert e.candidates[1].text == "the word the, revised" and e.candidates[1].parent == 0
    # Round 1 scored below round 0 on validation, so round 2 revises round 0 again.
    assert e.candidates[1].validation_score < e.candidates[0].validation_score
    assert e.candidates[2].parent == 0
    # The probes are the unit's real activations on the proposed texts.
    real = probe.activations(records[0], [t for t, _ in PROPOSALS])
    shown = e.candidates[1].probes
    assert [p["text"] for p in shown] == [t for t, _ in PROPOSALS]
    assert [p["expected"] for p in shown] == ["active", "silent"]
    for p, r in zip(shown, real, strict=True):
        assert p["max_activation"] == pytest.approx(max(r.activations), abs=1e-5)
    # The kept one is the best on validation; its parent chain leads back to round 0.
    kept = next(i for i, c in enumerate(e.candidates) if c.selected)
    assert e.text == e.candidates[kept].text
    assert e.validation_score == max(
        c.validation_score for c in e.candidates if c.validation_score is not None
    )
    # Explainer calls: the first explanation, then a proposal and a revision per round.
    assert len([c for c in llm.calls if not c.params.get("response_format")]) == 5
    assert e.usage.prompt_tokens > 0 and e.selection_usage is not None


@pytest.mark.slow
def test_a_model_that_ignores_the_format_is_asked_one_side_at_a_time(recorded):
    run_dir, records = recorded

    def loose(request, **params) -> str:
        text = _text(request)
        if "design tests" in text:
            return "Here are some ideas about cats and numbers."  # no ACTIVE:/SILENT: lines
        if "Write one short sentence that contains" in text:
            return "- The cat sat on the mat.\nmore"
        if "Write one short sentence about something else" in text:
            return '"Numbers: 1, 2, 3."'
        return answers(request, **params)

    llm = FakeLLM("fake:m", answers=loose, capabilities=Capabilities(json_object=True))
    explainer, probe = revision(llm, run_dir, rounds=1, n_probes=2)
    run = RunDir(run_dir)
    before = len(run.explanations())
    asyncio.run(run_stage(ExplainStage(explainer, records[1:2], SPLITS), run, show_progress=False))
    e = run.explanations()[before]
    probes = e.candidates[1].probes
    # n=2 samples a side, identical sentences kept once; real activations alongside.
    assert [(p["text"], p["expected"]) for p in probes] == [
        ("The cat sat on the mat.", "active"),
        ("Numbers: 1, 2, 3.", "silent"),
    ]
    real = probe.activations(records[1], [p["text"] for p in probes])
    assert [p["max_activation"] for p in probes] == pytest.approx(
        [max(r.activations) for r in real], abs=1e-5
    )
    assert e.candidates[1].text == "the word the, revised"
