"""The job engine: failures isolated and recorded, lines written once, rerun skips."""

from __future__ import annotations

import asyncio

from neuroscribe.engine import JobEngine
from neuroscribe.errors import OutputError
from neuroscribe.rundir import RunDir
from neuroscribe.schema import ItemKey, UsageRecord
from neuroscribe.stages.base import WorkItem, WorkResult


def item(i: int) -> WorkItem:
    return WorkItem(key=ItemKey(stage="explain", config_hash="h", unit_id=f"u{i}"))


def test_failures_isolated_and_written(tmp_path):
    run = RunDir(tmp_path)

    async def work(it: WorkItem) -> WorkResult:
        await asyncio.sleep(0.001)
        i = int(it.unit_id[1:])
        if i % 3 == 0:
            raise OutputError("no digits in the answer", raw="garbage")
        if i == 4:
            raise RuntimeError("boom")
        usage = UsageRecord(stage="t", model="m", unit_id=it.unit_id, prompt_tokens=10)
        return WorkResult(usage=[usage])

    engine = JobEngine(run, "explain", "h", concurrency=4, show_progress=False)
    summary = asyncio.run(engine.run([item(i) for i in range(10)], work))
    assert summary.done == 5 and summary.failed == 5
    failures = run.failures()
    assert sorted(f.unit_id for f in failures) == ["u0", "u3", "u4", "u6", "u9"]
    by_unit = {f.unit_id: f for f in failures}
    assert by_unit["u0"].reason == "no digits in the answer" and by_unit["u0"].raw == "garbage"
    assert by_unit["u0"].item_key == item(0).key  # typed keys, not strings parsed back
    assert "internal error: RuntimeError: boom" in by_unit["u4"].reason
    assert len(run.usage()) == 5
    assert summary.prompt_tokens == 50


def test_usage_of_unusable_answers_is_still_recorded(tmp_path):
    run = RunDir(tmp_path)

    async def work(it: WorkItem) -> WorkResult:
        err = OutputError("no digits", raw="x")
        err.usage_records = [UsageRecord(stage="simulate", model="m", prompt_tokens=7)]
        raise err

    engine = JobEngine(run, "simulate", "h", show_progress=False)
    summary = asyncio.run(engine.run([item(0)], work))
    assert summary.failed == 1 and summary.prompt_tokens == 7
    assert [u.prompt_tokens for u in run.usage()] == [7]
