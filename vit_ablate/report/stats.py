"""A report's statistics (scipy, statsmodels), chosen for few seeds: Student's t intervals (a percentile
bootstrap of 3 values never leaves [min, max] and covers ~70%); the paired t-test with the exact
sign-flip p beside it (free of normality, never below 2/2^n); Fisher's exact test for counts; TOST
against a declared margin, so "not significant" is never read as "equal"; and the power a test had.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence, Tuple

import numpy as np
from scipy import stats as scipy_stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestPower
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttost_paired

ALPHA = 0.05
EXACT_SIGNFLIP_MAX_N = 16  # 2^16 sign patterns are still enumerated at once
EXACT_UNPAIRED_MAX = 100_000  # relabellings enumerated exactly up to this many
MONTE_CARLO_RESAMPLES = 100_000


@dataclass
class MeanTest:
    """A mean difference (paired, interaction, or Welch's unpaired) with its interval and p-values."""
    estimate: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    p_t: float = math.nan  # two-sided t-test p: the p that decides
    p_perm: float = math.nan  # the permutation p beside it (exact sign-flip when paired)
    min_perm_p: float = math.nan  # the smallest p that permutation test can give at this n
    n: int = 0  # pairs; for Welch the smaller group
    sd: float = math.nan  # sd of the per-seed differences (NaN for n < 2 and for Welch)
    per_seed: np.ndarray = field(default_factory=lambda: np.zeros(0))
    unpaired: bool = False


def t_interval(values: Sequence[float], confidence: float = 1 - ALPHA) -> Tuple[float, float]:
    """Student's t interval of the mean; (nan, nan) below two values."""
    x = np.asarray(values, dtype=float)
    return (math.nan, math.nan) if x.size < 2 else tuple(map(float, DescrStatsW(x).tconfint_mean(alpha=1 - confidence)))


def signflip(d: np.ndarray, seed: Sequence[int]) -> Tuple[float, float]:
    """Two-sided sign-flip p of mean(d) = 0 and the smallest p it can give: exact up to 16 pairs."""
    if d.size == 0:
        return math.nan, math.nan
    exact = d.size <= EXACT_SIGNFLIP_MAX_N
    floor = min(1.0, 2.0 / 2**d.size) if exact else 0.0
    if d.size == 1 or np.all(d == 0):  # +d and −d are as extreme as the data
        return 1.0, floor
    res = scipy_stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                       n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES,
                                       rng=np.random.default_rng(list(seed)))
    return float(min(1.0, res.pvalue)), floor


def paired_test(a: Sequence[float], b: Sequence[float], seed: Sequence[int] = (0,)) -> MeanTest:
    """mean(a − b) over pairs: its t interval, the paired t p and the exact sign-flip p."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    p_perm, floor = signflip(d, seed)
    # no spread: t is ±inf (p 0) unless the difference is exactly 0 (p 1)
    p_t = math.nan if d.size < 2 else float(d[0] == 0) if np.all(d == d[0]) else float(scipy_stats.ttest_1samp(d, 0.0).pvalue)
    return MeanTest(float(d.mean()) if d.size else math.nan, *t_interval(d), p_t, p_perm, floor, int(d.size),
                    float(d.std(ddof=1)) if d.size >= 2 else math.nan, d)


def welch_test(a: Sequence[float], b: Sequence[float], seed: Sequence[int] = (0,)) -> MeanTest:
    """mean(a) − mean(b) of unpaired groups: Welch's t interval and p, and the permutation p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff, n = float(x.mean() - y.mean()), int(min(x.size, y.size))
    if n < 2:
        return MeanTest(diff, n=n, unpaired=True)
    partitions = math.comb(x.size + y.size, x.size)
    exact = partitions <= EXACT_UNPAIRED_MAX
    p_perm = float(scipy_stats.permutation_test(
        (x, y), lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis), permutation_type="independent",
        vectorized=True, n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES, rng=np.random.default_rng(list(seed))).pvalue)
    floor = (2.0 if x.size == y.size else 1.0) / partitions if exact else 0.0
    if x.var() == 0 and y.var() == 0:
        return MeanTest(diff, diff, diff, 1.0 if diff == 0 else 0.0, p_perm, floor, n, math.nan, unpaired=True)
    compare = CompareMeans(DescrStatsW(x), DescrStatsW(y))
    low, high = compare.tconfint_diff(alpha=ALPHA, usevar="unequal")
    return MeanTest(diff, float(low), float(high), float(compare.ttest_ind(usevar="unequal")[1]), p_perm, floor, n,
                    math.nan, unpaired=True)


def tost(d: Sequence[float], margin: float) -> Tuple[float, float, float]:
    """TOST of |mean(d)| < margin: ``(p, low, high)``, the 90% t interval inside ±margin being the same decision."""
    d = np.asarray(d, dtype=float)
    if d.size < 2:
        return math.nan, math.nan, math.nan
    # no spread: the difference is certain, inside the margin or not
    p = float(abs(d[0]) >= margin) if np.all(d == d[0]) else float(ttost_paired(d, np.zeros_like(d), -margin, margin)[0])
    return (p, *t_interval(d, 1 - 2 * ALPHA))


def fisher(events_a: int, total_a: int, events_b: int, total_b: int) -> float:
    """Two-sided Fisher's exact p for events in a vs b (diverged runs out of the finished runs)."""
    return float(scipy_stats.fisher_exact([[events_a, total_a - events_a], [events_b, total_b - events_b]]).pvalue)


def t_power(effect: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of a two-sided one-sample t-test at n to detect a true mean ``effect`` at this ``sd``."""
    if n < 2 or not math.isfinite(sd) or not math.isfinite(effect):
        return math.nan
    if sd == 0:
        return 1.0 if effect != 0 else alpha
    return float(TTestPower().power(effect_size=effect / sd, nobs=n, alpha=alpha))


def detectable_effect(sd: float, n: int, alpha: float = ALPHA, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at n detects with ``power``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return 0.0 if sd == 0 else float(TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=power)) * sd


def tost_power(true_diff: float, margin: float, sd: float, n: int, alpha: float = ALPHA) -> float:
    """Power of TOST at n for a true difference ``true_diff`` (noncentral t; statsmodels has none one-sample)."""
    if n < 2 or not math.isfinite(sd) or sd <= 0 or not math.isfinite(true_diff):
        return math.nan
    df, se = n - 1, sd / math.sqrt(n)
    crit = scipy_stats.t.ppf(1 - alpha, df)
    power = (scipy_stats.nct.sf(crit, df, (true_diff + margin) / se)
             + scipy_stats.nct.cdf(-crit, df, (true_diff - margin) / se) - 1.0)
    return float(min(1.0, max(0.0, power)))


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-adjusted p-values in the input order; NaN stays NaN and does not count as a comparison."""
    p = np.asarray(pvalues, dtype=float)
    adjusted, valid = np.full(p.shape, math.nan), ~np.isnan(p)
    if valid.any():
        adjusted[valid] = multipletests(p[valid], method="holm")[1]
    return adjusted
