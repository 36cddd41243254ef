"""A new scorer is one module plus registration: shown with a scorer written here.

`MentionScorer` is a real (if crude) LLM-free scorer: does a held-out excerpt mention a
word of the explanation, and does that tell top excerpts from random ones (AUC)? It is
registered and then run through the public API; the engine, the dry run, compare,
publish and view pick it up with no edits to them.
"""

from __future__ import annotations

import asyncio
import json

from neuroscribe import api
from neuroscribe.compare import compare_runs
from neuroscribe.config import RunConfig
from neuroscribe.publish import publish_run
from neuroscribe.scorer import ScoreOutcome, ScoreTask, register_scorer
from neuroscribe.scorer.registry import SCORERS
from neuroscribe.stages.base import Estimate
from neuroscribe.view.data import ReportData
from test_stages import explain_stage, fake, go, make_run


class MentionScorer:
    name = "mention"
    stage = "score-mention"
    primary_metric = "auc"

    def __init__(self, model: str) -> None:
        self.model = model

    @classmethod
    async def build(cls, llm, **_options):
        return cls(llm.spec)

    @classmethod
    def planned(cls, spec, probe=None, **_options):
        return cls(spec), ""

    def config(self):
        return {"scorer": self.name, "version": 1}

    def comparable(self):
        return {"scorer": self.name, "version": 1}

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        words = {w.strip(" ,.").lower() for w in task.explanation.text.split()}
        test = [x for x in task.heldout if x.role == "test"]
        hit = [any(t.strip().lower() in words for t in x.record.tokens) for x in test]
        top = [x.kind == "top" for x in test]
        pos = [h for h, t in zip(hit, top, strict=True) if t]
        neg = [h for h, t in zip(hit, top, strict=True) if not t]
        pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
        auc = sum(pairs) / len(pairs) if pairs else None
        return ScoreOutcome(
            metrics={"auc": auc, "hit_rate": sum(hit) / len(hit)},
            primary_metric="auc",
            n_excerpts=len(test),
            n_tokens=sum(len(x.record.tokens) for x in test),
        )

    def estimate(self, task: ScoreTask) -> Estimate:
        return Estimate()  # no model calls at all


def test_a_registered_scorer_runs_and_shows_up_everywhere(tmp_path, monkeypatch):
    monkeypatch.setitem(SCORERS, "mention", MentionScorer)
    register_scorer("mention", MentionScorer)
    run = make_run(tmp_path)
    go(explain_stage(fake(), run.records()), run)
    config = RunConfig.build(
        run_dir=run.root,
        splits={"n_train": 1, "n_test_top": 1, "n_test_random": 1,
                "n_calibration_top": 0, "n_calibration_random": 0},
        score={"scorer": "mention", "model": "fake:none"},
        jobs={"show_progress": False},
    )  # fmt: skip
    (est,) = api.estimate(config, ["score"])
    assert (est.stage, est.units, est.requests) == ("score-mention", 3, 0)

    summary = asyncio.run(api.score_async(config))
    assert summary.done == 3 and summary.stage == "score-mention"
    scores = run.scores()
    assert {s.scorer for s in scores} == {"mention"}
    assert all(s.metrics["auc"] == 1.0 for s in scores)  # "the word w0" names the top word
    assert run.manifest().stages["score-mention"]["scorer"] == "mention"
    assert run.summary()["stages"]["score-mention"]["done"] == 3

    loaded = run.load()
    c = compare_runs([loaded, loaded], scorer="mention", metric="auc", n_resamples=200)
    assert c.summary["mean_score"].tolist() == [1.0, 1.0]

    out = publish_run(loaded, tmp_path / "pub", allow_failures=True)  # unit 1: no answer
    row = json.loads((out.out / "explanations.jsonl").read_text().splitlines()[0])
    assert (row["auc"], row["hit_rate"]) == (1.0, 0.5)  # its only scorer: bare names

    detail = ReportData(loaded).detail("m/0/0").model_dump()
    (view,) = detail["explanations"][0]["scores"]
    assert view["scorer"] == "mention" and view["metrics"]["auc"] == 1.0
