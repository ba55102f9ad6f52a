"""Verdicts in fixed words, each from one test and no stronger than it.

* The primary contrast (declared in the sweep file) gets the report's verdict, from its own test at
  α = 0.05 without correction: **reproduced** (significant, in the paper's direction), **contradicted**
  (significant, the other way; for an equivalence: a significant difference), **equivalent within
  ±margin** (TOST), or **inconclusive at n = k**, with the power n had to detect the paper's effect given
  the observed spread.
* Every other comparison is secondary and judged on its Holm-adjusted p: a group "is better/worse than"
  the baseline only below α after Holm, otherwise it is "not distinguishable after Holm at n=k".
* The paper's reference values are quoted where both groups have one; "agrees/disagrees in direction"
  only about a difference the test established.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import List

from vit_ablate.report.contrasts import ALPHA, ContrastResult
from vit_ablate.report.groups import Analysis, Comparison, Group
from vit_ablate.report.tables import Units, display_verdict, fmt_p

__all__ = ["verdict_lines", "comparison_verdict", "contrast_sentence", "primary_verdict", "ALPHA"]

_KIND_TEST = {
    "paired": "paired t-test",
    "interaction": "one-sample t-test of the per-seed interaction",
    "fisher": "Fisher's exact test",
    "equivalence": "two one-sided t-tests (TOST)",
}


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


def comparison_verdict(c: Comparison, analysis: Analysis, alpha: float = ALPHA) -> str:
    """A group against the baseline: a secondary comparison, judged on its Holm-adjusted paired t p."""
    units = Units(analysis.is_fraction)
    subject, base = c.group.label, _name(c.baseline, analysis)
    n = c.n_pairs if c.paired else min(c.group.summary.n, c.baseline.summary.n)
    size = (
        f"n={c.n_pairs} paired seeds"
        if c.paired
        else f"n={c.group.summary.n} vs {c.baseline.summary.n} runs, unpaired (no seed in common)"
    )
    test = "paired t" if c.paired else "Welch t"
    perm = "exact sign-flip" if c.paired else "permutation"
    if c.is_primary:
        return (
            f"{subject} vs {base}: the primary contrast (above): difference {units.delta(c.diff)}{units.unit}, "
            f"{test} p={fmt_p(c.p)}, {perm} p={fmt_p(c.test.p)}"
        )
    m = analysis.family_size
    holm = f"Holm over {m}" if m > 1 else "one comparison, no correction"
    established = not math.isnan(c.p_holm) and c.p_holm < alpha
    if established:
        better = (c.diff > 0) == analysis.higher_is_better
        low, high = (c.ci_low, c.ci_high) if c.diff >= 0 else (-c.ci_high, -c.ci_low)
        magnitude_ci = units.interval(low, high)
        ci_text = f" [95% CI {magnitude_ci[1:-1]}]" if magnitude_ci != "—" else f" (no interval: {c.ci_note})"
        line = (
            f"{subject} is {'better' if better else 'worse'} than {base} by {units.magnitude(c.diff)}{ci_text}, "
            f"{test} p={fmt_p(c.p_holm)} ({holm}), {perm} p={fmt_p(c.test.p)}, {size}"
        )
    else:
        ci = units.interval(c.ci_low, c.ci_high, signed=True)
        ci_text = f" [95% CI {ci[1:-1]}]" if ci != "—" else f" (no interval: {c.ci_note})"
        line = (
            f"{subject} vs {base}: not distinguishable after Holm at n={n} (difference "
            f"{units.delta(c.diff)}{units.unit}{ci_text}, {test} p={fmt_p(c.p)}, {holm}: {fmt_p(c.p_holm)}; "
            f"{perm} p={fmt_p(c.test.p)}"
            + (f", which cannot go below {fmt_p(c.test.min_p)} at this n" if c.test.min_p >= alpha else "")
            + ")"
        )
    return line + _paper_clause(c, units, established, analysis)


def _power_clause(r: ContrastResult, units: Units) -> str:
    parts = []
    if r.kind == "fisher":
        ea, ta, eb, tb = r.counts
        if ta and tb:
            parts.append(
                f"with {ta} vs {tb} runs even {ta} of {ta} against 0 of {tb} gives p={fmt_p(r.min_perm_p)}"
            )
        return "; ".join(parts)
    spread = f"the observed spread (sd {units.magnitude(r.sd)} per seed)" if math.isfinite(r.sd) else ""
    if r.kind == "equivalence" and math.isfinite(r.power):
        true = r.effect if r.effect is not None else 0.0
        parts.append(
            f"power {r.power:.2f} to show equivalence within ±{units.magnitude(r.spec.margin)} if the true "
            f"difference were {units.delta(true)}{units.unit}, given {spread}"
        )
    elif math.isfinite(r.power) and r.effect is not None:
        parts.append(
            f"power {r.power:.2f} to detect the paper's effect of {units.delta(r.effect)}{units.unit} "
            f"({r.effect_source}) given {spread}"
        )
    elif r.kind != "equivalence":
        parts.append("no paper effect size in this metric (declare one with effect=), so no power to detect it can be stated")
    if math.isfinite(r.detectable) and r.kind != "equivalence":
        parts.append(
            f"80% power at this n and spread needs a true effect of ≥{units.magnitude(r.detectable)}"
        )
    return "; ".join(parts)


def contrast_sentence(r: ContrastResult, analysis: Analysis) -> str:
    """What a declared contrast measured, its tests, and its verdict in fixed words."""
    units = Units(analysis.is_fraction)
    if r.kind == "fisher":
        ea, ta, eb, tb = r.counts
        body = (
            f"{r.spec.outcome} in {ea} of {ta} runs vs {eb} of {tb} runs; Fisher's exact p={fmt_p(r.p)}"
        )
    else:
        if r.n == 0:
            body = "no pairs to test (" + "; ".join(r.notes) + ")"
        else:
            ci = units.interval(r.ci_low, r.ci_high, signed=True)
            per_seed = ", ".join(units.delta(v) for v in r.per_seed)
            test = "Welch t" if r.unpaired else ("one-sample t" if r.kind == "interaction" else "paired t")
            perm = "permutation" if r.unpaired else "exact sign-flip"
            body = (
                f"{'interaction' if r.kind == 'interaction' else 'difference'} {units.delta(r.estimate)}{units.unit} "
                f"[{r.ci_label} CI {ci[1:-1] if ci != '—' else '—'}]"
                + (f" (per seed: {per_seed})" if per_seed else "")
                + f", n={r.n}; "
            )
            if r.kind == "equivalence":
                body += f"TOST p={fmt_p(r.p)} for |difference| < {units.magnitude(r.spec.margin)}; "
            body += f"{test} p={fmt_p(r.p_t)}, {perm} p={fmt_p(r.p_perm)}"
            if r.min_perm_p >= ALPHA:
                body += f" (cannot go below {fmt_p(r.min_perm_p)} at n={r.n})"
    if r.spec.role == "secondary":
        body += f"; Holm-adjusted p={fmt_p(r.p_holm)}"
    expect = ""
    if r.expect and r.kind != "equivalence":
        sign = ">" if r.expect == "greater" else "<"
        expect = f"; the paper's direction: {'interaction' if r.kind == 'interaction' else 'A − B'} {sign} 0"
    verdict = display_verdict(r, units)
    if verdict == "contradicted" and r.kind == "equivalence":
        deciding = r.p_t if r.spec.role == "primary" else r.p_t_adjusted
        verdict += f" (not equivalent: the difference itself is significant, paired t p={fmt_p(deciding)}" + (
            " after Holm)" if r.spec.role == "secondary" else ")"
        )
    if verdict.startswith("inconclusive"):
        clause = _power_clause(r, units)
        verdict += f" ({clause})" if clause else ""
    return f"{r.spec.label} [{_KIND_TEST[r.kind]}]: {body}{expect} → {verdict}"


def primary_verdict(analysis: Analysis) -> str:
    r = analysis.primary
    if r is None:
        return ""
    return contrast_sentence(r, analysis)


def _status_counts(runs) -> str:
    counts = Counter(run.status for run in runs)
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def verdict_lines(analysis: Analysis, alpha: float = ALPHA) -> List[str]:
    """The secondary verdicts: declared secondaries first, then each group against the baseline."""
    lines: List[str] = [contrast_sentence(r, analysis) for r in analysis.secondary]
    for comparison in analysis.comparisons:
        lines.append(comparison_verdict(comparison, analysis, alpha))
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
            lines.append("no baseline group with completed runs: no comparisons")
    return lines
