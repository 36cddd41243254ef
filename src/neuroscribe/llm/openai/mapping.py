"""Pure mapping of OpenAI-compatible answers to `Completion`s and of error bodies to text.

Nothing here does I/O, so every quirk is tested on literal JSON: llama.cpp's off-by-one
echo logprobs (`shift=1`: raw entry i-1 is the distribution for token i), its "" pieces
for multi-byte characters (prompt token texts rebuilt from `text_offset`), FastAPI's
`{"detail": ...}` error bodies.

Every part of an answer that is read is checked first: an answer of the wrong shape
(`choices` a string, content an int, `usage` a string or negative, a logprob of +1000
or NaN) raises `MalformedAnswer`, which the wire retries like a truncated body; no
AttributeError or OverflowError reaches the caller.
"""

from __future__ import annotations

import json
import math
from typing import Any, NoReturn

import openai

from neuroscribe.llm.base import Completion, TokenLogprob
from neuroscribe.llm.limits import parse_retry_after
from neuroscribe.schema import Usage

# Float error may put a certain token's logprob a hair above 0; more than this is not a
# log-probability.
LOGPROB_EPSILON = 1e-4
# More tokens than any model's context in one answer: the usage is not believable.
MAX_USAGE_TOKENS = 100_000_000


class MalformedAnswer(ValueError):
    """Valid JSON, but not of the shape an OpenAI-compatible answer has."""


def _bad(message: str) -> NoReturn:
    raise MalformedAnswer(message)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    names |= {list: "a list", dict: "an object"}
    return names.get(type(value), type(value).__name__)


def _obj(value: Any, where: str, *, optional: bool = False) -> dict[str, Any]:
    if value is None and optional:
        return {}
    if not isinstance(value, dict):
        _bad(f"{where} is {_kind(value)}, not an object")
    return value


def _list(value: Any, where: str, *, optional: bool = False) -> list[Any]:
    if value is None and optional:
        return []
    if not isinstance(value, list):
        _bad(f"{where} is {_kind(value)}, not a list")
    return value


def _str(value: Any, where: str, *, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        _bad(f"{where} is {_kind(value)}, not a string")
    return value


def _logprob(value: Any, where: str) -> float | None:
    """A log-probability: finite and <= 0 (a float-error epsilon above 0 becomes 0)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        _bad(f"{where} is {_kind(value)}, not a number")
    v = float(value)
    if not math.isfinite(v) or v > LOGPROB_EPSILON:
        _bad(f"{where} is {value!r}, not a log-probability (finite, <= 0)")
    return min(v, 0.0)


def choices_of(data: Any) -> list[dict[str, Any]]:
    """The answer's `choices`, checked to be a non-empty list of objects."""
    choices = _list(_obj(data, "the answer").get("choices"), "'choices'")
    if not choices:
        _bad("'choices' is empty")
    for i, choice in enumerate(choices):
        _obj(choice, f"choices[{i}]")
    return choices


def map_usage(data: dict[str, Any]) -> Usage:
    """The answer's token counts (missing = 0); negative, fractional or absurd counts are
    a malformed answer (they would make the cost negative, and --max-cost never trip)."""
    usage = _obj(data.get("usage"), "'usage'", optional=True)
    counts = {}
    for name in ("prompt_tokens", "completion_tokens"):
        v = usage.get(name)
        if v is None:
            v = 0
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            _bad(f"usage.{name} is {v!r}, not a whole number")
        if not 0 <= v <= MAX_USAGE_TOKENS:
            _bad(f"usage.{name} is {v}, not a token count (0..{MAX_USAGE_TOKENS})")
        counts[name] = v
    return Usage(**counts, requests=1)


def error_message(exc: openai.APIStatusError, limit: int = 300) -> str:
    body = exc.body
    text = ""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            text = str(inner["message"])
        elif body.get("detail") is not None:
            text = str(body["detail"])
    text = text or str(getattr(exc, "message", "") or exc)
    text = " ".join(text.split())  # one line: servers put tracebacks in here
    return text if len(text) <= limit else text[: limit - 3] + "..."


def retry_after(exc: openai.APIStatusError) -> float | None:
    return parse_retry_after(getattr(exc.response, "headers", None))


def body_message(content: bytes, fallback: str, limit: int = 300) -> str:
    """The error message in an error body (OpenAI's {"error": {"message"}}, FastAPI's
    {"detail"}), else the body's text, else the HTTP reason; one line, capped."""
    text = ""
    try:
        body = json.loads(content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            text = str(inner["message"])
        elif isinstance(inner, str):
            text = inner
        elif body.get("detail") is not None:
            text = str(body["detail"])
    if not text:
        text = content[:limit].decode("utf-8", "replace") if content else fallback
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def body_code(content: bytes) -> str:
    try:
        body = json.loads(content)
    except ValueError:
        return ""
    inner = body.get("error") if isinstance(body, dict) else None
    return str(inner.get("code") or inner.get("type") or "") if isinstance(inner, dict) else ""


def map_chat_choices(data: dict[str, Any]) -> list[Completion]:
    """Chat answer → Completions (text, finish reason, generated-token logprobs)."""
    out = []
    for i, choice in enumerate(choices_of(data)):
        where = f"choices[{i}]"
        message = _obj(choice.get("message"), f"{where}.message", optional=True)
        text = _content_text(message.get("content"), f"{where}.message.content")
        finish = _str(choice.get("finish_reason"), f"{where}.finish_reason", optional=True)
        tokens = None
        lp = _obj(choice.get("logprobs"), f"{where}.logprobs", optional=True)
        if lp.get("content") is not None:
            tokens = []
            for j, item in enumerate(_list(lp["content"], f"{where}.logprobs.content")):
                at = f"{where}.logprobs.content[{j}]"
                item = _obj(item, at)
                top = {}
                for k, alt in enumerate(_list(item.get("top_logprobs"), at, optional=True)):
                    alt = _obj(alt, f"{at}.top_logprobs[{k}]")
                    lp_alt = _logprob(alt.get("logprob"), f"{at}.top_logprobs[{k}].logprob")
                    if lp_alt is None:
                        _bad(f"{at}.top_logprobs[{k}].logprob is missing")
                    top[_str(alt.get("token"), f"{at}.top_logprobs[{k}].token")] = lp_alt
                tokens.append(
                    TokenLogprob(
                        token=_str(item.get("token"), f"{at}.token"),  # type: ignore[arg-type]
                        logprob=_logprob(item.get("logprob"), f"{at}.logprob"),
                        top_logprobs=top,  # type: ignore[arg-type]
                    )
                )
        out.append(Completion(text=text, finish_reason=finish, tokens=tokens))
    return out


def _content_text(content: Any, where: str) -> str:
    """Message content: a string, null, or (some servers) a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for k, part in enumerate(content):
            part = _obj(part, f"{where}[{k}]")
            parts.append(_str(part.get("text"), f"{where}[{k}].text", optional=True) or "")
        return "".join(parts)
    _bad(f"{where} is {_kind(content)}, not a string")


def map_completion_choices(
    data: dict[str, Any],
    *,
    prompt: str,
    echo: bool,
    shift: int = 0,
    drop_generated: bool = False,
) -> list[Completion]:
    """Completion answer → Completions; with echo, split prompt and generated tokens.

    The split uses `text_offset` (character offsets into prompt + completion; tokens that
    start before len(prompt) are the prompt's). With `shift=1` raw entry i-1 is the
    distribution for token i (llama.cpp without BOS); the token's own logprob is then
    read from that distribution (None when it is outside the returned top-k). When the
    server's token strings do not add up to the prompt (llama.cpp returns "" for pieces
    of a multi-byte character), prompt token texts are rebuilt from the offsets, so
    they always concatenate to the prompt exactly.
    """
    out = []
    for c, choice in enumerate(choices_of(data)):
        where = f"choices[{c}]"
        text = _str(choice.get("text"), f"{where}.text", optional=True) or ""
        finish = _str(choice.get("finish_reason"), f"{where}.finish_reason", optional=True)
        lp = _obj(choice.get("logprobs"), f"{where}.logprobs", optional=True)
        prompt_tokens = None
        tokens = None
        if lp.get("tokens") is not None:
            raw_tokens, raw_lps, raw_tops, offsets = completion_logprobs(lp, where)
            raw_lps = raw_lps or [None] * len(raw_tokens)
            raw_tops = raw_tops or [None] * len(raw_tokens)
            entries = []
            for i, tok in enumerate(raw_tokens):
                if echo and shift:
                    j = i - shift
                    top = dict(raw_tops[j] or {}) if 0 <= j < len(raw_tops) else {}
                    logprob = top.get(tok)
                else:
                    top = dict(raw_tops[i] or {}) if i < len(raw_tops) else {}
                    logprob = raw_lps[i] if i < len(raw_lps) else None
                entries.append(TokenLogprob(token=tok, logprob=logprob, top_logprobs=top))
            if echo:
                n_prompt = _count_prompt_tokens(raw_tokens, offsets, prompt)
                prompt_tokens = entries[:n_prompt]
                _rebuild_prompt_texts(prompt_tokens, offsets[:n_prompt], prompt)
                tokens = entries[n_prompt:]
            else:
                tokens = entries
        if drop_generated:
            text = prompt if echo else ""
            tokens = [] if tokens is not None else None
        out.append(
            Completion(text=text, finish_reason=finish, tokens=tokens, prompt_tokens=prompt_tokens)
        )
    return out


def completion_logprobs(
    lp: dict[str, Any], where: str
) -> tuple[list[str], list[float | None], list[dict[str, float] | None], list[int]]:
    """A completion choice's `logprobs`, checked: tokens, token logprobs, top logprobs
    (a token → logprob map, or null, per position) and text offsets."""
    tokens = [
        _str(t, f"{where}.logprobs.tokens[{j}]")
        for j, t in enumerate(_list(lp.get("tokens"), f"{where}.logprobs.tokens"))
    ]
    lps = [
        _logprob(v, f"{where}.logprobs.token_logprobs[{j}]")
        for j, v in enumerate(
            _list(lp.get("token_logprobs"), f"{where}.logprobs.token_logprobs", optional=True)
        )
    ]
    tops: list[dict[str, float] | None] = []
    for j, top in enumerate(
        _list(lp.get("top_logprobs"), f"{where}.logprobs.top_logprobs", optional=True)
    ):
        at = f"{where}.logprobs.top_logprobs[{j}]"
        if top is None:
            tops.append(None)
            continue
        checked = {}
        for tok, v in _obj(top, at).items():
            value = _logprob(v, f"{at}[{tok[:20]!r}]")
            if value is None:
                _bad(f"{at}[{tok[:20]!r}] is null, not a number")
            checked[tok] = value
        tops.append(checked)
    offsets = []
    for j, off in enumerate(
        _list(lp.get("text_offset"), f"{where}.logprobs.text_offset", optional=True)
    ):
        if isinstance(off, bool) or not isinstance(off, int):
            _bad(f"{where}.logprobs.text_offset[{j}] is {_kind(off)}, not a whole number")
        offsets.append(off)
    return tokens, lps, tops, offsets  # type: ignore[return-value]


def _count_prompt_tokens(tokens: list[str], offsets: list[int], prompt: str) -> int:
    if len(offsets) == len(tokens) and offsets:
        return sum(1 for off in offsets if off < len(prompt))
    # No offsets: accumulate token texts until they cover the prompt.
    covered = 0
    for i, tok in enumerate(tokens):
        if covered >= len(prompt):
            return i
        covered += len(tok)
    return len(tokens)


def _rebuild_prompt_texts(entries: list[TokenLogprob], offsets: list[int], prompt: str) -> None:
    if "".join(e.token for e in entries) == prompt or len(offsets) != len(entries):
        return
    bounds = [*offsets, len(prompt)]
    if any(b > a for a, b in zip(bounds[1:], bounds[:-1], strict=True)) or bounds[0] != 0:
        return  # offsets not usable (not monotonic): keep the server's strings
    for i, entry in enumerate(entries):
        entry.token = prompt[bounds[i] : bounds[i + 1]]


__all__ = [
    "LOGPROB_EPSILON",
    "MAX_USAGE_TOKENS",
    "MalformedAnswer",
    "body_code",
    "body_message",
    "choices_of",
    "completion_logprobs",
    "error_message",
    "map_chat_choices",
    "map_completion_choices",
    "map_usage",
    "retry_after",
]
