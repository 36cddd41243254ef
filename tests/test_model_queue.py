"""Calls on one local model wait on the event loop, not in the loop's worker threads.

A job sends many calls at once to an in-process model that runs one at a time. If each
waited for the model inside a worker thread, the loop's small default pool would fill up
and any other `to_thread` on that loop (the service's single calls and progress reads)
would wait for the whole job.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from neuroscribe.llm.local import LocalModel, queued_for_model, run_on_model


@pytest.mark.slow  # seconds of real waiting: runs in CI's full suite
def test_a_busy_model_leaves_the_loop_threads_free_and_runs_one_call_at_a_time():
    loaded = LocalModel(path="x", model=None, tokenizer=None, device="cpu")
    running, most = 0, 0
    guard = threading.Lock()

    def slow_call(i: int) -> int:
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return i

    async def main() -> tuple[list[int], float]:
        calls = [asyncio.create_task(run_on_model(loaded, slow_call, i)) for i in range(40)]
        await asyncio.sleep(0.01)
        start = time.perf_counter()
        assert await asyncio.to_thread(lambda: "free") == "free"
        other = time.perf_counter() - start
        return await asyncio.gather(*calls), other

    results, other_wait = asyncio.run(main())
    assert results == list(range(40))  # every call ran, in order
    assert most == 1  # the model's calls never overlapped
    # 40 calls take 2 s; another thread job on the loop did not wait for them.
    assert other_wait < 1.0


def test_queued_work_may_take_the_model_lock_itself():
    loaded = LocalModel(path="x", model=None, tokenizer=None, device="cpu")

    def twice() -> str:
        with loaded.lock:
            pass
        with loaded.lock:
            return "ok"

    async def main() -> list[str]:
        return await asyncio.gather(*(queued_for_model(loaded, twice) for _ in range(10)))

    assert asyncio.run(main()) == ["ok"] * 10


@pytest.mark.slow
def test_two_threads_converting_the_embedded_model_at_once_both_load_it(tmp_path, monkeypatch):
    # A service that starts two jobs on a fresh machine converts the GGUF from two threads.
    monkeypatch.setenv("NEUROSCRIBE_CACHE", str(tmp_path))
    from neuroscribe.embedded import embedded_model_dir
    from neuroscribe.llm.local import ModelStore, load_local_model

    with ThreadPoolExecutor(2) as pool:
        folders = list(pool.map(lambda _: embedded_model_dir(), range(2)))
    assert folders[0] == folders[1] and folders[0].is_relative_to(tmp_path)
    loaded = load_local_model("hf:embedded", store=ModelStore())
    assert not any(p.is_meta for p in loaded.model.parameters())
    assert [p.name for p in folders[0].parent.iterdir() if ".tmp-" in p.name] == []
