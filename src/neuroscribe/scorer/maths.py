"""Pure maths: normalisation, expected values, correlation scores, calibration, intervals.

Nothing here does I/O; everything takes and returns plain numbers so it is trivially
testable against hand-computed values and numpy.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

# ---------------------------------------------------------------- normalisation


def normalize_activations(
    records: Sequence[Sequence[float]], max_value: int = 10, max_activation: float | None = None
) -> list[list[int]]:
    """Map activations to integers 0..max_value, relative to the largest positive one.

    value = min(max_value, floor(max_value * relu(a) / max)), all zero if max <= 0.
    Unlike the reference, the maximum itself always maps to max_value: the tiny epsilon
    absorbs the float rounding that sent 10 * a / a to 9.999….
    """
    if max_activation is None:
        max_activation = max((max(r) for r in records if len(r)), default=0.0)
    if not max_activation > 0:
        return [[0 for _ in r] for r in records]
    out = []
    for r in records:
        row = []
        for a in r:
            v = max_value * max(a, 0.0) / max_activation
            row.append(min(max_value, math.floor(v + 1e-9)))
        out.append(row)
    return out


# ---------------------------------------------------------------- expected values


def digit_distribution(
    top_logprobs: Mapping[str, float], scale_max: int = 10
) -> list[float] | None:
    """Probability of each value 0..scale_max from a token->logprob map, renormalised.

    Tokens are matched after stripping whitespace ("3", " 3"); several spellings of the
    same value add up. Returns None when no value token is present at all.
    """
    mass = [0.0] * (scale_max + 1)
    found = False
    for tok, lp in top_logprobs.items():
        s = tok.strip()
        if not s.isdigit() or (len(s) > 1 and s[0] == "0"):
            continue
        v = int(s)
        if v > scale_max or lp is None or not math.isfinite(lp):
            continue
        mass[v] += math.exp(lp)
        found = True
    total = sum(mass)
    if not found or total <= 0:
        return None
    return [m / total for m in mass]


def expected_value(distribution: Sequence[float]) -> float:
    return float(sum(v * p for v, p in enumerate(distribution)))


# ---------------------------------------------------------------- correlation


@dataclass
class Correlation:
    value: float
    flag: str | None = None


def correlation(true: Sequence[float], pred: Sequence[float]) -> Correlation:
    """Pearson correlation, defined everywhere: constant input gives 0.0 and a flag."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.shape != p.shape:
        raise ValueError(f"length mismatch: {t.size} true vs {p.size} predicted")
    if t.size < 2:
        return Correlation(0.0, "too_few_tokens")
    t_const = bool(np.ptp(t) == 0)
    p_const = bool(np.ptp(p) == 0)
    if t_const and p_const:
        return Correlation(0.0, "constant_truth_and_prediction")
    if t_const:
        return Correlation(0.0, "constant_truth")
    if p_const:
        return Correlation(0.0, "constant_prediction")
    tc = t - t.mean()
    pc = p - p.mean()
    r = float((tc @ pc) / math.sqrt(float(tc @ tc) * float(pc @ pc)))
    return Correlation(max(-1.0, min(1.0, r)))


# ---------------------------------------------------------------- calibration


@dataclass
class Calibration:
    slope: float
    intercept: float

    def apply(self, pred: np.ndarray) -> np.ndarray:
        return self.slope * pred + self.intercept


def fit_calibration(true: Sequence[float], pred: Sequence[float]) -> Calibration | None:
    """Least-squares line true ≈ slope·pred + intercept; None if pred is constant."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if p.size < 2 or np.ptp(p) == 0:
        return None
    slope, intercept = np.polyfit(p, t, 1)
    return Calibration(float(slope), float(intercept))


def r2_score(true: Sequence[float], pred: Sequence[float]) -> float | None:
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    sst = float(((t - t.mean()) ** 2).sum())
    if sst == 0:
        return None
    return 1.0 - float(((t - p) ** 2).sum()) / sst


def abs_dev_score(true: Sequence[float], pred: Sequence[float]) -> float | None:
    """1 − mean|true − pred| / mean|true − mean(true)|: the share of absolute deviation explained."""
    t = np.asarray(true, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    base = float(np.abs(t - t.mean()).mean())
    if base == 0:
        return None
    return 1.0 - float(np.abs(t - p).mean()) / base


# ---------------------------------------------------------------- intervals


def bootstrap_interval(
    excerpts: Sequence[tuple[Sequence[float], Sequence[float]]],
    n_resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile interval of the concatenated correlation, resampling whole excerpts."""
    k = len(excerpts)
    if k < 2:
        return None
    rng = np.random.default_rng(seed)
    trues = [np.asarray(t, dtype=np.float64) for t, _ in excerpts]
    preds = [np.asarray(p, dtype=np.float64) for _, p in excerpts]
    values = []
    for _ in range(n_resamples):
        idx = rng.integers(0, k, size=k)
        c = correlation(
            np.concatenate([trues[i] for i in idx]), np.concatenate([preds[i] for i in idx])
        )
        if c.flag is None:
            values.append(c.value)
    if len(values) < n_resamples // 2:
        return None
    alpha = (1 - level) / 2
    lo, hi = np.quantile(values, [alpha, 1 - alpha])
    return float(lo), float(hi)


# ---------------------------------------------------------------- the explanation score


@dataclass
class ExcerptResult:
    """One simulated excerpt, as the scorer sees it."""

    kind: str  # "top" or "random"
    role: str  # "test" or "calibration"
    true: Sequence[float]
    pred: Sequence[float | None]  # None: the simulator gave no value for that token


@dataclass
class ScoreResult:
    score: float
    top_score: float | None
    random_score: float | None
    ci: tuple[float, float] | None
    r2: float | None
    abs_dev_score: float | None
    calibration: Calibration | None
    n_excerpts: int
    n_tokens: int
    flags: list[str] = field(default_factory=list)


def _drop_missing(e: ExcerptResult) -> ExcerptResult:
    """Leave out tokens the simulator gave no value for (pred None) from both sides."""
    if all(p is not None for p in e.pred):
        return e
    kept = [(t, p) for t, p in zip(e.true, e.pred, strict=True) if p is not None]
    return ExcerptResult(e.kind, e.role, [t for t, _ in kept], [p for _, p in kept])


def _concat(excerpts: Sequence[ExcerptResult]) -> tuple[np.ndarray, np.ndarray]:
    if not excerpts:
        return np.zeros(0), np.zeros(0)
    t = np.concatenate([np.asarray(e.true, dtype=np.float64) for e in excerpts])
    p = np.concatenate([np.asarray(e.pred, dtype=np.float64) for e in excerpts])
    return t, p


def score_explanation(
    excerpts: Sequence[ExcerptResult], n_resamples: int = 1000, seed: int = 0
) -> ScoreResult:
    """The OpenAI explanation score and companions over held-out excerpts.

    Tokens without a prediction (None) are left out of every figure and counted in a
    `missing_predictions:N` flag.

    `score` is the correlation over every test excerpt's tokens concatenated
    ("top-and-random"); top-only and random-only use the same pooling. R² and the
    absolute-deviation score are computed after a linear calibration fitted on the
    calibration excerpts (a negative slope flips the sign, as it should).
    """
    flags: list[str] = []
    missing = sum(p is None for e in excerpts if e.role == "test" for p in e.pred)
    if missing:
        flags.append(f"missing_predictions:{missing}")
    excerpts = [_drop_missing(e) for e in excerpts]
    test = [e for e in excerpts if e.role == "test" and len(e.true)]
    if not test:
        raise ValueError("no test excerpts to score")
    t, p = _concat(test)
    main = correlation(t, p)
    if main.flag:
        flags.append(main.flag)

    def sub(kind: str) -> float | None:
        part = [e for e in test if e.kind == kind]
        if not part:
            return None
        c = correlation(*_concat(part))
        if c.flag:
            flags.append(f"{kind}:{c.flag}")
        return c.value

    top = sub("top")
    rnd = sub("random")
    ci = bootstrap_interval([(e.true, e.pred) for e in test], n_resamples=n_resamples, seed=seed)

    calib = [e for e in excerpts if e.role == "calibration"]
    cal = fit_calibration(*_concat(calib)) if calib else None
    r2 = ad = None
    if cal is None:
        flags.append("no_calibration" if not calib else "constant_calibration_prediction")
    else:
        p_cal = cal.apply(p)
        r2 = r2_score(t, p_cal)
        ad = abs_dev_score(t, p_cal)
    return ScoreResult(
        score=main.value,
        top_score=top,
        random_score=rnd,
        ci=ci,
        r2=r2,
        abs_dev_score=ad,
        calibration=cal,
        n_excerpts=len(test),
        n_tokens=int(t.size),
        flags=flags,
    )


# ---------------------------------------------------------------- classification


def _binary(labels: Sequence[bool], predicted: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=bool)
    p = np.asarray(predicted, dtype=bool)
    if y.shape != p.shape:
        raise ValueError(f"length mismatch: {y.size} labels vs {p.size} predictions")
    return y, p


def balanced_accuracy(labels: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """Mean of the true-positive rate and the true-negative rate; None without both classes."""
    y, p = _binary(labels, predicted)
    if y.all() or not y.any():
        return None
    tpr = float((p & y).sum()) / float(y.sum())
    tnr = float((~p & ~y).sum()) / float((~y).sum())
    return (tpr + tnr) / 2


def f1_score(labels: Sequence[bool], predicted: Sequence[bool]) -> float | None:
    """F1 of the positive class: 2·TP / (2·TP + FP + FN); None with no positive at all
    (neither a true nor a predicted one: the score is undefined, not 0)."""
    y, p = _binary(labels, predicted)
    tp = float((p & y).sum())
    wrong = float((p ^ y).sum())  # false positives + false negatives
    if tp == 0 and wrong == 0:
        return None
    return 2 * tp / (2 * tp + wrong)


def roc_auc(labels: Sequence[bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve: P(score of a random positive > a random negative), ties
    counted half (the Mann-Whitney U statistic over mid-ranks); None without both classes."""
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ValueError(f"length mismatch: {y.size} labels vs {s.size} scores")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # mid-ranks for ties
    u = float(ranks[y].sum()) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


def classification_metrics(
    labels: Sequence[bool],
    predicted: Sequence[bool],
    p_yes: Sequence[float] | None = None,
) -> dict[str, float | None]:
    """The classifier scorers' metrics: balanced accuracy, accuracy, F1, and AUC from
    P("yes") when every item has one (else None)."""
    y, p = _binary(labels, predicted)
    return {
        "balanced_accuracy": balanced_accuracy(y, p),
        "accuracy": float((y == p).mean()) if y.size else None,
        "f1": f1_score(y, p),
        "auc": roc_auc(y, p_yes) if p_yes is not None else None,
    }
