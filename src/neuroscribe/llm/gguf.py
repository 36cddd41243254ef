"""The quantised CPU backend: a GGUF file through llama.cpp (`llama-cpp-python`).

Named `gguf:<file>.gguf` (`gguf:embedded` is the embedded SmolLM2 Q4_1 file). The weights
stay quantised (no conversion to a float32 transformers folder, unlike `hf:<file>.gguf`),
and llama.cpp decodes several times faster than transformers on a CPU. The chat template
is the one stored in the file.

What it can do (its `Capabilities`): chat and completions with sampling, stops and n
answers; no logprobs (llama.cpp only keeps every position's logits when the context is
built for it, at a vocabulary-sized row per token of memory), so a simulator on it uses
the JSON strategy. Each model is loaded once per process and shared; one call runs on it
at a time (a worker thread holding its lock, the others queued on the event loop).

Prompt states (the KV cache after a prompt) are kept in a bounded RAM cache, so a prompt
that starts like an earlier one (the same instructions and few-shot units; the same
prompt asked again for another sample) is computed only from where they differ.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError, LLMError
from neuroscribe.llm.base import Completion, LLMResponse
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import Message, message_text
from neuroscribe.schema import Usage

GGUF_PREFIX = "gguf:"
GGUF_EMBEDDED = "gguf:embedded"
# The context a file is opened with: its training context, at most this (KV memory grows
# with it; explain and simulation prompts stay far below).
MAX_CONTEXT = 8192
STATE_CACHE_BYTES = 512 * 1024**2


def gguf_file(spec: str) -> Path:
    """The file a `gguf:` spec names (`gguf:embedded`: the embedded model's)."""
    if not spec.startswith(GGUF_PREFIX):
        raise ConfigError(f"{spec!r} is not a GGUF spec: use gguf:<file>.gguf or {GGUF_EMBEDDED}")
    target = spec[len(GGUF_PREFIX) :].strip()
    if not target:
        raise ConfigError(f"empty GGUF spec {spec!r}: use gguf:<file>.gguf")
    if spec == GGUF_EMBEDDED:
        from neuroscribe.embedded import gguf_path

        return gguf_path()
    from neuroscribe.embedded import check_gguf_file

    path = Path(target).expanduser()
    check_gguf_file(path)
    return path.resolve()


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise ConfigError(
            "gguf: models run through llama.cpp: pip install 'neuroscribe[gguf]' "
            "(llama-cpp-python), or name the model hf:<file>.gguf to run it through "
            "transformers"
        ) from e
    return llama_cpp


@dataclass
class GGUFModel:
    """A loaded GGUF model and the lock that serialises its use."""

    path: str
    llama: Any
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def max_context(self) -> int:
        return int(self.llama.n_ctx())

    def count(self, text: str) -> int:
        return len(self.llama.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """The chat as the file's own template writes it, ending with the assistant's turn
        (the contents joined as text where the file has no template)."""
        plain = [
            {"role": m["role"], "content": message_text(m, backend="a GGUF model")}
            for m in messages
        ]
        template = self.llama.metadata.get("tokenizer.chat_template")
        if not template:
            return "\n\n".join(m["content"] for m in plain) + "\n\n"
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        model = self.llama._model
        formatter = Jinja2ChatFormatter(
            template,
            eos_token=model.token_get_text(self.llama.token_eos()),
            bos_token=model.token_get_text(self.llama.token_bos()),
        )
        return formatter(messages=plain).prompt


_MODELS: dict[tuple[str, int], GGUFModel] = {}
_MODELS_LOCK = threading.Lock()


@atexit.register
def _close_models() -> None:
    # Freed before the interpreter tears llama_cpp's module down (freeing them after, in
    # `Llama.__del__`, prints a TypeError at exit).
    with _MODELS_LOCK:
        for loaded in _MODELS.values():
            loaded.llama.close()
        _MODELS.clear()


def load_gguf(spec: str, *, threads: int | None = None) -> GGUFModel:
    """The model a `gguf:` spec names, loaded once per (file, threads) in this process."""
    path = gguf_file(spec)
    n_threads = threads or max(1, len(os.sched_getaffinity(0)))
    key = (str(path), n_threads)
    with _MODELS_LOCK:
        if key not in _MODELS:
            llama_cpp = _llama_cpp()

            def open_file(n_ctx: int) -> Any:
                try:
                    return llama_cpp.Llama(
                        str(path),
                        n_ctx=n_ctx,
                        n_threads=n_threads,
                        n_threads_batch=n_threads,
                        n_batch=512,
                        logits_all=False,
                        verbose=False,
                    )
                except (ValueError, RuntimeError) as e:
                    raise ConfigError(f"llama.cpp cannot load {path}: {e}") from e

            llama = open_file(0)  # 0: the file's own training context
            if llama.n_ctx() > MAX_CONTEXT:
                llama = open_file(MAX_CONTEXT)
            llama.set_cache(llama_cpp.LlamaRAMCache(capacity_bytes=STATE_CACHE_BYTES))
            _MODELS[key] = GGUFModel(path=str(path), llama=llama)
        return _MODELS[key]


def _choice(out: dict[str, Any]) -> tuple[str, str]:
    first = out["choices"][0]
    return first.get("text") or "", first.get("finish_reason") or "stop"


class GGUFLLM:
    """A GGUF model in this process through llama.cpp, behind the `LLM` interface.

    `GGUFLLM("gguf:embedded")`, `GGUFLLM("gguf:/models/qwen2.5-1.5b-q4_k_m.gguf")`. Usage
    counts real tokens; `cost_usd` stays None (local compute is not priced).
    """

    def __init__(self, spec: str, *, threads: int | None = None, seed: int | None = None):
        gguf_file(spec)  # a bad spec or file fails here, not at the first call
        self.spec = spec
        self._threads = threads
        self._seed = seed
        self._loaded: GGUFModel | None = None

    @property
    def loaded(self) -> GGUFModel:
        if self._loaded is None:
            self._loaded = load_gguf(self.spec, threads=self._threads)
        return self._loaded

    async def capabilities(self) -> Capabilities:
        loaded = await asyncio.to_thread(lambda: self.loaded)
        return gguf_capabilities(loaded)

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
        loaded = await asyncio.to_thread(lambda: self.loaded)
        prompt = loaded.chat_prompt(messages)
        return await self._run(
            prompt, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop
        )

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
        if logprobs is not None or echo:
            raise LLMError(
                "a gguf: model gives no logprobs and no echo (see its capabilities); use a "
                "strategy that needs neither, or hf:<file>.gguf for exact logits"
            )
        return await self._run(
            prompt, n=n, temperature=temperature, max_tokens=max_tokens, stop=stop
        )

    async def _run(self, prompt: str, **kw: Any) -> LLMResponse:
        from neuroscribe.llm.local import model_queue

        if kw["n"] < 1:
            raise LLMError(f"n must be at least 1, got {kw['n']}")
        loaded = await asyncio.to_thread(lambda: self.loaded)
        async with model_queue(loaded):  # type: ignore[arg-type]
            return await asyncio.to_thread(self._answer, loaded, prompt, **kw)

    def _answer(
        self,
        loaded: GGUFModel,
        prompt: str,
        *,
        n: int,
        temperature: float,
        max_tokens: int,
        stop: list[str] | None,
    ) -> LLMResponse:
        greedy = temperature <= 0
        options: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": max(temperature, 0.0),
            # Plain temperature sampling (OpenAI semantics), not llama.cpp's defaults.
            "top_p": 1.0,
            "top_k": 0,
            "min_p": 0.0,
            "repeat_penalty": 1.0,
            "stop": [s for s in stop or [] if s] or None,
        }
        if self._seed is not None:
            options["seed"] = self._seed
        usage = Usage(requests=1)
        choices: list[Completion] = []
        with loaded.lock:
            # Greedy decoding gives one answer: decode once, copy it n times. Each further
            # sample reuses the prompt's state from the cache and only decodes.
            for _ in range(1 if greedy else n):
                try:
                    out = loaded.llama.create_completion(prompt=prompt, **options)
                except ValueError as e:  # llama.cpp: "Requested tokens exceed context window"
                    from neuroscribe.prompts import PromptTooLong

                    if "context" in str(e):
                        raise PromptTooLong(f"{e} ({loaded.max_context} tokens)") from e
                    raise LLMError(f"llama.cpp refused the request: {e}") from e
                text, finish = _choice(out)
                choices.append(Completion(text=text, finish_reason=finish))
                used = out.get("usage") or {}
                usage.prompt_tokens = int(used.get("prompt_tokens", 0))
                usage.completion_tokens += int(used.get("completion_tokens", 0))
        if greedy and n > 1:
            choices = [Completion(choices[0].text, choices[0].finish_reason) for _ in range(n)]
        return LLMResponse(choices=choices, usage=usage)

    async def aclose(self) -> None:
        return None  # the model stays loaded for other users in this process


def gguf_capabilities(loaded: GGUFModel) -> Capabilities:
    caps = Capabilities(
        chat=True,
        completions=True,
        prompt_logprobs=False,
        chat_top_logprobs=False,
        json_object=False,
        json_schema=False,
        image_input=False,
        exact_logits=False,
        context_length=loaded.max_context,
        ten_single_token=loaded.count("\t10") == loaded.count("\t1"),
        echo_shift=0,
    )
    return caps.with_counter(loaded.count)


def _token_counter(spec: str) -> tuple[Any, Any, str]:
    loaded = load_gguf(spec)
    return loaded.count, lambda msgs: loaded.count(loaded.chat_prompt(msgs)), f"gguf:{loaded.path}"


def register(registry: Any) -> None:
    """`gguf:<file>`: a GGUF file through llama.cpp in this process."""
    from neuroscribe.llm.registry import BackendInfo

    registry.register(
        GGUF_PREFIX,
        GGUFLLM,
        BackendInfo(
            name="gguf",
            prefix=GGUF_PREFIX,
            local=True,
            token_counter=_token_counter,
            offline_capabilities=lambda spec: gguf_capabilities(load_gguf(spec)),
        ),
    )
