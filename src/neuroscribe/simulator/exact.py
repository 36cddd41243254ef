"""Exact all-at-once simulation on a local model: the digit distribution at every slot.

The simulation prompt is built as token ids piece by piece (prefix, then per row the
row head `token<TAB>` and `unknown\\n`, then the suffix), so the position of every value
slot is known without parsing text. The logits at the last token of each row head are
the model's distribution for that slot's value; restricted to the ids of "0"…"max" and
renormalised they give the expected value Σ v·p.

Two ways to get them, same numbers (tested to 1e-4):
- `cached` (default): the prefix (instructions, few-shot examples, explanation) runs
  once and its KV cache is shared by every excerpt of the explanation; excerpts run in
  right-padded batches after it, and only the value rows of the LM head are applied at
  the slot positions.
- `naive`: one plain full-prompt forward pass per excerpt (the reference, and the
  benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from neuroscribe.errors import ConfigError
from neuroscribe.llm.local import LocalModel, ModelStore, load_local_model, release_memory
from neuroscribe.llm.local_batch import cache_keyword, extend_cache
from neuroscribe.prompts import SIMULATE_PROMPT_VERSION, PromptTooLong
from neuroscribe.prompts import build_simulation_prompt as _build_prompt
from neuroscribe.prompts.simulate import default_examples, simulation_style
from neuroscribe.schema import Usage
from neuroscribe.simulator.base import BaselineCache, SimulatedExcerpt
from neuroscribe.simulator.readout import apply_style, readouts

log = logging.getLogger(__name__)

Mode = Literal["cached", "naive"]


# -- tokenisation ------------------------------------------------------------------------


def encode_after(tokenizer: Any, anchor: str, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as it is tokenised right after `anchor` in a prompt.

    Every row head follows a newline and every value follows a tab; encoding
    `anchor + text` and dropping the anchor's ids gives the ids the text gets in that
    context (tokenizers that add a leading space to a lone piece would otherwise differ).
    Falls back to encoding the text alone where the anchor merges with it.
    """
    if not texts:
        return []
    anchor_ids = _encode_batch(tokenizer, [anchor])[0]
    batch = _encode_batch(tokenizer, [anchor + t for t in texts])
    out = []
    for text, ids in zip(texts, batch, strict=True):
        if ids[: len(anchor_ids)] == anchor_ids:
            out.append(list(ids[len(anchor_ids) :]))
        else:
            out.append(tokenizer(text, add_special_tokens=False)["input_ids"])
    return out


def _encode_batch(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    """Ids without special tokens; straight from a fast tokenizer's Rust backend when there
    is one (the transformers wrapper spends most of its time building per-text dicts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def value_token_ids(tokenizer: Any, scale_max: int | None = None) -> tuple[int, list[int]]:
    """The value scale a tokenizer can express in one token, and the ids of "0"…"max".

    0–10 when "10" is a single token; 0–9 when it is not (SmolLM2 and most modern
    tokenizers split numbers into digits, so one slot's distribution cannot see "10").
    `scale_max` asks for a smaller scale (never a larger one than the tokenizer allows).
    """
    pieces = encode_after(tokenizer, "\t", [str(v) for v in range(11)])
    if all(len(p) == 1 for p in pieces):
        top = 10
    elif all(len(p) == 1 for p in pieces[:10]):
        top = 9
    else:
        raise ConfigError(
            "the simulator's tokenizer has no single token for every digit 0-9, so exact "
            "simulation cannot read a value distribution from one position"
        )
    if scale_max is not None:
        if not 1 <= scale_max <= top:
            raise ConfigError(
                f"scale_max {scale_max} is not possible with this tokenizer: values are read "
                f"from one token, which covers 1 to {top}"
            )
        top = scale_max
    return top, [p[0] for p in pieces[: top + 1]]


def shared_len(tokenizer: Any, shared_text: str, prefix_ids: list[int]) -> int:
    """How many leading ids of the prefix belong to its explanation-independent text.

    The shared text is tokenised alone and compared with the full prefix's ids: where a
    token straddles the boundary (BPE merges "\n" + "\n"), the shared part stops before
    it, so reusing its KV cache gives exactly the ids of the full prompt.
    """
    if not shared_text:
        return 0
    alone = tokenizer(shared_text, add_special_tokens=True)["input_ids"]
    n = 0
    for a, b in zip(alone, prefix_ids, strict=False):
        if a != b:
            break
        n += 1
    # The last id of the text alone may be a piece the full prompt merges differently.
    return max(0, min(n, len(alone) - 1))


@dataclass
class ExcerptIds:
    """One excerpt's part of the prompt: its rows and the suffix, as token ids."""

    ids: list[int]
    # slots[i] = index in `ids` of the last token of row i's head; the logits there
    # are the distribution of row i's value.
    slots: list[int]


@dataclass
class SimulationIds:
    """A whole simulation request as token ids: one shared prefix, one part per excerpt."""

    prefix: list[int]
    excerpts: list[ExcerptIds]
    scale_max: int
    value_ids: list[int]
    n_examples: int
    # The first `shared` prefix ids do not depend on the explanation (see `shared_len`).
    shared: int = 0


def build_simulation_ids(
    tokenizer: Any,
    explanation: str,
    excerpts: Sequence[Sequence[str]],
    *,
    max_prompt_tokens: int | None = None,
    n_examples: int | None = None,
    scale_max: int | None = None,
    prompt_version: str | None = SIMULATE_PROMPT_VERSION,
) -> SimulationIds:
    """Token ids of every excerpt's prompt, sharing one prefix.

    The longest excerpt's prompt must fit `max_prompt_tokens`: few-shot examples are
    dropped (for every excerpt alike, so the prefix stays shared) until it does, and
    `PromptTooLong` is raised when even no examples is too long. Nothing is truncated.
    """
    scale_max, value_ids = value_token_ids(tokenizer, scale_max)
    style = simulation_style(prompt_version)
    if n_examples is None:
        n_examples = default_examples(style)
    longest = max((len(e) for e in excerpts), default=0)
    for k in range(n_examples, -1, -1):

        def build(tokens: list[str], k: int = k):
            return _build_prompt(
                explanation, tokens, scale_max=scale_max, n_examples=k, version=style.version
            )

        prompts = [build(list(tokens)) for tokens in excerpts]
        if not prompts:
            prompts = [build([])]
        prefix = tokenizer(prompts[0].prefix, add_special_tokens=True)["input_ids"]
        shared = shared_len(tokenizer, prompts[0].prefix[: prompts[0].shared_chars], prefix)
        # Tokenise each distinct row once (text repeats " the", ",", ... a lot).
        distinct = list(dict.fromkeys(p.row_head(i) for p in prompts for i in range(len(p.rows))))
        head_ids = dict(zip(distinct, encode_after(tokenizer, "\n", distinct), strict=True))
        heads = [head_ids[p.row_head(i)] for p in prompts for i in range(len(p.rows))]
        suffix = encode_after(tokenizer, "\n", [prompts[0].suffix])[0]
        # What follows each row's head (`unknown` and a newline; nothing when inline).
        fill_ids = encode_after(tokenizer, "\t", [prompts[0].row_fill()])[0]
        parts, h = [], 0
        for p in prompts[: len(excerpts)]:
            ids: list[int] = []
            slots = []
            for i in range(len(p.rows)):
                if not heads[h]:
                    raise ConfigError(
                        f"token {p.rows[i]!r} has no ids in the simulator's tokenizer, so "
                        "there is no position to read its value from"
                    )
                ids.extend(heads[h])
                slots.append(len(ids) - 1)
                ids.extend(fill_ids)
                h += 1
            ids.extend(suffix)
            parts.append(ExcerptIds(ids=ids, slots=slots))
        total = len(prefix) + max((len(e.ids) for e in parts), default=len(suffix))
        if max_prompt_tokens is None or total <= max_prompt_tokens:
            if k < n_examples:
                log.warning(
                    "simulation prompt shortened to %d few-shot example(s) to fit %d tokens",
                    k,
                    max_prompt_tokens,
                )
            return SimulationIds(prefix, parts, scale_max, value_ids, n_examples=k, shared=shared)
    raise PromptTooLong(
        f"the simulation prompt for a {longest}-token excerpt needs {total} tokens even "
        f"without few-shot examples, over the limit of {max_prompt_tokens}"
    )


# -- the forward passes ------------------------------------------------------------------


def _value_head(model: Any, value_ids: list[int]) -> tuple[Any, Any]:
    """The LM head's rows for the value tokens (weight, bias or None)."""
    head = model.get_output_embeddings()
    weight = head.weight[value_ids]
    bias = head.bias[value_ids] if getattr(head, "bias", None) is not None else None
    return weight, bias


def head_is_plain_linear(model: Any) -> bool:
    """Whether logits = lm_head(last hidden state) exactly, checked on a short input.

    Then the cached path may apply only the value rows of the head at slot positions
    (saving the full-vocabulary projection of every token). Models that scale or cap
    their logits fail this check and get the full head instead. Callers remember the
    answer per model (`LocalModel.remember`); nothing is stored on the model itself.
    """
    import torch

    device = next(model.parameters()).device
    ids = torch.arange(1, 9, device=device).unsqueeze(0) % model.config.vocab_size
    with torch.inference_mode():
        full = model(input_ids=ids).logits[0, -1].float()
        hidden = model.base_model(input_ids=ids).last_hidden_state[0, -1]
        weight, bias = _value_head(model, list(range(min(64, model.config.vocab_size))))
        part = torch.nn.functional.linear(hidden, weight, bias).float()
    ok = bool(torch.allclose(full[: part.shape[0]], part, rtol=1e-3, atol=1e-3))
    if not ok:
        log.info(
            "%s scales or caps its logits: the cached path applies the full head",
            type(model).__name__,
        )
    return ok


def supports_cached(model: Any) -> bool:
    """Whether the model exposes a body (`base_model`) and an output layer to split on.

    Every transformers causal LM we know does; a model that does not is simulated with
    the naive path (same numbers, slower) rather than refused.
    """
    body = getattr(model, "base_model", None)
    return body is not None and body is not model and model.get_output_embeddings() is not None


def slot_logits_naive(model: Any, sim: SimulationIds) -> list[Any]:
    """Value logits per slot, one plain full-prompt forward pass per excerpt."""
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for part in sim.excerpts:
            ids = torch.tensor([sim.prefix + part.ids], device=device)
            logits = model(input_ids=ids).logits[0]
            rows = [len(sim.prefix) + s for s in part.slots]
            out.append(logits[rows][:, sim.value_ids].float().cpu())
    return out


def prefix_cache(model: Any, prefix: list[int], start: tuple[int, Any] | None = None) -> Any:
    """Run the prefix once; its KV cache is reused for every excerpt.

    `start` = (n, cache of prefix[:n]): continue from a cache of the first n ids (the
    explanation-independent part every explanation shares) instead of recomputing them.
    """
    past = None
    rest = prefix
    if start is not None and 0 < start[0] < len(prefix):
        past = copy.deepcopy(start[1])
        rest = prefix[start[0] :]
    return extend_cache(model, past, rest)


def batch_forward(
    model: Any, cache: Any, prefix_len: int, parts: Sequence[ExcerptIds], *, pad_id: int = 0
) -> Any:
    """Hidden states of a right-padded batch of excerpts continuing the cached prefix.

    Right padding keeps every real token at its true position (prefix_len + offset);
    the attention mask hides the pads. The prefix cache is copied and repeated per row,
    since a forward pass appends to the cache it is given.
    """
    import torch

    device = next(model.parameters()).device
    lengths = [len(p.ids) for p in parts]
    width = max(lengths)
    ids = torch.full((len(parts), width), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(parts), prefix_len + width), dtype=torch.long, device=device)
    mask[:, :prefix_len] = 1
    for j, (p, n) in enumerate(zip(parts, lengths, strict=True)):
        ids[j, :n] = torch.tensor(p.ids, device=device)
        mask[j, prefix_len : prefix_len + n] = 1
    positions = torch.arange(prefix_len, prefix_len + width, device=device).expand(len(parts), -1)
    batch_cache = copy.deepcopy(cache)
    batch_cache.batch_repeat_interleave(len(parts))
    with torch.inference_mode():
        return model.base_model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            **{cache_keyword(model.base_model): batch_cache},
            use_cache=True,
        ).last_hidden_state


def slot_logits_cached(
    model: Any,
    sim: SimulationIds,
    *,
    batch_size: int = 8,
    plain_head: bool | None = None,
    shared: tuple[int, Any] | None = None,
) -> list[Any]:
    """Value logits per slot: prefix once, then excerpts in batches on its KV cache.

    `plain_head`: the remembered `head_is_plain_linear(model)` (checked now if None).
    `shared`: (n, KV cache of sim.prefix[:n]) to start the prefix from.
    """
    import torch

    if not any(p.slots for p in sim.excerpts):
        return [torch.zeros((0, len(sim.value_ids))) for _ in sim.excerpts]
    plain = head_is_plain_linear(model) if plain_head is None else plain_head
    weight, bias = _value_head(model, sim.value_ids)
    cache = prefix_cache(model, sim.prefix, shared)
    # Tokens after an excerpt's last slot cannot change any slot (causal attention).
    trimmed = [ExcerptIds(p.ids[: p.slots[-1] + 1], p.slots) for p in sim.excerpts if p.slots]
    index = [k for k, p in enumerate(sim.excerpts) if p.slots]
    # Similar lengths share a batch, so little compute goes into padding.
    order = sorted(range(len(trimmed)), key=lambda k: len(trimmed[k].ids))
    device = next(model.parameters()).device
    pieces, owners = [], []
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            hidden = batch_forward(model, cache, len(sim.prefix), [trimmed[k] for k in chunk])
            # Gather every slot of the batch at once: one small matmul, no per-excerpt sync.
            rows = torch.tensor([j for j, k in enumerate(chunk) for _ in trimmed[k].slots])
            cols = torch.tensor([s for k in chunk for s in trimmed[k].slots])
            h = hidden[rows.to(device), cols.to(device)]
            if plain:
                logits = torch.nn.functional.linear(h, weight, bias)
            else:
                logits = model.get_output_embeddings()(h)[:, sim.value_ids]
            pieces.append(logits.float())
            owners.extend(index[k] for k in chunk)
        # One transfer to the CPU, then split back into excerpts in their original order.
        flat = torch.cat(pieces).cpu()
    sizes = [len(sim.excerpts[k].slots) for k in owners]
    out: list[Any] = [torch.zeros((0, len(sim.value_ids))) for _ in sim.excerpts]
    for k, part in zip(owners, flat.split(sizes), strict=True):
        out[k] = part
    return out


def to_simulated(
    sim: SimulationIds, logits: Sequence[Any], *, cached: bool, prefix_tokens: int | None = None
) -> list[SimulatedExcerpt]:
    """Renormalised value distributions and their expected values, with token usage.

    `prefix_tokens`: prefix ids actually computed (fewer when a shared part was reused).
    """
    import torch

    values = torch.arange(sim.scale_max + 1, dtype=torch.float32)
    results = []
    for k, value_logits in enumerate(logits):
        probs = torch.softmax(value_logits, dim=-1)
        prefix = len(sim.prefix) if prefix_tokens is None or not cached else prefix_tokens
        computed = len(sim.excerpts[k].ids) + (prefix if not cached or k == 0 else 0)
        results.append(
            SimulatedExcerpt(
                expected=(probs @ values).tolist(),
                distributions=probs.tolist(),
                scale_max=sim.scale_max,
                usage=Usage(prompt_tokens=computed, requests=1),
            )
        )
    return results


# -- the Simulator -----------------------------------------------------------------------


class ExactSimulator:
    """Exact simulation on a local model (`strategy = "exact"`).

    `ExactSimulator("hf:embedded")`, or `ExactSimulator.from_llm(local_llm)` to share
    the model a `LocalLLM` holds (loading is cached per spec anyway). Usage counts the tokens actually computed: the shared
    prefix is charged to the first excerpt of each call.
    """

    strategy = "exact"

    def __init__(
        self,
        spec: str = "hf:embedded",
        *,
        device: str | None = None,
        dtype: str | None = None,
        loaded: LocalModel | None = None,
        store: ModelStore | None = None,
        batch_size: int | None = None,
        n_examples: int | None = None,
        max_prompt_tokens: int | None = None,
        scale_max: int | None = None,
        mode: Mode = "cached",
        prompt_version: str | None = None,
    ):
        if mode not in ("cached", "naive"):
            raise ConfigError(f"unknown exact simulation mode {mode!r}: use cached or naive")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        from neuroscribe.llm.lora import adapter_prompt

        self.spec = spec
        self.style = simulation_style(prompt_version or adapter_prompt(spec))
        self.prompt_version = self.style.version
        self._batch_size = batch_size
        self.n_examples = default_examples(self.style) if n_examples is None else n_examples
        self._baselines = BaselineCache()
        self.max_prompt_tokens = max_prompt_tokens
        self._scale_max = scale_max
        self.mode: Mode = mode
        self._device = device
        self._dtype = dtype
        self._loaded = loaded
        self._store = store

    @property
    def loaded(self) -> LocalModel:
        if self._loaded is None:
            self._loaded = load_local_model(
                self.spec, device=self._device, dtype=self._dtype, store=self._store
            )
        return self._loaded

    @property
    def batch_size(self) -> int:
        """Excerpts per forward pass: 8 on CPU (larger batches gain nothing there), 32 on GPU."""
        if self._batch_size is not None:
            return self._batch_size
        return 32 if str(self.loaded.device).startswith("cuda") else 8

    @property
    def scale_max(self) -> int:
        """9 or 10: the top of the value scale this model's tokenizer can express."""
        return value_token_ids(self.loaded.tokenizer, self._scale_max)[0]

    @classmethod
    def from_llm(cls, llm: Any, **options: Any) -> ExactSimulator:
        """The exact simulator on the model a `LocalLLM` (bare or wrapped) holds."""
        from neuroscribe.llm.wrappers import unwrap

        return cls(llm.spec, loaded=unwrap(llm).loaded, **options)

    def prompt_limit(self) -> int | None:
        """The deliberate token limit: `max_prompt_tokens`, never above the context."""
        context = self.loaded.max_context
        limits = [x for x in (self.max_prompt_tokens, context) if x is not None]
        return min(limits) if limits else None

    def _simulate_raw(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        """Distributions (and expected values) under the prompt, holding the model's lock."""
        loaded = self.loaded
        sim = build_simulation_ids(
            loaded.tokenizer,
            explanation,
            excerpts,
            max_prompt_tokens=self.prompt_limit(),
            n_examples=self.n_examples,
            scale_max=self._scale_max,
            prompt_version=self.prompt_version,
        )
        shared = None
        with loaded.lock:
            if self.mode == "naive" or not supports_cached(loaded.model):
                logits = slot_logits_naive(loaded.model, sim)
            else:
                plain = loaded.remember("plain_head", lambda: head_is_plain_linear(loaded.model))
                shared = self._shared_cache(loaded, sim)
                logits = slot_logits_cached(
                    loaded.model, sim, batch_size=self.batch_size, plain_head=plain, shared=shared
                )
            release_memory()
        return to_simulated(
            sim,
            logits,
            cached=self.mode == "cached" and supports_cached(loaded.model),
            prefix_tokens=len(sim.prefix) - (shared[0] if shared else 0),
        )

    def _shared_cache(self, loaded: LocalModel, sim: SimulationIds) -> tuple[int, Any] | None:
        """The KV cache of the explanation-independent prefix, computed once per model and
        prompt (instructions and few-shot units are the same for every explanation)."""
        n = sim.shared
        if n < 16:
            return None
        ids = tuple(sim.prefix[:n])
        key = f"sim-shared:{hash(ids)}"
        memo = loaded.remember("sim-shared", dict)
        hit = memo.get(key)
        if hit is None or hit[0] != ids:
            if len(memo) >= 8:  # a handful of prompt versions/scales at most
                memo.clear()
            hit = memo[key] = (ids, prefix_cache(loaded.model, list(ids)))
        return n, hit[1]

    def simulate_sync(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        """The blocking version of `simulate`: the style's readout, minus its contrast."""
        results = self._simulate_raw(explanation, excerpts)
        if self.style.readout == "expected" and self.style.contrast is None:
            return results
        base_usage = Usage()
        baseline: list[list[float | None]] | None = None
        if self.style.contrast is not None:
            baseline, base_usage = self._baselines.get_or_compute(excerpts, self._baseline)
        return apply_style(results, self.style.readout, baseline, base_usage)

    def _baseline(self, excerpts: Sequence[Sequence[str]]) -> tuple[list, Usage]:
        """The contrast explanation's predictions on `excerpts`, and what they cost."""
        assert self.style.contrast is not None
        return readouts(self._simulate_raw(self.style.contrast, excerpts), self.style.readout)

    async def simulate(
        self, explanation: str, excerpts: Sequence[Sequence[str]]
    ) -> list[SimulatedExcerpt]:
        """Expected activations for every token of every excerpt, in order."""
        from neuroscribe.llm.local import queued_for_model

        loaded = await asyncio.to_thread(lambda: self.loaded)
        return await queued_for_model(loaded, self.simulate_sync, explanation, excerpts)
