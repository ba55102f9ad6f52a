"""Known answers for the report's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as scipy_stats

from vit_ablate.report import stats


def test_t_interval_covers_95_percent_of_three_seed_experiments():
    """2,000 simulated three-seed experiments: the interval of a group mean, and of a paired difference,
    must contain the true value 93–97% of the time (a percentile bootstrap of 3 values gives ~70%)."""
    rng = np.random.default_rng(20240)
    true_mean, true_diff = 0.80, 0.012
    groups = rng.normal(true_mean, 0.02, size=(2000, 3))
    covered = [lo <= true_mean <= hi for lo, hi in (stats.t_interval(g) for g in groups)]
    assert 0.93 <= np.mean(covered) <= 0.97

    # A paired design: a shared per-seed effect (data order, init) plus independent noise per arm.
    shared = rng.normal(0.0, 0.02, size=(2000, 3))
    baseline = true_mean + shared + rng.normal(0.0, 0.005, size=(2000, 3))
    treated = true_mean + true_diff + shared + rng.normal(0.0, 0.005, size=(2000, 3))
    d = treated - baseline
    half = scipy_stats.t.ppf(0.975, 2) * d.std(axis=1, ddof=1) / np.sqrt(3)
    expected = np.abs(d.mean(axis=1) - true_diff) <= half
    assert 0.93 <= expected.mean() <= 0.97
    # The report's paired test gives exactly that interval (checked on a slice: the sign-flip p is slower).
    for i in range(50):
        test = stats.paired_test(treated[i], baseline[i])
        assert test.ci_low == pytest.approx(d[i].mean() - half[i]) and test.ci_high == pytest.approx(d[i].mean() + half[i])
        assert (test.ci_low <= true_diff <= test.ci_high) == expected[i]


def test_t_interval_at_three_seeds_leaves_the_sample_range_and_n1_has_none():
    # Why Student's t and not a bootstrap: a percentile bootstrap of 3 values never leaves [min, max].
    values = [0.30, 0.32, 0.35]
    low, high = stats.t_interval(values)
    assert low < min(values) and high > max(values)
    assert all(math.isnan(x) for x in stats.t_interval([0.7]))
    assert stats.t_interval([0.5, 0.5, 0.5]) == (0.5, 0.5)


def test_paired_test_uses_ttest_rel_and_reports_the_exact_signflip_beside_it():
    a = np.array([0.34, 0.33, 0.35])
    b = np.array([0.32, 0.32, 0.33])
    test = stats.paired_test(a, b)
    assert test.p_t == pytest.approx(scipy_stats.ttest_rel(a, b).pvalue)
    assert (test.p_perm, test.min_perm_p) == (0.25, 0.25)  # 2 of 8 patterns
    assert test.estimate == pytest.approx(0.05 / 3) and test.sd == pytest.approx(np.std(a - b, ddof=1))


def test_tost_fisher_and_power_known_answers():
    d = np.array([0.002, -0.004, 0.001, 0.003, -0.002])
    p, low, high = stats.tost(d, margin=0.01)
    p_low = scipy_stats.ttest_1samp(d, -0.01, alternative="greater").pvalue
    p_high = scipy_stats.ttest_1samp(d, 0.01, alternative="less").pvalue
    assert p == pytest.approx(max(p_low, p_high)) and p < 0.05
    assert -0.01 < low < high < 0.01  # the 90% interval inside the margin: the same decision
    assert stats.tost(d, margin=0.001)[0] > 0.05
    # 6 of 6 diverged vs 0 of 6: the hypergeometric tail 2 / C(12, 6) = 2/924.
    assert stats.fisher(6, 6, 0, 6) == pytest.approx(2 / 924)
    assert stats.fisher(3, 3, 0, 3) == pytest.approx(0.1)  # 3 seeds a side can never reach 0.05
    # Power against simulation: 20,000 three-seed experiments with a true effect of 2 sd.
    draws = np.random.default_rng(5).normal(0.02, 0.01, size=(20000, 3))
    rejected = np.mean(scipy_stats.ttest_1samp(draws, 0.0, axis=1).pvalue < 0.05)
    assert stats.t_power(0.02, 0.01, 3) == pytest.approx(rejected, abs=0.015)
    assert stats.t_power(1.0, 0.01, 3) > 0.999 and stats.t_power(0.0, 0.01, 3) == pytest.approx(0.05)
    mde = stats.detectable_effect(0.01, 3)
    assert stats.t_power(mde, 0.01, 3) == pytest.approx(0.8, abs=1e-3)


def test_signflip_finds_planted_difference_exact_p():
    baseline = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    treated = baseline + 0.02  # +2 points on every seed
    p, floor = stats.signflip(treated - baseline, [0])
    # Only "all +" and "all −" of the 2^5 patterns are as extreme: p = 2/32.
    assert p == pytest.approx(2 / 32) and floor == 0.0625

    eight = np.array([0.80, 0.81, 0.79, 0.82, 0.80, 0.78, 0.83, 0.81])
    assert stats.signflip((eight + 0.02) - eight, [0]) == pytest.approx((2 / 256, 2 / 256))  # 0.0078125 < 0.05


def test_signflip_same_group_gives_p_one():
    values = np.array([0.80, 0.81, 0.79, 0.82, 0.80])
    d = values - values.copy()
    assert d.mean() == 0.0
    assert stats.signflip(d, [0])[0] == 1.0


def test_signflip_agrees_with_scipy_on_mixed_signs():
    d = np.array([0.013, -0.004, 0.021, 0.007, -0.011, 0.016])
    ours = stats.signflip(d, [0])[0]
    # scipy's one-sample "samples" permutation flips signs; exact with n_resamples=inf.
    ref = scipy_stats.permutation_test(
        (d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative="two-sided"
    ).pvalue
    assert ours == pytest.approx(ref)


def test_signflip_monte_carlo_beyond_16_pairs_is_deterministic():
    d = np.full(20, 0.01)
    first, second = stats.signflip(d, [7]), stats.signflip(d, [7])
    assert first == second
    assert first[0] <= 5e-5  # exact answer 2/2^20 ≈ 1.9e-6; scipy's two-sided Monte Carlo floor 2·2/(B+1)
    assert first[1] == 0.0  # Monte Carlo: no floor stated


def test_unpaired_permutation_exact():
    result = stats.welch_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    # C(6,3) = 20 splits; only the observed one and its mirror are as extreme.
    assert result.p_perm == pytest.approx(2 / 20) and result.min_perm_p == pytest.approx(0.1)
    assert result.p_t == pytest.approx(scipy_stats.ttest_ind([1, 2, 3], [4, 5, 6], equal_var=False).pvalue)
    assert stats.welch_test([1.0, 2.0], [1.0, 2.0]).p_perm == 1.0


def test_min_attainable_p():
    assert [stats.signflip(np.full(n, 0.01), [0])[1] for n in (3, 5, 6)] == [0.25, 0.0625, 0.03125]
    assert stats.signflip(np.array([0.01]), [0]) == (1.0, 1.0)


def test_holm_matches_hand_computation():
    # sorted: 0.005×4=0.02, 0.01×3=0.03, 0.03×2=0.06, 0.04×1=0.04→max(0.06, 0.04)=0.06
    adjusted = stats.holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # NaN is not a comparison: m = 2 here.
    with_nan = stats.holm([0.02, math.nan, 0.04])
    assert with_nan[0] == pytest.approx(0.04) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.04)
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
