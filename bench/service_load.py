"""Load on the service (`neuroscribe serve`): N concurrent clients on loopback, while a job runs.

Starts `neuroscribe serve` in its own process (with the tests' deterministic `svcfake:`
backend, tests/_service_fake.py, so no model is involved), prepares a finished run of
`--units` units and starts a slow job on a second run that keeps running during the
measurement. Then `--clients` threads, each with its own keep-alive connection, send
`--requests` requests each, round-robin over:

    GET  /v1/jobs?limit=20                  (list)
    GET  /v1/jobs/{id}                      (get: state, progress, tokens, cost)
    GET  /v1/runs/a/units?limit=50          (results, paged)
    GET  /v1/runs/a/scores?min_score=-1     (results, filtered)
    POST /v1/simulate                       (a single synchronous call, fake backend)

and report requests/s and p50/p95 latency per endpoint and overall, as the medians of
`--repeats` runs. Loopback only; fixed request count; rate limiting off.

    .venv/bin/python bench/service_load.py --clients 8 --requests 100 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
TESTS = HERE.parent / "tests"
sys.path.insert(0, str(TESTS))

CONFIG = {
    "splits": {"n_train": 1, "n_test_top": 1, "n_test_random": 1},
    "explain": {"model": "svcfake:x", "settings": {"temperature": 0, "max_tokens": 16}},
    "score": {"model": "svcfake:x", "strategy": "json", "n_examples": 0},
}
SIMULATE = {
    "model": "svcfake:x",
    "explanation": "the word cat",
    "strategy": "json",
    "excerpts": [{"tokens": [" the", " cat", " sat", " on", " a", " mat"]}],
}
ENDPOINTS = ["list", "get", "units", "scores", "simulate"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, str(TESTS / "_service_server.py"), "--root", str(root), "--port",
         str(port), "--rate-limit", "0", "--max-jobs", "2"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/v1/health").status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def wait_done(http: httpx.Client, job_id: str) -> dict:
    while True:
        job = http.get(f"/v1/jobs/{job_id}").json()
        if job["state"] in ("done", "failed", "cancelled"):
            return job
        time.sleep(0.1)


def one_round(base: str, job_id: str, clients: int, requests: int) -> dict:
    lat: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients + 1)

    def client(i: int) -> None:
        mine: dict[str, list[float]] = {k: [] for k in ENDPOINTS}
        with httpx.Client(base_url=base, timeout=60) as http:
            http.get("/v1/health")  # connect before the clock starts
            barrier.wait()
            for n in range(requests):
                kind = ENDPOINTS[(n + i) % len(ENDPOINTS)]
                t = time.perf_counter()
                if kind == "list":
                    r = http.get("/v1/jobs", params={"limit": 20})
                elif kind == "get":
                    r = http.get(f"/v1/jobs/{job_id}")
                elif kind == "units":
                    r = http.get("/v1/runs/a/units", params={"limit": 50})
                elif kind == "scores":
                    r = http.get("/v1/runs/a/scores", params={"min_score": -1})
                else:
                    r = http.post("/v1/simulate", json=SIMULATE)
                mine[kind].append(time.perf_counter() - t)
                if r.status_code != 200:
                    errors.append((kind, r.status_code, r.text[:200]))
        with lock:
            for k, v in mine.items():
                lat[k].extend(v)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    if errors:
        raise SystemExit(f"{len(errors)} failed requests, first: {errors[0]}")
    everything = [x for v in lat.values() for x in v]
    out = {"rps": len(everything) / wall}
    for k, v in [*lat.items(), ("all", everything)]:
        v = sorted(v)
        out[f"{k}_p50"] = v[len(v) // 2] * 1000
        out[f"{k}_p95"] = v[min(len(v) - 1, int(len(v) * 0.95))] * 1000
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=100, help="per client and repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--units", type=int, default=200, help="units of the finished run read")
    args = ap.parse_args()

    from _tiny_jobs import make_run

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_run(root / "a", args.units)
        make_run(root / "busy", 1000)
        port = free_port()
        proc = start_server(root, port)
        base = f"http://127.0.0.1:{port}"
        try:
            with httpx.Client(base_url=base, timeout=60) as http:
                done = http.post("/v1/jobs", json={"run": "a", "config": CONFIG}).json()
                job = wait_done(http, done["id"])
                assert job["state"] == "done", job
                # Slow calls (50 ms each, 2 at a time): it runs through the whole bench.
                slow = {**CONFIG, "explain": {**CONFIG["explain"], "model": "svcfake:d0.05"},
                        "score": {**CONFIG["score"], "model": "svcfake:d0.05"},
                        "jobs": {"concurrency": 2}}  # fmt: skip
                busy = http.post("/v1/jobs", json={"run": "busy", "config": slow}).json()
                one_round(base, done["id"], 2, 10)  # warm-up (imports, caches)
                rounds = []
                for i in range(args.repeats):
                    r = one_round(base, done["id"], args.clients, args.requests)
                    rounds.append(r)
                    bp = http.get(f"/v1/jobs/{busy['id']}").json()["progress"]
                    phase = (
                        "scoring"
                        if bp.get("units_explained") == bp.get("units_total")
                        else "explaining"
                    )
                    print(f"round {i + 1}: {r['rps']:.0f} req/s, p50 {r['all_p50']:.1f} ms, "
                          f"p95 {r['all_p95']:.1f} ms (background job {phase}: "
                          f"{bp.get('units_explained')} explained, {bp.get('units_scored')} scored)",
                          flush=True)  # fmt: skip
                state = http.get(f"/v1/jobs/{busy['id']}").json()
                assert state["state"] == "running", "the background job ended during the bench"
                progress = state["progress"]
        finally:
            proc.terminate()
            proc.wait(timeout=30)

    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    n = args.clients * args.requests
    print(f"\n{args.clients} clients x {args.requests} requests ({n} per round), "
          f"{args.repeats} rounds, run of {args.units} units, a job running meanwhile "
          f"({progress['units_explained']} of {progress['units_total']} units explained "
          f"at the end)")  # fmt: skip
    print(f"median throughput: {med['rps']:.0f} requests/s")
    print(f"{'endpoint':<10} {'p50 ms':>8} {'p95 ms':>8}")
    for k in [*ENDPOINTS, "all"]:
        print(f"{k:<10} {med[k + '_p50']:>8.1f} {med[k + '_p95']:>8.1f}")


if __name__ == "__main__":
    main()
