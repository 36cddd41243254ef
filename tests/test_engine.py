"""The job engine: failures isolated and recorded, lines written once, rerun skips."""

from __future__ import annotations

import asyncio

from neuroscribe.engine import JobEngine, WorkItem, WorkResult
from neuroscribe.errors import OutputError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.schema import Failure, UsageRecord


def test_failures_isolated_and_written(tmp_path):
    out = tmp_path / "out.jsonl"

    async def work(item: WorkItem) -> WorkResult:
        await asyncio.sleep(0.001)
        if item.payload % 3 == 0:
            raise OutputError("no digits in the answer", raw="garbage")
        if item.payload == 4:
            raise RuntimeError("boom")
        usage = UsageRecord(stage="t", model="m", unit_id=item.unit_id, prompt_tokens=10)
        return WorkResult(writes={out: [usage]}, usage=[usage])

    items = [WorkItem(key=f"k{i}", unit_id=f"u{i}", payload=i) for i in range(10)]
    engine = JobEngine(tmp_path, "explain", "h", concurrency=4, show_progress=False)
    summary = asyncio.run(engine.run(items, work))
    assert summary.done == 5 and summary.failed == 5
    failures = read_jsonl(tmp_path / "failures.jsonl", Failure)
    assert sorted(f.key for f in failures) == sorted(["k0", "k3", "k4", "k6", "k9"])
    by_key = {f.key: f for f in failures}
    assert by_key["k0"].reason == "no digits in the answer" and by_key["k0"].raw == "garbage"
    assert "internal error: RuntimeError: boom" in by_key["k4"].reason
    assert len(read_jsonl(out, UsageRecord)) == 5
    assert summary.prompt_tokens == 50


def test_usage_of_unusable_answers_is_still_recorded(tmp_path):
    async def work(item: WorkItem) -> WorkResult:
        err = OutputError("no digits", raw="x")
        err.usage_records = [UsageRecord(stage="simulate", model="m", prompt_tokens=7)]
        raise err

    engine = JobEngine(tmp_path, "simulate", "h", show_progress=False)
    summary = asyncio.run(engine.run([WorkItem(key="k", unit_id="u", payload=None)], work))
    assert summary.failed == 1 and summary.prompt_tokens == 7
    assert [u.prompt_tokens for u in read_jsonl(tmp_path / "usage.jsonl", UsageRecord)] == [7]
