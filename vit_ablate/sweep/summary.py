"""The text a sweep prints when it ends: one row per run, the counts and the wall time."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from vit_ablate import rundir

STATUSES = rundir.SWEEP_STATUSES


@dataclass
class SweepSummary:
    """What ``run_sweep`` returns: ``text`` is printed by the CLI, which exits 0 when ``ok``.

    ``ok`` is false when a run failed or the sweep was interrupted (``exit_code`` is then 1 or 130);
    runs left pending by ``--count`` or a ``run_cap`` do not make a sweep fail.
    """

    text: str
    ok: bool
    exit_code: int
    sweep_dir: Optional[Path]
    counts: Dict[str, int] = field(default_factory=dict)
    manifest: Dict[str, Any] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.text


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def count_statuses(runs: Sequence[Mapping[str, Any]]) -> Dict[str, int]:
    counts = {status: 0 for status in STATUSES}
    for run in runs:
        status = str(run.get("status", rundir.PENDING))
        counts[status] = counts.get(status, 0) + 1
    return counts


def summarize(
    manifest: Mapping[str, Any],
    sweep_dir: Optional[Path],
    wall_time_s: float,
    interrupted: bool = False,
    notes: Sequence[str] = (),
    metric: str = "val/acc1",
    error: Optional[str] = None,
) -> SweepSummary:
    runs: List[Mapping[str, Any]] = list(manifest.get("runs") or [])
    params: List[str] = []
    for run in runs:
        for key in run.get("params") or {}:
            if key not in params:
                params.append(key)
    header = ["name", *params, "status", metric, "wall"]
    rows = []
    for run in runs:
        metrics = run.get("metrics") or {}
        value = metrics.get(metric)
        rows.append(
            [
                str(run.get("name")),
                *(_value((run.get("params") or {}).get(p, "")) for p in params),
                str(run.get("status")),
                f"{value:.4f}" if isinstance(value, (int, float)) else "-",
                format_seconds(run.get("wall_time_s")),
            ]
        )
    counts = count_statuses(runs)
    method = (manifest.get("config") or {}).get("method", "?")
    where = f" — {sweep_dir / 'sweep.json'}" if sweep_dir is not None else ""
    lines = [f"sweep {manifest.get('sweep')} ({method}, {len(runs)} runs){where}", ""]
    lines += _table(header, rows) if rows else ["(no runs)"]
    lines.append("")
    lines.append(
        f"{len(runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in STATUSES if counts.get(s) or s in (rundir.COMPLETED, rundir.FAILED))
    )
    total = manifest.get("wall_time_s")
    lines.append(
        f"wall time {format_seconds(wall_time_s)} this invocation"
        + (f", {format_seconds(total)} over all invocations" if total is not None else "")
    )
    for note in notes:
        lines.append(f"note: {note}")
    failed = counts.get(rundir.FAILED, 0)
    if error:
        lines.append(f"error: {error}")
    if interrupted:
        lines.append("interrupted: rerun the same command to resume (finished runs are kept)")
        exit_code = 130
    elif failed or error:
        if failed:
            lines.append(f"{failed} run(s) failed: see their train.log; rerunning the same command retries them")
        exit_code = 1
    else:
        exit_code = 0
    return SweepSummary(
        text="\n".join(lines),
        ok=exit_code == 0,
        exit_code=exit_code,
        sweep_dir=sweep_dir,
        counts=counts,
        manifest=dict(manifest),
        notes=list(notes),
    )
