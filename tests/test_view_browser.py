"""The report in a real browser: headless Debian chromium driven by Playwright.

Installed by scripts/setup_browser.sh (never `playwright install`). Saves a screenshot to
test-artifacts/view-report.png.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from _browser import chromium
from _reportruns import HOSTILE, add_scorer, detection_metrics, make_run
from neuroscribe.rundir import load_run
from neuroscribe.view import make_server, write_report

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
HOSTILE_UNIT = "tiny/gpt/1/7"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    scores = {
        f"tiny/gpt/{layer}/{index}": [round(0.9 - 0.07 * n, 3), round(0.5 - 0.05 * n, 3)]
        for n, (layer, index) in enumerate((n // 4, n) for n in range(12))
    }
    path = make_run(tmp_path_factory.mktemp("v") / "run", scores, hostile_unit=HOSTILE_UNIT)
    # A second scorer the page knows nothing about: its metrics are shown by name.
    add_scorer(
        path,
        "detection",
        detection_metrics,
        primary_metric="balanced_accuracy",
        model="det-llm",
        flags=[HOSTILE[1]],
    )
    return load_run(path)


def _watch(page):
    """Record dialogs (an XSS would open one) and script errors (e.g. a CSP block)."""
    events = {"dialogs": [], "errors": []}

    def on_dialog(d):
        events["dialogs"].append(d.message)
        d.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("console", lambda m: m.type == "error" and events["errors"].append(m.text))
    return events


def _column(page, key):
    return page.locator(f'tr.unit-row td[data-key="{key}"]').all_inner_texts()


def _check_hostile_unit(page):
    page.locator(f'tr.unit-row[data-unit-id="{HOSTILE_UNIT}"]').click()
    page.wait_for_selector(f'#detail[data-unit-id="{HOSTILE_UNIT}"] .tok')
    text = page.locator("#detail details.explanation[open] .explanation-text").first.text_content()
    assert text == HOSTILE[0] + " " + HOSTILE[1]
    toks = page.locator("#detail details.explanation[open] .true-row").first.locator(".tok")
    assert toks.all_text_contents()[:4] == [" hello", HOSTILE[0], " and", HOSTILE[1]]
    # Rendered as text: no element was created from the markup, no script ran.
    assert page.locator("img").count() == 0
    assert page.locator("script").count() == (2 if page.url.startswith("file:") else 1)


def test_report_in_browser(browser, run, tmp_path):
    report = tmp_path / "report.html"
    write_report(run, report)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    events = _watch(page)
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready='1']")

    assert page.locator("tr.unit-row").count() == 12
    assert "12 of 12 units" in page.locator("#count").text_content()
    # Default order: best score, descending.
    best = [float(v) for v in _column(page, "best_score")]
    assert best == sorted(best, reverse=True) and best[0] == 0.9
    page.click('th[data-key="best_score"]')
    best = [float(v) for v in _column(page, "best_score")]
    assert best == sorted(best)
    assert page.get_attribute('th[data-key="best_score"]', "aria-sort") == "ascending"
    page.click('th[data-key="index"]')
    assert [int(v) for v in _column(page, "index")] == list(range(12))
    # Filter by explanation text and by minimum score.
    page.fill("#filter", "topic 1 ")
    assert page.locator("tr.unit-row").count() == 1
    page.fill("#filter", "")
    page.fill("#min-score", "0.5")
    assert all(float(v) >= 0.5 for v in _column(page, "best_score"))
    assert page.locator("tr.unit-row").count() == 6  # 0.9 - 0.07n >= 0.5 for n <= 5
    page.fill("#min-score", "")

    # The first unit is shown on load; its tokens are shaded by true and simulated values.
    _check_hostile_unit(page)
    true_tok = page.locator("#detail details.explanation[open] .true-row .tok").nth(1)
    assert true_tok.get_attribute("title").endswith("true 3.000")
    assert true_tok.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(255, 122, 0)"
    sim_tok = page.locator("#detail details.explanation[open] .sim-row .tok").nth(1)
    assert "simulated" in sim_tok.get_attribute("title")
    assert sim_tok.evaluate("e => getComputedStyle(e).backgroundColor").startswith("rgb")
    # Every explanation and excerpt is there.
    assert page.locator("#detail details.explanation").count() == 2
    assert page.locator("#detail details.explanation[open] .excerpt").count() == 3
    # Every scorer's metrics, by name, as text (a hostile flag stays text).
    opened = page.locator("#detail details.explanation[open]")
    lines = opened.locator("p.score-line")
    assert [lines.nth(i).get_attribute("data-scorer") for i in range(2)] == [
        "simulation",
        "detection",
    ]
    det = opened.locator('p.score-line[data-scorer="detection"]')
    assert det.locator(".scorer-name").text_content() == "detection (det-llm)"
    metrics = det.locator(".metric[data-metric]")
    assert [metrics.nth(i).get_attribute("data-metric") for i in range(2)] == [
        "balanced_accuracy",
        "auc",
    ]
    score = float(opened.locator(".score-badge").text_content())
    assert det.locator('[data-metric="auc"]').text_content() == f"auc {min(1, 0.5 + score / 2):.3f}"
    assert det.locator(".flags").text_content() == "flags: " + HOSTILE[1]
    sim = opened.locator('p.score-line[data-scorer="simulation"]')
    assert sim.locator('[data-metric="score"]').text_content() == f"score {score:.3f}"
    assert "95% CI of score" in sim.locator(".interval").text_content()
    assert (
        "scored by simulation (sim-x), detection (det-llm)"
        in page.locator("#run-meta").text_content()
    )

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "view-report.png"), full_page=True)
    assert events == {"dialogs": [], "errors": []}
    page.close()


def test_served_report_in_browser(browser, run):
    srv = make_server(run, port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        page = browser.new_page()
        events = _watch(page)
        page.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("tr.unit-row").count() == 12
        _check_hostile_unit(page)
        assert page.locator("#detail .sim-row .tok").count() > 0
        assert events == {"dialogs": [], "errors": []}
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()
