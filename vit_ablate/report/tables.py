"""The report's tables: the groups in Markdown, report.csv and runs.csv, and the display units.

The Markdown shows accuracies in percent and differences in percentage points (the paper's units);
the CSVs keep raw values (fractions), one column per number. Every value that comes from a run
(names, config values, error messages) is escaped where it is written: in Markdown it cannot close a
table cell, start a line, or inject HTML or a link; in a CSV a cell starting with ``= + - @`` gets a
leading ``'`` so a spreadsheet shows it instead of evaluating it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

import pandas as pd

from vit_ablate import rundir
from vit_ablate.report.analysis import Analysis

TABLE_COLUMNS = ["group", "n", "mean", "std", "95% CI (t)", "Δ vs baseline", "Δ 95% CI (t)", "p (paired t)",
                 "p (sign-flip, exact)", "p (Holm)", "paper"]
DASH = "—"
PAST_BOUND = " ‡"  # marks an accuracy interval that reaches past 0–100% (a difference's: past ±100 points)
_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def md_escape(text: Any) -> str:
    """A value from a run, safe inside a Markdown table cell or line: one line, no HTML, no link, no
    cell separator, no code span."""
    out = " ".join(str(text).split())
    for raw, safe in (("\\", "\\\\"), ("|", "\\|"), ("`", "\\`"), ("](", "]\\("), ("*", "\\*")):
        out = out.replace(raw, safe)
    return _TAG_START.sub("&lt;", out)  # only where "<" could open a tag: "61.38 < 64.21" stays readable


def csv_cell(value: Any) -> Any:
    """A string starting like a spreadsheet formula gets a leading apostrophe; numbers stay numbers."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        try:
            float(value)
            return value  # "-0.5" is a number, not a formula
        except ValueError:
            return "'" + value
    return value


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

    def value(self, x: float) -> str:
        return DASH if x is None or math.isnan(x) else f"{x * 100:.2f}" if self.is_fraction else f"{x:.4g}"

    def delta(self, x: float) -> str:
        return DASH if x is None or math.isnan(x) else f"{x * 100:+.2f}" if self.is_fraction else f"{x:+.4g}"

    def magnitude(self, x: float) -> str:
        """|x| with its unit: "7.10 points"."""
        return (f"{abs(x) * 100:.2f}" if self.is_fraction else f"{abs(x):.4g}") + self.unit

    def interval(self, low: float, high: float, signed: bool = False) -> str:
        if low is None or high is None or math.isnan(low) or math.isnan(high):
            return DASH
        show = self.delta if signed else self.value
        past = self.is_fraction and (low < (-1 if signed else 0) or high > 1)
        return f"[{show(low)}, {show(high)}]" + (PAST_BOUND if past else "")

    def reference(self, x: float) -> str:
        # Paper values come as fractions (Table 8: 0.61382) or in percent (Table 6: 80.73).
        return f"{x * 100:.2f}" if self.is_fraction and abs(x) <= 1.0 else f"{x:.4g}"

    def reference_delta(self, x: float) -> str:
        return f"{x * 100:+.2f}{self.unit}" if self.is_fraction and abs(x) <= 1.0 else f"{x:+.4g}"


def holm_cell(group: pd.Series) -> str:
    """The one adjusted p of a group's comparison with the baseline, or what stands in for it."""
    if group["holm"] == "primary" or group["holm"] == "not in the Holm family":
        return "primary" if group["holm"] == "primary" else DASH
    return fmt_p(group["p_holm"]) + (" (TOST)" if group["holm"] == "secondary equivalence" else "")


def _markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(md_escape(c) for c in cells) + " |"


def group_table(analysis: Analysis) -> str:
    units = Units(analysis.is_fraction)
    lines = [_markdown_row(TABLE_COLUMNS), "|" + "---|" * len(TABLE_COLUMNS)]
    for label, g in analysis.groups.iterrows():
        compared = not math.isnan(g["delta"])
        ref = g["reference"]
        lines.append(_markdown_row([
            label + (" (baseline)" if g["is_baseline"] else ""),
            f"{g['n']}" if g["n"] == g["n_total"] else f"{g['n']} of {g['n_total']}",
            units.value(g["mean"]), units.value(g["std"]), units.interval(g["ci_low"], g["ci_high"]),
            units.delta(g["delta"]), units.interval(g["delta_ci_low"], g["delta_ci_high"], signed=True),
            fmt_p(g["p_t"]) + ("" if not compared or g["paired"] else " †"), fmt_p(g["p_signflip"]),
            holm_cell(g) if compared else DASH,
            f"{units.reference(float(ref['value']))} ({ref.get('source') or 'paper'}"
            f"{', ' + ref['metric'] if ref.get('metric') else ''})" if ref else DASH,
        ]))
    return "\n".join(lines)


def report_rows(analysis: Analysis) -> List[Dict[str, Any]]:
    """report.csv: one row a group, then one a declared contrast; raw values (fractions, not percent)."""
    rows = []
    for label, g in analysis.groups.iterrows():
        ref = g["reference"] or {}
        rows.append({"group": label, **{k: g[k] for k in analysis.by}, "baseline": g["is_baseline"], "n": g["n"],
                     "n_total": g["n_total"], **{k: g[k] for k in ("mean", "std", "ci_low", "ci_high", "delta",
                                                                   "delta_ci_low", "delta_ci_high", "n_pairs", "paired",
                                                                   "p_t", "p_signflip", "p_holm", "holm")},
                     "paper": ref.get("value"), "paper_metric": ref.get("metric"), "paper_source": ref.get("source"),
                     "seeds": g["seeds"]})
    for r in ([analysis.primary] if analysis.primary else []) + analysis.secondary:
        rows.append({"group": f"{r.spec.role}: {r.spec.label}", "contrast_kind": r.kind, "role": r.spec.role, "n": r.n,
                     "delta": r.estimate, "delta_ci_low": r.ci_low, "delta_ci_high": r.ci_high, "ci_method": r.ci_label,
                     "p": r.p, "p_t": r.p_t, "p_signflip": r.p_perm, "p_holm": r.p_holm, "margin": r.spec.margin,
                     "power": r.power, "verdict": r.verdict})
    return rows


def runs_rows(analysis: Analysis) -> tuple[List[Dict[str, Any]], List[str]]:
    """runs.csv (run, grouping and swept keys, seed, status, metric values, reason): enough to
    regenerate the report without the run folders; a runs.csv input keeps every column it had."""
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

