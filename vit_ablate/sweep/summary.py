"""A sweep directory read back, and the text a sweep prints when it ends.

``sweep.json`` lists the proposals; what became of each one lives in its run directory only: its
status in ``result.json`` (written by training, or by the runner when the process ended without one
or was stopped by hyperband) and its attempts in ``train.log``, each framed by a line before its
output (``==== sweep <sweep> <run> attempt N at <time> (pid P on <host>): <argv>``, written by the
child itself before it executes the command) and one after it (``... ended: exit code C after S s``).
``read_sweep`` joins the proposals with both.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

from vit_ablate import rundir
from vit_ablate.io import finite_or_none

MANIFEST = rundir.SWEEP_MANIFEST
STATUSES = rundir.SWEEP_STATUSES
_STARTED = re.compile(r"attempt \d+ at (\S+?)(?: \(pid (\d+)(?: on ([^)\s]+))?\))?: ")
_ENDED = re.compile(r"ended: exit code (-?\d+|None) after ([\d.]+)s$")


def now(timespec: str = "seconds") -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec=timespec)


# ------------------------------------------------------------------------------- attempts in train.log
def attempt_header(sweep: str, run: str, number: int, pid: int, argv: Sequence[str]) -> str:
    return (f"==== sweep {sweep} {run} attempt {number} at {now('milliseconds')} (pid {pid} on {socket.gethostname()}): "
            f"{' '.join(argv)}\n")


def attempt_footer(sweep: str, run: str, exit_code: Optional[int], seconds: float) -> str:
    return f"==== sweep {sweep} {run} ended: exit code {exit_code} after {seconds:.1f}s\n"


@dataclass
class Attempt:
    offset: int  # where its output starts in train.log
    started_at: Optional[float] = None  # seconds since the epoch
    pid: Optional[int] = None
    host: Optional[str] = None
    ended: bool = False  # false while it runs, and when the engine died during it
    exit_code: Optional[int] = None
    seconds: float = 0.0


def _timestamp(text: str) -> Optional[float]:
    try:
        return _dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def read_attempts(log: Path, sweep: str, run: str) -> List[Attempt]:
    """The attempts framed in a run's train.log (only the lines that start a frame are decoded)."""
    prefix = f"==== sweep {sweep} {run} ".encode()
    attempts: List[Attempt] = []
    offset = 0
    try:
        with open(log, "rb") as handle:
            for line in handle:
                offset += len(line)
                if not line.startswith(prefix):
                    continue
                rest = line[len(prefix):].decode(errors="replace").strip()
                started, ended = _STARTED.match(rest), _ENDED.match(rest)
                if rest.startswith("attempt "):
                    attempts.append(Attempt(offset, _timestamp(started[1]) if started else None,
                                            int(started[2]) if started and started[2] else None,
                                            started[3] if started else None))
                elif ended and attempts:
                    attempts[-1].ended, attempts[-1].seconds = True, float(ended[2])
                    attempts[-1].exit_code = None if ended[1] == "None" else int(ended[1])
    except OSError:
        pass
    return attempts


def log_tail(log: Path, offset: int = 0, lines: int = 30, chars: int = 4000) -> str:
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-chars:]


# ------------------------------------------------------------------------------------------ read back
def result_metrics(result: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """The numbers of result.json's ``final`` and ``test``, and ``best/<metric>``; NaN as None."""
    metrics: Dict[str, Any] = {}
    for section in ("final", "test"):
        metrics.update({k: v for k, v in (result.get(section) or {}).items() if isinstance(v, (int, float))})
    if isinstance(result.get("best"), Mapping):
        metrics["best/" + metric] = result["best"].get(metric)
    return finite_or_none(metrics)


def describe_run(sweep_dir: Path, sweep: str, entry: Mapping[str, Any], metric: str) -> Dict[str, Any]:
    """One proposal with what its run directory says became of it (see ``read_sweep``)."""
    paths = rundir.RunDir(Path(sweep_dir) / entry["dir"])
    attempts = read_attempts(paths.log, sweep, entry["name"])
    result = rundir.read_result(paths.path) or {}
    if attempts and not attempts[-1].ended and not _written_since(paths.result, attempts[-1].started_at):
        result = {}  # an earlier attempt's, and the last one has not ended
    if result.get("status"):
        status = str(result["status"])
    elif attempts and not attempts[-1].ended and _gone(attempts[-1]):
        # no footer and no result: the engine died (else it would have written both), and so did the run
        status = rundir.INTERRUPTED
        result = {"error": f"its process (pid {attempts[-1].pid}) and the sweep engine ended without recording an "
                           "outcome; rerunning the sweep resumes it"}
    elif paths.path.is_dir():
        status = rundir.RUNNING  # started, and nothing says it ended (a W&B agent's run may run elsewhere)
    else:
        status = rundir.PENDING
    run = {**entry, "status": status, "error": result.get("error"), "metrics": result_metrics(result, metric),
           "attempts": len(attempts), "exit_code": attempts[-1].exit_code if attempts else None,
           "wall_time_s": round(sum(a.seconds for a in attempts), 1) if attempts else result.get("wall_time_s")}
    if attempts and status not in rundir.FINAL_STATUSES:
        run["log_tail"] = log_tail(paths.log, attempts[-1].offset)
    if status == rundir.RUNNING:
        run["pid"] = attempts[-1].pid if attempts else None
    return run


def _gone(attempt: Attempt) -> bool:
    """Whether the attempt's process is known to have ended: it ran on this host and its pid is free.
    (A pid taken again by another process reads as alive: the run then still shows as running.)"""
    if attempt.pid is None or attempt.host != socket.gethostname():
        return False
    try:
        os.kill(attempt.pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def _written_since(path: Path, started_at: Optional[float]) -> bool:
    try:
        return started_at is None or path.stat().st_mtime >= started_at
    except OSError:
        return False


def read_sweep(sweep_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """Every proposal of ``<sweep_dir>/sweep.json`` (name, dir, params, ...) with ``status`` (its
    result.json's; ``running`` while an attempt has not ended, ``pending`` before the first),
    ``error``, ``metrics``, ``attempts``, ``exit_code`` (of the last attempt), ``wall_time_s`` (of all
    attempts), ``log_tail`` (the last attempt's output, unless the run finished) and ``pid``
    (while it runs)."""
    sweep_dir = Path(sweep_dir)
    manifest = json.loads((sweep_dir / MANIFEST).read_text())
    metric = ((manifest.get("config") or {}).get("metric") or {}).get("name", "val/acc1")
    return [describe_run(sweep_dir, str(manifest.get("sweep")), entry, metric) for entry in manifest.get("runs") or []]


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
