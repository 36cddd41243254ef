"""The library facade: `run(config)` and one function per stage.

It owns what every caller would otherwise repeat: building models from specs (with the
job's cache, rate limits and prices), the preflight check of API models, closing them,
recording the embedded model when a run has none, the summary after each stage and the
budget stop. The CLI (and the HTTP service) map their inputs to a `RunConfig` and call
these. Every stage function has an async form (`*_async`), callable from a running event
loop, and a plain one that runs its own loop.

    from neuroscribe import api
    from neuroscribe.config import RunConfig

    summaries = api.run(RunConfig(run_dir="myrun"))
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from neuroscribe.config import RunConfig
from neuroscribe.engine import JobSummary, StageEstimate, estimate_plan, run_stage
from neuroscribe.errors import BudgetExceeded, ConfigError, DataError
from neuroscribe.explainer.registry import explainer_factory
from neuroscribe.rundir import RunDir
from neuroscribe.schema import NeuronRecord
from neuroscribe.scorer.registry import scorer_factory
from neuroscribe.scorer.simulation import TYPICAL_EXPLANATION
from neuroscribe.stages.explain import ExplainStage
from neuroscribe.stages.score import RescoreStage, ScoreStage


@dataclass
class Hooks:
    """How a caller hears about progress: a message line, a finished stage."""

    message: Callable[[str], None] = lambda _msg: None
    stage: Callable[[JobSummary], None] = lambda _summary: None


# ---------------------------------------------------------------- models


def make_model(spec: str, config: RunConfig, timeout: float) -> Any:
    """The backend for `spec` with this job's endpoint, limits, prices and cache.

    The layers (cache, rate limits, usage and prices) wrap every backend alike; only
    API backends take the endpoint, the timeout and the connection count.
    """
    from neuroscribe.llm import make_llm
    from neuroscribe.llm.pricing import load_prices
    from neuroscribe.llm.registry import backend_info

    jobs = config.jobs
    layers: dict[str, Any] = {
        "rpm": jobs.rpm,
        "tpm": jobs.tpm,
        "prices": load_prices(jobs.prices),
        "cache": RunDir(config.run_dir).cache_path if jobs.cache else None,
    }
    if backend_info(spec).local:
        return make_llm(spec, **layers)
    key = config.endpoint.api_key
    return make_llm(
        spec,
        base_url=config.endpoint.base_url,
        api_key=key.get_secret_value() if key is not None else None,
        timeout_s=timeout,
        concurrency=jobs.concurrency,
        **layers,
    )


@asynccontextmanager
async def open_model(spec: str, config: RunConfig, timeout: float) -> AsyncIterator[Any]:
    """Build, preflight (unreachable server, 401, unknown model: one clear error), close."""
    from neuroscribe.llm import preflight

    llm = make_model(spec, config, timeout)
    try:
        await preflight(llm)
        yield llm
    finally:
        await llm.aclose()


@asynccontextmanager
async def driver_model(spec: str, config: RunConfig, timeout: float) -> AsyncIterator[Any]:
    """The model a job's stage is built on in this process: `open_model`'s.

    Under `--ray` the workers hold the models and this process only plans, so a local
    model is not loaded here (None: the stage is built as a dry run builds it, and each
    worker checks that its own has the same configuration hash); an API client is still
    opened, for its preflight and its probe.
    """
    from neuroscribe.llm.registry import backend_info

    if config.jobs.ray is not None and backend_info(spec).local:
        yield None
        return
    async with open_model(spec, config, timeout) as llm:
        yield llm


@contextmanager
def ray_connection(config: RunConfig) -> Iterator[None]:
    """Connected to the cluster `config.jobs.ray` names for the `with` body (nothing
    without it; an existing connection is kept, so nested stages share one)."""
    from neuroscribe.distributed.cluster import check_workers, ray_cluster

    check_workers(config.jobs.ray, config.jobs.ray_workers)
    if config.jobs.ray is None:
        yield
        return

    with ray_cluster(config.jobs.ray):
        yield


def check_prices(config: RunConfig, specs: Sequence[str]) -> None:
    """A budget needs every API model's price: refuse before anything is sent."""
    from neuroscribe.llm.pricing import load_prices, price_for
    from neuroscribe.llm.registry import backend_info

    if config.jobs.max_cost is None:
        return
    table = load_prices(config.jobs.prices)
    for spec in specs:
        if backend_info(spec).needs_pricing and price_for(spec, table) is None:
            raise ConfigError(
                f"--max-cost needs the price of model {spec!r}, which is not in the price "
                'table: give one with --prices FILE (JSON: {"' + spec + '": {"input": USD '
                'per 1M tokens, "output": USD per 1M tokens}})'
            )


# ---------------------------------------------------------------- units


def select_units(
    records: Sequence[NeuronRecord], patterns: Sequence[str] | None, max_units: int | None
) -> list[NeuronRecord]:
    """Units whose id matches any pattern: an exact id first (so ids holding glob
    characters such as `[` select themselves), else a glob like `model/3/*`."""
    chosen = list(records)
    if patterns:
        ids = {r.unit_id for r in chosen}
        exact = {p for p in patterns if p in ids}
        globs = [p for p in patterns if p not in exact]
        chosen = [
            r
            for r in chosen
            if r.unit_id in exact or any(fnmatch.fnmatchcase(r.unit_id, p) for p in globs)
        ]
        if not chosen:
            raise DataError(f"no unit matches {', '.join(patterns)}")
    if max_units is not None:
        chosen = chosen[:max_units]
    return chosen


def load_units(config: RunConfig) -> list[NeuronRecord]:
    records = RunDir(config.run_dir).records()
    return select_units(records, config.units.patterns, config.units.max_units)


# What the text pipeline's defaults become for image units (vision runs): the same stages
# with the explainer and scorers that read pictures (neuroscribe.vision).
IMAGE_ROUTES = {"token-rows": "image", "simulation": "image-simulation"}
IMAGE_CONTRAST = 3  # low-activating random pictures shown to an image unit's explainer


def modality(records: Sequence[NeuronRecord]) -> str:
    """`text` or `image`: what the selected units' excerpts are (never a mix)."""
    kinds = {r.modality for r in records}
    if len(kinds) > 1:
        raise DataError("the selected units mix text and image units; select one kind with --units")
    return kinds.pop() if kinds else "text"


def routed(config: RunConfig, records: Sequence[NeuronRecord]) -> RunConfig:
    """`config` for these units: for image units, the text defaults (the token-row
    explainer, the simulation scorer, also as best-of-k's selection scorer) are replaced
    by their image counterparts; an explicit choice (e.g. clip-similarity) is kept."""
    if modality(records) != "image":
        return config
    ex, sc = config.explain, config.score
    select = ex.select.model_copy(
        update={"scorer": IMAGE_ROUTES.get(ex.select.scorer, ex.select.scorer)}
    )
    ex = ex.model_copy(
        update={"explainer": IMAGE_ROUTES.get(ex.explainer, ex.explainer), "select": select}
    )
    sc = sc.model_copy(update={"scorer": IMAGE_ROUTES.get(sc.scorer, sc.scorer)})
    splits = config.splits
    if splits.n_contrast is None:  # pictures the unit ignores, shown beside its top ones
        splits = splits.model_copy(update={"n_contrast": IMAGE_CONTRAST})
    return config.model_copy(update={"explain": ex, "score": sc, "splits": splits})


def record_if_missing(config: RunConfig, hooks: Hooks | None = None) -> bool:
    """Record the embedded model over the built-in corpus when the run has no records."""
    run = RunDir(config.run_dir)
    if run.has_records():
        return False
    from neuroscribe.datasets.record import record_run

    hooks = hooks or Hooks()
    rec = config.record
    hooks.message(
        f"{run.root} has no records: recording {rec.units} MLP neurons of layers "
        f"{rec.layers} of the embedded SmolLM2 over {rec.tokens} tokens of the built-in corpus"
    )
    summary = record_run(run.root, layers=rec.layers, max_units=rec.units, max_tokens=rec.tokens)
    hooks.message(
        f"recorded {summary.n_units} units over {summary.n_tokens} tokens "
        f"in {summary.stream_seconds + summary.finalize_seconds:.0f} s"
    )
    return True


# ---------------------------------------------------------------- stages


def explain_stage(
    config: RunConfig,
    records: Sequence[NeuronRecord],
    llm: Any,
    *,
    selector: Any = None,
    probe: Any = None,
) -> ExplainStage:
    cls = explainer_factory(config.explain.explainer)
    extra: dict[str, Any] = {}
    if getattr(cls, "selects", False):
        # Explainers that choose on the validation split: what they choose with. A dry
        # run (llm None) gets the selection scorer as planned, with no model.
        sp = config.splits
        extra = {
            "select": config.explain.select,
            "validation": (sp.n_validation_top, sp.n_validation_random),
            "selector": selector if selector is not None else planned_selector(config),
            "probe": probe,
        }
    if getattr(cls, "needs_run_dir", False):
        extra["run_dir"] = config.run_dir  # e.g. the image explainer opens the run's pictures
    if getattr(cls, "image_routes", False):
        extra["route"] = config.explain.image_route
    if llm is None:
        explainer = cls(None, config.explain.settings, spec=config.explain.model, **extra)
    else:
        explainer = cls(llm, config.explain.settings, **extra)
    return ExplainStage(explainer, records, config.splits)


def selection_spec(config: RunConfig) -> str:
    """The selection scorer's model: its own, else the score section's (the plain
    embedded model for a selector that does not simulate, as for scoring)."""
    from neuroscribe.config import model_for_scorer

    if config.explain.select.model:
        return config.explain.select.model
    return model_for_scorer(config.explain.select.scorer, config.score.model)


def _selection_options(config: RunConfig) -> dict[str, Any]:
    # The score section's simulation options: the selector simulates as scoring does.
    sec = config.score
    return {
        "strategy": sec.strategy,
        "n_examples": sec.n_examples,
        "prompt_version": sec.prompt,
    }


def _route(factory: Any, config: RunConfig) -> dict[str, Any]:
    """The score section's options a scorer declares it takes: `route` for the scorers
    that see pictures one way or another (image units); `readout` for the yes/no
    classifiers (detection, fuzzing); `other_units` (and the run they come from) for
    detection's other-unit negatives. Scorers that do not declare an
    option never get it (not every `build`/`planned` takes **kwargs)."""
    out: dict[str, Any] = {}
    if getattr(factory, "image_routes", False):
        out["route"] = config.score.image_route
    if getattr(factory, "one_at_a_time", False) and config.score.readout != "auto":
        out["readout"] = config.score.readout
    if getattr(factory, "takes_other_units", False) and config.score.other_unit_negatives:
        out["other_units"] = config.score.other_unit_negatives
        out["run_dir"] = config.run_dir
    return out


def planned_selector(config: RunConfig) -> Any:
    """The selector as a dry run plans it (no model opened, no call sent)."""
    from neuroscribe.explainer.select import Selector

    scorer, _ = _planned(config, config.explain.select.scorer, selection_spec(config))
    return Selector(scorer)


@asynccontextmanager
async def explainer_parts(config: RunConfig, llm: Any) -> AsyncIterator[dict[str, Any]]:
    """The live selector (and, for revision, the subject-model probe) of a choosing
    explainer, opened for the explain stage and closed after it; {} for the others."""
    cls = explainer_factory(config.explain.explainer)
    if not getattr(cls, "selects", False):
        yield {}
        return
    from neuroscribe.explainer.select import Selector

    spec = selection_spec(config)
    check_prices(config, [spec])
    async with AsyncExitStack() as stack:
        sel_llm = llm
        if spec != config.explain.model:
            sel_llm = await stack.enter_async_context(
                open_model(spec, config, config.score.timeout)
            )
        factory = scorer_factory(config.explain.select.scorer)
        scorer = await factory.build(
            sel_llm,
            **_selection_options(config),
            **({"run_dir": config.run_dir} | _route(factory, config)),
        )
        probe = None
        if getattr(cls, "probes_subject", False):
            from neuroscribe.datasets.probe import UnitProbe

            probe = UnitProbe(run_dir=config.run_dir)
        yield {"selector": Selector(scorer), "probe": probe}


def _finish(run: RunDir, summary: JobSummary, config: RunConfig, hooks: Hooks) -> JobSummary:
    run.write_summary({summary.stage: summary.as_dict()})
    hooks.stage(summary)
    if summary.stopped_for_budget:
        raise BudgetExceeded(
            f"budget reached: stopped {summary.stage} with {summary.remaining} units left "
            f"(--max-cost ${config.jobs.max_cost:.4f}); the work done is saved. Rerun with a "
            "higher --max-cost to continue"
        )
    return summary


async def _run(stage: Any, config: RunConfig, kind: str | None = None) -> JobSummary:
    """Run `stage` on the engine: in this process, or with `kind` ("explain", "score")
    and `--ray`, its items done by a pool of Ray workers (the engine, and so planning,
    writing, failures and the budget, stay here)."""
    from neuroscribe.llm.pricing import load_prices

    jobs = config.jobs
    run = RunDir(config.run_dir)
    options: dict[str, Any] = {
        "retry_failed": jobs.retry_failed,
        "max_cost": jobs.max_cost,
        "show_progress": jobs.show_progress,
        "prices": load_prices(jobs.prices) if jobs.max_cost is not None else None,
    }
    if kind is None or jobs.ray is None:
        return await run_stage(stage, run, concurrency=jobs.concurrency, **options)
    from neuroscribe.distributed.jobs import RayExecutor

    async with RayExecutor(kind, config, stage) as executor:
        try:
            summary = await run_stage(
                stage, run, concurrency=executor.concurrency, executor=executor, **options
            )
        finally:
            if executor.probes:  # what the workers' models were found to do
                cfg = {"config_hash": stage.config_hash, **stage.config()}
                run.update_manifest(stage.name, cfg, probes=executor.probes)
    summary.details.update(executor.report())
    summary.warnings += executor.warnings()
    return summary


async def explain_async(
    config: RunConfig, records: Sequence[NeuronRecord] | None = None, hooks: Hooks | None = None
) -> JobSummary:
    """Explain every selected unit (explanations.jsonl)."""
    hooks = hooks or Hooks()
    check_prices(config, [config.explain.model])
    records = load_units(config) if records is None else records
    config = routed(config, records)
    with RunDir(config.run_dir).lock(), ray_connection(config):
        async with driver_model(config.explain.model, config, config.explain.timeout) as llm:
            # Under --ray the selection model and probe live on the workers; this process
            # plans with the selector a dry run plans with.
            parts = nullcontext({}) if config.jobs.ray else explainer_parts(config, llm)
            async with parts as extra:
                stage = explain_stage(config, records, llm, **extra)
                summary = await _run(stage, config, "explain")
        return _finish(RunDir(config.run_dir), summary, config, hooks)


async def build_scorer(llm: Any, config: RunConfig) -> Any:
    """The score section's scorer on `llm` (an open model), as every caller builds it."""
    sec = config.score
    factory = scorer_factory(sec.scorer)
    return await factory.build(
        llm,
        strategy=sec.strategy,
        n_examples=sec.n_examples,
        prompt_version=sec.prompt,
        # run_dir: where output-side scorers find the subject model.
        **({"run_dir": config.run_dir} | _route(factory, config)),
    )


async def score_async(
    config: RunConfig, records: Sequence[NeuronRecord] | None = None, hooks: Hooks | None = None
) -> JobSummary:
    """Score every explanation of the selected units with the configured scorer."""
    hooks = hooks or Hooks()
    check_prices(config, [config.score.model])
    records = load_units(config) if records is None else records
    config = routed(config, records)
    sec = config.score
    scorer_factory(sec.scorer)  # an unknown or unloadable scorer fails before any model opens
    with RunDir(config.run_dir).lock(), ray_connection(config):
        async with driver_model(sec.model, config, sec.timeout) as llm:
            scorer = planned_scorer(config)[0] if llm is None else await build_scorer(llm, config)
            _record_check(RunDir(config.run_dir), scorer)
            summary = await _run(ScoreStage(scorer, records, config.splits), config, "score")
        summary.details.update(
            {k: getattr(scorer, k) for k in ("strategy", "scale_max") if hasattr(scorer, k)}
        )
        return _finish(RunDir(config.run_dir), summary, config, hooks)


def planned_scorer(config: RunConfig) -> tuple[Any, str]:
    """The score section's scorer as a dry run plans it (no model opened, no call sent),
    with its planning note."""
    return _planned(config, config.score.scorer, config.score.model)


def _planned(config: RunConfig, name: str, spec: str) -> tuple[Any, str]:
    """Scorer `name` on `spec` as planned, with the probe the run's manifest kept for it."""
    manifest = RunDir(config.run_dir).manifest()
    probe = manifest.probes.get(spec) if manifest else None
    factory = scorer_factory(name)
    return factory.planned(
        spec, probe=probe, **_selection_options(config), **_route(factory, config)
    )


def parse_scorers(text: str) -> list[tuple[str, str | None]]:
    """`"simulation,detection,embedding=hf:DIR"` → [(scorer, model or None), ...].

    A scorer may name its own model after `=`; otherwise it uses the score section's
    model. Names are checked against the registry here, before anything runs.
    """
    from neuroscribe.scorer.registry import SCORERS

    out: list[tuple[str, str | None]] = []
    for part in text.split(","):
        name, _, model = part.strip().partition("=")
        name, model = name.strip(), model.strip()
        if not name:
            continue
        if name not in SCORERS:
            raise ConfigError(
                f"--scorer: unknown scorer {name!r}; choose from {', '.join(SCORERS)}"
            )
        if any(n == name for n, _ in out):
            raise ConfigError(f"scorer {name!r} is named twice")
        out.append((name, model or None))
    if not out:
        raise ConfigError("no scorer named: give one or more, e.g. simulation,detection")
    return out


# Scorers that run a local sentence-embedding model whatever the shared model is.
EMBEDDING_SCORERS = ("embedding", "caption-similarity")


def scorer_configs(
    config: RunConfig, scorers: Sequence[tuple[str, str | None]], hooks: Hooks | None = None
) -> list[RunConfig]:
    """One RunConfig per scorer (its own score section, so its own config hash).

    The embedding scorer needs a local sentence-embedding model: when the shared model is
    an API model and no `embedding=MODEL` is given, it uses its offline default (said in a
    message) rather than refusing the whole multi-scorer job.
    """
    from neuroscribe.config import ScoreSection
    from neuroscribe.llm.base import EMBEDDED_SPEC
    from neuroscribe.llm.registry import backend_info

    hooks = hooks or Hooks()
    out = []
    for name, model in scorers:
        data = {**config.score.model_dump(), "scorer": name}
        if model is not None:
            data["model"] = model
        elif name in EMBEDDING_SCORERS and not backend_info(config.score.model).local:
            data["model"] = EMBEDDED_SPEC
            hooks.message(
                f"{name} scorer: {config.score.model} is an API model; using the offline "
                f"default all-MiniLM-L6-v2 (name another with {name}=hf:MODEL)"
            )
        out.append(config.model_copy(update={"score": ScoreSection.model_validate(data)}))
    return out


async def score_many_async(
    config: RunConfig,
    scorers: Sequence[tuple[str, str | None]],
    records: Sequence[NeuronRecord] | None = None,
    hooks: Hooks | None = None,
) -> list[JobSummary]:
    """Score every explanation with each scorer in turn (each resumes on its own)."""
    configs = scorer_configs(config, scorers, hooks)
    records = load_units(config) if records is None else records
    with ray_connection(config):  # one cluster connection for every scorer
        return [await score_async(c, records, hooks) for c in configs]


def score_many(
    config: RunConfig, scorers: Sequence[tuple[str, str | None]], hooks: Hooks | None = None
) -> list[JobSummary]:
    return asyncio.run(score_many_async(config, scorers, hooks=hooks))


def check_key(simulator: str, strategy: str, prompt_version: str) -> str:
    return f"{simulator}|{strategy}|{prompt_version}"


def _record_check(run: RunDir, scorer: Any) -> None:
    """Put the simulator's stored ground-truth check (if any) in the manifest."""
    if getattr(scorer, "name", None) != "simulation":
        return
    from neuroscribe.groundtruth.store import find_check

    entry = find_check(scorer.model, scorer.strategy, scorer.prompt_version)
    if entry is not None:
        run.record_simulator_check(
            check_key(scorer.model, scorer.strategy, scorer.prompt_version), entry
        )


async def rescore_async(
    config: RunConfig, sim_config_hash: str | None = None, hooks: Hooks | None = None
) -> JobSummary:
    """Correlation scores for stored simulations without one (no model involved)."""
    with RunDir(config.run_dir).lock():
        summary = await _run(RescoreStage(sim_config_hash=sim_config_hash), config)
        return _finish(RunDir(config.run_dir), summary, config, hooks or Hooks())


async def run_async(
    config: RunConfig,
    hooks: Hooks | None = None,
    scorers: Sequence[tuple[str, str | None]] | None = None,
) -> list[JobSummary]:
    """Record if missing, explain, then score: the whole job, resumable at any point.

    `scorers` (see `parse_scorers`): score with each in turn instead of the score
    section's one scorer; the summaries are the explain stage's, then one per scorer.
    """
    hooks = hooks or Hooks()
    configs = scorer_configs(config, scorers, hooks) if scorers else [config]
    check_prices(config, [config.explain.model, *(c.score.model for c in configs)])
    # One lock (and, with --ray, one cluster connection) for all three stages.
    with RunDir(config.run_dir).lock(), ray_connection(config):
        record_if_missing(config, hooks)
        records = load_units(config)
        configs = [routed(c, records) for c in configs]
        explained = await explain_async(config, records, hooks)
        scored = [await score_async(c, records, hooks) for c in configs]
        return [explained, *scored]


def run(
    config: RunConfig,
    hooks: Hooks | None = None,
    scorers: Sequence[tuple[str, str | None]] | None = None,
) -> list[JobSummary]:
    return asyncio.run(run_async(config, hooks, scorers))


def explain(config: RunConfig, hooks: Hooks | None = None) -> JobSummary:
    return asyncio.run(explain_async(config, hooks=hooks))


def score(config: RunConfig, hooks: Hooks | None = None) -> JobSummary:
    return asyncio.run(score_async(config, hooks=hooks))


def rescore(config: RunConfig, hooks: Hooks | None = None) -> JobSummary:
    return asyncio.run(rescore_async(config, hooks=hooks))


# ---------------------------------------------------------------- dry run


def estimate(
    config: RunConfig, stages: Sequence[str] = ("explain", "score")
) -> list[StageEstimate]:
    """What the stages would send (requests, tokens, cost), planned exactly as a real run
    plans them and counted with the models' tokenizers; nothing is sent or written."""
    from neuroscribe.llm.pricing import load_prices

    run = RunDir(config.run_dir)
    records = load_units(config)
    config = routed(config, records)
    retry = config.jobs.retry_failed
    prices = load_prices(config.jobs.prices)
    out: list[StageEstimate] = []
    planned: list[Any] = []
    if "explain" in stages:
        stage = explain_stage(config, records, None)
        plan = stage.plan(run, retry_failed=retry)
        est = estimate_plan(stage, plan)
        counter = getattr(stage.explainer, "counter", None)
        est.tokenizer = counter.name if counter is not None else "not counted"
        est.notes.append(
            f"completion tokens are the upper bound max_tokens="
            f"{config.explain.settings.max_tokens} per sample"
        )
        if getattr(stage.explainer, "selects", False):
            est.notes.append(
                f"{stage.explainer.name}: scoring candidates on the validation split "
                f"({config.explain.select.scorer}, {selection_spec(config)}) is not counted"
            )
        out.append(est)
        planned = stage.planned_explanations(plan, TYPICAL_EXPLANATION)
    if "score" in stages:
        scorer, note = planned_scorer(config)
        stage = ScoreStage(scorer, records, config.splits, extra_explanations=planned)
        est = estimate_plan(stage, stage.plan(run, retry_failed=retry))
        counter = getattr(scorer, "counter", None)
        how = counter.name if counter is not None else "not counted"
        strategy = getattr(scorer, "strategy", None)
        est.tokenizer = f"{how}, {strategy}" if strategy else how
        if note:
            est.notes.append(note)
        if planned:
            est.notes.append(
                "explanations not written yet are counted at a typical length "
                f"({TYPICAL_EXPLANATION!r})"
            )
        out.append(est)
    for est in out:
        est.price(prices)
    return out
