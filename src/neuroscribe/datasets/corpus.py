"""Corpora: where the text that the subject model reads comes from.

A corpus is a deterministic stream of documents (plain strings). Four kinds:

- `builtin`: the documentation topics shipped inside Python itself (`pydoc_data`), real
  English prose with code samples, available offline everywhere;
- a local `.txt` file (documents separated by blank lines), `.jsonl` or `.parquet` file
  (one document per row, text column chosen by `text_column`), or a folder of such files
  (read in sorted order);
- a Hub dataset `NAME` or `NAME:CONFIG`, optionally written `hf:NAME`, streamed through
  the optional `datasets` package (`pip install neuroscribe[hub]`).
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from neuroscribe.errors import ConfigError, DataError

BUILTIN = "builtin"
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass(frozen=True)
class Corpus:
    """A named, deterministic document stream."""

    spec: str  # what the user wrote
    kind: str  # "builtin" | "file" | "dir" | "hub"
    text_column: str = "text"
    split: str = "train"

    def describe(self) -> dict[str, str]:
        """What goes into the manifest."""
        out = {"spec": self.spec, "kind": self.kind}
        if self.kind == BUILTIN:
            out["source"] = f"pydoc_data.topics (Python {platform.python_version()})"
        if self.kind in ("hub", "dir", "file"):
            out["text_column"] = self.text_column
        if self.kind == "hub":
            out["split"] = self.split
        return out

    def texts(self) -> Iterator[str]:
        """Yield the documents in a fixed order; empty documents are skipped."""
        if self.kind == BUILTIN:
            yield from _builtin_texts()
        elif self.kind == "file":
            yield from _file_texts(Path(self.spec), self.text_column)
        elif self.kind == "dir":
            yield from _dir_texts(Path(self.spec), self.text_column)
        else:
            yield from _hub_texts(self.spec, self.text_column, self.split)


def open_corpus(
    spec: str | None = None, *, text_column: str = "text", split: str = "train"
) -> Corpus:
    """Resolve a corpus spec: `builtin` (default), a local file or folder, or a Hub dataset."""
    spec = (spec or BUILTIN).strip()
    if spec in (BUILTIN, "builtin:pydoc"):
        return Corpus(BUILTIN, BUILTIN, text_column, split)
    if spec.startswith("hf:"):
        return Corpus(spec[3:], "hub", text_column, split)
    path = Path(spec).expanduser()
    if path.is_dir():
        if not any(p.suffix in FILE_SUFFIXES for p in path.iterdir()):
            raise DataError(f"corpus folder {path} holds no {'/'.join(FILE_SUFFIXES)} files")
        return Corpus(str(path), "dir", text_column, split)
    if path.is_file():
        if path.suffix not in FILE_SUFFIXES:
            raise DataError(
                f"corpus file {path}: unsupported type {path.suffix or '(none)'}; "
                f"use {', '.join(FILE_SUFFIXES)}"
            )
        return Corpus(str(path), "file", text_column, split)
    if path.suffix in FILE_SUFFIXES or spec.startswith((".", "/", "~")):
        raise DataError(f"corpus file {path} not found")
    return Corpus(spec, "hub", text_column, split)


def _builtin_texts() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        text = topics[key].strip()
        if text:
            yield text


def _dir_texts(folder: Path, column: str) -> Iterator[str]:
    for path in sorted(p for p in folder.iterdir() if p.suffix in FILE_SUFFIXES):
        yield from _file_texts(path, column)


def _file_texts(path: Path, column: str) -> Iterator[str]:
    if path.suffix == ".txt":
        yield from _txt_texts(path)
    elif path.suffix == ".jsonl":
        yield from _jsonl_texts(path, column)
    else:
        yield from _parquet_texts(path, column)


def _txt_texts(path: Path) -> Iterator[str]:
    # Documents are separated by blank lines; read line by line so a large file streams.
    buf: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                buf.append(line)
            elif buf:
                yield "".join(buf).strip()
                buf = []
    if buf:
        yield "".join(buf).strip()


def _jsonl_texts(path: Path, column: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if isinstance(row, str):
                text = row
            elif isinstance(row, dict):
                if column not in row:
                    raise DataError(
                        f"{path}:{lineno}: no text column {column!r} "
                        f"(columns: {', '.join(sorted(row)) or 'none'}); choose one with --text-column"
                    )
                text = row[column]
            else:
                raise DataError(f"{path}:{lineno}: expected an object or a string")
            if not isinstance(text, str):
                raise DataError(f"{path}:{lineno}: column {column!r} is not text")
            if text.strip():
                yield text


def _parquet_texts(path: Path, column: str) -> Iterator[str]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several unrelated types for bad files
        raise DataError(f"{path}: not a readable parquet file ({e})") from None
    names = pf.schema_arrow.names
    if column not in names:
        raise DataError(
            f"{path}: no text column {column!r} (columns: {', '.join(names)}); "
            "choose one with --text-column"
        )
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield text


def _hub_texts(spec: str, column: str, split: str) -> Iterator[str]:
    try:
        import datasets as hf_datasets  # the optional `hub` extra
    except ImportError:
        raise ConfigError(
            f"corpus {spec!r} is neither a local file nor 'builtin'; reading Hub datasets "
            "needs the optional extra: pip install 'neuroscribe[hub]'"
        ) from None
    name, _, config = spec.partition(":")
    try:
        ds = hf_datasets.load_dataset(name, config or None, split=split, streaming=True)
    except Exception as e:  # network, missing dataset, bad config: all user errors here
        raise DataError(f"cannot open Hub dataset {spec!r} (split {split!r}): {e}") from None
    names = list(ds.column_names or [])
    if names and column not in names:
        raise DataError(
            f"Hub dataset {spec!r} has no text column {column!r} (columns: {', '.join(names)}); "
            "choose one with --text-column"
        )
    for i, row in enumerate(ds):
        if i == 0 and column not in row:
            raise DataError(
                f"Hub dataset {spec!r} has no text column {column!r} "
                f"(columns: {', '.join(row)}); choose one with --text-column"
            )
        text = row.get(column)
        if isinstance(text, str) and text.strip():
            yield text
