"""HTML views of a run: a self-contained report file, or the same page served locally."""

from __future__ import annotations

from pathlib import Path

from neuroscribe.errors import ConfigError
from neuroscribe.jsonl import write_text_atomic
from neuroscribe.rundir import Run
from neuroscribe.view.data import ReportData
from neuroscribe.view.page import render_page
from neuroscribe.view.server import ReportServer, make_server

__all__ = ["ReportServer", "make_server", "render_report", "write_report"]


def render_report(run: Run) -> str:
    """One HTML document holding every unit of the run (opens offline, no server)."""
    data = ReportData(run)
    payload = {
        "meta": data.meta().model_dump(mode="json"),
        "units": [s.model_dump(mode="json") for s in data.summaries()],
        "details": [data.detail(u).model_dump(mode="json") for u in data.unit_ids],
    }
    return render_page(f"neuroscribe · {run.name}", payload)


def write_report(run: Run, out: Path) -> int:
    """Write the report file; returns the number of units in it.

    The page is rendered in full, written under a temporary name and renamed over `out`,
    so a failure leaves the previous report as it was.
    """
    out = Path(out)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder; give the HTML file to write")
    page = render_report(run)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out, page)
    return len(run.unit_ids())
