"""Schema-driven fuzzing of the service: schemathesis reads `/v1/openapi.json` of a real
`neuroscribe serve` process and generates requests for every operation from it (valid and
invalid bodies, parameters, ids). No generated request may get a 500, and every error is
the service's own JSON error, never a traceback.

The server holds a finished job and a run with records, so the job and run routes answer
with real data as well as with 404s. Bounded: a fixed number of examples per operation.
"""

from __future__ import annotations

import time

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from _tiny_jobs import make_run
from test_service import CONFIG
from test_service_real import Server

pytestmark = pytest.mark.slow

EXAMPLES_PER_OPERATION = 25
SINGLE_CALLS = ("/v1/explain", "/v1/simulate", "/v1/score")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("schema") / "root"
    make_run(root / "a", 3)
    make_run(root / "b", 2)
    s = Server(root).start()
    job = s.http.post("/v1/jobs", json={"run": "a", "config": CONFIG}).json()
    deadline = time.monotonic() + 60
    while s.job(job["id"])["state"] != "done":
        assert time.monotonic() < deadline, s.job(job["id"])
        time.sleep(0.05)
    yield s
    s.stop()


def operations(port: int) -> list:
    loaded = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/v1/openapi.json")
    return [result.ok() for result in loaded.get_all_operations()]


def test_no_generated_request_gets_a_500(live):
    # schemathesis's pytest plugin does not load under this pytest; its strategies are
    # driven with hypothesis directly, one bounded run per operation.
    base = f"http://127.0.0.1:{live.port}"
    ops = operations(live.port)
    assert len(ops) >= 10, [op.label for op in ops]
    calls: dict[str, int] = {}

    for op in ops:

        @given(case=op.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case) -> None:
            if case.path.endswith("/events"):
                # A followed event stream stays open until its job ends: read what is there.
                case.query = {**(case.query or {}), "follow": "false"}
            if case.path in SINGLE_CALLS and isinstance(case.body, dict):
                # Bodies are generated freely; only the model is pinned to the tests' fake
                # backend (the default, the embedded model, would make this a model test).
                case.body["model"] = "svcfake:x"
            if case.path == "/v1/jobs" and isinstance(case.body, dict):
                cfg = case.body.get("config")
                if cfg is None or isinstance(cfg, dict):  # a job that runs uses the fake too
                    cfg = dict(cfg or {})
                    for section in ("explain", "score"):
                        if isinstance(cfg.get(section, {}), dict):
                            cfg[section] = {**cfg.get(section, {}), "model": "svcfake:x"}
                    case.body["config"] = cfg
            response = case.call(base_url=base, timeout=60)
            label = f"{case.method} {case.path}"
            calls[label] = calls.get(label, 0) + 1
            asked = case.body.get("timeout") if isinstance(case.body, dict) else None
            if response.status_code == 504 and isinstance(asked, (int, float)) and asked < 1:
                return  # the caller's own tiny timeout: a 504 is the right answer
            assert response.status_code < 500, (
                case.method,
                case.formatted_path,
                response.text[:500],
            )
            assert "Traceback" not in response.text
            if response.status_code >= 400:
                kind = response.headers.get("content-type") or [""]  # a list per header
                assert kind[0].startswith("application/json"), (case.formatted_path, kind)

        check()
    print(f"schemathesis: {sum(calls.values())} requests over {len(calls)} operations")
    assert len(calls) == len(ops)
