"""Batched generation on a local model, from kept KV caches of prompts and their prefixes.

Concurrent requests to one local model (a job explains eight units at once) are gathered
by a `GenerationBatcher` and answered by one `generate` over all of them: a CPU decodes
eight sequences in little more than the time of one, because a decoding step of a small
model is dominated by per-layer overheads, not arithmetic.

Each prompt but its last token is computed alone (one causal pass; a padded batch is no
faster per token on a CPU) from the cache of its declared prefix (a chat's messages but the
last: instructions and few-shot examples, the same for every unit), and its cache is kept, so
the same prompt asked again (another sample, an explainer's retry) only decodes. Prefix and
prompt caches share one byte-bounded store (`PromptStates`). The one-row caches are then
stacked, left-padded, and the batch decodes; the attention mask hides the padding and
position ids follow the mask, so every real token keeps its unbatched position: greedy
answers are the same tokens as one call at a time, and logprobs agree to ~5e-5 (fp32 sums in
another order), tested.
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import threading
import weakref
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from neuroscribe.errors import LLMError
from neuroscribe.llm.base import Completion, LLMResponse
from neuroscribe.schema import Usage

# A prefix shorter than this is not worth a cache entry (the copy costs about as much).
MIN_PREFIX = 32
# Prompt and prefix caches kept per model (SmolLM2-135M: ~46 kB a token, ~100 MB a 2k prompt):
# room for the 8 prompts a job has in flight (--concurrency 8), so a retry in the next
# round still finds its prompt (with 512 MB the LRU dropped each before its retry came).
PROMPT_STATE_BYTES = 1024**3
# How long a lone request waits for company before it runs (a generate takes 100s of ms).
BATCH_WINDOW_S = 0.01


@dataclass(frozen=True)
class GenParams:
    """The settings a batch shares (every request in one `generate` decodes alike)."""

    temperature: float
    max_tokens: int
    top_logprobs: int | None
    stop: tuple[str, ...]


@dataclass
class GenRequest:
    ids: list[int]
    n: int
    params: GenParams
    prefix: int = 0  # the first `prefix` ids are a reusable prefix (0: none)
    future: asyncio.Future | None = None

    @property
    def rows(self) -> int:
        # Greedy decoding gives one answer: decode it once, copy it n times.
        return 1 if self.params.temperature <= 0 else self.n

    def prefix_key(self) -> tuple[int, ...]:
        return tuple(self.ids[: self.prefix]) if self.prefix >= MIN_PREFIX else ()


def cache_keyword(model: Any) -> str:
    """`cache` in recent transformers, `past_key_values` before (and deprecated since)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _body(model: Any) -> Any:
    """The transformer without its output layer: a prompt's cache needs no logits (for a
    2k-token prompt the full-vocabulary head is ~20% of the compute and 300 MB of logits)."""
    body = getattr(model, "base_model", None)
    return body if body is not None and body is not model else model


def output_cache(output: Any) -> Any:
    cache = output.get("cache") if hasattr(output, "get") else None
    return cache if cache is not None else output.past_key_values


def common_prefix(ids: list[int], other: list[int]) -> int:
    n = 0
    for a, b in zip(ids, other, strict=False):
        if a != b:
            break
        n += 1
    return n


def declared_prefix(tokenizer: Any, prefix_ids: list[int], ids: list[int]) -> int:
    """How many leading `ids` the separately tokenised prefix covers, one id kept back.

    The last id of the prefix alone may merge differently with what follows it in the
    full prompt; dropping it keeps the reused cache exactly the full prompt's. At least
    one id always stays outside the prefix (generation needs a token to start from).
    """
    n = common_prefix(prefix_ids, ids)
    return max(0, min(n, len(prefix_ids) - 1, len(ids) - 1))


def generate_batch(loaded: Any, requests: Sequence[GenRequest]) -> list[LLMResponse]:
    """One `generate` for requests sharing their settings and prefix; the caller holds the
    model's lock. Rows are `prefix + left padding + rest`."""
    import torch

    from neuroscribe.llm.local import _eos_ids, decode_choice

    model, tokenizer = loaded.model, loaded.tokenizer
    params = requests[0].params
    key = requests[0].prefix_key()
    device = loaded.device
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or [0])[0]
    rows = [r for r in requests for _ in range(r.rows)]
    # Each prompt but its last token is computed alone (one causal pass from the prefix
    # cache: on a CPU as fast per token as a padded batch, and no compute on padding);
    # then the caches are stacked, left-padded, and all rows decode together.
    caches = {id(r): _prompt_cache(loaded, r, key) for r in requests}
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for j, r in enumerate(rows):
        ids[j, width - len(r.ids) :] = torch.tensor(r.ids, device=device)
        mask[j, width - len(r.ids) :] = 1
    # A one-token prompt has nothing to cache: then the batch runs from the ids alone.
    known = [caches[id(r)] for r in rows]
    stacked = None if any(c is None for c in known) else _stack_caches(known, width - 1)
    del caches, known  # the one-row caches are copied into `stacked`: free them now
    greedy = params.temperature <= 0
    kwargs: dict[str, Any] = {
        "max_new_tokens": params.max_tokens,
        "do_sample": not greedy,
        "pad_token_id": pad,
        "eos_token_id": eos or None,
        "return_dict_in_generate": True,
        "output_logits": bool(params.top_logprobs),
    }
    if greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        kwargs.update(temperature=params.temperature, top_p=1.0, top_k=0)
    if params.stop:
        kwargs.update(stop_strings=list(params.stop), tokenizer=tokenizer)
    if stacked is not None:
        kwargs[cache_keyword(model)] = stacked
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
    new = out.sequences[:, width:].tolist()
    logits = torch.stack(out.logits, dim=1).float().log_softmax(-1) if params.top_logprobs else None

    stop = list(params.stop)
    completions: list[Completion] = []
    completion_tokens: list[int] = []
    for j, seq in enumerate(new):
        choice, used = decode_choice(
            tokenizer, seq, eos, stop, None if logits is None else logits[j], params.top_logprobs
        )
        completions.append(choice)
        completion_tokens.append(used)

    responses, j = [], 0
    for r in requests:
        mine = completions[j : j + r.rows]
        usage = Usage(
            prompt_tokens=len(r.ids),
            completion_tokens=sum(completion_tokens[j : j + r.rows]),
            requests=1,
        )
        j += r.rows
        if r.rows < r.n:  # greedy: the one answer, n times
            first = mine[0]
            mine = [Completion(first.text, first.finish_reason, first.tokens) for _ in range(r.n)]
        responses.append(LLMResponse(choices=mine, usage=usage))
    return responses


def _prompt_cache(loaded: Any, request: GenRequest, key: tuple[int, ...]) -> Any:
    """The KV cache of `request.ids[:-1]`, continuing the prefix's cache where it has one."""
    states = prompt_states(loaded)
    head = tuple(request.ids[:-1])
    kept = states.get(head)
    if kept is not None:  # the same prompt again (another sample, a retry)
        states.hits += 1
        return copy.deepcopy(kept)
    start = None
    if key:
        start = states.get(key)
        if start is None:
            start = extend_cache(loaded.model, None, key)
            states.put(key, start)
            states.prefixes_computed += 1
    cache = extend_cache(
        loaded.model, copy.deepcopy(start) if start is not None else None, head[len(key) :]
    )
    if cache is None:
        return None
    states.put(head, cache)
    return copy.deepcopy(cache)  # generate appends to the cache it is given


def extend_cache(model: Any, cache: Any, ids: Sequence[int]) -> Any:
    """`cache` (None: empty) continued over `ids` by the model's body (no logits); the
    cache given is extended in place, so pass a copy of one that is kept."""
    import torch

    if not ids:
        return cache
    body = _body(model)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = body(
            input_ids=torch.tensor([list(ids)], device=device),
            use_cache=True,
            **({cache_keyword(body): cache} if cache is not None else {}),
        )
    return output_cache(out)


class PromptStates:
    """KV caches of recent prompts and prompt prefixes for one model, within a byte budget
    (least recently used dropped first). The caller copies what it takes."""

    def __init__(self, budget_bytes: int = PROMPT_STATE_BYTES) -> None:
        self._states: OrderedDict[tuple[int, ...], tuple[Any, int]] = OrderedDict()
        self._budget = budget_bytes
        self._used = 0
        self.hits = 0  # whole prompts reused (the tests and the benchmark read these)
        self.prefixes_computed = 0

    def get(self, key: tuple[int, ...]) -> Any:
        if key not in self._states:
            return None
        self._states.move_to_end(key)
        return self._states[key][0]

    def put(self, key: tuple[int, ...], cache: Any) -> None:
        size = sum(k.nelement() * k.element_size() * 2 for k, _ in _layers(cache))
        if size > self._budget:
            return
        if key in self._states:
            self._used -= self._states.pop(key)[1]
        self._states[key] = (cache, size)
        self._used += size
        while self._used > self._budget:
            self._used -= self._states.popitem(last=False)[1][1]


def prompt_states(loaded: Any) -> PromptStates:
    return loaded.remember("prompt-states", PromptStates)


def _layers(cache: Any) -> list[tuple[Any, Any]]:
    """(keys, values) per layer, (batch, heads, length, dim) each."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))  # transformers < 4.56


def _stack_caches(caches: Sequence[Any], length: int) -> Any:
    """One batched cache from one-row caches, each left-padded with zeros to `length`.

    Keys already carry their rotary positions, so padding in front changes nothing the
    attention mask does not hide.
    """
    import torch
    from transformers import DynamicCache

    per_row = [_layers(c) for c in caches]
    stacked = DynamicCache()
    for layer in range(len(per_row[0])):
        keys, values = [], []
        for row in per_row:
            k, v = row[layer]
            gap = length - k.shape[2]
            if gap:
                k = torch.nn.functional.pad(k, (0, 0, gap, 0))
                v = torch.nn.functional.pad(v, (0, 0, gap, 0))
            keys.append(k)
            values.append(v)
        stacked.update(torch.cat(keys), torch.cat(values), layer)
    return stacked


class GenerationBatcher:
    """Gathers one event loop's concurrent generation requests to one model into batches.

    A request joins the queue, then waits its turn on the model (`queued_for_model`); the
    caller whose turn it is takes every queued request that can share its batch (same
    settings and prefix, up to `max_rows` sequences) and answers them all. Callers whose
    answer came with someone else's batch find it ready and return at once. A request
    that fails (e.g. too long) fails alone: it is checked before it is batched.
    """

    def __init__(self, loaded: Any, max_rows: int) -> None:
        self.loaded = loaded
        self.max_rows = max_rows
        self.pending: list[GenRequest] = []
        # Rows per batch, the latest 1,000 (the tests read it; a service runs for days).
        self.batches: deque[int] = deque(maxlen=1000)

    async def submit(self, request: GenRequest) -> LLMResponse:
        from neuroscribe.llm.local import model_queue

        request.future = asyncio.get_running_loop().create_future()
        self.pending.append(request)
        async with model_queue(self.loaded):
            if not request.future.done():
                if len(self._take(request)) == 1:
                    # Calls started together reach the queue a little apart (each first
                    # tokenises its prompt): a moment's wait lets them join this batch.
                    await asyncio.sleep(BATCH_WINDOW_S)
                batch = self._take(request)
                for r in batch:
                    self.pending.remove(r)
                self.batches.append(sum(r.rows for r in batch))
                try:
                    results: list[Any] = await asyncio.to_thread(self._run, batch)
                except Exception as e:  # handed to every request of the batch
                    results = [e] * len(batch)
                for r, result in zip(batch, results, strict=True):
                    assert r.future is not None
                    if isinstance(result, BaseException):
                        r.future.set_exception(result)
                    else:
                        r.future.set_result(result)
        return await request.future

    def _take(self, first: GenRequest) -> list[GenRequest]:
        """`first` and the queued requests that can join its batch, oldest first."""
        batch, rows = [first], first.rows
        key, params = first.prefix_key(), first.params
        for r in self.pending:
            if r is first or r.params != params or r.prefix_key() != key:
                continue
            if rows + r.rows > self.max_rows:
                break
            batch.append(r)
            rows += r.rows
        return batch

    def _run(self, batch: list[GenRequest]) -> list[LLMResponse]:
        from neuroscribe.llm.local import release_memory

        with self.loaded.lock:
            try:
                return generate_batch(self.loaded, batch)
            finally:
                release_memory()


_BATCHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, GenerationBatcher]] = (
    weakref.WeakKeyDictionary()
)
_BATCHERS_LOCK = threading.Lock()


def batcher_for(loaded: Any, max_rows: int) -> GenerationBatcher:
    """This event loop's batcher for `loaded` (one per model and loop)."""
    loop = asyncio.get_running_loop()
    with _BATCHERS_LOCK:
        per_loop = _BATCHERS.setdefault(loop, {})
        key = id(loaded)
        if key not in per_loop or per_loop[key].loaded is not loaded:
            per_loop[key] = GenerationBatcher(loaded, max_rows)
        return per_loop[key]


def check_request(loaded: Any, ids: list[int], n: int, max_tokens: int) -> None:
    """Refuse what cannot run before it joins a batch (so it fails alone)."""
    if n < 1:
        raise LLMError(f"n must be at least 1, got {n}")
    context = loaded.max_context
    if context is not None and len(ids) + max_tokens > context:
        from neuroscribe.prompts import PromptTooLong

        raise PromptTooLong(
            f"a {len(ids)}-token prompt plus {max_tokens} new tokens exceeds the "
            f"{context}-token context of {loaded.path}"
        )
