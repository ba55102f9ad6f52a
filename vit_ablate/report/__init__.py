"""``vit-ablate report``: tables, verdicts and figures from run folders, a sweep, a runs.csv, or a W&B sweep.

    run_report(["results/x/runs.csv", "sweeps/x.yaml"], out="results/x")   # regenerate without run folders

Every check on the input runs before the first file is written; a failed one raises ValueError (exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import pandas as pd

from vit_ablate.io import atomic_write_text
from vit_ablate.report.analysis import Analysis, analyse, default_by, differing_keys
from vit_ablate.report.plots import plot_all
from vit_ablate.report.runs import RUNS_TABLE, collect_runs
from vit_ablate.report.tables import contrast_sentence, render_markdown, report_rows, runs_rows, secondary_lines, write_csv

__all__ = ["Report", "run_report", "collect_runs"]


@dataclass
class Report:
    markdown: str  # report.md's text (with --split: every part's, one after the other)
    rows: List[Dict[str, Any]]  # report.csv's rows (raw values: fractions, not percent)
    verdicts: List[str]  # the secondary comparisons' sentences
    written: List[Path]  # every file written, report.md first
    out: Path
    analysis: Analysis = field(repr=False)
    primary: str = ""  # the primary contrast's sentence, ending in its verdict
    parts: List["Report"] = field(default_factory=list)  # with --split: one report per setting of the other keys

    @property
    def excluded(self) -> pd.DataFrame:
        """The runs not counted, with why (``why``)."""
        return self.analysis.runs[self.analysis.runs["value"].isna()]


def _default_out(inputs: Sequence[str], wandb_path: Optional[str]) -> Path:
    """``<sweep or run folder>/report``, a runs.csv's folder, ``runs/wandb-<id>/report``; several inputs need --out."""
    if len(inputs) + bool(wandb_path) > 1:
        raise ValueError(f"{len(inputs) + bool(wandb_path)} inputs given ({', '.join([*inputs, *[wandb_path] * bool(wandb_path)])}): "
                         "name the output folder with --out")
    first = Path(inputs[0]) if inputs else Path("runs") / f"wandb-{wandb_path.rstrip('/').rsplit('/', 1)[-1]}"
    if first.is_file() and first.suffix == ".csv":
        return first.parent  # regenerating a committed report in place
    return (first.parent if first.is_file() else first) / "report"


def _write(analysis: Analysis, out: Path, name: str, sources_from_table: bool) -> Report:
    """Figures, report.md, report.csv and runs.csv of one analysis into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    figures, captions, notes = plot_all(analysis, out, keep_stale=sources_from_table)
    primary = contrast_sentence(analysis.primary, analysis) if analysis.primary else ""
    rows, (runs, columns) = report_rows(analysis), runs_rows(analysis)
    files = ["report.md", "report.csv", RUNS_TABLE, *sorted(p.name for p in figures)]
    markdown = render_markdown(analysis, f"vit-ablate report: {name} — {analysis.metric}", captions, notes,
                               f"{out}/: " + ", ".join(files), primary)
    written = [atomic_write_text(out / "report.md", markdown), atomic_write_text(out / "report.csv", write_csv(rows)),
               atomic_write_text(out / RUNS_TABLE, write_csv(runs, columns)), *figures]
    return Report(markdown, rows, secondary_lines(analysis), written, out, analysis, primary)


def run_report(paths: Sequence[str], by: Optional[List[str]] = None, metric: str = "val/acc1",
               baseline: Optional[str] = None, out: Optional[str] = None, wandb_path: Optional[str] = None,
               seed: int = 0, split: bool = False) -> Report:
    """Report on ``paths`` (sweep or run folders, a runs.csv, a sweep file) grouped by ``by`` into ``out``; with ``split``, one
    report per setting of the config keys the runs differ in outside ``by``, which are otherwise an error."""
    paths = [str(p) for p in paths or []]
    inputs = list(dict.fromkeys(p for p in paths if not p.endswith((".yaml", ".yml"))))
    if not inputs and not wandb_path:
        raise ValueError("no runs to report on: give a sweep directory, run directories, a runs.csv, or --wandb")
    runs, design = collect_runs(paths, wandb_path)
    out_dir = Path(out) if out else _default_out(inputs, wandb_path)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")
    by = list(default_by(runs, design) if by is None else by)
    keys = list(differing_keys(runs, design, by)) if split and set(by) <= set(design.params) else []
    parts = [(out_dir, runs)] if not keys else [
        (out_dir / re.sub(r"[^\w.=,+-]", "_", ",".join(f"{k}={v}" for k, v in zip(keys, values))), part)
        for values, part in runs.groupby(keys, sort=True)]
    analyses = [(where, analyse(part, design, by, metric, baseline, seed)) for where, part in parts]
    # Input checks are done: from here on files are written.
    name, from_table = design.name or Path(paths[0] if paths else "runs").resolve().name, runs["source"].str.startswith("table").any()
    reports = [_write(analysis, where, name if not keys else f"{name} ({where.name})", from_table) for where, analysis in analyses]
    if not keys:
        return reports[0]
    index = "\n".join([f"# vit-ablate report: {name}, split by {', '.join(keys)}", ""]
                      + [f"- [{r.out.name}]({r.out.name}/report.md): " + (r.primary.rsplit("→ ", 1)[-1] or "no primary")
                         for r in reports])
    written = [atomic_write_text(out_dir / "report.md", index + "\n")] + [p for r in reports for p in r.written]
    return Report(index + "\n\n" + "\n".join(r.markdown for r in reports), [row for r in reports for row in r.rows],
                  [v for r in reports for v in r.verdicts], written, out_dir, reports[0].analysis, parts=reports)
