"""view/serve without a browser: the file is self-contained and escaped; the server answers."""

from __future__ import annotations

import json
import re
import shutil
import threading

import httpx
import pytest
from typer.testing import CliRunner

from _cli import run_cli
from _reportruns import HOSTILE, add_scorer, detection_metrics, downgrade_scores_to_v1, make_run
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


def test_every_scorer_is_in_the_unit_detail(tmp_path):
    run_dir = make_run(tmp_path / "run", SCORES, hostile_unit=HOSTILE_UNIT)
    add_scorer(
        run_dir,
        "detection",
        detection_metrics,
        primary_metric="balanced_accuracy",
        model="det-llm",
        interval_metric="auc",
    )
    data = _embedded(render_report(load_run(run_dir)))
    meta = data["meta"]
    assert [s["name"] for s in meta["scorers"]] == ["simulation", "detection"]
    det = meta["scorers"][1]
    assert det["models"] == ["det-llm"] and det["metrics"] == ["balanced_accuracy", "auc"]
    assert (meta["primary_scorer"], meta["primary_metric"]) == ("simulation", "score")
    # The unit list still ranks by the simulation score.
    units = {u["unit_id"]: u for u in data["units"]}
    assert units["tiny/gpt/0/1"]["best_score"] == 0.8

    d = data["details"][0]
    x = d["explanations"][0]
    assert x["score"] == 0.8
    assert [s["scorer"] for s in x["scores"]] == ["simulation", "detection"]
    sim, det = x["scores"]
    assert sim["metrics"]["random_score"] == 0.4 and sim["interval"]["metric"] == "score"
    assert det["metrics"] == {"balanced_accuracy": 0.7, "auc": 0.9}
    assert det["primary_metric"] == "balanced_accuracy" and det["model"] == "det-llm"
    assert det["interval"] == pytest.approx(
        {"metric": "auc", "low": 0.85, "high": 0.95, "level": 0.9}
    )


@pytest.mark.slow
def test_served_unit_detail_has_every_scorer(tmp_path):
    run_dir = make_run(tmp_path / "run", SCORES)
    add_scorer(run_dir, "detection", detection_metrics, primary_metric="balanced_accuracy")
    srv = make_server(load_run(run_dir), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        d = httpx.get(f"{url}/api/unit", params={"id": "tiny/gpt/1/3"}, timeout=10).json()
        assert d["explanations"][0]["scores"][1]["metrics"]["auc"] == pytest.approx(0.75)
    finally:
        srv.shutdown()
        srv.server_close()


def test_v1_scores_view_identically(tmp_path):
    v2 = make_run(tmp_path / "v2", SCORES, hostile_unit=HOSTILE_UNIT)
    v1 = tmp_path / "v1"
    shutil.copytree(v2, v1)
    downgrade_scores_to_v1(v1)
    a, b = (_embedded(render_report(load_run(p))) for p in (v1, v2))
    a["meta"]["run"] = b["meta"]["run"]
    assert a == b


def test_cli_view_shows_a_new_scorer(tmp_path):
    run_dir = make_run(tmp_path / "run", SCORES)
    add_scorer(run_dir, "detection", detection_metrics, primary_metric="balanced_accuracy")
    out = tmp_path / "report.html"
    run_cli("view", str(run_dir), "--out", str(out))
    d = _embedded(out.read_text())["details"][0]
    assert {s["scorer"] for x in d["explanations"] for s in x["scores"]} == {
        "simulation",
        "detection",
    }
