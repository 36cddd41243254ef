"""`neuroscribe explain | simulate | score | run`: the pipeline over a run directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from neuroscribe.cli.app import app
from neuroscribe.explainer import ExplainerConfig
from neuroscribe.llm.base import EMBEDDED_SPEC
from neuroscribe.pipeline import (
    ExplainSettings,
    RunPaths,
    explain_stage,
    load_records,
    score_stage,
    select_units,
    simulate_stage,
)
from neuroscribe.rundir import load_run
from neuroscribe.splits import SplitConfig

console = Console()

DEFAULT_RUN = Path("neuroscribe-run")

RunArg = Annotated[Path, typer.Argument(help="Run directory (records/ inside it).")]
ExplainerOpt = Annotated[
    str,
    typer.Option(
        "--explainer",
        help="Explainer model: a name served by --base-url (e.g. gpt-4o-mini), "
        "or hf:<hub id or folder> for a local transformers model, hf:embedded for SmolLM2.",
    ),
]
SimulatorOpt = Annotated[
    str, typer.Option("--simulator", help="Simulator model spec (same forms as --explainer).")
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        help="OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp, Ollama); env OPENAI_BASE_URL.",
    ),
]
ApiKeyOpt = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="OPENAI_API_KEY",
        show_default=False,
        help="API key (prefer the OPENAI_API_KEY environment variable).",
    ),
]
ConcurrencyOpt = Annotated[
    int,
    typer.Option(
        "--concurrency",
        help="Requests in flight at once (and units in progress). Use 1 for a single-slot "
        "local server such as llama.cpp.",
    ),
]
UnitsOpt = Annotated[
    list[str] | None,
    typer.Option("--units", help="Unit ids or globs (model/3/*); repeat or comma-separate."),
]
MaxUnitsOpt = Annotated[int | None, typer.Option("--max-units", help="Process at most N units.")]
StrategyOpt = Annotated[
    str,
    typer.Option(
        "--strategy",
        help="Simulation strategy: auto (probe the endpoint), exact (local models), "
        "prompt-logprobs, chat-logprobs or json.",
    ),
]
RetryOpt = Annotated[
    bool, typer.Option("--retry-failed", help="Try again the units listed in failures.jsonl.")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="Seconds per LLM request.")]
NTrainOpt = Annotated[int, typer.Option("--n-train", help="Top excerpts shown to the explainer.")]
NTestTopOpt = Annotated[int, typer.Option("--n-test-top", help="Held-out top excerpts scored.")]
NTestRandomOpt = Annotated[
    int, typer.Option("--n-test-random", help="Held-out random excerpts scored.")
]
NExplOpt = Annotated[int, typer.Option("--n-explanations", help="Explanations sampled per unit.")]
TempOpt = Annotated[float, typer.Option("--temperature", help="Explainer temperature.")]
MaxTokOpt = Annotated[int, typer.Option("--max-tokens", help="Explainer answer length limit.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
SimExamplesOpt = Annotated[
    int,
    typer.Option(
        "--sim-examples",
        help="Few-shot neurons in the simulation prompt (fewer = shorter, cheaper prompts).",
    ),
]


def _patterns(units: list[str] | None) -> list[str] | None:
    if not units:
        return None
    return [p.strip() for u in units for p in u.split(",") if p.strip()]


def _make_llm(
    spec: str, base_url: str | None, api_key: str | None, timeout: float, concurrency: int = 8
) -> Any:
    from neuroscribe.llm import is_local_spec, make_llm

    if is_local_spec(spec):
        return make_llm(spec)
    return make_llm(
        spec, base_url=base_url, api_key=api_key, timeout_s=timeout, concurrency=concurrency
    )


def _splits(n_train: int, n_test_top: int, n_test_random: int) -> SplitConfig:
    return SplitConfig(n_train=n_train, n_test_top=n_test_top, n_test_random=n_test_random)


async def _explain(
    run: Path,
    explainer: str,
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    records: list,
    settings: ExplainSettings,
    concurrency: int,
    retry_failed: bool,
    quiet: bool,
) -> None:
    llm = _make_llm(explainer, base_url, api_key, timeout, concurrency)
    try:
        s = await explain_stage(
            run,
            llm,
            records,
            settings,
            concurrency=concurrency,
            retry_failed=retry_failed,
            show_progress=not quiet,
        )
    finally:
        await llm.aclose()
    console.print(s.line())


async def _simulate(
    run: Path,
    simulator: str,
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    records: list,
    splits: SplitConfig,
    strategy: str,
    concurrency: int,
    retry_failed: bool,
    quiet: bool,
    sim_examples: int = 2,
) -> str:
    from neuroscribe.pipeline import config_hash, simulator_config
    from neuroscribe.simulator import make_simulator

    llm = _make_llm(simulator, base_url, api_key, timeout, concurrency)
    try:
        sim, probe = await make_simulator(llm, strategy, n_examples=sim_examples)
        s = await simulate_stage(
            run,
            sim,
            records,
            splits,
            concurrency=concurrency,
            retry_failed=retry_failed,
            show_progress=not quiet,
            probes={simulator: probe},
        )
    finally:
        await llm.aclose()
    console.print(f"simulator strategy: {sim.strategy} (values 0–{getattr(sim, 'scale_max', 10)})")
    console.print(s.line())
    return config_hash(simulator_config(sim, splits))


def _print_results(run: Path, sim_hash: str | None = None) -> None:
    loaded = load_run(run)
    scores = [s for s in loaded.scores if sim_hash is None or s.config_hash == sim_hash]
    table = Table(title=f"Explanation scores ({run})")
    table.add_column("unit")
    table.add_column("explanation", max_width=60)
    table.add_column("score", justify="right")
    table.add_column("95% CI", justify="right")
    for s in sorted(scores, key=lambda s: (s.unit_id, -s.score)):
        ci = f"[{s.ci_low:+.2f}, {s.ci_high:+.2f}]" if s.ci_low is not None else "—"
        table.add_row(s.unit_id, s.explanation, f"{s.score:+.3f}", ci)
    console.print(table)
    if scores:
        mean = sum(s.score for s in scores) / len(scores)
        console.print(f"{len(scores)} explanations, mean score {mean:+.3f}")
    active = [f for f in loaded.failures if f.stage != "record"]
    if active:
        console.print(f"[yellow]{len(active)} failures listed in {RunPaths(run).failures}[/]")


@app.command()
def explain(
    run: RunArg = DEFAULT_RUN,
    explainer: ExplainerOpt = EMBEDDED_SPEC,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    units: UnitsOpt = None,
    max_units: MaxUnitsOpt = None,
    n_explanations: NExplOpt = 1,
    temperature: TempOpt = 1.0,
    max_tokens: MaxTokOpt = 60,
    n_train: NTrainOpt = 5,
    n_test_top: NTestTopOpt = 5,
    n_test_random: NTestRandomOpt = 5,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = 60.0,
    retry_failed: RetryOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Explain units: the explainer reads each unit's train top excerpts and writes explanations.jsonl."""
    records = select_units(load_records(run), _patterns(units), max_units)
    settings = ExplainSettings(
        explainer=ExplainerConfig(
            n_samples=n_explanations, temperature=temperature, max_tokens=max_tokens
        ),
        splits=_splits(n_train, n_test_top, n_test_random),
    )
    asyncio.run(
        _explain(
            run,
            explainer,
            base_url,
            api_key,
            timeout,
            records,
            settings,
            concurrency,
            retry_failed,
            quiet,
        )
    )


@app.command()
def simulate(
    run: RunArg = DEFAULT_RUN,
    simulator: SimulatorOpt = EMBEDDED_SPEC,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    strategy: StrategyOpt = "auto",
    sim_examples: SimExamplesOpt = 2,
    units: UnitsOpt = None,
    max_units: MaxUnitsOpt = None,
    n_train: NTrainOpt = 5,
    n_test_top: NTestTopOpt = 5,
    n_test_random: NTestRandomOpt = 5,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = 120.0,
    retry_failed: RetryOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Simulate explanations: predict every held-out token's activation, write simulations.jsonl."""
    records = select_units(load_records(run), _patterns(units), max_units)
    asyncio.run(
        _simulate(
            run,
            simulator,
            base_url,
            api_key,
            timeout,
            records,
            _splits(n_train, n_test_top, n_test_random),
            strategy,
            concurrency,
            retry_failed,
            quiet,
            sim_examples,
        )
    )


@app.command()
def score(run: RunArg = DEFAULT_RUN) -> None:
    """Score simulations: correlation (all / top / random), calibrated R², 95% intervals → scores.jsonl."""
    s = score_stage(run)
    console.print(s.line())
    _print_results(run)


@app.command("run")
def run_all(
    run: RunArg = DEFAULT_RUN,
    explainer: ExplainerOpt = EMBEDDED_SPEC,
    simulator: SimulatorOpt = EMBEDDED_SPEC,
    base_url: BaseUrlOpt = None,
    api_key: ApiKeyOpt = None,
    strategy: StrategyOpt = "auto",
    sim_examples: SimExamplesOpt = 2,
    units: UnitsOpt = None,
    max_units: MaxUnitsOpt = None,
    n_explanations: NExplOpt = 1,
    temperature: TempOpt = 1.0,
    max_tokens: MaxTokOpt = 60,
    n_train: NTrainOpt = 5,
    n_test_top: NTestTopOpt = 5,
    n_test_random: NTestRandomOpt = 5,
    concurrency: ConcurrencyOpt = 8,
    timeout: TimeoutOpt = 120.0,
    retry_failed: RetryOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Explain, simulate and score in one go (records the embedded model first if the run has none)."""
    paths = RunPaths(run)
    if not paths.records.is_dir() or not any(paths.records.glob("*.jsonl")):
        _record_default(run, quiet)
    records = select_units(load_records(run), _patterns(units), max_units)
    splits = _splits(n_train, n_test_top, n_test_random)
    settings = ExplainSettings(
        explainer=ExplainerConfig(
            n_samples=n_explanations, temperature=temperature, max_tokens=max_tokens
        ),
        splits=splits,
    )
    asyncio.run(
        _explain(
            run,
            explainer,
            base_url,
            api_key,
            timeout,
            records,
            settings,
            concurrency,
            retry_failed,
            quiet,
        )
    )
    sim_hash = asyncio.run(
        _simulate(
            run,
            simulator,
            base_url,
            api_key,
            timeout,
            records,
            splits,
            strategy,
            concurrency,
            retry_failed,
            quiet,
            sim_examples,
        )
    )
    console.print(score_stage(run, sim_config_hash=sim_hash).line())
    _print_results(run, sim_hash)


# The offline demo: a few units of two layers over a short slice of the built-in corpus,
# enough for the default splits (5 train + 5 test + 2 calibration top excerpts).
DEFAULT_RECORD = {"layers": [4, 20], "max_units": 4, "max_tokens": 16_000}


def _record_default(run: Path, quiet: bool) -> None:
    from neuroscribe.datasets.record import record_run

    console.print(
        f"{run} has no records: recording {DEFAULT_RECORD['max_units']} MLP neurons of layers "
        f"{DEFAULT_RECORD['layers']} of the embedded SmolLM2 over the built-in corpus "
        f"({DEFAULT_RECORD['max_tokens']} tokens)"
    )
    summary = record_run(run, **DEFAULT_RECORD)
    console.print(
        f"recorded {summary.n_units} units over {summary.n_tokens} tokens "
        f"in {summary.stream_seconds + summary.finalize_seconds:.0f} s"
    )
