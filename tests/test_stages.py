"""Every stage on the in-process fake LLM: skip rules, failures, resume, dry-run parity.

Milliseconds per test: the real code paths (explainer, JSON simulator, scorer, engine,
run directory) with `FakeLLM` answering instead of a server.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import estimate_plan, estimate_stage, run_stage
from neuroscribe.explainer import ExplainerConfig, TokenRowExplainer
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord
from neuroscribe.scorer.simulation import TYPICAL_EXPLANATION, SimulationScorer
from neuroscribe.simulator.api import JsonSimulator
from neuroscribe.splits import SplitConfig
from neuroscribe.stages.base import WorkItem
from neuroscribe.stages.explain import ExplainStage
from neuroscribe.stages.score import RescoreStage, ScoreStage

SPLITS = SplitConfig(
    n_train=1, n_test_top=1, n_test_random=1, n_calibration_top=0, n_calibration_random=0
)
# A unit whose train excerpt holds this word gets no usable explanation.
POISON = " zzz"


def record(i: int) -> NeuronRecord:
    word = POISON if i == 1 else f" w{i}"

    def ex(tokens: list[str], hot: bool) -> ActivationRecord:
        return ActivationRecord(tokens=tokens, activations=[0.0, 4.0 + i if hot else 0.0, 0.0])

    return NeuronRecord(
        unit_id=f"m/0/{i}",
        most_positive_activation_records=[
            ex([" a", word, " b"], True),
            ex([" c", word, " d"], True),
        ],
        random_sample=[ex([" e", " f", " g"], False)],
    )


def _text(messages) -> str:
    content = messages[-1]["content"]
    return content if isinstance(content, str) else "".join(p["text"] for p in content)


def answers(request, **params) -> str:
    if params.get("response_format"):  # a simulation: one value per token, by the schema
        fmt = params["response_format"]
        schema = fmt.get("schema") or fmt["json_schema"]["schema"]
        rows = _text(request).rsplit("<start>\n", 1)[-1].split("\n<end>")[0].split("\n")
        assert len(rows) == schema["properties"]["activations"]["minItems"]
        # A perfect simulator of these units: the word in the middle fires.
        return json.dumps({"activations": [5 if r.startswith((" w", " zzz")) else 0 for r in rows]})
    text = _text(request)
    if POISON.strip() in text.rsplit("<start>", 1)[-1]:
        return ""  # a non-answer: must never be stored as an explanation
    words = re.findall(r"\bw\d+\b", text.rsplit("<start>", 1)[-1])
    return f"the word {words[0] if words else 'x'}, sample {params.get('index', 0)}"


def fake() -> FakeLLM:
    return FakeLLM("fake:m", answers=answers, capabilities=Capabilities(json_object=True))


def make_run(tmp_path, n: int = 4) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.records_dir.mkdir(parents=True)
    append_jsonl(run.records_dir / "r.jsonl", [record(i) for i in range(n)])
    return run


def explain_stage(llm, records, **settings) -> ExplainStage:
    cfg = ExplainerConfig(temperature=0.0, max_tokens=16, n_examples=0, max_attempts=2, **settings)
    return ExplainStage(TokenRowExplainer(llm, cfg), records, SPLITS)


def score_stage(llm, records, n_examples: int = 0, **kw) -> ScoreStage:
    sim = JsonSimulator(llm, scale_max=9, n_examples=n_examples, json_mode="json_object")
    scorer = SimulationScorer(
        sim, spec=llm.spec, strategy="json", scale_max=9, n_examples=n_examples
    )
    return ScoreStage(scorer, records, SPLITS, **kw)


def go(stage, run, **kw):
    return asyncio.run(run_stage(stage, run, show_progress=False, **kw))


# ------------------------------------------------------------------ explain


def test_explain_writes_samples_records_non_answers_as_failures_and_resumes(tmp_path):
    run = make_run(tmp_path)
    records = run.records()
    llm = fake()
    s = go(explain_stage(llm, records, n_samples=2), run)
    assert (s.done, s.failed) == (3, 1)
    texts = {(e.unit_id, e.sample_index): e.text for e in run.explanations()}
    assert len(texts) == 6 and all(u != "m/0/1" for u, _ in texts)
    assert all(t.startswith("the word w") for t in texts.values())
    fails = run.failures()
    # One failure per failed sample, typed: the sample is a field, not part of a string.
    assert sorted(f.sample_index for f in fails) == [0, 1]
    assert {f.unit_id for f in fails} == {"m/0/1"} and all(f.raw == "" for f in fails)
    assert len(run.open_failures()) == 2

    calls = len(llm.calls)
    again = go(explain_stage(llm, records, n_samples=2), run)
    assert (again.done, again.skipped, len(llm.calls)) == (0, 4, calls)  # nothing asked

    # --retry-failed asks only the failed unit; it fails again, nothing else is touched.
    retry = go(explain_stage(llm, records, n_samples=2), run, retry_failed=True)
    assert (retry.total - retry.skipped, len(llm.calls) - calls) == (1, 2)  # 2 attempts


def test_a_new_explainer_prompt_version_is_a_new_key_space(tmp_path, monkeypatch):
    run = make_run(tmp_path, 2)
    records = run.records()
    first = explain_stage(fake(), records)
    go(first, run)
    first_hash = first.config_hash
    monkeypatch.setattr(TokenRowExplainer, "prompt_version", "explain-v2")
    second = explain_stage(fake(), records)
    assert second.config()["prompt_version"] == "explain-v2"
    assert second.config_hash != first_hash
    s = go(second, run)
    assert s.done == 1 and s.skipped == 0  # unit 1 fails again, unit 0 explained anew
    assert len({e.config_hash for e in run.explanations()}) == 2
    assert "prompt_version" in " ".join(s.warnings)


def test_the_explainer_model_is_part_of_the_key_space(tmp_path):
    # 0.1 let `settings.explainer` overwrite the spec in the hashed config.
    records = make_run(tmp_path, 1).records()
    a = explain_stage(FakeLLM("fake:a"), records)
    b = explain_stage(FakeLLM("fake:b"), records)
    assert a.config_hash != b.config_hash


# ------------------------------------------------------------------ score


def test_score_simulates_scores_and_a_crash_between_the_two_costs_nothing(tmp_path):
    run = make_run(tmp_path)
    records = run.records()
    llm = fake()
    go(explain_stage(llm, records), run)
    n_expl = len(run.explanations())
    calls = len(llm.calls)
    s = go(score_stage(llm, records), run)
    assert s.done == n_expl == 3
    assert len(llm.calls) - calls == 3 * 2  # one request per held-out excerpt
    scores = run.scores()
    assert {x.scorer for x in scores} == {"simulation"} and len(scores) == 3
    assert all(x.metrics["score"] == pytest.approx(1.0) for x in scores)
    assert all(x.heldout_hash and x.comparable["strategy"] == "json" for x in scores)
    assert len(run.simulations()) == 6

    # A crash after the simulations were written but before the score: the rerun scores
    # from the stored simulations without asking the model again.
    run.path("scores").unlink()
    calls = len(llm.calls)
    again = go(score_stage(llm, records), run)
    assert again.done == 3 and len(llm.calls) == calls
    assert len(run.scores()) == 3 and len(run.simulations()) == 6


def test_rescore_recomputes_from_stored_simulations_only(tmp_path):
    run = make_run(tmp_path, 2)
    records = run.records()
    go(explain_stage(fake(), records), run)
    go(score_stage(fake(), records), run)
    old = {s.explanation_id: s.score for s in run.scores()}
    run.path("scores").unlink()
    s = go(RescoreStage(), run)
    assert s.done == 1 and {x.explanation_id: x.score for x in run.scores()} == old


def test_leaking_split_settings_are_refused_before_anything_is_sent(tmp_path):
    from neuroscribe.errors import DataError

    run = make_run(tmp_path, 2)
    records = run.records()
    # Explained seeing both top excerpts; scored with settings that hold one out.
    wide = SplitConfig(n_train=2, n_test_top=0, n_test_random=1, n_calibration_top=0)
    cfg = ExplainerConfig(temperature=0.0, max_tokens=16, n_examples=0, max_attempts=2)
    go(ExplainStage(TokenRowExplainer(fake(), cfg), records, wide), run)
    llm = fake()
    with pytest.raises(DataError, match="shown to the"):
        go(score_stage(llm, records), run)
    assert llm.calls == [] and not run.path("simulations").exists()


# ------------------------------------------------------------------ dry-run parity


@pytest.mark.slow
def test_dry_run_request_count_equals_what_the_real_run_sends(tmp_path):
    """A partly done run with failures and a changed configuration: plan + estimate
    must count exactly the requests the real run then makes."""
    run = make_run(tmp_path, 5)
    records = run.records()
    # Config A (max_tokens 16, 1 sample) fully done, unit 1 failed.
    go(explain_stage(fake(), records), run)
    # Config B (2 samples): units 0 and 1 attempted; then unit 2 gets only sample 0
    # (as if a crash cut its second line).
    go(explain_stage(fake(), records[:2], n_samples=2), run)
    b = explain_stage(fake(), records, n_samples=2)
    lines = run.path("explanations").read_text().splitlines()
    sample = json.loads(next(ln for ln in lines if json.loads(ln)["config_hash"] == b.config_hash))
    sample.update(unit_id="m/0/2", sample_index=0, explanation_id="partial-2-0")
    with run.path("explanations").open("a", encoding="utf-8") as f:
        f.write(json.dumps(sample) + "\n")

    llm = fake()
    stage = explain_stage(llm, records, n_samples=2)
    est = estimate_stage(stage, run)
    # Unit 0 done, unit 1 failed, unit 2 lacks one sample, units 3 and 4 lack both.
    assert est.units == 3 and est.requests == 3
    # Work items are plain data: a queue or a remote worker could carry them.
    for item in stage.plan(run).items:
        assert WorkItem.model_validate_json(item.model_dump_json()) == item
    assert [i.samples for i in stage.plan(run).items] == [(1,), (0, 1), (0, 1)]
    go(stage, run)
    assert len(llm.calls) == est.requests

    # The score stage on the same run: some explanations scored, one failure recorded.
    sim_llm = fake()
    go(score_stage(fake(), records[:2]), run)
    changed = score_stage(sim_llm, records, n_examples=1)  # a changed simulator config
    go(score_stage(sim_llm, records[:1], n_examples=1), run)
    sim_calls = len(sim_llm.calls)
    est = estimate_stage(changed, run)
    go(changed, run)
    assert len(sim_llm.calls) - sim_calls == est.requests > 0


def test_run_dry_run_counts_planned_explanations_at_their_real_ids(tmp_path):
    run = make_run(tmp_path, 3)
    records = run.records()
    stage = explain_stage(fake(), records, n_samples=2)
    plan = stage.plan(run)
    planned = stage.planned_explanations(plan, TYPICAL_EXPLANATION)
    assert len(planned) == 6
    scoring = score_stage(fake(), records, extra_explanations=planned)
    est = estimate_plan(scoring, scoring.plan(run))
    assert est.requests == 6 * 2  # two held-out excerpts each
    # After the real explain stage the ids are the same, so nothing was guessed.
    go(stage, run)
    real = {e.explanation_id for e in run.explanations()}
    assert real <= {e.explanation_id for e in planned}


# ------------------------------------------------------------------ the facade


def test_api_stages_can_be_awaited_inside_a_running_event_loop(tmp_path):
    run = make_run(tmp_path, 2)
    records = run.records()
    go(explain_stage(fake(), records), run)
    go(score_stage(fake(), records), run)
    run.path("scores").unlink()
    config = RunConfig.build(run_dir=run.root, jobs={"show_progress": False})

    async def main():
        return await api.rescore_async(config)

    summary = asyncio.run(main())
    assert summary.done == 1
    assert run.summary()["stages"]["score"]["done"] == 1
