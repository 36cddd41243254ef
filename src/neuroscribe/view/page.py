"""The report page: one HTML document with inline CSS and script, no network needed.

Safety: every string from the run (tokens, explanations, unit ids) is untrusted. The data
travels as JSON inside `<script type="application/json">` with `<`, `>` and `&` written
as \\u003c, \\u003e and \\u0026 (so no `</script>` can close the block), and the script
renders it only through `textContent` and DOM properties, never `innerHTML`. A
Content-Security-Policy allows exactly this page's script (by hash), so even an injected
`<img onerror=...>` could not run.

Pictures of image units are `data:image/png` URLs inside that JSON (PNGs the report code
re-encoded itself, so the file needs nothing beside it); the script sets them only as an
`<img>`'s `src` property and only when they are PNG data URLs, and the policy allows
images from `data:` and nowhere else.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
from typing import Any

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2230;background:#f6f7fb}
header{padding:12px 20px;background:#1d2a44;color:#fff}
header h1{font-size:18px;margin:0 0 4px}
header p{margin:0;font-size:13px;opacity:.85}
main{display:grid;grid-template-columns:minmax(360px,42%) 1fr;gap:16px;padding:16px 20px}
section{background:#fff;border:1px solid #dde1ea;border-radius:8px;padding:12px;min-width:0}
.controls{display:flex;gap:8px;margin-bottom:8px;flex-wrap:wrap;align-items:center}
.controls input{padding:5px 8px;border:1px solid #c5cad6;border-radius:5px;font-size:13px}
#filter{flex:1;min-width:140px}
#min-score{width:90px}
#count{font-size:12px;color:#667}
.list-wrap{max-height:calc(100vh - 170px);overflow:auto}
table{border-collapse:collapse;width:100%;font-size:13px}
th{position:sticky;top:0;background:#eef1f7;text-align:left;padding:5px 6px;cursor:pointer;
   user-select:none;white-space:nowrap;border-bottom:1px solid #c5cad6}
th[aria-sort=ascending]::after{content:" ▲"}
th[aria-sort=descending]::after{content:" ▼"}
td{padding:4px 6px;border-bottom:1px solid #eef0f4;vertical-align:top}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.text{max-width:320px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
tr.unit-row{cursor:pointer}
tr.unit-row:hover{background:#f3f6ff}
tr.unit-row.selected{background:#dfe8ff}
#detail h2{font-size:17px;margin:0 0 4px;word-break:break-all}
.muted{color:#667;font-size:12px;margin:2px 0 8px}
.legend{font-size:12px;margin:4px 0 10px}
.legend span{display:inline-block;padding:0 6px;margin-right:8px;border-radius:3px}
details.explanation{border:1px solid #e3e6ee;border-radius:6px;margin:8px 0;padding:6px 10px}
details.explanation summary{cursor:pointer;font-size:14px}
.score-badge{display:inline-block;min-width:52px;text-align:center;font-weight:600;
   border-radius:4px;padding:1px 6px;margin-right:8px;background:#eef1f7;font-variant-numeric:tabular-nums}
.explanation-text{white-space:pre-wrap}
.score-line{font-size:12px;color:#556;margin:2px 0}
.score-line span{margin-right:10px}
.scorer-name{font-weight:600;color:#1d2230}
.metric.primary{font-weight:600}
.excerpt{margin:8px 0 10px;padding-left:8px;border-left:3px solid #e3e6ee}
.excerpt-head{font-size:11px;color:#778;margin-bottom:2px}
.tok-row{display:flex;align-items:flex-start;gap:6px;margin:1px 0}
.row-label{flex:0 0 62px;font-size:11px;color:#778;padding-top:2px}
.tokens{flex:1;min-width:0;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;
   font-size:12.5px;line-height:1.7;overflow-wrap:anywhere}
.tok{white-space:pre-wrap;border-radius:2px;padding:1px 0}
.tok:hover{outline:1px solid #333}
.error{color:#b00020}
.gallery{display:flex;flex-wrap:wrap;gap:10px;margin:6px 0 10px}
.img-card{margin:0;width:112px;font-size:11px;color:#445}
.img-card .thumb{display:block;width:96px;height:96px;object-fit:contain;background:#f0f2f6;
   border:1px solid #dde1ea;border-radius:4px}
.thumb.missing{font-size:10px;padding:4px;color:#b00020;overflow:hidden}
.img-card .caption{display:block;margin:3px 0 2px;overflow-wrap:anywhere;max-height:3.3em;overflow:hidden}
.img-card .where{color:#889;font-size:10px}
.val{display:flex;align-items:center;gap:4px;font-variant-numeric:tabular-nums;white-space:nowrap}
.val .track{flex:1;height:5px;background:#eef0f4;border-radius:3px;overflow:hidden;min-width:16px}
.val .bar{display:block;height:100%}
.typographic{background:#f8f9fc;border:1px solid #e3e6ee;border-radius:6px;padding:6px 8px;margin:6px 0}
.typo-summary{font-size:13px;margin:0 0 4px}
h3.gallery-title{font-size:14px;margin:12px 0 2px}
.probes .img-card{width:76px;font-size:10px}
.probes .img-card .thumb{width:64px;height:64px}
"""

APP_JS = r"""
"use strict";
(function () {
  const MODE = document.body.dataset.mode;
  const TRUE_RGB = "255,122,0";
  const SIM_RGB = "40,110,255";
  const MAX_ROWS = 2000;
  const COLUMNS = [
    ["unit_id", "unit", "text"], ["layer", "layer", "num"], ["index", "index", "num"],
    ["best_score", "best", "num"], ["mean_score", "mean", "num"],
    ["n_explanations", "#", "num"], ["best_explanation", "best explanation", "text"],
  ];
  const state = { units: [], meta: null, sortKey: "best_score", sortDir: -1, q: "", minScore: null,
                  selected: null, embedded: null, index: null };

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function fmt(v, d) {
    return (v === null || v === undefined) ? "–" : Number(v).toFixed(d === undefined ? 3 : d);
  }
  function embedded() {
    if (!state.embedded) {
      state.embedded = JSON.parse(document.getElementById("report-data").textContent);
      state.index = new Map(state.embedded.units.map((u, i) => [u.unit_id, i]));
    }
    return state.embedded;
  }
  async function getJSON(url) {
    const r = await fetch(url, { headers: { Accept: "application/json" } });
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }
  async function loadUnits() {
    return MODE === "server" ? getJSON("api/units") : embedded();
  }
  async function loadUnit(id) {
    if (MODE === "server") return getJSON("api/unit?id=" + encodeURIComponent(id));
    const d = embedded();
    if (!state.index.has(id)) throw new Error("unknown unit " + id);
    return d.details[state.index.get(id)];
  }

  function compareValues(x, y) {
    if (typeof x === "number" && typeof y === "number") return x - y;
    return String(x).localeCompare(String(y), undefined, { numeric: true });
  }
  function visibleUnits() {
    const q = state.q.toLowerCase();
    let rows = state.units.filter((u) => {
      if (state.minScore !== null && !(u.best_score !== null && u.best_score >= state.minScore)) return false;
      if (!q) return true;
      if (u.unit_id.toLowerCase().includes(q)) return true;
      return u.explanations.some((t) => t.toLowerCase().includes(q));
    });
    const k = state.sortKey, dir = state.sortDir;
    rows.sort((a, b) => {
      const x = a[k], y = b[k];
      const xn = x === null || x === undefined, yn = y === null || y === undefined;
      if (xn || yn) return xn === yn ? 0 : (xn ? 1 : -1);  // missing values always last
      return dir * compareValues(x, y);
    });
    return rows;
  }

  function renderHead() {
    const tr = document.querySelector("#units thead tr");
    tr.replaceChildren();
    for (const [key, label] of COLUMNS) {
      const th = el("th", null, label);
      th.dataset.key = key;
      if (key.endsWith("_score") && state.meta && state.meta.primary_scorer)
        th.title = label + " " + state.meta.primary_scorer + " " + state.meta.primary_metric + " of the unit's explanations";
      if (key === state.sortKey) th.setAttribute("aria-sort", state.sortDir > 0 ? "ascending" : "descending");
      th.addEventListener("click", () => {
        if (state.sortKey === key) state.sortDir = -state.sortDir;
        else { state.sortKey = key; state.sortDir = ["unit_id", "layer", "index", "best_explanation"].includes(key) ? 1 : -1; }
        renderHead(); renderRows();
      });
      tr.append(th);
    }
  }
  function renderRows() {
    const rows = visibleUnits();
    const body = document.querySelector("#units tbody");
    body.replaceChildren();
    for (const u of rows.slice(0, MAX_ROWS)) {
      const tr = el("tr", "unit-row");
      tr.dataset.unitId = u.unit_id;
      if (u.unit_id === state.selected) tr.classList.add("selected");
      for (const [key, , kind] of COLUMNS) {
        const v = u[key];
        const td = el("td", kind, key.endsWith("_score") ? fmt(v) : (v ?? "–"));
        td.dataset.key = key;
        if (kind === "text") td.title = String(v ?? "");
        tr.append(td);
      }
      tr.addEventListener("click", () => { location.hash = "unit=" + encodeURIComponent(u.unit_id); });
      body.append(tr);
    }
    const shown = Math.min(rows.length, MAX_ROWS);
    document.getElementById("count").textContent =
      rows.length + " of " + state.units.length + " units" + (shown < rows.length ? " (first " + shown + " shown)" : "");
  }

  function tokenRow(label, kind, tokens, values, max, rgb, suffix) {
    const row = el("div", "tok-row " + kind);
    row.append(el("span", "row-label", label));
    const line = el("span", "tokens");
    tokens.forEach((t, i) => {
      const v = values[i];
      const s = el("span", "tok", String(t).replace(/\n/g, "\u21b5"));
      const a = (v === null || v === undefined || !(max > 0)) ? 0 : Math.max(0, Math.min(1, v / max));
      s.style.backgroundColor = "rgba(" + rgb + "," + a.toFixed(3) + ")";
      s.dataset.value = v === null || v === undefined ? "" : String(v);
      s.title = JSON.stringify(String(t)) + " \u00b7 " + label + " " + fmt(v) + suffix;
      line.append(s);
    });
    row.append(line);
    return row;
  }
  function excerptView(ex, u) {
    const box = el("div", "excerpt");
    box.dataset.excerptId = ex.excerpt_id;
    box.append(el("div", "excerpt-head", ex.excerpt_id + " \u00b7 " + ex.kind + " \u00b7 " + ex.role));
    box.append(tokenRow("true", "true-row", ex.tokens, ex.true, u.true_max, TRUE_RGB, ""));
    if (ex.simulated) box.append(tokenRow("simulated", "sim-row", ex.tokens, ex.simulated, u.scale_max, SIM_RGB, " / " + u.scale_max));
    return box;
  }
  const PNG_URL = "data:image/png;base64,";
  const PROBE_LABEL = { word: "the word", control: "unrelated word", written: "written on a photo",
                        photo: "photo alone" };
  function picture(im, u) {
    // Only PNG data URLs become pictures; anything else is shown as the reason it is missing.
    const pics = u.pictures || {};
    const src = im && im.picture && Object.prototype.hasOwnProperty.call(pics, im.picture) ? pics[im.picture] : null;
    if (typeof src === "string" && src.startsWith(PNG_URL)) {
      const img = document.createElement("img");
      img.className = "thumb";
      img.src = src;
      img.alt = im.caption || (im.labels || []).join(", ") || "image " + String(im.sha256).slice(0, 12);
      img.title = img.alt;
      img.dataset.sha256 = String(im.sha256);
      if (im.has_map) img.classList.add("with-map");
      return img;
    }
    return el("div", "thumb missing", im && im.missing ? im.missing : "no picture");
  }
  function valueRow(label, kind, v, max, rgb, suffix) {
    const row = el("div", "val " + kind);
    row.dataset.value = v === null || v === undefined ? "" : String(v);
    row.append(el("span", "val-label", label + " " + fmt(v, 2) + suffix));
    const track = el("span", "track"), bar = el("span", "bar");
    const a = (v === null || v === undefined || !(max > 0)) ? 0 : Math.max(0, Math.min(1, v / max));
    bar.style.width = (100 * a).toFixed(1) + "%";
    bar.style.backgroundColor = "rgb(" + rgb + ")";
    track.append(bar);
    row.append(track);
    return row;
  }
  function imageCard(ex, u) {
    const fig = el("figure", "img-card");
    fig.dataset.excerptId = ex.excerpt_id;
    const im = ex.image;
    fig.append(picture(im, u));
    const cap = im ? (im.caption || (im.labels || []).join(", ")) : ex.tokens.join(" ");
    fig.append(el("figcaption", "caption", cap || "(no caption)"));
    fig.append(valueRow("true", "true-val", ex.true[0], u.true_max, TRUE_RGB, ""));
    if (ex.simulated) fig.append(valueRow("sim", "sim-val", ex.simulated[0], u.scale_max, SIM_RGB, "/" + u.scale_max));
    fig.append(el("div", "where", ex.excerpt_id + (ex.role === "record" ? "" : " \u00b7 " + ex.role)));
    return fig;
  }
  function gallery(title, items, u) {
    const box = el("div", "gallery-block");
    box.append(el("h3", "gallery-title", title));
    const g = el("div", "gallery");
    for (const ex of items) g.append(imageCard(ex, u));
    box.append(g);
    return box;
  }
  function typographicView(t, u) {
    const box = el("div", "typographic");
    box.dataset.subject = t.subject;
    box.append(el("p", "typo-summary", "Multimodal check: " + t.summary));
    if (t.text_tower) box.append(el("p", "muted text-tower", t.text_tower));
    const g = el("div", "gallery probes");
    for (const p of t.probes) {
      const fig = el("figure", "img-card probe");
      fig.dataset.kind = p.kind;
      fig.append(picture(p.image, u));
      fig.append(el("figcaption", "caption", (PROBE_LABEL[p.kind] || p.kind) + (p.word ? " \u201c" + p.word + "\u201d" : "")));
      const v = el("div", "val probe-val", "unit " + fmt(p.activation, 2));
      v.dataset.value = p.activation === null ? "" : String(p.activation);
      fig.append(v);
      g.append(fig);
    }
    box.append(g);
    return box;
  }
  function scoreLine(sc) {
    // One scorer's metrics, whatever their names: a new scorer needs no edit here.
    const p = el("p", "score-line");
    p.dataset.scorer = sc.scorer;
    p.append(el("span", "scorer-name", sc.scorer + (sc.model ? " (" + sc.model + ")" : "")));
    for (const [name, v] of Object.entries(sc.metrics)) {
      const m = el("span", "metric" + (name === sc.primary_metric ? " primary" : ""), name + " " + fmt(v));
      m.dataset.metric = name;
      m.dataset.value = v === null || v === undefined ? "" : String(v);
      p.append(m);
    }
    if (sc.interval) {
      const iv = sc.interval;
      p.append(el("span", "metric interval", Math.round(100 * iv.level) + "% CI of " + iv.metric +
        " [" + fmt(iv.low) + ", " + fmt(iv.high) + "]"));
    }
    if (sc.flags.length) p.append(el("span", "metric flags", "flags: " + sc.flags.join(", ")));
    return p;
  }
  async function showUnit(id) {
    state.selected = id;
    for (const tr of document.querySelectorAll("tr.unit-row")) tr.classList.toggle("selected", tr.dataset.unitId === id);
    const panel = document.getElementById("detail");
    panel.replaceChildren(el("p", "muted", "loading…"));
    let u;
    try { u = await loadUnit(id); } catch (e) { panel.replaceChildren(el("p", "error", e.message)); return; }
    panel.replaceChildren();
    panel.dataset.unitId = u.unit_id;
    panel.append(el("h2", "unit-title", u.unit_id));
    panel.append(el("p", "muted", "model " + (u.model ?? "?") + " \u00b7 layer " + (u.layer ?? "?") + " \u00b7 index " +
      (u.index ?? "?") + " \u00b7 max activation " + fmt(u.max_activation ?? u.true_max) + " \u00b7 " + u.explanations.length + " explanation(s)"));
    const images = u.modality === "image";
    const legend = el("div", "legend");
    const lt = el("span", null, "true activation"); lt.style.backgroundColor = "rgba(" + TRUE_RGB + ",0.6)";
    const ls = el("span", null, "simulated (0\u2013" + u.scale_max + ")"); ls.style.backgroundColor = "rgba(" + SIM_RGB + ",0.45)";
    legend.append(lt, ls, el("span", null, images ? "red\u2192yellow over a picture: where the unit fired"
                                                     : "hover a token for its value"));
    panel.append(legend);
    u.explanations.forEach((x, i) => {
      const det = el("details", "explanation");
      det.dataset.explanationId = x.explanation_id;
      if (i === 0) det.open = true;
      const sum = el("summary");
      sum.append(el("span", "score-badge", fmt(x.score)), el("span", "explanation-text", x.text));
      det.append(sum);
      det.append(el("p", "muted", "explained by " + x.explainer + (x.scores.length ? "" : " \u00b7 not scored")));
      for (const sc of x.scores) det.append(scoreLine(sc));
      if (images) { if (x.excerpts.length) det.append(gallery("Held-out images: true vs simulated", x.excerpts, u)); }
      else for (const ex of x.excerpts) det.append(excerptView(ex, u));
      for (const t of (x.typographic || [])) det.append(typographicView(t, u));
      panel.append(det);
    });
    if (images) {
      if ((u.top_images || []).length) panel.append(gallery("Top images", u.top_images, u));
      if ((u.random_images || []).length) panel.append(gallery("Random images (contrast)", u.random_images, u));
    }
    if (u.record_excerpts.length) {
      panel.append(el("h3", null, "Top-activating excerpts (not simulated)"));
      for (const ex of u.record_excerpts) panel.append(excerptView(ex, u));
    }
  }
  function route() {
    const m = /^#unit=(.*)$/.exec(location.hash);
    if (m) { showUnit(decodeURIComponent(m[1])); return; }
    const first = visibleUnits()[0];
    if (first) showUnit(first.unit_id);
  }

  async function start() {
    let data;
    try { data = await loadUnits(); } catch (e) {
      document.getElementById("detail").replaceChildren(el("p", "error", e.message)); return;
    }
    state.units = data.units;
    state.meta = data.meta;
    const m = data.meta;
    document.getElementById("run-name").textContent = "neuroscribe \u00b7 " + m.run;
    const scorers = m.scorers.map((s) => s.name + (s.models.length ? " (" + s.models.join(", ") + ")" : ""));
    document.getElementById("run-meta").textContent = m.n_units + " units \u00b7 " + m.n_explanations + " explanations (" +
      m.n_scored + " scored, mean " + (m.primary_metric ?? "score") + " " + fmt(m.mean_score) + ") \u00b7 explainer " +
      (m.explainers.join(", ") || "?") + " \u00b7 scored by " + (scorers.join(", ") || "?");
    document.getElementById("filter").addEventListener("input", (e) => { state.q = e.target.value; renderRows(); });
    document.getElementById("min-score").addEventListener("input", (e) => {
      const v = parseFloat(e.target.value); state.minScore = Number.isFinite(v) ? v : null; renderRows();
    });
    renderHead(); renderRows();
    window.addEventListener("hashchange", route);
    route();
    document.body.dataset.ready = "1";
  }
  start();
})();
"""


def _script_hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def content_security_policy(server: bool) -> str:
    """Only this page's own script may run; no network at all from a file.

    Pictures may come from `data:` URLs only (the report's own inline PNGs).
    """
    connect = "'self'" if server else "'none'"
    return (
        f"default-src 'none'; script-src {_script_hash(APP_JS)}; style-src 'unsafe-inline'; "
        f"connect-src {connect}; img-src data:; base-uri 'none'; form-action 'none'"
    )


def json_for_script(data: Any) -> str:
    """JSON safe to place inside a <script> element: no '<', '>' or '&' survive."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(title: str, data: Any | None) -> str:
    """The page; with `data` it is self-contained, without it it fetches from the server."""
    mode = "file" if data is not None else "server"
    data_block = (
        f'<script type="application/json" id="report-data">{json_for_script(data)}</script>\n'
        if data is not None
        else ""
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{html.escape(content_security_policy(data is None), quote=False)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body data-mode="{mode}">
<header><h1 id="run-name">neuroscribe</h1><p id="run-meta"></p></header>
<main>
<section>
<div class="controls">
<input id="filter" type="search" placeholder="filter by unit or explanation text" aria-label="filter">
<input id="min-score" type="number" step="0.05" placeholder="min score" aria-label="minimum best score">
<span id="count"></span>
</div>
<div class="list-wrap"><table id="units"><thead><tr></tr></thead><tbody></tbody></table></div>
</section>
<section id="detail"></section>
</main>
{data_block}<script>{APP_JS}</script>
</body>
</html>
"""
