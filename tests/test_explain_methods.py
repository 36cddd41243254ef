"""Explainer prompt styles, the validation split and best-of-k selection (fast: fake LLM)."""

from __future__ import annotations

import asyncio
import re

import pytest

from _fake_words import text_of, word_simulator
from neuroscribe.engine import run_stage
from neuroscribe.errors import DataError
from neuroscribe.explainer.best_of_k import BestOfKExplainer, SelectConfig, best_index
from neuroscribe.explainer.clean import explanation_or_reason
from neuroscribe.explainer.select import Selector, Verdict
from neuroscribe.explainer.token_rows import ExplainerConfig, TokenRowExplainer
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM, tokenize
from neuroscribe.prompts.explain import build_explain_prompt
from neuroscribe.prompts.explain_styles import (
    EXPLAIN_STYLES,
    build_highlight_prompt,
    build_summary_prompt,
    highlighted_text,
    resolve_style,
    summary_tokens,
)
from neuroscribe.prompts.format import approx_token_count
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord, Usage
from neuroscribe.scorer.simulation import SimulationScorer
from neuroscribe.simulator.api import JsonSimulator
from neuroscribe.splits import SplitConfig, split_record
from neuroscribe.stages.explain import ExplainStage
from neuroscribe.stages.score import ScoreStage

# ------------------------------------------------------------------ prompt styles


def test_highlight_marks_runs_of_active_tokens_and_lists_them_once_per_excerpt():
    assert highlighted_text(["a", " red", " car", " x"], [0, 3, 5, 0]) == "a<< red car>> x"
    assert highlighted_text(["x<<y", " z"], [2, 0]) == "<<x‹‹y>> z"  # a token's own marks
    p = build_highlight_prompt([(["The", " red", "\n", " sky"], [0.0, 2.0, 0.0, 1.0])])
    target = p.messages[-1]["content"]
    assert p.prompt_version == "explain-highlight-v1"
    assert "Excerpt 1: The<< red>>\\n<< sky>>" in target  # one excerpt per line
    assert 'Activations: " red" 10, " sky" 5' in target
    assert p.text.endswith("the main thing this neuron does is find")


def test_summary_counts_high_tokens_and_shows_short_contexts():
    pairs = [([" a", " red", " b"], [0, 10, 0]), ([" c", " red", " d", " blue"], [0, 6, 0, 4])]
    assert summary_tokens(pairs) == [(" red", 2, 10)]  # blue (4) is under half the max
    p = build_summary_prompt([(t, [float(v) for v in a]) for t, a in pairs])
    target = p.messages[-1]["content"]
    assert '" red" ×2 (max 10)' in target
    assert "1.  a<< red>> b (10)" in target  # the token keeps its leading space
    assert p.prompt_version == "explain-summary-v1"


def _realistic(n: int = 5, length: int = 64) -> list[tuple[list[str], list[float]]]:
    words = [f" w{i % 17}" for i in range(length)]
    return [(words, [8.0 - k if i == 10 + k else 0.0 for i in range(length)]) for k in range(n)]


def test_summary_style_is_far_cheaper_than_token_rows_on_real_sized_excerpts():
    # Counted in word-and-punctuation pieces, as a BPE tokenizer roughly splits rows.
    rows = len(tokenize(build_explain_prompt(_realistic()).text))
    summary = len(tokenize(build_summary_prompt(_realistic()).text))
    highlight = len(tokenize(build_highlight_prompt(_realistic()).text))
    assert summary < rows / 2 and highlight < rows


@pytest.mark.parametrize("version", sorted(EXPLAIN_STYLES))
def test_every_style_drops_weak_excerpts_to_fit_and_names_its_version(version):
    full = EXPLAIN_STYLES[version](_realistic())
    budget = approx_token_count(full.text) - 1
    cut = EXPLAIN_STYLES[version](_realistic(), max_prompt_tokens=budget)
    assert cut.n_excerpts < full.n_excerpts and cut.prompt_version == version


def test_style_names_resolve_and_unknown_ones_are_refused():
    assert resolve_style("summary") == "explain-summary-v1"
    assert ExplainerConfig(prompt="highlight").prompt == "explain-highlight-v1"
    with pytest.raises(ValueError, match="unknown explainer prompt"):
        ExplainerConfig(prompt="poetry")


def test_an_echo_of_a_new_style_s_instructions_is_not_an_explanation():
    text, reason = explanation_or_reason(
        "Work out what the marked tokens have in common, using the surrounding text"
    )
    assert text is None and reason


def test_the_default_style_keeps_the_explain_key_space_of_earlier_runs():
    # Before styles existed the settings had no `prompt`; the v1 key must not move.
    settings = TokenRowExplainer(None, ExplainerConfig(), spec="m").config()["settings"]
    assert "prompt" not in settings
    a = ExplainStage(TokenRowExplainer(None, ExplainerConfig(), spec="m"), [], SplitConfig())
    b = ExplainStage(
        TokenRowExplainer(None, ExplainerConfig(prompt="summary"), spec="m"), [], SplitConfig()
    )
    assert a.config_hash != b.config_hash
    assert b.config()["prompt_version"] == "explain-summary-v1"


# ------------------------------------------------------------------ validation split


def _record(i: int = 0, n_top: int = 6, n_random: int = 4) -> NeuronRecord:
    def ex(word: str, value: float) -> ActivationRecord:
        return ActivationRecord(tokens=[" a", word, " b"], activations=[0.0, value, 0.0])

    return NeuronRecord(
        unit_id=f"m/0/{i}",
        most_positive_activation_records=[ex(f" w{i}", 9.0 - k) for k in range(n_top)],
        random_sample=[ex(f" r{k}", 0.0) for k in range(n_random)],
    )


def test_validation_is_disjoint_and_changes_no_other_split():
    rec = _record(n_top=20, n_random=20)
    on = split_record(rec, SplitConfig(n_validation_top=4, n_validation_random=4))
    off = split_record(rec, SplitConfig(n_validation_top=0, n_validation_random=0))
    ids = lambda xs: [x.excerpt_id for x in xs]  # noqa: E731
    assert (ids(on.train), ids(on.test), ids(on.calibration)) == (
        ids(off.train), ids(off.test), ids(off.calibration),
    )  # fmt: skip
    val = set(ids(on.validation))
    assert len(val) == 8 and off.validation == []
    assert not val & set(ids(on.train) + ids(on.held_out))
    # The strongest top excerpts left over: the next ones by activation.
    assert ids(on.validation)[:4] == ["top:12", "top:13", "top:14", "top:15"]
    # Validation is not in any stage's key space: the score key is the same.
    assert SplitConfig(n_validation_top=9).hashed() == SplitConfig().hashed()


# ------------------------------------------------------------------ best-of-k

SPLITS = SplitConfig(
    n_train=1, n_test_top=1, n_test_random=1, n_calibration_top=0, n_calibration_random=0,
    n_validation_top=2, n_validation_random=1,
)  # fmt: skip


_text = text_of


def answers(request, **params) -> str:
    text = _text(request)
    if params.get("response_format"):  # the simulator: fires on the word it is told
        return word_simulator(text, params)
    # The explainer: sample 0 names a wrong word, sample 1 the right one, sample 2
    # answers nothing usable.
    words = re.findall(r"\bw\d+\b", text.rsplit("Neuron", 1)[-1])
    index = params.get("index", 0)
    return ["the word q1", f"the word {words[0]}", ""][index % 3]


def fake(spec: str = "fake:m") -> FakeLLM:
    return FakeLLM(spec, answers=answers, capabilities=Capabilities(json_object=True))


def simulation_scorer(llm) -> SimulationScorer:
    sim = JsonSimulator(llm, scale_max=9, n_examples=0, json_mode="json_object")
    return SimulationScorer(sim, spec=llm.spec, strategy="json", scale_max=9, n_examples=0)


def best_of_k(llm, k: int = 3, selector_llm=None) -> BestOfKExplainer:
    cfg = ExplainerConfig(temperature=1.0, max_tokens=16, n_examples=0, max_attempts=1)
    return BestOfKExplainer(
        llm,
        cfg,
        select=SelectConfig(k=k),
        selector=Selector(simulation_scorer(selector_llm or llm)),
        validation=(SPLITS.n_validation_top, SPLITS.n_validation_random),
    )


def go(stage, run, **kw):
    return asyncio.run(run_stage(stage, run, show_progress=False, **kw))


def make_run(tmp_path, records) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", records)
    return run


def test_best_of_k_keeps_the_candidate_best_on_validation_with_all_candidates(tmp_path):
    records = [_record(i) for i in range(3)]
    run = make_run(tmp_path, records)
    llm = fake()
    s = go(ExplainStage(best_of_k(llm), records, SPLITS), run)
    assert (s.done, s.failed) == (3, 0)
    for e in run.explanations():
        i = e.unit_id.rsplit("/", 1)[-1]
        assert e.text == f"the word w{i}" and e.method == "best-of-k"
        assert [c.text for c in e.candidates] == ["the word q1", f"the word w{i}", None]
        assert [c.selected for c in e.candidates] == [False, True, False]
        assert e.candidates[1].validation_score > 0.9  # the right word: near-perfect
        assert e.candidates[0].validation_score is None or e.candidates[0].validation_score < 1
        assert e.candidates[2].reason  # why the third gave nothing
        assert e.validation_score == e.candidates[1].validation_score
        held = {x.excerpt_id for x in split_record(records[0], SPLITS).held_out}
        assert e.validation_excerpts and not set(e.validation_excerpts) & held
        assert e.selection_scorer == "simulation (fake:m)"
    # Choosing cost its own usage lines, apart from the explainer's tokens.
    stages = [u.stage for u in run.usage()]
    assert stages.count("explain") == 3 and stages.count("explain-select") == 3
    # The kept explanation is then scored on test like any other.
    score = go(ScoreStage(simulation_scorer(llm), records, SPLITS), run)
    assert score.done == 3
    assert all(sc.metrics[sc.primary_metric] > 0.9 for sc in run.scores())


def test_best_of_k_is_resumable_and_keyed_by_its_selector(tmp_path):
    records = [_record(0)]
    run = make_run(tmp_path, records)
    go(ExplainStage(best_of_k(fake()), records, SPLITS), run)
    llm = fake()
    again = go(ExplainStage(best_of_k(llm), records, SPLITS), run)
    assert (again.done, again.skipped, len(llm.calls)) == (0, 1, 0)
    other = ExplainStage(best_of_k(fake(), k=2, selector_llm=fake("fake:other")), records, SPLITS)
    assert other.config_hash != ExplainStage(best_of_k(fake()), records, SPLITS).config_hash


def test_a_unit_without_validation_excerpts_is_a_failure_not_a_guess(tmp_path):
    records = [_record(0, n_top=2, n_random=1)]  # train and test take them all
    run = make_run(tmp_path, records)
    s = go(ExplainStage(best_of_k(fake()), records, SPLITS), run)
    assert (s.done, s.failed) == (0, 1)
    assert "no validation excerpts" in run.failures()[0].reason
    assert run.explanations() == []


def test_no_candidate_scorable_on_validation_is_a_failure_with_the_reasons(tmp_path):
    records = [_record(0)]
    run = make_run(tmp_path, records)

    def nothing(request, **params):
        if params.get("response_format"):
            return "not json"
        return ""  # no explanation at all

    llm = FakeLLM("fake:m", answers=nothing, capabilities=Capabilities(json_object=True))
    s = go(ExplainStage(best_of_k(llm, k=2), records, SPLITS), run)
    assert s.failed == 1 and run.explanations() == []
    assert "no candidate scored on validation" in run.failures()[0].reason


def test_scoring_refuses_an_explanation_chosen_on_held_out_excerpts(tmp_path):
    records = [_record(0)]
    run = make_run(tmp_path, records)
    go(ExplainStage(best_of_k(fake()), records, SPLITS), run)
    # The same explanations scored with splits whose test fold holds the validation
    # excerpts they were chosen on.
    wider = SPLITS.model_copy(update={"n_test_top": 3})
    with pytest.raises(DataError, match="used to select"):
        go(ScoreStage(simulation_scorer(fake()), records, wider), run)


def test_best_index_takes_the_first_of_equal_finite_scores():
    v = lambda x: Verdict(x, Usage())  # noqa: E731
    assert best_index([v(None), v(0.5), v(float("nan")), v(0.5)]) == 1
    assert best_index([v(None), v(float("nan"))]) is None
    assert best_index([v(0.0), v(-0.1)]) == 0  # zero is a score, not a missing one
