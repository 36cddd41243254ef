"""view/serve without a browser: the file is self-contained and escaped; the server answers."""

from __future__ import annotations

import json
import re
import threading

import httpx
import pytest
from typer.testing import CliRunner

from _reportruns import HOSTILE, make_run
from neuroscribe.cli.app import _register_commands, app
from neuroscribe.rundir import load_run
from neuroscribe.view import make_server, render_report
from neuroscribe.view.page import APP_JS, json_for_script

SCORES = {"tiny/gpt/0/1": [0.8, 0.2], "tiny/gpt/0/2": [0.1], "tiny/gpt/1/3": [0.5]}
HOSTILE_UNIT = "tiny/gpt/0/2"


@pytest.fixture()
def run(tmp_path):
    return load_run(make_run(tmp_path / "run", SCORES, hostile_unit=HOSTILE_UNIT))


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


def test_report_is_self_contained_and_escaped(run):
    page = render_report(run)
    # No network: nothing is loaded from anywhere (no src/href to other resources).
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert "connect-src 'none'" in page
    # The hostile strings never appear raw: only two <script> tags, all ours.
    for h in HOSTILE:
        assert h not in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    assert "<img" not in page
    # ...yet the data round-trips exactly.
    data = _embedded(page)
    units = {u["unit_id"]: u for u in data["units"]}
    assert set(units) == set(SCORES)
    assert units["tiny/gpt/0/1"]["best_score"] == 0.8
    assert units["tiny/gpt/0/1"]["mean_score"] == pytest.approx(0.5)
    detail = data["details"][[u["unit_id"] for u in data["units"]].index(HOSTILE_UNIT)]
    assert detail["explanations"][0]["text"] == HOSTILE[0] + " " + HOSTILE[1]
    tokens = [t for x in detail["explanations"][0]["excerpts"] for t in x["tokens"]]
    assert HOSTILE[0] in tokens and HOSTILE[1] in tokens
    # The script never builds HTML from strings.
    assert "innerHTML" not in APP_JS and "outerHTML" not in APP_JS
    assert "insertAdjacentHTML" not in APP_JS and "document.write" not in APP_JS


def test_json_for_script_escapes_markup_characters():
    s = json_for_script({"t": "</script><b>&amp;"})
    assert "<" not in s and ">" not in s and "&" not in s
    assert json.loads(s) == {"t": "</script><b>&amp;"}


def test_detail_orders_explanations_and_excerpts(run):
    data = _embedded(render_report(run))
    d = data["details"][0]
    assert d["unit_id"] == "tiny/gpt/0/1"
    assert [x["score"] for x in d["explanations"]] == [0.8, 0.2]
    ex = d["explanations"][0]["excerpts"]
    assert [(e["excerpt_id"], e["role"]) for e in ex] == [
        ("top:0", "test"),
        ("random:0", "test"),
        ("top:2", "calibration"),
    ]
    assert all(len(e["tokens"]) == len(e["true"]) == len(e["simulated"]) for e in ex)
    assert d["true_max"] == max(v for e in ex for v in e["true"])


@pytest.fixture()
def server(run):
    srv = make_server(run, port=0)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_serve_over_http(server):
    assert server.startswith("http://127.0.0.1:")
    with httpx.Client(base_url=server, timeout=10) as c:
        page = c.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "script-src 'sha256-" in page.headers["content-security-policy"]
        assert 'data-mode="server"' in page.text
        units = c.get("/api/units").json()
        assert units["meta"]["n_units"] == 3
        assert {u["unit_id"] for u in units["units"]} == set(SCORES)
        detail = c.get("/api/unit", params={"id": HOSTILE_UNIT})
        assert detail.status_code == 200
        assert detail.headers["x-content-type-options"] == "nosniff"
        d = detail.json()
        assert d["explanations"][0]["text"] == HOSTILE[0] + " " + HOSTILE[1]
        assert c.get("/api/unit", params={"id": "nope/0/0"}).status_code == 404
        assert c.get("/api/unit").status_code == 400
        assert c.get("/../etc/passwd").status_code == 404


def test_cli_view_writes_report(tmp_path):
    _register_commands()
    run_dir = make_run(tmp_path / "run", SCORES)
    out = tmp_path / "r" / "report.html"
    res = CliRunner().invoke(app, ["view", str(run_dir), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "3 units" in res.output
    assert set(u["unit_id"] for u in _embedded(out.read_text())["units"]) == set(SCORES)
