"""Single calls: explain one unit, simulate or score one explanation, from posted excerpts.

Each builds the library's own objects (an `Explainer` from the registry, the simulator
`make_simulator` picks, a `Scorer` from the registry) and runs them once, on the
scheduler's loop with its shared models. Nothing is written to any run directory.
"""

from __future__ import annotations

from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.schema import ActivationRecord, Explanation, NeuronRecord
from neuroscribe.service.models import (
    ExcerptIn,
    ExplainRequest,
    ScoreRequest,
    SimulateRequest,
)
from neuroscribe.service.scheduler import Scheduler
from neuroscribe.splits import Excerpt, Splits

UNIT = "posted/0/0"


def _usage(u: Any) -> dict[str, Any]:
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "requests": u.requests,
        "cost_usd": u.cost_usd,
    }


def _record(x: ExcerptIn) -> ActivationRecord:
    acts = x.activations if x.activations is not None else [0.0] * len(x.tokens)
    return ActivationRecord(tokens=list(x.tokens), activations=list(acts))


def _validated(model: Any, data: dict[str, Any]) -> Any:
    """`model.model_validate(data)`, its errors as one ConfigError naming the fields."""
    from pydantic import ValidationError

    try:
        return model.model_validate(data)
    except ValidationError as e:
        msgs = [
            f"{'.'.join(map(str, err['loc']))}: {err['msg'].removeprefix('Value error, ')}"
            for err in e.errors()
        ]
        raise ConfigError("; ".join(msgs)) from None


def _check_strategy(req: SimulateRequest) -> str:
    """The same checks as a job's score section (unknown names are a 4xx, not a 500);
    the model the scorer runs on (the section's, e.g. plain for a judge)."""
    from neuroscribe.config import ScoreSection

    data = {"model": req.model, "strategy": req.strategy, "prompt": req.prompt,
            "n_examples": req.n_examples}  # fmt: skip
    if isinstance(req, ScoreRequest):
        data["scorer"] = req.scorer
    return _validated(ScoreSection, data).model


async def explain(s: Scheduler, req: ExplainRequest) -> dict[str, Any]:
    from neuroscribe.config import ExplainSection
    from neuroscribe.explainer.base import ExplainTask
    from neuroscribe.explainer.registry import explainer_factory

    section = _validated(
        ExplainSection,
        {
            "model": req.model,
            "explainer": req.explainer,
            "settings": {
                "n_samples": req.n_samples,
                "temperature": req.temperature,
                "max_tokens": req.max_tokens,
                "n_examples": req.n_examples,
                "max_attempts": req.max_attempts,
            },
        },
    )
    records = [_record(x) for x in req.excerpts]
    if max(max(r.activations) for r in records) <= 0:
        raise ConfigError("no excerpt has a positive activation: nothing to explain")
    llm = await s.model(req.model, req.endpoint.base_url, req.endpoint.api_key, req.timeout)
    explainer = explainer_factory(section.explainer)(llm, section.settings)
    train = [Excerpt(f"top:{i}", "top", "train", r) for i, r in enumerate(records)]
    record = NeuronRecord(unit_id=UNIT, most_positive_activation_records=records)
    task = ExplainTask(record=record, train=train, samples=list(range(explainer.n_samples)))
    out = await explainer.explain(task)
    return {
        "model": req.model,
        "explainer": section.explainer,
        "prompt_version": out.prompt_version,
        "explanations": [text for _, text, _ in out.texts],
        "failures": [
            {"sample": i, "reason": out.reasons.get(i, "not an explanation"), "raw": raw}
            for i, raw in out.failed
        ],
        "usage": _usage(out.usage),
    }


async def simulate(s: Scheduler, req: SimulateRequest) -> dict[str, Any]:
    from neuroscribe.simulator import make_simulator

    _check_strategy(req)
    llm = await s.model(req.model, req.endpoint.base_url, req.endpoint.api_key, req.timeout)
    sim, info = await make_simulator(
        llm, req.strategy, n_examples=req.n_examples, prompt_version=req.prompt
    )
    results = await sim.simulate(req.explanation, [list(x.tokens) for x in req.excerpts])
    usage = None
    for r in results:
        usage = r.usage if usage is None else usage.add(r.usage)
    return {
        "model": req.model,
        "strategy": info["strategy"],
        "scale_max": info["scale_max"],
        "prompt_version": sim.prompt_version,
        "excerpts": [
            {"tokens": list(x.tokens), "expected": r.expected}
            for x, r in zip(req.excerpts, results, strict=True)
        ],
        "usage": _usage(usage),
    }


async def score(s: Scheduler, req: ScoreRequest) -> dict[str, Any]:
    from neuroscribe.scorer.base import ScoreTask
    from neuroscribe.scorer.registry import scorer_factory

    model = _check_strategy(req)
    records = [_record(x) for x in req.excerpts]
    if not any(x.kind == "top" for x in req.excerpts):
        raise ConfigError('score needs at least one excerpt of kind "top"')
    llm = await s.model(model, req.endpoint.base_url, req.endpoint.api_key, req.timeout)
    scorer = await scorer_factory(req.scorer).build(
        llm, strategy=req.strategy, n_examples=req.n_examples, prompt_version=req.prompt
    )
    counts = {"top": 0, "random": 0}
    test = []
    for x, r in zip(req.excerpts, records, strict=True):
        test.append(Excerpt(f"{x.kind}:{counts[x.kind]}", x.kind, "test", r))
        counts[x.kind] += 1
    pairs = list(zip(req.excerpts, records, strict=True))
    record = NeuronRecord(
        unit_id=UNIT,
        most_positive_activation_records=[r for x, r in pairs if x.kind == "top"],
        random_sample=[r for x, r in pairs if x.kind == "random"],
    )
    explanation = Explanation(
        explanation_id="posted",
        unit_id=UNIT,
        sample_index=0,
        text=req.explanation,
        explainer="posted",
        prompt_version="posted",
        config_hash="posted",
        train_excerpts=[],
    )
    task = ScoreTask(explanation, record, Splits(train=[], test=test, calibration=[]), "posted")
    out = await scorer.score(task)
    sims = out.writes.get("simulations")
    return {
        "model": model,
        "scorer": req.scorer,
        "metrics": dict(out.metrics),
        "primary_metric": out.primary_metric,
        "interval": out.interval.model_dump(mode="json") if out.interval else None,
        "n_excerpts": out.n_excerpts,
        "n_tokens": out.n_tokens,
        "flags": list(out.flags),
        "details": dict(out.details),
        "simulations": (
            [{"tokens": x.tokens, "expected": x.expected_activations} for x in sims]
            if sims
            else None
        ),
        "usage": _usage(out.usage),
    }
