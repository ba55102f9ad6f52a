"""A sweep directory read back, and the text a sweep prints when it ends.

``sweep.json`` lists the proposals; what became of each one lives in its run directory only: its
status in ``result.json`` (written by training, or by the runner when the process ended without one
or was stopped by hyperband) and its attempts in ``train.log``, each framed by a line before its
output (``==== sweep <sweep> <run> attempt N at <time> (pid P on <host>): <argv>``, written by the
child itself before it executes the command) and one after it (``... ended: exit code C after S s``).
``vit_ablate.rundir`` reads both; ``read_sweep`` adds each run's metrics.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from vit_ablate import rundir
from vit_ablate.io import finite_or_none
from vit_ablate.rundir import log_tail, read_attempts  # noqa: F401  (the runner reads its attempts through here)

MANIFEST = rundir.SWEEP_MANIFEST
STATUSES = rundir.SWEEP_STATUSES


def now(timespec: str = "seconds") -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


# ------------------------------------------------------------------------------- attempts in train.log
def attempt_header(sweep: str, run: str, number: int, pid: int, argv: Sequence[str]) -> str:
    return (f"==== sweep {sweep} {run} attempt {number} at {now('milliseconds')} (pid {pid} on {socket.gethostname()}): "
            f"{' '.join(argv)}\n")


def attempt_footer(sweep: str, run: str, exit_code: Optional[int], seconds: float) -> str:
    return f"==== sweep {sweep} {run} ended: exit code {exit_code} after {seconds:.1f}s\n"


# ------------------------------------------------------------------------------------------ read back
def result_metrics(result: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """The numbers of result.json's ``final`` and ``test``, and ``best/<metric>``; NaN as None."""
    metrics: Dict[str, Any] = {}
    for section in ("final", "test"):
        metrics.update({k: v for k, v in (result.get(section) or {}).items() if isinstance(v, (int, float))})
    if isinstance(result.get("best"), Mapping):
        metrics["best/" + metric] = result["best"].get(metric)
    return finite_or_none(metrics)


def _described(run: Dict[str, Any], metric: str) -> Dict[str, Any]:
    for key in ("path", "config", "history", "reason"):
        run.pop(key, None)
    return {**run, "metrics": result_metrics(run.pop("result"), metric)}


def describe_run(sweep_dir: Path, sweep: str, entry: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """One proposal with what its run directory says became of it (``rundir.read_run``) and its metrics."""
    return _described(rundir.read_run(Path(sweep_dir) / entry["dir"], sweep, entry), metric)


def read_sweep(sweep_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """Every proposal of ``<sweep_dir>/sweep.json`` (name, dir, params, ...) with ``status``, ``error``,
    ``metrics``, ``attempts``, ``exit_code``, ``wall_time_s``, ``log_tail`` and ``pid`` (``rundir.read_sweep``)."""
    manifest, runs = rundir.read_sweep(sweep_dir)
    metric = ((manifest.get("config") or {}).get("metric") or {}).get("name", "val/acc1")
    return [_described(run, metric) for run in runs]


# -------------------------------------------------------------------------------------------- summary
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
    runs: List[Dict[str, Any]] = field(default_factory=list)  # read_sweep's
    notes: List[str] = field(default_factory=list)


def format_seconds(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if float(seconds) < 60:
        return f"{float(seconds):.1f}s"
    minutes, sec = divmod(int(round(float(seconds))), 60)
    if minutes < 60:
        return f"{minutes}m{sec:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]


def summarize(manifest: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], sweep_dir: Optional[Path],
              wall_time_s: float, interrupted: bool = False, notes: Sequence[str] = (), metric: str = "val/acc1",
              error: Optional[str] = None) -> SweepSummary:
    """The table (one row per run: its parameters, status, metric and wall time), the counts, the
    wall time, the notes, and the exit code."""
    params = list(dict.fromkeys(key for run in runs for key in run.get("params") or {}))
    rows = []
    for run in runs:
        values = [(run.get("params") or {}).get(p, "") for p in params]
        value = (run.get("metrics") or {}).get(metric)
        rows.append([str(run.get("name")), *(f"{v:g}" if isinstance(v, float) else str(v) for v in values),
                     str(run.get("status")), f"{value:.4f}" if isinstance(value, (int, float)) else "-",
                     format_seconds(run.get("wall_time_s"))])
    counts = {status: 0 for status in STATUSES}
    for run in runs:
        counts[str(run.get("status"))] = counts.get(str(run.get("status")), 0) + 1
    method = (manifest.get("config") or {}).get("method", "?")
    where = f" — {sweep_dir / MANIFEST}" if sweep_dir is not None else ""
    lines = [f"sweep {manifest.get('sweep')} ({method}, {len(runs)} runs){where}", ""]
    lines += _table(["name", *params, "status", metric, "wall"], rows) if rows else ["(no runs)"]
    shown = [s for s in STATUSES if counts.get(s) or s in (rundir.COMPLETED, rundir.FAILED)]
    lines += ["", f"{len(runs)} runs: " + ", ".join(f"{counts[s]} {s}" for s in shown)]
    invocations = manifest.get("invocations") or []
    total = sum(float(i.get("wall_time_s") or 0.0) for i in invocations) if invocations else None
    lines.append(f"wall time {format_seconds(wall_time_s)} this invocation"
                 + (f", {format_seconds(total)} over all invocations" if total is not None else ""))
    lines += [f"note: {note}" for note in notes]
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
    return SweepSummary(text="\n".join(lines), ok=exit_code == 0, exit_code=exit_code, sweep_dir=sweep_dir,
                        counts=counts, manifest=dict(manifest), runs=[dict(r) for r in runs], notes=list(notes))
