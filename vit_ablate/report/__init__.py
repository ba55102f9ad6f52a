"""``vit-ablate report``: tables, verdicts and figures from run directories, a sweep, a runs.csv, or a
W&B sweep.

    report = run_report(["runs/pos-embed"])          # a sweep directory (with sweep.json)
    print(report.markdown)                            # report.md, report.csv, runs.csv, *.png in report.out
    run_report(["results/x/runs.csv", "sweeps/x.yaml"], out="results/x")   # regenerate without run dirs

The layer reads run directories only (docs/CONTRACTS.md) and never imports training code. It prints
nothing; the CLI prints ``report.markdown``, whose header says where the files went. Every check on the
input (paths, metric, grouping keys, baseline, declared contrasts, output folder) runs before the first
file is written; a failed one raises ValueError (CLI exit 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from vit_ablate.io import atomic_write_text as write_text_atomic
from vit_ablate.report.groups import Analysis, analyse
from vit_ablate.report.plots import figure_caption, plot_all
from vit_ablate.report.references import parse_reference_comments
from vit_ablate.report.runs import (
    RUNS_TABLE,
    RunCollection,
    RunRecord,
    collect_runs,
    lookup_metric,
    merge_collections,
    runs_from_wandb,
)
from vit_ablate.report.tables import contrast_rows, render_csv, render_markdown, render_runs_csv, table_rows
from vit_ablate.report.verdict import primary_verdict, verdict_lines

__all__ = [
    "Report",
    "run_report",
    "collect_runs",
    "runs_from_wandb",
    "parse_reference_comments",
    "RunRecord",
    "RunCollection",
]

# Figures an earlier report over run directories may have left in the output folder.
KNOWN_FIGURES = ("curves.png", "final.png", "lr_curves.png")


@dataclass
class Report:
    markdown: str  # report.md's text
    rows: List[Dict[str, Any]]  # report.csv's rows (raw values: fractions, not percent)
    verdicts: List[str]  # the secondary verdicts
    written: List[Path]  # every file written, report.md first
    out: Path
    analysis: Analysis = field(repr=False)
    primary: str = ""  # the primary contrast's sentence, ending in its verdict

    @property
    def excluded(self) -> List[RunRecord]:
        return [run for run, _, _ in self.analysis.excluded]


def _default_out(paths: Sequence[str], collection: RunCollection, wandb_path: Optional[str]) -> Path:
    """``<sweep or run folder>/report``; a runs.csv's own folder; ``runs/wandb-<id>/report``. Several
    folders have no natural home, so they need --out: a report never writes into one of its runs."""
    inputs = [p for p in paths if not str(p).endswith((".yaml", ".yml"))]
    if len(inputs) > 1 or (inputs and wandb_path) or not collection.single_folder:
        raise ValueError(
            f"{len(inputs) + bool(wandb_path)} inputs given ({', '.join(map(str, inputs))}"
            + (f", W&B {wandb_path}" if wandb_path else "")
            + "): name the output folder with --out (with several inputs the report does not pick one "
            "run's folder to write into)"
        )
    if inputs:
        first = Path(inputs[0])
        if first.is_file() and first.suffix == ".csv":
            return first.parent  # regenerating a committed report in place
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
    """Collect runs, group by ``by`` (default: the swept parameters minus seed), test the sweep file's
    primary contrast, compare every group with ``baseline`` (``KEY=VALUE``; default: the sweep's declared
    baseline, else the primary contrast's reference side, else the first group), and write report.md,
    report.csv, runs.csv and the figures to ``out`` (default: see :func:`_default_out`).

    ``paths`` may hold sweep directories, run directories, a runs.csv written by an earlier report, and
    a sweep file (``*.yaml``) whose header comments (references, baseline, contrasts) apply.
    Deterministic for a given ``seed``. Raises ValueError, before writing anything, when there are no
    runs, no run recorded ``metric``, a grouping key exists in no run, the baseline matches no group, a
    declared contrast names a group the runs do not have, or several inputs come without ``out``.
    """
    paths = [str(p) for p in (paths or [])]
    if not [p for p in paths if not p.endswith((".yaml", ".yml"))] and not wandb_path:
        raise ValueError(
            "no runs to report on: give a sweep directory, run directories, a runs.csv, or --wandb"
        )
    collections = []
    if paths:
        collections.append(collect_runs(paths))
    if wandb_path:
        collections.append(runs_from_wandb(wandb_path))
    collection = collections[0] if len(collections) == 1 else merge_collections(collections)

    out_dir = Path(out) if out else _default_out(paths, collection, wandb_path)
    analysis = analyse(collection, by=by, metric=metric, baseline=baseline, seed=seed)
    verdicts = verdict_lines(analysis)
    primary = primary_verdict(analysis)
    rows = table_rows(analysis) + contrast_rows(analysis)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir}: exists and is not a folder")

    def metric_value(run: RunRecord) -> Optional[float]:
        return lookup_metric(run.result, metric)[0]

    swept = [k for k in collection.swept if k in {key for run in collection.runs for key in run.params}]
    runs_csv = render_runs_csv(analysis, collection.runs, metric_value, keys=swept)
    # Input checks are done: from here on files are written.
    out_dir.mkdir(parents=True, exist_ok=True)
    figures, figure_notes = plot_all(analysis, out_dir)
    drawn = {p.name for p in figures}
    captions: List[Tuple[str, str]] = [(p.name, figure_caption(p.name, analysis)) for p in figures]
    from_table = any(run.source.startswith("table") for run in collection.runs)
    for name in KNOWN_FIGURES:
        if name not in drawn and (out_dir / name).is_file():
            captions.append((name, figure_caption(name, analysis, stale=True, from_table=from_table)))
            # The caption says why it was not redrawn; a "not drawn" note beside it would read as missing.
            figure_notes = [n for n in figure_notes if not n.startswith(f"{name} not drawn")]

    name = collection.name or (Path(paths[0]).resolve().name if paths else "runs")
    title = f"vit-ablate report: {name} — {metric}"
    files = ["report.md", "report.csv", RUNS_TABLE, *sorted(drawn)]
    markdown = render_markdown(
        analysis,
        verdicts,
        collection.sources,
        title,
        figures=captions,
        extra_notes=figure_notes,
        written_to=f"{out_dir}/: " + ", ".join(files),
        primary_line=primary,
    )
    written = [
        write_text_atomic(out_dir / "report.md", markdown),
        write_text_atomic(out_dir / "report.csv", render_csv(rows)),
        write_text_atomic(out_dir / RUNS_TABLE, runs_csv),
        *figures,
    ]
    return Report(markdown=markdown, rows=rows, verdicts=verdicts, written=written, out=out_dir,
                  analysis=analysis, primary=primary)
