"""`neuroscribe explain | simulate | score | run`: the pipeline over a run directory.

Every option is declared once below (an `Annotated` alias, and its default in
`OPTIONS`); a command names the options it takes (`@takes(...)`), `_config` maps them
onto a `RunConfig`, and the command calls `neuroscribe.api` and prints.
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from neuroscribe import api
from neuroscribe.cli._jobs import hooks, print_estimates
from neuroscribe.cli.app import app, make_console
from neuroscribe.config import RunConfig
from neuroscribe.llm.base import DEFAULT_SIMULATOR_SPEC, EMBEDDED_SPEC
from neuroscribe.rundir import RunDir

console = make_console()

DEFAULT_RUN = Path("neuroscribe-run")

RunArg = Annotated[Path, typer.Argument(help="Run directory (records/ inside it).")]
ExplainerOpt = Annotated[
    str,
    typer.Option(
        "--explainer",
        help="Explainer model: a name served by --base-url (e.g. gpt-4o-mini), "
        "or hf:<hub id or folder> for a local transformers model, hf:embedded for SmolLM2; "
        "a local spec may end in ?dtype=bfloat16 (faster on CPUs with bf16 units, scores "
        "differ slightly; quote it in the shell).",
    ),
]
ExplainerMethodOpt = Annotated[
    str,
    typer.Option(
        "--explainer-method",
        help="How explanations are written: token-rows (one prompt, --n-explanations "
        "samples), best-of-k (--k samples, the best on the validation split kept), "
        "revision (test the explanation on texts the explainer proposes, run through the "
        "local subject model, and revise; --rounds), or a baseline that asks no model: "
        "token-lookup (the unit's most frequent top tokens), random (the floor).",
    ),
]
ExplainPromptOpt = Annotated[
    str | None,
    typer.Option(
        "--explain-prompt",
        help="Explainer prompt style: rows (token<TAB>value rows, explain-v1), highlight "
        "(<<marked>> excerpts, explain-highlight-v1), summary (top tokens with counts and "
        "short contexts, explain-summary-v1).",
    ),
]
KOpt = Annotated[
    int | None,
    typer.Option("--k", min=1, max=100, help="best-of-k: candidates sampled per unit (1–100)."),
]
SelectScorerOpt = Annotated[
    str | None,
    typer.Option(
        "--select-scorer",
        help="best-of-k / revision: the scorer that chooses on the validation split "
        "(any --scorer name; NAME=MODEL gives it its own model; default: simulation with "
        "the --simulator model).",
    ),
]
RoundsOpt = Annotated[
    int | None,
    typer.Option("--rounds", min=1, max=10, help="revision: rounds of probing and revising."),
]
SimulatorOpt = Annotated[
    str,
    typer.Option(
        "--simulator",
        help="The scorer's model: the simulator for the simulation scorer "
        "(same forms as --explainer). Default: the embedded model with its trained "
        "simulation adapter (hf:embedded?adapter=simulator); scorers that do not simulate "
        "read plain hf:embedded.",
    ),
]
ScorerOpt = Annotated[
    str,
    typer.Option(
        "--scorer",
        help="Scorer(s), comma-separated: simulation (simulate, then correlate), detection, "
        "fuzzing, intruder, embedding, logit-lens, steering; NAME=MODEL gives one its own model.",
    ),
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
        min=1,
        max=1024,
        help="Requests in flight at once (and units in progress; 1–1024). Use 1 for a "
        "single-slot local server such as llama.cpp.",
    ),
]
UnitsOpt = Annotated[
    list[str] | None,
    typer.Option("--units", help="Unit ids or globs (model/3/*); repeat or comma-separate."),
]
MaxUnitsOpt = Annotated[
    int | None, typer.Option("--max-units", min=1, help="Process at most N units (N ≥ 1).")
]
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
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", min=0.001, help="Seconds per LLM request (> 0).")
]
NTrainOpt = Annotated[
    int,
    typer.Option(
        "--n-train", min=1, max=1000, help="Top excerpts shown to the explainer (1–1000)."
    ),
]
NTestTopOpt = Annotated[
    int,
    typer.Option("--n-test-top", min=0, max=1000, help="Held-out top excerpts scored (0–1000)."),
]
NTestRandomOpt = Annotated[
    int,
    typer.Option(
        "--n-test-random", min=0, max=1000, help="Held-out random excerpts scored (0–1000)."
    ),
]
NContrastOpt = Annotated[
    int | None,
    typer.Option(
        "--n-contrast",
        min=0,
        max=1000,
        help="Low-activating random excerpts shown to the explainer as contrast (image "
        "units; default 3 for images, 0 for text); never scored.",
    ),
]
ImageRouteOpt = Annotated[
    str | None,
    typer.Option(
        "--image-route",
        help="Image units: how the explainer and the simulator see a picture: captions "
        "(its caption or labels, any text LLM), pixels (image parts, a vision-language "
        "model), auto (pixels when the model declares image input; API endpoints do not, "
        "so name pixels for a VLM behind an OpenAI-compatible API).",
    ),
]
OtherNegOpt = Annotated[
    int,
    typer.Option(
        "--other-unit-negatives",
        min=0,
        max=64,
        help="Detection: also show up to N excerpts that strongly activate other units of "
        "the run but not this one (found by running the local subject model; 0: off).",
    ),
]
ReadoutOpt = Annotated[
    str | None,
    typer.Option(
        "--readout",
        help="Detection and fuzzing: how the judge's yes/no is read: lines (numbered "
        "answers, 5 excerpts a prompt), first-token (one excerpt a prompt, P(yes) from the "
        "first token's logprobs; for small models), auto (first-token for local hf: "
        "judges, lines otherwise).",
    ),
]
NExplOpt = Annotated[
    int,
    typer.Option("--n-explanations", min=1, max=100, help="Explanations sampled per unit (1–100)."),
]
TempOpt = Annotated[
    float, typer.Option("--temperature", min=0.0, max=2.0, help="Explainer temperature (0–2).")
]
MaxTokOpt = Annotated[
    int,
    typer.Option("--max-tokens", min=1, max=4096, help="Explainer answer length limit (1–4096)."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]
SimExamplesOpt = Annotated[
    int | None,
    typer.Option(
        "--sim-examples",
        min=0,
        max=10,
        help="Few-shot neurons in the simulation prompt (0–10; fewer = shorter, cheaper "
        "prompts; default: the prompt version's own).",
    ),
]
SimPromptOpt = Annotated[
    str | None,
    typer.Option(
        "--sim-prompt",
        help="Simulation prompt version for the exact and prompt-logprobs strategies: "
        "simulate-v1 (default), simulate-v2 (contrastive), simulate-v1-compact (exact "
        "only), simulate-tuned-v1 or simulate-tuned-inline-v1 (exact only; for a "
        "simulator trained on the task, a LoRA adapter's own prompt being the default); "
        "measure with `neuroscribe check simulator`.",
    ),
]


RpmOpt = Annotated[
    float | None,
    typer.Option("--rpm", min=0.001, help="Requests per minute limit (token bucket; > 0)."),
]
TpmOpt = Annotated[
    float | None, typer.Option("--tpm", min=0.001, help="Tokens per minute limit (> 0).")
]
MaxCostOpt = Annotated[
    float | None,
    typer.Option(
        "--max-cost",
        metavar="USD",
        help="Stop cleanly (resumable) once the run directory's LLM spend reaches USD (> 0).",
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

RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        metavar="ADDRESS",
        help="Do the explain/score work on a Ray cluster, each worker with its own model; "
        "this process still plans, writes and resumes, and keeps --max-cost and one "
        "--rpm/--tpm for all workers. ADDRESS: auto (the cluster this machine belongs to), "
        "local or local:N (a new one on this machine, N CPUs), HOST:PORT or ray://HOST:PORT. "
        "Needs Ray: pip install 'neuroscribe\\[ray]'.",
    ),
]
RayWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--ray-workers",
        min=1,
        help="Ray workers, each holding its own model (≥ 1; default: the cluster's GPUs "
        "for a local model on a cluster with GPUs, else its CPUs). --concurrency applies "
        "per worker.",
    ),
]


RecordLayersOpt = Annotated[
    str, typer.Option("--record-layers", help="Layers recorded when the run has no records.")
]
RecordUnitsOpt = Annotated[
    int, typer.Option("--record-units", min=1, help="MLP neurons per layer recorded then (≥ 1).")
]
RecordTokensOpt = Annotated[
    int, typer.Option("--record-tokens", min=1, help="Corpus tokens recorded then (≥ 1).")
]


# Every option with its default, once. Commands pick theirs by name with `takes`.
OPTIONS: dict[str, tuple[Any, Any]] = {
    "explainer": (ExplainerOpt, EMBEDDED_SPEC),
    "explainer_method": (ExplainerMethodOpt, "token-rows"),
    "explain_prompt": (ExplainPromptOpt, None),
    "k": (KOpt, None),
    "select_scorer": (SelectScorerOpt, None),
    "rounds": (RoundsOpt, None),
    "simulator": (SimulatorOpt, DEFAULT_SIMULATOR_SPEC),
    "scorer": (ScorerOpt, "simulation"),
    "base_url": (BaseUrlOpt, None),
    "api_key": (ApiKeyOpt, None),
    "strategy": (StrategyOpt, "auto"),
    "sim_examples": (SimExamplesOpt, None),
    "sim_prompt": (SimPromptOpt, None),
    "other_unit_negatives": (OtherNegOpt, 0),
    "readout": (ReadoutOpt, None),
    "units": (UnitsOpt, None),
    "max_units": (MaxUnitsOpt, None),
    "n_explanations": (NExplOpt, 1),
    "temperature": (TempOpt, 1.0),
    "max_tokens": (MaxTokOpt, 60),
    "n_train": (NTrainOpt, 5),
    "n_test_top": (NTestTopOpt, 5),
    "n_test_random": (NTestRandomOpt, 5),
    "n_contrast": (NContrastOpt, None),
    "image_route": (ImageRouteOpt, None),
    "concurrency": (ConcurrencyOpt, 8),
    "timeout": (TimeoutOpt, 120.0),
    "retry_failed": (RetryOpt, False),
    "quiet": (QuietOpt, False),
    "rpm": (RpmOpt, None),
    "tpm": (TpmOpt, None),
    "max_cost": (MaxCostOpt, None),
    "dry_run": (DryRunOpt, False),
    "no_cache": (NoCacheOpt, False),
    "prices": (PricesOpt, None),
    "ray": (RayOpt, None),
    "ray_workers": (RayWorkersOpt, None),
    "record_layers": (RecordLayersOpt, "4,20"),
    "record_units": (RecordUnitsOpt, 4),
    "record_tokens": (RecordTokensOpt, 16_000),
}
EXPLAIN = ("explainer", "explainer_method", "explain_prompt", "n_explanations", "temperature")
EXPLAIN += ("max_tokens", "k", "select_scorer", "rounds")
SCORE = ("simulator", "scorer", "strategy", "sim_examples", "sim_prompt")
SCORE += ("other_unit_negatives", "readout")
COMMON = ("base_url", "api_key", "units", "max_units", "n_train", "n_test_top", "n_test_random")
COMMON += ("n_contrast", "image_route")
JOB = ("concurrency", "timeout", "retry_failed", "quiet", "rpm", "tpm", "max_cost", "dry_run")
JOB += ("no_cache", "prices")
RECORD = ("record_layers", "record_units", "record_tokens")
RAY = ("ray", "ray_workers")


def takes(*names: str, **defaults: Any) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the named options (with `defaults` overriding OPTIONS' defaults).

    The command is written as `def cmd(run: RunArg = DEFAULT_RUN, *, flags: dict)` and
    receives every option in `flags`; typer sees the options as ordinary parameters.
    """

    def decorate(fn: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()]
        own = [p for p in own if p.name != "flags"]
        extra = [
            inspect.Parameter(
                name,
                inspect.Parameter.KEYWORD_ONLY,
                annotation=OPTIONS[name][0],
                default=defaults.get(name, OPTIONS[name][1]),
            )
            for name in names
        ]

        @functools.wraps(fn)
        def command(**kwargs: Any) -> None:
            mine = {p.name: kwargs.pop(p.name) for p in own}
            return fn(**mine, flags={**mine, **kwargs})

        command.__signature__ = inspect.Signature(own + extra)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in own + extra}
        return command

    return decorate


def _patterns(units: list[str] | None) -> list[str] | None:
    if not units:
        return None
    return [p.strip() for u in units for p in u.split(",") if p.strip()]


# Flag name -> (RunConfig section, field). Flags a command lacks keep the defaults.
_FLAGS: dict[str, tuple[str, ...]] = {
    "explainer": ("explain", "model"),
    "explainer_method": ("explain", "explainer"),
    "explain_prompt": ("explain", "settings", "prompt"),
    "k": ("explain", "select", "k"),
    "rounds": ("explain", "select", "rounds"),
    "n_explanations": ("explain", "settings", "n_samples"),
    "temperature": ("explain", "settings", "temperature"),
    "max_tokens": ("explain", "settings", "max_tokens"),
    "simulator": ("score", "model"),
    "scorer": ("score", "scorer"),
    "strategy": ("score", "strategy"),
    "sim_examples": ("score", "n_examples"),
    "sim_prompt": ("score", "prompt"),
    "other_unit_negatives": ("score", "other_unit_negatives"),
    "readout": ("score", "readout"),
    "n_train": ("splits", "n_train"),
    "n_test_top": ("splits", "n_test_top"),
    "n_test_random": ("splits", "n_test_random"),
    "n_contrast": ("splits", "n_contrast"),
    "base_url": ("endpoint", "base_url"),
    "api_key": ("endpoint", "api_key"),
    "max_units": ("units", "max_units"),
    "concurrency": ("jobs", "concurrency"),
    "retry_failed": ("jobs", "retry_failed"),
    "rpm": ("jobs", "rpm"),
    "tpm": ("jobs", "tpm"),
    "max_cost": ("jobs", "max_cost"),
    "prices": ("jobs", "prices"),
    "ray": ("jobs", "ray"),
    "ray_workers": ("jobs", "ray_workers"),
    "record_units": ("record", "units"),
    "record_tokens": ("record", "tokens"),
}


def _config(flags: dict[str, Any]) -> RunConfig:
    """Map a command's flags onto one RunConfig (validated: bad values are ConfigErrors)."""
    data: dict[str, Any] = {"run_dir": flags["run"]}
    for name, path in _FLAGS.items():
        if name in flags and flags[name] is not None:
            node = data
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = flags[name]
    if flags.get("units") is not None:
        # `--units ''` selects nothing: refused (by the config) rather than read as "all".
        data.setdefault("units", {})["patterns"] = _patterns(flags["units"]) or [""]
    if flags.get("select_scorer"):
        name, _, model = flags["select_scorer"].partition("=")
        select = data.setdefault("explain", {}).setdefault("select", {})
        select["scorer"] = name.strip()
        if model.strip():
            select["model"] = model.strip()
    if flags.get("record_layers"):
        layers = [int(x) for x in flags["record_layers"].split(",") if x.strip()]
        data.setdefault("record", {})["layers"] = layers
    jobs = data.setdefault("jobs", {})
    jobs["cache"] = not flags.get("no_cache", False)
    jobs["show_progress"] = not flags.get("quiet", False)
    if flags.get("image_route") is not None:  # one flag for both stages
        data.setdefault("explain", {})["image_route"] = flags["image_route"]
        data.setdefault("score", {})["image_route"] = flags["image_route"]
    if "timeout" in flags:
        data.setdefault("explain", {})["timeout"] = flags["timeout"]
        data.setdefault("score", {})["timeout"] = flags["timeout"]
    return RunConfig.build(_flag_names=_FLAG_NAMES, **data)


# Config field path -> the flag that sets it, so errors name what the user typed.
_FLAG_NAMES = {".".join(path): "--" + name.replace("_", "-") for name, path in _FLAGS.items()}
_FLAG_NAMES |= {"units.patterns": "--units", "explain.timeout": "--timeout"}
_FLAG_NAMES |= {"score.timeout": "--timeout", "explain.settings": "explain settings"}
_FLAG_NAMES |= {"explain.image_route": "--image-route", "score.image_route": "--image-route"}


# Flags that explain the headline number itself (see scorer.maths.correlation).
_HEADLINE_FLAGS = {"constant_prediction", "constant_truth", "constant_truth_and_prediction"}


def _print_results(run: Path, sim_hash: str | None = None) -> None:
    loaded = RunDir(run).load()
    scores = [s for s in loaded.scores if sim_hash is None or s.config_hash == sim_hash]
    models = {s.unit_id.rsplit("/", 2)[0] for s in scores}
    # One subject model: name it in the title and show units as layer/index.
    strip = len(models) == 1 and all(s.unit_id.count("/") >= 2 for s in scores)
    # Paths, ids and explanations are untrusted text, not rich markup: "[/x]" in an
    # explanation would otherwise end the run with a MarkupError after the work is done.
    title = escape(f"Explanation scores · {run}" + (f" · {next(iter(models))}" if strip else ""))
    table = Table(title=title)
    table.add_column("layer/index" if strip else "unit", no_wrap=True)
    table.add_column("explanation", ratio=1)
    table.add_column("scorer", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("95% CI", justify="right", no_wrap=True)
    for s in sorted(scores, key=lambda s: (s.unit_id, s.scorer, -s.score)):
        unit = "/".join(s.unit_id.rsplit("/", 2)[1:]) if strip else s.unit_id
        text = s.explanation if len(s.explanation) <= 120 else s.explanation[:119] + "…"
        ci = f"[{s.ci_low:+.2f}, {s.ci_high:+.2f}]" if s.ci_low is not None else "—"
        # A score of 0 from a constant prediction means "no signal", not "uncorrelated":
        # show why next to the number.
        flags = [f for f in s.flags if f in _HEADLINE_FLAGS]
        shown = f"{s.score:+.3f}" + (f" ({', '.join(flags)})" if flags else "")
        table.add_row(escape(unit), escape(text), escape(s.scorer), escape(shown), escape(ci))
    console.print(table)
    # One mean per scorer and metric: averaging an AUC with a correlation means nothing.
    by_scorer: dict[tuple[str, str], list[float]] = {}
    for s in scores:
        by_scorer.setdefault((s.scorer, s.primary_metric), []).append(s.score)
    for (scorer, metric), values in by_scorer.items():
        name = "score" if metric == "score" else f"{scorer} {metric}"
        prefix = "" if len(by_scorer) == 1 else f"{scorer}: "
        finite = [v for v in values if math.isfinite(v)]
        mean = f"{sum(finite) / len(finite):+.3f}" if finite else "–"
        console.print(f"{prefix}{len(values)} explanations, mean {name} {mean}", markup=False)
    failures = loaded.open_failures()
    if failures:
        console.print(
            f"{len(failures)} open failures in {RunDir(run).path('failures')} "
            "(rerun with --retry-failed to try them again)",
            style="yellow",
            markup=False,
        )


@app.command()
@takes(*EXPLAIN, *COMMON, *JOB, *RAY, timeout=60.0)
def explain(run: RunArg = DEFAULT_RUN, *, flags: dict[str, Any]) -> None:
    """Explain units: the explainer reads each unit's train top excerpts and writes explanations.jsonl."""
    config = _config(flags)
    if flags["dry_run"]:
        api.check_prices(config, [config.explain.model])
        print_estimates(console, api.estimate(config, ["explain"]))
        return
    api.explain(config, hooks(console))


def _scorers(flags: dict[str, Any]) -> list[tuple[str, str | None]]:
    """`--scorer a,b=MODEL,...` parsed; the config keeps the first name (it is validated
    there too), and each scorer gets its own score section when the stage runs."""
    parsed = api.parse_scorers(flags["scorer"])
    flags["scorer"] = parsed[0][0]
    return parsed


def _score_with(flags: dict[str, Any]) -> None:
    scorers = _scorers(flags)
    config = _config(flags)
    if flags["dry_run"]:
        configs = api.scorer_configs(config, scorers)
        api.check_prices(config, [c.score.model for c in configs])
        for c in configs:
            print_estimates(console, api.estimate(c, ["score"]))
        return
    api.score_many(config, scorers, hooks(console))


@app.command()
@takes(*SCORE, *COMMON, *JOB, *RAY)
def simulate(run: RunArg = DEFAULT_RUN, *, flags: dict[str, Any]) -> None:
    """Score explanations on their held-out excerpts: by default simulate them, then correlate (simulations.jsonl, scores.jsonl); --scorer a,b,c runs several scorers."""
    _score_with(flags)


@app.command()
@takes(*SCORE, *COMMON, *JOB, *RAY, scorer=None)
def score(run: RunArg = DEFAULT_RUN, *, flags: dict[str, Any]) -> None:
    """Without --scorer: score stored simulations that have no score yet (no model). With --scorer simulation,detection,...: score every explanation with each (as simulate does)."""
    if flags["scorer"] is None:
        api.rescore(_config({"run": run}), hooks(console))
        _print_results(run)
        return
    _score_with(flags)
    _print_results(run)


@app.command("run")
@takes(*EXPLAIN, *SCORE, *COMMON, *JOB, *RAY, *RECORD)
def run_all(run: RunArg = DEFAULT_RUN, *, flags: dict[str, Any]) -> None:
    """Explain, simulate and score in one go (records the embedded model first if the run has none)."""
    scorers = _scorers(flags)
    config = _config(flags)
    if flags["dry_run"]:
        configs = api.scorer_configs(config, scorers)
        api.check_prices(config, [config.explain.model, *(c.score.model for c in configs)])
        for i, c in enumerate(configs):
            # Each scorer's estimate plans the explanations not written yet, too.
            estimates = api.estimate(c)
            print_estimates(console, estimates if i == 0 else estimates[1:])
        return
    summaries = api.run(config, hooks(console), scorers=scorers)
    _print_results(run, summaries[-1].config_hash if len(summaries) == 2 else None)
