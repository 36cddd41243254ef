"""compare / publish / view / serve refuse hostile data and bad options without damage.

Paths built from a run's data stay inside --out; --out never lands on the run's own
files; a failure never destroys an earlier output or leaves a half-written folder; bad
text is refused at read time with file:line; options out of range, a busy port and an
unexpected Host header get one clear answer.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading

import httpx
import pytest

from _cli import run_cli
from _reportruns import make_run
from neuroscribe.errors import ConfigError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.publish import publish_run, safe_path_name
from neuroscribe.rundir import load_run
from neuroscribe.schema import NeuronRecord
from neuroscribe.view import make_server

SCORES = {"tiny/gpt/0/1": [0.5, 0.7], "tiny/gpt/0/2": [0.1], "tiny/gpt/3/4": [0.9]}


@pytest.fixture()
def run_dir(tmp_path):
    return make_run(tmp_path / "run", SCORES)


def _snapshot(folder):
    """Every file under folder with its content hash."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _error_line(result) -> str:
    """The CLI's one `error:` line; no traceback."""
    text = result.stdout + result.stderr
    assert result.returncode == 1, text
    assert "Traceback" not in text
    lines = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, text
    return lines[0]


def _set_layers(run_dir, layers: dict[str, object]) -> None:
    """Rewrite the records file with these (hostile) layer values per unit id."""
    path = run_dir / "records" / "layer.jsonl"
    recs = read_jsonl(path, NeuronRecord)
    lines = []
    for r in recs:
        d = json.loads(r.model_dump_json())
        if r.unit_id in layers:
            d["layer"] = layers[r.unit_id]
        lines.append(json.dumps(d))
    path.write_text("\n".join(lines) + "\n")


def _put_lone_surrogate(run_dir) -> None:
    """Make a held-out token of simulations.jsonl line 1 the JSON escape "\\ud800"."""
    path = run_dir / "simulations.jsonl"
    lines = path.read_text().splitlines()
    d = json.loads(lines[0])
    d["tokens"][0] = "@@SURROGATE@@"
    lines[0] = json.dumps(d).replace("@@SURROGATE@@", "\\ud800")
    path.write_text("\n".join(lines) + "\n")


# ---------------------------------------------------------------- publish: paths


def test_openai_layout_keeps_hostile_layers_inside_out(run_dir, tmp_path):
    outside = tmp_path / "abs-target"
    _set_layers(run_dir, {"tiny/gpt/0/1": "../../escaped", "tiny/gpt/0/2": str(outside)})
    out = tmp_path / "pub" / "ds"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    run_cli("publish", str(run_dir), "--out", str(out), "--openai-layout")
    new = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert new and all(out in p.parents for p in new), sorted(map(str, new))
    assert not outside.exists() and not (tmp_path / "escaped").exists()
    base = out / "openai" / "explanations"
    written = sorted(p.relative_to(base).as_posix() for p in base.rglob("*.jsonl"))
    assert len(written) == 3
    # Each layer is one encoded folder name directly under explanations/.
    assert all(len(w.split("/")) == 2 for w in written)
    assert f"{safe_path_name('../../escaped', 'layer')}/1.jsonl" in written
    assert "3/4.jsonl" in written  # safe names are kept as they are
    doc = json.loads((base / safe_path_name("../../escaped", "layer") / "1.jsonl").read_text())
    assert doc["neuron_id"]["layer_index"] == "../../escaped"  # the data itself is unchanged


def test_safe_path_name_is_one_name_and_one_to_one():
    names = ["0", "h.0.mlp", "..", ".", ".hidden", "a/b", "a%2Fb", "/etc", "a\\b", "x\x00y"]
    encoded = [safe_path_name(n, "layer") for n in names]
    assert encoded[:2] == ["0", "h.0.mlp"]
    assert len(set(encoded)) == len(names)
    for e in encoded:
        assert "/" not in e and "\\" not in e and "\x00" not in e
        assert not e.startswith(".")


# ---------------------------------------------------------------- publish: --out


def test_publish_into_the_run_itself_is_refused(run_dir):
    before = _snapshot(run_dir)
    line = _error_line(
        run_cli("publish", str(run_dir), "--out", str(run_dir), "--overwrite", check=False)
    )
    assert str(run_dir) in line and "inside the run directory" in line
    records = run_dir / "records"
    line = _error_line(
        run_cli("publish", str(run_dir), "--out", str(records), "--overwrite", check=False)
    )
    assert "inside the run directory" in line
    assert _snapshot(run_dir) == before


def test_publish_over_the_runs_files_from_a_parent_is_refused(tmp_path):
    # The run sits where the OpenAI layout would write unit 0/1's file's folder.
    out = tmp_path / "pub"
    run_dir = make_run(out / "openai" / "explanations" / "0", SCORES)
    before = _snapshot(run_dir)
    line = _error_line(
        run_cli(
            "publish",
            str(run_dir),
            "--out",
            str(out),
            "--overwrite",
            "--openai-layout",
            check=False,
        )
    )
    assert "contains the run directory" in line
    assert _snapshot(run_dir) == before
    assert not (out / "explanations.jsonl").exists()  # nothing was moved in


def test_publish_out_that_is_a_file_is_one_error(run_dir, tmp_path):
    target = tmp_path / "ds.txt"
    target.write_text("keep me")
    line = _error_line(run_cli("publish", str(run_dir), "--out", str(target), check=False))
    assert str(target) in line and "file" in line
    assert target.read_text() == "keep me"


def test_failed_publish_leaves_no_folder_and_keeps_an_earlier_one(run_dir, tmp_path, monkeypatch):
    import neuroscribe.publish as publish

    def boom(*a, **k):
        raise RuntimeError("disk full")

    out = tmp_path / "ds"
    run = load_run(run_dir)
    monkeypatch.setattr(publish, "dataset_card", boom)  # fails after the data files
    with pytest.raises(RuntimeError):
        publish_run(run, out, with_records=True)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "run"] == []  # no temp folder
    monkeypatch.undo()
    publish_run(run, out, with_records=True)  # the rerun is not blocked
    before = _snapshot(out)
    monkeypatch.setattr(publish, "dataset_card", boom)
    with pytest.raises(RuntimeError):
        publish_run(run, out, overwrite=True)
    assert _snapshot(out) == before


# ---------------------------------------------------------------- bad text at read time


def test_lone_surrogate_token_is_refused_by_view_and_publish(run_dir, tmp_path):
    report = tmp_path / "report.html"
    run_cli("view", str(run_dir), "--out", str(report))
    old = report.read_bytes()
    _put_lone_surrogate(run_dir)
    line = _error_line(run_cli("view", str(run_dir), "--out", str(report), check=False))
    assert "simulations.jsonl:1" in line and "surrogate" in line
    assert report.read_bytes() == old
    out = tmp_path / "ds"
    line = _error_line(run_cli("publish", str(run_dir), "--out", str(out), check=False))
    assert "simulations.jsonl:1" in line
    assert not out.exists()


def test_view_keeps_the_previous_report_when_writing_fails(run_dir, tmp_path, monkeypatch):
    import neuroscribe.view as view

    report = tmp_path / "report.html"
    run_cli("view", str(run_dir), "--out", str(report))
    old = report.read_bytes()
    # Text that cannot be encoded (had it got past reading): the write fails, and the
    # previous report must survive it.
    monkeypatch.setattr(view, "render_report", lambda run: "<html>\ud800</html>")
    with pytest.raises(UnicodeEncodeError):
        view.write_report(load_run(run_dir), report)
    assert report.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "run"]


def test_view_out_that_is_a_folder_is_one_error(run_dir, tmp_path):
    folder = tmp_path / "reports"
    folder.mkdir()
    line = _error_line(run_cli("view", str(run_dir), "--out", str(folder), check=False))
    assert str(folder) in line and "folder" in line


# ---------------------------------------------------------------- compare


def test_compare_markdown_escapes_run_names(tmp_path):
    hostile = "<img src=x onerror=alert(1)>"
    ra = make_run(tmp_path / hostile, SCORES)
    rb = make_run(tmp_path / "plain", SCORES, explainer="explainer-b")
    md, page = tmp_path / "c.md", tmp_path / "c.html"
    args = ["--resamples", "50", "--markdown", str(md), "--html", str(page)]
    run_cli("compare", str(ra), str(rb), *args)
    for text in (md.read_text(), page.read_text()):
        assert "<img" not in text
        assert "&lt;img src=x onerror=alert(1)&gt;" in text


@pytest.mark.parametrize("value", ["0", "-5"])
def test_compare_resamples_must_be_positive(run_dir, value):
    res = run_cli("compare", str(run_dir), "--resamples", value, check=False)
    text = res.stdout + res.stderr
    assert res.returncode == 2 and "Traceback" not in text
    assert "Invalid value for '--resamples'" in text


def test_numeric_options_state_their_range_in_help():
    assert ">= 1" in run_cli("compare", "--help").stdout
    assert "0-65535" in run_cli("serve", "--help").stdout


# ---------------------------------------------------------------- serve


@pytest.mark.parametrize("port", ["-1", "70000"])
def test_serve_port_out_of_range_is_refused(run_dir, port):
    res = run_cli("serve", str(run_dir), "--port", port, check=False)
    assert res.returncode == 2 and "Invalid value for '--port'" in res.stdout + res.stderr


def test_serve_busy_port_is_one_error(run_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = _error_line(run_cli("serve", str(run_dir), "--port", str(port), check=False))
    assert f"--port {port}" in line and "in use" in line


def test_make_server_rejects_a_bad_port(run_dir):
    with pytest.raises(ConfigError, match="not a port number"):
        make_server(load_run(run_dir), port=70000)


@pytest.mark.slow
def test_serve_checks_the_host_header(run_dir):
    srv = make_server(load_run(run_dir), port=0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    port = srv.server_address[1]
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as c:
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", f"LOCALHOST:{port}"):
                assert c.get("/api/units", headers={"Host": host}).status_code == 200, host
            assert c.get("/").status_code == 200  # what a browser sends
            for host in (
                f"evil.example:{port}",  # DNS rebinding: another site's name, our address
                "evil.example",
                f"127.0.0.1:{port + 1}",
                "127.0.0.1",
                f"localhost.evil.example:{port}",
            ):
                r = c.get("/api/units", headers={"Host": host})
                assert r.status_code == 421, host
                assert b"tiny/gpt" not in r.content
    finally:
        srv.shutdown()
        srv.server_close()
