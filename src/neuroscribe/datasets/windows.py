"""Cut a corpus into fixed-length token excerpts and pack them into model batches.

Each document is tokenized on its own and cut into consecutive windows of `length`
tokens; a shorter tail is kept if it has at least `min_length` tokens. Excerpts never
span two documents, so every excerpt shown to an explainer is coherent text. If the
tokenizer itself starts sequences with special tokens (a BOS), the same prefix is put in
front of every excerpt; those positions, like right padding, are never recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

DOC_CHUNK = 32  # documents tokenized per call of the (fast, batched) tokenizer


def special_prefix(tokenizer: Any) -> list[int]:
    """The special tokens the tokenizer puts before a text by default (e.g. `<bos>`)."""
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    without = tokenizer("a", add_special_tokens=False)["input_ids"]
    n = len(with_special) - len(without)
    if n > 0 and with_special[n:] == without:
        return list(with_special[:n])
    return []


def iter_windows(
    texts: Iterable[str],
    tokenizer: Any,
    *,
    length: int,
    min_length: int,
    max_tokens: int | None,
) -> Iterator[list[int]]:
    """Yield token-id windows until `max_tokens` tokens have been produced (the last one is cut)."""
    remaining = max_tokens if max_tokens is not None else float("inf")
    chunk: list[str] = []

    def flush() -> Iterator[list[int]]:
        nonlocal remaining
        encoded = tokenizer(chunk, add_special_tokens=False, verbose=False)["input_ids"]
        for ids in encoded:
            for start in range(0, len(ids), length):
                window = list(ids[start : start + length])
                if len(window) < min_length:
                    break
                if len(window) > remaining:
                    window = window[: int(remaining)]
                if window:
                    remaining -= len(window)
                    yield window
                if remaining <= 0:
                    return

    for text in texts:
        chunk.append(text)
        if len(chunk) == DOC_CHUNK:
            yield from flush()
            chunk = []
            if remaining <= 0:
                return
    if chunk:
        yield from flush()


def batched(windows: Iterable[list[int]], batch_size: int) -> Iterator[list[list[int]]]:
    """Group windows into lists of `batch_size` (the last one may be shorter)."""
    batch: list[list[int]] = []
    for w in windows:
        batch.append(w)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def make_batch(
    windows: list[list[int]], prefix: list[int], length: int, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded model input for windows.

    Returns `input_ids` and `attention_mask` of shape [B, P + length] (P = len(prefix)),
    and `valid` [B, length]: True at the real tokens of each window, the positions that
    are recorded.
    """
    p = len(prefix)
    ids = torch.full((len(windows), p + length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), p + length), dtype=torch.long)
    for b, w in enumerate(windows):
        if p:
            ids[b, :p] = torch.tensor(prefix, dtype=torch.long)
        ids[b, p : p + len(w)] = torch.tensor(w, dtype=torch.long)
        mask[b, : p + len(w)] = 1
    valid = mask[:, p:].bool()
    return ids, mask, valid


class TokenStrings:
    """Per-token text, decoded one token at a time so that tokens concatenate to the text.

    A token that is part of a multi-byte character decodes to U+FFFD on its own.
    """

    def __init__(self, tokenizer: Any):
        self._tok = tokenizer
        self._cache: dict[int, str] = {}

    def __call__(self, ids: Iterable[int]) -> list[str]:
        out = []
        for i in ids:
            s = self._cache.get(i)
            if s is None:
                s = self._cache[i] = self._decode(int(i))
            out.append(s)
        return out

    def _decode(self, i: int) -> str:
        piece = self._tok.convert_ids_to_tokens(i)
        if piece is None:
            return self._tok.decode([i])
        s = self._tok.convert_tokens_to_string([piece])
        # SentencePiece marks a leading space with "▁" but drops it when the token is
        # decoded alone; put it back so the excerpt reads as the original text.
        if piece.startswith("▁") and not s.startswith(" "):
            s = " " + s
        return s
