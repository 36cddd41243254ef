"""The typer application. Command modules register themselves on `app` when imported."""

from __future__ import annotations

import logging
import os
import sys
import warnings

import typer
from rich.console import Console
from rich.markup import escape

from neuroscribe.errors import NeuroscribeError

app = typer.Typer(
    name="neuroscribe",
    help=(
        "Automated interpretability: record what units of a model respond to, have a "
        "language model explain them, simulate the explanations and score them."
    ),
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class _CommandConsole:
    """A rich Console made for the invocation at hand.

    Rich reads the terminal width (COLUMNS) when a Console is created; module-level
    consoles would keep the width of whatever imported them first. This one builds its
    Console again when the environment or the output stream changes, so every command
    (also several in one process, as tests and the service run them) sees its own.
    """

    def __init__(self, stderr: bool) -> None:
        self._stderr = stderr
        self._key: tuple[object, ...] | None = None
        self._console: Console | None = None

    def __getattr__(self, name: str):
        stream = sys.stderr if self._stderr else sys.stdout
        key = (os.environ.get("COLUMNS"), os.environ.get("NO_COLOR"), id(stream))
        if self._console is None or key != self._key:
            # soft_wrap: a printed line is never wrapped, so file paths and unit ids stay
            # whole and copyable whatever the terminal width (tables still fit it).
            self._console = Console(stderr=self._stderr, soft_wrap=True)
            self._key = key
        return getattr(self._console, name)


def make_console(stderr: bool = False) -> Console:
    """The CLI's consoles (see `_CommandConsole`)."""
    return _CommandConsole(stderr)  # type: ignore[return-value]


err_console = make_console(stderr=True)


def _register_commands() -> None:
    # Imported for their side effect of adding commands to `app`.
    import importlib

    for name in COMMAND_MODULES:
        importlib.import_module(f"neuroscribe.cli.{name}")


# Each module adds its commands; keep one entry per line.
COMMAND_MODULES: list[str] = [
    "pipeline",
    "report",
    "record",
    "check",
    "study",
    "leaderboard",
    "vision",
    "vision_run",
]


def main(argv: list[str] | None = None) -> None:
    """The `neuroscribe` command (`argv`: the arguments, default sys.argv[1:])."""
    # Our own progress bars say what is happening; the libraries' per-file bars are noise.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if not sys.stdout.isatty():
        # Tables written to a file or a pipe would otherwise be squeezed into 80 columns.
        os.environ.setdefault("COLUMNS", "160")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # transformers' notice about its own cache API is for library authors, not our users.
    warnings.filterwarnings("ignore", message=".*past_key_values.*", category=FutureWarning)
    _register_commands()
    try:
        app(args=argv)
    except NeuroscribeError as e:
        err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except OSError as e:
        # A read-only directory, a full disk, a path that is a folder: one line naming it.
        where = f": {e.filename}" if e.filename else ""
        err_console.print(
            f"[bold red]error:[/] {escape(e.strerror or type(e).__name__)}{escape(str(where))}",
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(1)
