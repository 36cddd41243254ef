"""Where check results live, so `run` can record them and `compare` can warn.

A simulator check is keyed by what changes its outcome: the simulator spec, strategy,
prompt version and the suite's content. Reports are JSON files under
`<cache>/checks/` (`$NEUROSCRIBE_CACHE`, default `~/.cache/neuroscribe`; or
`$NEUROSCRIBE_CHECKS`); `find_check`
returns the newest one for a simulator configuration, preferring the test split.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from neuroscribe.embedded import cache_root
from neuroscribe.groundtruth.check import CheckReport
from neuroscribe.jsonl import write_text_atomic


def checks_dir() -> Path:
    """`$NEUROSCRIBE_CHECKS`, else `<cache>/checks`."""
    override = os.environ.get("NEUROSCRIBE_CHECKS")
    return Path(override) if override else cache_root() / "checks"


def check_key(simulator: str, strategy: str, prompt_version: str) -> str:
    from neuroscribe.llm.lora import adapter_digest

    # The adapter's weights too (see `adapter_digest`): a retrained bundled adapter
    # has no check result until it is checked.
    digest = adapter_digest(simulator)
    raw = json.dumps([simulator, strategy, prompt_version, *([digest] if digest else [])])
    return hashlib.sha256(raw.encode()).hexdigest()[:16]


def save_check(report: CheckReport, directory: Path | None = None) -> Path:
    """Store a simulator check report; returns its path (one file per key and split)."""
    d = directory or checks_dir()
    d.mkdir(parents=True, exist_ok=True)
    key = check_key(report.simulator, report.strategy, report.prompt_version)
    path = d / f"{report.kind}-{key}-{report.split}.json"
    write_text_atomic(path, report.model_dump_json(indent=1))
    return path


def find_check(
    simulator: str, strategy: str, prompt_version: str, directory: Path | None = None
) -> dict[str, Any] | None:
    """The manifest entry of the stored check for this configuration, or None.

    A damaged report file is ignored (a check is advice; it never blocks a run).
    """
    d = directory or checks_dir()
    key = check_key(simulator, strategy, prompt_version)
    for split in ("test", "all", "dev"):
        path = d / f"simulator-{key}-{split}.json"
        if not path.exists():
            continue
        try:
            report = CheckReport.model_validate_json(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        return report.manifest_entry()
    return None
