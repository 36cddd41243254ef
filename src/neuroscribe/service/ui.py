"""The service's browser pages: the job list (with progress and a form to start a job).

The run reports are the viewer's own page (`neuroscribe.view.page`) served live under
`/runs/RUN/`. Like the viewer, this page has one inline script allowed by its hash in the
Content-Security-Policy, and it renders every string from the server (run names,
errors, event texts) with `textContent` only, never as HTML.
"""

from __future__ import annotations

import base64
import hashlib

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2230;background:#f6f7fb}
header{padding:12px 20px;background:#1d2a44;color:#fff}
header h1{font-size:18px;margin:0 0 4px}
header p{margin:0;font-size:13px;opacity:.85}
main{display:grid;grid-template-columns:1fr 340px;gap:16px;padding:16px 20px}
section{background:#fff;border:1px solid #dde1ea;border-radius:8px;padding:12px;min-width:0}
h2{font-size:15px;margin:0 0 8px}
table{border-collapse:collapse;width:100%;font-size:13px}
th{background:#eef1f7;text-align:left;padding:5px 6px;border-bottom:1px solid #c5cad6;white-space:nowrap}
td{padding:5px 6px;border-bottom:1px solid #eef0f4;vertical-align:middle}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.bar{width:140px;height:10px;background:#e6e9f0;border-radius:5px;overflow:hidden;display:inline-block;vertical-align:middle}
.bar span{display:block;height:100%;background:#3b7be8}
.bar span.failed{background:#d9534f;float:left}
.state{font-weight:600}
.state.done{color:#237a3b}.state.failed{color:#b00020}.state.running{color:#1d5fd0}.state.cancelled{color:#777}
form label{display:block;font-size:12px;color:#556;margin:8px 0 2px}
form input,form select{width:100%;padding:5px 7px;border:1px solid #c5cad6;border-radius:5px;font-size:13px}
button{padding:4px 10px;border:1px solid #8a94a8;background:#fff;border-radius:5px;cursor:pointer;font-size:12px}
form button{margin-top:12px;background:#1d2a44;color:#fff;border-color:#1d2a44;padding:6px 14px}
#form-error,.error{color:#b00020;font-size:12px;white-space:pre-wrap}
#events{font-family:ui-monospace,monospace;font-size:11.5px;max-height:220px;overflow:auto;white-space:pre-wrap;background:#f3f4f8;padding:6px;border-radius:5px}
.muted{color:#667;font-size:12px}
a{color:#1d5fd0}
"""

JOBS_JS = r"""
"use strict";
(function () {
  const state = { selected: null, source: null };
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  async function api(method, url, body) {
    const opts = { method: method, headers: { Accept: "application/json" } };
    if (body !== undefined) {
      opts.headers["Content-Type"] = "application/json";
      opts.body = JSON.stringify(body);
    }
    const r = await fetch(url, opts);
    const data = await r.json().catch(() => ({ error: "HTTP " + r.status }));
    if (!r.ok) throw new Error(data.error || ("HTTP " + r.status));
    return data;
  }
  function bar(p) {
    const b = el("span", "bar");
    const total = p.units_total || 0;
    const f = el("span", "failed");
    f.style.width = total ? (100 * p.units_failed / total) + "%" : "0%";
    const d = el("span");
    d.style.width = total ? (100 * p.units_done / total) + "%" : "0%";
    b.title = p.units_done + " done, " + p.units_failed + " failed, " + p.units_left + " left";
    b.append(f, d);
    return b;
  }
  function action(label, fn) {
    const b = el("button", null, label);
    b.addEventListener("click", async (ev) => {
      ev.stopPropagation();
      try { await fn(); } catch (e) { document.getElementById("list-error").textContent = e.message; }
      refresh();
    });
    return b;
  }
  function row(job) {
    const tr = el("tr", "job-row");
    tr.dataset.jobId = job.id;
    const p = job.progress;
    const link = el("a", null, job.run);
    link.href = "runs/" + encodeURIComponent(job.run) + "/";
    const tdRun = el("td"); tdRun.append(link);
    const tdState = el("td"); tdState.append(el("span", "state " + job.state, job.state));
    if (job.error) tdState.append(el("div", "error", job.error));
    const tdBar = el("td"); tdBar.append(bar(p));
    const tdAct = el("td");
    if (job.state === "queued" || job.state === "running") tdAct.append(action("cancel", () => api("POST", "v1/jobs/" + job.id + "/cancel")));
    else tdAct.append(action("resume", () => api("POST", "v1/jobs/" + job.id + "/resume", {})));
    tr.append(el("td", null, job.id), tdRun, el("td", null, job.stages), tdState, tdBar,
      el("td", "num", p.units_done + "/" + p.units_total), el("td", "num", p.units_failed),
      el("td", "num", p.units_left), el("td", "num", p.prompt_tokens + p.completion_tokens),
      el("td", "num", "$" + Number(p.cost_usd).toFixed(4)), tdAct);
    tr.addEventListener("click", () => watch(job.id));
    return tr;
  }
  async function refresh() {
    try {
      const data = await api("GET", "v1/jobs?limit=200");
      const body = document.querySelector("#jobs tbody");
      body.replaceChildren(...data.items.map(row));
      document.getElementById("count").textContent = data.total + " jobs";
      document.getElementById("list-error").textContent = "";
    } catch (e) {
      document.getElementById("list-error").textContent = e.message;
    }
  }
  async function loadRuns() {
    try {
      const runs = await api("GET", "v1/runs");
      const list = document.getElementById("runs");
      list.replaceChildren(...runs.items.map((r) => { const o = el("option"); o.value = r.name; return o; }));
    } catch (e) { /* the form still works without suggestions */ }
  }
  function watch(id) {
    if (state.source) state.source.close();
    state.selected = id;
    const box = document.getElementById("events");
    box.replaceChildren();
    document.getElementById("events-title").textContent = "events of job " + id;
    const src = new EventSource("v1/jobs/" + encodeURIComponent(id) + "/events");
    state.source = src;
    for (const kind of ["state", "message", "stage", "progress"]) {
      src.addEventListener(kind, (ev) => {
        let d = {};
        try { d = JSON.parse(ev.data).data; } catch (e) { return; }
        const text = kind === "progress" ? (d.units_done + "/" + d.units_total + " done, " + d.units_failed + " failed")
          : kind === "stage" ? d.line : kind === "state" ? ("state: " + d.state + (d.error ? " (" + d.error + ")" : "")) : d.text;
        box.append(el("div", "event " + kind, "[" + kind + "] " + text));
        box.scrollTop = box.scrollHeight;
      });
    }
    src.addEventListener("end", () => src.close());
  }
  function num(id) { const v = document.getElementById(id).value; return v === "" ? null : Number(v); }
  document.getElementById("new-job").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const err = document.getElementById("form-error");
    err.textContent = "";
    const config = { explain: { model: document.getElementById("explainer").value },
                     score: { model: document.getElementById("simulator").value,
                              strategy: document.getElementById("strategy").value },
                     jobs: {}, units: {} };
    if (num("max-units") !== null) config.units.max_units = num("max-units");
    if (num("concurrency") !== null) config.jobs.concurrency = num("concurrency");
    if (num("max-cost") !== null) config.jobs.max_cost = num("max-cost");
    try {
      const job = await api("POST", "v1/jobs", { run: document.getElementById("run").value,
        stages: document.getElementById("stages").value, config: config });
      watch(job.id);
      refresh(); loadRuns();
    } catch (e) { err.textContent = e.message; }
  });
  refresh(); loadRuns();
  setInterval(refresh, 1000);
})();
"""


def _hash(script: str) -> str:
    digest = hashlib.sha256(script.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def jobs_csp() -> str:
    return (
        f"default-src 'none'; script-src {_hash(JOBS_JS)}; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'none'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )


def jobs_page(strategies: list[str]) -> str:
    options = "".join(f'<option value="{s}">{s}</option>' for s in strategies)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>neuroscribe · jobs</title>
<style>{CSS}</style>
</head>
<body>
<header><h1>neuroscribe jobs</h1><p>explanation and scoring jobs on this server · <span id="count"></span></p></header>
<main>
<section>
<h2>Jobs</h2>
<div id="list-error" class="error"></div>
<table id="jobs"><thead><tr><th>id</th><th>run</th><th>stages</th><th>state</th><th>progress</th>
<th>done</th><th>failed</th><th>left</th><th>tokens</th><th>cost</th><th></th></tr></thead><tbody></tbody></table>
<h2 id="events-title" style="margin-top:14px">events</h2>
<div id="events"><span class="muted">click a job to follow its live events</span></div>
</section>
<section>
<h2>Start a job</h2>
<form id="new-job">
<label for="run">run (a folder under the server's root)</label>
<input id="run" name="run" list="runs" required maxlength="128" placeholder="my-run">
<datalist id="runs"></datalist>
<label for="stages">stages</label>
<select id="stages"><option value="run">run (record if missing, explain, score)</option>
<option value="explain">explain</option><option value="score">score</option></select>
<label for="explainer">explainer model</label>
<input id="explainer" value="embedded" required>
<label for="simulator">simulator model</label>
<input id="simulator" value="embedded" required>
<label for="strategy">simulation strategy</label>
<select id="strategy">{options}</select>
<label for="max-units">max units (empty: all)</label>
<input id="max-units" type="number" min="1">
<label for="concurrency">concurrency</label>
<input id="concurrency" type="number" min="1" max="1024" value="8">
<label for="max-cost">budget, USD (empty: none)</label>
<input id="max-cost" type="number" min="0" step="0.01">
<button type="submit" id="start">start job</button>
<div id="form-error"></div>
</form>
</section>
</main>
<script>{JOBS_JS}</script>
</body>
</html>
"""
