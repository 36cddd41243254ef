"""`neuroscribe explain | simulate | score | run`: the pipeline over a run directory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from neuroscribe.cli._jobs import JobOptions, check_options, dry_run, finish_stage
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


RpmOpt = Annotated[
    float | None, typer.Option("--rpm", help="Requests per minute limit (token bucket).")
]
TpmOpt = Annotated[float | None, typer.Option("--tpm", help="Tokens per minute limit.")]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        metavar="USD",
        help="Stop cleanly (resumable) once the run directory's LLM spend reaches USD.",
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option("--dry-run", help="Count the tokens and cost the job would send; send nothing."),
]
NoCacheOpt = Annotated[
    bool,
    typer.Option("--no-cache", help="Bypass the response cache (RUN/.cache/responses.sqlite)."),
]
PricesOpt = Annotated[
    Path | None,
    typer.Option(
        "--prices",
        envvar="NEUROSCRIBE_PRICES",
        help="JSON/YAML price file {model: {input, output}} in USD per 1M tokens.",
    ),
]


def _patterns(units: list[str] | None) -> list[str] | None:
    if not units:
        return None
    return [p.strip() for u in units for p in u.split(",") if p.strip()]


async def _preflight(llm: Any) -> None:
    """Fail before any work on an unreachable server, a 401 or a model it does not serve."""
    check = getattr(llm, "check_model", None)
    if check is not None:
        await check(require_reachable=True)


def _make_llm(
    spec: str,
    base_url: str | None,
    api_key: str | None,
    timeout: float,
    concurrency: int = 8,
    options: dict[str, Any] | None = None,
) -> Any:
    from neuroscribe.llm import is_local_spec, make_llm

    if is_local_spec(spec):
        return make_llm(spec)
    return make_llm(
        spec,
        base_url=base_url,
        api_key=api_key,
        timeout_s=timeout,
        concurrency=concurrency,
        **(options or {}),
    )


def _splits(n_train: int, n_test_top: int, n_test_random: int) -> SplitConfig:
    return SplitConfig(n_train=n_train, n_test_top=n_test_top, n_test_random=n_test_random)


def _explain_settings(
    n_explanations: int, temperature: float, max_tokens: int, splits: SplitConfig
) -> ExplainSettings:
    return ExplainSettings(
        explainer=ExplainerConfig(
            n_samples=n_explanations, temperature=temperature, max_tokens=max_tokens
        ),
        splits=splits,
    )


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
    opts: JobOptions | None = None,
) -> None:
    opts = opts or JobOptions()
    llm = _make_llm(explainer, base_url, api_key, timeout, concurrency, opts.llm_options(run))
    try:
        await _preflight(llm)
        s = await explain_stage(
            run,
            llm,
            records,
            settings,
            concurrency=concurrency,
            retry_failed=retry_failed,
            max_cost=opts.max_cost,
            show_progress=not quiet,
        )
    finally:
        await llm.aclose()
    finish_stage(console, run, s, opts.max_cost)


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
    opts: JobOptions | None = None,
) -> str:
    from neuroscribe.simulator import make_simulator

    opts = opts or JobOptions()
    llm = _make_llm(simulator, base_url, api_key, timeout, concurrency, opts.llm_options(run))
    try:
        await _preflight(llm)
        sim, probe = await make_simulator(llm, strategy, n_examples=sim_examples)
        s = await simulate_stage(
            run,
            sim,
            records,
            splits,
            concurrency=concurrency,
            retry_failed=retry_failed,
            max_cost=opts.max_cost,
            show_progress=not quiet,
            probes={simulator: probe},
        )
    finally:
        await llm.aclose()
    console.print(f"simulator strategy: {sim.strategy} (values 0–{getattr(sim, 'scale_max', 10)})")
    finish_stage(console, run, s, opts.max_cost)
    return s.config_hash


def _print_results(run: Path, sim_hash: str | None = None) -> None:
    loaded = load_run(run)
    scores = [s for s in loaded.scores if sim_hash is None or s.config_hash == sim_hash]
    models = {s.unit_id.rsplit("/", 2)[0] for s in scores}
    # One subject model: name it in the title and show units as layer/index.
    strip = len(models) == 1 and all(s.unit_id.count("/") >= 2 for s in scores)
    title = f"Explanation scores · {run}" + (f" · {next(iter(models))}" if strip else "")
    table = Table(title=title)
    table.add_column("layer/index" if strip else "unit", no_wrap=True)
    table.add_column("explanation", ratio=1)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    for s in sorted(scores, key=lambda s: (s.unit_id, -s.score)):
        unit = "/".join(s.unit_id.rsplit("/", 2)[1:]) if strip else s.unit_id
        text = s.explanation if len(s.explanation) <= 120 else s.explanation[:119] + "…"
        ci = f"[{s.ci_low:+.2f}, {s.ci_high:+.2f}]" if s.ci_low is not None else "—"
        table.add_row(unit, text, f"{s.score:+.3f}", ci)
    console.print(table)
    if scores:
        mean = sum(s.score for s in scores) / len(scores)
        console.print(f"{len(scores)} explanations, mean score {mean:+.3f}")
    failures = loaded.open_failures()
    if failures:
        console.print(
            f"[yellow]{len(failures)} open failures in {RunPaths(run).failures} "
            "(rerun with --retry-failed to try them again)[/]"
        )


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
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_cost: MaxCostOpt = None,
    dry_run_: DryRunOpt = False,
    no_cache: NoCacheOpt = False,
    prices: PricesOpt = None,
) -> None:
    """Explain units: the explainer reads each unit's train top excerpts and writes explanations.jsonl."""
    opts = JobOptions(rpm, tpm, max_cost, dry_run_, no_cache, prices)
    check_options(opts, [explainer])
    records = select_units(load_records(run), _patterns(units), max_units)
    settings = _explain_settings(
        n_explanations, temperature, max_tokens, _splits(n_train, n_test_top, n_test_random)
    )
    if opts.dry_run:
        dry_run(console, run, records, opts, explain=(explainer, settings))
        return
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
            opts,
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
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_cost: MaxCostOpt = None,
    dry_run_: DryRunOpt = False,
    no_cache: NoCacheOpt = False,
    prices: PricesOpt = None,
) -> None:
    """Simulate explanations: predict every held-out token's activation, write simulations.jsonl."""
    opts = JobOptions(rpm, tpm, max_cost, dry_run_, no_cache, prices)
    check_options(opts, [simulator])
    records = select_units(load_records(run), _patterns(units), max_units)
    splits = _splits(n_train, n_test_top, n_test_random)
    if opts.dry_run:
        dry_run(console, run, records, opts, simulate=(simulator, splits, strategy, sim_examples))
        return
    asyncio.run(
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
            opts,
        )
    )


@app.command()
def score(run: RunArg = DEFAULT_RUN) -> None:
    """Score simulations: correlation (all / top / random), calibrated R², 95% intervals → scores.jsonl."""
    s = score_stage(run)
    finish_stage(console, run, s, None)
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
    rpm: RpmOpt = None,
    tpm: TpmOpt = None,
    max_cost: MaxCostOpt = None,
    dry_run_: DryRunOpt = False,
    no_cache: NoCacheOpt = False,
    prices: PricesOpt = None,
    record_layers: Annotated[
        str, typer.Option("--record-layers", help="Layers recorded when the run has no records.")
    ] = "4,20",
    record_units: Annotated[
        int, typer.Option("--record-units", help="MLP neurons per layer recorded then.")
    ] = 4,
    record_tokens: Annotated[
        int, typer.Option("--record-tokens", help="Corpus tokens recorded then.")
    ] = 16_000,
) -> None:
    """Explain, simulate and score in one go (records the embedded model first if the run has none)."""
    opts = JobOptions(rpm, tpm, max_cost, dry_run_, no_cache, prices)
    check_options(opts, [explainer, simulator])
    paths = RunPaths(run)
    has_records = paths.records.is_dir() and any(paths.records.glob("*.jsonl"))
    if not has_records and not opts.dry_run:
        layers = [int(x) for x in record_layers.split(",") if x.strip()]
        _record_default(run, layers, record_units, record_tokens)
    records = select_units(load_records(run), _patterns(units), max_units)
    splits = _splits(n_train, n_test_top, n_test_random)
    settings = _explain_settings(n_explanations, temperature, max_tokens, splits)
    if opts.dry_run:
        dry_run(
            console,
            run,
            records,
            opts,
            explain=(explainer, settings),
            simulate=(simulator, splits, strategy, sim_examples),
        )
        return
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
            opts,
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
            opts,
        )
    )
    finish_stage(console, run, score_stage(run, sim_config_hash=sim_hash), None)
    _print_results(run, sim_hash)


def _record_default(run: Path, layers: list[int], units: int, tokens: int) -> None:
    """The offline demo's recording: the embedded SmolLM2 over the built-in corpus."""
    from neuroscribe.datasets.record import record_run

    console.print(
        f"{run} has no records: recording {units} MLP neurons of layers {layers} of the "
        f"embedded SmolLM2 over {tokens} tokens of the built-in corpus"
    )
    summary = record_run(run, layers=layers, max_units=units, max_tokens=tokens)
    console.print(
        f"recorded {summary.n_units} units over {summary.n_tokens} tokens "
        f"in {summary.stream_seconds + summary.finalize_seconds:.0f} s"
    )
