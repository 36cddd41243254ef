"""The service as users run it: `neuroscribe serve` in its own process (uvicorn, loopback).

Killed with SIGKILL in the middle of a job, then stopped with SIGTERM, and started again
each time: the job completes with the same lines as an uninterrupted `api.run` of the
same configuration, and not one line twice.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import _service_fake
from _tiny_jobs import make_run, outputs
from neuroscribe import api
from neuroscribe.config import RunConfig
from test_service import CONFIG, config

pytestmark = pytest.mark.slow
_service_fake.register()
SERVER = Path(__file__).parent / "_service_server.py"
TOKEN = "a-test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, root: Path, *args: str) -> None:
        self.root, self.args, self.port = root, args, free_port()
        self.proc: subprocess.Popen | None = None
        self.log = root.parent / f"server-{self.port}.log"

    def start(self, token: str | None = None) -> Server:
        env = {**os.environ, "NO_COLOR": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), "--root", str(self.root), "--port", str(self.port),
             "--rate-limit", "0", *self.args],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10,
                                 headers=headers)  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if self.http.get("/v1/health").status_code in (200, 401):
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.http.close()

    def job(self, job_id: str) -> dict:
        return self.http.get(f"/v1/jobs/{job_id}").json()

    def wait_for(self, job_id: str, ok, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if ok(job):
                return job
            assert job["state"] not in ("failed", "cancelled"), job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    made: list[Server] = []

    def make(*args: str) -> Server:
        s = Server(tmp_path / "root", *args)
        made.append(s)
        return s

    (tmp_path / "root").mkdir()
    yield make
    for s in made:
        s.stop()


def test_kill_9_mid_job_and_restart_complete_the_job_with_nothing_lost_or_twice(server, tmp_path):
    root = tmp_path / "root"
    make_run(root / "big", 16)
    cfg = config(explain={"model": "svcfake:d0.25"}, score={"model": "svcfake:d0.25"},
                 jobs={"concurrency": 2})  # fmt: skip
    s = server().start()
    job = s.http.post("/v1/jobs", json={"run": "big", "config": cfg}).json()
    s.wait_for(job["id"], lambda j: (j["progress"] or {}).get("units_explained", 0) >= 4)
    s.stop(signal.SIGKILL)  # mid-explain
    mid = outputs(root / "big")
    assert 4 <= len(mid["explanations"]) < 16

    s.start()
    j = s.wait_for(job["id"], lambda j: (j["progress"] or {}).get("units_scored", 0) >= 3)
    assert j["state"] == "running"
    s.stop(signal.SIGTERM)  # mid-score, gracefully: the job waits, queued
    # (uvicorn re-raises the signal after its graceful shutdown: -15 is a clean stop.)
    assert s.proc.returncode in (0, -signal.SIGTERM), s.log.read_text()
    with sqlite3.connect(root / ".neuroscribe" / "jobs.sqlite") as db:
        assert db.execute("SELECT state FROM jobs").fetchall() == [("queued",)]
        texts = [r[0] for r in db.execute("SELECT data FROM events WHERE kind = 'message'")]
    assert any("server stopping" in t for t in texts)

    s.start()
    done = s.wait_for(job["id"], lambda j: j["state"] == "done")
    assert done["attempts"] == 3
    p = done["progress"]
    assert (p["units_done"], p["units_failed"], p["units_left"]) == (16, 0, 0)
    s.stop(signal.SIGTERM)

    ref = make_run(tmp_path / "ref", 16)
    api.run(
        RunConfig.build(run_dir=ref, **{**cfg, "jobs": {**cfg["jobs"], "show_progress": False}})
    )
    ours, theirs = outputs(root / "big"), outputs(ref)
    assert not ours["duplicates"], ours["duplicates"]
    assert ours["explanations"] == theirs["explanations"] and len(ours["explanations"]) == 16
    assert ours["scores"] == theirs["scores"] and len(ours["scores"]) == 16
    assert ours["simulations"] == theirs["simulations"]
    assert not ours["failures"]
    for unit, text in mid["explanations"].items():
        assert ours["explanations"][unit] == text


def test_beyond_loopback_every_route_needs_the_token(server, tmp_path):
    make_run(tmp_path / "root" / "a", 2)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    s = server("--host", "0.0.0.0", "--token-file", str(token_file)).start()
    for path in ("/v1/health", "/v1/jobs", "/", "/v1/openapi.json", "/runs/a/"):
        assert s.http.get(path).status_code == 401, path
    ok = {"Authorization": f"Bearer {TOKEN}"}
    assert s.http.get("/v1/health", headers=ok).json()["status"] == "ok"
    job = s.http.post("/v1/jobs", json={"run": "a", "config": CONFIG}, headers=ok).json()
    deadline = time.monotonic() + 60
    while s.http.get(f"/v1/jobs/{job['id']}", headers=ok).json()["state"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert TOKEN not in s.log.read_text()


def test_without_a_token_a_non_loopback_bind_is_refused(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SERVER), "--root", str(tmp_path), "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "NEUROSCRIBE_TOKEN": ""},
    )  # fmt: skip
    assert r.returncode == 1 and "bearer token" in r.stderr and "Traceback" not in r.stderr


def test_a_job_on_the_embedded_model_gives_the_same_lines_as_neuroscribe_run(server, tmp_path):
    # The real default model in the service process: explained at temperature 0, simulated
    # exactly from its logits, scored; the same lines as the library's run of the config.
    root = tmp_path / "root"
    make_run(root / "emb", 2)
    cfg = {
        "splits": {"n_train": 1, "n_test_top": 1, "n_test_random": 1},
        "explain": {"model": "hf:embedded",
                    "settings": {"temperature": 0, "max_tokens": 30, "n_examples": 3}},
        "score": {"model": "hf:embedded", "strategy": "exact", "n_examples": 1},
    }  # fmt: skip
    s = server().start()
    job = s.http.post("/v1/jobs", json={"run": "emb", "config": cfg}).json()
    done = s.wait_for(job["id"], lambda j: j["state"] == "done", timeout=600)
    assert done["progress"]["units_done"] + done["progress"]["units_failed"] == 2

    ref = make_run(tmp_path / "ref", 2)
    api.run(RunConfig.build(run_dir=ref, **cfg, jobs={"show_progress": False}))
    ours, theirs = outputs(root / "emb"), outputs(ref)
    assert ours["explanations"] == theirs["explanations"]
    assert sorted(f.unit_id for f in ours["failures"]) == sorted(
        f.unit_id for f in theirs["failures"]
    )
    assert ours["scores"].keys() == theirs["scores"].keys()
    for unit, (text, score, n) in ours["scores"].items():
        ref_text, ref_score, ref_n = theirs["scores"][unit]
        assert (text, n) == (ref_text, ref_n)
        assert score == pytest.approx(ref_score, abs=1e-4)  # same numbers, another process
    assert len(ours["scores"]) == 2  # measured: both units get a real explanation
    assert not ours["duplicates"]


def test_bounded_load_reports_read_latency_percentiles_while_a_job_runs():
    # bench/service_load.py, kept small: 4 clients x 25 requests, one round, loopback only.
    # It stops at the first non-200, so a clean exit means every request succeeded.
    bench = Path(__file__).resolve().parent.parent / "bench" / "service_load.py"
    proc = subprocess.run(
        [sys.executable, str(bench), "--clients", "4", "--requests", "25", "--repeats", "1",
         "--units", "40"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "median throughput:" in proc.stdout
    table = proc.stdout.split("p95 ms", 1)[1]
    rows = {line.split()[0]: line.split()[1:] for line in table.strip().splitlines() if line}
    for endpoint in ("list", "get", "units", "scores"):  # the read endpoints
        p50, p95 = (float(x) for x in rows[endpoint])
        assert 0 < p50 <= p95, (endpoint, p50, p95)
