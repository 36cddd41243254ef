"""Corpora and excerpt windows: deterministic, complete, and clear about bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from _record_helpers import embedded_tokenizer
from neuroscribe.datasets.corpus import open_corpus
from neuroscribe.datasets.windows import TokenStrings, iter_windows, make_batch, special_prefix
from neuroscribe.errors import ConfigError, DataError


def test_builtin_corpus_is_real_english_and_deterministic():
    c = open_corpus()
    assert c.kind == "builtin" and "Python" in c.describe()["source"]
    docs = list(c.texts())
    assert len(docs) > 50 and sum(len(d) for d in docs) > 100_000
    assert docs == list(open_corpus("builtin").texts())
    assert any("The " in d and "statement" in d for d in docs)


def test_local_files(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nline two\n\n\nsecond doc\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"content": "third"})
        + "\n\n"
        + json.dumps({"content": "  "})
        + "\n"
        + json.dumps("fourth")
        + "\n"
    )
    pq.write_table(pa.table({"content": ["fifth", None, "sixth"]}), tmp_path / "c.parquet")
    assert list(open_corpus(str(tmp_path / "a.txt")).texts()) == [
        "first doc\nline two",
        "second doc",
    ]
    assert list(open_corpus(str(tmp_path / "b.jsonl"), text_column="content").texts()) == [
        "third",
        "fourth",
    ]
    assert list(open_corpus(str(tmp_path / "c.parquet"), text_column="content").texts()) == [
        "fifth",
        "sixth",
    ]
    folder = open_corpus(str(tmp_path), text_column="content")
    assert folder.kind == "dir"
    assert list(folder.texts()) == [
        "first doc\nline two",
        "second doc",
        "third",
        "fourth",
        "fifth",
        "sixth",
    ]


def test_bad_corpora(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "x.csv").write_text("a,b")
    with pytest.raises(DataError, match=r"unsupported type \.csv"):
        open_corpus(str(tmp_path / "x.csv"))
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: malformed JSON"):
        list(open_corpus(str(tmp_path / "bad.jsonl")).texts())
    (tmp_path / "num.jsonl").write_text('{"text": 3}\n')
    with pytest.raises(DataError, match=r"num\.jsonl:1: column 'text' is not text"):
        list(open_corpus(str(tmp_path / "num.jsonl")).texts())


def test_hub_corpus_streams_through_datasets(tmp_path):
    c = open_corpus("hf:some/dataset")
    assert c.kind == "hub" and c.spec == "some/dataset"
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"neuroscribe\[hub\]"):
            list(c.texts())
        return
    # A local dataset folder goes through the same streaming `load_dataset` path, offline.
    folder = tmp_path / "ds"
    folder.mkdir()
    rows = [{"body": f"document number {i}"} for i in range(5)]
    (folder / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    hub = open_corpus(f"hf:{folder}", text_column="body")
    assert hub.kind == "hub" and hub.describe()["split"] == "train"
    assert list(hub.texts()) == [r["body"] for r in rows]
    with pytest.raises(DataError, match="no text column 'text'"):
        list(open_corpus(f"hf:{folder}").texts())


def test_windows_cover_documents_and_stop_at_max_tokens():
    tok = embedded_tokenizer()
    docs = [
        "one two three four five six seven eight nine ten eleven",
        "short",
        "alpha beta gamma delta epsilon",
    ]
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    w = list(iter_windows(docs, tok, length=4, min_length=2, max_tokens=None))
    expected = [d[i : i + 4] for d in ids for i in range(0, len(d), 4) if len(d[i : i + 4]) >= 2]
    assert w == expected
    capped = list(iter_windows(docs, tok, length=4, min_length=2, max_tokens=10))
    assert sum(map(len, capped)) == 10 and capped[:2] == expected[:2]
    strings = TokenStrings(tok)
    assert "".join(t for win in w[:3] for t in strings(win)) == docs[0]


def test_make_batch_masks_prefix_and_padding():
    ids, mask, valid = make_batch([[5, 6, 7], [8]], [1], 4, pad_id=0)
    assert ids.tolist() == [[1, 5, 6, 7, 0], [1, 8, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]
    assert valid.tolist() == [[True, True, True, False], [True, False, False, False]]
    assert valid.dtype == torch.bool


def test_special_prefix_follows_the_tokenizer():
    tok = embedded_tokenizer()
    assert special_prefix(tok) == []  # SmolLM2 adds no BOS

    class WithBos:
        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": ([1] if add_special_tokens else []) + [42]}

    assert special_prefix(WithBos()) == [1]
