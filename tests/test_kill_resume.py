"""kill -9 at random moments, then resume: the same lines as an uninterrupted run, once each.

The job (explain → simulate → score on tiny records, real llama.cpp server) runs in a
child process that is SIGKILLed several times at seeded random points; rerunning the
same command must finish with exactly the keys and scores of a run that was never
interrupted. The run's response cache makes the answers deterministic across restarts.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from _tiny_jobs import make_run, outputs

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_UNITS = 12
TESTS = Path(__file__).parent

ENTRY = """
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
from _tiny_jobs import run_job
run = Path(sys.argv[1])
run_job(run, sys.argv[2], cache=Path(sys.argv[4]))
print("finished")
"""


def start_job(run: Path, base_url: str, cache: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", ENTRY, str(run), base_url, str(TESTS), str(cache)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def lines(path: Path) -> int:
    return len(path.read_bytes().splitlines()) if path.exists() else 0


def test_sigkill_at_random_points_then_resume_equals_uninterrupted_run(tmp_path, llama_server):
    run = make_run(tmp_path / "killed", N_UNITS)
    cache = run / ".cache" / "responses.sqlite"
    rng = random.Random(42)
    kills = 0
    progress = []
    for _ in range(5):
        job = start_job(run, llama_server.base_url, cache)
        # Imports take ~2 s, then each unit ~1-3 s: kill anywhere in the first units
        # (while calls are in flight, between the usage and output writes, ...).
        try:
            job.wait(timeout=rng.uniform(2.0, 9.0))
        except subprocess.TimeoutExpired:
            job.send_signal(signal.SIGKILL)
            job.wait()
            kills += 1
        progress.append((lines(run / "explanations.jsonl"), lines(run / "simulations.jsonl")))
        if job.returncode == 0:
            break
    assert kills >= 3, f"the job finished before it could be killed often enough: {progress}"

    job = start_job(run, llama_server.base_url, cache)  # resume to the end
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out
    got = outputs(run)
    print(f"{kills} kills; lines after each (explanations, simulations): {progress}")

    # The same job never interrupted, answered from the same response cache (llama.cpp
    # is not bitwise deterministic across its prompt-cache states; the cache is).
    reference = make_run(tmp_path / "reference", N_UNITS)
    job = start_job(reference, llama_server.base_url, cache)
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out
    expected = outputs(reference)
    assert expected["scores"], "the uninterrupted run scored nothing"

    assert not got["duplicates"], got["duplicates"]
    assert got["explanations"] == expected["explanations"]
    assert got["simulations"] == expected["simulations"]
    assert got["scores"] == expected["scores"]
    assert {f.key for f in got["failures"]} == {f.key for f in expected["failures"]}
