"""--max-cost, --dry-run, config changes on resume and bad input, through the real CLI."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest

from _cli import run_cli
from _tiny_jobs import CLI_FLAGS, SPLITS, make_run, tiny_record
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.estimate import chars_per_4, token_counter
from neuroscribe.jsonl import read_jsonl, read_jsonl_if_exists
from neuroscribe.prompts import build_explain_prompt
from neuroscribe.rundir import config_changes
from neuroscribe.schema import Explanation, Failure, UsageRecord
from neuroscribe.splits import split_record


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, check=False, timeout=600)


def tree(path: Path) -> dict[str, int]:
    """Every file under `path` with its size: 'no partial damage' means this is unchanged.

    The response cache's SQLite files are left out: SQLite checkpoints its write-ahead log
    into the database when a connection opens or closes, which changes their sizes
    without any answer being added.
    """
    return {
        str(p.relative_to(path)): p.stat().st_size
        for p in path.rglob("*")
        if p.is_file() and ".cache" not in p.relative_to(path).parts
    }


# ------------------------------------------------------------------ bad input (fast)


def test_missing_and_empty_records_directory_fail_clearly(tmp_path):
    r = cli("explain", str(tmp_path / "nowhere"), "--explainer", "gpt-4o-mini")
    assert r.returncode == 1
    assert "no records directory" in r.stderr and "neuroscribe record" in r.stderr
    assert not (tmp_path / "nowhere").exists()

    (tmp_path / "empty" / "records").mkdir(parents=True)
    r = cli("simulate", str(tmp_path / "empty"), "--simulator", "gpt-4o-mini")
    assert r.returncode == 1 and "no *.jsonl record files" in r.stderr
    assert tree(tmp_path / "empty") == {}


@pytest.mark.parametrize("budget", ["0", "-1"])
def test_zero_budget_is_refused_before_anything_is_sent(tmp_path, budget):
    run = make_run(tmp_path / "run", 3)
    before = tree(run)
    # The base URL points nowhere: a request would fail loudly, so none may be made.
    r = cli(
        "run", str(run), "--explainer", "gpt-4o-mini", "--simulator", "gpt-4o-mini",
        "--base-url", "http://127.0.0.1:9/v1", "--max-cost", budget, *CLI_FLAGS,
    )  # fmt: skip
    assert r.returncode == 1
    assert "budget must be more than $0" in r.stderr
    assert tree(run) == before


def test_unknown_price_under_max_cost_is_refused_before_anything_is_sent(tmp_path):
    run = make_run(tmp_path / "run", 3)
    before = tree(run)
    r = cli(
        "explain", str(run), "--explainer", "my-private-model",
        "--base-url", "http://127.0.0.1:9/v1", "--max-cost", "5", *CLI_FLAGS[:6],
    )  # fmt: skip
    assert r.returncode == 1
    assert "my-private-model" in r.stderr and "--prices" in r.stderr
    assert tree(run) == before
    # With its price given, the same model passes the check (and then fails to connect).
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-private-model": {"input": 1, "output": 2}}))
    r = cli(
        "explain", str(run), "--explainer", "my-private-model", "--prices", str(prices),
        "--base-url", "http://127.0.0.1:9/v1", "--max-cost", "5", "--dry-run", *CLI_FLAGS[:6],
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "$" in r.stdout and "unknown price" not in r.stdout


# ------------------------------------------------------------------ dry run (fast)


def test_dry_run_counts_the_prompts_the_job_would_send_and_sends_nothing(tmp_path):
    run = make_run(tmp_path / "run", 4)
    before = tree(run)
    r = cli(
        "run", str(run), "--explainer", "gpt-4o-mini", "--simulator", "gpt-4o",
        "--base-url", "http://127.0.0.1:9/v1", "--dry-run", *CLI_FLAGS,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = " ".join(r.stdout.split())
    assert "nothing was sent" in out and "explain" in out and "simulate" in out
    assert "typical length" in out  # simulations of explanations not made yet
    assert tree(run) == before

    # The explain figures are the explain prompts counted exactly as documented.
    records = [tiny_record(i) for i in range(4)]
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 1.0, "output": 4.0}}))
    config = RunConfig.build(
        run_dir=run,
        splits=SPLITS.model_dump(),
        explain={"model": "gpt-4o-mini", "settings": {"max_tokens": 16, "n_examples": 3}},
        jobs={"prices": prices},
    )
    (est,) = api.estimate(config, ["explain"])
    expected = 0
    for rec in records:
        msgs = build_explain_prompt(
            [(e.record.tokens, e.record.activations) for e in split_record(rec, SPLITS).train]
        ).messages
        expected += sum(3 + math.ceil(len(m["content"]) / 4) for m in msgs) + 3
    assert token_counter("gpt-4o-mini").name in ("chars/4",) or est.tokenizer.startswith("tiktoken")
    if est.tokenizer == "chars/4":
        assert est.prompt_tokens == expected
    assert (est.units, est.requests, est.completion_tokens) == (4, 4, 4 * 16)
    assert est.cost_usd == pytest.approx((est.prompt_tokens * 1.0 + 64 * 4.0) / 1e6)
    assert f"{est.prompt_tokens:,}" in r.stdout


# Loads a real (tiny) model: in the slow suite, which CI runs.
@pytest.mark.slow
def test_dry_run_uses_the_local_models_own_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    from neuroscribe.embedded import embedded_model_dir

    counter = token_counter("hf:embedded")
    tok = AutoTokenizer.from_pretrained(embedded_model_dir())
    text = "Neuron 3 fires on 10 digits"
    assert counter.text(text) == len(tok(text, add_special_tokens=False)["input_ids"])
    assert counter.text(text) != chars_per_4(text)  # SmolLM2 splits "10" into digits
    run = make_run(tmp_path / "run", 1)
    config = RunConfig.build(
        run_dir=run, splits=SPLITS.model_dump(), explain={"settings": {"max_tokens": 8}}
    )
    (est,) = api.estimate(config, ["explain"])
    assert est.tokenizer.startswith("hf:") and est.cost_usd == 0.0 and est.prompt_tokens > 50


def test_config_changes_name_what_changed():
    old = {"config_hash": "a", "explainer": {"max_tokens": 60, "temperature": 1.0}, "x": 1}
    new = {"config_hash": "b", "explainer": {"max_tokens": 16, "temperature": 1.0}, "x": 1}
    assert config_changes(old, new) == ["explainer.max_tokens: 60 -> 16"]


# ------------------------------------------------------------------ real server (slow)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_max_cost_stops_cleanly_and_resumes_on_the_llama_server(tmp_path, llama_server):
    run = make_run(tmp_path / "run", 4)
    prices = tmp_path / "prices.json"
    # A made-up price for the local model so the budget bites after a unit or two.
    prices.write_text(json.dumps({"smollm2": {"input": 100, "output": 100}}))
    base = [
        "explain", str(run), "--explainer", llama_server.model,
        "--base-url", llama_server.base_url, "--prices", str(prices),
        "--concurrency", "1", "--quiet", *CLI_FLAGS[:6], "--temperature", "0",
        "--max-tokens", "16",
    ]  # fmt: skip

    dry = cli(*base, "--dry-run")
    assert dry.returncode == 0 and "nothing was sent" in " ".join(dry.stdout.split())
    assert not (run / "usage.jsonl").exists()

    r = cli(*base, "--max-cost", "0.1")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "budget reached" in r.stderr and "higher --max-cost" in " ".join(r.stderr.split())
    first = read_jsonl(run / "explanations.jsonl", Explanation)
    costs = [u.cost_usd or 0 for u in read_jsonl(run / "usage.jsonl", UsageRecord)]
    spent = sum(costs)
    assert 1 <= len(first) < 4
    assert spent <= 0.1 + max(costs)  # at most one unit past the budget (~$0.06 a unit)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["explain"]["stopped_for_budget"] is True
    assert summary["stages"]["explain"]["remaining"] == 4 - len(first)
    assert summary["total_cost_usd"] == pytest.approx(spent, rel=1e-6)

    # The same budget again: refused at once, nothing sent, nothing written.
    before = tree(run)
    again = cli(*base, "--max-cost", "0.1")
    assert again.returncode == 1 and "budget reached" in again.stderr
    assert tree(run) == before

    r = cli(*base, "--max-cost", "100")
    assert r.returncode == 0, r.stderr
    final = read_jsonl(run / "explanations.jsonl", Explanation)
    failed = {f.unit_id for f in read_jsonl_if_exists(run / "failures.jsonl", Failure)}
    explained = [e.unit_id for e in final]
    assert len(explained) == len(set(explained))  # one line per unit
    assert set(explained) | failed == {f"m/0/{i}" for i in range(4)}
    assert final[: len(first)] == first  # earlier lines untouched

    # A rerun answered from the response cache costs nothing.
    (run / "explanations.jsonl").rename(run / "explanations.old")
    r = cli(*base, "--max-cost", "100")
    assert r.returncode == 0, r.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stages"]["explain"]["cost_usd"] == 0.0
    assert summary["stages"]["explain"]["cached_units"] == len(explained)

    # Another explainer configuration: a warning naming the change, a new key space.
    # (More tokens, not fewer: an answer cut shorter than "...does is find X" is no
    # explanation and would be refused, leaving the new key space empty.)
    r = cli(*[a if a != "16" else "24" for a in base])
    assert r.returncode == 0, r.stderr
    text = " ".join((r.stdout + r.stderr).split())
    assert "settings.max_tokens: 16 -> 24" in text and "new key space" in text
    hashes = {e.config_hash for e in read_jsonl(run / "explanations.jsonl", Explanation)}
    assert len(hashes) == 2

    # Split settings that would leave the explainer nothing: refused before any request
    # (not even the capability probe), nothing written.
    before = tree(run)
    r = cli(
        "simulate", str(run), "--simulator", llama_server.model,
        "--base-url", llama_server.base_url, "--strategy", "json",
        "--n-train", "0", "--n-test-top", "2", "--n-test-random", "1",
    )  # fmt: skip
    assert r.returncode != 0
    assert "--n-train" in r.stdout + r.stderr
    assert tree(run) == before
