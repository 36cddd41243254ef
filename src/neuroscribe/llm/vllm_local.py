"""`vllm-local:<hub id or folder>`: vLLM's offline engine in this process (GPU machines).

The optional `vllm` extra (`pip install 'neuroscribe[vllm]'`, on a machine with a GPU
that vLLM supports); nothing here imports vllm until a `vllm-local:` model is used, and
without it building one is a `ConfigError` that says so.

One `vllm.LLM(model, enable_prefix_caching=True)` per process and model, shared by every
`VLLMLocalLLM` that names it. Concurrent calls (a job simulates many excerpts at once)
are gathered into one `LLM.generate(prompts, [SamplingParams, ...])`, which vLLM
schedules as a continuous batch — one request at a time would leave the GPU idle. Each
call becomes `SamplingParams(n, temperature, max_tokens, logprobs=k,
prompt_logprobs=k, stop, seed)`; its `RequestOutput` is mapped by the pure
`map_request_output` (`prompt_logprobs`: None first, then token id → `Logprob(logprob,
rank, decoded_token)`; `outputs[i].text`, `.token_ids`, `.logprobs`) exactly as a vLLM
server's JSON is (`neuroscribe.llm.vllm`). Prompts are tokenized here with the engine's
tokenizer (a chat through its chat template) and sent as token ids, so the length check
is exact and the template's special tokens are not doubled.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from neuroscribe.errors import ConfigError, LLMError, OutputError
from neuroscribe.llm.base import Completion, LLMResponse
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import Message
from neuroscribe.llm.vllm import VLLM_LOCAL_PREFIX, map_prompt_logprobs, map_sample_logprobs
from neuroscribe.schema import Usage

INSTALL_HINT = (
    "vllm-local: models run on vLLM's offline engine, which is not installed here: on a "
    "machine with a GPU, pip install 'neuroscribe[vllm]' (vllm>=0.6); elsewhere name the "
    "model hf:<model> (transformers) or point vllm:<model> --base-url at a vLLM server"
)
# Gathered calls per `generate` (vLLM schedules them by its own memory budget).
MAX_BATCH = 256
# How long a call waits for others to join before its batch starts.
BATCH_WINDOW_S = 0.005


def vllm_available() -> bool:
    """Whether vllm can be imported (found without importing it: that loads torch)."""
    if "vllm" in sys.modules:
        return sys.modules["vllm"] is not None
    try:
        return importlib.util.find_spec("vllm") is not None
    except (ImportError, ValueError):
        return False


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise ConfigError(INSTALL_HINT) from e
    return vllm


def engine_model(spec: str) -> str:
    """The hub id or folder a `vllm-local:` spec names (`vllm-local:embedded`: the
    embedded SmolLM2's folder), resolved as `hf:` resolves it."""
    from neuroscribe.llm.local import resolve_local_spec

    target = spec[len(VLLM_LOCAL_PREFIX) :].strip() if spec.startswith(VLLM_LOCAL_PREFIX) else ""
    if not target:
        raise ConfigError(f"empty vLLM spec {spec!r}: use vllm-local:<hub id or folder>")
    return resolve_local_spec("hf:" + target)


# --------------------------------------------------------------------------- the mapping


def map_request_output(
    output: Any,
    *,
    prompt: str | None,
    n: int,
    k: int | None,
    echo: bool = False,
    drop_generated: bool = False,
) -> LLMResponse:
    """One vLLM `RequestOutput` → an `LLMResponse` (pure: any object with vLLM's names).

    `prompt`: the completion prompt (None for a chat); with `echo`, the text is prompt +
    generated text and, when `k` is set, `prompt_tokens` come from `prompt_logprobs`
    (entry i is the distribution for token i; see `neuroscribe.llm.vllm`). `n`: the
    answers asked for; a greedy request decodes one and it is copied. What cannot be
    read is an `OutputError` carrying the usage.
    """
    ids = list(getattr(output, "prompt_token_ids", None) or [])
    outputs = list(getattr(output, "outputs", None) or [])
    usage = Usage(
        prompt_tokens=len(ids),
        completion_tokens=sum(len(getattr(o, "token_ids", None) or []) for o in outputs),
        requests=1,
    )
    if not outputs:
        raise OutputError("the vLLM engine returned no outputs for the request", usage=usage)
    try:
        prompt_tokens = None
        if echo and k is not None:
            prompt_tokens = map_prompt_logprobs(
                getattr(output, "prompt_logprobs", None),
                prompt=prompt or "",
                prompt_token_ids=ids,
                k=k,
            )
        choices = []
        for j, o in enumerate(outputs):
            text = getattr(o, "text", None) or ""
            tokens = None
            sample = getattr(o, "logprobs", None)
            if k is not None and sample is not None:
                tokens = map_sample_logprobs(
                    sample, list(o.token_ids), text, k, where=f"outputs[{j}].logprobs"
                )
            if drop_generated:
                text, tokens = "", ([] if tokens is not None else None)
            if echo:
                text = (prompt or "") + text
            choices.append(
                Completion(
                    text=text,
                    finish_reason=getattr(o, "finish_reason", None),
                    tokens=tokens,
                    prompt_tokens=prompt_tokens,
                )
            )
    except OutputError as e:
        raise OutputError(f"unusable vLLM engine output: {e}", usage=usage) from None
    while len(choices) < n:  # greedy: one decode stands for all n answers
        c = choices[0]
        choices.append(Completion(c.text, c.finish_reason, c.tokens, c.prompt_tokens))
    return LLMResponse(choices=choices[:n], usage=usage)


# --------------------------------------------------------------------------- the engine


@dataclass
class VLLMEngine:
    """A loaded `vllm.LLM`, its tokenizer, and the lock that serialises `generate`."""

    model: str
    llm: Any
    tokenizer: Any
    max_context: int | None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def generate(self, prompts: list[Any], params: list[Any]) -> list[Any]:
        with self.lock:
            return list(self.llm.generate(prompts, sampling_params=params, use_tqdm=False))

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def _max_context(llm: Any) -> int | None:
    config = getattr(getattr(llm, "llm_engine", None), "model_config", None)
    value = getattr(config, "max_model_len", None)
    return value if isinstance(value, int) and value > 0 else None


_ENGINES: dict[tuple[str, str], VLLMEngine] = {}
_ENGINES_LOCK = threading.Lock()


def load_engine(model: str, **engine_args: Any) -> VLLMEngine:
    """The engine for `model`, built once per process and engine arguments."""
    engine_args.setdefault("enable_prefix_caching", True)
    key = (model, json.dumps(engine_args, sort_keys=True, default=str))
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            vllm = _vllm()
            try:
                llm = vllm.LLM(model=model, **engine_args)
            except (RuntimeError, ValueError, OSError) as e:
                raise ConfigError(
                    f"vLLM could not start an engine for {model}: {e} (it needs a GPU it "
                    "supports and room for the weights)"
                ) from e
            _ENGINES[key] = VLLMEngine(model, llm, llm.get_tokenizer(), _max_context(llm))
        return _ENGINES[key]


@dataclass
class _Pending:
    prompt: dict[str, Any]
    params: Any
    future: asyncio.Future[Any]


class _Batcher:
    """Gathers one event loop's calls on one engine into `generate` batches.

    While a batch runs (in a worker thread), new calls wait and go together in the next.
    A batch that fails is answered one request at a time, so only the request at fault
    fails (a batch does not fail for its neighbour's sake).
    """

    def __init__(self, engine: VLLMEngine, max_batch: int):
        self.engine = engine
        self.max_batch = max_batch
        self.waiting: list[_Pending] = []
        self.task: asyncio.Task[None] | None = None

    async def submit(self, prompt: dict[str, Any], params: Any) -> Any:
        loop = asyncio.get_running_loop()
        pending = _Pending(prompt, params, loop.create_future())
        self.waiting.append(pending)
        if self.task is None or self.task.done():
            self.task = loop.create_task(self._drain())
        return await pending.future

    async def _drain(self) -> None:
        while self.waiting:
            await asyncio.sleep(BATCH_WINDOW_S)
            batch = self.waiting[: self.max_batch]
            del self.waiting[: len(batch)]
            batch = [p for p in batch if not p.future.done()]  # a cancelled caller
            if batch:
                await self._answer(batch)

    async def _answer(self, batch: list[_Pending]) -> None:
        try:
            outputs = await asyncio.to_thread(
                self.engine.generate, [p.prompt for p in batch], [p.params for p in batch]
            )
            if len(outputs) != len(batch):
                raise LLMError(f"vLLM answered {len(outputs)} of {len(batch)} requests")
        except Exception as exc:
            if len(batch) > 1:
                for p in batch:
                    await self._answer([p])
                return
            error = exc if isinstance(exc, LLMError | ConfigError) else _engine_error(exc)
            if not batch[0].future.done():
                batch[0].future.set_exception(error)
            return
        for p, out in zip(batch, outputs, strict=True):
            if not p.future.done():
                p.future.set_result(out)


def _engine_error(exc: Exception) -> LLMError:
    return LLMError(f"the vLLM engine failed: {type(exc).__name__}: {exc}")


_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Batcher]] = (
    weakref.WeakKeyDictionary()
)


def _batcher(engine: VLLMEngine, max_batch: int) -> _Batcher:
    per_loop = _BATCHERS.setdefault(asyncio.get_running_loop(), {})
    if id(engine) not in per_loop:
        per_loop[id(engine)] = _Batcher(engine, max_batch)
    return per_loop[id(engine)]


# --------------------------------------------------------------------------- the backend


class VLLMLocalLLM:
    """A model on vLLM's offline engine, behind the `LLM` interface.

    `VLLMLocalLLM("vllm-local:Qwen/Qwen2.5-1.5B-Instruct")`; engine arguments
    (`dtype`, `max_model_len`, `gpu_memory_utilization`, `tensor_parallel_size`, ...)
    go to `vllm.LLM`, with `enable_prefix_caching=True` unless given. `seed` makes
    sampling repeatable. `engine`: an already loaded `VLLMEngine` (tests, or sharing
    one). Usage counts real tokens; `cost_usd` stays None (local compute is not
    priced). `response_format` is not enforced (json_schema=False): the caller's
    parser validates the answer, as with `hf:` models.
    """

    def __init__(
        self,
        spec: str,
        *,
        engine: VLLMEngine | None = None,
        seed: int | None = None,
        max_batch: int = MAX_BATCH,
        **engine_args: Any,
    ):
        self.spec = spec
        if engine is None and not vllm_available():
            if not spec[len(VLLM_LOCAL_PREFIX) :].strip():
                engine_model(spec)  # an empty spec says so first
            raise ConfigError(INSTALL_HINT)
        # Resolved after the check: `vllm-local:<file>.gguf` would be converted first.
        self.model = engine.model if engine is not None else engine_model(spec)
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self._engine = engine
        self._engine_args = engine_args
        self._seed = seed
        self._max_batch = max_batch

    def __repr__(self) -> str:
        return f"VLLMLocalLLM({self.model!r})"

    async def _loaded(self) -> VLLMEngine:
        if self._engine is None:
            self._engine = await asyncio.to_thread(load_engine, self.model, **self._engine_args)
        return self._engine

    async def capabilities(self) -> Capabilities:
        engine = await self._loaded()
        return engine_capabilities(engine.tokenizer, engine.max_context)

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
        from neuroscribe.llm.local import chat_prompt_ids

        engine = await self._loaded()
        ids = chat_prompt_ids(engine.tokenizer, messages)
        return await self._run(engine, ids, None, n, temperature, max_tokens, top_logprobs, stop)

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
        engine = await self._loaded()
        # Tokenized as vLLM tokenizes a text prompt (special tokens, e.g. BOS, added).
        ids = engine.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        return await self._run(
            engine, ids, prompt, n, temperature, max_tokens, logprobs, stop, echo=echo
        )

    async def _run(
        self,
        engine: VLLMEngine,
        ids: list[int],
        prompt: str | None,
        n: int,
        temperature: float,
        max_tokens: int,
        k: int | None,
        stop: list[str] | None,
        *,
        echo: bool = False,
    ) -> LLMResponse:
        if n < 1:
            raise LLMError(f"n must be at least 1, got {n}")
        new = max(1, max_tokens)  # vLLM needs one; 0 means "only the prompt's logprobs"
        if engine.max_context is not None and len(ids) + new > engine.max_context:
            from neuroscribe.prompts import PromptTooLong

            raise PromptTooLong(
                f"a {len(ids)}-token prompt plus {new} new tokens exceeds the "
                f"{engine.max_context}-token context of {engine.model}"
            )
        greedy = temperature <= 0
        params = _vllm().SamplingParams(
            n=1 if greedy else n,  # greedy gives one answer (vLLM refuses n > 1 with it)
            temperature=max(temperature, 0.0),
            max_tokens=new,
            logprobs=k,
            prompt_logprobs=k if echo and k is not None else None,
            stop=[s for s in stop or [] if s] or None,
            seed=self._seed,
        )
        output = await _batcher(engine, self._max_batch).submit({"prompt_token_ids": ids}, params)
        return map_request_output(
            output, prompt=prompt, n=n, k=k, echo=echo, drop_generated=max_tokens <= 0
        )

    async def aclose(self) -> None:
        return None  # the engine stays loaded for other users in this process


def engine_capabilities(tokenizer: Any, context_length: int | None) -> Capabilities:
    """What the engine serves: chat, completions, prompt and generated-token logprobs;
    no JSON enforcement, no images, no in-process logits for the exact strategy."""
    from neuroscribe.llm.local import ten_is_one_token

    caps = Capabilities(
        chat=True,
        completions=True,
        prompt_logprobs=True,
        chat_top_logprobs=True,
        json_object=False,
        json_schema=False,
        image_input=False,
        exact_logits=False,
        context_length=context_length,
        ten_single_token=ten_is_one_token(tokenizer),
        echo_shift=0,
        prompt_logprobs_style="vllm",
    )
    return caps.with_counter(
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    )


# --------------------------------------------------------------------------- registration


def _token_counter(spec: str) -> Any:
    # The model's own tokenizer through transformers: no vllm (and no GPU) needed.
    from neuroscribe.llm import local

    count, count_chat, _ = local._token_counter("hf:" + engine_model(spec))
    return count, count_chat, f"{VLLM_LOCAL_PREFIX}{engine_model(spec)}"


def _offline_capabilities(spec: str) -> Capabilities:
    from neuroscribe.llm import local

    caps = local._offline_capabilities("hf:" + engine_model(spec))
    return caps.model_copy(update={"exact_logits": False, "prompt_logprobs_style": "vllm"})


def register(registry: Any) -> None:
    """`vllm-local:<hub id or folder>`: vLLM's offline engine in this process."""
    from neuroscribe.llm.registry import BackendInfo

    registry.register(
        VLLM_LOCAL_PREFIX,
        VLLMLocalLLM,
        BackendInfo(
            name="vllm-local",
            prefix=VLLM_LOCAL_PREFIX,
            local=True,
            token_counter=_token_counter,
            offline_capabilities=_offline_capabilities,
        ),
    )


__all__ = [
    "INSTALL_HINT",
    "VLLMEngine",
    "VLLMLocalLLM",
    "engine_capabilities",
    "engine_model",
    "load_engine",
    "map_request_output",
    "vllm_available",
]
