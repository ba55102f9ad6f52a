"""The report's table (Markdown and CSV) and the Markdown document around it.

The Markdown shows accuracies in percent and differences in percentage points (the paper's units);
the CSV keeps raw values (fractions) with one column per number, for spreadsheets and scripts.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

from vit_ablate.report import stats
from vit_ablate.report.groups import Analysis, Comparison, Group

__all__ = ["Units", "fmt_p", "table_rows", "render_markdown", "render_csv", "TABLE_COLUMNS"]

TABLE_COLUMNS = ["group", "n", "mean", "std", "95% CI", "Δ vs baseline", "Δ 95% CI", "p", "p (Holm)", "paper"]
DASH = "—"


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
                "delta": c.diff if c else math.nan,
                "delta_ci_low": c.ci_low if c else math.nan,
                "delta_ci_high": c.ci_high if c else math.nan,
                "n_pairs": c.n_pairs if c else "",
                "paired": c.paired if c else "",
                "p": c.p if c else math.nan,
                "p_holm": c.p_holm if c else math.nan,
                "min_attainable_p": c.test.min_p if c else math.nan,
                "test": c.test.method if c else "",
                "paper": ref.get("value", ""),
                "paper_metric": ref.get("metric") or "",
                "paper_source": ref.get("source") or "",
                "seeds": " ".join(str(sd) for sd in group.seeds),
            }
        )
        rows.append(row)
    return rows


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


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
        lines.append(
            _markdown_row(
                [
                    label,
                    n,
                    units.value(s.mean),
                    units.value(s.std),
                    units.interval(s.ci_low, s.ci_high),
                    units.delta(c.diff) if c else DASH,
                    units.interval(c.ci_low, c.ci_high, signed=True) if c else DASH,
                    p,
                    fmt_p(c.p_holm) if c else DASH,
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


def _method_lines(analysis: Analysis, n_resamples: int) -> List[str]:
    units = Units(analysis.is_fraction)
    m = len(analysis.comparisons)
    found = "; ".join(
        f"`{section}` section for {count} run{'s' if count != 1 else ''}"
        for section, count in sorted(analysis.sections.items())
    ) or "no run has it"
    shown = (
        "shown in % (accuracy × 100), differences in percentage points"
        if units.is_fraction
        else "shown as recorded"
    )
    direction = "higher is better" if analysis.higher_is_better else "lower is better"
    by = ", ".join(f"`{k}`" for k in analysis.by) or "(nothing: all runs form one group)"
    lines = [
        f"- Metric: `{analysis.metric}` from result.json ({found}); {shown}; {direction}.",
        f"- Grouped by {by}; replicates: `seed`. Baseline: "
        + (f"`{analysis.baseline.label}`." if analysis.baseline else "none."),
        f"- 95% CI: percentile bootstrap of the mean ({n_resamples:,} resamples, seed {analysis.seed}); "
        "std with ddof=1.",
    ]
    if m:
        paired = all(c.paired for c in analysis.comparisons)
        lines.append(
            "- Δ: group − baseline, "
            + (
                "mean of the per-seed differences (paired by seed)"
                if paired
                else "paired by seed where seeds match (else difference of means, marked †)"
            )
            + "; Δ 95% CI: the same bootstrap on the differences; p: two-sided exact sign-flip permutation test"
            + (" († unpaired permutation test)" if not paired else "")
            + f"; p (Holm): Holm–Bonferroni over {m} comparison{'s' if m != 1 else ''}."
        )
    return lines


def render_markdown(
    analysis: Analysis,
    verdicts: Sequence[str],
    sources: Sequence[str],
    title: str,
    figures: Sequence[str] = (),
    extra_notes: Sequence[str] = (),
    n_resamples: int = stats.BOOTSTRAP_RESAMPLES,
) -> str:
    included = sum(g.summary.n for g in analysis.groups)
    parts = [f"# {title}", ""]
    parts.append(f"- Runs: {included} included of {analysis.n_runs}, from " + "; ".join(sources) + ".")
    parts.extend(_method_lines(analysis, n_resamples))
    parts += ["", render_table(analysis), "", "## Verdicts", ""]
    parts.extend(f"- {line}" for line in verdicts)
    notes = list(analysis.notes) + list(extra_notes)
    if notes:
        parts += ["", "## Notes", ""]
        parts.extend(f"- {note}" for note in notes)
    parts += ["", "## Not included", ""]
    if analysis.excluded:
        parts.append(_excluded_table(analysis))
    else:
        parts.append("Every run completed and has the metric.")
    if figures:
        parts += ["", "## Figures", ""]
        parts.extend(f"![{name}]({name})" for name in figures)
    return "\n".join(parts) + "\n"


def render_csv(rows: Sequence[Dict[str, Any]]) -> str:
    if not rows:
        return ""
    columns: List[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return buffer.getvalue()
