"""Compare runs that explained the same units: which explainer writes better explanations?

One scorer's metric is compared, read by name from `Score.metrics` (by default the
reference `simulation` scorer if the baseline has it, else its first scorer, and that
scorer's primary metric), so a new scorer can be compared without edits here. Scores
are only comparable when every run scored with the same settings (the scorer's
`comparable` dict: simulator, strategy, prompt version...) on the same held-out
excerpts; `check_comparable` lists every difference and the caller refuses (or warns
loudly) when the list is not empty. Only the units every run scored are compared.

Per unit a run's score is the mean of its explanations' values (the honest default: a
run that samples more explanations gets no best-of-k bonus) or, with
`per_unit="best"`, the best one. Intervals are percentile bootstraps over units; the
paired difference against the first run gets a bootstrap interval, a Wilcoxon
signed-rank p-value and a paired t-test p-value.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from neuroscribe.errors import DataError
from neuroscribe.jsonl import atomic_path
from neuroscribe.rundir import Run, split_unit_id
from neuroscribe.schema import Score
from neuroscribe.scorer.base import fingerprint

PerUnit = Literal["mean", "best"]

# The scorer compare, publish and view pick when none is named: the reference one.
REFERENCE_SCORER = "simulation"


def default_scorer(run: Run) -> str | None:
    """The reference scorer if the run has it, else the run's first scorer (None: unscored)."""
    scorers = run.scorers()
    if REFERENCE_SCORER in scorers:
        return REFERENCE_SCORER
    return scorers[0] if scorers else None


def default_metric(run: Run, scorer: str) -> str:
    """The primary metric of `scorer`'s scores in this run (of its first score line)."""
    for s in run.scores:
        if s.scorer == scorer:
            return s.primary_metric
    raise DataError(f"{run.path}: no scores by scorer {scorer!r} (it has: {_scorer_list(run)})")


def _scorer_list(run: Run) -> str:
    return ", ".join(run.scorers()) or "none"


# ---------------------------------------------------------------- statistics (pure)


def bootstrap_mean_ci(
    values: np.ndarray, n_resamples: int = 10_000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean; None with fewer than two values."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return None
    rng = np.random.default_rng(seed)
    # Resample in chunks so memory stays ~16 MB however many units there are; the draws
    # are the same as one (n_resamples, n) call.
    rows = max(1, 2_000_000 // v.size)
    means = np.concatenate(
        [
            v[rng.integers(0, v.size, size=(min(rows, n_resamples - i), v.size))].mean(axis=1)
            for i in range(0, n_resamples, rows)
        ]
    )
    alpha = (1 - level) / 2
    lo, hi = np.quantile(means, [alpha, 1 - alpha])
    return float(lo), float(hi)


@dataclass
class PairedTest:
    mean_diff: float
    ci: tuple[float, float] | None
    wilcoxon_p: float | None
    ttest_p: float | None
    wins: int
    ties: int
    losses: int

    @property
    def win_rate(self) -> float:
        """Share of units where the run beats the baseline; a tie counts half."""
        n = self.wins + self.ties + self.losses
        return (self.wins + 0.5 * self.ties) / n if n else math.nan


def paired_test(
    run: np.ndarray, base: np.ndarray, n_resamples: int = 10_000, seed: int = 0
) -> PairedTest:
    """Compare per-unit scores of `run` against `base` (same units, same order)."""
    a = np.asarray(run, dtype=np.float64)
    b = np.asarray(base, dtype=np.float64)
    d = a - b
    wilcoxon_p = ttest_p = None
    nonzero = d[d != 0]
    if nonzero.size == 0:
        # Identical scores: no evidence of a difference at all.
        wilcoxon_p = ttest_p = 1.0
    elif d.size >= 2:
        from scipy import stats  # imported here: the rest of the module does without it

        wilcoxon_p = float(stats.wilcoxon(a, b).pvalue)
        if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
            # The same non-zero difference on every unit: t is infinite, p is 0.
            ttest_p = 0.0
        else:
            ttest_p = float(stats.ttest_rel(a, b).pvalue)
    return PairedTest(
        mean_diff=float(d.mean()) if d.size else math.nan,
        ci=bootstrap_mean_ci(d, n_resamples=n_resamples, seed=seed),
        wilcoxon_p=wilcoxon_p,
        ttest_p=ttest_p,
        wins=int((d > 0).sum()),
        ties=int((d == 0).sum()),
        losses=int((d < 0).sum()),
    )


# ---------------------------------------------------------------- comparability


# Keys of a `comparable` dict that read well on their own; others are prefixed with the
# scorer's name ("simulation strategy", "detection prompt version").
_PLAIN_KEYS = {"scorer", "simulator"}


def _label(scorer: str, key: str) -> str:
    words = key.replace("_", " ")
    return words if key in _PLAIN_KEYS else f"{scorer} {words}"


def _shown(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, sort_keys=True)


def _settings(scores: list[Score]) -> set[str]:
    """The distinct `comparable` dicts of these scores, as canonical JSON."""
    return {json.dumps(s.comparable, sort_keys=True, default=str) for s in scores}


def _heldout_fingerprints(run: Run, scores: list[Score]) -> dict[str, frozenset[str]]:
    """Per unit, the fingerprints of the held-out excerpts its explanations were scored on.

    A score's own `heldout_hash`; for lines upgraded from 0.1 (which lack it) the same
    fingerprint computed from that explanation's simulations. Units with neither are
    left out.
    """
    sims = run.simulations_by_explanation()
    per_unit: dict[str, set[str]] = defaultdict(set)
    for s in scores:
        h = s.heldout_hash
        if h is None and s.explanation_id in sims:
            h = fingerprint(
                (x.excerpt_id, x.role, x.tokens, x.true_activations) for x in sims[s.explanation_id]
            )
        if h is not None:
            per_unit[s.unit_id].add(h)
    return {u: frozenset(v) for u, v in per_unit.items()}


def check_comparable(
    runs: list[Run], units: list[str], scorer: str | None = None
) -> tuple[list[str], list[str]]:
    """Return (mismatches, notes) for `scorer`'s scores. Mismatches make them incomparable.

    Per run, every score must carry the same `comparable` settings, equal across runs
    (each differing key is named); per shared unit, the held-out excerpts must match.
    """
    scorer = scorer or default_scorer(runs[0]) or REFERENCE_SCORER
    mismatches: list[str] = []
    notes: list[str] = []
    scores = [r.latest_scores(scorer) for r in runs]
    settings = [[s.comparable for s in run_scores] for run_scores in scores]
    keys = list(dict.fromkeys(k for per_run in settings for d in per_run for k in d))
    for key in keys:
        per_run = [{_shown(d.get(key)) for d in ds} for ds in settings]
        for r, v in zip(runs, per_run, strict=True):
            if len(v) > 1:
                mismatches.append(f"{r.name} mixes several {_label(scorer, key)}s: {sorted(v)}")
        if len({frozenset(v) for v in per_run}) > 1:
            shown = ", ".join(f"{r.name}={sorted(v)}" for r, v in zip(runs, per_run, strict=True))
            mismatches.append(f"different {_label(scorer, key)}: {shown}")
    if not mismatches and len({frozenset(_settings(x)) for x in scores}) > 1:
        # Every key takes the same values, combined differently: name the whole settings.
        shown = ", ".join(
            f"{r.name}={sorted(_settings(x))}" for r, x in zip(runs, scores, strict=True)
        )
        mismatches.append(f"different {scorer} settings: {shown}")
    if not keys:
        notes.append(f"the {scorer} scores declare no settings to compare (no `comparable`)")

    fps = [_heldout_fingerprints(r, x) for r, x in zip(runs, scores, strict=True)]
    missing = [r.name for r, fp in zip(runs, fps, strict=True) if not fp]
    if missing:
        notes.append(
            "cannot check held-out excerpts (no heldout_hash in scores.jsonl and no "
            f"simulations.jsonl) for: {', '.join(missing)}"
        )
    for r, fp in zip(runs, fps, strict=True):
        mixed = [u for u in units if len(fp.get(u, ())) > 1]
        if mixed:
            mismatches.append(
                f"{r.name} scored explanations of {len(mixed)} units on different held-out "
                f"excerpts (first: {mixed[0]})"
            )
    known = [fp for fp in fps if fp]
    if len(known) > 1:
        differ = [u for u in units if len({fp.get(u) for fp in known if u in fp}) > 1]
        if differ:
            mismatches.append(
                f"held-out excerpts differ for {len(differ)} of {len(units)} shared units "
                f"(first: {differ[0]})"
            )
    explain_prompts = [{e.prompt_version for e in r.explanations} for r in runs]
    if len({frozenset(p) for p in explain_prompts}) > 1:
        notes.append(
            "explainer prompt versions differ (fine when that is what you compare): "
            + ", ".join(f"{r.name}={sorted(p)}" for r, p in zip(runs, explain_prompts, strict=True))
        )
    return mismatches, notes


# ---------------------------------------------------------------- the comparison


@dataclass
class Comparison:
    """Everything `neuroscribe compare` shows; the DataFrames are the public result."""

    runs: list[str]
    n_shared: int
    n_units: dict[str, int]
    per_unit: str
    summary: pd.DataFrame  # one row per run
    by_layer: pd.DataFrame  # layer × run: mean per-unit value
    unit_scores: pd.DataFrame  # unit × run
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    scorer: str = REFERENCE_SCORER
    metric: str = "score"
    # Simulators whose ground-truth check says their scores are noise (shown loudly).
    check_warnings: list[str] = field(default_factory=list)
    check_notes: list[str] = field(default_factory=list)  # simulators never checked


def simulator_check_warnings(runs: list[Run], scorer: str) -> tuple[list[str], list[str]]:
    """(warnings, notes) from the simulators' ground-truth checks in the runs' manifests.

    A simulator whose check says it cannot tell true explanations from false ones makes
    every difference between these scores noise: that is a warning. A simulator never
    checked gets a note saying how to check it.
    """
    if scorer != REFERENCE_SCORER:
        return [], []
    warnings: list[str] = []
    notes: list[str] = []
    for run in runs:
        checks = run.manifest.simulator_checks if run.manifest else {}
        keys = {
            "|".join(str(s.comparable.get(k)) for k in ("simulator", "strategy", "prompt_version"))
            for s in run.scores
            if s.scorer == scorer
        }
        for key in sorted(keys):
            entry = checks.get(key)
            sim = key.split("|")[0]
            if entry is None:
                notes.append(
                    f"{run.name}: simulator {sim} has no ground-truth check "
                    "(neuroscribe check simulator) — whether its scores discriminate is unknown"
                )
            elif not entry.get("trustworthy"):
                warnings.append(f"{run.name}: simulator {sim}: {entry.get('verdict')}")
    return list(dict.fromkeys(warnings)), list(dict.fromkeys(notes))


def unit_scores(
    run: Run, per_unit: PerUnit = "mean", scorer: str | None = None, metric: str | None = None
) -> pd.Series:
    """One value per unit: the mean (or best) of `metric` over its explanations' latest scores.

    `scorer` defaults to `default_scorer(run)`, `metric` to that scorer's primary metric.
    Explanations whose score lacks the metric (a None) are left out; so is a unit with
    no value at all.
    """
    scorer = scorer or default_scorer(run)
    if scorer is None:
        return pd.Series({}, name=run.name, dtype=float)
    metric = metric or default_metric(run, scorer)
    by_unit: dict[str, list[float]] = defaultdict(list)
    for s in run.latest_scores(scorer):
        v = s.metrics.get(metric)
        if v is not None:
            by_unit[s.unit_id].append(v)
    agg = np.mean if per_unit == "mean" else np.max
    return pd.Series({u: float(agg(v)) for u, v in by_unit.items()}, name=run.name, dtype=float)


def _resolve(runs: list[Run], scorer: str | None, metric: str | None) -> tuple[str, str]:
    """The scorer and metric to compare (defaults from the baseline), checked in every run."""
    base = runs[0]
    scorer = scorer or default_scorer(base)
    if scorer is None:
        raise DataError(f"{base.path}: no scores.jsonl lines: nothing to compare")
    metric = metric or default_metric(base, scorer)
    for run in runs:
        if scorer not in run.scorers():
            raise DataError(
                f"{run.path}: no scores by scorer {scorer!r} (it has: {_scorer_list(run)}); "
                "choose one with --scorer"
            )
        names = {m for s in run.latest_scores(scorer) for m in s.metrics}
        if metric not in names:
            raise DataError(
                f"{run.path}: the {scorer} scores have no metric {metric!r} "
                f"(they have: {', '.join(sorted(names)) or 'none'}); choose one with --metric"
            )
    return scorer, metric


def _run_labels(runs: list[Run]) -> list[str]:
    """Directory names, made unique with the parent folder (then an index) when needed."""
    labels = [r.path.name for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{r.path.parent.name}/{r.path.name}" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{i}:{lab}" for i, lab in enumerate(labels)]
    return labels


def _layers(run: Run, units: list[str]) -> pd.Series:
    """Each unit's layer, from its record when there is one, else from its id."""
    records = run.records_by_unit()
    out = {}
    for u in units:
        rec = records.get(u)
        if rec is not None and rec.layer is not None:
            out[u] = str(rec.layer)
        else:
            out[u] = split_unit_id(u)[1] or "?"
    return pd.Series(out, name="layer")


def _usage_per_unit(run: Run, units: set[str]) -> dict[str, float | None]:
    """Tokens and cost of the calls attributed to the compared units, per unit."""
    n = len(units)
    rows = [u for u in run.usage if u.unit_id in units]
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in rows)
    explain = sum(u.prompt_tokens + u.completion_tokens for u in rows if u.stage == "explain")
    costs = [u.cost_usd for u in rows if u.cost_usd is not None]
    return {
        "tokens_per_unit": tokens / n if rows else None,
        "explain_tokens_per_unit": explain / n if rows else None,
        "cost_per_unit_usd": sum(costs) / n if costs else None,
    }


def _explainers(run: Run) -> str:
    names = {s.explainer for s in run.scores} or {e.explainer for e in run.explanations}
    if not names and run.manifest is not None:
        v = run.manifest.stages.get("explain", {}).get("explainer")
        names = {str(v)} if v else set()
    return ", ".join(sorted(names)) or "?"


def compare_runs(
    runs: list[Run],
    per_unit: PerUnit = "mean",
    n_resamples: int = 10_000,
    seed: int = 0,
    scorer: str | None = None,
    metric: str | None = None,
) -> Comparison:
    """Compare runs on the units they all scored; the first run is the baseline.

    `scorer` and `metric` name what is compared (see `unit_scores` for the defaults,
    taken from the baseline); every run must have that scorer's metric.
    """
    if not runs:
        raise DataError("compare needs at least one run")
    scorer, metric = _resolve(runs, scorer, metric)
    labels = _run_labels(runs)
    series = []
    for run, label in zip(runs, labels, strict=True):
        s = unit_scores(run, per_unit, scorer=scorer, metric=metric)
        if s.empty:
            raise DataError(f"{run.path}: no {scorer} {metric} values: nothing to compare")
        series.append(s.rename(label))
    shared = sorted(set.intersection(*(set(s.index) for s in series)))
    if not shared:
        raise DataError("the runs share no scored unit: nothing to compare")
    table = pd.concat([s.loc[shared] for s in series], axis=1)
    mismatches, notes = check_comparable(runs, shared, scorer)
    check_warnings, check_notes = simulator_check_warnings(runs, scorer)

    base = table[labels[0]].to_numpy()
    rows = []
    for run, label in zip(runs, labels, strict=True):
        v = table[label].to_numpy()
        ci = bootstrap_mean_ci(v, n_resamples=n_resamples, seed=seed)
        row: dict[str, object] = {
            "run": label,
            "scorer": scorer,
            "metric": metric,
            "explainer": _explainers(run),
            "units": len(v),
            "mean_score": float(v.mean()),
            "ci_low": ci[0] if ci else None,
            "ci_high": ci[1] if ci else None,
            "median_score": float(np.median(v)),
        }
        if label != labels[0]:
            t = paired_test(v, base, n_resamples=n_resamples, seed=seed)
            row.update(
                diff_vs_first=t.mean_diff,
                diff_ci_low=t.ci[0] if t.ci else None,
                diff_ci_high=t.ci[1] if t.ci else None,
                wilcoxon_p=t.wilcoxon_p,
                ttest_p=t.ttest_p,
                win_rate=t.win_rate,
            )
        else:
            row.update(
                diff_vs_first=None,
                diff_ci_low=None,
                diff_ci_high=None,
                wilcoxon_p=None,
                ttest_p=None,
                win_rate=None,
            )
        row.update(_usage_per_unit(run, set(shared)))
        rows.append(row)
    summary = pd.DataFrame(rows).set_index("run")

    layers = _layers(runs[0], shared)
    by_layer = table.groupby(layers).mean()
    by_layer.insert(0, "units", table.groupby(layers).size())
    by_layer = by_layer.sort_index(key=lambda idx: idx.map(_layer_sort_key))
    return Comparison(
        runs=labels,
        n_shared=len(shared),
        n_units={label: len(s) for label, s in zip(labels, series, strict=True)},
        per_unit=per_unit,
        summary=summary,
        by_layer=by_layer,
        unit_scores=table,
        mismatches=mismatches,
        notes=notes,
        scorer=scorer,
        metric=metric,
        check_warnings=check_warnings,
        check_notes=check_notes,
    )


def _layer_sort_key(layer: str) -> tuple[int, int | str]:
    return (0, int(layer)) if str(layer).lstrip("-").isdigit() else (1, str(layer))


# ---------------------------------------------------------------- output


def _fmt(v: object, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        if v != 0 and abs(v) < 10 ** (-digits):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def formatted_summary(c: Comparison) -> pd.DataFrame:
    """The summary as display strings: interval columns merged, numbers rounded."""
    s = c.summary
    out = pd.DataFrame(index=s.index)
    out["explainer"] = s["explainer"]
    out["units"] = s["units"].astype(str)
    out[f"mean {c.metric} [95% CI]"] = [
        f"{_fmt(m)} [{_fmt(lo)}, {_fmt(hi)}]"
        for m, lo, hi in zip(s["mean_score"], s["ci_low"], s["ci_high"], strict=True)
    ]
    out["median"] = s["median_score"].map(_fmt)
    out["Δ vs first [95% CI]"] = [
        "–" if d is None or pd.isna(d) else f"{_fmt(d)} [{_fmt(lo)}, {_fmt(hi)}]"
        for d, lo, hi in zip(s["diff_vs_first"], s["diff_ci_low"], s["diff_ci_high"], strict=True)
    ]
    out["wilcoxon p"] = s["wilcoxon_p"].map(_fmt)
    out["t-test p"] = s["ttest_p"].map(_fmt)
    out["win rate"] = s["win_rate"].map(_fmt)
    out["tokens/unit"] = s["tokens_per_unit"].map(lambda v: _fmt(v, 0))
    out["cost/unit $"] = s["cost_per_unit_usd"].map(lambda v: _fmt(v, 4))
    return out


def md_escape(text: str) -> str:
    """Untrusted text (run names, layers, messages) as literal Markdown text.

    Markdown renderers pass raw HTML through, so `&`, `<` and `>` become entities; a
    backslash is doubled and a newline becomes a space, so the text cannot end a table
    row or escape our own markup.
    """
    text = text.replace("\\", "\\\\").replace("\r", " ").replace("\n", " ")
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (no tabulate dependency); cells are escaped."""

    def cell(v: object) -> str:
        return md_escape(str(v)).replace("|", "\\|")

    head = [df.index.name or "", *map(str, df.columns)]
    lines = ["| " + " | ".join(cell(h) for h in head) + " |", "|" + "---|" * len(head)]
    for idx, row in df.iterrows():
        lines.append("| " + " | ".join(cell(v) for v in [idx, *row.tolist()]) + " |")
    return "\n".join(lines)


def _header_lines(c: Comparison) -> list[str]:
    lines = [
        f"Compared {c.n_shared} units scored by all {len(c.runs)} runs "
        f"(scorer: {c.scorer}, metric: {c.metric}; per-unit value: {c.per_unit} of its "
        f"explanations; baseline: {c.runs[0]}).",
    ]
    for label in c.runs:
        if c.n_units[label] != c.n_shared:
            lines.append(f"{label}: {c.n_units[label] - c.n_shared} unshared units left out.")
    lines += [f"MISMATCH: {m}" for m in c.mismatches]
    lines += [f"SIMULATOR CHECK FAILED: {w}" for w in c.check_warnings]
    lines += [f"note: {n}" for n in c.notes + c.check_notes]
    return lines


def to_markdown(c: Comparison) -> str:
    by_layer = c.by_layer.map(lambda v: _fmt(v) if isinstance(v, float) else str(v))
    return (
        "\n\n".join(
            [
                "# Explainer comparison",
                "\n".join(f"- {md_escape(line)}" for line in _header_lines(c)),
                markdown_table(formatted_summary(c)),
                f"## Mean {md_escape(c.metric)} by layer ({md_escape(c.scorer)})",
                markdown_table(by_layer),
            ]
        )
        + "\n"
    )


def to_html(c: Comparison) -> str:
    """A standalone HTML page; pandas escapes every cell."""
    import html

    items = "".join(f"<li>{html.escape(line)}</li>" for line in _header_lines(c))
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>neuroscribe compare</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}</style></head><body>"
        f"<h1>Explainer comparison</h1><ul>{items}</ul>"
        f"{formatted_summary(c).to_html(escape=True)}"
        f"<h2>Mean {html.escape(c.metric)} by layer ({html.escape(c.scorer)})</h2>"
        f"{c.by_layer.to_html(escape=True, float_format='%.3f')}"
        "</body></html>\n"
    )


def write_csv(c: Comparison, path: Path) -> None:
    """The raw summary numbers (no rounding), one row per run (written atomically)."""
    with atomic_path(path) as tmp:
        c.summary.to_csv(tmp)


def plot(c: Comparison, path: Path) -> None:
    """Distributions of the compared metric per run (box + points) and paired differences."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(c.runs)
    fig, axes = plt.subplots(1, 2 if n > 1 else 1, figsize=(5 + 2 * n, 4), squeeze=False)
    ax = axes[0][0]
    data = [c.unit_scores[r].to_numpy() for r in c.runs]
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, n + 1), c.runs, rotation=20, ha="right")
    rng = np.random.default_rng(0)
    for i, v in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.15, 0.15, v.size), v, s=8, alpha=0.5)
    ax.set_ylabel(f"{c.scorer} {c.metric} ({c.per_unit} per unit)")
    ax.set_title(f"{c.n_shared} shared units")
    if n > 1:
        ax2 = axes[0][1]
        base = c.unit_scores[c.runs[0]].to_numpy()
        diffs = [c.unit_scores[r].to_numpy() - base for r in c.runs[1:]]
        ax2.boxplot(diffs, showmeans=True)
        ax2.axhline(0, color="grey", lw=0.8)
        ax2.set_xticks(range(1, n), c.runs[1:], rotation=20, ha="right")
        ax2.set_title(f"difference vs {c.runs[0]}")
    fig.tight_layout()
    try:
        with atomic_path(path) as tmp:
            # The format from the suffix, as matplotlib would pick it (PNG without one).
            fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    finally:
        plt.close(fig)
