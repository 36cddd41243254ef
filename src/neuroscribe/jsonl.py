"""Validated JSONL reading, crash-safe appending, and atomic replacement of output files.

A line is only ever written whole: appends are one `write` of complete lines on a file
opened with O_APPEND, followed by fsync. If a crash still leaves a torn last line
(no trailing newline, not valid JSON), readers drop it with a warning and the next
append cuts it off first, so finished lines are never lost or corrupted. A last line
that is complete JSON but lacks its newline (a file edited by hand, or written by
another tool) is kept: the next append adds the newline first.

Text with a lone surrogate (JSON `"\\ud800"`) is not Unicode and cannot be written as
UTF-8; reading refuses such a line with file:line, so it never reaches an output.

Output files (reports, tables, dataset folders) are written under a temporary name in
the same folder and renamed into place (`atomic_path`, `write_text_atomic`), so a
failure never leaves a half-written file or destroys the previous one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from neuroscribe.errors import DataError

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        parts.append(f"{loc}: {msg}" if loc else msg)
    return "; ".join(parts)


# A JSON escape of a UTF-16 surrogate (\ud800-\udfff), or its bytes spelled out in UTF-8
# (which `json.loads` decodes with "surrogatepass"): the cheap test that lets almost every
# line skip the walk below. Paired escapes (an emoji) decode to one valid character.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]|\xed[\xa0-\xbf]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _lone_surrogate(obj: object) -> str | None:
    """The first string (key or value) in obj holding a lone surrogate, or None."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, str):
            if _SURROGATE.search(x):
                return x
        elif isinstance(x, dict):
            stack.extend(x.keys())
            stack.extend(x.values())
        elif isinstance(x, list):
            stack.extend(x)
    return None


def iter_jsonl(path: Path, model: type[M], *, torn_tail_ok: bool = True) -> Iterator[M]:
    """Yield validated models; raise DataError naming file and line on the first bad line.

    `torn_tail_ok`: an unparseable last line without a newline is an interrupted append
    and is dropped with a warning (our own append logs). Input files that are not
    append logs (records) pass False: a cut-off last line there is an error, since
    dropping it would silently lose a unit.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    with path.open("rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    torn_tail = not data.endswith(b"\n") and lines[-1] != b""
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        is_last = lineno == len(lines)
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if is_last and torn_tail and torn_tail_ok:
                log.warning("%s:%d: dropping torn last line (interrupted write)", path, lineno)
                return
            raise DataError(
                f"{path}:{lineno}: malformed JSON ({e.msg if hasattr(e, 'msg') else e})"
            ) from None
        if _SURROGATE_ESCAPE.search(raw):
            bad = _lone_surrogate(obj)
            if bad is not None:
                raise DataError(
                    f"{path}:{lineno}: text {bad[:60]!a} contains a lone surrogate "
                    "(a JSON \\uD800-\\uDFFF escape without its pair), which is not valid "
                    "Unicode; fix or remove that line"
                )
        try:
            yield model.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}:{lineno}: invalid {model.__name__}: {_describe(e)}") from None


def read_jsonl(path: Path, model: type[M], *, torn_tail_ok: bool = True) -> list[M]:
    return list(iter_jsonl(path, model, torn_tail_ok=torn_tail_ok))


def read_jsonl_if_exists(path: Path, model: type[M]) -> list[M]:
    return read_jsonl(path, model) if Path(path).exists() else []


def _repair_tail(path: Path) -> bool:
    """Make the file end on a line boundary before an append.

    A torn last line (not valid JSON: a crash cut it short) is cut off. A complete last
    line that only lacks its newline is kept; returns True when the caller must write
    that newline before its own lines.
    """
    size = path.stat().st_size
    if size == 0:
        return False
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return False
        # Find the start of the last line.
        chunk = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - chunk)
            f.seek(start)
            buf = f.read(pos - start)
            nl = buf.rfind(b"\n")
            if nl >= 0:
                cut = start + nl + 1
                break
            pos = start
        else:
            cut = 0
        f.seek(cut)
        tail = f.read(size - cut)
        if not tail.strip():
            return True  # only blank space: end it with a newline, lose nothing
        try:
            json.loads(tail)
        except (json.JSONDecodeError, UnicodeDecodeError):
            log.warning("%s: removing torn last line (%d bytes) before appending", path, size - cut)
            f.truncate(cut)
            os.fsync(f.fileno())
            return False
        return True


def append_jsonl(path: Path, items: Iterable[BaseModel]) -> int:
    """Append models as whole lines; returns how many were written."""
    path = Path(path)
    payload = b"".join(item.model_dump_json().encode("utf-8") + b"\n" for item in items)
    if not payload:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and _repair_tail(path):
        # The complete last line gets its newline in the same write as the new lines.
        payload = b"\n" + payload
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return payload.count(b"\n") - payload.startswith(b"\n")


def _tmp_name(path: Path) -> Path:
    # Same folder (so the rename is atomic), same suffix (matplotlib and pyarrow pick the
    # format from it), hidden, and unique per call.
    return path.with_name(f".{path.stem}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it is fsynced and renamed to `path`.

    On an exception the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    """Write a UTF-8 text file via a temporary file and rename (see `atomic_path`)."""
    path = Path(path)
    data = text.encode("utf-8")  # fails before anything is written
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, model: BaseModel) -> None:
    """Write a JSON document via a temporary file and rename, so readers never see half."""
    write_text_atomic(path, model.model_dump_json(indent=2) + "\n")
