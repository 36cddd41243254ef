"""Pure mapping of OpenAI-compatible answers to `Completion`s and of error bodies to text.

Nothing here does I/O, so every quirk is tested on literal JSON: llama.cpp's off-by-one
echo logprobs (`shift=1`: raw entry i-1 is the distribution for token i), its "" pieces
for multi-byte characters (prompt token texts rebuilt from `text_offset`), FastAPI's
`{"detail": ...}` error bodies.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from neuroscribe.llm.base import Completion, TokenLogprob
from neuroscribe.llm.limits import parse_retry_after


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
    for choice in data["choices"]:
        message = choice.get("message") or {}
        text = message.get("content")
        if text is None:
            text = ""
        tokens = None
        lp = choice.get("logprobs")
        if isinstance(lp, dict) and lp.get("content") is not None:
            tokens = [
                TokenLogprob(
                    token=item["token"],
                    logprob=item.get("logprob"),
                    top_logprobs={
                        alt["token"]: alt["logprob"] for alt in item.get("top_logprobs") or []
                    },
                )
                for item in lp["content"]
            ]
        out.append(Completion(text=text, finish_reason=choice.get("finish_reason"), tokens=tokens))
    return out


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
    for choice in data["choices"]:
        text = choice.get("text") or ""
        finish = choice.get("finish_reason")
        lp = choice.get("logprobs")
        prompt_tokens = None
        tokens = None
        if isinstance(lp, dict) and lp.get("tokens") is not None:
            raw_tokens: list[str] = list(lp["tokens"])
            raw_lps: list[float | None] = list(lp.get("token_logprobs") or [None] * len(raw_tokens))
            raw_tops: list[dict[str, float] | None] = list(
                lp.get("top_logprobs") or [None] * len(raw_tokens)
            )
            offsets: list[int] = list(lp.get("text_offset") or [])
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
    "body_code",
    "body_message",
    "error_message",
    "map_chat_choices",
    "map_completion_choices",
    "retry_after",
]
