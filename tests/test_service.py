"""The service (`neuroscribe serve`) in process: API contract, jobs, results, errors, fuzz.

A deterministic backend (`svcfake:`, tests/_service_fake.py) is named in the configs like
any model, so a job finishes in well under a second and its results can be compared
line for line with `neuroscribe run` on the same configuration.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

import _service_fake
from _cli import run_cli
from _tiny_jobs import CLI_FLAGS, make_run, outputs
from conftest import SERVER_KEY
from neuroscribe.errors import ConfigError
from neuroscribe.service import ServiceConfig, check_bind, create_app
from neuroscribe.service.client import Client, ServiceError

_service_fake.register()

# The same job as CLI_FLAGS (tests/_tiny_jobs.py) with `--explainer/--simulator svcfake:x`.
CONFIG = {
    "splits": {"n_train": 1, "n_test_top": 1, "n_test_random": 1},
    "explain": {"model": "svcfake:x", "settings": {"temperature": 0, "max_tokens": 16}},
    "score": {"model": "svcfake:x", "strategy": "json", "n_examples": 0},
}
BASE = "http://127.0.0.1"


def config(**changes) -> dict:
    cfg = json.loads(json.dumps(CONFIG))
    for section, values in changes.items():
        cfg.setdefault(section, {}).update(values)
    return cfg


@pytest.fixture
def root(tmp_path) -> Path:
    root = tmp_path / "root"
    make_run(root / "a", 4)
    make_run(root / "b", 3)
    return root


def open_service(root: Path, **kw) -> TestClient:
    kw.setdefault("rate_limit", 0)
    return TestClient(create_app(ServiceConfig(root=root, **kw)), base_url=BASE)


@pytest.fixture
def svc(root):
    with open_service(root) as c:
        yield c


def wait(c: TestClient, job_id: str, states=("done", "failed", "cancelled"), timeout=30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = c.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in states:
            return job
        assert time.monotonic() < deadline, f"job still {job['state']}: {job}"
        time.sleep(0.03)


def start(c: TestClient, run: str = "a", cfg: dict | None = None, **body) -> dict:
    r = c.post("/v1/jobs", json={"run": run, "config": cfg or CONFIG, **body})
    assert r.status_code == 201, r.text
    return r.json()


def assert_clean_error(r, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in r.text
    for w in words:
        assert w in body["error"], body["error"]


# ------------------------------------------------------------------ jobs


@pytest.mark.slow
def test_a_job_through_the_service_writes_what_neuroscribe_run_writes(svc, root, tmp_path):
    job = wait(svc, start(svc)["id"])
    assert job["state"] == "done" and job["error"] is None
    cli_run = make_run(tmp_path / "cli", 4)
    run_cli("run", str(cli_run), "--explainer", "svcfake:x", "--simulator", "svcfake:x", *CLI_FLAGS)
    ours, theirs = outputs(root / "a"), outputs(cli_run)
    assert ours["explanations"] == theirs["explanations"] and len(ours["explanations"]) == 4
    assert ours["scores"] == theirs["scores"] and len(ours["scores"]) == 4
    assert ours["simulations"] == theirs["simulations"]
    assert not ours["duplicates"] and not ours["failures"]
    # Same key spaces: a `neuroscribe run` on the service's run directory has nothing to do.
    manifest = lambda p: json.loads((p / "manifest.json").read_text())["stages"]  # noqa: E731
    for stage in ("explain", "simulate"):
        assert manifest(root / "a")[stage]["config_hash"] == manifest(cli_run)[stage]["config_hash"]
    p = job["progress"]
    assert (p["units_total"], p["units_done"], p["units_failed"], p["units_left"]) == (4, 4, 0, 0)
    assert p["prompt_tokens"] > 0 and p["completion_tokens"] > 0
    assert set(job["summaries"]) == {"explain", "simulate"}


def test_live_events_tell_state_stages_and_progress(svc):
    job = wait(svc, start(svc)["id"])
    r = svc.get(f"/v1/jobs/{job['id']}/events", params={"follow": "false"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in r.text.splitlines() if line.startswith("data:")]
    kinds = [e["kind"] for e in events if "kind" in e]
    states = [e["data"]["state"] for e in events if e.get("kind") == "state"]
    assert states == ["queued", "running", "done"]
    assert "stage" in kinds and "progress" in kinds
    assert [e["seq"] for e in events if "seq" in e] == sorted(
        e["seq"] for e in events if "seq" in e
    )
    assert "event: end" in r.text
    # Resuming the stream after an event id sends only what came later.
    r2 = svc.get(f"/v1/jobs/{job['id']}/events", headers={"Last-Event-ID": "2"})
    later = [json.loads(x[5:]) for x in r2.text.splitlines() if x.startswith("data:")]
    assert min(e["seq"] for e in later if "seq" in e) == 3


@pytest.mark.slow
def test_list_jobs_pages_and_filters(svc):
    ids = [start(svc, "a")["id"]]
    wait(svc, ids[0])
    ids.append(start(svc, "b")["id"])
    wait(svc, ids[1])
    ids.append(start(svc, "a")["id"])  # a second job on a, after the first finished
    wait(svc, ids[2])
    all_ = svc.get("/v1/jobs").json()
    assert all_["total"] == 3 and {j["id"] for j in all_["items"]} == set(ids)
    first = svc.get("/v1/jobs", params={"limit": 2}).json()
    rest = svc.get("/v1/jobs", params={"limit": 2, "offset": 2}).json()
    assert len(first["items"]) == 2 and len(rest["items"]) == 1
    assert {j["id"] for j in first["items"] + rest["items"]} == set(ids)
    only_b = svc.get("/v1/jobs", params={"run": "b"}).json()
    assert [j["id"] for j in only_b["items"]] == [ids[1]]
    assert svc.get("/v1/jobs", params={"state": "running"}).json()["total"] == 0
    assert svc.get("/v1/jobs", params={"state": "done"}).json()["total"] == 3


@pytest.mark.slow
def test_cancel_then_resume_finishes_without_duplicates(svc, root):
    make_run(root / "slow", 10)
    cfg = config(explain={"model": "svcfake:d0.05"}, jobs={"concurrency": 1})
    job = start(svc, "slow", cfg)
    wait(svc, job["id"], states=("running",))
    time.sleep(0.15)
    r = svc.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    before = outputs(root / "slow")
    assert 0 < len(before["explanations"]) < 10
    assert_clean_error(svc.post(f"/v1/jobs/{job['id']}/cancel"), 409, "already cancelled")
    r = svc.post(f"/v1/jobs/{job['id']}/resume", json={})
    assert r.status_code == 200 and r.json()["state"] in ("queued", "running")
    done = wait(svc, job["id"])
    assert done["state"] == "done" and done["attempts"] == 2
    after = outputs(root / "slow")
    assert len(after["explanations"]) == 10 and len(after["scores"]) == 10
    assert not after["duplicates"]
    for unit, text in before["explanations"].items():
        assert after["explanations"][unit] == text  # kept, not redone
    assert_clean_error(svc.post(f"/v1/jobs/{job['id']}/cancel"), 409, "already done")


@pytest.mark.slow
def test_a_second_job_on_a_busy_run_is_refused_and_other_runs_go_on(svc, root):
    make_run(root / "slow", 6)
    cfg = config(explain={"model": "svcfake:d0.05"}, jobs={"concurrency": 1})
    job = start(svc, "slow", cfg)
    assert_clean_error(svc.post("/v1/jobs", json={"run": "slow", "config": CONFIG}), 409,
                       "already has an active job", job["id"])  # fmt: skip
    other = wait(svc, start(svc, "b")["id"])
    assert other["state"] == "done"
    assert svc.post(f"/v1/jobs/{job['id']}/resume").status_code == 409  # still running
    wait(svc, job["id"])


def test_a_failing_job_fails_alone_with_its_reason(svc, root):
    # A model endpoint nobody listens on: this job fails; the job on b is untouched.
    bad = config(explain={"model": "no-such-model"}, endpoint={"base_url": "http://127.0.0.1:9/v1"})
    failed = start(svc, "a", bad)
    ok = start(svc, "b")
    failed, ok = wait(svc, failed["id"]), wait(svc, ok["id"])
    assert failed["state"] == "failed" and failed["error"]
    assert "Traceback" not in failed["error"]
    assert ok["state"] == "done" and ok["progress"]["units_done"] == 3


def test_a_dead_unit_is_a_failure_of_its_job_the_rest_is_done(svc, root):
    from neuroscribe.schema import ActivationRecord, NeuronRecord

    records = [
        NeuronRecord(
            unit_id=f"posted/1/{i}",
            most_positive_activation_records=[
                ActivationRecord(tokens=[" cat", " sat", " mat"], activations=[0, 4 + i, 0])
                for _ in range(2)
            ],
            random_sample=[ActivationRecord(tokens=[" a", " b"], activations=[0, 0])],
        ).model_dump(mode="json")
        for i in range(3)
    ]
    records[1]["most_positive_activation_records"][0]["activations"] = [0, 0, 0]
    records[1]["most_positive_activation_records"][1]["activations"] = [0, 0, 0]
    job = wait(svc, start(svc, "posted", records=records)["id"])
    assert job["state"] == "done"
    p = job["progress"]
    assert (p["units_total"], p["units_done"], p["units_failed"], p["units_left"]) == (3, 2, 1, 0)
    fails = svc.get("/v1/runs/posted/failures").json()
    assert fails["total"] == 1 and fails["items"][0]["unit_id"] == "posted/1/1"
    assert (root / "posted" / "records" / "posted.jsonl").exists()
    # Posting records again to a run that holds some is refused.
    assert_clean_error(svc.post("/v1/jobs", json={"run": "posted", "records": records}), 409,
                       "already holds records")  # fmt: skip


# ------------------------------------------------------------------ results


def test_results_are_paged_and_filtered(svc, root):
    wait(svc, start(svc)["id"])
    units = svc.get("/v1/runs/a/units").json()
    assert units["total"] == 4 and [u["unit_id"] for u in units["items"]][:2] == ["m/0/0", "m/0/1"]
    page2 = svc.get("/v1/runs/a/units", params={"offset": 3, "limit": 2}).json()
    assert [u["unit_id"] for u in page2["items"]] == ["m/0/3"]
    assert svc.get("/v1/runs/a/units", params={"layer": "0"}).json()["total"] == 4
    assert svc.get("/v1/runs/a/units", params={"layer": "7"}).json()["total"] == 0
    expl = svc.get("/v1/runs/a/explanations").json()["items"]
    word = expl[0]["text"].split()[-1]
    hits = svc.get("/v1/runs/a/explanations", params={"q": word.upper()}).json()["items"]
    assert hits and all(word in e["text"] for e in hits)
    scores = svc.get("/v1/runs/a/scores").json()["items"]
    values = sorted(s["metrics"]["score"] for s in scores)
    lo = values[len(values) // 2]
    high = svc.get("/v1/runs/a/scores", params={"min_score": lo}).json()["items"]
    assert high and all(s["metrics"]["score"] >= lo for s in high)
    assert len(high) < len(scores) or values[0] == lo
    low = svc.get("/v1/runs/a/units", params={"max_score": lo - 1e-9}).json()["items"]
    assert all(u["best_score"] < lo for u in low)
    by_score = svc.get("/v1/runs/a/units", params={"sort": "score"}).json()["items"]
    best = [u["best_score"] for u in by_score]
    assert best == sorted(best, reverse=True)
    detail = svc.get("/v1/runs/a/units/m/0/2").json()
    assert detail["unit_id"] == "m/0/2" and detail["explanations"][0]["excerpts"]
    meta = svc.get("/v1/runs/a").json()
    assert meta["meta"]["n_units"] == 4 and meta["open_failures"] == 0
    assert svc.get("/v1/runs/a/failures").json()["total"] == 0
    # The viewer's page and data, served live.
    assert svc.get("/runs/a/api/units").json()["meta"]["n_units"] == 4
    assert svc.get("/runs/a/api/unit", params={"id": "m/0/1"}).json()["unit_id"] == "m/0/1"


def test_results_follow_the_run_directory_live(svc, root):
    assert svc.get("/v1/runs/a/explanations").json()["total"] == 0
    wait(svc, start(svc)["id"])
    assert svc.get("/v1/runs/a/explanations").json()["total"] == 4


# ------------------------------------------------------------------ single calls


def test_single_explain_simulate_and_score_calls(svc):
    ex = [{"tokens": [" the", " cat", " sat"], "activations": [0, 6, 0]}]
    r = svc.post("/v1/explain", json={"model": "svcfake:x", "excerpts": ex, "n_samples": 2})
    assert r.status_code == 200, r.text
    assert r.json()["explanations"] == ["the word cat", "the word cat"]
    r = svc.post("/v1/simulate", json={"model": "svcfake:x", "explanation": "the word cat",
                                       "excerpts": [{"tokens": [" a", " cat"]}], "strategy": "json"})  # fmt: skip
    assert r.status_code == 200 and r.json()["excerpts"][0]["expected"] == [0.0, 7.0]
    body = {"model": "svcfake:x", "explanation": "the word cat", "strategy": "json",
            "excerpts": [{"tokens": [" cat", " dog"], "activations": [5, 0]},
                         {"tokens": [" sun", " moon"], "activations": [0, 0], "kind": "random"}]}  # fmt: skip
    r = svc.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["metrics"]["score"] == pytest.approx(1.0) and out["n_tokens"] == 4
    bad = svc.post("/v1/score", json={**body, "explanation": "the word zebra"}).json()
    assert (
        bad["metrics"]["score"] in (0.0, None) or bad["metrics"]["score"] < out["metrics"]["score"]
    )


@pytest.mark.slow  # seconds of real waiting: runs in CI's full suite
def test_single_calls_stay_fast_while_a_job_keeps_its_loop_busy(root):
    # The job's model holds its event loop 0.2 s per call (CPU-bound work on a loop);
    # single calls have their own loop, so they answer at once meanwhile.
    busy = config(explain={"model": "svcfake:b0.2"}, jobs={"concurrency": 4})
    make_run(root / "busy", 16)  # ~3 s of loop-holding work
    with open_service(root) as c:
        job = start(c, "busy", busy)
        wait(c, job["id"], states=("running",))
        time.sleep(0.4)
        body = {"model": "svcfake:x", "explanation": "the word cat", "strategy": "json",
                "excerpts": [{"tokens": [" a", " cat"]}]}  # fmt: skip
        took = []
        for _ in range(4):  # the first one also builds and preflights the model
            t0 = time.perf_counter()
            r = c.post("/v1/simulate", json=body)
            took.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
        assert max(took) < 1.0, took
        assert c.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"
        assert wait(c, job["id"])["state"] == "done"


def test_single_calls_refuse_bad_input_clearly(svc):
    r = svc.post("/v1/explain", json={"model": "svcfake:x", "excerpts": [{"tokens": ["a"]}]})
    assert_clean_error(r, 422, "activations")
    r = svc.post("/v1/explain", json={"model": "svcfake:x",
                                      "excerpts": [{"tokens": ["a", "b"], "activations": [1]}]})  # fmt: skip
    assert_clean_error(r, 422, "1 activations for 2 tokens")
    r = svc.post("/v1/explain", json={"model": "svcfake:x",
                                      "excerpts": [{"tokens": ["a"], "activations": [0]}]})  # fmt: skip
    assert_clean_error(r, 422, "nothing to explain")
    r = svc.post("/v1/simulate", json={"model": "svcfake:x", "explanation": "x",
                                       "excerpts": [{"tokens": ["a"]}], "strategy": "bogus"})  # fmt: skip
    assert_clean_error(r, 422, "unknown strategy")
    r = svc.post("/v1/score", json={"model": "svcfake:x", "explanation": "x", "scorer": "nope",
                                    "excerpts": [{"tokens": ["a"], "activations": [1]}]})  # fmt: skip
    assert_clean_error(r, 422, "unknown scorer")


# ------------------------------------------------------------------ bad input, security


@pytest.mark.parametrize(
    "run",
    ["../outside", "..", ".neuroscribe", "a/b", "/etc", "x" * 200, "", " a", "a\x00", "~root"],
)
def test_hostile_run_names_are_refused(svc, run):
    r = svc.post("/v1/jobs", json={"run": run, "config": CONFIG})
    assert r.status_code == 422, (run, r.text)
    assert "Traceback" not in r.text


def test_a_symlink_out_of_the_root_is_refused(svc, root, tmp_path):
    outside = make_run(tmp_path / "outside", 1)
    (root / "link").symlink_to(outside)
    assert_clean_error(svc.post("/v1/jobs", json={"run": "link", "config": CONFIG}), 422,
                       "outside the server's root")  # fmt: skip
    assert svc.get("/v1/runs/link/units").status_code == 422


def test_bad_ids_paths_and_bodies_are_clear_4xx(svc):
    assert_clean_error(svc.get("/v1/jobs/0123456789ab"), 404, "no job")
    assert svc.get("/v1/jobs/..%2F..%2Fetc").status_code in (404, 422)
    assert_clean_error(svc.get("/v1/jobs/not-a-job"), 422, "job_id")
    assert_clean_error(svc.post("/v1/jobs/0123456789ab/cancel"), 404)
    assert_clean_error(svc.get("/v1/runs/nope/units"), 404, "no run 'nope'")
    assert_clean_error(svc.get("/v1/runs/a/units/m/0/99"), 404)
    assert_clean_error(svc.get("/v1/runs/a/units", params={"limit": 0}), 422, "limit")
    assert_clean_error(svc.get("/v1/runs/a/units", params={"min_score": "high"}), 422)
    r = svc.post("/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert_clean_error(r, 422)
    assert_clean_error(svc.post("/v1/jobs", json=[1, 2]), 422)
    assert_clean_error(svc.post("/v1/jobs", json={"config": CONFIG}), 422, "run")
    r = svc.post("/v1/jobs", json={"run": "a", "config": {**CONFIG, "run_dir": "/etc"}})
    assert_clean_error(r, 422, "run_dir")
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(explain={"explainer": "nope"})})
    assert_clean_error(r, 422, "unknown explainer")
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(jobs={"concurrency": 0})})
    assert_clean_error(r, 422, "concurrency")
    r = svc.post("/v1/jobs", json={"run": "a", "config": {"bogus": 1}})
    assert_clean_error(r, 422, "bogus")
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(jobs={"prices": "/etc/passwd"})})
    assert_clean_error(r, 422, "prices")
    # Where jobs run is the server's choice: no client points it at a cluster.
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(jobs={"ray": "10.0.0.9:6379"})})
    assert_clean_error(r, 422, "jobs.ray", "--ray")
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(jobs={"ray_workers": 4})})
    assert_clean_error(r, 422, "ray_workers", "without --ray")
    assert_clean_error(svc.post("/v1/jobs", json={"run": "a", "stages": "all"}), 422, "stages")
    assert_clean_error(svc.post("/v1/jobs", json={"run": "new", "stages": "explain"}), 404)
    assert svc.get("/v1/nothing").status_code == 404


def test_oversized_bodies_are_refused(root):
    with open_service(root, max_body_bytes=2000) as c:
        big = {"run": "a", "config": {"units": {"patterns": ["x" * 5000]}}}
        assert_clean_error(c.post("/v1/jobs", json=big), 413, "too large")

        def chunks():
            for _ in range(10):
                yield b" " * 500

        r = c.post("/v1/jobs", content=chunks(), headers={"content-type": "application/json"})
        assert_clean_error(r, 413)
        assert c.get("/v1/health").status_code == 200


def test_api_keys_are_never_returned_stored_or_logged(svc, root, caplog):
    cfg = config(endpoint={"api_key": SERVER_KEY})
    job = wait(svc, start(svc, "a", cfg)["id"])
    assert job["state"] == "done"
    for text in (json.dumps(job), svc.get("/v1/jobs").text,
                 svc.get(f"/v1/jobs/{job['id']}/events", params={"follow": "false"}).text):  # fmt: skip
        assert SERVER_KEY not in text
    # A bad body holding the key: the error names the problem, never echoes the key.
    r = svc.post("/v1/jobs", json={"run": "a", "config": config(endpoint={"api_key": SERVER_KEY,
                                                                          "oops": 1})})  # fmt: skip
    assert r.status_code == 422 and SERVER_KEY not in r.text
    r = svc.post("/v1/simulate", json={"explanation": "x", "excerpts": [{"tokens": ["a"]}],
                                       "endpoint": {"api_key": SERVER_KEY}, "bogus": 1})  # fmt: skip
    assert r.status_code == 422 and SERVER_KEY not in r.text
    db = root / ".neuroscribe" / "jobs.sqlite"
    for f in db.parent.iterdir():
        assert SERVER_KEY.encode() not in f.read_bytes(), f
    with sqlite3.connect(db) as con:
        assert SERVER_KEY not in json.dumps(con.execute("SELECT * FROM jobs").fetchall())
    assert SERVER_KEY not in caplog.text
    for f in (root / "a").rglob("*"):
        if f.is_file():
            assert SERVER_KEY.encode() not in f.read_bytes(), f


def test_a_token_is_required_on_every_route_when_set(root):
    token = "t0ken-for-the-tests-0123456789"
    with open_service(root, token=token) as c:
        for path in ("/v1/health", "/v1/jobs", "/v1/runs/a/units", "/", "/runs/a/",
                     "/v1/openapi.json", "/v1/nowhere"):  # fmt: skip
            r = c.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
        assert c.get("/v1/health", headers={"Authorization": "Bearer wrong"}).status_code == 401
        ok = {"Authorization": f"Bearer {token}"}
        assert c.get("/v1/health", headers=ok).status_code == 200
        assert (
            c.post("/v1/jobs", json={"run": "a", "config": CONFIG}, headers=ok).status_code == 201
        )
        # The browser logs in once: an HttpOnly, SameSite=Strict cookie.
        r = c.get(f"/?token={token}", follow_redirects=False)
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert "SameSite=Strict" in r.headers["set-cookie"]
        assert c.get("/v1/jobs").status_code == 200  # the cookie now rides along
        assert c.get("/?token=nope", follow_redirects=False).status_code in (200, 401)


def test_ray_options_are_checked_before_the_server_takes_its_root(root):
    from neuroscribe.service.app import Service

    with pytest.raises(ConfigError, match="--ray-workers needs --ray"):
        Service(ServiceConfig(root=root, ray_workers=2))
    with pytest.raises(ConfigError, match="positive integer"):
        Service(ServiceConfig(root=root, ray="local:none"))
    Service(ServiceConfig(root=root)).close()  # the root was not left locked


def test_binding_beyond_loopback_needs_a_token():
    with pytest.raises(ConfigError, match="bearer token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", "a-long-enough-token-123")
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(ConfigError, match="at least 16"):
        check_bind("0.0.0.0", "short")
    r = run_cli("serve", "--host", "0.0.0.0", "--port", "0", check=False)
    assert r.returncode == 1 and "bearer token" in r.stderr and "Traceback" not in r.stderr


def test_serve_run_keeps_serving_one_report_and_refuses_service_flags(tmp_path):
    r = run_cli("serve", str(tmp_path), "--host", "0.0.0.0", check=False)
    assert r.returncode == 1 and "--host" in r.stderr


def test_a_foreign_host_header_is_refused(svc):
    r = svc.get("/v1/health", headers={"Host": "evil.example:8765"})
    assert_clean_error(r, 421, "Host")
    assert svc.get("/v1/health", headers={"Host": "localhost:8765"}).status_code == 200


def test_requests_beyond_the_rate_limit_get_429(root):
    with open_service(root, rate_limit=2) as c:
        codes = [c.get("/v1/health").status_code for _ in range(12)]
        assert codes[0] == 200 and 429 in codes
        r = c.get("/v1/health")
        if r.status_code == 429:
            assert r.headers["retry-after"] == "1" and "too many" in r.json()["error"]


def test_a_second_server_on_the_same_root_is_refused(root):
    with (
        open_service(root),
        pytest.raises(ConfigError, match="another neuroscribe server"),
        open_service(root),
    ):
        pass


def test_pages_escape_and_carry_a_content_security_policy(svc, root):
    r = svc.get("/")
    csp = r.headers["content-security-policy"]
    assert (
        "script-src 'sha256-" in csp
        and "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    )
    assert "innerHTML" not in r.text
    r = svc.get("/runs/a/")
    assert r.status_code == 200 and "script-src 'sha256-" in r.headers["content-security-policy"]
    assert svc.get("/v1/health").headers["x-content-type-options"] == "nosniff"


def test_the_python_client_drives_a_job(root):
    with open_service(root) as tc:
        c = Client(BASE, http=tc)
        job = c.create_job("a", CONFIG)
        done = c.wait(job["id"], timeout=30, poll_s=0.03)
        assert done["state"] == "done"
        kinds = {e["kind"] for e in c.events(job["id"])}
        assert {"state", "progress", "stage"} <= kinds
        assert c.units("a", limit=2)["total"] == 4
        assert c.scores("a")["total"] == 4
        with pytest.raises(ServiceError) as e:
            c.job("0123456789ab")
        assert e.value.status == 404


def test_openapi_document_lists_the_v1_routes(svc):
    doc = svc.get("/v1/openapi.json").json()
    paths = set(doc["paths"])
    for p in ("/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/cancel",
              "/v1/jobs/{job_id}/resume", "/v1/jobs/{job_id}/events", "/v1/runs/{run}/units",
              "/v1/runs/{run}/explanations", "/v1/runs/{run}/scores", "/v1/runs/{run}/failures",
              "/v1/explain", "/v1/simulate", "/v1/score"):  # fmt: skip
        assert p in paths, p


# ------------------------------------------------------------------ fuzz

HOSTILE = [
    None, True, -1, 0, 2**63, 1e308, -1e308, "", "../../etc/passwd", "/etc/passwd", "a" * 5000,
    "<script>alert(1)</script>", "\x00", "%00", "é", "💥", [], {}, [None], {"$ref": "#"},
    {"__proto__": {"x": 1}}, "NaN", "Infinity", "0123456789ab", "m/0/1",
]  # fmt: skip


def _value(rng: random.Random, depth: int = 0):
    if depth > 3 or rng.random() < 0.5:
        return rng.choice(HOSTILE)
    if rng.random() < 0.5:
        return [_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["run", "config", "records", "stages", "explain", "score", "jobs", "model",
            "excerpts", "tokens", "activations", "explanation", "strategy", "endpoint",
            "units", "patterns", "max_cost", "retry_failed", "splits", "kind", "n_samples"]  # fmt: skip
    return {rng.choice(keys): _value(rng, depth + 1) for _ in range(rng.randint(0, 5))}


def _body(rng: random.Random, path: str):
    if path == "/v1/jobs" and rng.random() < 0.5:  # near-valid: one field wrong
        body = {"run": "a", "config": json.loads(json.dumps(CONFIG))}
        section = rng.choice(["explain", "score", "jobs", "units", "splits", "endpoint"])
        body["config"].setdefault(section, {})[rng.choice(["model", "concurrency", "x",
                                                           "patterns", "n_train"])] = _value(rng)  # fmt: skip
        return body
    if path in ("/v1/simulate", "/v1/score", "/v1/explain") and rng.random() < 0.5:
        ex = {"tokens": _value(rng), "activations": _value(rng)}
        return {"model": "svcfake:x", "explanation": _value(rng), "excerpts": [ex]}
    return _value(rng)


@pytest.mark.slow  # seconds of real waiting: runs in CI's full suite
def test_fuzz_random_and_hostile_requests_never_give_a_500(svc, root):
    wait(svc, start(svc)["id"])
    doc = svc.get("/v1/openapi.json").json()
    rng = random.Random(17)
    job_id = svc.get("/v1/jobs").json()["items"][0]["id"]
    params = ["run", "job_id", "unit_id"]
    n, statuses = 0, {}
    for path, ops in doc["paths"].items():
        for method in ops:
            for _ in range(40):
                concrete = path
                for p in params:
                    choice = rng.choice([*map(str, HOSTILE), "a", job_id, "m/0/1", "..", "%2e%2e"])
                    safe = "/" if p == "unit_id" else ""
                    concrete = concrete.replace("{" + p + "}", quote(choice, safe=safe) or "%20")
                query = {rng.choice(["limit", "offset", "min_score", "max_score", "layer", "q",
                                     "sort", "state", "after", "follow", "unit", "id"]):
                         str(rng.choice(HOSTILE)) for _ in range(rng.randint(0, 3))}  # fmt: skip
                kw = {"params": query}
                if method == "post":
                    if rng.random() < 0.2:
                        kw["content"] = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 64)))
                        kw["headers"] = {"content-type": "application/json"}
                    else:
                        kw["content"] = json.dumps(_body(rng, path), allow_nan=True)
                        kw["headers"] = {"content-type": "application/json"}
                if path.endswith("/events"):
                    kw["params"]["follow"] = "false"
                r = svc.request(method.upper(), concrete, **kw)
                n += 1
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                assert r.status_code < 500, (method, concrete, kw, r.text[:500])
                assert "Traceback" not in r.text and 'File "' not in r.text
    print(f"fuzz: {n} requests, statuses {dict(sorted(statuses.items()))}")
    assert n > 500


@pytest.mark.slow
def test_jobs_beyond_max_jobs_wait_queued_and_can_be_cancelled_there(root):
    for name in ("s1", "s2"):
        make_run(root / name, 6)
    slow = config(explain={"model": "svcfake:d0.05"}, jobs={"concurrency": 1})
    with open_service(root, max_jobs=1) as c:
        first = start(c, "s1", slow)
        second = start(c, "s2", slow)
        wait(c, first["id"], states=("running",))
        assert c.get(f"/v1/jobs/{second['id']}").json()["state"] == "queued"
        r = c.post(f"/v1/jobs/{second['id']}/cancel")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        assert wait(c, first["id"])["state"] == "done"
        assert not (root / "s2" / "explanations.jsonl").exists()
