"""An image run's report in a real browser (headless Debian chromium through Playwright).

Saves a screenshot to $NEUROSCRIBE_SCREENSHOT_DIR/vision-report.png when that is set,
else to the test's temporary folder.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from _browser import chromium
from _vision_runs import HELD_OUT, HOSTILE_CAPTION, make_image_run, simulated
from neuroscribe.rundir import load_run
from neuroscribe.view import make_server, write_report

UNIT = "ink-subject/ink/0"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    yield from chromium()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(make_image_run(tmp_path_factory.mktemp("vb") / "run", n_units=3))


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


def _open_unit(page, unit: str) -> None:
    page.locator(f'tr.unit-row[data-unit-id="{unit}"]').click()
    page.wait_for_selector(f'#detail[data-unit-id="{unit}"] img.thumb')
    # Every picture decodes: a blocked or broken data URL has naturalWidth 0.
    page.wait_for_function(
        "[...document.querySelectorAll('#detail img')].every(i => i.complete)", timeout=10_000
    )


def _broken_images(page) -> list[str]:
    return page.eval_on_selector_all(
        "#detail img", "els => els.filter(e => !(e.naturalWidth > 0)).map(e => e.alt)"
    )


def _check_unit(page, run) -> None:
    rec = run.records_by_unit()[UNIT]
    det = page.locator("#detail details.explanation[open]")
    # The held-out pictures: true and simulated value side by side, per picture.
    cards = det.locator(".gallery-block .img-card")
    assert cards.count() == len(HELD_OUT)
    for i, (excerpt_id, _) in enumerate(HELD_OUT):
        card = cards.nth(i)
        assert card.get_attribute("data-excerpt-id") == excerpt_id
        kind, _, n = excerpt_id.partition(":")
        pool = rec.most_positive_activation_records if kind == "top" else rec.random_sample
        true = pool[int(n)].activations[0]
        assert card.locator(".true-val .val-label").text_content() == f"true {true:.2f}"
        sim = card.locator(".sim-val .val-label").text_content()
        assert sim == f"sim {simulated(true):.2f}/10"
    # The typographic check: its line and its probe pictures.
    typo = det.locator(".typographic")
    assert (
        typo.locator(".typo-summary")
        .text_content()
        .startswith('Multimodal check: responds to the word "')
    )
    assert typo.locator('figure[data-kind="word"] img').count() == 3
    assert typo.locator('figure[data-kind="written"] img').count() == 9
    # The unit's galleries: every top and random picture, maps drawn over them.
    assert page.locator("#detail > .gallery-block").count() == 2
    tops = page.locator("#detail > .gallery-block").first.locator(".img-card")
    assert tops.count() == len(rec.most_positive_activation_records)
    assert tops.first.locator("img.with-map").count() == 1
    # A hostile caption is text: shown as written, no element made from it, no script run.
    captions = page.locator("#detail .caption").all_text_contents()
    assert HOSTILE_CAPTION in captions
    assert page.locator('#detail img[src="x"]').count() == 0
    assert _broken_images(page) == []


def test_image_report_in_browser(browser, run, tmp_path):
    report = tmp_path / "report.html"
    write_report(run, report)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events = _watch(page)
    page.goto(report.as_uri())
    page.wait_for_selector("body[data-ready='1']")
    assert page.locator("tr.unit-row").count() == 3
    _open_unit(page, UNIT)
    _check_unit(page, run)
    n_images = page.locator("#detail img").count()
    assert n_images >= 6 + 4 + len(HELD_OUT) + 3
    shots = Path(os.environ.get("NEUROSCRIBE_SCREENSHOT_DIR") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shots / "vision-report.png"), full_page=True)
    assert (shots / "vision-report.png").stat().st_size > 10_000
    assert events == {"dialogs": [], "errors": []}
    page.close()


def test_served_image_report_in_browser(browser, run):
    srv = make_server(run, port=0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        events = _watch(page)
        page.goto(f"http://127.0.0.1:{srv.server_address[1]}/")
        page.wait_for_selector("body[data-ready='1']")
        _open_unit(page, UNIT)
        _check_unit(page, run)
        assert events == {"dialogs": [], "errors": []}
        page.close()
    finally:
        srv.shutdown()
        srv.server_close()
