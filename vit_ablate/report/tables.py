"""A report's text: report.md with its verdicts in fixed words, report.csv and runs.csv. Markdown shows
accuracies in percent, differences in points (the paper's units); the CSVs keep fractions. A value from a
run is escaped where written: no Markdown cell, line, HTML or link of its own, no spreadsheet formula.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Tuple

import pandas as pd

from vit_ablate import rundir
from vit_ablate.report.analysis import Analysis
from vit_ablate.report.contrasts import ALPHA, ContrastResult
from vit_ablate.report.sequential import plan_power

TABLE_COLUMNS = ["group", "n", "mean", "std", "95% CI (t)", "Δ vs baseline", "Δ 95% CI (t)", "p (paired t)",
                 "p (sign-flip, exact)", "p (Holm)", "paper"]
LOOK_COLUMNS = ["stage", "seeds", "mean", "t", "efficacy boundary |t| ≥", "futility boundary |t| <",
                "repeated 95% CI", "decision"]
DASH = "—"
PAST_BOUND = " ‡"  # marks an accuracy interval that reaches past 0–100% (a difference's: past ±100 points)
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_MD_ESCAPES = str.maketrans({c: "\\" + c for c in "\\|`*"})
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_escape(text: Any) -> str:
    """A value from a run as one line with no HTML, link, cell separator or code span."""
    out = " ".join(str(text).split()).translate(_MD_ESCAPES).replace("](", "]\\(")
    return _TAG_START.sub("&lt;", out)  # only where "<" could open a tag: "61.38 < 64.21" stays readable


def csv_cell(value: Any) -> Any:
    """A string starting like a spreadsheet formula (but not a number like "-0.5") gets a leading apostrophe."""
    formula = isinstance(value, str) and value.startswith(_FORMULA_START) and pd.isna(pd.to_numeric(value, errors="coerce"))
    return "'" + value if formula else value


def write_csv(rows: Sequence[Dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    frame = pd.DataFrame(list(rows), columns=columns, dtype=object)
    frame.columns = [csv_cell(c) for c in frame.columns]
    return frame.map(csv_cell).to_csv(index=False, lineterminator="\n", na_rep="")


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return DASH
    return "<0.0001" if p < 1e-4 else "1.0" if p >= 1.0 else f"{p:.3g}"


@dataclass
class Units:
    """Display units: an accuracy fraction is shown ×100 and differences as percentage points."""
    is_fraction: bool

    @property
    def unit(self) -> str:
        return " points" if self.is_fraction else ""

    def value(self, x: float, sign: str = "") -> str:
        return DASH if x is None or math.isnan(x) else f"{x * 100:{sign}.2f}" if self.is_fraction else f"{x:{sign}.4g}"

    def delta(self, x: float) -> str:
        return self.value(x, "+")

    def magnitude(self, x: float) -> str:  # "7.10 points"
        return self.value(abs(x)) + self.unit

    def interval(self, low: float, high: float, signed: bool = False, label: str = "") -> str:
        if low is None or high is None or math.isnan(low) or math.isnan(high):
            return f"[{label}{DASH}]" if label else DASH
        show = self.delta if signed else self.value
        past = self.is_fraction and (low < (-1 if signed else 0) or high > 1)
        return f"[{label}{show(low)}, {show(high)}]" + (PAST_BOUND if past else "")

    def reference(self, x: float, sign: str = "") -> str:
        # Paper values come as fractions (Table 8: 0.61382) or in percent (Table 6: 80.73).
        return Units(self.is_fraction and abs(x) <= 1.0).value(x, sign)


def _table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> List[str]:
    lines = ["| " + " | ".join(md_escape(c) for c in cells) + " |" for cells in [columns, *rows]]
    return [lines[0], "|" + "---|" * len(columns), *lines[1:]]


def group_table(analysis: Analysis) -> List[str]:
    units = Units(analysis.is_fraction)
    return _table(TABLE_COLUMNS, [[
        label + (" (baseline)" if g["is_baseline"] else ""),
        f"{g['n']}" if g["n"] == g["n_total"] else f"{g['n']} of {g['n_total']}",
        units.value(g["mean"]), units.value(g["std"]), units.interval(g["ci_low"], g["ci_high"]),
        units.delta(g["delta"]), units.interval(g["delta_ci_low"], g["delta_ci_high"], signed=True),
        fmt_p(g["p_t"]) + ("" if math.isnan(g["delta"]) or g["paired"] else " †"), fmt_p(g["p_signflip"]),
        DASH if math.isnan(g["delta"]) else {"primary": "primary", "not in the Holm family": DASH}.get(g["holm"])
        or fmt_p(g["p_holm"]) + (" (TOST)" if g["holm"] == "secondary equivalence" else ""),
        f"{units.reference(float(g['reference']['value']))} ({g['reference'].get('source') or 'paper'}"
        f"{', ' + g['reference']['metric'] if g['reference'].get('metric') else ''})" if g["reference"] else DASH]
        for label, g in analysis.groups.iterrows()])


def look_lines(r: ContrastResult, units: Units) -> List[str]:
    """The plan, each look's statistic against its boundaries, and the repeated confidence interval."""
    plan, level, power = r.plan, f"{100 * (1 - r.plan.alpha):g}%", plan_power(r.plan)
    rows = [[f"{look.stage} of {len(plan.stages)}",
             f"{look.n} of {len(plan.seeds_through(look.stage - 1))}" if look.dropped else look.n,
             units.delta(look.mean) + units.unit, f"{look.t:+.3f}", f"{look.efficacy:.3f}",
             DASH if look.futility is None else f"{look.futility:.3f}", units.interval(*look.rci, signed=True),
             look.decision] for look in r.looks]
    return [f"Group-sequential plan ({md_escape(plan.where)}): {md_escape(plan.describe())}"
            + (f"; power {power:.2f} at effect size {plan.effect_size:g}" if power else "")
            + f". Boundaries are for the paired t at each look's seeds; the repeated interval keeps {level} coverage "
            "under every look. The plan alone decides (the fixed-n tests above use all the seeds).", "",
            *_table([c.replace("95%", level) for c in LOOK_COLUMNS], rows),
            *(["", f"No further look: {md_escape(r.looks_end)}."] if r.looks_end else [])]


def report_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """report.csv: one row a group, then one a declared contrast and one a look; fractions, not percent."""
    rows = [{"group": label, **{k: g[k] for k in analysis.by}, "baseline": g["is_baseline"], "n": g["n"],
             **{k: g[k] for k in ("n_total", "mean", "std", "ci_low", "ci_high", "delta", "delta_ci_low", "delta_ci_high",
                                  "n_pairs", "paired", "p_t", "p_signflip", "p_holm", "holm")},
             "paper": (g["reference"] or {}).get("value"), "paper_metric": (g["reference"] or {}).get("metric"),
             "paper_source": (g["reference"] or {}).get("source"),
             "seeds": g["seeds"]} for label, g in analysis.groups.iterrows()]
    for r in ([analysis.primary] if analysis.primary else []) + analysis.secondary:
        rows.append({"group": f"{r.spec.role}: {r.spec.label}", "contrast_kind": r.kind, "role": r.spec.role, "n": r.n,
                     "delta": r.estimate, "delta_ci_low": r.ci_low, "delta_ci_high": r.ci_high, "ci_method": r.ci_label,
                     "p": r.p, "p_t": r.p_t, "p_signflip": r.p_perm, "p_holm": r.p_holm, "margin": r.spec.margin,
                     "power": r.power, "verdict": r.verdict})
        rows += [{"group": f"look {look.stage} of {len(r.plan.stages)}: {r.spec.label}", "role": "look", "n": look.n,
                  "delta": look.mean, "delta_ci_low": look.rci[0], "delta_ci_high": look.rci[1],
                  "ci_method": f"repeated {100 * (1 - r.plan.alpha):g}%", "t": look.t, "efficacy": look.efficacy,
                  "futility": look.futility, "verdict": look.decision} for look in r.looks]
    return rows


def runs_rows(analysis: Analysis) -> tuple[List[Dict[str, Any]], List[str]]:
    """runs.csv: run, grouping and swept keys, seed, status, metric values, reason (a runs.csv input keeps its columns)."""
    runs, design = analysis.runs, analysis.design
    from_table = runs["source"].str.startswith("table")
    params = [k for k in dict.fromkeys([*analysis.by, *design.swept, *(design.params if from_table.any() else [])])
              if k in design.params]
    metrics = list(dict.fromkeys([analysis.metric, *(k for r in runs.loc[from_table, "result"] for k in r["table"])]))
    rows = []
    for _, run in runs.iterrows():
        table = run["result"].get("table", {})
        values = {m: run["metric_value"] if m == analysis.metric else table.get(m, math.nan) for m in metrics}
        rows.append({"run": run["run"], **{k: run[k] if run[k] != "—" else "" for k in params},
                     "seed": run["seed"] or "", "status": run["status"],
                     **{m: "" if math.isnan(v) else repr(float(v)) for m, v in values.items()},
                     "reason": "" if run["status"] == rundir.COMPLETED else run["reason"]})
    return rows, ["run", *params, "seed", "status", *metrics, "reason"]


_KIND_TEST = {"paired": "paired t-test", "interaction": "one-sample t-test of the per-seed interaction",
              "fisher": "Fisher's exact test", "equivalence": "two one-sided t-tests (TOST)"}
_SECTION_MEANING = {  # where in a result the metric was found, and so which weights it measures
    "final": "the `final` section (the last epoch's weights; EMA where set)", "summary": "the W&B run's summary",
    "table": "runs.csv (the value each run recorded at its last epoch)", "fewshot": "the `fewshot` section (final weights)",
    "test": "the `test` section (the test split, once after training, last weights)",
    "best": "the `best` section (the best validation epoch, selected on the validation split itself)"}


def _paper_clause(g: pd.Series, base: pd.Series, analysis: Analysis, units: Units, established: bool) -> str:
    ref_g, ref_b = g["reference"], base["reference"]
    # The paper's difference speaks to ours only when its two numbers differ in everything our two groups
    # differ in and measure the same thing (5-shot accuracy minus another paper's top-1 is no difference).
    if not ref_g or not ref_b or ref_g is ref_b or ref_g.get("metric") != ref_b.get("metric") or not \
            {k for k in analysis.by if g[k] != base[k]} <= set(ref_g.get("params") or {}) & set(ref_b.get("params") or {}):
        return ""
    paper_diff = float(ref_g["value"]) - float(ref_b["value"])
    metric = ref_g.get("metric")
    where = (" / ".join(dict.fromkeys(r["source"] for r in (ref_g, ref_b) if r.get("source"))) or "paper") \
        + (f", {metric}" if metric and metric != analysis.metric else "")
    name = (lambda x: x["short"]) if len(analysis.by) == 1 else (lambda x: x.name)
    g_text, b_text = f"{name(g)} {units.reference(float(ref_g['value']))}", f"{name(base)} {units.reference(float(ref_b['value']))}"
    if established and paper_diff:
        agrees = (paper_diff > 0) == (g["delta"] > 0)
        return f" — {'agrees' if agrees else 'disagrees'} in direction with {where} ({g_text} {'<' if paper_diff < 0 else '>'} {b_text})"
    return f" — {where}: {g_text} vs {b_text} ({units.reference(paper_diff, '+')}{units.unit if abs(paper_diff) <= 1 else ''})"


def comparison_verdict(label: str, analysis: Analysis) -> str:
    """A group against the baseline, judged on its Holm-adjusted p (or shown as descriptive)."""
    units, g, base = Units(analysis.is_fraction), analysis.groups.loc[label], analysis.groups.loc[analysis.baseline]
    base_name = base["short"] if len(analysis.by) == 1 else base.name
    test, perm = ("paired t", "exact sign-flip") if g["paired"] else ("Welch t", "permutation")
    holm = f"Holm over {analysis.family_size}" if analysis.family_size > 1 else "one comparison, no correction"
    established = g["p_holm"] < ALPHA
    sign = 1 if g["delta"] >= 0 or not established else -1  # an established difference is told as a magnitude
    ci = units.interval(*sorted([sign * g["delta_ci_low"], sign * g["delta_ci_high"]]), not established, "95% CI ")
    if established:
        line = (f"{label} is {'better' if (g['delta'] > 0) == analysis.higher_is_better else 'worse'} than {base_name} by "
                f"{units.magnitude(g['delta'])} {ci}, {test} p={fmt_p(g['p_holm'])} ({holm}), {perm} p="
                f"{fmt_p(g['p_signflip'])}, " + (f"n={g['n_pairs']} paired seeds" if g["paired"] else
                                                  f"n={g['n']} vs {base['n']} runs, unpaired (no seed in common)"))
    else:
        n = g["n_pairs"] if g["paired"] else min(g["n"], base["n"])
        line = (f"{label} vs {base_name}: " + (f"not distinguishable after Holm at n={n}" if g["holm"] == "" else
                                               "descriptive, not in the Holm family")
                + f" (difference {units.delta(g['delta'])}{units.unit} {ci}, {test} p={fmt_p(g['p_t'])}"
                + (f", {holm}: {fmt_p(g['p_holm'])}" if g["holm"] == "" else "") + f"; {perm} p={fmt_p(g['p_signflip'])}"
                + (f", which cannot go below {fmt_p(g['min_signflip_p'])} at this n)" if g["min_signflip_p"] >= ALPHA else ")"))
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
        per_seed = ", ".join(units.delta(v) for v in r.per_seed)
        test = "Welch t" if r.unpaired else ("one-sample t" if r.kind == "interaction" else "paired t")
        body = (f"{'interaction' if r.kind == 'interaction' else 'difference'} {units.delta(r.estimate)}{units.unit} "
                f"{units.interval(r.ci_low, r.ci_high, True, f'{r.ci_label} CI ')}"
                + (f" (per seed: {per_seed})" if per_seed else "") + f", n={r.n}; "
                + (f"TOST p={fmt_p(r.p)} for |difference| < {units.magnitude(r.spec.margin)}; " if r.kind == "equivalence" else "")
                + f"{test} p={fmt_p(r.p_t)}, {'permutation' if r.unpaired else 'exact sign-flip'} p={fmt_p(r.p_perm)}"
                + (f" (cannot go below {fmt_p(r.min_perm_p)} at n={r.n})" if r.min_perm_p >= ALPHA else ""))
    if r.spec.role == "secondary":
        body += f"; Holm-adjusted p={fmt_p(r.p_holm)}" + (" (of the TOST)" if r.kind == "equivalence" else "")
    if r.expect and r.kind != "equivalence":
        body += (f"; the paper's direction: {'interaction' if r.kind == 'interaction' else 'A − B'} "
                 f"{'>' if r.expect == 'greater' else '<'} 0")
    verdict = display_verdict(r, units)
    if verdict == "contradicted" and r.kind == "equivalence":
        verdict += f" (not equivalent: the difference itself is significant, paired t p={fmt_p(r.p_t)})"
    if verdict.startswith("inconclusive") and _power_clause(r, units):
        verdict += f" ({_power_clause(r, units)})"
    return f"{r.spec.label} [{_KIND_TEST[r.kind]}]: {body} → {verdict}"


def secondary_lines(analysis: Analysis) -> List[str]:
    """The declared secondaries, then each group against the baseline that no declared contrast covers."""
    lines = [contrast_sentence(r, analysis) for r in analysis.secondary]
    groups = analysis.groups
    lines += [comparison_verdict(label, analysis)  # those no declared contrast makes
              for label in groups.index[groups["delta"].notna() & groups["holm"].isin(["", "not in the Holm family"])]]
    for label in groups.index[groups["n"] == 0]:
        statuses = analysis.runs.loc[analysis.runs["group"] == label, "status"].value_counts().sort_index()
        lines.append(f"{label}: no completed runs with {analysis.metric} ({', '.join(f'{k} {v}' for k, v in statuses.items())}) "
                     "— not compared; see Not included")
    usable = (groups["n"] > 0).sum()
    if groups["delta"].isna().all() and usable <= 1 and analysis.baseline is not None:
        lines.append("one group only: nothing to compare")
    elif groups["delta"].isna().all() and analysis.baseline is None and usable:
        lines.append("no baseline group with completed runs: no comparisons")
    return lines


def _method_lines(analysis: Analysis) -> List[str]:
    found = "; ".join(f"{_SECTION_MEANING.get(s, s)} for {c} run{'s' if c != 1 else ''}" for s, c in sorted(analysis.sections.items()))
    baseline = (f"baseline group `{md_escape(analysis.baseline)}` ({analysis.baseline_reason})." if analysis.baseline
                else f"no baseline group ({analysis.baseline_reason}): no comparisons.")
    (members, origin), m = analysis.design.holm, analysis.family_size
    return [
        f"- Metric: `{md_escape(analysis.metric)}` from {found or 'no included run'}; "
        + ("in % (accuracy × 100), differences in percentage points; " if analysis.is_fraction else "")
        + f"{'higher' if analysis.higher_is_better else 'lower'} is better.",
        f"- Grouped by {', '.join(f'`{md_escape(k)}`' for k in analysis.by) or 'nothing (one group)'}, replicates by "
        f"`seed`; {baseline} Runs that differ in another config key (but how they executed) are never pooled.",
        f"- Method: 95% Student's t intervals (none at n=1;{PAST_BOUND}: past 0–100%, or ±100 points, where the normal "
        "approximation fails at this n); Δ = group − baseline, the mean per-seed difference († unpaired: Welch); beside "
        "the paired t-test the exact sign-flip p (free of normality, never below 2/2^n). The primary contrast alone "
        f"decides the verdict, at α=0.05 without correction. One Holm family ({md_escape(origin)}): the declared "
        "secondaries" + (" and each group's difference to the baseline that no declared contrast compares" if "baseline"
                         in members else "") + f", {m} comparison{'s' if m != 1 else ''}, each decided by its p (Holm)."]


def render_markdown(analysis: Analysis, title: str, figures: Sequence[Tuple[str, str]] = (), notes: Sequence[str] = (),
                    written_to: str = "", primary_line: str = "") -> str:
    parts = [f"# {md_escape(title)}", "", f"- Runs: {int(analysis.groups['n'].sum())} included of {len(analysis.runs)}, "
             "from " + "; ".join(md_escape(s) for s in analysis.design.sources) + "."]
    parts += [f"- Written to {md_escape(written_to)}."] if written_to else []
    parts += _method_lines(analysis) + ["", "## Primary contrast", ""]
    if (r := analysis.primary) is not None:
        parts += [f"Declared on line {r.spec.line} of {md_escape(r.spec.origin)}: `{md_escape(r.spec.text)}`", "",
                  f"**Verdict: {md_escape(display_verdict(r, Units(analysis.is_fraction)))}.** {md_escape(primary_line)}"]
        parts += ["", *look_lines(r, Units(analysis.is_fraction))] if r.plan is not None else []
    else:
        parts.append("None declared: the sweep file has no `# primary:` line, so this report gives no verdict; "
                     "every comparison below is secondary.")
    parts += ["", "## Groups", "", *group_table(analysis), "", "## Secondary comparisons", ""]
    parts += [f"- {md_escape(line)}" for line in secondary_lines(analysis)]
    parts += ["", "## Notes", "", *(f"- {md_escape(note)}" for note in [*analysis.notes, *notes])] if [*analysis.notes, *notes] else []
    excluded = analysis.runs[analysis.runs["value"].isna()]
    parts += ["", "## Not included", "", *(_table(["run", "group", "seed", "status", "reason"], [
        [run["run"], run["group"], run["seed"] or DASH, run["status"], run["why"]] for _, run in excluded.iterrows()])
        if len(excluded) else ["Every run completed and has the metric."])]
    parts += ["", "## Figures"] if figures else []
    for name, caption in figures:
        parts += ["", f"![{md_escape(name)}]({md_escape(name)})", "", f"*{md_escape(name)}*: {md_escape(caption)}"]
    return "\n".join(parts) + "\n"
