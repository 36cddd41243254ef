"""Run the real `neuroscribe` command in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys


def run_cli(
    *args: str, check: bool = True, timeout: float = 1200, columns: int | None = 400
) -> subprocess.CompletedProcess:
    """`python -m neuroscribe ARGS` with a wide plain terminal (or `columns`; None: no
    COLUMNS at all, as on a stranger's machine) and no OpenAI settings inherited from the
    caller's environment; `check` fails the test on a non-zero exit."""
    env = {**os.environ, "NO_COLOR": "1"}
    env.pop("COLUMNS", None)
    if columns is not None:
        env["COLUMNS"] = str(columns)
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "neuroscribe", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc
