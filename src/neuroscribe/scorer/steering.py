"""Steering: does pushing the unit's output direction make the text express the explanation?

The unit's output direction (an MLP neuron's output-projection column, written at the
output of that projection; an SAE latent's decoder row, written where the SAE reads, or
where a transcoder writes) is added to the residual stream of a local subject model by a
forward hook, at each of `strengths` × the unit's write norm (|direction| × its largest
recorded activation: what the unit writes at its peak), at every position. From each of a
few fixed neutral `prompts`, `max_new_tokens` tokens are generated greedily, steered and
unsteered (strength 0). A judge LLM (the scorer's model) sees each (steered, unsteered)
pair in a seeded random order and says which continuation expresses the explanation
more; `judge_accuracy` is the share of pairs where it picks the steered one. The same
pairs are judged against a *control* explanation (a plausible explanation of no unit in
particular, or one of the `controls` option, chosen per unit by a seeded shuffle):
`control_accuracy`. The headline is `accuracy_minus_control`.

A pair whose two continuations are identical (steering changed nothing) is a tie, 0.5,
for both and is not sent; `n_identical` counts them and the flag `no_effect` marks a
unit where every pair was one. Generations are cached per unit and process (every
explanation of a unit is judged on the same texts); greedy decoding and the seeded order
make a score deterministic for a deterministic judge. An answer that is not "A" or "B" is
asked again, then the explanation fails with the raw answer.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError, DataError
from neuroscribe.llm.local_batch import cache_keyword, output_cache
from neuroscribe.llm.messages import Message
from neuroscribe.schema import Usage
from neuroscribe.scorer.base import ScoreOutcome, ScoreTask
from neuroscribe.scorer.classify import ask
from neuroscribe.scorer.output_side import (
    JudgedOutputScorer,
    UnitDirection,
    control_explanation,
    parse_ab,
    seeded_rng,
)
from neuroscribe.stages.base import Estimate

STEERING_VERSION = "steering-v1"
DEFAULT_PROMPTS: tuple[str, ...] = (
    "I think that",
    "The",
    "Here is what happened:",
    "My favourite thing is",
)
DEFAULT_STRENGTHS: tuple[float, ...] = (4.0, 8.0)
MAX_TOKENS = 8

SYSTEM = (
    "You compare two continuations of a text written by a language model. You answer "
    "with a single letter, A or B."
)


def build_steering_messages(explanation: str, prompt: str, a: str, b: str) -> list[Message]:
    def q(s: str) -> str:
        return json.dumps(s, ensure_ascii=False)

    user = (
        f"A neuron in a language model was explained as:\n{q(explanation.strip())}\n\n"
        "Below are two continuations of the same prompt. While one of them was written, "
        "the neuron was made to fire strongly.\n\n"
        f"Prompt: {q(prompt)}\nA: {q(a)}\nB: {q(b)}\n\n"
        "Which continuation expresses the explanation more? Answer A or B and nothing else."
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


# ---------------------------------------------------------------- steered generation


def _steer_hook(
    module: Any, side: str, add: Any, seen: list[float] | None, measure: list[bool]
) -> Any:
    """Install a hook adding `add` ([d_model]) to the module's output (or input); while
    `measure[0]` it also appends the hooked activation's norms to `seen`, once."""

    def shift(x: Any) -> Any:
        if seen is not None and measure[0] and x.ndim == 3 and x.shape[1] > 1:
            # A prompt's first pass: the residual's size there (position 0 left out: it
            # is often huge, an attention sink).
            seen.extend(x[:, 1:, :].float().norm(dim=-1).flatten().tolist())
        measure[0] = False
        return x + add

    if side == "output":

        def hook(_m: Any, _args: Any, out: Any) -> Any:
            if isinstance(out, tuple):
                return (shift(out[0]), *out[1:])
            return shift(out)

        return module.register_forward_hook(hook)

    def pre_hook(_m: Any, args: tuple, kwargs: dict) -> Any:
        if args:
            return (shift(args[0]), *args[1:]), kwargs
        name = "hidden_states" if "hidden_states" in kwargs else None
        name = name or next(k for k, v in kwargs.items() if hasattr(v, "shape"))
        return args, {**kwargs, name: shift(kwargs[name])}

    return module.register_forward_pre_hook(pre_hook, with_kwargs=True)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), model.config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def generate(
    loaded: Any,
    prompts: Sequence[str],
    *,
    direction: UnitDirection | None = None,
    amount: float = 0.0,
    max_new_tokens: int = 12,
    residual_norms: list[float] | None = None,
) -> list[str]:
    """Greedy continuations of `prompts`, with `amount` × the unit vector of `direction`
    added where the unit writes (no hook at all when `direction` is None). Call it holding
    `loaded.lock` (the model is shared with any local judge of the same spec)."""
    import torch

    from neuroscribe.datasets.units import get_module

    model, tok = loaded.model, loaded.tokenizer
    param = next(model.parameters())
    handle = None
    measure = [False]
    if direction is not None:
        unit = direction.vector / direction.vector.norm().clamp(min=1e-12)
        add = (amount * unit).to(device=param.device, dtype=param.dtype)
        module = get_module(model, direction.module)
        if module is None:
            raise ConfigError(f"no module {direction.module} in the subject model")
        handle = _steer_hook(module, direction.hook, add, residual_norms, measure)
    eos = _eos_ids(model, tok)
    out: list[str] = []
    try:
        with torch.inference_mode():
            for prompt in prompts:
                ids = tok(prompt, return_tensors="pt")["input_ids"].to(param.device)
                if ids.shape[1] == 0:
                    raise ConfigError(f"steering prompt {prompt!r} has no tokens")
                new: list[int] = []
                measure[0] = True
                x, past = ids, None
                for _ in range(max_new_tokens):
                    # With the KV cache (as the exact simulator uses it): the prompt's
                    # keys and values were computed with the steering already added.
                    kw = {cache_keyword(model): past} if past is not None else {}
                    o = model(input_ids=x, use_cache=True, **kw)
                    past = output_cache(o)
                    nxt = int(o.logits[0, -1].argmax())
                    if nxt in eos:
                        break
                    new.append(nxt)
                    x = torch.tensor([[nxt]], dtype=ids.dtype, device=ids.device)
                out.append(tok.decode(new, skip_special_tokens=True))
    finally:
        if handle is not None:
            handle.remove()
    return out


_GENERATIONS: dict[tuple[Any, ...], dict[str, Any]] = {}
_GENERATIONS_LOCK = threading.Lock()
_MAX_CACHED = 512


class SteeringScorer(JudgedOutputScorer):
    """A judge picks steered vs unsteered continuations, against a control explanation."""

    name = "steering"
    stage = "score-steering"
    primary_metric = "accuracy_minus_control"
    prompt_version = STEERING_VERSION
    OPTIONS: ClassVar[tuple[str, ...]] = (
        "subject", "run_dir", "sae", "sae_k", "strengths", "prompts", "max_new_tokens",
        "controls", "seed", "max_attempts", "device", "dtype", "store",
    )  # fmt: skip

    def __init__(
        self,
        llm: Any | None,
        *,
        spec: str,
        subject: str | None = None,
        run_dir: str | None = None,
        sae: str | None = None,
        sae_k: int | None = None,
        strengths: Sequence[float] = DEFAULT_STRENGTHS,
        prompts: Sequence[str] = DEFAULT_PROMPTS,
        max_new_tokens: int = 12,
        controls: Sequence[str] | None = None,
        seed: int = 0,
        max_attempts: int = 3,
        device: str | None = None,
        dtype: str | None = None,
        store: Any = None,
    ) -> None:
        strengths = tuple(float(s) for s in strengths)
        if not strengths or any(not s > 0 for s in strengths):
            raise ConfigError(
                f"strengths must be positive multiples of the unit's write norm, not "
                f"{list(strengths)} (the unsteered baseline, strength 0, is always generated)"
            )
        if not prompts or any(not p.strip() for p in prompts):
            raise ConfigError("steering needs at least one non-empty prompt")
        if max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be at least 1, not {max_new_tokens}")
        self.strengths = strengths
        self.prompts = tuple(prompts)
        self.max_new_tokens = max_new_tokens
        self.seed = seed
        self._init_judged(
            llm, spec, controls=controls, max_attempts=max_attempts, subject=subject,
            run_dir=run_dir, sae=sae, sae_k=sae_k, device=device, dtype=dtype, store=store,
        )  # fmt: skip

    @classmethod
    def planned(
        cls, spec: str, *, probe: dict | None = None, **options: Any
    ) -> tuple[SteeringScorer, str]:
        note = (
            "continuations counted as placeholders of max_new_tokens words; pairs where "
            "steering changes nothing are not sent (an upper bound)"
        )
        return cls(None, spec=spec, **cls._own(options)), note

    def config(self) -> dict[str, Any]:
        return {**super().config(), "seed": self.seed}

    def comparable(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "model": self.model,
            "prompt_version": self.prompt_version,
            "strengths": list(self.strengths),
            "prompts": list(self.prompts),
            "max_new_tokens": self.max_new_tokens,
        }

    # ------------------------------------------------------------------ generations

    def _generate_all(self, loaded: Any, direction: UnitDirection) -> dict[str, Any]:
        scale = direction.write_norm
        if scale is None:
            raise DataError(
                f"unit {direction.unit_id} has no positive recorded activation, so there is "
                "no scale to steer it at"
            )
        norms: list[float] = []
        with loaded.lock:
            base = generate(
                loaded,
                self.prompts,
                direction=direction,
                amount=0.0,
                max_new_tokens=self.max_new_tokens,
                residual_norms=norms,
            )
            steered = {
                s: generate(
                    loaded,
                    self.prompts,
                    direction=direction,
                    amount=s * scale,
                    max_new_tokens=self.max_new_tokens,
                )
                for s in self.strengths
            }
        resid = sum(norms) / len(norms) if norms else None
        return {"base": base, "steered": steered, "write_norm": scale, "residual_norm": resid}

    def generations(self, record: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The unit's unsteered and steered continuations (cached per process)."""
        ref = self.resolver.ref(record)
        loaded = self.resolver.load(ref)
        direction = self.resolver.direction(loaded, record, ref)
        where = {"subject": ref.spec, "subject_from": ref.found, **direction.describe()}
        key = (
            loaded.path,
            record.unit_id,
            ref.sae,
            self.strengths,
            self.prompts,
            self.max_new_tokens,
            direction.write_norm,
        )
        with _GENERATIONS_LOCK:
            hit = _GENERATIONS.get(key)
        if hit is None:
            hit = self._generate_all(loaded, direction)
            with _GENERATIONS_LOCK:
                if len(_GENERATIONS) >= _MAX_CACHED:
                    _GENERATIONS.pop(next(iter(_GENERATIONS)))
                _GENERATIONS[key] = hit
        return hit, where

    # ------------------------------------------------------------------ judging

    def pairs(self, task: ScoreTask) -> list[tuple[int, float, bool]]:
        """(prompt index, strength, steered shown first) for every pair, in a seeded order
        that depends on the unit and the configuration only."""
        rng = seeded_rng(self.name, self.seed, task.record.unit_id, task.config_hash)
        return [
            (i, s, rng.random() < 0.5) for s in self.strengths for i in range(len(self.prompts))
        ]

    async def _judge(self, explanation: str, prompt: str, a: str, b: str) -> tuple[str, Usage, str]:
        def parse(choice: Any) -> tuple[str, str]:
            return parse_ab(choice.text), choice.text

        (pick, raw), usage = await ask(
            self.llm,
            build_steering_messages(explanation, prompt, a, b),
            parse,
            max_tokens=MAX_TOKENS,
            top_logprobs=None,
            max_attempts=self.max_attempts,
        )
        return pick, usage, raw

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.llm is None:
            raise ConfigError(f"this {self.name} scorer was built for planning only")
        gens, where = await asyncio.to_thread(self.generations, task.record)
        control = control_explanation(
            task.record.unit_id, task.explanation.text, self.controls, self.name
        )
        pairs = self.pairs(task)
        jobs: list[Any] = []
        shown: list[tuple[str, str] | None] = []
        for i, s, steered_first in pairs:
            base, steered = gens["base"][i], gens["steered"][s][i]
            if base.strip() == steered.strip():
                shown.append(None)
                continue
            a, b = (steered, base) if steered_first else (base, steered)
            shown.append((a, b))
            for text in (task.explanation.text, control):
                jobs.append(self._judge(text, self.prompts[i], a, b))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        usage = self._settle(results)

        answers: list[dict[str, Any]] = []
        hits: list[float] = []
        ctrl_hits: list[float] = []
        by_strength: dict[float, list[float]] = {s: [] for s in self.strengths}
        k = 0
        for (i, s, steered_first), ab in zip(pairs, shown, strict=True):
            row: dict[str, Any] = {"prompt": i, "strength": s}
            if ab is None:
                hit = ctrl = 0.5
                row.update(identical=True)
            else:
                steered_letter = "A" if steered_first else "B"
                pick, _, raw = results[k]  # type: ignore[misc]
                cpick, _, craw = results[k + 1]  # type: ignore[misc]
                k += 2
                hit = float(pick == steered_letter)
                ctrl = float(cpick == steered_letter)
                row.update(
                    steered=steered_letter, pick=pick, control_pick=cpick, raw=raw, control_raw=craw
                )
            hits.append(hit)
            ctrl_hits.append(ctrl)
            by_strength[s].append(hit)
            answers.append(row)
        acc = sum(hits) / len(hits)
        ctrl_acc = sum(ctrl_hits) / len(ctrl_hits)
        n_identical = sum(ab is None for ab in shown)
        resid = gens["residual_norm"]
        return ScoreOutcome(
            metrics={
                "accuracy_minus_control": acc - ctrl_acc,
                "judge_accuracy": acc,
                "control_accuracy": ctrl_acc,
            },
            primary_metric=self.primary_metric,
            n_excerpts=0,
            n_tokens=0,
            details={
                "prompt_version": self.prompt_version,
                **where,
                "strengths": list(self.strengths),
                "write_norm": round(gens["write_norm"], 6),
                "residual_norm": None if resid is None else round(resid, 6),
                "prompts": list(self.prompts),
                "max_new_tokens": self.max_new_tokens,
                "unsteered": gens["base"],
                "steered": {str(s): gens["steered"][s] for s in self.strengths},
                "accuracy_by_strength": {
                    str(s): sum(v) / len(v) for s, v in by_strength.items() if v
                },
                "control": control,
                "n_pairs": len(pairs),
                "n_identical": n_identical,
                "answers": answers,
            },
            flags=["no_effect"] if n_identical == len(pairs) else [],
            usage=usage,
        )

    # ------------------------------------------------------------------ dry run

    def estimate(self, task: ScoreTask) -> Estimate:
        filler = " word" * self.max_new_tokens
        control = control_explanation(
            task.record.unit_id, task.explanation.text, self.controls, self.name
        )
        est = Estimate()
        for i, _, _ in self.pairs(task):
            for text in (task.explanation.text, control):
                msgs = build_steering_messages(text, self.prompts[i], filler, filler)
                est = est + Estimate(1, self.counter.chat(msgs), self.counter.text("A"))
        return est


__all__ = [
    "DEFAULT_PROMPTS",
    "STEERING_VERSION",
    "SteeringScorer",
    "build_steering_messages",
    "generate",
]
