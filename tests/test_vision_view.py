"""Image units in the report and in the published dataset (no browser; see
test_vision_browser.py for the page itself)."""

from __future__ import annotations

import base64
import io
import json
import re
import threading

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from _reportruns import make_run
from _vision_runs import HELD_OUT, HOSTILE_CAPTION, make_image_run, simulated
from neuroscribe.errors import DataError
from neuroscribe.jsonl import read_jsonl
from neuroscribe.publish import PublishedImageExcerpt, publish_run
from neuroscribe.rundir import RunDir, load_run
from neuroscribe.view import make_server, render_report
from neuroscribe.view.page import content_security_policy

UNIT = "ink-subject/ink/0"


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    return make_image_run(tmp_path_factory.mktemp("img") / "run")


def _embedded(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', page, re.S)
    assert m
    return json.loads(m.group(1))


def _detail(data: dict, unit: str) -> dict:
    return data["details"][[u["unit_id"] for u in data["units"]].index(unit)]


def _png(detail: dict, image: dict) -> Image.Image:
    """The picture an ImageView names, decoded from the unit's data URLs."""
    src = detail["pictures"][image["picture"]]
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(src[len(prefix) :]))).convert("RGB")


def test_image_unit_detail_has_pictures_maps_true_and_simulated(image_run):
    page = render_report(load_run(image_run))
    assert HOSTILE_CAPTION not in page  # escaped inside the JSON block
    assert page.count("<script") == 2
    d = _detail(_embedded(page), UNIT)
    rec = {r.unit_id: r for r in load_run(image_run).records}[UNIT]
    assert d["modality"] == "image" and d["record_excerpts"] == []

    top = d["top_images"]
    assert [x["excerpt_id"] for x in top] == [f"top:{i}" for i in range(6)]
    for x, r in zip(top, rec.most_positive_activation_records, strict=True):
        assert x["true"] == [pytest.approx(r.activations[0])]
        assert x["image"]["sha256"] == r.image.sha256 and x["image"]["has_map"]
    # The held-out pictures carry the simulation beside the truth; the others none.
    held = {x for x, _ in HELD_OUT}
    for x in top:
        want = [simulated(x["true"][0])] if x["excerpt_id"] in held else None
        assert x["simulated"] == want
    assert [x["excerpt_id"] for x in d["random_images"]] == [f"random:{i}" for i in range(4)]
    assert HOSTILE_CAPTION in [x["image"]["caption"] for x in top]

    # The map is drawn over the thumbnail: the hot cell is redder than the plain picture.
    x = top[0]
    shown = np.asarray(_png(d, x["image"]), dtype=float)
    plain = np.asarray(
        RunDir(image_run).images.open(
            rec.most_positive_activation_records[0].image, thumbnail=True
        ),
        dtype=float,
    )
    assert shown.shape == plain.shape and shown.shape[0] <= 96
    assert (shown[..., 0] - shown[..., 2]).mean() > (plain[..., 0] - plain[..., 2]).mean() + 5

    ex = d["explanations"][0]
    assert [e["excerpt_id"] for e in ex["excerpts"]][:2] == ["top:0", "top:2"]
    assert all(_png(d, e["image"]) for e in ex["excerpts"])
    # A held-out picture that is also a top picture is sent once.
    assert ex["excerpts"][0]["image"]["picture"] == top[0]["image"]["picture"]
    shown_views = [*top, *d["random_images"], *ex["excerpts"]]
    shown_views += [p for t in ex["typographic"] for p in t["probes"]]
    names = {v["image"]["picture"] for v in shown_views}
    assert set(d["pictures"]) == names and len(names) < len(shown_views)
    (t,) = ex["typographic"]
    assert t["summary"].startswith('responds to the word "')
    kinds = {p["kind"] for p in t["probes"]}
    assert kinds == {"word", "control", "photo", "written"}
    word = next(p for p in t["probes"] if p["kind"] == "word")
    assert _png(d, word["image"]).size == (96, 96) and not word["image"]["has_map"]
    # The second unit was not checked: no typographic block.
    assert _detail(_embedded(page), "ink-subject/ink/1")["explanations"][0]["typographic"] == []


def test_policy_allows_inline_pictures_only():
    for server in (False, True):
        csp = content_security_policy(server)
        assert "img-src data:;" in csp and "default-src 'none'" in csp


def test_a_missing_picture_is_reported_not_fatal(tmp_path):
    run = make_image_run(tmp_path / "run", n_units=1, typographic=False)
    rec = RunDir(run).records()[0]
    ref = rec.most_positive_activation_records[1].image
    (run / ref.path).unlink()
    (run / ref.thumbnail).unlink()
    d = _embedded(render_report(load_run(run)))["details"][0]
    x = d["top_images"][1]
    assert x["image"]["picture"] is None and "missing" in x["image"]["missing"]
    assert str(run) not in x["image"]["missing"]  # no file paths in a served page
    assert _png(d, d["top_images"][0]["image"]).size[0] <= 96


def test_text_runs_have_no_image_fields_set(tmp_path):
    run = make_run(tmp_path / "run", {"tiny/gpt/0/1": [0.5]})
    d = _embedded(render_report(load_run(run)))["details"][0]
    assert d["modality"] == "text" and d["top_images"] == [] and d["random_images"] == []
    assert d["pictures"] == {}
    assert all(x["image"] is None for e in d["explanations"] for x in e["excerpts"])
    assert d["explanations"][0]["typographic"] == []


def test_served_image_unit_has_its_pictures(image_run):
    srv = make_server(load_run(image_run), port=0)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        r = httpx.get(f"{url}/api/unit", params={"id": UNIT}, timeout=10)
        assert "img-src data:;" in r.headers["content-security-policy"]
        d = r.json()
        assert _png(d, d["top_images"][0]["image"]).size[0] <= 96
    finally:
        srv.shutdown()
        srv.server_close()


def test_publish_carries_thumbnails_and_image_references(image_run, tmp_path):
    out = tmp_path / "ds"
    res = publish_run(load_run(image_run), out, with_records=True)
    rows = read_jsonl(out / "image_excerpts.jsonl", PublishedImageExcerpt)
    records = {r.unit_id: r for r in load_run(image_run).records}
    assert len(rows) == sum(
        len(r.most_positive_activation_records) + len(r.random_sample) for r in records.values()
    )
    for row in rows:
        kind, _, i = row.excerpt_id.partition(":")
        rec = records[row.unit_id]
        src = (rec.most_positive_activation_records if kind == "top" else rec.random_sample)[int(i)]
        assert (row.sha256, row.caption, row.labels) == (
            src.image.sha256,
            src.image.caption,
            src.image.labels,
        )
        assert row.activation == src.activations[0] and row.spatial == src.image.spatial
        thumb = out / row.thumbnail
        assert thumb.is_file() and thumb in res.files
        assert thumb.read_bytes() == (image_run / src.image.thumbnail).read_bytes()
    table = pq.read_table(out / "image_excerpts.parquet").to_pylist()
    assert [r["sha256"] for r in table] == [r.sha256 for r in rows]
    assert table[0]["spatial"] == rows[0].spatial
    meta = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])
    assert {
        "config_name": "image_excerpts",
        "data_files": [{"split": "train", "path": "image_excerpts.parquet"}],
    } in meta["configs"]
    assert "## Images" in (out / "README.md").read_text()


def test_publish_refuses_a_run_whose_pictures_are_gone(tmp_path):
    run = make_image_run(tmp_path / "run", n_units=1, typographic=False)
    ref = RunDir(run).records()[0].random_sample[0].image
    (run / ref.path).unlink()
    (run / ref.thumbnail).unlink()
    with pytest.raises(DataError, match=f"cannot publish picture {ref.sha256[:12]}"):
        publish_run(load_run(run), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_text_runs_publish_no_images(tmp_path):
    out = tmp_path / "ds"
    publish_run(load_run(make_run(tmp_path / "run", {"tiny/gpt/0/1": [0.5]})), out)
    assert not (out / "images").exists() and not (out / "image_excerpts.jsonl").exists()
    assert "image_excerpts" not in (out / "README.md").read_text()


@pytest.mark.slow
def test_published_image_run_loads_with_datasets(image_run, tmp_path):
    from datasets import load_dataset

    out = tmp_path / "ds"
    publish_run(load_run(image_run), out, with_records=True)
    cache = str(tmp_path / "hf-cache")
    assert load_dataset(str(out), split="train", cache_dir=cache).num_rows == 2
    pictures = load_dataset(str(out), "image_excerpts", split="train", cache_dir=cache)
    assert pictures.num_rows == 20
    row = pictures[0]
    assert (out / row["thumbnail"]).is_file() and len(row["spatial"]) == 4
    records = load_dataset(str(out), "records", split="train", cache_dir=cache)
    assert sorted(records["unit_id"]) == ["ink-subject/ink/0", "ink-subject/ink/1"]
