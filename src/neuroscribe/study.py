"""Which scorer to trust? Agreement with simulation, cost per unit, ground truth.

`study_scorers(run)` pairs every scorer's headline metric with the reference scorer's
(simulation) on the same explanations and measures how far their rankings agree
(Spearman and Kendall, with bootstrap intervals over explanations); it adds each
scorer's tokens and cost per unit from usage.jsonl, and — when given — each scorer's
ground-truth check (how often it ranks the true explanation of a synthetic unit first).
The maths is pure; `write_report` renders Markdown, HTML and a scatter plot per scorer.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from neuroscribe.rundir import Run
from neuroscribe.scorer.registry import stage_name

STUDY_VERSION = 1


class GroundTruthRow(BaseModel):
    split: str
    n_units: int
    top1_rate: float
    chance_rate: float
    mean_margin: float
    margin_interval: tuple[float, float] | None


class ScorerRow(BaseModel):
    scorer: str
    metric: str
    model: str | None
    n_explanations: int  # scored by this scorer
    n_paired: int  # also scored by the reference, both metrics defined
    spearman: float | None = None
    spearman_interval: tuple[float, float] | None = None
    kendall: float | None = None
    kendall_interval: tuple[float, float] | None = None
    prompt_tokens_per_unit: float | None = None
    completion_tokens_per_unit: float | None = None
    cost_per_unit_usd: float | None = None
    tokens_vs_reference: float | None = None  # prompt tokens per unit / the reference's
    # Units with a `random`-baseline explanation and another one: how often this scorer
    # puts the other one above the random phrase (ties count half). A scorer that cannot
    # beat the floor on most units cannot rank explanations either.
    beats_random: float | None = None
    n_beats_random: int = 0
    groundtruth: GroundTruthRow | None = None


class ScorerStudy(BaseModel):
    study_version: int = STUDY_VERSION
    run: str
    reference: str
    n_units: int
    rows: list[ScorerRow]


# ---------------------------------------------------------------- maths


def rank_agreement(
    x: Sequence[float], y: Sequence[float], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Spearman's rho and Kendall's tau-b of paired values, each with a percentile
    bootstrap 95% interval over pairs. None where undefined (fewer than 3 pairs, or a
    constant side: nothing to rank)."""
    from scipy.stats import kendalltau, spearmanr

    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"length mismatch: {a.size} vs {b.size}")
    out: dict[str, Any] = {"spearman": None, "spearman_interval": None,
                           "kendall": None, "kendall_interval": None}  # fmt: skip
    if a.size < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.size, size=(n_boot, a.size))
    for name, fn in (("spearman", spearmanr), ("kendall", kendalltau)):
        value = float(fn(a, b)[0])
        boots = []
        for row in idx:
            sa, sb = a[row], b[row]
            if np.ptp(sa) > 0 and np.ptp(sb) > 0:
                boots.append(float(fn(sa, sb)[0]))
        boots = [v for v in boots if math.isfinite(v)]
        out[name] = value
        if len(boots) >= n_boot // 2:  # too many degenerate resamples: no interval
            lo, hi = np.percentile(boots, [2.5, 97.5])
            out[f"{name}_interval"] = (float(lo), float(hi))
    return out


# ---------------------------------------------------------------- the study


def headline_values(run: Run, scorer: str) -> tuple[str, dict[str, float], str | None]:
    """(metric, explanation id → the scorer's headline value, its model) on this run."""
    scores = run.latest_scores(scorer)
    metric = scores[0].primary_metric if scores else "score"
    values = {}
    for s in scores:
        v = s.metrics.get(s.primary_metric)
        if v is not None and math.isfinite(v):
            values[s.explanation_id] = float(v)
    model = scores[0].scorer_model if scores else None
    return metric, values, model


RANDOM_EXPLAINER = "random"


def beats_random(run: Run, values: dict[str, float]) -> tuple[float | None, int]:
    """(share of pairs where an explanation beats the same unit's random baseline, pairs).

    Every non-random explanation of a unit is paired with each of the unit's random ones
    (by explanation id in `values`, the scorer's headline values)."""
    by_unit: dict[str, dict[bool, list[float]]] = defaultdict(lambda: {True: [], False: []})
    for e in run.explanations:
        if e.explanation_id in values:
            is_random = e.explainer == RANDOM_EXPLAINER
            by_unit[e.unit_id][is_random].append(values[e.explanation_id])
    wins, n = 0.0, 0
    for groups in by_unit.values():
        for v in groups[False]:
            for r in groups[True]:
                wins += 1.0 if v > r else 0.5 if v == r else 0.0
                n += 1
    return (wins / n if n else None), n


def _free(model: str) -> bool:
    from neuroscribe.errors import NeuroscribeError
    from neuroscribe.llm.registry import backend_info

    try:
        return backend_info(model).free
    except NeuroscribeError:
        return False


def usage_per_unit(run: Run, stage: str) -> tuple[float | None, float | None, float | None]:
    """Mean prompt tokens, completion tokens and cost per unit of one stage (usage.jsonl,
    cached calls included: what the scorer costs to run, not what this run paid)."""
    per_unit: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0.0, True])
    for u in run.usage:
        if u.stage != stage or u.unit_id is None:
            continue
        row = per_unit[u.unit_id]
        row[0] += u.prompt_tokens
        row[1] += u.completion_tokens
        if u.cost_usd is not None:
            row[2] += u.cost_usd
        elif not _free(u.model):  # unknown price; an in-process model costs $0
            row[3] = False
    if not per_unit:
        return None, None, None
    rows = list(per_unit.values())
    cost = float(np.mean([r[2] for r in rows])) if all(r[3] for r in rows) else None
    return float(np.mean([r[0] for r in rows])), float(np.mean([r[1] for r in rows])), cost


def study_scorers(
    run: Run,
    *,
    reference: str = "simulation",
    groundtruth: dict[str, GroundTruthRow] | None = None,
    n_boot: int = 2000,
) -> ScorerStudy:
    """Every scorer of the run against `reference` (see the module docstring)."""
    from neuroscribe.errors import DataError

    scorers = run.scorers()
    if reference not in scorers:
        raise DataError(
            f"{run.path}: no {reference} scores to compare with (scorers here: "
            f"{', '.join(scorers) or 'none'}); run `neuroscribe score RUN --scorer "
            f"{reference},...` first"
        )
    _, ref_values, _ = headline_values(run, reference)
    ref_tokens = usage_per_unit(run, stage_name(reference))[0]
    rows = []
    for scorer in scorers:
        metric, values, model = headline_values(run, scorer)
        paired = sorted(set(values) & set(ref_values))
        row = ScorerRow(
            scorer=scorer, metric=metric, model=model,
            n_explanations=len(values), n_paired=len(paired),
        )  # fmt: skip
        if scorer != reference:
            agreement = rank_agreement([ref_values[i] for i in paired],
                                       [values[i] for i in paired], n_boot=n_boot)  # fmt: skip
            row = row.model_copy(update=agreement)
        prompt, completion, cost = usage_per_unit(run, stage_name(scorer))
        row.prompt_tokens_per_unit, row.completion_tokens_per_unit = prompt, completion
        row.cost_per_unit_usd = cost
        if prompt is not None and ref_tokens:
            row.tokens_vs_reference = prompt / ref_tokens
        elif prompt is None and scorer != reference:
            row.tokens_vs_reference = 0.0  # no model calls at all (e.g. embedding)
        row.beats_random, row.n_beats_random = beats_random(run, values)
        if groundtruth and scorer in groundtruth:
            row.groundtruth = groundtruth[scorer]
        rows.append(row)
    units = {s.unit_id for s in run.scores}
    return ScorerStudy(run=str(run.path), reference=reference, n_units=len(units), rows=rows)


# ---------------------------------------------------------------- report


def _num(v: float | None, fmt: str = "{:+.2f}") -> str:
    return "–" if v is None else fmt.format(v)


def _ci(v: tuple[float, float] | None) -> str:
    return "" if v is None else f" [{v[0]:+.2f}, {v[1]:+.2f}]"


def table_rows(study: ScorerStudy) -> list[list[str]]:
    """The report table as text cells (Markdown and HTML render the same cells)."""
    out = []
    for r in study.rows:
        ref = r.scorer == study.reference
        gt = r.groundtruth
        out.append([
            r.scorer + (" (reference)" if ref else ""),
            r.metric,
            str(r.n_paired if not ref else r.n_explanations),
            "–" if ref else _num(r.spearman) + _ci(r.spearman_interval),
            "–" if ref else _num(r.kendall) + _ci(r.kendall_interval),
            _num(r.prompt_tokens_per_unit, "{:,.0f}") if r.prompt_tokens_per_unit is not None
            else ("0" if r.tokens_vs_reference == 0 else "–"),
            _num(r.tokens_vs_reference, "{:.3f}") if not ref else "1",
            _num(r.cost_per_unit_usd, "${:.5f}"),
            "–" if r.beats_random is None else f"{r.beats_random:.0%} of {r.n_beats_random}",
            "–" if gt is None else f"{gt.top1_rate:.0%} (chance {gt.chance_rate:.0%}), "
            f"margin {gt.mean_margin:+.3f}{_ci(gt.margin_interval)} [{gt.split}, {gt.n_units}]",
        ])  # fmt: skip
    return out


HEADERS = ["scorer", "metric", "explanations", "Spearman vs reference", "Kendall vs reference",
           "prompt tokens / unit", "tokens vs reference", "cost / unit",
           "beats the random baseline", "ground truth: true first"]  # fmt: skip


def to_markdown(study: ScorerStudy) -> str:
    lines = [
        f"# Scorer study: {study.run}",
        "",
        f"{study.n_units} units; every scorer's headline metric against `{study.reference}` "
        "on the same explanations (bootstrap 95% intervals over explanations).",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "| " + " | ".join("---" for _ in HEADERS) + " |",
    ]
    for cells in table_rows(study):
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def scatter_png(run: Run, study: ScorerStudy) -> bytes | None:
    """One scatter per scorer (its headline metric against the reference's), as a PNG."""
    others = [r for r in study.rows if r.scorer != study.reference and r.n_paired]
    if not others:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, ref_values, _ = headline_values(run, study.reference)
    fig, axes = plt.subplots(1, len(others), figsize=(4 * len(others), 3.6), squeeze=False)
    for ax, row in zip(axes[0], others, strict=True):
        _, values, _ = headline_values(run, row.scorer)
        ids = sorted(set(values) & set(ref_values))
        ax.scatter([ref_values[i] for i in ids], [values[i] for i in ids], s=10, alpha=0.6)
        ax.set_xlabel(f"{study.reference} ({headline_values(run, study.reference)[0]})")
        ax.set_ylabel(f"{row.scorer} ({row.metric})")
        rho = "–" if row.spearman is None else f"{row.spearman:+.2f}"
        ax.set_title(f"{row.scorer}: Spearman {rho}, n={row.n_paired}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def to_html(study: ScorerStudy, png: bytes | None) -> str:
    """A self-contained page (the plot inlined); every text from the run is escaped."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        for cells in table_rows(study)
    )
    img = ""
    if png is not None:
        img = f'<img alt="scatter plots" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "img-src data:; style-src 'unsafe-inline'\">"
        f"<title>Scorer study</title><style>body{{font-family:sans-serif;margin:2em}}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
        f"</head><body><h1>Scorer study</h1><p>{html.escape(study.run)} · {study.n_units} units · "
        f"reference {html.escape(study.reference)}</p><table><tr>{head}</tr>{body}</table>"
        f"{img}</body></html>"
    )


def write_report(run: Run, study: ScorerStudy, out: Path) -> list[Path]:
    """`out`.md, `out`.html, `out`.png (the plot) and `out`.json; returns the paths."""
    from neuroscribe.jsonl import write_text_atomic

    out.parent.mkdir(parents=True, exist_ok=True)
    png = scatter_png(run, study)
    written = []
    for suffix, text in ((".md", to_markdown(study)), (".html", to_html(study, png)),
                         (".json", study.model_dump_json(indent=2))):  # fmt: skip
        path = out.with_suffix(suffix)
        write_text_atomic(path, text)
        written.append(path)
    if png is not None:
        path = out.with_suffix(".png")
        path.write_bytes(png)
        written.append(path)
    return written
