"""Validated JSONL reading and crash-safe appending.

A line is only ever written whole: appends are one `write` of complete lines on a file
opened with O_APPEND, followed by fsync. If a crash still leaves a torn last line
(no trailing newline, not valid JSON), readers drop it with a warning and the next
append cuts it off first, so finished lines are never lost or corrupted.
"""

from __future__ import annotations

import json
import logging
import os
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


def iter_jsonl(path: Path, model: type[M]) -> Iterator[M]:
    """Yield validated models; raise DataError naming file and line on the first bad line."""
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
            if is_last and torn_tail:
                log.warning("%s:%d: dropping torn last line (interrupted write)", path, lineno)
                return
            raise DataError(
                f"{path}:{lineno}: malformed JSON ({e.msg if hasattr(e, 'msg') else e})"
            ) from None
        try:
            yield model.model_validate(obj)
        except ValidationError as e:
            raise DataError(f"{path}:{lineno}: invalid {model.__name__}: {_describe(e)}") from None


def read_jsonl(path: Path, model: type[M]) -> list[M]:
    return list(iter_jsonl(path, model))


def read_jsonl_if_exists(path: Path, model: type[M]) -> list[M]:
    return read_jsonl(path, model) if Path(path).exists() else []


def _repair_tail(path: Path) -> None:
    """Cut off a torn last line left by a crash, so appends start on a fresh line."""
    size = path.stat().st_size
    if size == 0:
        return
    with path.open("rb+") as f:
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        # Find the start of the torn line and truncate there.
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
        log.warning("%s: removing torn last line (%d bytes) before appending", path, size - cut)
        f.truncate(cut)


def append_jsonl(path: Path, items: Iterable[BaseModel]) -> int:
    """Append models as whole lines; returns how many were written."""
    path = Path(path)
    payload = b"".join(item.model_dump_json().encode("utf-8") + b"\n" for item in items)
    if not payload:
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        _repair_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        view = memoryview(payload)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        os.fsync(fd)
    finally:
        os.close(fd)
    return payload.count(b"\n")


def write_json_atomic(path: Path, model: BaseModel) -> None:
    """Write a JSON document via a temporary file and rename, so readers never see half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(model.model_dump_json(indent=2) + "\n", encoding="utf-8")
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
