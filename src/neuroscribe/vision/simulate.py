"""Simulating and scoring image units: predict each held-out image's activation from the
explanation alone, then correlate (`image-simulation`).

Routes (`route`; `auto`: pixels when the model's capabilities say `image_input`, else
captions):

- captions, exact (`strategy` exact; what `auto` picks on a local `hf:` model): one
  prompt per explanation whose rows are the held-out images' descriptions, each followed
  by a value slot; the expected value Σ v·p is read from the digit logits at every slot
  with the exact simulator's machinery (`simulator.exact`: token ids built piece by
  piece, the shared prefix KV-cached, 0–9 when the tokenizer has no single "10").
- captions, JSON (API models): the numbered descriptions, a JSON object of values out.
- pixels, JSON (vision-language models): the plain pictures as image parts.

A value the model leaves out or spoils is None: left out of the score (flag
`missing_predictions:N`), never a guess; an explanation none of whose images got a value
is a failure (`OutputError`), not a zero. Per-image simulations are written as
`SequenceSimulation` lines (tokens = [description], true = [pooled activation],
expected = [value]), so the report shows true vs simulated per image and a resumed task
reuses them. The score is the text simulation scorer's (`outcome_from_simulations`:
Pearson over the held-out test images, top and random, bootstrap interval, calibration
on the calibration split), plus `auc` of top vs random test images.

Held-out images come only from the splits' test and calibration folds (`task.heldout`),
in an order shuffled per unit (not per explanation), so a position in the prompt says
nothing about an image's activation.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from neuroscribe.errors import ConfigError, DataError, OutputError
from neuroscribe.llm import discard_cached
from neuroscribe.llm.base import clip_raw
from neuroscribe.prompts.simulate_images import (
    DEFAULT_CAPTIONS_STYLE,
    JSON_SIM_VERSION,
    PIXELS_SIM_VERSION,
    STYLES,
    ImageSimulationPrompt,
    build_captions_sim_prompt,
    build_json_sim_messages,
    build_pixels_sim_messages,
    image_style,
    parse_values_json,
    values_json_schema,
)
from neuroscribe.schema import ImageRef, SequenceSimulation, Usage
from neuroscribe.scorer.base import ScoreOutcome, ScorerParts, ScoreTask
from neuroscribe.scorer.classify import unit_rng
from neuroscribe.scorer.maths import roc_auc
from neuroscribe.scorer.simulation import TYPICAL_EXPLANATION, outcome_from_simulations
from neuroscribe.simulator.base import BaselineCache, SimulatedExcerpt
from neuroscribe.simulator.readout import apply_style, readouts
from neuroscribe.splits import Excerpt
from neuroscribe.stages.base import Estimate

ROUTES = ("auto", "captions", "pixels")
IMAGE_STRATEGIES = ("auto", "exact", "json")
IMAGE_TOKENS_ESTIMATE = 255  # per picture, for dry runs (see vision.explain)
MAX_SIDE = 512


@dataclass(frozen=True)
class ImageItem:
    """One held-out image as a simulator sees it."""

    description: str
    image: ImageRef | None = None


def item_of(x: Excerpt) -> ImageItem:
    return ImageItem(description=x.record.tokens[0], image=x.record.image)


# -- captions, exact (local models) ------------------------------------------------------


def build_image_ids(tokenizer: Any, prompt: ImageSimulationPrompt) -> Any:
    """The prompt as token ids (`simulator.exact.SimulationIds`): the prefix, then one part
    per image ("each") or one part holding every row ("list"), with the slot positions."""
    from neuroscribe.simulator.exact import (
        ExcerptIds,
        SimulationIds,
        encode_after,
        shared_len,
        value_token_ids,
    )

    _, value_ids = value_token_ids(tokenizer, prompt.scale_max)
    prefix = tokenizer(prompt.prefix, add_special_tokens=True)["input_ids"]
    shared = shared_len(tokenizer, prompt.prefix[: prompt.shared_chars], prefix)
    heads = encode_after(tokenizer, "\n", [prompt.row_head(i) for i in range(len(prompt.rows))])
    slot = encode_after(tokenizer, "\t", [f"{prompt.slot}\n"])[0]
    if prompt.layout == "each":
        parts = [ExcerptIds(ids=[*h, *slot], slots=[len(h) - 1]) for h in heads]
    else:
        ids: list[int] = []
        slots: list[int] = []
        for h in heads:
            ids.extend(h)
            slots.append(len(ids) - 1)
            ids.extend(slot)
        parts = [ExcerptIds(ids=ids, slots=slots)]
    return SimulationIds(prefix, parts, prompt.scale_max, value_ids, n_examples=0, shared=shared)


class CaptionsExactSimulator:
    """Captions route on a local model: exact expected values at every image's slot."""

    strategy = "exact"
    route = "captions"

    def __init__(
        self,
        loaded: Any,
        *,
        spec: str,
        prompt_version: str | None = None,
        n_examples: int = 2,
        scale_max: int | None = None,
        batch_size: int | None = None,
    ) -> None:
        from neuroscribe.simulator.exact import value_token_ids

        self.loaded = loaded
        self.spec = spec
        self.style = image_style(prompt_version)
        self.prompt_version = self.style.version
        self.n_examples = n_examples
        self.scale_max = value_token_ids(loaded.tokenizer, scale_max)[0]
        self._batch_size = batch_size
        self._baselines = BaselineCache()

    @classmethod
    def from_llm(cls, llm: Any, **options: Any) -> CaptionsExactSimulator:
        from neuroscribe.llm.wrappers import unwrap

        return cls(unwrap(llm).loaded, spec=llm.spec, **options)

    @property
    def batch_size(self) -> int:
        if self._batch_size is not None:
            return self._batch_size
        return 32 if str(self.loaded.device).startswith("cuda") else 8

    def prompt(self, explanation: str, descriptions: Sequence[str]) -> ImageSimulationPrompt:
        return build_captions_sim_prompt(
            explanation,
            descriptions,
            scale_max=self.scale_max,
            n_examples=self.n_examples,
            version=self.prompt_version,
        )

    def _raw(self, explanation: str, descriptions: Sequence[str]) -> list[SimulatedExcerpt]:
        """One result per image (expected value and distribution), holding the model lock."""
        from neuroscribe.llm.local import release_memory
        from neuroscribe.simulator.exact import (
            head_is_plain_linear,
            slot_logits_cached,
            slot_logits_naive,
            supports_cached,
            to_simulated,
        )

        loaded = self.loaded
        sim = build_image_ids(loaded.tokenizer, self.prompt(explanation, descriptions))
        context = loaded.max_context
        longest = len(sim.prefix) + max((len(p.ids) for p in sim.excerpts), default=0)
        if context is not None and longest > context:
            raise OutputError(
                f"the image simulation prompt needs {longest} tokens, over the model's "
                f"context of {context}; use layout 'each' or fewer held-out images"
            )
        shared = None
        with loaded.lock:
            if not supports_cached(loaded.model):
                logits = slot_logits_naive(loaded.model, sim)
            else:
                plain = loaded.remember("plain_head", lambda: head_is_plain_linear(loaded.model))
                shared = self._shared_cache(sim)
                logits = slot_logits_cached(
                    loaded.model, sim, batch_size=self.batch_size, plain_head=plain, shared=shared
                )
            release_memory()
        results = to_simulated(
            sim,
            logits,
            cached=supports_cached(loaded.model),
            prefix_tokens=len(sim.prefix) - (shared[0] if shared else 0),
        )
        return _per_image(results)

    def _shared_cache(self, sim: Any) -> tuple[int, Any] | None:
        """The KV cache of the explanation-independent prefix, once per model and prompt."""
        from neuroscribe.simulator.exact import prefix_cache

        n = sim.shared
        if n < 16:
            return None
        ids = tuple(sim.prefix[:n])
        memo = self.loaded.remember("image-sim-shared", dict)
        hit = memo.get(hash(ids))
        if hit is None or hit[0] != ids:
            if len(memo) >= 8:
                memo.clear()
            hit = memo[hash(ids)] = (ids, prefix_cache(self.loaded.model, list(ids)))
        return n, hit[1]

    def simulate_sync(self, explanation: str, items: Sequence[ImageItem]) -> list[SimulatedExcerpt]:
        descriptions = [it.description for it in items]
        results = self._raw(explanation, descriptions)
        if self.style.readout == "expected" and self.style.contrast is None:
            return results
        baseline = None
        usage = Usage()
        if self.style.contrast is not None:
            baseline, usage = self._baseline_values(descriptions)
        return apply_style(results, self.style.readout, baseline, usage)

    def _baseline_values(self, descriptions: Sequence[str]) -> tuple[list, Usage]:
        """The contrast explanation's readout per image (cached across explanations)."""
        assert self.style.contrast is not None
        contrast = self.style.contrast

        def compute(keys: list[tuple[str, ...]]) -> tuple[list, Usage]:
            if self.style.layout == "each":
                flat = [k[0] for k in keys]
                return readouts(self._raw(contrast, flat), self.style.readout)
            out, usage = [], Usage()
            for k in keys:  # a list prompt depends on every row: one key per list
                values, used = readouts(self._raw(contrast, list(k)), self.style.readout)
                out.append([v[0] for v in values])
                usage = usage.add(used)
            return out, usage

        if self.style.layout == "each":
            values, usage = self._baselines.get_or_compute([[d] for d in descriptions], compute)
            return values, usage
        (row,), usage = self._baselines.get_or_compute([list(descriptions)], compute)
        return [[v] for v in row], usage

    async def simulate(
        self, explanation: str, items: Sequence[ImageItem]
    ) -> list[SimulatedExcerpt]:
        from neuroscribe.llm.local import queued_for_model

        return await queued_for_model(self.loaded, self.simulate_sync, explanation, list(items))


def _per_image(results: Sequence[SimulatedExcerpt]) -> list[SimulatedExcerpt]:
    """One result per image, whichever layout the prompt had (a list is one excerpt)."""
    out: list[SimulatedExcerpt] = []
    for r in results:
        dists = r.distributions or [None] * len(r.expected)
        for j, (e, d) in enumerate(zip(r.expected, dists, strict=True)):
            usage = r.usage if j == 0 else Usage()
            out.append(SimulatedExcerpt([e], [d], r.scale_max, usage))
    return out


# -- JSON (API models: captions; VLMs: pixels) ---------------------------------------------


class JsonImageSimulator:
    """Captions or pixels through a chat model, a JSON object of values per prompt."""

    strategy = "json"

    def __init__(
        self,
        llm: Any,
        *,
        route: str,
        run_dir: str | Path | None = None,
        scale_max: int = 10,
        n_examples: int = 2,
        max_attempts: int = 2,
        batch_size: int = 20,
        json_mode: str | None = "json_schema",
        max_side: int = MAX_SIDE,
    ) -> None:
        if route not in ("captions", "pixels"):
            raise ConfigError(f"unknown image simulation route {route!r}")
        if route == "pixels" and run_dir is None:
            raise ConfigError(
                "the pixels route opens the held-out images: give the scorer the run "
                "directory (run_dir)"
            )
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
        self.llm = llm
        self.spec = llm.spec
        self.route = route
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.scale_max = scale_max
        self.n_examples = n_examples
        self.max_attempts = max_attempts
        self.batch_size = batch_size
        self.json_mode = json_mode
        self.max_side = max_side
        self.prompt_version = PIXELS_SIM_VERSION if route == "pixels" else JSON_SIM_VERSION
        self._urls: OrderedDict[str, str] = OrderedDict()

    def messages(self, explanation: str, items: Sequence[ImageItem]) -> list[Any]:
        if self.route == "pixels":
            urls = [self.url(it) for it in items]
            return build_pixels_sim_messages(explanation, urls, scale_max=self.scale_max)
        return build_json_sim_messages(
            explanation,
            [it.description for it in items],
            scale_max=self.scale_max,
            n_examples=self.n_examples,
        )

    def url(self, item: ImageItem) -> str:
        """The plain picture as a data URL (no activation map: that is the answer)."""
        from neuroscribe.rundir import RunDir
        from neuroscribe.vision.store import image_data_url

        ref = item.image
        if ref is None:
            raise DataError("the pixels route needs image excerpts (no image reference)")
        if ref.sha256 not in self._urls:
            assert self.run_dir is not None
            pil = RunDir(self.run_dir).images.open(ref)
            if max(pil.size) > self.max_side:
                pil.thumbnail((self.max_side, self.max_side))
            self._urls[ref.sha256] = image_data_url(pil)
            while len(self._urls) > 512:  # a unit's held-out images are reused; bounded
                self._urls.popitem(last=False)
        return self._urls[ref.sha256]

    def response_format(self, n: int) -> dict[str, Any] | None:
        schema = values_json_schema(n, self.scale_max)
        if self.json_mode == "json_schema":
            return {"type": "json_schema", "json_schema": {"name": "activations", "schema": schema}}
        if self.json_mode == "json_object":
            return {"type": "json_object", "schema": schema}
        return None

    async def _batch(
        self, explanation: str, items: Sequence[ImageItem]
    ) -> tuple[list[float | None], Usage, str]:
        messages = self.messages(explanation, items)
        usage = Usage()
        raw = ""
        values: list[float | None] = [None] * len(items)
        for attempt in range(self.max_attempts):
            resp = await self.llm.chat(
                messages,
                temperature=0.0 if attempt == 0 else 0.7,
                max_tokens=8 * len(items) + 32,
                response_format=self.response_format(len(items)),
            )
            usage = usage.add(resp.usage)
            raw = resp.choices[0].text if resp.choices else ""
            values = parse_values_json(raw, len(items), self.scale_max)
            if any(v is not None for v in values):
                break
            discard_cached(self.llm, resp)  # a retry must not get the same answer back
        return values, usage, raw

    async def simulate(
        self, explanation: str, items: Sequence[ImageItem]
    ) -> list[SimulatedExcerpt]:
        k = self.batch_size
        batches = [list(items[i : i + k]) for i in range(0, len(items), k)]
        done = await asyncio.gather(*(self._batch(explanation, b) for b in batches))
        out: list[SimulatedExcerpt] = []
        last_raw = ""
        for values, usage, raw in done:
            last_raw = raw or last_raw
            for j, v in enumerate(values):
                out.append(
                    SimulatedExcerpt([v], None, self.scale_max, usage if j == 0 else Usage())
                )
        if items and all(r.expected[0] is None for r in out):
            total = Usage()
            for r in out:
                total = total.add(r.usage)
            raise OutputError(
                f"no usable value for any of {len(items)} images after {self.max_attempts} "
                "attempts per prompt",
                raw=clip_raw(last_raw),
                usage=total,
            )
        return out


# -- choosing the route and the strategy ---------------------------------------------------


def choose_route(route: str, image_input: bool) -> str:
    if route not in ROUTES:
        raise ConfigError(f"unknown image simulation route {route!r}; choose one of {ROUTES}")
    if route == "auto":
        return "pixels" if image_input else "captions"
    return route


def choose_image_strategy(route: str, strategy: str, exact_logits: bool) -> str:
    """exact (captions on an in-process model) or json; other text strategies do not
    apply to images."""
    if strategy not in IMAGE_STRATEGIES:
        raise ConfigError(
            f"image simulation runs the exact (local hf: model) or json strategy, not "
            f"{strategy!r}; choose one of {', '.join(IMAGE_STRATEGIES)}"
        )
    if route == "pixels":
        if strategy == "exact":
            raise ConfigError("the pixels route answers in JSON: use strategy json or auto")
        return "json"
    if strategy == "exact" and not exact_logits:
        raise ConfigError(
            "the exact strategy needs a model whose logits run in this process (hf:...)"
        )
    if strategy == "auto":
        return "exact" if exact_logits else "json"
    return strategy


def _version(route: str, strategy: str, requested: str | None) -> str:
    if route == "captions" and strategy == "exact":
        if requested is not None and requested not in STYLES:
            raise ConfigError(
                f"{requested!r} is not an image simulation prompt; choose one of "
                f"{', '.join(STYLES)}"
            )
        return requested or DEFAULT_CAPTIONS_STYLE
    return PIXELS_SIM_VERSION if route == "pixels" else JSON_SIM_VERSION


def _json_mode(caps: Any) -> str | None:
    if caps.json_schema:
        return "json_schema"
    return "json_object" if caps.json_object else None


# -- the scorer ----------------------------------------------------------------------------


class ImageSimulationScorer(ScorerParts):
    """`image-simulation`: simulate each held-out image, correlate with the truth."""

    name = "image-simulation"
    stage = "simulate-images"
    primary_metric = "score"
    OPTIONS: ClassVar[tuple[str, ...]] = ("route", "batch_size", "max_side")
    image_routes: ClassVar[bool] = True  # the facade passes score.image_route as `route`

    def __init__(
        self,
        simulator: Any | None,
        *,
        spec: str,
        route: str,
        strategy: str,
        prompt_version: str,
        scale_max: int,
        n_examples: int = 2,
        seed: int = 0,
    ) -> None:
        self.simulator = simulator
        self.model = spec
        self.route = route
        self.strategy = strategy
        self.prompt_version = prompt_version
        self.scale_max = scale_max
        self.n_examples = n_examples
        self.seed = seed
        self._counter: Any = None

    @classmethod
    async def build(
        cls,
        llm: Any,
        *,
        strategy: str = "auto",
        n_examples: int | None = None,
        prompt_version: str | None = None,
        run_dir: str | Path | None = None,
        route: str = "auto",
        batch_size: int | None = None,
        max_side: int = MAX_SIDE,
        **_: Any,
    ) -> ImageSimulationScorer:
        """The live scorer: the model's capabilities pick the route and strategy."""
        caps = await llm.capabilities()
        chosen = choose_route(route, caps.image_input)
        strat = choose_image_strategy(chosen, strategy, caps.exact_logits)
        version = _version(chosen, strat, prompt_version)
        n_ex = 2 if n_examples is None else n_examples
        sim: Any
        if strat == "exact":
            sim = CaptionsExactSimulator.from_llm(
                llm, prompt_version=version, n_examples=n_ex, batch_size=batch_size
            )
        else:
            sim = JsonImageSimulator(
                llm,
                route=chosen,
                run_dir=run_dir,
                n_examples=n_ex,
                batch_size=batch_size or 20,
                json_mode=_json_mode(caps),
                max_side=max_side,
            )
        return cls(
            sim,
            spec=llm.spec,
            route=chosen,
            strategy=strat,
            prompt_version=version,
            scale_max=sim.scale_max,
            n_examples=n_ex,
        )

    @classmethod
    def planned(
        cls,
        spec: str,
        *,
        probe: dict | None = None,
        strategy: str = "auto",
        n_examples: int | None = None,
        prompt_version: str | None = None,
        route: str = "auto",
        **_: Any,
    ) -> tuple[ImageSimulationScorer, str]:
        """A scorer for dry runs: route, strategy and scale from what is known offline."""
        from neuroscribe.llm.capabilities import Capabilities
        from neuroscribe.llm.registry import backend_info

        note = ""
        caps = backend_info(spec).offline_capabilities(spec)
        if caps is None and probe:
            caps = Capabilities.from_manifest(probe)
        if caps is None:
            caps = Capabilities(json_schema=True)
            note = "image simulation on an unprobed API model: planned as captions with JSON"
        chosen = choose_route(route, caps.image_input)
        strat = choose_image_strategy(chosen, strategy, caps.exact_logits)
        scale = caps.scale_max if strat == "exact" else 10
        scorer = cls(
            None,
            spec=spec,
            route=chosen,
            strategy=strat,
            prompt_version=_version(chosen, strat, prompt_version),
            scale_max=scale,
            n_examples=2 if n_examples is None else n_examples,
        )
        return scorer, note

    def config(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "simulator": self.model,
            "route": self.route,
            "strategy": self.strategy,
            "prompt_version": self.prompt_version,
            "scale_max": self.scale_max,
            "n_examples": self.n_examples,
        }

    def comparable(self) -> dict[str, Any]:
        return {
            "scorer": self.name,
            "simulator": self.model,
            "route": self.route,
            "strategy": self.strategy,
            "prompt_version": self.prompt_version,
        }

    @staticmethod
    def ordered(task: ScoreTask, excerpts: Sequence[Excerpt]) -> list[Excerpt]:
        """The excerpts in the prompt's order: shuffled per unit, the same for every
        explanation of it (the folds list top images first)."""
        shuffled = list(excerpts)
        unit_rng(task, "image-simulation:order").shuffle(shuffled)
        return shuffled

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.simulator is None:
            raise ConfigError("this image simulation scorer was built for planning only")
        e = task.explanation
        stored = {s.excerpt_id: s for s in task.stored if isinstance(s, SequenceSimulation)}
        todo = self.ordered(task, [x for x in task.heldout if x.excerpt_id not in stored])
        new: list[SequenceSimulation] = []
        usage = Usage()
        if todo:
            results = await self.simulator.simulate(e.text, [item_of(x) for x in todo])
            for x, r in zip(todo, results, strict=True):
                usage = usage.add(r.usage)
                new.append(
                    image_line(
                        task,
                        x,
                        r.expected,
                        distributions=r.distributions if r.distributions else None,
                        scale_max=r.scale_max,
                        strategy=self.strategy,
                        simulator=self.model,
                        prompt_version=self.prompt_version,
                        usage=r.usage,
                    )
                )
        by_id = {**stored, **{s.excerpt_id: s for s in new}}
        sims = [by_id[x.excerpt_id] for x in task.heldout]
        outcome = image_outcome(sims, self.seed, usage)
        outcome.details["route"] = self.route
        outcome.writes = {"simulations": new} if new else {}
        return outcome

    def estimate(self, task: ScoreTask) -> Estimate:
        stored = {s.excerpt_id for s in task.stored if isinstance(s, SequenceSimulation)}
        todo = [x for x in task.heldout if x.excerpt_id not in stored]
        if not todo:
            return Estimate()
        text = task.explanation.text or TYPICAL_EXPLANATION
        descs = [x.record.tokens[0] for x in todo]
        if self.strategy == "exact":
            # One forward pass over the prefix and every row (a contrast style: two).
            style = image_style(self.prompt_version)
            prompt = build_captions_sim_prompt(
                text,
                descs,
                scale_max=self.scale_max,
                n_examples=self.n_examples,
                version=self.prompt_version,
            )
            passes = 2 if style.contrast is not None else 1
            return Estimate(passes, passes * self.counter.text(prompt.text()), 0)
        k = getattr(self.simulator, "batch_size", 20)
        est = Estimate()
        for i in range(0, len(todo), k):
            chunk = descs[i : i + k]
            if self.route == "pixels":
                msgs = build_pixels_sim_messages(text, ["data:image/png;base64,"] * len(chunk))
                prompt = self.counter.chat(msgs) + IMAGE_TOKENS_ESTIMATE * len(chunk)
            else:
                msgs = build_json_sim_messages(text, chunk, n_examples=self.n_examples)
                prompt = self.counter.chat(msgs)
            est = est + Estimate(1, prompt, 6 * len(chunk) + 2)
        return est


def image_line(
    task: ScoreTask, x: Excerpt, expected: list[float], **fields: Any
) -> SequenceSimulation:
    """One picture's stored line (a simulation, or a similarity: `strategy` says which):
    the task's explanation and configuration, the excerpt's identity and true value, and
    `fields` (strategy, simulator, prompt_version, scale_max...)."""
    e = task.explanation
    return SequenceSimulation(
        explanation_id=e.explanation_id,
        unit_id=e.unit_id,
        excerpt_id=x.excerpt_id,
        kind=x.kind,  # type: ignore[arg-type]
        role=x.role,  # type: ignore[arg-type]
        tokens=list(x.record.tokens),
        true_activations=list(x.record.activations),
        expected_activations=expected,
        config_hash=task.config_hash,
        **fields,
    )


def image_outcome(sims: Sequence[SequenceSimulation], seed: int, usage: Usage) -> ScoreOutcome:
    """The simulation score of per-image simulations, plus the AUC of top vs random."""
    if not any(v is not None for s in sims if s.role == "test" for v in s.expected_activations):
        raise OutputError(
            f"no held-out test image got a simulated value ({len(sims)} images)", usage=usage
        )
    outcome = outcome_from_simulations(sims, seed)
    test = [s for s in sims if s.role == "test" and s.expected_activations[0] is not None]
    outcome.metrics["auc"] = roc_auc(
        [s.kind == "top" for s in test], [float(s.expected_activations[0] or 0.0) for s in test]
    )
    outcome.details["n_images"] = len(sims)
    outcome.usage = usage
    return outcome


__all__ = [
    "IMAGE_STRATEGIES",
    "ROUTES",
    "CaptionsExactSimulator",
    "ImageItem",
    "ImageSimulationScorer",
    "JsonImageSimulator",
    "build_image_ids",
    "choose_image_strategy",
    "choose_route",
    "image_line",
    "image_outcome",
]
