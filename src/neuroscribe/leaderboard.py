"""The explainer leaderboard: every explain configuration of a run, on the same units.

A run directory may hold several explain configurations side by side (one key space,
`Explanation.config_hash`, each): explainer models × prompt styles × methods, plus the
baselines that need no model (`token-lookup`, the yardstick; `random`, the floor).
`build_leaderboard(run_dir, scorer)` makes one row per configuration, scored by one
scorer's primary metric:

- Per unit a row's value is the mean over its explanations of that unit (no best-of-n
  bonus for sampling more). Only units every row has a value for are used (paired);
  the others are counted and reported as dropped.
- Each row: mean with a 95% bootstrap interval over units; the paired difference
  against the `against` row (default: the first configuration in the run that is not a
  baseline) with its 95% paired bootstrap interval, Wilcoxon p and win rate (ties half);
  the explainer's prompt + completion tokens per unit (`Explanation.usage`), the
  selection tokens per unit of best-of-k / revision (`selection_usage`), the cost per
  unit (explainer + selection; "free" for local models and baselines, unknown for an
  API model without a price) and the mean score per dollar.
- Scores made with different settings (`Score.comparable`) or on different held-out
  excerpts are refused (`compare.check_comparable`), unless `allow_mismatch`.

The statistics are `neuroscribe.compare`'s; this module only groups, pairs and renders.
`to_markdown`, `to_html`, `write_csv`, `plot` and `write_report` take a list of boards
(one per scorer).
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from collections import defaultdict
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field

from neuroscribe.compare import (
    _fmt,
    bootstrap_mean_ci,
    check_comparable,
    default_metric,
    default_scorer,
    markdown_table,
    md_escape,
    paired_test,
    simulator_check_warnings,
)
from neuroscribe.errors import ConfigError, DataError
from neuroscribe.jsonl import atomic_path, write_text_atomic
from neuroscribe.rundir import Run, RunDir
from neuroscribe.schema import Explanation, Score, Usage

# Explainers that ask no model: always shown, so the floor is visible.
BASELINES = ("token-lookup", "random")
# What runs written before `Explanation.method` existed used (unless a baseline).
DEFAULT_METHOD = "token-rows"
# Units whose explanations are shown as examples under the table.
N_EXAMPLES = 3
SEP = " · "


def explanation_method(e: Explanation) -> str:
    """The explainer registry name of an explanation (old runs: token-rows or a baseline)."""
    if e.method:
        return e.method
    return e.explainer if e.explainer in BASELINES else DEFAULT_METHOD


def is_baseline(method: str) -> bool:
    return method in BASELINES


def row_label(method: str, prompt_version: str, explainer: str) -> str:
    """`token-rows · explain-summary-v1 · hf:embedded`; a baseline is its name alone."""
    if is_baseline(method):
        return method
    return SEP.join(p for p in (method, prompt_version, explainer) if p)


class LeaderboardRow(BaseModel):
    """One explain configuration's line of the leaderboard (numbers unrounded)."""

    label: str
    config_hash: str
    method: str
    prompt_version: str
    explainer: str  # the model spec (a baseline: its name)
    baseline: bool
    reference: bool = False  # the row the differences are taken against
    units: int  # paired units behind the numbers
    units_scored: int  # units this row has a value for, before pairing
    explanations: int  # explanations of the paired units
    mean: float
    ci_low: float | None = None
    ci_high: float | None = None
    median: float
    diff: float | None = None  # mean paired difference against the reference row
    diff_ci_low: float | None = None
    diff_ci_high: float | None = None
    wilcoxon_p: float | None = None
    ttest_p: float | None = None
    win_rate: float | None = None  # share of units above the reference (ties half)
    prompt_tokens_per_unit: float = 0.0
    completion_tokens_per_unit: float = 0.0
    tokens_per_unit: float = 0.0  # explainer prompt + completion
    selection_tokens_per_unit: float | None = None  # None: the method does not select
    explain_cost_per_unit_usd: float | None = None  # None: unknown (no price)
    selection_cost_per_unit_usd: float | None = None
    cost_per_unit_usd: float | None = None  # explain + selection; None: unknown
    free: bool = False  # no model or only in-process models: costs nothing
    score_per_usd: float | None = None  # mean / cost per unit; None when free or unknown


class Example(BaseModel):
    """One row's explanation of one unit, shown under the table (untrusted text)."""

    unit_id: str
    label: str
    value: float | None  # this explanation's score (the metric of the board)
    text: str


class Leaderboard(BaseModel):
    """The leaderboard of one scorer over one run."""

    run: str
    scorer: str
    metric: str
    against: str | None  # the reference row's label (None: a single row)
    n_units: int  # paired units
    n_units_any: int  # units scored by at least one row
    missing: dict[str, int] = Field(default_factory=dict)  # label -> paired units it lacks
    rows: list[LeaderboardRow]  # best mean first
    notes: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)  # untrustworthy simulator checks
    mismatches: list[str] = Field(default_factory=list)  # only with allow_mismatch
    unit_scores: dict[str, dict[str, float]] = Field(default_factory=dict)  # label -> unit
    examples: list[Example] = Field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return self.n_units_any - self.n_units

    def row(self, label: str) -> LeaderboardRow:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


# ---------------------------------------------------------------- grouping


@dataclass
class _Config:
    """The explanations of one explain configuration."""

    config_hash: str
    method: str
    prompt_version: str
    explainer: str
    explanations: list[Explanation]
    label: str = ""


@dataclass
class _RowRun(Run):
    """One row as a `Run`, so `compare.check_comparable` can name it by its label."""

    label: str = ""

    @property
    def name(self) -> str:  # type: ignore[override]
        return self.label


def _configs(run: Run) -> list[_Config]:
    """Explanations grouped by explain configuration, in first-seen order, labelled."""
    groups: dict[str, _Config] = {}
    for e in run.explanations:
        g = groups.get(e.config_hash)
        if g is None:
            method = explanation_method(e)
            groups[e.config_hash] = g = _Config(
                e.config_hash, method, e.prompt_version, e.explainer, []
            )
        g.explanations.append(e)
    out = list(groups.values())
    for g in out:
        g.label = row_label(g.method, g.prompt_version, g.explainer)
    counts = defaultdict(int)
    for g in out:
        counts[g.label] += 1
    for g in out:
        if counts[g.label] > 1:  # same method, prompt and model, other settings
            g.label = f"{g.label} [{g.config_hash[:8]}]"
    return out


def find_row(labels: Sequence[str], hashes: Sequence[str], wanted: str) -> int:
    """The index of the row `wanted` names: its label, its config hash (or a prefix of
    4+ characters), or a text found in exactly one label (case-insensitive)."""
    if wanted in labels:
        return labels.index(wanted)
    by_hash = [i for i, h in enumerate(hashes) if len(wanted) >= 4 and h.startswith(wanted)]
    if len(by_hash) == 1:
        return by_hash[0]
    low = wanted.lower()
    exact = [i for i, lab in enumerate(labels) if lab.lower() == low]
    if len(exact) == 1:
        return exact[0]
    found = [i for i, lab in enumerate(labels) if low in lab.lower()]
    if len(found) == 1:
        return found[0]
    why = "matches several rows" if found else "matches no row"
    raise ConfigError(f"--against {wanted!r} {why}; the rows are: {', '.join(labels)}")


# ---------------------------------------------------------------- usage and cost


def _free(model: str) -> bool:
    """Calls to `model` cost nothing (an in-process model); unknown specs are not free."""
    from neuroscribe.errors import NeuroscribeError
    from neuroscribe.llm.registry import backend_info

    try:
        return backend_info(model).free
    except NeuroscribeError:
        return False


_SELECTOR_MODEL = re.compile(r"\(([^()]+)\)\s*$")


def _selection_model(e: Explanation) -> str | None:
    """The selector's model from `selection_scorer` ("simulation (hf:embedded)")."""
    m = _SELECTOR_MODEL.search(e.selection_scorer or "")
    return m.group(1) if m else None


def _cost(usages: list[tuple[Usage, bool]]) -> float | None:
    """Summed cost of (usage, model is free) pairs; None when a priced model's cost is
    unknown (tokens spent, no price)."""
    total = 0.0
    for u, free in usages:
        if u.cost_usd is not None:
            total += u.cost_usd
        elif (u.prompt_tokens or u.completion_tokens) and not free:
            return None
    return total


def _usage_columns(cfg: _Config, explanations: list[Explanation], n: int) -> dict[str, object]:
    """Tokens, selection tokens, cost and "free" of a row, per paired unit."""
    baseline = is_baseline(cfg.method)
    free_model = baseline or _free(cfg.explainer)
    own = [e.usage for e in explanations]
    prompt = sum(u.prompt_tokens for u in own)
    completion = sum(u.completion_tokens for u in own)
    explain_cost = _cost([(u, free_model) for u in own])
    selection = [e for e in explanations if e.selection_usage is not None]
    sel_tokens = sel_cost = None
    sel_free = True
    if selection:
        pairs = []
        for e in selection:
            spec = _selection_model(e)
            free = spec is not None and _free(spec)
            sel_free = sel_free and free
            pairs.append((e.selection_usage, free))
        sel_tokens = sum(u.prompt_tokens + u.completion_tokens for u, _ in pairs) / n
        cost = _cost(pairs)  # type: ignore[arg-type]
        sel_cost = None if cost is None else cost / n
    total = None
    if explain_cost is not None and (not selection or sel_cost is not None):
        total = explain_cost / n + (sel_cost or 0.0)
    free = free_model and sel_free and not total
    return {
        "prompt_tokens_per_unit": prompt / n,
        "completion_tokens_per_unit": completion / n,
        "tokens_per_unit": (prompt + completion) / n,
        "selection_tokens_per_unit": sel_tokens,
        "explain_cost_per_unit_usd": None if explain_cost is None else explain_cost / n,
        "selection_cost_per_unit_usd": sel_cost,
        "cost_per_unit_usd": total,
        "free": bool(free),
    }


# ---------------------------------------------------------------- the leaderboard


def build_leaderboard(
    run_dir: Path | str | Run,
    scorer: str | None = None,
    against: str | None = None,
    *,
    configs: Collection[str] | None = None,
    units: Collection[str] | None = None,
    allow_mismatch: bool = False,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> Leaderboard:
    """The leaderboard of `scorer` (default: simulation if the run has it, else its first
    scorer) over every explain configuration of the run (see the module docstring).

    `against`: the reference row (a label, a config hash prefix, or a text found in one
    label); default the first non-baseline configuration. `configs`: only these explain
    config hashes; `units`: only these unit ids. Raises DataError when there is nothing
    to rank, or when the scores are not comparable and `allow_mismatch` is false.
    """
    run = run_dir if isinstance(run_dir, Run) else RunDir(run_dir).load()
    scorer = scorer or default_scorer(run)
    if scorer is None:
        raise DataError(f"{run.path}: no scores.jsonl lines: nothing to rank")
    if scorer not in run.scorers():
        raise DataError(
            f"{run.path}: no scores by scorer {scorer!r} (it has: "
            f"{', '.join(run.scorers()) or 'none'}); score the run with it first"
        )
    metric = default_metric(run, scorer)
    wanted_units = None if units is None else set(units)
    scores = {s.explanation_id: s for s in run.latest_scores(scorer)}

    notes: list[str] = []
    groups = _configs(run)
    if configs is not None:
        keep = list(configs)
        groups = sorted(
            (g for g in groups if g.config_hash in keep), key=lambda g: keep.index(g.config_hash)
        )
    # Per row: unit -> the metric over its explanations (None values left out).
    per_unit: dict[str, dict[str, list[float]]] = {}
    rows_cfg: list[_Config] = []
    for g in groups:
        values: dict[str, list[float]] = defaultdict(list)
        for e in g.explanations:
            if wanted_units is not None and e.unit_id not in wanted_units:
                continue
            s = scores.get(e.explanation_id)
            v = s.metrics.get(metric) if s is not None else None
            if v is not None and math.isfinite(v):
                values[e.unit_id].append(float(v))
        if values:
            per_unit[g.label] = values
            rows_cfg.append(g)
        else:
            notes.append(f"{g.label}: no {scorer} {metric} values; left out")
    if not rows_cfg:
        raise DataError(
            f"{run.path}: no explanation has a {scorer} {metric} value: nothing to rank"
        )
    if not any(is_baseline(g.method) for g in rows_cfg):
        notes.append(
            "no baseline rows (token-lookup, random): run `neuroscribe leaderboard` without "
            "--no-run to add them and show the floor"
        )

    labels = [g.label for g in rows_cfg]
    any_units = set().union(*(set(v) for v in per_unit.values()))
    shared = sorted(set.intersection(*(set(v) for v in per_unit.values())))
    if not shared:
        raise DataError(
            f"{run.path}: no unit has a {scorer} value from every row ({', '.join(labels)}): "
            "nothing to pair; score every configuration on the same units"
        )
    missing = {g.label: len(any_units) - len(per_unit[g.label]) for g in rows_cfg}
    missing = {k: v for k, v in missing.items() if v}

    # Comparability: the rows as runs, for compare's check (settings, held-out excerpts).
    shared_set = set(shared)
    row_runs = []
    for g in rows_cfg:
        ids = {e.explanation_id for e in g.explanations}
        row_runs.append(
            _RowRun(
                path=run.path,
                manifest=None,
                explanations=g.explanations,
                simulations=[x for x in run.simulations if x.explanation_id in ids],
                scores=[scores[i] for i in ids if i in scores and scores[i].unit_id in shared_set],
                label=g.label,
            )
        )
    mismatches, check_notes = check_comparable(row_runs, shared, scorer)
    # Different explainer prompts are what a leaderboard compares: not worth a note.
    notes += [n for n in check_notes if not n.startswith("explainer prompt versions differ")]
    if mismatches and not allow_mismatch:
        raise DataError(
            f"{run.path}: the {scorer} scores of the leaderboard rows are not comparable: "
            + "; ".join(mismatches)
            + f" (score every configuration with one {scorer} setting, or pass --allow-mismatch)"
        )
    warnings, sim_notes = simulator_check_warnings([run], scorer)
    notes += sim_notes

    table = {lab: np.array([np.mean(per_unit[lab][u]) for u in shared]) for lab in labels}
    if against is not None:
        ref = find_row(labels, [g.config_hash for g in rows_cfg], against)
    else:
        ref = next((i for i, g in enumerate(rows_cfg) if not is_baseline(g.method)), 0)
    ref_label = labels[ref] if len(labels) > 1 or against is not None else None
    base = table[labels[ref]]

    rows = []
    for g in rows_cfg:
        v = table[g.label]
        ci = bootstrap_mean_ci(v, n_resamples=n_resamples, seed=seed)
        expl = [e for e in g.explanations if e.unit_id in shared_set]
        row = LeaderboardRow(
            label=g.label,
            config_hash=g.config_hash,
            method=g.method,
            prompt_version=g.prompt_version,
            explainer=g.explainer,
            baseline=is_baseline(g.method),
            reference=g.label == ref_label,
            units=len(shared),
            units_scored=len(per_unit[g.label]),
            explanations=sum(1 for e in expl if e.explanation_id in scores),
            mean=float(v.mean()),
            ci_low=ci[0] if ci else None,
            ci_high=ci[1] if ci else None,
            median=float(np.median(v)),
            **_usage_columns(g, expl, len(shared)),  # type: ignore[arg-type]
        )
        if ref_label is not None and g.label != ref_label:
            t = paired_test(v, base, n_resamples=n_resamples, seed=seed)
            row.diff, row.wilcoxon_p, row.ttest_p = t.mean_diff, t.wilcoxon_p, t.ttest_p
            row.diff_ci_low, row.diff_ci_high = t.ci if t.ci else (None, None)
            row.win_rate = t.win_rate
        if row.cost_per_unit_usd:
            row.score_per_usd = row.mean / row.cost_per_unit_usd
        rows.append(row)
    rows.sort(key=lambda r: -r.mean)
    return Leaderboard(
        run=str(run.path),
        scorer=scorer,
        metric=metric,
        against=ref_label,
        n_units=len(shared),
        n_units_any=len(any_units),
        missing=missing,
        rows=rows,
        notes=notes,
        warnings=warnings,
        mismatches=mismatches,
        unit_scores={lab: dict(zip(shared, map(float, table[lab]), strict=True)) for lab in labels},
        examples=_examples(rows_cfg, shared, scores, metric),
    )


def _examples(
    rows: list[_Config], shared: list[str], scores: dict[str, Score], metric: str
) -> list[Example]:
    """Each row's first scored explanation of the first `N_EXAMPLES` paired units."""
    out = []
    for unit in shared[:N_EXAMPLES]:
        for g in rows:
            e = next(
                (e for e in g.explanations if e.unit_id == unit and e.explanation_id in scores),
                None,
            )
            if e is not None:
                value = scores[e.explanation_id].metrics.get(metric)
                out.append(Example(unit_id=unit, label=g.label, value=value, text=e.text))
    return out


# ---------------------------------------------------------------- output


def _usd(v: float | None, free: bool) -> str:
    if free:
        return "free"
    if v is None:
        return "unknown"
    return f"${v:.3g}"


def _per_usd(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.1f}" if abs(v) >= 1 else f"{v:.3g}"


def _tokens(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


def formatted_rows(board: Leaderboard) -> pd.DataFrame:
    """The table as display strings (Markdown, HTML and the terminal show these)."""
    ref = board.against or "–"
    out = []
    for r in board.rows:
        if r.reference:
            diff = "reference"
        elif r.diff is None:
            diff = "–"
        else:
            diff = f"{_fmt(r.diff)} [{_fmt(r.diff_ci_low)}, {_fmt(r.diff_ci_high)}]"
        out.append(
            {
                "row": r.label,
                "kind": "baseline" if r.baseline else "explainer",
                "units": str(r.units),
                f"mean {board.metric} [95% CI]": f"{_fmt(r.mean)} [{_fmt(r.ci_low)}, "
                f"{_fmt(r.ci_high)}]",
                f"Δ vs {ref} [95% CI]": diff,
                "Wilcoxon p": _fmt(r.wilcoxon_p),
                "win rate": "–" if r.win_rate is None else f"{r.win_rate:.0%}",
                "explainer tokens/unit": _tokens(r.tokens_per_unit),
                "selection tokens/unit": _tokens(r.selection_tokens_per_unit),
                "cost/unit": _usd(r.cost_per_unit_usd, r.free),
                f"{board.metric} per $": _per_usd(r.score_per_usd),
            }
        )
    return pd.DataFrame(out).set_index("row")


def header_lines(board: Leaderboard) -> list[str]:
    """What the table is, which units it pairs, what was dropped, and the warnings."""
    lines = [
        f"{len(board.rows)} explain configurations of {board.run}, ranked by the mean "
        f"{board.scorer} {board.metric} over the {board.n_units} units every row has a "
        "score for (per unit: the mean over the row's explanations).",
    ]
    if board.n_dropped:
        lacking = ", ".join(f"{k} lacks {v}" for k, v in board.missing.items())
        lines.append(
            f"Dropped {board.n_dropped} of {board.n_units_any} units not scored by every "
            f"row ({lacking})."
        )
    if board.against:
        lines.append(
            f"Δ: paired difference against {board.against} (95% bootstrap interval over "
            "units), Wilcoxon signed-rank p, win rate (ties count half). Cost: explainer + "
            "selection per unit."
        )
    lines += [f"MISMATCH: {m}" for m in board.mismatches]
    lines += [f"SIMULATOR CHECK FAILED: {w}" for w in board.warnings]
    lines += [f"note: {n}" for n in board.notes]
    return lines


def _examples_frame(board: Leaderboard) -> pd.DataFrame:
    rows = [
        {
            "unit": x.unit_id,
            "row": x.label,
            board.metric: _fmt(x.value),
            "explanation": x.text if len(x.text) <= 160 else x.text[:159] + "…",
        }
        for x in board.examples
    ]
    return pd.DataFrame(rows).set_index("unit") if rows else pd.DataFrame()


def to_markdown(boards: Sequence[Leaderboard]) -> str:
    parts = ["# Explainer leaderboard"]
    for b in boards:
        parts += [
            f"## {md_escape(b.scorer)} ({md_escape(b.metric)})",
            "\n".join(f"- {md_escape(line)}" for line in header_lines(b)),
            markdown_table(formatted_rows(b)),
        ]
        ex = _examples_frame(b)
        if not ex.empty:
            parts += [f"### Example explanations ({md_escape(b.scorer)})", markdown_table(ex)]
    return "\n\n".join(parts) + "\n"


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [df.index.name or "", *df.columns])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in [idx, *row.tolist()]) + "</tr>"
        for idx, row in df.iterrows()
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(boards: Sequence[Leaderboard], png: bytes | None = None) -> str:
    """A self-contained page (the plot inlined); every text from the run is escaped."""
    sections = []
    for b in boards:
        items = "".join(f"<li>{html.escape(line)}</li>" for line in header_lines(b))
        sections.append(
            f"<h2>{html.escape(b.scorer)} ({html.escape(b.metric)})</h2><ul>{items}</ul>"
            + _html_table(formatted_rows(b))
        )
        ex = _examples_frame(b)
        if not ex.empty:
            sections.append(
                f"<h3>Example explanations ({html.escape(b.scorer)})</h3>" + _html_table(ex)
            )
    img = ""
    if png is not None:
        img = f'<img alt="leaderboard plot" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        "<title>Explainer leaderboard</title><style>body{font-family:sans-serif;margin:2em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
        f"</head><body><h1>Explainer leaderboard</h1>{''.join(sections)}{img}</body></html>\n"
    )


def to_frame(boards: Sequence[Leaderboard]) -> pd.DataFrame:
    """Every row of every board, unrounded, with its scorer and metric."""
    rows = [
        {"scorer": b.scorer, "metric": b.metric, **r.model_dump()} for b in boards for r in b.rows
    ]
    return pd.DataFrame(rows)


def write_csv(boards: Sequence[Leaderboard], path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        to_frame(boards).to_csv(tmp, index=False)


def plot_png(boards: Sequence[Leaderboard]) -> bytes:
    """Mean score with its 95% interval per row, one panel per scorer; baselines grey,
    the reference row orange, the other explainers blue."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows = max(len(b.rows) for b in boards)
    fig, axes = plt.subplots(
        1, len(boards), figsize=(6 * len(boards), 1.2 + 0.45 * n_rows), squeeze=False
    )
    for ax, b in zip(axes[0], boards, strict=True):
        rows = list(reversed(b.rows))  # best at the top
        y = np.arange(len(rows))
        means = np.array([r.mean for r in rows])
        lo = np.array([r.mean - (r.ci_low if r.ci_low is not None else r.mean) for r in rows])
        hi = np.array([(r.ci_high if r.ci_high is not None else r.mean) - r.mean for r in rows])
        colours = [
            "tab:grey" if r.baseline else "tab:orange" if r.reference else "tab:blue" for r in rows
        ]
        ax.barh(y, means, xerr=[lo, hi], color=colours, capsize=3, alpha=0.85)
        ax.set_yticks(y, [r.label for r in rows], fontsize=8)
        ax.axvline(0, color="black", lw=0.6)
        ax.set_xlabel(f"mean {b.scorer} {b.metric} (95% CI)")
        ax.set_title(f"{b.scorer}: {b.n_units} paired units", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    return buf.getvalue()


def write_report(boards: Sequence[Leaderboard], out_dir: Path) -> list[Path]:
    """OUT/leaderboard.md, .html (plot inlined), .csv and .png; returns the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"--out {out_dir} is a file; give a folder to write the report into")
    out_dir.mkdir(parents=True, exist_ok=True)
    png = plot_png(boards)
    paths = {name: out_dir / f"leaderboard.{name}" for name in ("md", "html", "csv", "png")}
    write_text_atomic(paths["md"], to_markdown(boards))
    write_text_atomic(paths["html"], to_html(boards, png))
    write_csv(boards, paths["csv"])
    with atomic_path(paths["png"]) as tmp:
        tmp.write_bytes(png)
    return list(paths.values())
