"""``vit-ablate report``: tables, verdicts and figures from run directories, a sweep, or a W&B sweep.

    report = run_report(["runs/pos-embed"])          # a sweep directory (with sweep.json)
    print(report.markdown)                            # report.md, report.csv, *.png are in report.out

The layer reads run directories only (docs/CONTRACTS.md) and never imports training code. It prints
nothing; the CLI prints ``report.markdown``. A path with no runs raises ValueError (CLI exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from vit_ablate.io import atomic_write_text as write_text_atomic
from vit_ablate.report.groups import Analysis, analyse
from vit_ablate.report.plots import plot_all
from vit_ablate.report.references import parse_reference_comments
from vit_ablate.report.runs import RunCollection, RunRecord, collect_runs, merge_collections, runs_from_wandb
from vit_ablate.report.tables import render_csv, render_markdown, table_rows
from vit_ablate.report.verdict import verdict_lines

__all__ = [
    "Report",
    "run_report",
    "collect_runs",
    "runs_from_wandb",
    "parse_reference_comments",
    "RunRecord",
    "RunCollection",
]


@dataclass
class Report:
    markdown: str  # report.md's text
    rows: List[Dict[str, Any]]  # report.csv's rows (raw values: fractions, not percent)
    verdicts: List[str]
    written: List[Path]  # every file written, report.md first
    out: Path
    analysis: Analysis = field(repr=False)

    @property
    def excluded(self) -> List[RunRecord]:
        return [run for run, _, _ in self.analysis.excluded]


def _default_out(paths: Sequence[str], collection: RunCollection, wandb_path: Optional[str]) -> Path:
    if paths:
        first = Path(paths[0])
        if first.is_file():  # sweep.json given directly
            first = first.parent
        return first / "report"
    sweep_id = (wandb_path or "sweep").rstrip("/").rsplit("/", 1)[-1]
    return Path("runs") / f"wandb-{sweep_id}" / "report"


def run_report(
    paths: Sequence[str],
    by: Optional[List[str]] = None,
    metric: str = "val/acc1",
    baseline: Optional[str] = None,
    out: Optional[str] = None,
    wandb_path: Optional[str] = None,
    seed: int = 0,
) -> Report:
    """Collect runs, group by ``by`` (default: the swept parameters minus seed), compare every group with
    ``baseline`` (``KEY=VALUE``; default: the sweep's declared baseline, else the first group), and write
    report.md, report.csv and the figures to ``out`` (default ``<first path>/report``).

    Deterministic for a given ``seed`` (bootstrap and Monte Carlo draws). Raises ValueError when there
    are no runs, a grouping key exists in no run, or the baseline matches no group.
    """
    paths = [str(p) for p in (paths or [])]
    if not paths and not wandb_path:
        raise ValueError("no runs to report on: give a sweep directory, run directories, or --wandb")
    collections = []
    if paths:
        collections.append(collect_runs(paths))
    if wandb_path:
        collections.append(runs_from_wandb(wandb_path))
    collection = collections[0] if len(collections) == 1 else merge_collections(collections)

    analysis = analyse(collection, by=by, metric=metric, baseline=baseline, seed=seed)
    verdicts = verdict_lines(analysis)
    rows = table_rows(analysis)

    out_dir = Path(out) if out else _default_out(paths, collection, wandb_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, figure_notes = plot_all(analysis, out_dir)

    name = collection.name or (Path(paths[0]).resolve().name if paths else "runs")
    title = f"vit-ablate report: {name} — {metric}"
    markdown = render_markdown(
        analysis,
        verdicts,
        collection.sources,
        title,
        figures=[p.name for p in figures],
        extra_notes=figure_notes,
    )
    written = [
        write_text_atomic(out_dir / "report.md", markdown),
        write_text_atomic(out_dir / "report.csv", render_csv(rows)),
        *figures,
    ]
    return Report(markdown=markdown, rows=rows, verdicts=verdicts, written=written, out=out_dir, analysis=analysis)
