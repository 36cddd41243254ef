"""Tiny jobs for the job-engine tests: records of 3-token excerpts and one pipeline run.

Kept small on purpose (1 train excerpt, 1 top + 1 random held out, no calibration, no
few-shot examples, the JSON simulator): every call to the real llama.cpp server costs
~1 s on a loaded 2-core machine.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

from neuroscribe.engine import run_stage
from neuroscribe.explainer import ExplainerConfig, TokenRowExplainer
from neuroscribe.jsonl import append_jsonl, read_jsonl, read_jsonl_if_exists
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.openai_api import OpenAICompatibleLLM
from neuroscribe.rundir import RunDir
from neuroscribe.schema import (
    ActivationRecord,
    Explanation,
    Failure,
    NeuronRecord,
    Score,
    SequenceSimulation,
)
from neuroscribe.scorer.simulation import SimulationScorer
from neuroscribe.simulator.api import JsonSimulator
from neuroscribe.splits import SplitConfig
from neuroscribe.stages.explain import ExplainStage
from neuroscribe.stages.score import ScoreStage

WORDS = ["cat", "dog", "sun", "moon", "red", "blue", "tree", "rock", "fish", "bird", "rain", "snow"]
SPLITS = SplitConfig(
    n_train=1, n_test_top=1, n_test_random=1, n_calibration_top=0, n_calibration_random=0
)
EXPLAINER = ExplainerConfig(temperature=0.0, max_tokens=16, n_examples=0, max_attempts=2)
# The same flags for the CLI (tests that run `neuroscribe run` in a subprocess).
CLI_FLAGS = [
    "--n-train", "1", "--n-test-top", "1", "--n-test-random", "1",
    "--temperature", "0", "--max-tokens", "16", "--strategy", "json", "--sim-examples", "0",
]  # fmt: skip


def tiny_record(i: int) -> NeuronRecord:
    """Unit m/0/i: two top excerpts whose middle token fires, one silent random excerpt."""
    r = random.Random(i)

    def excerpt(hot: bool) -> ActivationRecord:
        tokens = [" " + r.choice(WORDS) for _ in range(3)]
        return ActivationRecord(tokens=tokens, activations=[0.0, 5.0 + i % 3 if hot else 0.0, 0.0])

    return NeuronRecord(
        unit_id=f"m/0/{i}",
        most_positive_activation_records=[excerpt(True), excerpt(True)],
        random_sample=[excerpt(False)],
    )


def make_run(root: Path, n_units: int) -> Path:
    """A run directory with `n_units` tiny records."""
    (root / "records").mkdir(parents=True, exist_ok=True)
    append_jsonl(root / "records" / "tiny.jsonl", [tiny_record(i) for i in range(n_units)])
    return root


def client(base_url: str, *, timeout_s: float = 30, cache: Path | None = None, **kw: Any):
    """The real client with a fast retry policy (tests must not sleep for seconds)."""
    return OpenAICompatibleLLM(
        "smollm2",
        base_url=base_url,
        timeout_s=timeout_s,
        retry=RetryPolicy(max_attempts=kw.pop("max_attempts", 5), base_s=0.05, max_wait_s=1.0),
        cache=cache,
        **kw,
    )


def json_scorer(llm: Any) -> SimulationScorer:
    """The JSON simulator (llama.cpp's server refuses json_schema: json_object instead)."""
    sim = JsonSimulator(llm, scale_max=9, n_examples=0, json_mode="json_object")
    return SimulationScorer(sim, spec=llm.spec, strategy="json", scale_max=9, n_examples=0)


def run_job(
    run: Path, base_url: str, *, concurrency: int = 2, retry_failed: bool = False, **kw: Any
) -> None:
    """explain → simulate + score (JSON, one attempt) over the run's records, in process."""
    records = read_jsonl(run / "records" / "tiny.jsonl", NeuronRecord)
    llm = client(base_url, concurrency=concurrency, **kw)
    rundir = RunDir(run)
    opts = {"concurrency": concurrency, "retry_failed": retry_failed, "show_progress": False}

    async def main() -> None:
        try:
            explain = ExplainStage(TokenRowExplainer(llm, EXPLAINER), records, SPLITS)
            await run_stage(explain, rundir, **opts)
            await run_stage(ScoreStage(json_scorer(llm), records, SPLITS), rundir, **opts)
        finally:
            await llm.aclose()

    asyncio.run(main())


def outputs(run: Path) -> dict[str, Any]:
    """Everything a test compares: lines per file keyed, plus the duplicate counts."""
    expl = read_jsonl_if_exists(run / "explanations.jsonl", Explanation)
    sims = read_jsonl_if_exists(run / "simulations.jsonl", SequenceSimulation)
    scores = read_jsonl_if_exists(run / "scores.jsonl", Score)
    fails = read_jsonl_if_exists(run / "failures.jsonl", Failure)
    keys = Counter(
        [("e", e.unit_id, e.sample_index, e.config_hash) for e in expl]
        + [("s", s.explanation_id, s.excerpt_id, s.config_hash) for s in sims]
        + [("c", s.explanation_id, s.config_hash) for s in scores]
    )
    return {
        "explanations": {e.unit_id: e.text for e in expl},
        "simulations": {(s.unit_id, s.excerpt_id): s.expected_activations for s in sims},
        "scores": {s.unit_id: (s.explanation, s.score, s.n_tokens) for s in scores},
        "failures": fails,
        "duplicates": {k: n for k, n in keys.items() if n > 1},
    }
