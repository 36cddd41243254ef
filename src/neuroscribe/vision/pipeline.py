"""The whole vision job: record image units, explain, simulate and score, check
multimodality, write the report — each step resumable, as `neuroscribe run` is for text.

Recording is `vision.record`; explaining and scoring are the text pipeline's stages
(`neuroscribe.api`), which route image units to the image explainer and the image
simulation scorer; the typographic check is `vision.typographic`; the report is the
run viewer's, which shows image units with their pictures and activation maps.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscribe import api
from neuroscribe.config import RunConfig
from neuroscribe.engine import JobSummary
from neuroscribe.vision.record import VisionRecordConfig, VisionRecordSummary, record_images


@dataclass
class VisionRunResult:
    record: VisionRecordSummary
    stages: list[JobSummary]
    typographic: list[Any] = field(default_factory=list)  # TypographicResult, new ones
    report: Path | None = None
    seconds: dict[str, float] = field(default_factory=dict)  # wall time per step


async def run_vision_async(
    config: RunConfig,
    record: VisionRecordConfig | None = None,
    *,
    scorers: list[tuple[str, str | None]] | None = None,
    typographic: bool = True,
    report: Path | None = None,
    hooks: api.Hooks | None = None,
) -> VisionRunResult:
    """Record (when the run has no records of these options), explain, score, check and
    report. `report` None writes `<run>/report.html`."""
    hooks = hooks or api.Hooks()
    record = record or VisionRecordConfig()
    seconds: dict[str, float] = {}
    t = time.perf_counter()
    rec = record_images(record, config.run_dir)
    seconds["record"] = time.perf_counter() - t
    if rec.skipped:
        hooks.message(f"records of {record.subject} are already in {config.run_dir}")
    else:
        hooks.message(
            f"recorded {rec.n_units} units of {record.subject} over {rec.n_images} images "
            f"({rec.n_skipped} skipped) in {rec.seconds:.0f} s"
        )
    t = time.perf_counter()
    stages = await api.run_async(config, hooks, scorers)
    seconds["explain+score"] = time.perf_counter() - t
    checks: list[Any] = []
    if typographic:
        from neuroscribe.vision.typographic import run_typographic_checks

        t = time.perf_counter()
        units = [r.unit_id for r in api.load_units(config)]
        checks = run_typographic_checks(config.run_dir, record.subject, units=units)
        seconds["typographic"] = time.perf_counter() - t
    from neuroscribe.rundir import load_run
    from neuroscribe.view import write_report

    t = time.perf_counter()
    out = Path(report) if report is not None else Path(config.run_dir) / "report.html"
    write_report(load_run(config.run_dir), out)
    seconds["report"] = time.perf_counter() - t
    return VisionRunResult(rec, stages, checks, out, seconds)


def run_vision(config: RunConfig, record: VisionRecordConfig | None = None, **kw: Any):
    import asyncio

    return asyncio.run(run_vision_async(config, record, **kw))
