"""`neuroscribe check` on the real parts: the embedded model (exact) through the CLI, and
the same simulation prompt through a real llama.cpp server (prompt-logprobs) giving the
same numbers as the exact local path."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from _cli import run_cli as cli
from neuroscribe.groundtruth import GroundTruthUnit, write_suite
from neuroscribe.groundtruth.suite import FalseExplanation, SuiteExcerpt

pytestmark = pytest.mark.slow


def _tiny_suite(path):
    """One unit, two short excerpts: cheap enough for a real server's slow echo path."""
    excerpts = [
        SuiteExcerpt(tokens=["The", " cat", " sat", "."], activations=[0, 9, 0, 0]),
        SuiteExcerpt(tokens=["A", " dog", " ran", "."], activations=[0, 8, 0, 0]),
    ]
    unit = GroundTruthUnit(
        id="animals",
        split="test",
        category="token",
        explanation="names of animals",
        false_explanations=[FalseExplanation(text="full stops", kind="neighbouring-concept")],
        excerpts=excerpts,
    )
    write_suite(path, [unit])
    return path


@pytest.mark.parametrize(
    ("simulator", "prompt"),
    [
        ("hf:embedded", "simulate-v1"),
        ("hf:embedded", "simulate-v2"),
        (None, "simulate-tuned-inline-v1"),  # the default: the trained simulator, its own prompt
    ],
)
def test_check_simulator_on_the_embedded_model(tmp_path, monkeypatch, simulator, prompt):
    monkeypatch.setenv("NEUROSCRIBE_CHECKS", str(tmp_path))
    out_file = tmp_path / "report.json"
    args = ["--simulator", simulator, "--sim-prompt", prompt] if simulator else []
    out = cli("check", "simulator", "--max-units", "1", *args, "--out", str(out_file))
    report = json.loads(out_file.read_text())
    assert report["simulator"] == (simulator or "hf:embedded?adapter=simulator")
    assert report["strategy"] == "exact"
    assert report["prompt_version"] == prompt and report["split"] == "test"
    (unit,) = report["units"]
    assert len(unit["candidates"]) >= 3
    assert all(c["score"] is not None for c in unit["candidates"])
    assert unit["usage"]["prompt_tokens"] > 0
    s = report["summary"]
    assert s["n_units"] == 1 and s["cost_per_unit_usd"] == 0.0
    assert s["verdict"] in " ".join(out.stdout.split())
    assert "saved for neuroscribe run and compare" in out.stdout
    if simulator and not s["trustworthy"]:  # the next step is named, on one line
        assert "--simulator 'hf:embedded?adapter=simulator'" in out.stdout


@pytest.mark.parametrize("prompt", ["simulate-v1", "simulate-v2"])
def test_the_api_path_gives_the_exact_paths_numbers(llama_server, prompt):
    """Same model (the embedded GGUF), same prompt text: the value distribution llama.cpp
    returns at every slot is the local exact path's, restricted to the digits the server
    lists (it returns only the top 15 tokens of a position, so rare digits are cut off),
    up to llama.cpp's quantised arithmetic."""
    from neuroscribe.llm import make_llm
    from neuroscribe.simulator.api import PromptLogprobSimulator
    from neuroscribe.simulator.exact import ExactSimulator

    tokens = [["The", " cat", " sat", " on", " the", " mat", "."], ["A", " dog", " ran", "."]]
    exact = ExactSimulator("hf:embedded", prompt_version=prompt, n_examples=1)

    async def api():
        llm = make_llm(llama_server.model, base_url=llama_server.base_url, api_key="none")
        try:
            sim = PromptLogprobSimulator(llm, scale_max=9, prompt_version=prompt, n_examples=1)
            return await sim.simulate("names of animals", tokens)
        finally:
            await llm.aclose()

    remote = asyncio.run(api())
    local = exact.simulate_sync("names of animals", tokens)
    assert [r.scale_max for r in remote] == [9, 9]
    diffs, slots, listed = [], 0, 0
    for r, loc in zip(remote, local, strict=True):
        assert len(r.distributions) == len(loc.distributions)
        for dr, dl in zip(r.distributions, loc.distributions, strict=True):
            slots += 1
            if dr is None:
                continue
            listed += 1
            support = np.array(dr) > 0
            mine = np.where(support, dl, 0.0)
            mine = mine / mine.sum()
            diffs.append(np.abs(mine - np.array(dr)).max())
    assert listed >= 0.8 * slots
    assert np.median(diffs) < 0.05 and max(diffs) < 0.25


def test_check_simulator_through_a_real_server(llama_server, tmp_path):
    suite = _tiny_suite(tmp_path / "tiny.jsonl")
    out_file = tmp_path / "report.json"
    cli(
        "check",
        "simulator",
        "--suite",
        str(suite),
        "--simulator",
        llama_server.model,
        "--base-url",
        llama_server.base_url,
        "--strategy",
        "prompt-logprobs",
        "--sim-examples",
        "1",
        "--out",
        str(out_file),
    )
    report = json.loads(out_file.read_text())
    assert report["strategy"] == "prompt-logprobs" and report["suite"] == str(suite)
    (unit,) = report["units"]
    assert [c["kind"] for c in unit["candidates"]] == ["true", "neighbouring-concept"]
    assert unit["usage"]["requests"] >= 4  # 2 candidates x 2 excerpts
