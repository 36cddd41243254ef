"""A whole job (explain → simulate → score, 50 units) under a 20% fault rate.

The real llama.cpp server sits behind our fault proxy, which injects 429s with and
without Retry-After, 500/502/503, dropped connections, answers slower than the client
timeout, truncated JSON bodies and well-formed answers with no usable content. Every
unit must end scored or listed in failures.jsonl with its reason; the units that
succeeded must match a fault-free run exactly; no key may appear twice.
"""

from __future__ import annotations

import time

import pytest

from _tiny_jobs import make_run, outputs, run_job

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

N_UNITS = 50
TIMEOUT_S = 8.0
FAULTS = {
    "429": 0.03,
    "429_retry_after": 0.03,
    "500": 0.02,
    "502": 0.02,
    "503": 0.02,
    "drop": 0.02,
    "slow": 0.02,
    "truncate": 0.02,
    "unusable": 0.02,
}  # 20% of requests in all


def empty_answer(path, request, body):
    """'unusable': a well-formed answer with nothing in it (no text, no digits)."""
    for choice in body.get("choices", []):
        if isinstance(choice.get("message"), dict):
            choice["message"]["content"] = ""
        if "text" in choice:
            choice["text"] = ""
    return body


def test_job_under_20_percent_faults_loses_nothing_and_duplicates_nothing(
    tmp_path, llama_server, fault_proxy
):
    assert abs(sum(FAULTS.values()) - 0.20) < 1e-9
    faulty_run = make_run(tmp_path / "faulty", N_UNITS)
    cache = faulty_run / ".cache" / "responses.sqlite"
    proxy = fault_proxy(
        rates=FAULTS, seed=5, retry_after_s=0.2, slow_s=TIMEOUT_S + 2, rewrite=empty_answer
    )
    started = time.monotonic()
    run_job(faulty_run, proxy.base_url, timeout_s=TIMEOUT_S, cache=cache)
    faulty = outputs(faulty_run)
    print(f"faulty run {time.monotonic() - started:.0f} s, proxy {dict(proxy.counts)}")

    # Every kind of fault was exercised (seeded, so this is stable).
    for fault in FAULTS:
        assert proxy.counts[fault] >= 1, (fault, proxy.counts)
    assert proxy.injected >= 0.15 * (proxy.injected + proxy.counts["ok"])

    # Every unit is scored, or listed with its reason; no key twice.
    units = {f"m/0/{i}" for i in range(N_UNITS)}
    failed = {f.unit_id: f for f in faulty["failures"]}
    assert set(faulty["scores"]) | set(failed) == units
    assert all(f.reason for f in failed.values())
    assert not faulty["duplicates"]
    assert len({f.key for f in faulty["failures"]}) == len(faulty["failures"])
    assert len(faulty["scores"]) >= N_UNITS // 2

    # A fault-free run with the cache: the units that succeeded under faults get
    # exactly the same explanations, simulations and scores (no truncated or unusable
    # answer slipped into the outputs or the cache). llama.cpp itself is not bitwise
    # deterministic across prompt-cache states, hence the shared response cache.
    clean_run = make_run(tmp_path / "clean", N_UNITS)
    run_job(clean_run, llama_server.base_url, timeout_s=120, cache=cache)
    clean = outputs(clean_run)
    assert not clean["duplicates"]
    for unit, score in faulty["scores"].items():
        assert score == clean["scores"][unit], unit
    for key, expected in faulty["simulations"].items():
        assert expected == clean["simulations"][key], key
    for unit, text in faulty["explanations"].items():
        assert text == clean["explanations"][unit], unit

    # --retry-failed once the faults stop finishes the job: it then equals the
    # fault-free run, still with one line per key.
    proxy.configure(rates={})
    run_job(faulty_run, proxy.base_url, timeout_s=120, cache=cache, retry_failed=True)
    final = outputs(faulty_run)
    assert not final["duplicates"]
    assert final["scores"] == clean["scores"]
    assert final["simulations"] == clean["simulations"]
    assert final["explanations"] == clean["explanations"]
