"""`OpenAIClient`: the `LLM` backend for OpenAI, vLLM, llama.cpp, Ollama, any `/v1` server.

It builds request bodies, sends them through its `Wire` (HTTP, retries, errors, key)
and maps the answers (`mapping`); echo answers are read with the alignment its probe
found, so `Completion.prompt_tokens[i].top_logprobs` is always the distribution *for*
token i. On a vLLM server that refuses echo with logprobs (or with the style fixed to
"vllm", as `vllm:<model>` does) prompt logprobs are asked with vLLM's
`prompt_logprobs` field instead and mapped by `neuroscribe.llm.vllm` to the same form.
Cache, rate limits and pricing are layers `make_llm` adds around it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from neuroscribe.errors import ConfigError, LLMError, OutputError
from neuroscribe.llm.base import Completion, LLMResponse, clip_raw
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.limits import RetryPolicy
from neuroscribe.llm.messages import Message, to_wire
from neuroscribe.llm.openai._wire import MAX_RESPONSE_BYTES, Wire
from neuroscribe.llm.openai.mapping import map_chat_choices, map_completion_choices, map_usage
from neuroscribe.llm.openai.probe import ProbeCache, chat_limit_name, run_probe
from neuroscribe.llm.secrets import redact_url


class OpenAIClient:
    """A model behind an OpenAI-compatible HTTP API (the bare backend, no layers).

    Args:
        model: the model name sent in every request (also the spec).
        base_url, api_key, timeout_s, concurrency, max_attempts, retry, transport,
            extra_body, max_response_bytes: see `Wire`. `base_url` may carry credentials
            (`user:password@`, `?api_key=`); `self.base_url` and the probe record show it
            redacted (`neuroscribe.llm.redact_url`).
        echo_shift: 0 or 1 to fix the echo alignment; None = take it from the probe
            (run lazily on the first echo request).
        probe: a stored `probe()` result (e.g. from the run manifest) to reuse.
        probes: a `ProbeCache` shared with other clients (default: this client's own).
        prompt_logprobs_style: how `complete(echo=True, logprobs=k)` asks for the
            prompt's logprobs: "echo", or "vllm" (vLLM's `prompt_logprobs` field); None =
            take it from the probe (echo where it works, else vLLM's field if that does).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_attempts: int = 6,
        retry: RetryPolicy | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        echo_shift: int | None = None,
        probe: dict[str, Any] | None = None,
        probes: ProbeCache | None = None,
        extra_body: dict[str, Any] | None = None,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        prompt_logprobs_style: str | None = None,
    ):
        if not model:
            raise ConfigError("a model name is required")
        if echo_shift not in (None, 0, 1):
            raise ConfigError(f"echo_shift must be 0 or 1, not {echo_shift!r}")
        if prompt_logprobs_style not in (None, "echo", "vllm"):
            raise ConfigError(
                f'prompt_logprobs_style must be "echo" or "vllm", not {prompt_logprobs_style!r}'
            )
        self.model = model
        self.spec = model
        self.wire = Wire(
            model,
            base_url=base_url,
            api_key=api_key,
            timeout_s=timeout_s,
            concurrency=concurrency,
            max_attempts=max_attempts,
            retry=retry,
            transport=transport,
            extra_body=extra_body,
            max_response_bytes=max_response_bytes,
        )
        self._echo_shift = echo_shift
        self._style = prompt_logprobs_style
        self.probes = probes if probes is not None else ProbeCache()
        if probe is not None:
            # A record stored before URLs were redacted may still carry credentials.
            stored = dict(probe)
            if isinstance(stored.get("base_url"), str):
                stored["base_url"] = redact_url(stored["base_url"])
            self.probes.setdefault(self.base_url, self.model, stored)
        self._probe_lock: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    def __repr__(self) -> str:  # never show the key
        return f"OpenAIClient(model={self.model!r}, base_url={self.base_url!r})"

    @property
    def base_url(self) -> str:
        return self.wire.base_url

    @property
    def limits(self) -> Any:
        """The wire's `CallLimits` (attempt and retry counters)."""
        return self.wire.limits

    @property
    def timeout_s(self) -> float:
        return self.wire.timeout_s

    async def aclose(self) -> None:
        await self.wire.aclose()

    # ------------------------------------------------------------------ LLM protocol
    async def chat(
        self,
        messages: Sequence[Message],
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        top_logprobs: int | None = None,
        response_format: dict[str, Any] | None = None,
        stop: list[str] | None = None,
    ) -> LLMResponse:
        """POST /chat/completions; `top_logprobs=k` also asks for generated-token logprobs."""
        body: dict[str, Any] = {"messages": to_wire(messages), "n": n, "temperature": temperature}
        body[chat_limit_name(self.model)] = max(1, max_tokens)
        if top_logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        if response_format is not None:
            body["response_format"] = response_format
        if stop:
            body["stop"] = stop
        # Usage is read inside the retry loop too: a malformed one is a malformed answer.
        data, (choices, usage) = await self.wire.request(
            "/chat/completions", body, lambda data: (map_chat_choices(data), map_usage(data))
        )
        return LLMResponse(choices=choices, usage=usage, raw=data)

    async def complete(
        self,
        prompt: str,
        *,
        n: int = 1,
        temperature: float = 1.0,
        max_tokens: int = 60,
        logprobs: int | None = None,
        echo: bool = False,
        stop: list[str] | None = None,
    ) -> LLMResponse:
        """POST /completions. With `echo` and `logprobs`, `prompt_tokens` holds the prompt's
        own tokens with their (alignment-corrected) top logprobs — asked with `echo`, or
        on a vLLM server with `prompt_logprobs` (the answer reads the same either way).

        `max_tokens=0` is sent as 1 (llama.cpp reads 0 as "until the context is full")
        and the generated token is then dropped from the answer.
        """
        if echo and logprobs is not None and await self.prompt_logprobs_style() == "vllm":
            return await self._complete_vllm(
                prompt, n=n, temperature=temperature, max_tokens=max_tokens, k=logprobs, stop=stop
            )
        body: dict[str, Any] = {
            "prompt": prompt,
            "n": n,
            "temperature": temperature,
            "max_tokens": max(1, max_tokens),
        }
        if logprobs is not None:
            body["logprobs"] = logprobs
        if echo:
            body["echo"] = True
        if stop:
            body["stop"] = stop
        shift = await self.echo_shift() if echo and logprobs is not None else 0

        def mapper(data: dict[str, Any]) -> tuple[list[Completion], Any]:
            choices = map_completion_choices(
                data, prompt=prompt, echo=echo, shift=shift, drop_generated=max_tokens <= 0
            )
            return choices, map_usage(data)

        data, (choices, usage) = await self.wire.request("/completions", body, mapper)
        return LLMResponse(choices=choices, usage=usage, raw=data)

    async def _complete_vllm(
        self,
        prompt: str,
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        k: int,
        stop: list[str] | None,
    ) -> LLMResponse:
        """An echo request the vLLM way: `prompt_logprobs=k` (top k per prompt position)
        instead of `echo`. What is wrong in `prompt_logprobs` is an `OutputError` (asking
        again would get the same answer), with the answer's usage, the key scrubbed."""
        from neuroscribe.llm.vllm import describe_answer, map_server_choices

        body: dict[str, Any] = {
            "prompt": prompt,
            "n": n,
            "temperature": temperature,
            "max_tokens": max(1, max_tokens),
            "logprobs": k,
            "prompt_logprobs": k,
        }
        if stop:
            body["stop"] = stop

        def mapper(data: dict[str, Any]) -> tuple[list[Completion], Any]:
            usage = map_usage(data)
            try:
                choices = map_server_choices(
                    data,
                    prompt=prompt,
                    k=k,
                    drop_generated=max_tokens <= 0,
                    n_prompt_tokens=usage.prompt_tokens or None,
                )
            except OutputError as exc:
                where = self.wire.where("/completions")
                raw = clip_raw(describe_answer(data))
                raise OutputError(
                    self.wire.scrub(
                        f"{exc} (an unusable vLLM prompt_logprobs answer from {where})"
                    ),
                    raw=self.wire.scrub(raw) if raw is not None else None,
                    usage=usage,
                ) from None
            return choices, usage

        data, (choices, usage) = await self.wire.request("/completions", body, mapper)
        return LLMResponse(choices=choices, usage=usage, raw=data)

    async def capabilities(self) -> Capabilities:
        """From the probe (run once per endpoint + model in `self.probes`)."""
        probe = await self.probe()
        caps = Capabilities.from_probe(probe)
        if self._echo_shift is not None:
            caps = caps.model_copy(update={"echo_shift": self._echo_shift})
        if self._style == "echo" and caps.prompt_logprobs_style != "echo":
            caps = caps.model_copy(
                update={
                    "prompt_logprobs": bool(probe.get("echo_logprobs")),
                    "prompt_logprobs_style": "echo",
                }
            )
        return caps

    async def prompt_logprobs_style(self) -> str:
        """How prompt logprobs are asked here, "echo" or "vllm": the constructor's style,
        else the probe's (echo unless the probe found only vLLM's `prompt_logprobs`). A
        fixed `echo_shift` means echo, without probing."""
        if self._style is not None:
            return self._style
        if self._echo_shift is not None:
            return "echo"
        return "vllm" if (await self.probe()).get("prompt_logprobs_style") == "vllm" else "echo"

    # ------------------------------------------------------------------ probing
    @property
    def probe_result(self) -> dict[str, Any] | None:
        """The probe result for this base URL + model (a JSON-able dict), if any yet."""
        return self.probes.get(self.base_url, self.model)

    async def echo_shift(self) -> int:
        """The echo alignment shift: the constructor's, the stored probe's, or probe now."""
        if self._echo_shift is not None:
            return self._echo_shift
        shift = (await self.probe()).get("echo_shift")
        return int(shift) if shift in (0, 1) else 0

    async def check_model(self, *, require_reachable: bool = False) -> list[str] | None:
        """Raise LLMError if the server lists its models and ours is not among them.

        Needed because llama.cpp's server silently answers any model name with its
        default model. Returns the served model ids (None if the server cannot list them).
        With `require_reachable`, a server that cannot be reached at all is an error too
        (the CLI's check before a job, so a typo in --base-url fails at once).
        """
        ids = await self.wire.list_models(require_reachable=require_reachable)
        if ids and self.model not in ids:
            shown = ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else "")
            raise LLMError(
                f"model {self.model!r} is not served at {self.base_url} (it serves: {shown})",
                status=404,
            )
        return ids

    async def preflight(self) -> None:
        """Fail before any work on an unreachable server, a 401 or an unserved model."""
        await self.check_model(require_reachable=True)

    async def probe(self, *, refresh: bool = False) -> dict[str, Any]:
        """What this endpoint + model supports (see `probe.run_probe` for the keys)."""
        loop = asyncio.get_running_loop()
        if self._probe_lock is None or self._probe_lock[0] is not loop:
            self._probe_lock = (loop, asyncio.Lock())
        async with self._probe_lock[1]:
            known = self.probes.get(self.base_url, self.model)
            if known is not None and not refresh:
                return known
            result = await run_probe(self.wire, self.check_model, style=self._style)
            self.probes.put(self.base_url, self.model, result)
            return result


__all__ = ["OpenAIClient"]
