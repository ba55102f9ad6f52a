"""Known answers for the report's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vit_ablate.report import stats


def test_bootstrap_ci_contains_mean_and_narrows_with_n():
    draws = np.random.default_rng(123).normal(loc=0.80, scale=0.02, size=50)
    small, large = draws[:5], draws
    lo5, hi5, _ = stats.bootstrap_ci(small, seed=0)
    lo50, hi50, _ = stats.bootstrap_ci(large, seed=0)
    assert lo5 <= small.mean() <= hi5
    assert lo50 <= large.mean() <= hi50
    # The CI of the mean shrinks roughly like 1/sqrt(n): √10 ≈ 3.2× narrower; ask for at least 2×.
    assert (hi50 - lo50) * 2 < (hi5 - lo5)
    # Fixed seed → the same interval, bit for bit.
    assert stats.bootstrap_ci(small, seed=0) == (lo5, hi5, "")


def test_summary_n1_has_no_ci_and_zero_variance_ci_is_the_point():
    one = stats.summarize([0.7])
    assert one.n == 1 and one.mean == 0.7
    assert math.isnan(one.std) and math.isnan(one.ci_low) and math.isnan(one.ci_high)
    assert "n=1" in one.ci_note
    flat = stats.summarize([0.5, 0.5, 0.5])
    assert (flat.ci_low, flat.ci_high, flat.std) == (0.5, 0.5, 0.0)
    assert "point" in flat.ci_note


def test_summary_std_is_sample_std():
    s = stats.summarize([0.80, 0.82, 0.81])
    assert s.mean == pytest.approx(0.81)
    assert s.std == pytest.approx(0.01)  # ddof=1: sqrt((0.01² + 0.01² + 0) / 2)


def test_signflip_finds_planted_difference_exact_p():
    baseline = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    treated = baseline + 0.02  # +2 points on every seed
    result = stats.signflip_test(treated - baseline)
    # Only "all +" and "all −" of the 2^5 patterns are as extreme: p = 2/32.
    assert result.p == pytest.approx(2 / 32) and result.p == 0.0625
    assert result.method == "exact sign-flip"
    assert result.min_p == 0.0625

    eight = np.array([0.80, 0.81, 0.79, 0.82, 0.80, 0.78, 0.83, 0.81])
    assert stats.signflip_test((eight + 0.02) - eight).p == 2 / 256  # 0.0078125 < 0.05


def test_signflip_same_group_gives_p_one():
    values = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    d = values - values.copy()
    assert d.mean() == 0.0
    assert stats.signflip_test(d).p == 1.0


def test_signflip_agrees_with_scipy_on_mixed_signs():
    d = np.array([0.013, -0.004, 0.021, 0.007, -0.011, 0.016])
    ours = stats.signflip_test(d).p
    # scipy's one-sample "samples" permutation flips signs; exact with n_resamples=inf.
    ref = scipy_stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    ).pvalue
    assert ours == pytest.approx(ref)


def test_signflip_monte_carlo_beyond_16_pairs_is_deterministic():
    d = np.full(20, 0.01)
    first, second = stats.signflip_test(d, seed=7), stats.signflip_test(d, seed=7)
    assert first.p == second.p
    assert first.p <= 2e-5  # exact answer 2/2^20 ≈ 1.9e-6; Monte Carlo floor 1/(B+1) ≈ 1e-5
    assert first.method.startswith("Monte Carlo")


def test_unpaired_permutation_exact():
    result = stats.permutation_test_unpaired([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # C(6,3) = 20 splits; only the observed one and its mirror are as extreme.
    assert result.p == pytest.approx(2 / 20)
    assert result.min_p == pytest.approx(0.1)
    assert stats.permutation_test_unpaired([1.0, 2.0], [1.0, 2.0]).p == 1.0


def test_min_attainable_p_and_seeds_needed():
    assert stats.min_attainable_p(3) == 0.25
    assert stats.min_attainable_p(5) == 0.0625
    assert stats.min_attainable_p(6) == 0.03125
    assert stats.seeds_needed(0.05, comparisons=1) == 6
    assert stats.seeds_needed(0.05, comparisons=2) == 7  # Holm doubles the smallest p


def test_holm_matches_hand_computation():
    # sorted: 0.005×4=0.02, 0.01×3=0.03, 0.03×2=0.06, 0.04×1=0.04→max(0.06, 0.04)=0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not a comparison: m = 2 here.
    with_nan = stats.holm([0.02, math.nan, 0.04])
    assert with_nan[0] == pytest.approx(0.04) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
