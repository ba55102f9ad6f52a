"""The statistics of a report: bootstrap CIs, permutation tests, Holm's correction.

Ablation sweeps have few seeds (often 3), so every function here is exact where it can be and says so
where it cannot:

* a CI of the mean is a percentile bootstrap (scipy.stats.bootstrap) with a fixed seed, so a report is
  reproducible byte for byte; with n=1 there is no CI (NaN, with the reason), with zero spread the CI
  is the point itself (the bootstrap distribution is degenerate);
* a paired comparison is an exact two-sided sign-flip permutation test on the per-seed differences
  (all 2^n sign patterns for n ≤ 16, Monte Carlo beyond);
* :func:`min_attainable_p` is the smallest p such a test can return at all — 2/2^n, i.e. 0.25 at n=3 —
  which a verdict must state before it calls anything "not significant".

Percentile rather than BCa: BCa's jackknife acceleration is undefined or wild at n=2–3, exactly the
sizes an ablation sweep has. Note the percentile bootstrap is too narrow at tiny n (it cannot see
beyond the observed values), one more reason a verdict leans on the permutation p-value.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Summary",
    "PermutationResult",
    "bootstrap_ci",
    "summarize",
    "signflip_test",
    "permutation_test_unpaired",
    "min_attainable_p",
    "min_attainable_p_unpaired",
    "seeds_needed",
    "holm",
]

EXACT_SIGNFLIP_MAX_N = 16  # 2^16 = 65 536 patterns: exact enumeration is still instant
EXACT_UNPAIRED_MAX = 100_000  # partitions enumerated exactly up to this many
MONTE_CARLO_RESAMPLES = 100_000
BOOTSTRAP_RESAMPLES = 9_999


def _rng(seed: int | Sequence[int] | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for n < 2
    ci_low: float
    ci_high: float
    ci_note: str = ""  # why there is no CI, or why it is a point


def bootstrap_ci(
    values: Sequence[float],
    seed: int | Sequence[int] | np.random.Generator = 0,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float, str]:
    """Percentile bootstrap CI of the mean: ``(low, high, note)``.

    n=0 or n=1 → ``(nan, nan, reason)``; all values equal → ``(x, x, note)`` (scipy would warn about a
    degenerate distribution and return NaN; the honest interval of a resampled constant is the point).
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, "no values"
    if x.size == 1:
        return math.nan, math.nan, "n=1: no spread to resample, no CI"
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), f"all {x.size} values equal: the CI is the point"
    res = _scipy_stats.bootstrap(
        (x,),
        np.mean,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high), ""


def bootstrap_ci_diff_unpaired(
    a: Sequence[float],
    b: Sequence[float],
    seed: int | Sequence[int] | np.random.Generator = 0,
    confidence: float = 0.95,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float, str]:
    """Percentile bootstrap CI of mean(a) − mean(b), resampling each group on its own."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan, math.nan, "a group has n<2"
    if np.all(x == x[0]) and np.all(y == y[0]):
        d = float(x[0] - y[0])
        return d, d, "no spread in either group: the CI is the point"
    res = _scipy_stats.bootstrap(
        (x, y),
        lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        vectorized=True,
        rng=_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high), ""


def summarize(values: Sequence[float], seed: int | Sequence[int] = 0) -> Summary:
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    low, high, note = bootstrap_ci(x, seed)
    return Summary(n=n, mean=mean, std=std, ci_low=low, ci_high=high, ci_note=note)


@dataclass
class PermutationResult:
    p: float
    method: str  # "exact sign-flip", "Monte Carlo sign-flip (100000 draws)", "exact permutation", …
    min_p: float  # the smallest p this test could return at this n (exact tests); 0 for Monte Carlo


def _tolerance(observed: float, scale: np.ndarray) -> float:
    # Floating-point sums of the same numbers in another order differ in the last bits; a pattern
    # that ties the observed statistic must count as "at least as extreme".
    return 1e-12 * max(1.0, float(np.max(np.abs(scale))) if scale.size else 1.0) + 1e-12 * abs(observed)


def signflip_test(
    differences: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0
) -> PermutationResult:
    """Two-sided sign-flip permutation test of mean(differences) = 0 (paired by seed).

    Under the null each paired difference is symmetric about 0, so flipping its sign is as likely as
    not. p = fraction of sign patterns whose |mean| ≥ the observed |mean| (the observed pattern
    included). Exact for n ≤ 16; Monte Carlo with the given seed above, p = (k+1)/(B+1).
    """
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n == 0:
        return PermutationResult(math.nan, "no pairs", math.nan)
    observed = abs(d.mean())
    tol = _tolerance(observed, d)
    if n <= EXACT_SIGNFLIP_MAX_N:
        patterns = np.arange(2**n, dtype=np.int64)[:, None] >> np.arange(n, dtype=np.int64)
        signs = 1.0 - 2.0 * (patterns & 1)  # every ±1 pattern, one per row
        means = np.abs(signs @ d) / n
        p = float(np.count_nonzero(means >= observed - tol)) / 2**n
        return PermutationResult(p, "exact sign-flip", min_attainable_p(n))
    rng = _rng(seed)
    signs = rng.choice(np.array([-1.0, 1.0]), size=(MONTE_CARLO_RESAMPLES, n))
    means = np.abs(signs @ d) / n
    count = int(np.count_nonzero(means >= observed - tol))
    p = (count + 1) / (MONTE_CARLO_RESAMPLES + 1)
    return PermutationResult(p, f"Monte Carlo sign-flip ({MONTE_CARLO_RESAMPLES} draws)", 0.0)


def permutation_test_unpaired(
    a: Sequence[float], b: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0
) -> PermutationResult:
    """Two-sided permutation test of mean(a) = mean(b) for unpaired groups (relabel the pooled runs)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return PermutationResult(math.nan, "an empty group", math.nan)
    pooled = np.concatenate([x, y])
    n, k = pooled.size, x.size
    observed = abs(x.mean() - y.mean())
    tol = _tolerance(observed, pooled)
    total = pooled.sum()
    count_partitions = math.comb(n, k)
    if count_partitions <= EXACT_UNPAIRED_MAX:
        index = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
        sum_a = pooled[index].sum(axis=1)
        diffs = np.abs(sum_a / k - (total - sum_a) / (n - k))
        p = float(np.count_nonzero(diffs >= observed - tol)) / count_partitions
        return PermutationResult(p, "exact permutation (unpaired)", min_attainable_p_unpaired(k, n - k))
    rng = _rng(seed)
    draws = np.argsort(rng.random((MONTE_CARLO_RESAMPLES, n)), axis=1)[:, :k]
    sum_a = pooled[draws].sum(axis=1)
    diffs = np.abs(sum_a / k - (total - sum_a) / (n - k))
    count = int(np.count_nonzero(diffs >= observed - tol))
    return PermutationResult(
        (count + 1) / (MONTE_CARLO_RESAMPLES + 1),
        f"Monte Carlo permutation (unpaired, {MONTE_CARLO_RESAMPLES} draws)",
        0.0,
    )


def min_attainable_p(n_pairs: int) -> float:
    """Smallest two-sided p an exact sign-flip test can give with n pairs: 2 / 2^n (0.25 at n=3).

    Only the observed pattern and its mirror image can be as extreme as the data, so no data at all
    can push p below this: with n ≤ 5 pairs the test can never reach 0.05.
    """
    if n_pairs <= 0:
        return math.nan
    return min(1.0, 2.0 / 2**n_pairs)


def min_attainable_p_unpaired(n_a: int, n_b: int) -> float:
    """Smallest two-sided p of the exact unpaired permutation test: 2/C(n, k) for equal groups (the
    extreme split and its mirror), 1/C(n, k) otherwise."""
    if n_a <= 0 or n_b <= 0:
        return math.nan
    partitions = math.comb(n_a + n_b, n_a)
    return min(1.0, (2.0 if n_a == n_b else 1.0) / partitions)


def seeds_needed(alpha: float = 0.05, comparisons: int = 1) -> int:
    """Fewest paired seeds for which the exact sign-flip test can reach p < alpha after Holm over
    ``comparisons`` tests (Holm multiplies the smallest p by the number of comparisons)."""
    n = 1
    while comparisons * min_attainable_p(n) >= alpha:
        n += 1
    return n


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down), in the input order; NaN stays NaN and does not
    count towards the number of comparisons.

    Sort ascending; the i-th smallest (0-based) is multiplied by (m − i), capped at 1, and made
    monotone (an adjusted p is never smaller than the one before it).
    """
    p = np.asarray(pvalues, dtype=float)
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, index in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted
