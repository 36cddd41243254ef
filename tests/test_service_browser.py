"""The service's UI in a real browser (headless Debian chromium driven by Playwright).

Starts a job from the form, watches its progress and live events in the job list, opens
the run's report served live, and checks that hostile token text stays text (no dialog,
no script error, CSP intact). Saves test-artifacts/service-ui.png.
"""

from __future__ import annotations

import time

import pytest

from _reportruns import HOSTILE
from _tiny_jobs import make_run
from neuroscribe.jsonl import append_jsonl
from neuroscribe.schema import ActivationRecord, NeuronRecord
from test_service_real import Server
from test_service_real import server as server
from test_view_browser import ARTIFACTS
from test_view_browser import _watch as watch
from test_view_browser import browser as browser

pytestmark = pytest.mark.slow


def until(ok, timeout: float = 30.0) -> None:
    """Poll from Python: the page's CSP forbids eval, so no wait_for_function."""
    deadline = time.monotonic() + timeout
    while not ok():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def hostile_run(path):
    """Units whose strongest token is HTML: the fake explains them as 'the word <script>...'."""
    (path / "records").mkdir(parents=True)
    recs = [
        NeuronRecord(
            unit_id=f"m/1/{i}",
            most_positive_activation_records=[
                ActivationRecord(tokens=[" a", h, " b"], activations=[0.0, 6.0, 0.0]),
                ActivationRecord(tokens=[" c", h, " d"], activations=[0.0, 5.0, 0.0]),
            ],
            random_sample=[ActivationRecord(tokens=[" e", " f"], activations=[0.0, 0.0])],
        )
        for i, h in enumerate(HOSTILE)
    ]
    append_jsonl(path / "records" / "r.jsonl", recs)


def test_start_a_job_in_the_browser_watch_it_and_open_its_report(browser, server, tmp_path):
    root = tmp_path / "root"
    make_run(root / "a", 6)
    hostile_run(root / "evil")
    s: Server = server().start()
    url = f"http://127.0.0.1:{s.port}/"
    page = browser.new_page(viewport={"width": 1400, "height": 820})
    events = watch(page)
    page.goto(url)
    page.fill("#run", "a")
    page.fill("#explainer", "svcfake:d0.05")
    page.fill("#simulator", "svcfake:x")
    page.select_option("#strategy", "json")
    page.fill("#concurrency", "2")
    page.click("#start")
    page.wait_for_selector("#jobs tbody tr.job-row")
    page.wait_for_selector("#jobs tbody tr.job-row .state.done", timeout=60_000)
    row = page.locator("#jobs tbody tr.job-row").first
    assert row.locator("td").nth(5).inner_text() == "6/6"
    until(lambda: "state: done" in page.inner_text("#events"))
    log = page.inner_text("#events")
    assert "[stage] explain: 6 done" in log and "[progress]" in log

    # A bad form: the server's message is shown, nothing starts.
    page.fill("#run", "../etc")
    page.click("#start")
    until(lambda: page.inner_text("#form-error"))
    assert "not allowed" in page.inner_text("#form-error")
    assert page.locator("#jobs tbody tr.job-row").count() == 1

    # A job on the hostile run, from the API; its explanations hold HTML.
    cfg = {"explain": {"model": "svcfake:x"}, "score": {"model": "svcfake:x", "strategy": "json"},
           "splits": {"n_train": 1, "n_test_top": 1, "n_test_random": 1}}  # fmt: skip
    job = s.http.post("/v1/jobs", json={"run": "evil", "config": cfg}).json()
    s.wait_for(job["id"], lambda j: j["state"] == "done")
    until(lambda: page.locator("#jobs tbody tr.job-row").count() == 2)
    page.fill("#run", "")
    time.sleep(0.3)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "service-ui.png"), full_page=True)

    # The report of the run, served live by the same server.
    page.click('#jobs a[href="runs/a/"]')
    page.wait_for_url(f"{url}runs/a/")
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("tr.unit-row").count() == 6
    report = browser.new_page()
    events2 = watch(report)
    report.goto(f"{url}runs/evil/")
    report.wait_for_selector("body[data-ready='1']")
    report.locator("tr.unit-row").first.click()
    report.wait_for_selector("#detail .explanation-text")
    texts = report.locator("#detail .explanation-text").all_inner_texts()
    assert any(h in t for t in texts for h in HOSTILE), texts
    assert report.locator("#detail script, #detail img").count() == 0
    # The one error the console shows is the refused form (HTTP 422), as intended.
    events["errors"] = [e for e in events["errors"] if "status of 422" not in e]
    assert events == {"dialogs": [], "errors": []}
    assert events2 == {"dialogs": [], "errors": []}
