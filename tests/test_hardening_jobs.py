"""Hostile or unlucky input to the job commands: refused up front, or survived.

Each test reproduces one way the job side broke before (budget overshoot, two jobs on
one directory, absurd activations, a dead unit in a dry run, options checked late or
not at all, a refused key failing every unit one by one).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import pytest

from _cli import run_cli
from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import estimate_stage, run_stage
from neuroscribe.errors import ConfigError, DataError, LLMError
from neuroscribe.jsonl import append_jsonl
from neuroscribe.llm import wrap
from neuroscribe.llm.fake import FakeLLM
from neuroscribe.llm.pricing import Price, cost
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ActivationRecord, NeuronRecord
from test_stages import answers, explain_stage, fake, go, make_run, record


class SlowFake(FakeLLM):
    """The fake, but each answer takes a moment, so concurrent units overlap."""

    async def chat(self, *args, **kwargs):
        await asyncio.sleep(0.02)
        return await super().chat(*args, **kwargs)


# ------------------------------------------------------------------ budget (item 5)


def test_a_fresh_job_reserves_each_units_cost_and_stays_within_the_budget(tmp_path):
    run = make_run(tmp_path, 12)
    records = [r for r in run.records() if r.unit_id != "m/0/1"]
    prices = {"fake:m": Price(2000.0, 2000.0)}  # USD per 1M tokens: ~$0.1 per unit here
    llm = wrap(SlowFake("fake:m", answers=answers), prices=prices, priced=True)
    stage = explain_stage(llm, records)
    est = estimate_stage(stage, run)
    assert est.requests == 11
    unit = cost("fake:m", est.prompt_tokens, est.completion_tokens, prices) / 11
    budget = 2.5 * unit  # room for two units; 8 would start at once before
    s = asyncio.run(
        run_stage(stage, run, concurrency=8, max_cost=budget, prices=prices, show_progress=False)
    )
    spent = sum(u.cost_usd or 0 for u in run.usage())
    # Before: all 8 started at once on a fresh run (no cost history) and spent ~3x.
    assert s.stopped_for_budget and 0 < spent <= budget
    assert s.done + s.remaining == 11


# ------------------------------------------------------------------ the lock (item 6)


def test_a_second_job_on_the_same_run_directory_is_refused_naming_the_holder(tmp_path):
    run = make_run(tmp_path, 2)
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from neuroscribe.rundir import RunDir\n"
         "with RunDir(sys.argv[1]).lock():\n    print('held', flush=True); time.sleep(30)",
         str(run.root)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        config = RunConfig.build(run_dir=run.root, explain={"model": "fake:x"})
        with pytest.raises(
            ConfigError, match=f"in use by another neuroscribe job \\(pid {holder.pid}\\)"
        ):
            api.explain(config)
        assert not run.path("explanations").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.05)
    with run.lock(), run.lock():  # free again once the holder is gone; re-entrant
        pass


def test_lines_written_twice_for_one_key_are_read_once(tmp_path):
    run = make_run(tmp_path, 2)
    go(explain_stage(fake(), run.records()), run)
    text = run.path("explanations").read_text()
    run.path("explanations").write_text(text + text)  # two racing jobs, before the lock
    assert len(run.explanations()) == 1
    assert len(explain_stage(fake(), run.records()).plan(run).items) == 0


# ------------------------------------------------------------------ absurd values (item 9)


def test_an_activation_of_1e308_is_refused_with_file_and_line(tmp_path):
    run = RunDir(tmp_path)
    run.records_dir.mkdir()
    good = record(0).model_dump(mode="json")
    bad = json.loads(json.dumps(good))
    bad["unit_id"] = "m/0/9"
    bad["most_positive_activation_records"][0]["activations"][1] = 1e308
    path = run.records_dir / "r.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"r\.jsonl:2.*out of range"):
        run.records()


# ------------------------------------------------------------------ dry run (item 11)


def test_a_dead_unit_does_not_abort_the_dry_run_and_is_counted_as_the_job_would(tmp_path):
    run = make_run(tmp_path, 3)
    dead = NeuronRecord(
        unit_id="m/0/dead",
        most_positive_activation_records=[ActivationRecord(tokens=[" a"], activations=[0.0])],
        random_sample=[ActivationRecord(tokens=[" b"], activations=[0.0])],
    )
    append_jsonl(run.records_dir / "r.jsonl", [dead])
    config = RunConfig.build(
        run_dir=run.root,
        splits={"n_train": 1, "n_test_top": 1, "n_test_random": 1,
                "n_calibration_top": 0, "n_calibration_random": 0},
        explain={"model": "fake:x"}, score={"model": "fake:x", "strategy": "json"},
    )  # fmt: skip
    explain, score = api.estimate(config)
    assert explain.units == 3 and explain.requests == 3
    assert any("1 units would be recorded as failures" in n for n in explain.notes)
    assert score.requests == 3 * 2


# ------------------------------------------------------------------ options (items 12, 14)


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--concurrency", "0"], "--concurrency"),
        (["--concurrency", "-3"], "--concurrency"),
        (["--max-units", "-1"], "--max-units"),
        (["--sim-examples", "-1"], "--sim-examples"),
        (["--temperature", "99"], "--temperature"),
        (["--max-tokens", "0"], "--max-tokens"),
        (["--timeout", "-1"], "--timeout"),
        (["--n-train", "0"], "--n-train"),
        (["--n-test-top", "0", "--n-test-random", "0"], "--n-test"),
        (["--units", ""], "--units"),
        (["--strategy", "bogus"], "--strategy"),
        (["--scorer", "bogus"], "--scorer"),
    ],
)
def test_bad_options_are_one_clear_error_before_anything_runs(tmp_path, flags, named):
    run = make_run(tmp_path, 2)
    before = sorted(p.name for p in run.root.iterdir())
    r = run_cli("run", str(run.root), "--explainer", "fake:x", "--simulator", "fake:x",
                "--dry-run", *flags, check=False)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0 and named in out and "Traceback" not in out
    assert sorted(p.name for p in run.root.iterdir()) == before


def test_the_whole_configuration_is_checked_before_the_explain_stage_is_paid_for(tmp_path):
    run = make_run(tmp_path, 2)
    r = run_cli("run", str(run.root), "--explainer", "fake:x", "--strategy", "bogus",
                check=False)  # fmt: skip
    assert r.returncode == 1 and "--strategy" in r.stderr
    assert not run.path("explanations").exists() and not run.path("usage").exists()


def test_an_os_error_on_a_run_file_is_one_error_naming_it(tmp_path):
    # (What a read-only directory or a full disk gives too; root ignores permissions.)
    run = make_run(tmp_path, 1)
    run.path("explanations").mkdir()
    r = run_cli("explain", str(run.root), "--explainer", "fake:x", check=False)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(run.path("explanations")) in r.stderr


def test_a_manifest_or_record_file_that_is_a_folder_or_binary_is_one_error(tmp_path):
    run = make_run(tmp_path, 1)
    run.manifest_path.mkdir()
    r = run_cli("explain", str(run.root), "--explainer", "fake:x", check=False)
    assert r.returncode == 1 and "not a file" in r.stderr and "Traceback" not in r.stderr
    run.manifest_path.rmdir()
    run.manifest_path.write_bytes(b"\xff\xfe\x00binary")
    r = run_cli("explain", str(run.root), "--explainer", "fake:x", check=False)
    assert r.returncode == 1 and "not a text file" in r.stderr
    run.manifest_path.unlink()
    (run.records_dir / "folder.jsonl").mkdir()
    r = run_cli("explain", str(run.root), "--explainer", "fake:x", check=False)
    assert r.returncode == 1 and "folder.jsonl: not a file" in r.stderr


@pytest.mark.skipif(sys.platform == "win32" or __import__("os").geteuid() == 0,
                    reason="root ignores directory permissions")  # fmt: skip
def test_a_read_only_run_directory_is_one_error_naming_it(tmp_path):
    run = make_run(tmp_path, 1)
    run.root.chmod(0o555)
    try:
        r = run_cli("explain", str(run.root), "--explainer", "fake:x", check=False)
    finally:
        run.root.chmod(0o755)
    assert r.returncode == 1 and str(run.root) in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------ unit selection


def test_an_exact_unit_id_with_glob_characters_selects_itself(tmp_path):
    recs = [
        NeuronRecord(unit_id="m/blocks[0]/1", most_positive_activation_records=[
            ActivationRecord(tokens=[" a"], activations=[1.0])]),
        NeuronRecord(unit_id="m/blocks0/1", most_positive_activation_records=[
            ActivationRecord(tokens=[" a"], activations=[1.0])]),
    ]  # fmt: skip
    chosen = api.select_units(recs, ["m/blocks[0]/1"], None)
    assert [r.unit_id for r in chosen] == ["m/blocks[0]/1"]


# ------------------------------------------------------------------ a refused key


def test_a_fatal_error_stops_the_job_at_the_first_unit(tmp_path):
    run = make_run(tmp_path, 6)
    err = LLMError("authentication failed (401): check OPENAI_API_KEY", status=401)
    err.fatal = True
    llm = SlowFake("fake:m", answers=answers, fail=err)
    with pytest.raises(LLMError, match="401"):
        asyncio.run(run_stage(explain_stage(llm, run.records()), run, concurrency=2,
                              show_progress=False))  # fmt: skip
    assert len(llm.calls) <= 2  # the units already in flight, not one per unit
    assert run.failures() == []  # not the units' fault: nothing to retry later


# ------------------------------------------------------------------ the results table


def test_a_constant_prediction_shows_its_flag_next_to_the_zero(tmp_path):
    from test_stages import score_stage

    def flat(request, **params):
        if params.get("response_format"):
            fmt = params["response_format"]
            schema = fmt.get("schema") or fmt["json_schema"]["schema"]
            return json.dumps(
                {"activations": [0] * schema["properties"]["activations"]["minItems"]}
            )
        return answers(request, **params)

    run = make_run(tmp_path, 1)
    go(explain_stage(fake(), run.records()), run)
    go(score_stage(FakeLLM("fake:m", answers=flat, capabilities=fake()._caps), run.records()), run)
    run.path("scores").unlink()
    r = run_cli("score", str(run.root))
    assert "+0.000 (constant_prediction)" in r.stdout


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU")
def test_record_on_cuda_without_a_gpu_is_a_clear_error(tmp_path):
    from neuroscribe.datasets.record import record_run

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        record_run(tmp_path / "run", device="cuda")
    assert not (tmp_path / "run").exists()


def test_a_cut_off_last_record_line_is_an_error_not_a_silently_lost_unit(tmp_path):
    run = make_run(tmp_path, 2)
    path = run.records_dir / "r.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # the last record cut mid-line
    with pytest.raises(DataError, match=r"r\.jsonl:2: malformed JSON"):
        run.records()


def test_credentials_in_a_probe_never_reach_the_manifest(tmp_path):
    run = RunDir(tmp_path)
    probe = {"base_url": "http://user:hunter22@127.0.0.1:9/v1?api_key=s3cr3tvalue", "chat": True}
    run.update_manifest("simulate", {"config_hash": "h"}, probes={"m": probe})
    text = run.manifest_path.read_text()
    assert "hunter22" not in text and "s3cr3tvalue" not in text and "127.0.0.1:9" in text
