"""What an OpenAI-compatible endpoint + model supports, found by asking it once.

llama.cpp's server, for models without a BOS token (SmolLM2), returns in an echo answer
`top_logprobs[i]` = the distribution that predicts token i+1 (measured). The probe sends
a sentence repeated three times — whose later tokens are near-certain — and checks
whether the top entry at position i is token i (shift 0, OpenAI semantics) or token i+1
(shift 1); the client then maps raw entry i-shift to token i. It also finds out whether
"10" is one token, whether chat answers carry top logprobs, and which JSON modes work.
And whether the model reads pictures: a chat with a small picture must be accepted *and*
cost more prompt tokens than the same chat without it (a server that drops image parts
is not a vision model), so `--image-route auto` picks pixels on a vision endpoint.

vLLM's server answers the same prompt with `prompt_logprobs` (its extension; recent
versions refuse `echo` with logprobs). Where echo gives no prompt logprobs and that
field does, the endpoint's `prompt_logprobs_style` is "vllm": the client then asks that
way. Its alignment is vLLM's documented one (entry i is for token i), checked on the
repeated sentence by token id (`vllm.alignment_shift`).

Results are kept in a `ProbeCache` keyed by (base_url, model): each client has its
own unless several share one explicitly, and a stored result (from a run manifest) can
be put in so nothing is asked again.
"""

from __future__ import annotations

import base64
import json
import struct
import threading
import zlib
from typing import TYPE_CHECKING, Any

from neuroscribe.errors import LLMError, OutputError
from neuroscribe.llm.messages import image_part, text_part
from neuroscribe.llm.openai.mapping import (
    MalformedAnswer,
    choices_of,
    completion_logprobs,
    map_chat_choices,
)

if TYPE_CHECKING:
    from neuroscribe.llm.openai._wire import Wire

PROBE_VERSION = 2  # 2: image_input (probes without it read as text-only, as before)

# The probe's echo prompt: after the first copy the model can predict every token, so the
# argmax of the correctly aligned distribution is the token itself. " 10" at the end
# shows whether the tokenizer has a single token for "10".
PROBE_SENTENCE = "Apples and pears."
PROBE_PROMPT = " ".join([PROBE_SENTENCE] * 3) + " 10"


def _solid_png(size: int = 32, rgb: tuple[int, int, int] = (200, 30, 30)) -> str:
    """A data URL of a size x size one-colour PNG (built here: no imaging library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + bytes(rgb) * size for _ in range(size))
    png = b"".join(
        [
            b"\x89PNG\r\n\x1a\n",
            chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)),
            chunk(b"IDAT", zlib.compress(rows)),
            chunk(b"IEND", b""),
        ]
    )
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


IMAGE_PROBE_TEXT = "What colour is this picture? One word."


async def _probe_image(wire: Wire, errors: dict[str, str]) -> bool:
    """Does the model read pictures? One attempt each (a text server may answer a 500)."""

    async def prompt_tokens(content: Any) -> int | None:
        data = await wire.send(
            "/chat/completions",
            {
                "messages": [{"role": "user", "content": content}],
                chat_limit_name(wire.model): 1,
                "temperature": 0.0,
            },
        )
        usage = data.get("usage") if isinstance(data, dict) else None
        n = usage.get("prompt_tokens") if isinstance(usage, dict) else None
        return n if isinstance(n, int) else None

    picture = [text_part(IMAGE_PROBE_TEXT), image_part(_solid_png(), detail="low")]
    try:
        with_image = await prompt_tokens(picture)
    except LLMError as exc:
        if exc.status == 401:
            raise
        errors["image_input"] = str(exc)[:300]
        return False
    try:
        text_only = await prompt_tokens(IMAGE_PROBE_TEXT)
    except LLMError as exc:
        errors["image_input"] = f"the text-only comparison failed: {str(exc)[:260]}"
        return False
    if with_image is None or text_only is None:
        return True  # accepted, and no token counts to say otherwise
    if with_image <= text_only:
        errors["image_input"] = (
            f"the picture was accepted but cost no prompt tokens ({with_image} with it, "
            f"{text_only} without): the server drops image parts"
        )
        return False
    return True


class ProbeCache:
    """Probe results per (base_url, model); share one between clients to probe once."""

    def __init__(self) -> None:
        self._results: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str, model: str) -> dict[str, Any] | None:
        with self._lock:
            return self._results.get((base_url, model))

    def put(self, base_url: str, model: str, result: dict[str, Any]) -> None:
        with self._lock:
            self._results[(base_url, model)] = result

    def setdefault(self, base_url: str, model: str, result: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            return self._results.setdefault((base_url, model), result)

    def clear(self) -> None:
        with self._lock:
            self._results.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)


def detect_echo_shift(
    tokens: list[str], top_logprobs: list[dict[str, float] | None], text_offset: list[int]
) -> int | None:
    """Which alignment an echo answer uses, from a prompt that repeats one sentence.

    In the later copies every token is predictable, so the argmax of the distribution
    for token j is token j. Count positions where the argmax of raw entry i is token i
    (shift 0) and where it is token i+1 (shift 1). Returns the clear winner, or None.
    The token's own entry is ignored: llama.cpp adds it to each dict whatever its rank.
    """
    n = len(tokens)
    start = n // 3  # skip the first copy, which the model cannot predict
    votes = [0, 0]
    for i in range(start, n - 1):
        top = top_logprobs[i] if i < len(top_logprobs) else None
        if not top:
            continue
        best = max(top.items(), key=lambda kv: kv[1])[0]
        if best == tokens[i]:
            votes[0] += 1
        if best == tokens[i + 1]:
            votes[1] += 1
    if max(votes) < 3 or votes[0] == votes[1]:
        return None
    return 0 if votes[0] > votes[1] else 1


def _raw_echo(data: dict[str, Any]) -> dict[str, Any]:
    lp = choices_of(data)[0].get("logprobs")
    if lp is not None and not isinstance(lp, dict):
        raise MalformedAnswer("choices[0].logprobs is not an object")
    if not lp or lp.get("tokens") is None:
        return {"tokens": [], "top_logprobs": [], "text_offset": []}
    tokens, _, tops, offsets = completion_logprobs(lp, "choices[0]")  # checked
    return {"tokens": tokens, "top_logprobs": tops, "text_offset": offsets}


def chat_limit_name(model: str) -> str:
    """Reasoning models take `max_completion_tokens` instead of `max_tokens` on chat."""
    return (
        "max_completion_tokens" if model.startswith(("o1", "o3", "o4", "gpt-5")) else "max_tokens"
    )


VLLM_PROBE_K = 5


def _vllm_prompt_logprobs(data: dict[str, Any]) -> Any:
    """The probe's `prompt_logprobs` answer, read (None when the server ignored the field)."""
    from neuroscribe.llm.vllm import read_prompt_logprobs, to_token_logprobs

    choice = choices_of(data)[0]
    if choice.get("prompt_logprobs") is None:
        return None
    read = read_prompt_logprobs(
        choice["prompt_logprobs"], choice.get("prompt_token_ids"), where="prompt_logprobs"
    )
    return read, to_token_logprobs(read, PROBE_PROMPT, VLLM_PROBE_K)


async def _probe_echo(wire: Wire, r: dict[str, Any]) -> int | None:
    """/completions with echo + logprobs: alignment and "10" tokenisation. Returns the
    HTTP status of a refusal (None when answered)."""
    try:
        _, raw = await wire.request(
            "/completions",
            {
                "prompt": PROBE_PROMPT,
                "max_tokens": 1,
                "temperature": 0.0,
                "logprobs": 5,
                "echo": True,
            },
            _raw_echo,
        )
        r["completions"] = True
        tokens, tops = raw["tokens"], raw["top_logprobs"]
        if tokens and any(t for t in tops if t):
            r["echo_logprobs"] = True
            r["prompt_logprobs_style"] = "echo"
            r["echo_tokens"] = tokens
            r["echo_shift"] = detect_echo_shift(tokens, tops, raw["text_offset"])
            r["ten_single_token"] = any(t.strip() == "10" for t in tokens)
            if r["echo_shift"] is None:
                r["errors"]["echo_shift"] = "could not tell the echo alignment apart"
        else:
            r["errors"]["echo_logprobs"] = "echo answer carried no prompt logprobs"
    except LLMError as exc:
        if exc.status == 401:
            raise
        r["errors"]["completions"] = str(exc)
        return exc.status
    return None


async def _probe_vllm(wire: Wire, r: dict[str, Any]) -> None:
    """/completions with vLLM's `prompt_logprobs`: used where echo gave no prompt
    logprobs, its alignment checked on token ids (`vllm.alignment_shift`)."""
    errors: dict[str, str] = r["errors"]
    try:
        _, got = await wire.request(
            "/completions",
            {
                "prompt": PROBE_PROMPT,
                "max_tokens": 1,
                "temperature": 0.0,
                "extra_body": {"prompt_logprobs": VLLM_PROBE_K},
            },
            _vllm_prompt_logprobs,
        )
    except OutputError as exc:  # answered, but not usably
        errors["prompt_logprobs"] = str(exc)
        return
    except LLMError as exc:
        if exc.status == 401:
            raise
        errors["prompt_logprobs"] = str(exc)
        return
    r["completions"] = True
    r["prompt_logprobs"] = got is not None
    if got is None or r["prompt_logprobs_style"] is not None:
        return  # not served, or echo already serves them
    from neuroscribe.llm.vllm import alignment_shift

    read, prompt_tokens = got
    shift = alignment_shift(read)
    r["echo_tokens"] = [t.token for t in prompt_tokens]
    r["ten_single_token"] = any(t.token.strip() == "10" for t in prompt_tokens)
    if shift == 1:
        # The entries predict the *next* token, not vLLM's documented alignment:
        # reading them would be off by one, so they are not used.
        r["prompt_logprobs"] = False
        errors["prompt_logprobs"] = (
            "prompt_logprobs entries predict the next token, not their own "
            "(not vLLM's documented alignment): not used"
        )
        return
    r["prompt_logprobs_style"] = "vllm"
    r["echo_shift"] = 0  # vLLM's entry i is for token i: nothing to correct
    if shift is None:
        errors["echo_shift"] = (
            "the probe could not confirm the prompt_logprobs alignment (a weak model?); "
            "read as vLLM documents it"
        )
    if "completions" in errors:  # only echo + logprobs was refused
        errors["echo_logprobs"] = errors.pop("completions")


async def run_probe(wire: Wire, check_model: Any, *, style: str | None = None) -> dict[str, Any]:
    """Probe the endpoint (uncached requests); never raises for a missing capability.

    Keys: `base_url`, `model`, `probe_version`, `served_models`, `model_listed`,
    `completions`, `echo_logprobs`, `echo_shift` (0, 1 or None), `echo_tokens`,
    `ten_single_token`, `prompt_logprobs` (vLLM extension), `prompt_logprobs_style`
    ("echo", "vllm" or None: how prompt logprobs are read here), `chat`,
    `chat_logprobs`, `json_mode`, `json_valid`, `json_schema`, `image_input`, `errors`
    (capability → message). With the "vllm" style `echo_tokens`, `echo_shift` and `ten_single_token`
    come from the `prompt_logprobs` answer. `style="vllm"` (a `vllm:` client) skips the
    echo request. A 401 is raised, since nothing can work without a key.
    """
    r: dict[str, Any] = {
        "probe_version": PROBE_VERSION,
        "base_url": wire.base_url,
        "model": wire.model,
        "served_models": None,
        "model_listed": None,
        "completions": False,
        "echo_logprobs": False,
        "echo_shift": None,
        "echo_tokens": None,
        "ten_single_token": None,
        "prompt_logprobs": False,
        "prompt_logprobs_style": None,
        "chat": False,
        "chat_logprobs": False,
        "json_mode": False,
        "json_valid": False,
        "json_schema": False,
        "image_input": False,
        "errors": {},
    }
    errors: dict[str, str] = r["errors"]
    try:
        ids = await check_model()
        r["served_models"] = ids
        r["model_listed"] = None if ids is None else True
    except LLMError as exc:
        if exc.status == 401:
            raise
        r["model_listed"] = False
        errors["model"] = str(exc)

    refused = None
    if style != "vllm":  # a vllm: client never asks with echo
        refused = await _probe_echo(wire, r)

    # vLLM's prompt_logprobs extension (other servers ignore the field or refuse it).
    # Also asked where echo was refused (recent vLLM refuses echo with logprobs), but
    # not where there is no /completions endpoint at all.
    if refused != 404:
        await _probe_vllm(wire, r)

    try:
        _, choices = await wire.request(
            "/chat/completions",
            {
                "messages": [{"role": "user", "content": "Reply with the number 7."}],
                chat_limit_name(wire.model): 3,
                "temperature": 0.0,
                "logprobs": True,
                "top_logprobs": 2,
            },
            map_chat_choices,
        )
        r["chat"] = True
        r["chat_logprobs"] = bool(choices[0].tokens) and any(
            t.top_logprobs for t in choices[0].tokens or []
        )
    except LLMError as exc:
        if exc.status == 401:
            raise
        errors["chat"] = str(exc)

    if r["chat"]:
        try:
            _, choices = await wire.request(
                "/chat/completions",
                {
                    "messages": [
                        {"role": "user", "content": 'Answer with a JSON object like {"answer": 7}.'}
                    ],
                    "max_tokens": 24,
                    "temperature": 0.0,
                    "response_format": {"type": "json_object"},
                },
                map_chat_choices,
            )
            r["json_mode"] = True
            try:
                json.loads(choices[0].text)
                r["json_valid"] = True
            except ValueError:
                r["json_valid"] = False
        except LLMError as exc:
            errors["json_mode"] = str(exc)
        # OpenAI-style structured output; llama.cpp's server rejects this type and
        # takes a schema inside {"type": "json_object", "schema": ...} instead.
        try:
            # One attempt, no retries: llama.cpp answers an unknown type with a 500.
            await wire.send(
                "/chat/completions",
                {
                    "messages": [{"role": "user", "content": "Give the number 7 as JSON."}],
                    "max_tokens": 12,
                    "temperature": 0.0,
                    "response_format": {
                        "type": "json_schema",
                        "json_schema": {
                            "name": "answer",
                            "schema": {
                                "type": "object",
                                "properties": {"answer": {"type": "integer"}},
                                "required": ["answer"],
                            },
                        },
                    },
                },
            )
            r["json_schema"] = True
        except LLMError as exc:
            r["json_schema"] = False
            errors["json_schema"] = str(exc)[:300]
        r["image_input"] = await _probe_image(wire, errors)
    return r


__all__ = [
    "PROBE_PROMPT",
    "PROBE_SENTENCE",
    "PROBE_VERSION",
    "ProbeCache",
    "chat_limit_name",
    "detect_echo_shift",
    "run_probe",
]
