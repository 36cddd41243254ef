"""Run the real `neuroscribe` command as a user would: in process (fast), or in a
subprocess where a test needs a process of its own (signals, a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

from click.testing import CliRunner

from neuroscribe.cli.app import main


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def _env(columns: int | None) -> dict[str, str | None]:
    # A plain terminal of `columns` (None: no COLUMNS at all, as on a stranger's
    # machine) and no OpenAI settings inherited from the caller's environment.
    return {
        "NO_COLOR": "1",
        "COLUMNS": None if columns is None else str(columns),
        "OPENAI_API_KEY": None,
        "OPENAI_BASE_URL": None,
    }


def run_cli(
    *args: str,
    check: bool = True,
    timeout: float = 1200,
    columns: int | None = 400,
    subprocess_: bool = False,
) -> Result | subprocess.CompletedProcess:
    """`neuroscribe ARGS`; `check` fails the test on a non-zero exit."""
    if subprocess_:
        env = {k: v for k, v in {**os.environ, **_env(columns)}.items() if v is not None}
        if columns is None:
            env.pop("COLUMNS", None)
        proc = subprocess.run(
            [sys.executable, "-m", "neuroscribe", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        result: Result | subprocess.CompletedProcess = proc
    else:
        runner = CliRunner()
        code = 0
        with runner.isolation(env=_env(columns)) as (out, err, _):
            try:
                main(list(args))
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            out_text, err_text = out.getvalue().decode(), err.getvalue().decode()
        result = Result(code, out_text, err_text)
    if check and result.returncode != 0:
        raise AssertionError(f"exit {result.returncode}\n{result.stdout}\n{result.stderr}")
    return result
