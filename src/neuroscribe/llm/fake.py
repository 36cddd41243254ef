"""`FakeLLM`: an in-process backend for fast tests, answering from a Python function.

    llm = FakeLLM(answers=lambda messages, **params: "the word cat")
    llm = make_llm("fake:sim", answers=..., capabilities=Capabilities(chat_top_logprobs=True))

It honours exactly what its `capabilities` declare — generated-token logprobs only with
`chat_top_logprobs`, echo prompt logprobs only with `prompt_logprobs`, no images
without `image_input` — and ignores the rest as servers do. Tokens come from a simple
tokenizer (words, single whitespace characters, single punctuation marks), which also
counts usage. Every call is recorded in `.calls`, and `make_llm("fake:...")` wraps it in
the same layers as a real backend (cache, rate limits, usage).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.base import Completion, LLMResponse, TokenLogprob
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import Message, counted_text, has_image, message_text, to_wire
from neuroscribe.schema import Usage

FAKE_PREFIX = "fake:"

_TOKEN = re.compile(r"\w+|\s|[^\w\s]")

# answers(messages_or_prompt, **params) -> text, a Completion, or an LLMResponse.
Answers = Callable[..., "str | Completion | LLMResponse"]
# prompt_logprobs(tokens, i) -> top logprobs of the distribution *for* token i.
PromptLogprobs = Callable[[list[str], int], dict[str, float]]


def tokenize(text: str) -> list[str]:
    """The fake's tokenizer: the pieces concatenate back to `text`."""
    return _TOKEN.findall(text)


def _chat_tokens(messages: Sequence[Message]) -> int:
    # OpenAI's framing: 3 tokens per message and 3 to prime the reply; images not counted.
    return sum(3 + len(tokenize(counted_text(m))) for m in messages) + 3


def _certain(tokens: list[str]) -> list[TokenLogprob]:
    # Each token had probability 1: what a confident model would report.
    return [TokenLogprob(token=t, logprob=0.0, top_logprobs={t: 0.0}) for t in tokens]


@dataclass
class FakeCall:
    """One recorded call: `kind` is "chat" or "complete"."""

    kind: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _echo_answers(request: Any, **params: Any) -> str:
    """Default answers: the last user message (chat) or nothing (completion)."""
    if isinstance(request, str):
        return ""
    return message_text(request[-1]) if request else ""


DEFAULT_CAPABILITIES = Capabilities(
    chat=True, completions=True, json_object=True, json_schema=True, ten_single_token=True
)


class FakeLLM:
    """An `LLM` whose answers come from `answers`; see the module docstring.

    Args:
        spec: its name (`fake:<anything>`).
        answers: `answers(messages_or_prompt, **params)` → str, `Completion` (used as
            is: set `tokens`/`prompt_tokens` yourself for exact logprobs) or a whole
            `LLMResponse`. Called once per choice (`n`), with `index` the choice number.
        capabilities: what it declares (default: chat, completions, JSON; no logprobs).
        prompt_logprobs: `fn(prompt_tokens, i)` → top logprobs for token i in echo
            answers (default: the token itself, certain).
        fail: an exception to raise on every call (tests of error paths).
    """

    def __init__(
        self,
        spec: str = "fake:test",
        *,
        answers: Answers | None = None,
        capabilities: Capabilities | None = None,
        prompt_logprobs: PromptLogprobs | None = None,
        fail: BaseException | None = None,
    ):
        self.spec = spec
        self.answers = answers or _echo_answers
        caps = capabilities or DEFAULT_CAPABILITIES
        self._caps = caps.with_counter(lambda text: len(tokenize(text)))
        self.prompt_logprobs = prompt_logprobs
        self.fail = fail
        self.calls: list[FakeCall] = []
        self.closed = False

    def __repr__(self) -> str:
        return f"FakeLLM({self.spec!r})"

    async def capabilities(self) -> Capabilities:
        return self._caps

    async def aclose(self) -> None:
        self.closed = True

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
        params = {
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "top_logprobs": top_logprobs,
            "response_format": response_format,
            "stop": stop,
        }
        wire = to_wire(messages)
        self.calls.append(FakeCall("chat", messages=wire, params=params))
        if self.fail is not None:
            raise self.fail
        if not self._caps.chat:
            raise LLMError(f"{self.spec} has no chat endpoint (capabilities say chat=False)")
        if has_image(messages) and not self._caps.image_input:
            raise ConfigError(f"{self.spec} takes text only (image_input=False)")
        prompt_tokens = _chat_tokens(messages)
        logprobs = top_logprobs is not None and self._caps.chat_top_logprobs
        return self._answer(list(messages), params, prompt_tokens, logprobs=logprobs)

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
        params = {
            "n": n,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "logprobs": logprobs,
            "echo": echo,
            "stop": stop,
        }
        self.calls.append(FakeCall("complete", prompt=prompt, params=params))
        if self.fail is not None:
            raise self.fail
        if not self._caps.completions:
            raise LLMError(f"{self.spec} has no completions endpoint (completions=False)")
        ptoks = tokenize(prompt)
        response = self._answer(prompt, params, len(ptoks), logprobs=logprobs is not None)
        if echo:
            echoed = None
            if logprobs is not None and self._caps.prompt_logprobs:
                echoed = self._prompt_tokens(ptoks)
            for c in response.choices:
                c.text = prompt + c.text
                if c.prompt_tokens is None:
                    c.prompt_tokens = echoed
        return response

    # ------------------------------------------------------------------ internals
    def _prompt_tokens(self, tokens: list[str]) -> list[TokenLogprob]:
        out = [TokenLogprob(token=tokens[0])] if tokens else []  # nothing predicts token 0
        for i in range(1, len(tokens)):
            top = (
                self.prompt_logprobs(tokens, i)
                if self.prompt_logprobs is not None
                else {tokens[i]: 0.0}
            )
            out.append(TokenLogprob(token=tokens[i], logprob=top.get(tokens[i]), top_logprobs=top))
        return out

    def _answer(
        self, request: Any, params: dict[str, Any], prompt_tokens: int, *, logprobs: bool
    ) -> LLMResponse:
        choices: list[Completion] = []
        usage = Usage(prompt_tokens=prompt_tokens, requests=1)
        for index in range(params["n"]):
            answer = self.answers(request, **params, index=index)
            if isinstance(answer, LLMResponse):
                return answer
            if isinstance(answer, str):
                toks = tokenize(answer)[: max(0, params["max_tokens"])]
                answer = Completion(
                    text="".join(toks),
                    finish_reason="stop",
                    tokens=_certain(toks) if logprobs else None,
                )
            elif isinstance(answer, Completion):
                answer = dataclasses.replace(answer)  # ours to edit (echo prepends the prompt)
            else:
                raise TypeError(f"FakeLLM answers must return str or Completion, not {answer!r}")
            usage.completion_tokens += len(tokenize(answer.text))
            choices.append(answer)
        return LLMResponse(choices=choices, usage=usage, raw={"model": self.spec})


def register(registry: Any) -> None:
    """`fake:<name>`: a `FakeLLM` (options go to its constructor)."""
    from neuroscribe.llm.registry import BackendInfo

    def counter(spec: str) -> tuple[Callable[[str], int], Callable[[Any], int], str]:
        return (
            lambda t: len(tokenize(t)),
            _chat_tokens,
            "fake",
        )

    registry.register(
        FAKE_PREFIX,
        FakeLLM,
        BackendInfo(
            name="fake",
            prefix=FAKE_PREFIX,
            local=True,
            token_counter=counter,
            offline_capabilities=lambda spec: None,
        ),
    )


__all__ = ["DEFAULT_CAPABILITIES", "FAKE_PREFIX", "FakeCall", "FakeLLM", "tokenize"]
