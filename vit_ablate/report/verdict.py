"""Verdicts in fixed words, each from one test and no stronger than it, and report.md around them.

* The primary contrast (declared in the sweep file) gets the report's verdict, from its own test at
  α = 0.05 without correction: **reproduced** (significant, in the paper's direction), **contradicted**
  (significant, the other way; for an equivalence: a significant difference), **equivalent within
  ±margin** (TOST), or **inconclusive at n = k**, with the power n had to detect the paper's effect.
* Every other comparison is judged on its one Holm-adjusted p: a group "is better/worse than" the
  baseline only below α after Holm, otherwise it is "not distinguishable after Holm at n=k".
* The paper's reference values are quoted where both groups have one; "agrees/disagrees in direction"
  only about a difference the test established.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import pandas as pd

from vit_ablate.report.analysis import Analysis
from vit_ablate.report.contrasts import ALPHA, ContrastResult
from vit_ablate.report.tables import DASH, PAST_BOUND, Units, fmt_p, group_table, md_escape

_KIND_TEST = {"paired": "paired t-test", "interaction": "one-sample t-test of the per-seed interaction",
              "fisher": "Fisher's exact test", "equivalence": "two one-sided t-tests (TOST)"}
_SECTION_MEANING = {
    "final": "the `final` section: the last epoch's validation, i.e. the weights of checkpoints/last.ckpt "
             "(EMA weights where optim.ema_decay is set)",
    "table": "runs.csv (the value each run recorded at its last epoch)",
    "test": "the `test` section: the test split, evaluated once after training with the last weights",
    "best": "the `best` section: the best validation epoch (selected on the validation split itself)",
    "fewshot": "the `fewshot` section: few-shot linear accuracy on the final weights",
    "result": "a top-level number of result.json",
}


def _paper_clause(g: pd.Series, base: pd.Series, analysis: Analysis, units: Units, established: bool) -> str:
    ref_g, ref_b = g["reference"], base["reference"]
    if not ref_g or not ref_b or ref_g is ref_b:
        return ""
    # The paper's difference speaks to ours only when its two numbers differ in everything our two groups
    # differ in and measure the same thing (5-shot accuracy minus another paper's top-1 is no difference).
    differing = {k for k in analysis.by if g[k] != base[k]}
    if not differing <= set(ref_g.get("params") or {}) & set(ref_b.get("params") or {}) \
            or ref_g.get("metric") != ref_b.get("metric"):
        return ""
    paper_diff = float(ref_g["value"]) - float(ref_b["value"])
    source = ref_g.get("source") or ref_b.get("source") or "paper"
    if ref_b.get("source") and ref_b.get("source") != source:
        source = f"{source} / {ref_b['source']}"
    metric = ref_g.get("metric")
    where = source + (f", {metric}" if metric and metric != analysis.metric else "")
    name = (lambda x: x["short"]) if len(analysis.by) == 1 else (lambda x: x.name)
    g_text, b_text = f"{name(g)} {units.reference(float(ref_g['value']))}", f"{name(base)} {units.reference(float(ref_b['value']))}"
    if established and paper_diff:
        agrees = (paper_diff > 0) == (g["delta"] > 0)
        return f" — {'agrees' if agrees else 'disagrees'} in direction with {where} ({g_text} {'<' if paper_diff < 0 else '>'} {b_text})"
    return f" — {where}: {g_text} vs {b_text} ({units.reference_delta(paper_diff)})"


def comparison_verdict(label: str, analysis: Analysis) -> str:
    """A group against the baseline, judged on its Holm-adjusted p (or shown as descriptive)."""
    units, g = Units(analysis.is_fraction), analysis.groups.loc[label]
    base = analysis.groups.loc[analysis.baseline]
    base_name = base["short"] if len(analysis.by) == 1 else base.name
    n = g["n_pairs"] if g["paired"] else min(g["n"], base["n"])
    test, perm = ("paired t", "exact sign-flip") if g["paired"] else ("Welch t", "permutation")
    size = f"n={g['n_pairs']} paired seeds" if g["paired"] else f"n={g['n']} vs {base['n']} runs, unpaired (no seed in common)"
    m = analysis.family_size
    holm = f"Holm over {m}" if m > 1 else "one comparison, no correction"
    established = g["p_holm"] < ALPHA
    if established:
        better = (g["delta"] > 0) == analysis.higher_is_better
        low, high = (g["delta_ci_low"], g["delta_ci_high"]) if g["delta"] >= 0 else (-g["delta_ci_high"], -g["delta_ci_low"])
        ci = units.interval(low, high)
        line = (f"{label} is {'better' if better else 'worse'} than {base_name} by {units.magnitude(g['delta'])}"
                + (f" [95% CI {ci[1:].split(']')[0]}]" if ci != DASH else "")
                + f", {test} p={fmt_p(g['p_holm'])} ({holm}), {perm} p={fmt_p(g['p_signflip'])}, {size}")
    else:
        ci = units.interval(g["delta_ci_low"], g["delta_ci_high"], signed=True)
        verdict = f"not distinguishable after Holm at n={n}" if g["holm"] == "" else "descriptive, not in the Holm family"
        line = (f"{label} vs {base_name}: {verdict} (difference {units.delta(g['delta'])}{units.unit}"
                + (f" [95% CI {ci[1:].split(']')[0]}]" if ci != DASH else " (no interval)")
                + f", {test} p={fmt_p(g['p_t'])}" + (f", {holm}: {fmt_p(g['p_holm'])}" if g["holm"] == "" else "")
                + f"; {perm} p={fmt_p(g['p_signflip'])}"
                + (f", which cannot go below {fmt_p(g['min_signflip_p'])} at this n" if g["min_signflip_p"] >= ALPHA else "")
                + ")")
    return line + _paper_clause(g, base, analysis, units, established)


def _power_clause(r: ContrastResult, units: Units) -> str:
    if r.kind == "fisher":
        ea, ta, eb, tb = r.counts
        return f"with {ta} vs {tb} runs even {ta} of {ta} against 0 of {tb} gives p={fmt_p(r.min_perm_p)}" if ta and tb else ""
    spread = f"the observed spread (sd {units.magnitude(r.sd)} per seed)"
    if r.kind == "equivalence":
        return (f"power {r.power:.2f} to show equivalence within ±{units.magnitude(r.spec.margin)} if the true difference "
                f"were {units.delta(r.effect or 0.0)}{units.unit}, given {spread}") if math.isfinite(r.power) else ""
    parts = [f"power {r.power:.2f} to detect the paper's effect of {units.delta(r.effect)}{units.unit} ({r.effect_source}) "
             f"given {spread}" if math.isfinite(r.power) else
             "no paper effect size in this metric (declare one with effect=), so no power to detect it can be stated"]
    if math.isfinite(r.detectable):
        parts.append(f"80% power at this n and spread needs a true effect of ≥{units.magnitude(r.detectable)}")
    return "; ".join(parts)


def display_verdict(r: ContrastResult, units: Units) -> str:
    """The fixed-word verdict, an equivalence margin in the report's units (points, not 0.01)."""
    return f"equivalent within ±{units.magnitude(r.spec.margin)}" if r.verdict.startswith("equivalent") else r.verdict


def contrast_sentence(r: ContrastResult, analysis: Analysis) -> str:
    """What a declared contrast measured, its tests, and its verdict in fixed words."""
    units = Units(analysis.is_fraction)
    if r.kind == "fisher":
        ea, ta, eb, tb = r.counts
        body = f"{r.spec.outcome} in {ea} of {ta} runs vs {eb} of {tb} runs; Fisher's exact p={fmt_p(r.p)}"
    elif r.n == 0:
        body = "no pairs to test (" + "; ".join(r.notes) + ")"
    else:
        ci = units.interval(r.ci_low, r.ci_high, signed=True)
        per_seed = ", ".join(units.delta(v) for v in r.per_seed)
        test = "Welch t" if r.unpaired else ("one-sample t" if r.kind == "interaction" else "paired t")
        body = (f"{'interaction' if r.kind == 'interaction' else 'difference'} {units.delta(r.estimate)}{units.unit} "
                f"[{r.ci_label} CI {ci[1:].split(']')[0] if ci != DASH else DASH}]"
                + (f" (per seed: {per_seed})" if per_seed else "") + f", n={r.n}; "
                + (f"TOST p={fmt_p(r.p)} for |difference| < {units.magnitude(r.spec.margin)}; " if r.kind == "equivalence" else "")
                + f"{test} p={fmt_p(r.p_t)}, {'permutation' if r.unpaired else 'exact sign-flip'} p={fmt_p(r.p_perm)}"
                + (f" (cannot go below {fmt_p(r.min_perm_p)} at n={r.n})" if r.min_perm_p >= ALPHA else ""))
    if r.spec.role == "secondary":
        body += f"; Holm-adjusted p={fmt_p(r.p_holm)}" + (" (of the TOST)" if r.kind == "equivalence" else "")
    expect = ""
    if r.expect and r.kind != "equivalence":
        expect = f"; the paper's direction: {'interaction' if r.kind == 'interaction' else 'A − B'} {'>' if r.expect == 'greater' else '<'} 0"
    verdict = display_verdict(r, units)
    if verdict == "contradicted" and r.kind == "equivalence":
        verdict += f" (not equivalent: the difference itself is significant, paired t p={fmt_p(r.p_t)})"
    if verdict.startswith("inconclusive") and _power_clause(r, units):
        verdict += f" ({_power_clause(r, units)})"
    return f"{r.spec.label} [{_KIND_TEST[r.kind]}]: {body}{expect} → {verdict}"


def secondary_lines(analysis: Analysis) -> List[str]:
    """The declared secondaries, then each group against the baseline that no declared contrast covers."""
    lines = [contrast_sentence(r, analysis) for r in analysis.secondary]
    groups = analysis.groups
    compared = groups.index[groups["delta"].notna() & ~groups["holm"].isin(["primary", "secondary paired",
                                                                            "secondary equivalence"])]
    lines += [comparison_verdict(label, analysis) for label in compared]
    for label, g in groups[groups["n"] == 0].iterrows():
        statuses = analysis.runs.loc[analysis.runs["group"] == label, "status"].value_counts().sort_index()
        lines.append(f"{label}: no completed runs with {analysis.metric} ("
                     + ", ".join(f"{k} {v}" for k, v in statuses.items()) + ") — not compared; see Not included")
    if groups["delta"].isna().all():
        usable = (groups["n"] > 0).sum()
        if usable <= 1 and analysis.baseline is not None:
            lines.append("one group only: nothing to compare")
        elif analysis.baseline is None and usable:
            lines.append("no baseline group with completed runs: no comparisons")
    return lines


def _method_lines(analysis: Analysis) -> List[str]:
    units = Units(analysis.is_fraction)
    found = "; ".join(f"{_SECTION_MEANING.get(s, s)} for {c} run{'s' if c != 1 else ''}"
                      for s, c in sorted(analysis.sections.items())) or "no included run has it"
    shown = "shown in % (accuracy × 100), differences in percentage points" if units.is_fraction else "shown as recorded"
    by = ", ".join(f"`{md_escape(k)}`" for k in analysis.by) or "(nothing: all runs form one group)"
    baseline = (f"baseline group `{md_escape(analysis.baseline)}` ({analysis.baseline_reason})." if analysis.baseline
                else f"no baseline group ({analysis.baseline_reason}): no comparisons.")
    members, origin = analysis.design.holm
    m = analysis.family_size
    family = "the declared secondaries" + (" and each group's difference to the baseline that no declared contrast "
                                           "compares" if "baseline" in members else "")
    return [
        f"- Metric: `{md_escape(analysis.metric)}` from {found}; {shown}; "
        f"{'higher' if analysis.higher_is_better else 'lower'} is better.",
        f"- Grouped by {by}; replicates: `seed`; {baseline} Runs that differ in any other config key (but how they "
        "executed) are never pooled.",
        "- Intervals: 95% Student's t (mean ± t·s/√n) for a group mean and for a mean paired difference (Welch's "
        f"where unpaired); none at n=1; std with ddof=1;{PAST_BOUND} marks an accuracy interval reaching past "
        "0–100% (past ±100 points for a difference), where the normal approximation behind it fails at this n.",
        "- Tests: the primary contrast declared in the sweep file decides the verdict, at α=0.05 without correction. "
        "Δ is group − baseline, the mean of the per-seed differences (paired by seed; † unpaired, Welch); p (paired t) "
        "is the paired t-test, p (sign-flip, exact) the exact sign-flip permutation test beside it (free of the "
        f"normality assumption, but never below 2/2^n: 0.25 at n=3). One Holm family ({md_escape(origin)}): {family}, "
        f"{m} comparison{'s' if m != 1 else ''}; each has one adjusted p, p (Holm), which alone decides it (an "
        "equivalence's is its TOST's).",
    ]


def render_markdown(analysis: Analysis, title: str, figures: Sequence[Tuple[str, str]] = (), notes: Sequence[str] = (),
                    written_to: str = "", primary_line: str = "") -> str:
    included = int(analysis.groups["n"].sum())
    parts = [f"# {md_escape(title)}", "", f"- Runs: {included} included of {len(analysis.runs)}, from "
             + "; ".join(md_escape(s) for s in analysis.design.sources) + "."]
    parts += [f"- Written to {md_escape(written_to)}."] if written_to else []
    parts += _method_lines(analysis) + ["", "## Primary contrast", ""]
    r = analysis.primary
    if r is not None:
        parts += [f"Declared on line {r.spec.line} of {md_escape(r.spec.origin)}: `{md_escape(r.spec.text)}`", "",
                  f"**Verdict: {md_escape(display_verdict(r, Units(analysis.is_fraction)))}.** {md_escape(primary_line)}"]
    else:
        parts.append("None declared: the sweep file has no `# primary:` line, so this report gives no verdict; "
                     "every comparison below is secondary.")
    parts += ["", "## Groups", "", group_table(analysis), "", "## Secondary comparisons", ""]
    parts += [f"- {md_escape(line)}" for line in secondary_lines(analysis)]
    all_notes = list(analysis.notes) + list(notes)
    if all_notes:
        parts += ["", "## Notes", ""] + [f"- {md_escape(note)}" for note in all_notes]
    parts += ["", "## Not included", ""]
    excluded = analysis.runs[analysis.runs["value"].isna()]
    if len(excluded):
        parts += ["| run | group | seed | status | reason |", "|---|---|---|---|---|"]
        parts += ["| " + " | ".join(md_escape(c) for c in (run["run"], run["group"], run["seed"] or DASH, run["status"],
                                                            run["why"])) + " |" for _, run in excluded.iterrows()]
    else:
        parts.append("Every run completed and has the metric.")
    if figures:
        parts += ["", "## Figures"]
        for name, caption in figures:
            parts += ["", f"![{md_escape(name)}]({md_escape(name)})", "", f"*{md_escape(name)}*: {md_escape(caption)}"]
    return "\n".join(parts) + "\n"
