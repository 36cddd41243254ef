"""The local backend: a `transformers` causal LM behind the `LLM` interface.

Named `hf:<hub id or folder>` (`hf:embedded` is the embedded SmolLM2; `hf:<file>.gguf` a GGUF
file, converted once to a cached safetensors folder), optionally with `?dtype=bfloat16`
and/or `?device=cuda:1` after it (`split_spec`): the options are part of the spec, so
they reach every stage, Ray worker and result key that names the model. A model is loaded
once per (path, device, dtype) into a `ModelStore` and shared, so an explainer and an
exact simulator that name the same spec use one copy of the weights (`DEFAULT_STORE`
is the process's; pass `store=` for another, `clear()` to free the weights). Torch work
is blocking, so each call runs in a worker thread; a per-model lock keeps concurrent
calls from interleaving on the model (one forward pass at a time is also what a CPU
can usefully do). Facts computed about a model (e.g. whether its head is a plain
linear layer) live in `LocalModel.memo`, never as attributes on the HF model.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.llm.base import EMBEDDED_SPEC, LOCAL_PREFIX, Completion, LLMResponse, TokenLogprob
from neuroscribe.llm.capabilities import Capabilities
from neuroscribe.llm.messages import Message, message_text
from neuroscribe.schema import Usage

log = logging.getLogger(__name__)


# Options a local spec may carry after `?` (`hf:embedded?dtype=bfloat16&device=cpu`;
# `adapter=` a LoRA file, or `simulator` for the bundled simulation adapter).
SPEC_OPTIONS = ("dtype", "device", "adapter")


def split_spec(spec: str) -> tuple[str, dict[str, str]]:
    """A local spec's model part and its options: `hf:x?dtype=bfloat16` →
    (`hf:x`, {"dtype": "bfloat16"}). Unknown or malformed options are a ConfigError, so
    a typo does not silently load the default precision."""
    base, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    options: dict[str, str] = {}
    for part in query.split("&"):
        key, eq, value = (x.strip() for x in part.partition("="))
        if not eq or not value or key not in SPEC_OPTIONS or key in options:
            raise ConfigError(
                f"bad option {part!r} in model spec {spec!r}: local specs take "
                + ", ".join(f"?{k}=..." for k in SPEC_OPTIONS)
                + " once each, joined by &"
            )
        options[key] = value
    if "dtype" in options:
        _torch_dtype(options["dtype"], "cpu")  # an unknown dtype fails here, not at load
    if "device" in options:
        import torch

        try:
            torch.device(options["device"])  # a misspelt device ("gpu") fails here too
        except RuntimeError as e:
            raise ConfigError(f"model spec {spec!r}: {e}") from None
    if "adapter" in options:
        from neuroscribe.llm.lora import resolve_adapter

        resolve_adapter(options["adapter"])  # a missing file fails here, not at load
    return base.strip(), options


def resolve_local_spec(spec: str) -> str:
    """The folder or hub id a local spec names: `hf:embedded` → the embedded model's folder,
    `hf:<file>.gguf` → the cached safetensors folder that GGUF file converts to.

    A bare name is never local (it names a model on the API endpoint), so it is refused.
    Options after `?` (`split_spec`) do not change the folder.
    """
    if spec.startswith(LOCAL_PREFIX):
        spec = split_spec(spec)[0]
    if not spec.startswith(LOCAL_PREFIX):
        raise ConfigError(
            f"{spec!r} is not a local model spec; local models are named hf:<hub id or folder> "
            f"(or {EMBEDDED_SPEC})"
        )
    target = spec[len(LOCAL_PREFIX) :].strip()
    if not target:
        raise ConfigError(f"empty local model spec {spec!r}: use hf:<hub id or folder>")
    if spec == EMBEDDED_SPEC:
        from neuroscribe.embedded import embedded_model_dir

        return str(embedded_model_dir())
    path = Path(target).expanduser()
    if path.suffix.lower() == ".gguf" and not path.is_dir():
        # A GGUF file: converted once to a cached safetensors folder, like hf:embedded.
        from neuroscribe.embedded import gguf_model_dir

        return str(gguf_model_dir(path))
    if path.exists():
        if not (path / "config.json").exists():
            raise ConfigError(
                f"{path} has no config.json, so it is not a transformers model folder"
            )
        return str(path.resolve())
    return target


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_dtype(dtype: str | None, device: str) -> Any:
    import torch

    if dtype is None:
        # float32 on CPU (bf16 matmuls are slow there and blur logprobs); bf16 on GPUs.
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    try:
        return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[
            dtype
        ]
    except KeyError:
        raise ConfigError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16") from None


@dataclass
class LocalModel:
    """A loaded model with its tokenizer, device and the lock that serialises its use."""

    path: str
    model: Any
    tokenizer: Any
    device: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    # Facts computed once about this model (a side table: the HF model is not ours to
    # decorate, and a second store holding the same weights must not see stale ones).
    memo: dict[str, Any] = field(default_factory=dict)

    def remember(self, key: str, compute: Callable[[], Any]) -> Any:
        """`memo[key]`, computed on first use."""
        if key not in self.memo:
            self.memo[key] = compute()
        return self.memo[key]

    @property
    def max_context(self) -> int | None:
        """The longest sequence the model was built for (`max_position_embeddings`)."""
        config = self.model.config
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None


class ModelStore:
    """Loaded models by (path, device, dtype, adapter): each is loaded once and shared.

    Thread-safe; one load at a time (two threads asking for one model must not load it
    twice). `clear()` drops every model, so its memory can be freed.
    """

    def __init__(self) -> None:
        self._models: dict[tuple[str, str, str, str], LocalModel] = {}
        self._lock = threading.Lock()

    def load(self, spec: str, *, device: str | None = None, dtype: str | None = None) -> LocalModel:
        """The model a `hf:` spec names, loaded on first use (arguments before the spec's
        own `?dtype=`/`?device=` options, then the defaults)."""
        base, options = split_spec(spec)
        path = resolve_local_spec(base)
        device = device or options.get("device") or default_device()
        torch_dtype = _torch_dtype(dtype or options.get("dtype"), device)
        adapter = ""
        if options.get("adapter"):
            from neuroscribe.llm.lora import resolve_adapter

            adapter = str(resolve_adapter(options["adapter"]))
        key = (path, device, str(torch_dtype), adapter)
        with self._lock:
            if key not in self._models:
                self._models[key] = _load(path, device, torch_dtype, adapter=adapter or None)
            return self._models[key]

    def register(self, spec: str, model: Any, tokenizer: Any) -> LocalModel:
        """Put an already built model in the store under `spec` (tests, notebooks)."""
        param = next(model.parameters())
        model.eval()
        loaded = LocalModel(path=spec, model=model, tokenizer=tokenizer, device=str(param.device))
        with self._lock:
            self._models[(spec, str(param.device), str(param.dtype), "")] = loaded
        return loaded

    def clear(self) -> None:
        with self._lock:
            self._models.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)


DEFAULT_STORE = ModelStore()  # the process's store (what `hf:` specs use by default)


def load_local_model(
    spec: str,
    *,
    device: str | None = None,
    dtype: str | None = None,
    store: ModelStore | None = None,
) -> LocalModel:
    """Load (once per path, device and dtype, per store) the model a `hf:` spec names."""
    return (store if store is not None else DEFAULT_STORE).load(spec, device=device, dtype=dtype)


def register_local_model(
    spec: str, model: Any, tokenizer: Any, *, store: ModelStore | None = None
) -> LocalModel:
    """Put an already built model in a store under `spec` (tests, notebooks)."""
    return (store if store is not None else DEFAULT_STORE).register(spec, model, tokenizer)


def _load(path: str, device: str, torch_dtype: Any, *, adapter: str | None = None) -> LocalModel:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Read at call time (huggingface_hub reads it once, at import), so a hub id fails
    # fast instead of retrying the network when the user said there is none.
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=offline)
        # An adapter is merged in float32 (its update is small next to the weights, and
        # bfloat16 would round much of it away), then the model takes its dtype.
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.float32 if adapter else torch_dtype, local_files_only=offline
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"cannot load local model {path!r}: {e}. Give a local folder, or a hub id that is "
            "in the Hugging Face cache when there is no network"
        ) from e
    if adapter:
        from neuroscribe.llm.lora import merge

        merge(model, Path(adapter))
        model.to(torch_dtype)
    try:
        model.to(device)
    except (AssertionError, RuntimeError) as e:  # no CUDA build, no such GPU, ...
        raise ConfigError(f"cannot put local model {path!r} on device {device!r}: {e}") from None
    model.eval()
    return LocalModel(path=path, model=model, tokenizer=tokenizer, device=device)


@functools.cache
def _libc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        return None


def release_memory() -> None:
    """Hand freed heap memory back to the OS (glibc only; elsewhere a no-op).

    A forward pass frees its activations, but glibc keeps freed chunks of its heap, and
    passes of changing sizes (prompts of different lengths, caches of a batch) fragment it:
    measured, a job's resident memory grew with the number of units (2.8 GB at 4 explained
    units, 7 GB at 16) though the live tensors stayed the same; trimming after each batch
    keeps it flat. Costs milliseconds next to a forward pass of seconds.
    """
    trim = _libc_trim()
    if trim is not None:
        trim(0)


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string; says whether one was found."""
    cut = len(text)
    for s in stop or []:
        if s:
            i = text.find(s)
            if 0 <= i < cut:
                cut = i
    return text[:cut], cut < len(text)


class LocalLLM:
    """A local `transformers` model answering chat and completion requests.

    `LocalLLM("hf:embedded")`, `LocalLLM("hf:gpt2")`, `LocalLLM("hf:/path/to/model")`.
    Usage counts real tokens; `cost_usd` stays None (local compute is not priced).
    `response_format` is not enforced: the request is answered as plain text and the
    caller's parser validates it (JSON-constrained decoding is not implemented), so
    the capabilities say json_schema=False. Messages must be text (image_input=False).
    """

    def __init__(
        self,
        spec: str,
        *,
        device: str | None = None,
        dtype: str | None = None,
        loaded: LocalModel | None = None,
        store: ModelStore | None = None,
        max_batch: int | None = None,
        prefix_cache: bool = True,
    ):
        if max_batch is not None and max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        self.spec = spec
        self._device = device
        self._dtype = dtype
        self._loaded = loaded
        self._store = store
        self._max_batch = max_batch
        # The unoptimised path (one `generate` per call, whole prompt each time) when both
        # are off: what the parity tests and the benchmark compare against.
        self.prefix_cache = prefix_cache

    @property
    def max_batch(self) -> int:
        """Sequences per batched `generate`: 8 on CPU, 32 on GPU (unless given)."""
        if self._max_batch is not None:
            return self._max_batch
        return 32 if str(self.loaded.device).startswith("cuda") else 8

    @property
    def loaded(self) -> LocalModel:
        """The shared loaded model (loads it on first use)."""
        if self._loaded is None:
            self._loaded = load_local_model(
                self.spec, device=self._device, dtype=self._dtype, store=self._store
            )
        return self._loaded

    # -- the LLM interface -------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        """Static, from the model's tokenizer and config (loads the model on first use)."""
        loaded = await asyncio.to_thread(lambda: self.loaded)
        return local_capabilities(loaded.tokenizer, loaded.max_context)

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
        ids = chat_prompt_ids(loaded.tokenizer, messages)
        prefix = 0
        if self.prefix_cache and len(messages) > 1:
            # Every message but the last (instructions, few-shot turns) is what the calls
            # of a job share: its KV cache is computed once and reused.
            from neuroscribe.llm.local_batch import declared_prefix

            head = chat_prefix_ids(loaded.tokenizer, messages[:-1])
            prefix = declared_prefix(loaded.tokenizer, head, ids)
        return await self._generate(
            loaded, ids, prefix, n, temperature, max_tokens, top_logprobs, stop
        )

    async def _generate(
        self,
        loaded: LocalModel,
        ids: list[int],
        prefix: int,
        n: int,
        temperature: float,
        max_tokens: int,
        top_logprobs: int | None,
        stop: list[str] | None,
    ) -> LLMResponse:
        """Batched with concurrent calls (and from a cached prefix), or alone when the
        batch size is 1 and the prefix cache off (the unoptimised path)."""
        from neuroscribe.llm.local_batch import GenParams, GenRequest, batcher_for, check_request

        if self.max_batch == 1 and not self.prefix_cache:
            return await run_on_model(
                loaded,
                _generate,
                loaded,
                ids,
                n=n,
                temperature=temperature,
                max_tokens=max_tokens,
                top_logprobs=top_logprobs,
                stop=stop,
            )
        check_request(loaded, ids, n, max_tokens)
        if max_tokens <= 0:
            usage = Usage(prompt_tokens=len(ids), requests=1)
            return LLMResponse(choices=[Completion(text="", finish_reason="length")], usage=usage)
        params = GenParams(temperature, max_tokens, top_logprobs, tuple(s for s in stop or [] if s))
        request = GenRequest(ids=ids, n=n, params=params, prefix=prefix)
        return await batcher_for(loaded, self.max_batch).submit(request)

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
        loaded = await asyncio.to_thread(lambda: self.loaded)
        ids = loaded.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        response = await self._generate(loaded, ids, 0, n, temperature, max_tokens, logprobs, stop)
        if echo:
            prompt_tokens = None
            if logprobs is not None:
                prompt_tokens = await run_on_model(loaded, _prompt_logprobs, loaded, ids, logprobs)
            for c in response.choices:
                c.text = prompt + c.text
                c.prompt_tokens = prompt_tokens
        return response

    async def aclose(self) -> None:
        # The weights stay in the store: another LLM or simulator may use them.
        return None


# Calls waiting for a model queue on an asyncio lock of their event loop, not inside worker
# threads: `asyncio.to_thread` shares the loop's small default pool (cpu count + 4 threads),
# and eight calls of a job each blocked on the model's threading lock would take every
# thread, so any other `to_thread` on that loop (a service's single calls, progress reads)
# would wait for the whole job. The threading lock still serialises across loops.
_WAITERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


async def run_on_model(loaded: LocalModel, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """`fn(*args, **kw)` in a worker thread holding `loaded`'s lock; one thread per model
    and event loop at a time, the other callers wait on the loop."""

    def locked() -> Any:
        with loaded.lock:
            return fn(*args, **kw)

    return await queued_for_model(loaded, locked)


async def queued_for_model(loaded: LocalModel, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)` in a worker thread once this loop's earlier calls on `loaded` are done
    (for work that takes the model's threading lock itself, maybe more than once)."""
    async with model_queue(loaded):
        return await asyncio.to_thread(fn, *args)


def model_queue(loaded: LocalModel) -> asyncio.Lock:
    """The running loop's queue (an asyncio lock) for work on `loaded`."""
    locks = _WAITERS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(id(loaded), asyncio.Lock())


def chat_prompt_ids(
    tokenizer: Any, messages: Sequence[Message], *, generation_prompt: bool = True
) -> list[int]:
    """Token ids of a chat: the tokenizer's chat template, else the contents joined as text.

    Content parts are joined into one string (text only: an image part is a ConfigError).
    `generation_prompt=False` writes the messages as they stand mid-chat: the start of the
    ids of any longer chat (what `chat_prefix_ids` gives).
    """
    plain = [
        {"role": m["role"], "content": message_text(m, backend="a local model")} for m in messages
    ]
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            plain, add_generation_prompt=generation_prompt, tokenize=False
        )
        # The template writes the special tokens itself.
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    text = "\n\n".join(m["content"] for m in plain) + "\n\n"
    return tokenizer(text, add_special_tokens=True)["input_ids"]


def chat_prefix_ids(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    """Token ids of the first messages of a chat (no generation prompt)."""
    return chat_prompt_ids(tokenizer, messages, generation_prompt=False)


def ten_is_one_token(tokenizer: Any) -> bool:
    """Whether "10" after a tab (where a value is written) is a single token."""
    anchor = tokenizer("\t", add_special_tokens=False)["input_ids"]
    ids = tokenizer("\t10", add_special_tokens=False)["input_ids"]
    if ids[: len(anchor)] == anchor:
        ids = ids[len(anchor) :]
    return len(ids) == 1


def local_capabilities(tokenizer: Any, context_length: int | None) -> Capabilities:
    """What an in-process model can do: everything but JSON enforcement and images."""
    caps = Capabilities(
        chat=True,
        completions=True,
        prompt_logprobs=True,
        chat_top_logprobs=True,
        json_object=False,
        json_schema=False,
        image_input=False,
        exact_logits=True,
        context_length=context_length,
        ten_single_token=ten_is_one_token(tokenizer),
        echo_shift=0,
    )
    return caps.with_counter(
        lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    )


# --------------------------------------------------------------------------- registration


def _tokenizer(spec: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_local_spec(spec))


def _token_counter(spec: str) -> tuple[Callable[[str], int], Callable[[Any], int], str]:
    tok = _tokenizer(spec)
    return (
        lambda t: len(tok(t, add_special_tokens=False)["input_ids"]),
        lambda msgs: len(chat_prompt_ids(tok, msgs)),
        f"hf:{resolve_local_spec(spec)}",
    )


def _offline_capabilities(spec: str) -> Capabilities:
    # The tokenizer alone decides the scale; the context needs only the config.
    from transformers import AutoConfig

    path = resolve_local_spec(spec)
    context = None
    try:
        config = AutoConfig.from_pretrained(path)
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
            value = getattr(config, name, None)
            if isinstance(value, int) and value > 0:
                context = value
                break
    except (OSError, ValueError):
        pass
    return local_capabilities(_tokenizer(spec), context)


def register(registry: Any) -> None:
    """`hf:<hub id or folder>`: a transformers model in this process."""
    from neuroscribe.llm.registry import BackendInfo

    registry.register(
        LOCAL_PREFIX,
        LocalLLM,
        BackendInfo(
            name="local",
            prefix=LOCAL_PREFIX,
            local=True,
            token_counter=_token_counter,
            offline_capabilities=_offline_capabilities,
        ),
    )


def _token_logprob(tokenizer: Any, logprobs: Any, token_id: int, k: int | None) -> TokenLogprob:
    """One position: the chosen token's logprob and its top-k alternatives."""
    top: dict[str, float] = {}
    if k:
        values, indices = logprobs.topk(k)
        for v, i in zip(values.tolist(), indices.tolist(), strict=True):
            top.setdefault(tokenizer.decode([i]), v)
    return TokenLogprob(
        token=tokenizer.decode([token_id]), logprob=float(logprobs[token_id]), top_logprobs=top
    )


def _generate(
    loaded: LocalModel,
    ids: list[int],
    *,
    n: int,
    temperature: float,
    max_tokens: int,
    top_logprobs: int | None,
    stop: list[str] | None,
) -> LLMResponse:
    """n completions of one prompt in one batched `generate` (greedy when temperature is 0)."""
    import torch

    from neuroscribe.llm.local_batch import check_request

    model, tokenizer = loaded.model, loaded.tokenizer
    check_request(loaded, ids, n, max_tokens)
    usage = Usage(prompt_tokens=len(ids), requests=1)
    if max_tokens <= 0:
        return LLMResponse(choices=[Completion(text="", finish_reason="length")], usage=usage)

    greedy = temperature <= 0
    # Greedy decoding gives the same answer every time: decode once and copy it.
    n_run = 1 if greedy else n
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    kwargs: dict[str, Any] = {
        "max_new_tokens": max_tokens,
        "num_return_sequences": n_run,
        "do_sample": not greedy,
        "pad_token_id": pad,
        "eos_token_id": eos or None,
        "return_dict_in_generate": True,
        "output_logits": bool(top_logprobs),
    }
    if greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        # Plain temperature sampling (OpenAI semantics), whatever the model's defaults say.
        kwargs.update(temperature=temperature, top_p=1.0, top_k=0)
    if stop:
        kwargs.update(stop_strings=[s for s in stop if s], tokenizer=tokenizer)
    input_ids = torch.tensor([ids], device=loaded.device)
    with torch.inference_mode():
        out = model.generate(
            input_ids=input_ids, attention_mask=torch.ones_like(input_ids), **kwargs
        )
    new = out.sequences[:, len(ids) :].tolist()
    logits = (
        torch.stack(out.logits, dim=1).float().log_softmax(-1) if top_logprobs else None
    )  # (n_run, new tokens, vocab)

    choices = []
    for j, seq in enumerate(new):
        choice, used = decode_choice(
            tokenizer, seq, eos, stop, None if logits is None else logits[j], top_logprobs
        )
        usage.completion_tokens += used
        choices.append(choice)
    if greedy and n > 1:
        first = choices[0]
        choices = [Completion(first.text, first.finish_reason, first.tokens) for _ in range(n)]
    return LLMResponse(choices=choices, usage=usage)


def decode_choice(
    tokenizer: Any,
    seq: list[int],
    eos: list[int],
    stop: Sequence[str] | None,
    logprobs: Any,
    top_logprobs: int | None,
) -> tuple[Completion, int]:
    """One generated sequence as a completion (cut at its end token and at the first stop
    string, with token logprobs where `logprobs` is given) and its completion tokens."""
    end, finish = len(seq), "length"
    for t, tid in enumerate(seq):
        if tid in eos:
            end, finish = t, "stop"
            break
    used = min(end + 1, len(seq)) if finish == "stop" else end
    text, stopped = cut_at_stop(
        tokenizer.decode(seq[:end], skip_special_tokens=True), list(stop or [])
    )
    if stopped:
        finish = "stop"
    tokens = None
    if logprobs is not None:
        tokens = []
        for t in range(end):
            if len(tokenizer.decode(seq[:t], skip_special_tokens=True)) >= len(text):
                break  # the rest lies behind a stop string
            tokens.append(_token_logprob(tokenizer, logprobs[t], seq[t], top_logprobs))
    return Completion(text=text, finish_reason=finish, tokens=tokens), used


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: list[int] = []
    gen = getattr(model, "generation_config", None)
    for value in (getattr(gen, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            value = [value]
        for v in value or []:
            if v not in ids:
                ids.append(v)
    return ids


def _prompt_logprobs(loaded: LocalModel, ids: list[int], k: int) -> list[TokenLogprob]:
    """Logprobs of the prompt's own tokens: entry i is the distribution *for* token i."""
    import torch

    with torch.inference_mode():
        logits = loaded.model(input_ids=torch.tensor([ids], device=loaded.device)).logits[0]
    logprobs = logits.float().log_softmax(-1)
    tok = loaded.tokenizer
    result = [TokenLogprob(token=tok.decode([ids[0]]))]  # nothing predicts the first token
    for i in range(1, len(ids)):
        result.append(_token_logprob(tok, logprobs[i - 1], ids[i], k))
    return result
