"""The report's table (Markdown and CSV), the per-run table, and the Markdown document around them.

The Markdown shows accuracies in percent and differences in percentage points (the paper's units);
the CSV keeps raw values (fractions) with one column per number, for spreadsheets and scripts.

Every value that comes from a run directory (names, config values, error messages) is escaped where it
is written: in Markdown it cannot close a table cell, start a line, or inject HTML or a link; in a CSV
a cell starting with ``= + - @`` gets a leading ``'`` so a spreadsheet shows it instead of evaluating it.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vit_ablate import rundir
from vit_ablate.report import stats
from vit_ablate.report.groups import Analysis, Comparison, Group

__all__ = [
    "Units", "fmt_p", "table_rows", "render_markdown", "render_csv", "render_runs_csv", "md_escape",
    "csv_cell", "TABLE_COLUMNS",
]

TABLE_COLUMNS = [
    "group", "n", "mean", "std", "95% CI (t)", "Δ vs baseline", "Δ 95% CI (t)", "p (paired t)",
    "p (sign-flip, exact)", "p (Holm)", "paper",
]
DASH = "—"
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_escape(text: Any) -> str:
    """A value from a run, safe inside a Markdown table cell or line: one line, no HTML, no link, no
    cell separator, no code span."""
    out = " ".join(str(text).split())  # newlines and tabs → one space: a value cannot start a line
    for raw, safe in (("\\", "\\\\"), ("|", "\\|"), ("`", "\\`"), ("](", "]\\("), ("*", "\\*")):
        out = out.replace(raw, safe)
    # "<" only where it could open an HTML tag or comment; "p <0.05" and "61.38 < 64.21" stay readable.
    return _TAG_START.sub("&lt;", out)


def csv_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: a string starting with = + - @ (a formula) gets a
    leading apostrophe; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
            return value  # "-0.5" is a number, not a formula
        except ValueError:
            return "'" + value
    return value


def fmt_p(p: float) -> str:
    if p is None or math.isnan(p):
        return DASH
    if p < 1e-4:
        return "<0.0001"
    if p >= 1.0:
        return "1.0"
    return f"{p:.3g}"


@dataclass
class Units:
    """Display units: an accuracy fraction is shown ×100 and differences as percentage points."""

    is_fraction: bool

    @property
    def unit(self) -> str:
        return " points" if self.is_fraction else ""

    def _scale(self, x: float) -> float:
        return x * 100.0 if self.is_fraction else x

    def value(self, x: float) -> str:
        if x is None or math.isnan(x):
            return DASH
        return f"{self._scale(x):.2f}" if self.is_fraction else f"{x:.4g}"

    def delta(self, x: float) -> str:
        if x is None or math.isnan(x):
            return DASH
        return f"{self._scale(x):+.2f}" if self.is_fraction else f"{x:+.4g}"

    def magnitude(self, x: float) -> str:
        """|x| with its unit: "7.10 points"."""
        return (f"{abs(self._scale(x)):.2f}" if self.is_fraction else f"{abs(x):.4g}") + self.unit

    def interval(self, low: float, high: float, signed: bool = False) -> str:
        if low is None or high is None or math.isnan(low) or math.isnan(high):
            return DASH
        f = self.delta if signed else self.value
        return f"[{f(low)}, {f(high)}]"

    def reference(self, x: float) -> str:
        # Paper values are given as fractions (Table 8: 0.61382) or in percent (Table 6: 80.73);
        # a fraction is shown in percent like our own accuracies, a percentage as written.
        if self.is_fraction and abs(x) <= 1.0:
            return f"{x * 100:.2f}"
        return f"{x:.4g}"

    def reference_delta(self, x: float) -> str:
        if self.is_fraction and abs(x) <= 1.0:
            return f"{x * 100:+.2f}{self.unit}"
        return f"{x:+.4g}"


def _reference_cell(group: Group, units: Units) -> str:
    ref = group.reference
    if not ref:
        return DASH
    source = ref.get("source") or "paper"
    metric = ref.get("metric")
    return f"{units.reference(float(ref['value']))} ({source}{', ' + metric if metric else ''})"


def table_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """One dict per group, raw values (fractions, not percent): the CSV, and the Markdown's source."""
    by_group = {id(c.group): c for c in analysis.comparisons}
    rows = []
    for group in analysis.groups:
        c: Optional[Comparison] = by_group.get(id(group))
        s = group.summary
        ref = group.reference or {}
        row: Dict[str, Any] = {"group": group.label}
        row.update({key: value for key, value in zip(group.by, group.key)})
        row.update(
            {
                "baseline": group.is_baseline,
                "n": s.n,
                "n_total": group.n_total,
                "mean": s.mean,
                "std": s.std,
                "ci_low": s.ci_low,
                "ci_high": s.ci_high,
                "ci_method": s.ci_method,
                "delta": c.diff if c else math.nan,
                "delta_ci_low": c.ci_low if c else math.nan,
                "delta_ci_high": c.ci_high if c else math.nan,
                "n_pairs": c.n_pairs if c else "",
                "paired": c.paired if c else "",
                "p_t": c.p_t if c else math.nan,
                "p_signflip": c.test.p if c else math.nan,
                "p_holm": c.p_holm if c else math.nan,
                "primary": c.is_primary if c else "",
                "min_attainable_signflip_p": c.test.min_p if c else math.nan,
                "test": ("paired t; " if c.paired else "Welch t; ") + c.test.method if c else "",
                "paper": ref.get("value", ""),
                "paper_metric": ref.get("metric") or "",
                "paper_source": ref.get("source") or "",
                "seeds": " ".join(str(sd) for sd in group.seeds),
            }
        )
        rows.append(row)
    return rows


def display_verdict(r, units: "Units") -> str:
    """The fixed-word verdict with an equivalence margin in the report's units (points, not 0.01)."""
    if r.verdict.startswith("equivalent within") and r.spec.margin is not None:
        return f"equivalent within ±{units.magnitude(r.spec.margin)}"
    return r.verdict


def contrast_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """The declared contrasts as CSV rows (appended to report.csv under a ``contrast`` column)."""
    rows = []
    results = ([analysis.primary] if analysis.primary else []) + list(analysis.secondary)
    for r in results:
        rows.append({
            "group": f"{r.spec.role}: {r.spec.label}",
            "contrast_kind": r.kind,
            "role": r.spec.role,
            "n": r.n,
            "delta": r.estimate,
            "delta_ci_low": r.ci_low,
            "delta_ci_high": r.ci_high,
            "ci_method": r.ci_label,
            "p": r.p,
            "p_t": r.p_t,
            "p_signflip": r.p_perm,
            "p_holm": r.p_holm,
            "margin": r.spec.margin if r.spec.margin is not None else "",
            "power": r.power,
            "verdict": r.verdict,
        })
    return rows


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(md_escape(c) for c in cells) + " |"


def render_table(analysis: Analysis) -> str:
    units = Units(analysis.is_fraction)
    by_group = {id(c.group): c for c in analysis.comparisons}
    lines = [_markdown_row(TABLE_COLUMNS), "|" + "---|" * len(TABLE_COLUMNS)]
    for group in analysis.groups:
        s = group.summary
        c = by_group.get(id(group))
        label = group.label + (" (baseline)" if group.is_baseline else "")
        n = f"{s.n}" if s.n == group.n_total else f"{s.n} of {group.n_total}"
        p = fmt_p(c.p) + ("" if c.paired else " †") if c else DASH
        holm = ("primary" if c.is_primary else fmt_p(c.p_holm)) if c else DASH
        lines.append(
            _markdown_row(
                [
                    label,
                    n,
                    units.value(s.mean),
                    units.value(s.std),
                    units.interval(s.ci_low, s.ci_high) + (" (bootstrap)" if s.ci_method == "bootstrap" else ""),
                    units.delta(c.diff) if c else DASH,
                    units.interval(c.ci_low, c.ci_high, signed=True) if c else DASH,
                    p,
                    fmt_p(c.test.p) if c else DASH,
                    holm,
                    _reference_cell(group, units),
                ]
            )
        )
    return "\n".join(lines)


def _excluded_table(analysis: Analysis) -> str:
    lines = [_markdown_row(["run", "group", "seed", "status", "reason"]), "|---|---|---|---|---|"]
    for run, label, reason in analysis.excluded:
        lines.append(_markdown_row([run.name, label, run.seed or DASH, run.status, reason]))
    return "\n".join(lines)


_SECTION_MEANING = {
    "final": "the `final` section: the last epoch's validation, i.e. the weights of checkpoints/last.ckpt "
             "(EMA weights where optim.ema_decay is set)",
    "table": "runs.csv (the value each run recorded at its last epoch)",
    "test": "the `test` section: the test split, evaluated once after training with the last weights",
    "best": "the `best` section: the best validation epoch (selected on the validation split itself)",
    "fewshot": "the `fewshot` section: few-shot linear accuracy on the final weights",
    "result": "a top-level number of result.json",
}


def _method_lines(analysis: Analysis) -> List[str]:
    units = Units(analysis.is_fraction)
    found = "; ".join(
        f"{_SECTION_MEANING.get(section, section)} for {count} run{'s' if count != 1 else ''}"
        for section, count in sorted(analysis.sections.items())
    ) or "no included run has it"
    shown = (
        "shown in % (accuracy × 100), differences in percentage points"
        if units.is_fraction
        else "shown as recorded"
    )
    direction = "higher is better" if analysis.higher_is_better else "lower is better"
    by = ", ".join(f"`{md_escape(k)}`" for k in analysis.by) or "(nothing: all runs form one group)"
    if analysis.baseline is not None:
        baseline = f"baseline group `{md_escape(analysis.baseline.label)}` ({analysis.baseline_reason})."
    else:
        baseline = f"no baseline group ({analysis.baseline_reason}): no comparisons."
    lines = [
        f"- Metric: `{md_escape(analysis.metric)}` from {found}; {shown}; {direction}.",
        f"- Grouped by {by}; replicates: `seed`; {baseline}",
        "- Intervals: 95% Student's t (mean ± t·s/√n) for a group mean and for a mean paired difference "
        f"(Welch's where unpaired); a BCa bootstrap, marked, only for groups of ≥{stats.BOOTSTRAP_MIN_N} "
        "runs; none at n=1. std with ddof=1.",
    ]
    m = analysis.family_size
    lines.append(
        "- Tests: the primary contrast declared in the sweep file decides the verdict, at α=0.05 without "
        "correction. Every other comparison is secondary: Δ is group − baseline, the mean of the per-seed "
        "differences (paired by seed; † unpaired, Welch); p (paired t) is scipy's ttest_rel, p (sign-flip, "
        "exact) the exact sign-flip permutation test beside it (free of the normality assumption, but never "
        f"below 2/2^n: 0.25 at n=3); p (Holm): Holm–Bonferroni of the t p-values over the {m} secondary "
        f"comparison{'s' if m != 1 else ''}."
    )
    return lines


def render_markdown(
    analysis: Analysis,
    verdicts: Sequence[str],
    sources: Sequence[str],
    title: str,
    figures: Sequence[Tuple[str, str]] = (),
    extra_notes: Sequence[str] = (),
    written_to: str = "",
    primary_line: str = "",
) -> str:
    included = sum(g.summary.n for g in analysis.groups)
    parts = [f"# {md_escape(title)}", ""]
    parts.append(
        f"- Runs: {included} included of {analysis.n_runs}, from " + "; ".join(md_escape(s) for s in sources) + "."
    )
    if written_to:
        parts.append(f"- Written to {md_escape(written_to)}.")
    parts.extend(_method_lines(analysis))
    parts += ["", "## Primary contrast", ""]
    if analysis.primary is not None:
        r = analysis.primary
        parts.append(f"Declared on line {r.spec.line} of {md_escape(r.spec.origin)}: `{md_escape(r.spec.text)}`")
        parts.append("")
        parts.append(f"**Verdict: {md_escape(display_verdict(r, Units(analysis.is_fraction)))}.** {md_escape(primary_line)}")
    else:
        parts.append(
            "None declared: the sweep file has no `# primary:` line, so this report gives no verdict; "
            "every comparison below is secondary."
        )
    parts += ["", "## Groups", "", render_table(analysis), "", "## Secondary comparisons", ""]
    parts.extend(f"- {md_escape(line)}" for line in verdicts)
    notes = list(analysis.notes) + list(extra_notes)
    if notes:
        parts += ["", "## Notes", ""]
        parts.extend(f"- {md_escape(note)}" for note in notes)
    parts += ["", "## Not included", ""]
    if analysis.excluded:
        parts.append(_excluded_table(analysis))
    else:
        parts.append("Every run completed and has the metric.")
    if figures:
        parts += ["", "## Figures", ""]
        for name, caption in figures:
            parts.append(f"![{md_escape(name)}]({md_escape(name)})")
            parts.append("")
            parts.append(f"*{md_escape(name)}*: {md_escape(caption)}")
            parts.append("")
        parts.pop()
    return "\n".join(parts) + "\n"


def _write_csv(rows: Sequence[Dict[str, Any]], columns: Optional[List[str]] = None) -> str:
    if not rows:
        return ""
    if columns is None:
        columns = []
        for row in rows:
            columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[csv_cell(c) for c in columns], lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({
            csv_cell(k): ("" if isinstance(v, float) and math.isnan(v) else csv_cell(v)) for k, v in row.items()
        })
    return buffer.getvalue()


def render_csv(rows: Sequence[Dict[str, Any]]) -> str:
    return _write_csv(rows)


def render_runs_csv(analysis: Analysis, runs: Sequence[Any], metric_value, keys: Sequence[str] = ()) -> str:
    """runs.csv: one row per run (run, grouping keys, seed, status, metric values, reason), enough to
    regenerate the report without the run directories (`vit-ablate report runs.csv SWEEP.yaml`).

    ``keys``: parameters to keep beside the grouping keys (the swept ones); a run read from a runs.csv
    keeps every column it had, so regenerating with fewer --by keys or another --metric loses nothing."""
    from vit_ablate.report.values import canon

    params: List[str] = [k for k in (*analysis.by, *keys) if k != "seed"]
    metrics: List[str] = [analysis.metric]
    for run in runs:
        if run.source.startswith("table"):
            params.extend(k for k in run.params if k != "seed")
            metrics.extend((run.result.get("table") or {}).keys())
    params = list(dict.fromkeys(params))
    metrics = list(dict.fromkeys(metrics))
    columns = ["run", *params, "seed", "status", *metrics, "reason"]
    rows = []
    for run in runs:
        row: Dict[str, Any] = {"run": run.name}
        for key in params:
            row[key] = canon(run.params[key]) if key in run.params else ""
        row["seed"] = run.seed if run.seed is not None else ""
        row["status"] = run.status
        table = run.result.get("table") or {} if isinstance(run.result, dict) else {}
        for column in metrics:
            value = metric_value(run) if column == analysis.metric else table.get(column)
            row[column] = repr(float(value)) if value is not None else ""
        row["reason"] = "" if run.status == rundir.COMPLETED else run.reason
        rows.append(row)
    return _write_csv(rows, columns)
