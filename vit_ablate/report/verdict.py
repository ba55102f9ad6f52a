"""One sentence per comparison, in the paper's words, and no stronger than the data allow.

The rules:

* "X is worse than Y by D points" only when the Holm-adjusted p is below alpha;
* otherwise "not distinguishable at n=…", with the difference and its CI so the reader sees the size,
  or "too few seeds to test at n=…" when no outcome could have reached alpha at that n;
* when the exact test *cannot* reach alpha at this n (2/2^n ≥ alpha, i.e. n ≤ 5 pairs; more after Holm),
  the verdict says so and how many seeds would be needed — a "not significant" that no data could have
  changed is not evidence of "no difference";
* the paper's reference values, when both groups have one, are quoted; "agrees/disagrees" is said only
  about the direction of a difference we could establish.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import List

import numpy as np

from vit_ablate.report import stats
from vit_ablate.report.groups import Analysis, Comparison, Group
from vit_ablate.report.tables import Units, fmt_p

__all__ = ["verdict_lines", "comparison_verdict", "ALPHA"]

ALPHA = 0.05


def _name(group: Group, analysis: Analysis) -> str:
    # A single grouping key: the baseline is named by its value ("worse than 1d"), as the paper does.
    return group.short if len(analysis.by) == 1 else group.label


def _paper_clause(c: Comparison, units: Units, established: bool, analysis: Analysis) -> str:
    ref_g, ref_b = c.group.reference, c.baseline.reference
    if not ref_g or not ref_b or ref_g is ref_b:
        return ""
    # The paper's difference says something about ours only when its two numbers differ in everything
    # our two groups differ in (a reference for model.pool=gap says nothing about lr 3e-4 vs 8e-4) and
    # measure the same thing (Table 8's 5-shot accuracy minus Beyer et al.'s top-1 is no difference).
    differing = {k for k in analysis.by if c.group.common.get(k) != c.baseline.common.get(k)}
    constrained = set(ref_g.get("params") or {}) & set(ref_b.get("params") or {})
    if not differing <= constrained or ref_g.get("metric") != ref_b.get("metric"):
        return ""
    g_value, b_value = float(ref_g["value"]), float(ref_b["value"])
    paper_diff = g_value - b_value
    source = ref_g.get("source") or ref_b.get("source") or "paper"
    if ref_b.get("source") and ref_b.get("source") != source:
        source = f"{source} / {ref_b['source']}"
    metric = ref_g.get("metric") or ref_b.get("metric")
    where = f"{source}" + (f", {metric}" if metric and metric != analysis.metric else "")
    g_text, b_text = units.reference(g_value), units.reference(b_value)
    g_name, b_name = _name(c.group, analysis), _name(c.baseline, analysis)
    if established and paper_diff != 0:
        relation = "<" if paper_diff < 0 else ">"
        agrees = (paper_diff > 0) == (c.diff > 0)
        return (
            f" — {'agrees' if agrees else 'disagrees'} in direction with {where} "
            f"({g_name} {g_text} {relation} {b_name} {b_text})"
        )
    return f" — {where}: {g_name} {g_text} vs {b_name} {b_text} ({units.reference_delta(paper_diff)})"


def comparison_verdict(c: Comparison, analysis: Analysis, n_comparisons: int, alpha: float = ALPHA) -> str:
    units = Units(analysis.is_fraction)
    subject, base = c.group.label, _name(c.baseline, analysis)
    n = c.n_pairs if c.paired else min(c.group.summary.n, c.baseline.summary.n)
    size = (
        f"n={c.n_pairs} paired seeds"
        if c.paired
        else f"n={c.group.summary.n} vs {c.baseline.summary.n} runs, unpaired (no seed in common)"
    )
    ci = units.interval(c.ci_low, c.ci_high, signed=True)
    ci_text = f" [95% CI {ci[1:-1]}]" if ci != "—" else f" (no CI: {c.ci_note})"
    p_text = f"p={fmt_p(c.p_holm)} (Holm)" if n_comparisons > 1 else f"p={fmt_p(c.p)}"
    established = not math.isnan(c.p_holm) and c.p_holm < alpha

    if established:
        better = (c.diff > 0) == analysis.higher_is_better
        # "worse by 7.1 points [95% CI 5.2, 9.0]": the CI in the same (unsigned) terms as the size.
        low, high = (c.ci_low, c.ci_high) if c.diff >= 0 else (-c.ci_high, -c.ci_low)
        magnitude_ci = units.interval(low, high)
        ci_text = f" [95% CI {magnitude_ci[1:-1]}]" if magnitude_ci != "—" else f" (no CI: {c.ci_note})"
        line = (
            f"{subject} is {'better' if better else 'worse'} than {base} by "
            f"{units.magnitude(c.diff)}{ci_text}, {p_text}, {size}"
        )
    else:
        p_both = f"p={fmt_p(c.p)}" + (f", Holm-adjusted {fmt_p(c.p_holm)}" if n_comparisons > 1 else "")
        min_p = c.test.min_p
        floor = min(1.0, n_comparisons * min_p) if not math.isnan(min_p) else math.nan
        untestable = not math.isnan(floor) and floor >= alpha
        # When no data could have reached alpha at this n, "not distinguishable" would misread a large,
        # consistent difference as a null result: say that the test had no power instead.
        verdict = f"too few seeds to test at n={n}" if untestable else f"not distinguishable at n={n}"
        line = (
            f"{subject} vs {base}: {verdict} "
            f"(difference {units.delta(c.diff)}{units.unit}{ci_text}, {p_both})"
        )
        if untestable:
            line += _too_few_clause(c, n_comparisons, min_p, floor, alpha, analysis)
    return line + _paper_clause(c, units, established, analysis)


def _too_few_clause(
    c: Comparison, m: int, min_p: float, floor: float, alpha: float, analysis: Analysis
) -> str:
    direction = ""
    if c.paired and c.differences.size > 1 and np.all(c.differences != 0):
        signs = np.sign(c.differences)
        if np.all(signs == signs[0]):
            word = "higher" if signs[0] > 0 else "lower"
            direction = f"{word} in all {c.differences.size} pairs, but "
    if c.paired:
        pairs = f"{c.n_pairs} pair{'s' if c.n_pairs != 1 else ''}"
        what = f"with {pairs} the exact sign-flip test cannot go below p={fmt_p(min_p)}"
        if m > 1:
            what += f" ({fmt_p(floor)} after Holm over {m} comparisons)"
        need = stats.seeds_needed(alpha, m)
        return f"; {direction}{what}: ≥{need} paired seeds are needed to reach p<{alpha:g}"
    runs = f"{c.group.summary.n} vs {c.baseline.summary.n} runs"
    what = f"with {runs} the exact permutation test cannot go below p={fmt_p(min_p)}"
    if m > 1:
        what += f" ({fmt_p(floor)} after Holm over {m} comparisons)"
    return f"; {what}, so p<{alpha:g} was out of reach"


def _status_counts(runs) -> str:
    counts = Counter(run.status for run in runs)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def verdict_lines(analysis: Analysis, alpha: float = ALPHA) -> List[str]:
    lines: List[str] = []
    m = len(analysis.comparisons)
    for comparison in analysis.comparisons:
        lines.append(comparison_verdict(comparison, analysis, m, alpha))
    for group in analysis.groups:
        if group.summary.n == 0:
            lines.append(
                f"{group.label}: no completed runs with {analysis.metric} ({_status_counts(group.excluded)}) "
                "— not compared; see Not included"
            )
    if not analysis.comparisons:
        usable = [g for g in analysis.groups if g.summary.n > 0]
        if len(usable) <= 1 and analysis.baseline is not None:
            lines.append("one group only: nothing to compare")
        elif analysis.baseline is None and usable:
            lines.append("no baseline with completed runs: no comparisons")
    return lines

