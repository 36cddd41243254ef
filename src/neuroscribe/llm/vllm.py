"""vLLM: prompt logprobs the vLLM way, for its OpenAI-compatible server and its engine.

Two backends share this module's pure mapping:

- `vllm:<model>` — a `vllm serve <model>` server (`--base-url`, default
  `$OPENAI_BASE_URL`, then http://127.0.0.1:8000/v1). It is the OpenAI-compatible client
  (`OpenAIClient`) told to read prompt logprobs with vLLM's `prompt_logprobs` request
  field instead of `echo`; a bare model name on a vLLM server gets the same when its
  probe finds that echo + logprobs is refused and `prompt_logprobs` works.
- `vllm-local:<hub id or folder>` — vLLM's offline engine in this process
  (`neuroscribe.llm.vllm_local`; the optional `vllm` extra, a GPU machine).

The vLLM answer facts relied on (vLLM >= 0.6; both the server's JSON and the engine's
`RequestOutput` carry the same structure):

- `prompt_logprobs` is a list with one entry per prompt token, the prompt's BOS token
  included where the tokenizer adds one. Entry 0 is null: nothing predicts the first
  token. Entry i (i >= 1) is the distribution of token i given tokens < i — already the
  distribution *for* token i, the OpenAI echo alignment, so no shift is applied (the
  probe checks this on token ids; see `alignment_shift`).
- Each entry maps token id → {logprob, rank, decoded_token}: the prompt's own token
  (with its true rank, which may be > k) and the top-k (ranks 1..k). The prompt's
  token is inserted first, so without `prompt_token_ids` it is the entry's first key
  (JSON object order, kept by Python's json). The server sends the ids as strings.
- The server replaces -inf logprobs by -9999.0; a -inf that still arrives is read as
  that. NaN or a positive logprob is an error.
- `prompt_token_ids` (server: on the choice, in recent versions; engine: always on
  `RequestOutput`) lists the prompt's ids; when given, its length must match.
- `decoded_token` is the token's text in one of three conventions, by version: text
  decoded in context (" are"), the token decoded alone ("are" for SentencePiece's
  "▁are"; "\ufffd" for part of a multi-byte character), or the raw vocabulary string
  ("Ġare", "ĉ" for a tab). The prompt decides which: the pieces are aligned to the
  prompt text as they are, else after decoding raw vocabulary strings, so every prompt
  token's text is its exact span of the prompt (they concatenate to the prompt, and
  position 0, which has no entry, gets what precedes position 1). Alternatives' texts
  are converted the same way.

Prefix caching is the server's business (`vllm serve --enable-prefix-caching`; the
engine here is built with `enable_prefix_caching=True`). It speeds the explainer's
requests, which share long instructions and few-shot examples; a prompt-logprobs request
needs logits at every prompt position, which cached KV blocks cannot give, so vLLM
computes those prompts in full (its V1 engine skips the prefix cache for them).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuroscribe.errors import ConfigError, OutputError
from neuroscribe.llm.base import Completion, TokenLogprob

VLLM_PREFIX = "vllm:"
VLLM_LOCAL_PREFIX = "vllm-local:"
# Where `vllm serve` listens by default.
VLLM_DEFAULT_URL = "http://127.0.0.1:8000/v1"
# What vLLM's server sends for a -inf logprob (it cannot be written in JSON).
CLAMPED_LOGPROB = -9999.0
# Float error may put a certain token's logprob a hair above 0.
LOGPROB_EPSILON = 1e-4


@dataclass(frozen=True)
class Candidate:
    """One token of one position's distribution: vLLM's `Logprob` plus its token id."""

    token_id: int
    logprob: float
    rank: int | None
    text: str | None


Position = dict[int, Candidate]


@dataclass
class PromptLogprobs:
    """A prompt's positions as vLLM gave them, checked.

    `ids[i]` is prompt token i (None only for position 0 when the answer has no
    `prompt_token_ids`); `positions[0]` is None, `positions[i]` the candidates for token i.
    """

    ids: list[int | None]
    positions: list[Position | None]


def _check_logprob(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OutputError(f"{where} is {value!r}, not a number")
    v = float(value)
    if math.isnan(v) or v > LOGPROB_EPSILON:
        raise OutputError(f"{where} is {value!r}, not a log-probability (<= 0)")
    if v == -math.inf:
        return CLAMPED_LOGPROB
    return min(v, 0.0)


def _check_rank(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise OutputError(f"{where} is {value!r}, not a rank (a whole number >= 1)")
    return value


def _check_text(value: Any, where: str) -> str | None:
    if value is not None and not isinstance(value, str):
        raise OutputError(f"{where} is {value!r}, not a string")
    return value


def _token_id(key: Any, where: str) -> int:
    """A position's key: an int (engine) or the decimal string of one (server JSON)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        return int(key)
    raise OutputError(f"{where} has the key {key!r}, not a token id")


def _check_ids(value: Any, where: str) -> list[int] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or not all(
        isinstance(t, int) and not isinstance(t, bool) for t in value
    ):
        raise OutputError(f"{where} is not a list of token ids")
    return list(value)


def _read_position(entry: Any, at: str) -> Position:
    """One position's candidates: token id (int, or its string in JSON) → a JSON object
    `{"logprob", "rank", "decoded_token"}` or an object with those attributes."""
    if not isinstance(entry, Mapping) or not entry:
        shown = "empty" if isinstance(entry, Mapping) else repr(entry)[:40]
        raise OutputError(f"{at} is {shown}, not a distribution")
    position: Position = {}
    for key, item in entry.items():
        tid = _token_id(key, at)
        here = f"{at}[{str(key)!r}]"
        if isinstance(item, Mapping):
            lp, rank, text = item.get("logprob"), item.get("rank"), item.get("decoded_token")
        else:
            lp = getattr(item, "logprob", None)
            rank = getattr(item, "rank", None)
            text = getattr(item, "decoded_token", None)
        position[tid] = Candidate(
            token_id=tid,
            logprob=_check_logprob(lp, f"{here}.logprob"),
            rank=_check_rank(rank, f"{here}.rank"),
            text=_check_text(text, f"{here}.decoded_token"),
        )
    return position


def _own(position: Position, token_id: int, at: str) -> Candidate:
    if token_id not in position:
        raise OutputError(f"{at} has no entry for its own token (id {token_id})")
    return position[token_id]


def read_prompt_logprobs(
    raw: Any,
    prompt_token_ids: Any = None,
    *,
    where: str = "prompt_logprobs",
    n_prompt_tokens: int | None = None,
) -> PromptLogprobs:
    """Check vLLM's `prompt_logprobs` (server JSON or engine objects) and read it.

    `raw`: the list — entries None or a mapping of token id (int or its string) to a
    JSON object `{"logprob", "rank", "decoded_token"}` or an object with those
    attributes (vLLM's `Logprob`). `prompt_token_ids`: the prompt's ids if the answer
    has them. `n_prompt_tokens`: the prompt's token count from elsewhere (the usage),
    checked too. Every problem is an `OutputError` naming the entry.
    """
    if raw is None:
        raise OutputError(
            f"{where} is missing: the server ignored the prompt_logprobs request "
            "(is it vLLM >= 0.6?)"
        )
    if not isinstance(raw, list | tuple):
        raise OutputError(f"{where} is {type(raw).__name__}, not a list")
    if not raw:
        raise OutputError(f"{where} is empty: a prompt has at least one token")
    ids = _check_ids(prompt_token_ids, "prompt_token_ids")
    if ids is not None and len(ids) != len(raw):
        raise OutputError(f"{where} has {len(raw)} entries for {len(ids)} prompt tokens")
    if n_prompt_tokens and n_prompt_tokens != len(raw):
        raise OutputError(
            f"{where} has {len(raw)} entries but the usage counts {n_prompt_tokens} prompt tokens"
        )
    if raw[0] is not None:
        # vLLM's first entry is always null; a list that starts with a distribution is
        # not vLLM's, and reading it as one would be off by one.
        raise OutputError(f"{where}[0] is not null: the first prompt token has no distribution")
    positions: list[Position | None] = [None]
    actual: list[int | None] = [ids[0] if ids is not None else None]
    for i in range(1, len(raw)):
        position = _read_position(raw[i], f"{where}[{i}]")
        if ids is not None:
            _own(position, ids[i], f"{where}[{i}]")
            actual.append(ids[i])
        else:
            actual.append(next(iter(position)))  # vLLM inserts the prompt's token first
        positions.append(position)
    return PromptLogprobs(ids=actual, positions=positions)


def alignment_shift(read: PromptLogprobs) -> int | None:
    """Which token each entry's most likely candidate is, on a prompt that repeats itself.

    After the first copy every token is predictable, so for entries *for* their own
    token (vLLM's documented alignment) rank 1 is token i (returns 0); entries that
    predicted the next token would make it token i+1 (returns 1). None: no clear winner.
    Compares token ids, so it is independent of how token texts are spelt.
    """
    votes = [0, 0]
    n = len(read.positions)
    for i in range(max(1, n // 3), n - 1):
        position = read.positions[i]
        if not position:
            continue
        best = min(position.values(), key=lambda c: (c.rank or 10**9, -c.logprob)).token_id
        votes[0] += best == read.ids[i]
        votes[1] += best == read.ids[i + 1]
    if max(votes) < 3 or votes[0] == votes[1]:
        return None
    return 0 if votes[0] > votes[1] else 1


# --------------------------------------------------------------------------- token texts


def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's byte-level BPE alphabet: printable bytes stand for themselves, the rest
    # are shifted to U+0100.. ("Ġ" is a space, "Ċ" a newline, "ĉ" a tab).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += range(ord("®"), ord("ÿ") + 1)
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


_BYTE_OF = {ch: b for b, ch in _bytes_to_unicode().items()}


def decode_raw_piece(piece: str) -> str:
    """A raw vocabulary string as text: "<0x09>" → tab (SentencePiece byte token),
    "▁the" → " the" (SentencePiece), "Ġthe"/"ĉ" → " the"/tab (byte-level BPE)."""
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        try:
            return bytes([int(piece[3:5], 16)]).decode("utf-8", "replace")
        except ValueError:
            return piece
    if "▁" in piece:
        return piece.replace("▁", " ")
    if piece and all(ch in _BYTE_OF for ch in piece):
        return bytes(_BYTE_OF[ch] for ch in piece).decode("utf-8", "replace")
    return piece


def align_token_texts(pieces: Sequence[str | None], text: str) -> list[str] | None:
    """Each token's exact span of `text`, from the server's token strings; None when the
    strings cannot be placed in `text` (then the caller keeps the strings as they are).

    Placed from the end backwards: the last token ends where the text ends, so each
    piece must end where the next one starts — no search, no guessing. Pieces that say
    nothing (None: position 0; "" or "\ufffd": part of a multi-byte character) take the
    text between their placed neighbours (all of it on the first of them, so the spans
    still concatenate to `text`). A piece decoded alone may have lost its leading space
    (SentencePiece): a space the previous piece does not end with is given to it.
    """
    n = len(pieces)
    out = [""] * n
    end = len(text)
    pending: list[int] = []  # indices waiting for text, highest first
    for i in range(n - 1, -1, -1):
        piece = pieces[i]
        if not piece or "\ufffd" in piece:
            pending.append(i)
            continue
        if pending:
            start = text.rfind(piece, 0, end)
            if start < 0:
                return None
            out[pending[-1]] = text[start + len(piece) : end]
            pending = []
        elif text.endswith(piece, 0, end):
            start = end - len(piece)
        elif (
            i + 1 < n
            and out[i + 1]
            and end > 0
            and text[end - 1] == " "
            and text.endswith(piece, 0, end - 1)
        ):
            # The next token's leading space, dropped when it was decoded alone.
            out[i + 1] = " " + out[i + 1]
            end -= 1
            start = end - len(piece)
        else:
            return None
        out[i] = piece
        end = start
    if pending:
        out[pending[-1]] = text[:end]
        end = 0
    return out if end == 0 else None


def _texts(read_pieces: Sequence[str | None], text: str) -> tuple[list[str] | None, bool]:
    """The aligned spans and whether raw vocabulary strings had to be decoded."""
    aligned = align_token_texts(read_pieces, text)
    if aligned is not None:
        return aligned, False
    decoded = [None if p is None else decode_raw_piece(p) for p in read_pieces]
    return align_token_texts(decoded, text), True


def _top(position: Position, k: int | None, raw: bool) -> dict[str, float]:
    """The top-k alternatives by text (the prompt's own token only if within the top k);
    several ids with one text keep the most likely, as the local backend does."""
    top: dict[str, float] = {}
    for c in sorted(position.values(), key=lambda c: -c.logprob):
        if k is not None and c.rank is not None and c.rank > k:
            continue
        if k is not None and c.rank is None and len(top) >= k:
            continue
        text = c.text if c.text is not None else ""
        top.setdefault(decode_raw_piece(text) if raw else text, c.logprob)
    return top


def _tokens(
    positions: Sequence[Position | None], ids: Sequence[int | None], text: str, k: int | None
) -> list[TokenLogprob]:
    """Each position's token: its own candidate's logprob, the top k, and its span of
    `text`; a position without candidates (the prompt's first) gets only its text."""
    owns = [None if p is None else p[ids[i]] for i, p in enumerate(positions)]  # type: ignore[index]
    pieces = [None if o is None else (o.text or "") for o in owns]
    texts, raw = _texts(pieces, text)
    if texts is None:  # cannot be placed: the server's strings as they are
        texts, raw = [p or "" for p in pieces], False
    out = []
    for i, own in enumerate(owns):
        position = positions[i]
        if own is None or position is None:
            out.append(TokenLogprob(token=texts[i]))  # nothing predicts the first token
        else:
            top = _top(position, k, raw)
            out.append(TokenLogprob(token=texts[i], logprob=own.logprob, top_logprobs=top))
    return out


def to_token_logprobs(read: PromptLogprobs, prompt: str, k: int | None) -> list[TokenLogprob]:
    """The prompt's tokens in neuroscribe's form: entry i is the distribution *for* token
    i (vLLM's entry i as it is), its text the token's span of `prompt`."""
    return _tokens(read.positions, read.ids, prompt, k)


def map_prompt_logprobs(
    raw: Any,
    *,
    prompt: str,
    prompt_token_ids: Any = None,
    k: int | None = None,
    n_prompt_tokens: int | None = None,
    where: str = "prompt_logprobs",
) -> list[TokenLogprob]:
    """vLLM's `prompt_logprobs` → `Completion.prompt_tokens` (see `read_prompt_logprobs`)."""
    read = read_prompt_logprobs(raw, prompt_token_ids, where=where, n_prompt_tokens=n_prompt_tokens)
    return to_token_logprobs(read, prompt, k)


def map_sample_logprobs(
    raw: Any, token_ids: Sequence[int], text: str, k: int | None, where: str = "logprobs"
) -> list[TokenLogprob]:
    """The engine's generated-token logprobs (`CompletionOutput.logprobs`: one mapping
    per generated token, the sampled token's entry included) → `Completion.tokens`."""
    if not isinstance(raw, list | tuple) or len(raw) != len(token_ids):
        size = len(raw) if isinstance(raw, list | tuple) else type(raw).__name__
        raise OutputError(f"{where} has {size} entries for {len(token_ids)} generated tokens")
    positions: list[Position | None] = []
    for j, entry in enumerate(raw):
        position = _read_position(entry, f"{where}[{j}]")
        _own(position, token_ids[j], f"{where}[{j}]")
        positions.append(position)
    # Tokens that run past `text` (a stop string is cut from it) cannot be placed in
    # it: then the tokens keep their own strings.
    return _tokens(positions, list(token_ids), text, k)


# --------------------------------------------------------------------------- the server


def map_server_choices(
    data: dict[str, Any],
    *,
    prompt: str,
    k: int | None,
    drop_generated: bool = False,
    n_prompt_tokens: int | None = None,
) -> list[Completion]:
    """A vLLM /completions answer to a `prompt_logprobs` request → Completions, as an
    echo answer would give them: text = prompt + generated text, `prompt_tokens` from
    `prompt_logprobs`, `tokens` from the OpenAI-style `logprobs` of generated tokens.

    The answer's envelope (choices, text, logprobs) is checked like any answer
    (`MalformedAnswer`, retried); what is wrong in `prompt_logprobs` is an `OutputError`.
    """
    from neuroscribe.llm.openai.mapping import _str, choices_of, completion_logprobs

    out = []
    for c, choice in enumerate(choices_of(data)):
        where = f"choices[{c}]"
        text = _str(choice.get("text"), f"{where}.text", optional=True) or ""
        finish = _str(choice.get("finish_reason"), f"{where}.finish_reason", optional=True)
        tokens = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and lp.get("tokens") is not None:
            raw_tokens, raw_lps, raw_tops, _ = completion_logprobs(lp, where)
            tokens = [
                TokenLogprob(
                    token=tok,
                    logprob=raw_lps[i] if i < len(raw_lps) else None,
                    top_logprobs=dict(raw_tops[i] or {}) if i < len(raw_tops) else {},
                )
                for i, tok in enumerate(raw_tokens)
            ]
        prompt_tokens = map_prompt_logprobs(
            choice.get("prompt_logprobs"),
            prompt=prompt,
            prompt_token_ids=choice.get("prompt_token_ids"),
            k=k,
            n_prompt_tokens=n_prompt_tokens,
            where=f"{where}.prompt_logprobs",
        )
        if drop_generated:
            text, tokens = "", ([] if tokens is not None else None)
        out.append(
            Completion(
                text=prompt + text, finish_reason=finish, tokens=tokens, prompt_tokens=prompt_tokens
            )
        )
    return out


def describe_answer(data: Any) -> str:
    """The answer as JSON for an error's `raw` (the caller clips and scrubs it)."""
    return json.dumps(data, ensure_ascii=False, default=str)


def server_model(spec: str) -> str:
    """The model name a `vllm:` spec sends (what `vllm serve` was started with)."""
    model = spec[len(VLLM_PREFIX) :].strip() if spec.startswith(VLLM_PREFIX) else ""
    if not model:
        raise ConfigError(f"empty vLLM spec {spec!r}: use vllm:<model served by vllm serve>")
    return model


def _server_factory(spec: str, **options: Any) -> Any:
    from neuroscribe.llm.vllm_server import VLLMServerClient  # lazy: httpx, openai

    return VLLMServerClient(spec, **options)


def register(registry: Any) -> None:
    """`vllm:<model>` (a vLLM server) and `vllm-local:<model>` (vLLM's offline engine)."""
    from neuroscribe.llm import vllm_local
    from neuroscribe.llm.registry import BackendInfo

    registry.register(
        VLLM_PREFIX,
        _server_factory,
        BackendInfo(name="vllm", prefix=VLLM_PREFIX, endpoint=True),
    )
    vllm_local.register(registry)


__all__ = [
    "CLAMPED_LOGPROB",
    "VLLM_DEFAULT_URL",
    "VLLM_LOCAL_PREFIX",
    "VLLM_PREFIX",
    "Candidate",
    "PromptLogprobs",
    "align_token_texts",
    "alignment_shift",
    "decode_raw_piece",
    "map_prompt_logprobs",
    "map_sample_logprobs",
    "map_server_choices",
    "read_prompt_logprobs",
    "server_model",
    "to_token_logprobs",
]
