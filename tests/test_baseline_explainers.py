"""The baselines: token-lookup (the unit's most frequent top tokens) and random (the
floor). No model is asked; the explanations are deterministic and cost nothing."""

from __future__ import annotations

import pytest

from _cli import run_cli
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.explainer import (
    EXPLAINERS,
    BaselineConfig,
    ExplainerConfig,
    RandomExplainer,
    TokenLookupExplainer,
    explainer_factory,
    why_not_explanation,
)
from neuroscribe.explainer.baselines import (
    RANDOM_PHRASES,
    random_explanation,
    show_token,
    token_list_explanation,
    top_tokens,
)
from neuroscribe.stages.explain import ExplainStage
from test_stages import SPLITS, go, make_run

# ------------------------------------------------------------------ the text functions


def test_tokens_are_shown_without_their_whitespace_and_whitespace_spelled_out():
    assert show_token(" the") == "the"
    assert show_token("cat\n") == "cat"
    assert show_token("\n") == "\\n"
    assert show_token(" ") == "␣"
    assert show_token("\t") == "\\t"
    assert show_token('"') == '\\"'
    assert show_token("") == "<empty>"


def test_top_tokens_counts_tokens_at_half_the_max_or_more():
    excerpts = [
        ([" the", " cat", " sat"], [10.0, 4.9, 0.0]),  # " cat" is under half the max
        (["The", " dog", " sat"], [5.0, 6.0, 0.0]),
        ([" dog", " ran"], [7.0, 0.0]),
    ]
    # " the" and "The" differ; " dog" twice; ties broken by the summed activation.
    assert top_tokens(excerpts, 5) == [("dog", 2), ("the", 1), ("The", 1)]
    assert top_tokens(excerpts, 1) == [("dog", 2)]
    # " the" and "the" are one token once shown.
    assert top_tokens([([" the", "the", "x"], [5.0, 5.0, 6.0])]) == [("the", 2), ("x", 1)]
    assert top_tokens([(["a", "b"], [0.0, -1.0])]) == []  # nothing positive: nothing high


def test_token_list_explanations():
    assert token_list_explanation(["cat"]) == 'the token "cat"'
    assert token_list_explanation(["cat", ",", "\\n"]) == 'the tokens "cat", ",", "\\n"'
    # Baseline texts are explanations by the same check the LLM explainers face.
    assert why_not_explanation(token_list_explanation(["the", "a"])) is None
    assert why_not_explanation(token_list_explanation([")"])) is None


def test_random_phrases_are_deterministic_plausible_and_differ_per_sample():
    assert random_explanation("m/0/1", 0) == random_explanation("m/0/1", 0)
    per_sample = [random_explanation("m/0/1", s) for s in range(5)]
    assert len(set(per_sample)) == 5  # a unit's samples are drawn without replacement
    others = {random_explanation(f"m/0/{i}", 0) for i in range(20)}
    assert len(others) > 5  # units get different phrases
    seeds = {random_explanation("m/0/1", 0, seed) for seed in range(20)}
    assert len(seeds) > 5
    assert all(why_not_explanation(p) is None for p in RANDOM_PHRASES)
    assert len(set(RANDOM_PHRASES)) == len(RANDOM_PHRASES)


def test_the_baselines_are_registered_and_take_the_stage_settings():
    assert {"token-rows", "token-lookup", "random"} <= set(EXPLAINERS)
    assert explainer_factory("token-lookup") is TokenLookupExplainer
    assert explainer_factory("random") is RandomExplainer
    # Built as the api builds every explainer: (llm, ExplainerConfig) or (None, ..., spec=).
    rnd = RandomExplainer(None, ExplainerConfig(n_samples=3), spec="hf:embedded")
    assert rnd.n_samples == 3 and rnd.model == "random"
    lookup = TokenLookupExplainer(object(), ExplainerConfig(n_samples=3))
    assert lookup.n_samples == 1  # deterministic: one sample whatever is asked
    assert TokenLookupExplainer(None, BaselineConfig(n_tokens=2)).config() != lookup.config()
    assert RandomExplainer(None, BaselineConfig(seed=1)).config() != RandomExplainer().config()
    with pytest.raises(ValueError):
        BaselineConfig(n_tokens=0)


# ------------------------------------------------------------------ in the explain stage


def test_token_lookup_writes_one_sample_per_unit_naming_its_top_token(tmp_path):
    run = make_run(tmp_path, 3)
    records = run.records()
    explainer = TokenLookupExplainer(None, ExplainerConfig(n_samples=4))
    s = go(ExplainStage(explainer, records, SPLITS), run)
    assert (s.done, s.failed) == (3, 0)
    lines = sorted(run.explanations(), key=lambda e: e.unit_id)
    assert [(e.unit_id, e.sample_index, e.text) for e in lines] == [
        ("m/0/0", 0, 'the token "w0"'),
        ("m/0/1", 0, 'the token "zzz"'),
        ("m/0/2", 0, 'the token "w2"'),
    ]
    assert all(e.explainer == "token-lookup" for e in lines)
    assert all(e.prompt_version == "baseline-token-lookup-v1" for e in lines)
    assert all(e.usage.prompt_tokens == e.usage.completion_tokens == 0 for e in lines)
    assert lines[0].raw == 'counts: "w0" ×1'
    again = go(ExplainStage(explainer, records, SPLITS), run)
    assert (again.done, again.skipped) == (0, 3)


def test_random_writes_every_sample_and_the_same_texts_in_another_run(tmp_path):
    def texts(root):
        run = make_run(root, 2)
        explainer = RandomExplainer(None, ExplainerConfig(n_samples=3))
        go(ExplainStage(explainer, run.records(), SPLITS), run)
        return {(e.unit_id, e.sample_index): e.text for e in run.explanations()}

    a, b = texts(tmp_path / "a"), texts(tmp_path / "b")
    assert a == b and len(a) == 6
    assert len({a["m/0/0", s] for s in range(3)}) == 3
    assert all(t in RANDOM_PHRASES for t in a.values())
    assert a["m/0/0", 1] == random_explanation("m/0/0", 1)


@pytest.mark.parametrize("method", ["token-lookup", "random"])
def test_api_explains_with_a_baseline_without_asking_the_model(tmp_path, method):
    run = make_run(tmp_path, 2)
    config = RunConfig.build(
        run_dir=run.root,
        # The fake model echoes the prompt: every token-rows answer would be refused.
        explain={"explainer": method, "model": "fake:echo", "settings": {"n_samples": 2}},
        splits=SPLITS.model_dump(),
        jobs={"show_progress": False},
    )
    summary = api.explain(config)
    assert summary.failed == 0
    lines = run.explanations()
    assert {e.explainer for e in lines} == {method}
    assert len(lines) == (2 if method == "token-lookup" else 4)
    assert all(why_not_explanation(e.text) is None for e in lines)
    assert sum(u.prompt_tokens + u.completion_tokens for u in run.usage()) == 0


def test_the_cli_chooses_the_explainer_by_name(tmp_path):
    run = make_run(tmp_path, 2)
    splits = ["--n-train", "1", "--n-test-top", "1", "--n-test-random", "1"]
    args = ["explain", str(run.root), "--explainer-method", "random", "--explainer", "fake:x"]
    r = run_cli(*args, "--n-explanations", "2", *splits, "--quiet")
    assert "explain: 2 done" in r.stdout
    assert {e.explainer for e in run.explanations()} == {"random"}
    bad = run_cli(*args[:2], "--explainer-method", "nope", *splits, check=False)
    said = bad.stdout + bad.stderr
    assert bad.returncode != 0 and "--explainer-method" in said and "token-lookup" in said
