"""Scorer maths against hand-computed values and direct numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from neuroscribe.scorer import (
    ExcerptResult,
    abs_dev_score,
    bootstrap_interval,
    correlation,
    digit_distribution,
    expected_value,
    fit_calibration,
    normalize_activations,
    r2_score,
    score_explanation,
)


def test_normalize_basic_and_max_token_maps_to_ten():
    # 0.3 / 0.3 * 10 suffers float rounding in the reference (→ 9); here it is 10.
    out = normalize_activations([[0.0, 0.15, 0.3], [0.1, -1.0]])
    assert out == [[0, 5, 10], [3, 0]]


def test_normalize_negative_and_all_zero():
    assert normalize_activations([[-1.0, -2.0], [0.0]]) == [[0, 0], [0]]
    assert normalize_activations([[0.0, 0.0]]) == [[0, 0]]


def test_normalize_max_token_edge_case_many_values():
    for m in [0.1, 0.3, 0.7, 1.1, 3.3, 1e-7, 12345.6789]:
        assert normalize_activations([[m, m / 2]])[0][0] == 10


def test_normalize_other_scale():
    assert normalize_activations([[1.0, 0.5, 0.0]], max_value=9) == [[9, 4, 0]]


def test_digit_distribution_renormalises_and_ignores_non_digits():
    lp = {"3": math.log(0.2), " 5": math.log(0.2), "the": math.log(0.5), "\n": math.log(0.1)}
    dist = digit_distribution(lp)
    assert dist is not None
    assert dist[3] == pytest.approx(0.5)
    assert dist[5] == pytest.approx(0.5)
    assert expected_value(dist) == pytest.approx(4.0)


def test_digit_distribution_merges_spellings_and_respects_scale():
    lp = {"1": math.log(0.25), " 1": math.log(0.25), "10": math.log(0.5)}
    d10 = digit_distribution(lp, scale_max=10)
    assert d10 is not None and d10[1] == pytest.approx(0.5) and d10[10] == pytest.approx(0.5)
    d9 = digit_distribution(lp, scale_max=9)  # "10" is not on a 0–9 scale
    assert d9 is not None and d9[1] == pytest.approx(1.0)


def test_digit_distribution_missing_digits_is_none():
    assert digit_distribution({"a": -0.1, "b": -2.0}) is None
    assert digit_distribution({}) is None


def test_correlation_matches_numpy():
    rng = np.random.default_rng(0)
    t, p = rng.normal(size=50), rng.normal(size=50)
    assert correlation(t, p).value == pytest.approx(np.corrcoef(t, p)[0, 1])


def test_correlation_constant_inputs_flagged_not_nan():
    c = correlation([1, 2, 3], [5, 5, 5])
    assert c.value == 0.0 and c.flag == "constant_prediction"
    c = correlation([0, 0, 0], [1, 2, 3])
    assert c.value == 0.0 and c.flag == "constant_truth"


def test_score_concatenates_excerpts():
    ex = [
        ExcerptResult("top", "test", [0, 5, 10], [1, 4, 8]),
        ExcerptResult("top", "test", [0, 0, 7], [0, 1, 6]),
        ExcerptResult("random", "test", [0, 0, 0], [0, 2, 0]),
    ]
    res = score_explanation(ex, n_resamples=200)
    t = np.array([0, 5, 10, 0, 0, 7, 0, 0, 0], float)
    p = np.array([1, 4, 8, 0, 1, 6, 0, 2, 0], float)
    assert res.score == pytest.approx(np.corrcoef(t, p)[0, 1])
    assert res.top_score == pytest.approx(np.corrcoef(t[:6], p[:6])[0, 1])
    assert res.random_score == 0.0 and "random:constant_truth" in res.flags
    assert res.n_tokens == 9 and res.n_excerpts == 3
    assert "no_calibration" in res.flags and res.r2 is None


def test_calibration_r2_and_absdev():
    cal = fit_calibration([0, 2, 4, 6], [1, 2, 3, 4])
    assert cal is not None
    assert cal.slope == pytest.approx(2.0) and cal.intercept == pytest.approx(-2.0)
    assert r2_score([1, 2, 3], [1, 2, 3]) == pytest.approx(1.0)
    assert r2_score([1, 2, 3], [2, 2, 2]) == pytest.approx(0.0)
    # mean|t - p| = 1/3; mean|t - mean| = 2/3 → 0.5
    assert abs_dev_score([1, 2, 3], [1, 2, 2]) == pytest.approx(0.5)
    assert fit_calibration([1, 2], [3, 3]) is None


def test_negative_calibration_slope_flips_sign():
    ex = [
        ExcerptResult("top", "calibration", [0, 10, 0, 10], [10, 0, 10, 0]),
        ExcerptResult("top", "test", [0, 10, 5], [10, 0, 5]),
    ]
    res = score_explanation(ex, n_resamples=50)
    assert res.score == pytest.approx(-1.0)
    assert res.calibration is not None and res.calibration.slope < 0
    assert res.r2 == pytest.approx(1.0)


def test_bootstrap_interval_contains_point_and_is_seeded():
    rng = np.random.default_rng(1)
    exs = []
    for _ in range(10):
        t = rng.random(8)
        exs.append((t, t + rng.normal(scale=0.3, size=8)))
    a = bootstrap_interval(exs, n_resamples=300, seed=3)
    b = bootstrap_interval(exs, n_resamples=300, seed=3)
    assert a == b and a is not None
    point = correlation(np.concatenate([t for t, _ in exs]), np.concatenate([p for _, p in exs]))
    assert a[0] <= point.value <= a[1]
    assert bootstrap_interval(exs[:1]) is None


def test_tokens_without_prediction_are_left_out_and_flagged():
    full = [
        ExcerptResult("top", "test", [0, 5, 10], [1, 4, 8]),
        ExcerptResult("random", "test", [0, 1, 0], [0, 2, 1]),
    ]
    holes = [
        ExcerptResult("top", "test", [0, 5, 10, 7], [1, 4, 8, None]),
        ExcerptResult("random", "test", [9, 0, 1, 0], [None, 0, 2, 1]),
    ]
    a = score_explanation(full, n_resamples=100)
    b = score_explanation(holes, n_resamples=100)
    assert b.score == pytest.approx(a.score) and b.n_tokens == 6
    assert "missing_predictions:2" in b.flags and not any("missing" in f for f in a.flags)
