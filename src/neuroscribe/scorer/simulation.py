"""The reference scorer: simulate the held-out excerpts from the explanation alone, then
correlate the simulated activations with the true ones (OpenAI's explanation score).

Per-excerpt simulations are kept in simulations.jsonl (the viewer shows them, publish
exports them in OpenAI's layout), and an interrupted task reuses the ones it stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from neuroscribe.errors import ConfigError
from neuroscribe.prompts import SIMULATE_PROMPT_VERSION
from neuroscribe.schema import ScoreInterval, SequenceSimulation, Usage
from neuroscribe.scorer.base import ScoreOutcome, ScorerParts, ScoreTask
from neuroscribe.scorer.maths import ExcerptResult, score_explanation
from neuroscribe.stages.base import Estimate

# How long a typical explanation is (~13 tokens): stands in for explanations a dry run
# of `run` has not made yet.
TYPICAL_EXPLANATION = "the word 'the' and other determiners at the start of a noun phrase"


def outcome_from_simulations(sims: Sequence[SequenceSimulation], seed: int = 0) -> ScoreOutcome:
    """Correlation scores of one explanation's simulated excerpts (pure maths)."""
    res = score_explanation(
        [ExcerptResult(s.kind, s.role, s.true_activations, s.expected_activations) for s in sims],
        seed=seed,
    )
    first = sims[0]
    return ScoreOutcome(
        metrics={
            "score": res.score,
            "top_score": res.top_score,
            "random_score": res.random_score,
            "r2": res.r2,
            "abs_dev_score": res.abs_dev_score,
        },
        primary_metric="score",
        n_excerpts=res.n_excerpts,
        n_tokens=res.n_tokens,
        interval=ScoreInterval(metric="score", low=res.ci[0], high=res.ci[1]) if res.ci else None,
        details={
            "strategy": first.strategy,
            "prompt_version": first.prompt_version,
            "scale_max": first.scale_max,
            "calibration_slope": res.calibration.slope if res.calibration else None,
            "calibration_intercept": res.calibration.intercept if res.calibration else None,
        },
        flags=res.flags,
    )


def simulation_comparable(spec: str | None, strategy: str | None, prompt_version: str | None):
    return {
        "scorer": "simulation",
        "simulator": spec,
        "strategy": strategy,
        "prompt_version": prompt_version,
    }


def _planned_strategy(spec: str, strategy: str, probe: dict | None) -> tuple[str, int, str]:
    """The strategy and scale `build` would pick, from what is known offline."""
    from neuroscribe.llm.capabilities import Capabilities
    from neuroscribe.llm.registry import backend_info
    from neuroscribe.simulator import choose_strategy, scale_for

    caps = backend_info(spec).offline_capabilities(spec)
    if caps is None and probe:
        caps = Capabilities.from_manifest(probe)
    if caps is not None:
        return choose_strategy(caps, strategy), scale_for(caps), ""
    if strategy != "auto":
        return choose_strategy(Capabilities(), strategy), 10, ""
    note = "strategy auto is not probed in a dry run: assumed chat-logprobs (--strategy)"
    return "chat-logprobs", 10, note


class SimulationScorer(ScorerParts):
    """Simulate-then-correlate. `simulator` may be None for planning (dry runs) only."""

    name = "simulation"
    stage = "simulate"
    primary_metric = "score"

    def __init__(
        self,
        simulator: Any | None,
        *,
        spec: str,
        strategy: str,
        scale_max: int,
        n_examples: int,
        prompt_version: str = SIMULATE_PROMPT_VERSION,
        probe: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.simulator = simulator
        self.model = spec
        self.strategy = strategy
        self.scale_max = scale_max
        self.n_examples = n_examples
        self.prompt_version = prompt_version
        self.probe = probe or {}
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
        **_: Any,
    ):
        """The scorer for a live model: probes the backend once to pick the strategy."""
        from neuroscribe.simulator import make_simulator

        sim, probe = await make_simulator(
            llm, strategy, n_examples=n_examples, prompt_version=prompt_version
        )
        return cls(
            sim,
            spec=sim.spec,
            strategy=sim.strategy,
            scale_max=getattr(sim, "scale_max", 10),
            n_examples=getattr(sim, "n_examples", n_examples if n_examples is not None else 2),
            prompt_version=sim.prompt_version,
            probe=probe,
        )

    @classmethod
    def planned(
        cls,
        spec: str,
        *,
        strategy: str = "auto",
        n_examples: int | None = None,
        probe: dict | None = None,
        prompt_version: str | None = None,
    ) -> tuple[SimulationScorer, str]:
        """A scorer for planning only (dry runs): no model loaded, nothing contacted.

        The strategy and value scale come from what `build` would pick: a local model
        simulates exactly (its tokenizer decides the scale); for an API model a probe
        stored in the run manifest decides `auto`, else chat-logprobs is assumed (the
        returned note says so).
        """
        from neuroscribe.llm.lora import adapter_prompt
        from neuroscribe.prompts.simulate import default_examples, simulation_style

        strategy, scale_max, note = _planned_strategy(spec, strategy, probe)
        if prompt_version is None and strategy == "exact":
            prompt_version = adapter_prompt(spec)  # what ExactSimulator picks too
        style = simulation_style(
            prompt_version if strategy in ("exact", "prompt-logprobs") else SIMULATE_PROMPT_VERSION
        )
        scorer = cls(
            None,
            spec=spec,
            strategy=strategy,
            scale_max=scale_max,
            n_examples=default_examples(style) if n_examples is None else n_examples,
            prompt_version=style.version,
        )
        return scorer, note

    def config(self) -> dict[str, Any]:
        # The same keys as neuroscribe 0.1's simulate stage, so a run it started resumes
        # in the same key space (the stage adds the split settings).
        from neuroscribe.llm.lora import adapter_digest

        out = {
            "simulator": self.model,
            "strategy": self.strategy,
            "prompt_version": self.prompt_version,
            "scale_max": self.scale_max,
            "n_examples": self.n_examples,
        }
        # An adapter's weights, not only its name: a retrained bundled adapter starts a
        # new key space (specs without an adapter keep their 0.1 keys).
        digest = adapter_digest(self.model)
        if digest:
            out["adapter"] = digest
        return out

    def comparable(self) -> dict[str, Any]:
        return simulation_comparable(self.model, self.strategy, self.prompt_version)

    def _stored(self, task: ScoreTask) -> dict[str, SequenceSimulation]:
        return {s.excerpt_id: s for s in task.stored if isinstance(s, SequenceSimulation)}

    async def score(self, task: ScoreTask) -> ScoreOutcome:
        if self.simulator is None:
            raise ConfigError("this simulation scorer was built for planning only")
        e = task.explanation
        stored = self._stored(task)
        todo = [x for x in task.heldout if x.excerpt_id not in stored]
        new: list[SequenceSimulation] = []
        usage = Usage()
        if todo:
            results = await self.simulator.simulate(e.text, [x.record.tokens for x in todo])
            for x, r in zip(todo, results, strict=True):
                usage = usage.add(r.usage)
                new.append(
                    SequenceSimulation(
                        explanation_id=e.explanation_id,
                        unit_id=e.unit_id,
                        excerpt_id=x.excerpt_id,
                        kind=x.kind,  # type: ignore[arg-type]
                        role=x.role,  # type: ignore[arg-type]
                        tokens=x.record.tokens,
                        true_activations=x.record.activations,
                        expected_activations=r.expected,
                        distributions=r.distributions,
                        scale_max=r.scale_max,
                        strategy=self.strategy,
                        simulator=self.model or "",
                        prompt_version=self.prompt_version,
                        config_hash=task.config_hash,
                        usage=r.usage,
                    )
                )
        by_id = {**stored, **{s.excerpt_id: s for s in new}}
        outcome = outcome_from_simulations([by_id[x.excerpt_id] for x in task.heldout], self.seed)
        outcome.usage = usage
        outcome.writes = {"simulations": new} if new else {}
        return outcome

    def estimate(self, task: ScoreTask) -> Estimate:
        from neuroscribe.estimate import simulation_tokens

        stored = self._stored(task)
        est = Estimate()
        for x in task.heldout:
            if x.excerpt_id in stored:
                continue
            p, c = simulation_tokens(
                self.counter,
                self.strategy,
                task.explanation.text,
                x.record.tokens,
                self.scale_max,
                self.n_examples,
                self.prompt_version,
            )
            est = est + Estimate(1, p, c)
        return est
