"""The statistics of a report: intervals with their stated coverage, the tests of a declared contrast,
Holm's correction, and the power a design had.

Ablation sweeps have few seeds (often 3), which decides every choice here:

* the 95% interval of a mean, or of a mean paired difference, is Student's t (``mean ± t·s/√n``): its
  coverage is 95% at any n when the seeds' values are roughly normal. A percentile bootstrap of n=3
  values cannot leave [min, max] of the sample and covers the true mean only about 70% of the time, so
  the bootstrap is used only from :data:`BOOTSTRAP_MIN_N` values on, and labelled; n=1 has no interval;
* a paired comparison is decided by the paired t-test (``scipy.stats.ttest_rel``); the exact
  sign-flip permutation p (``scipy.stats.permutation_test``, every sign pattern) is reported beside it,
  free of the normality assumption but unable to go below 2/2^n (0.25 at n=3);
* an interaction of a 2×2 design is the one-sample t-test of the per-seed interaction contrasts;
* counts (a run diverged or not) use Fisher's exact test (``scipy.stats.fisher_exact``);
* an equivalence is two one-sided t-tests (TOST) against a margin declared beforehand: "no
  significant difference" is never read as "equal";
* :func:`t_power` is the power a paired t-test at this n had to detect a given effect, given the
  observed spread: what "inconclusive" means in numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import stats as _scipy_stats

__all__ = [
    "Summary",
    "PermutationResult",
    "MeanTest",
    "t_interval",
    "mean_interval",
    "bootstrap_ci",
    "summarize",
    "signflip_test",
    "permutation_test_unpaired",
    "paired_test",
    "welch_test",
    "tost",
    "fisher_test",
    "t_power",
    "tost_power",
    "detectable_effect",
    "min_attainable_p",
    "min_attainable_p_unpaired",
    "holm",
    "BOOTSTRAP_MIN_N",
]

EXACT_SIGNFLIP_MAX_N = 16  # 2^16 = 65 536 patterns: exact enumeration is still instant
EXACT_UNPAIRED_MAX = 100_000  # partitions enumerated exactly up to this many
MONTE_CARLO_RESAMPLES = 100_000
BOOTSTRAP_RESAMPLES = 9_999
BOOTSTRAP_MIN_N = 30  # below this the interval is Student's t; from here a labelled BCa bootstrap
CONFIDENCE = 0.95


def _rng(seed: int | Sequence[int] | np.random.Generator) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN for n < 2
    ci_low: float
    ci_high: float
    ci_note: str = ""  # why there is no interval, or which kind it is when not Student's t
    ci_method: str = ""  # "t" or "bootstrap"; "" when there is none


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float, str]:
    """Student's t interval of the mean: ``(low, high, note)``; n < 2 → ``(nan, nan, reason)``."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return math.nan, math.nan, "no values"
    if x.size == 1:
        return math.nan, math.nan, "n=1: no spread, no interval"
    mean, sem = float(x.mean()), float(x.std(ddof=1) / math.sqrt(x.size))
    half = float(_scipy_stats.t.ppf(0.5 + confidence / 2, df=x.size - 1)) * sem
    return mean - half, mean + half, ""


def bootstrap_ci(
    values: Sequence[float],
    seed: int | Sequence[int] | np.random.Generator = 0,
    confidence: float = CONFIDENCE,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> tuple[float, float, str]:
    """BCa bootstrap interval of the mean (scipy.stats.bootstrap), for large n only (see mean_interval)."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return t_interval(x, confidence)
    if np.all(x == x[0]):
        return float(x[0]), float(x[0]), f"all {x.size} values equal: the interval is the point"
    res = _scipy_stats.bootstrap(
        (x,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="BCa",
        vectorized=True, rng=_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high), ""


def mean_interval(
    values: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0, confidence: float = CONFIDENCE
) -> tuple[float, float, str, str]:
    """The report's interval of a mean: ``(low, high, note, method)``; Student's t below
    :data:`BOOTSTRAP_MIN_N` values, a BCa bootstrap from there on (method ``"bootstrap"``)."""
    x = np.asarray(values, dtype=float)
    if x.size >= BOOTSTRAP_MIN_N:
        low, high, note = bootstrap_ci(x, seed, confidence)
        return low, high, note, "bootstrap"
    low, high, note = t_interval(x, confidence)
    return low, high, note, ("" if note else "t")


def summarize(values: Sequence[float], seed: int | Sequence[int] = 0) -> Summary:
    x = np.asarray(values, dtype=float)
    n = int(x.size)
    mean = float(x.mean()) if n else math.nan
    std = float(x.std(ddof=1)) if n >= 2 else math.nan
    low, high, note, method = mean_interval(x, seed)
    return Summary(n=n, mean=mean, std=std, ci_low=low, ci_high=high, ci_note=note, ci_method=method)


@dataclass
class PermutationResult:
    p: float
    method: str  # "exact sign-flip", "Monte Carlo sign-flip (100000 draws)", "exact permutation", …
    min_p: float  # the smallest p this test could return at this n (exact tests); 0 for Monte Carlo


def _mean_statistic(x, axis=-1):
    return np.mean(x, axis=axis)


def signflip_test(
    differences: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0
) -> PermutationResult:
    """Two-sided sign-flip permutation test of mean(differences) = 0 (paired by seed), with
    ``scipy.stats.permutation_test``: exact (all 2^n sign patterns) for n ≤ 16, Monte Carlo above."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n == 0:
        return PermutationResult(math.nan, "no pairs", math.nan)
    if n == 1 or np.all(d == 0):  # one pair: +d and −d are both as extreme as the data
        return PermutationResult(1.0, "exact sign-flip", min_attainable_p(n))
    exact = n <= EXACT_SIGNFLIP_MAX_N
    res = _scipy_stats.permutation_test(
        (d,), _mean_statistic, permutation_type="samples", vectorized=True,
        n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES, rng=_rng(seed),
    )
    if exact:
        return PermutationResult(float(min(1.0, res.pvalue)), "exact sign-flip", min_attainable_p(n))
    return PermutationResult(
        float(min(1.0, res.pvalue)), f"Monte Carlo sign-flip ({MONTE_CARLO_RESAMPLES} draws)", 0.0
    )


def permutation_test_unpaired(
    a: Sequence[float], b: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0
) -> PermutationResult:
    """Two-sided permutation test of mean(a) = mean(b) for unpaired groups (scipy, relabelling runs)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size == 0 or y.size == 0:
        return PermutationResult(math.nan, "an empty group", math.nan)
    if x.size < 2 or y.size < 2:
        # scipy needs two observations per sample; with one run on a side the C(n, 1) relabellings
        # are few enough to list.
        pooled = np.concatenate([x, y])
        observed = abs(x.mean() - y.mean())
        splits = [np.delete(pooled, i) for i in range(pooled.size)]
        single_first = x.size == 1
        diffs = [abs((pooled[i] - rest.mean()) if single_first else (rest.mean() - pooled[i]))
                 for i, rest in enumerate(splits)]
        p = sum(d >= observed - 1e-12 * max(1.0, observed) for d in diffs) / len(diffs)
        return PermutationResult(float(p), "exact permutation (unpaired)", min_attainable_p_unpaired(x.size, y.size))
    exact = math.comb(x.size + y.size, x.size) <= EXACT_UNPAIRED_MAX
    res = _scipy_stats.permutation_test(
        (x, y), lambda u, v, axis=-1: np.mean(u, axis=axis) - np.mean(v, axis=axis),
        permutation_type="independent", vectorized=True,
        n_resamples=np.inf if exact else MONTE_CARLO_RESAMPLES, rng=_rng(seed),
    )
    if exact:
        return PermutationResult(
            float(min(1.0, res.pvalue)), "exact permutation (unpaired)", min_attainable_p_unpaired(x.size, y.size)
        )
    return PermutationResult(
        float(min(1.0, res.pvalue)), f"Monte Carlo permutation (unpaired, {MONTE_CARLO_RESAMPLES} draws)", 0.0
    )


@dataclass
class MeanTest:
    """A test of a mean difference (paired, interaction, or Welch): estimate, t interval, p-values."""

    estimate: float
    ci_low: float
    ci_high: float
    ci_note: str
    p_t: float  # two-sided t-test p
    t_method: str  # "paired t", "one-sample t", "Welch t"
    perm: PermutationResult  # the distribution-free p beside it
    n: int  # pairs (paired, interaction) or the smaller group (Welch)
    sd: float  # sd of the per-seed values (paired) or pooled-ish sd (Welch); NaN for n < 2
    values: np.ndarray  # per-seed differences (empty for Welch)


def _t_p(d: np.ndarray) -> float:
    if d.size < 2:
        return math.nan
    if np.all(d == d[0]):
        # No spread: t is ±inf (p 0) unless the difference is exactly 0 (p 1); scipy warns and gives NaN.
        return 1.0 if d[0] == 0 else 0.0
    return float(_scipy_stats.ttest_1samp(d, 0.0).pvalue)


def paired_test(
    a: Sequence[float], b: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0,
    method: str = "paired t",
) -> MeanTest:
    """mean(a − b) with its t interval, ``ttest_rel(a, b)`` and the exact sign-flip p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    low, high, note = t_interval(d)
    if d.size >= 2 and not np.all(d == d[0]):
        p_t = float(_scipy_stats.ttest_rel(x, y).pvalue)
    else:
        p_t = _t_p(d)
    sd = float(d.std(ddof=1)) if d.size >= 2 else math.nan
    return MeanTest(float(d.mean()) if d.size else math.nan, low, high, note, p_t, method,
                    signflip_test(d, seed), int(d.size), sd, d)


def welch_test(a: Sequence[float], b: Sequence[float], seed: int | Sequence[int] | np.random.Generator = 0) -> MeanTest:
    """Unpaired groups: mean(a) − mean(b), Welch's t interval and p, and the exact permutation p."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    diff = float(x.mean() - y.mean()) if x.size and y.size else math.nan
    perm = permutation_test_unpaired(x, y, seed)
    if x.size < 2 or y.size < 2:
        return MeanTest(diff, math.nan, math.nan, "a group has n<2: no interval", math.nan, "Welch t", perm,
                        int(min(x.size, y.size)), math.nan, np.zeros(0))
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    se = math.sqrt(va + vb)
    if se == 0:
        return MeanTest(diff, diff, diff, "no spread in either group", 1.0 if diff == 0 else 0.0, "Welch t", perm,
                        int(min(x.size, y.size)), 0.0, np.zeros(0))
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(_scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df)) * se
    p = float(_scipy_stats.ttest_ind(x, y, equal_var=False).pvalue)
    return MeanTest(diff, diff - half, diff + half, "", p, "Welch t", perm, int(min(x.size, y.size)),
                    math.sqrt((x.var(ddof=1) + y.var(ddof=1)) / 2), np.zeros(0))


def tost(differences: Sequence[float], margin: float) -> tuple[float, float, float]:
    """Two one-sided t-tests of |mean(d)| < margin: ``(p, low, high)`` with p = the larger one-sided p
    (``ttest_1samp`` against −margin, alternative "greater", and +margin, "less") and the 90% t interval
    whose inclusion in (−margin, +margin) is the same decision at α = 0.05."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return math.nan, math.nan, math.nan
    low, high, _ = t_interval(d, confidence=1 - 2 * (1 - CONFIDENCE))
    if np.all(d == d[0]):
        return (0.0 if abs(d[0]) < margin else 1.0), low, high
    p_low = float(_scipy_stats.ttest_1samp(d, -margin, alternative="greater").pvalue)
    p_high = float(_scipy_stats.ttest_1samp(d, margin, alternative="less").pvalue)
    return max(p_low, p_high), low, high


def fisher_test(events_a: int, total_a: int, events_b: int, total_b: int) -> float:
    """Two-sided Fisher's exact p for events in a vs b (e.g. diverged runs out of all runs)."""
    table = [[events_a, total_a - events_a], [events_b, total_b - events_b]]
    return float(_scipy_stats.fisher_exact(table).pvalue)


def t_power(effect: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of a two-sided one-sample (paired) t-test at n to detect a true mean ``effect`` when the
    per-seed values have standard deviation ``sd`` (noncentral t). NaN when it cannot be computed."""
    if n < 2 or not math.isfinite(sd) or not math.isfinite(effect):
        return math.nan
    if sd == 0:
        return 1.0 if effect != 0 else alpha
    df = n - 1
    crit = float(_scipy_stats.t.ppf(1 - alpha / 2, df))
    nc = effect / (sd / math.sqrt(n))
    return float(_scipy_stats.nct.sf(crit, df, nc) + _scipy_stats.nct.cdf(-crit, df, nc))


def tost_power(true_diff: float, margin: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Approximate power of TOST at n (Owen's bound with noncentral t): the chance of showing
    equivalence within ±margin when the true difference is ``true_diff``."""
    if n < 2 or not math.isfinite(sd) or sd <= 0 or not math.isfinite(true_diff):
        return math.nan
    df = n - 1
    crit = float(_scipy_stats.t.ppf(1 - alpha, df))
    se = sd / math.sqrt(n)
    power = _scipy_stats.nct.sf(crit, df, (true_diff + margin) / se) + _scipy_stats.nct.cdf(
        -crit, df, (true_diff - margin) / se
    ) - 1.0
    return float(min(1.0, max(0.0, power)))


def detectable_effect(sd: float, n: int, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided paired t-test at n detects with ``power``."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    low, high = 0.0, 1.0
    while t_power(high * sd, sd, n, alpha) < power:
        high *= 2
        if high > 1e6:
            return math.inf
    for _ in range(60):
        mid = (low + high) / 2
        low, high = (mid, high) if t_power(mid * sd, sd, n, alpha) < power else (low, mid)
    return high * sd


def min_attainable_p(n_pairs: int) -> float:
    """Smallest two-sided p an exact sign-flip test can give with n pairs: 2 / 2^n (0.25 at n=3)."""
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
