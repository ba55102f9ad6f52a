"""The run directory's one owner: its file names, the status values, the environment variable that
names it, writing ``result.json``, and the one reader of a run folder and of a sweep folder (layout:
docs/CONTRACTS.md).

Training writes a run directory; sweep, report, analyze and export read it through this module, so a
renamed file or a new status is one edit here. A folder is data from anywhere: the reader never raises
for a damaged or hostile one (the damage becomes status ``unreadable`` and its reason), reads no file
over :data:`MAX_TEXT_BYTES`, no YAML alias and nothing outside a sweep folder. It imports only the
standard library, PyYAML and ``vit_ablate.io``, so it sits below every layer that uses it.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from vit_ablate.io import FolderLock, atomic_write_json

# ------------------------------------------------------------------------------------ file names
CONFIG_FILE = "config.yaml"  # the resolved config (OmegaConf YAML)
METRICS_FILE = "metrics.csv"  # one row per validation epoch
RESULT_FILE = "result.json"  # written atomically when the run ends
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"  # after every epoch: what a rerun resumes from
BEST_CHECKPOINT = "best.ckpt"  # best val/acc1
INIT_SUMMARY_FILE = "init_summary.json"  # with init.path: what was loaded, resampled, re-initialised
LOCK_FILE = FolderLock.NAME  # the training process's pid while it runs
LOG_FILE = "train.log"  # a sweep run's output, each attempt framed by the sweep runner's lines
ARGS_FILE = "args.json"  # a sweep run's parameters, for a command that asks for ${args_json_file}
SWEEP_MANIFEST = "sweep.json"  # beside the run directories of a sweep: its proposals and invocations

# Set by the local sweep engine so that the sweep file's `command` stays the one W&B's agent runs.
RUN_DIR_ENV = "VIT_ABLATE_RUN_DIR"

# ------------------------------------------------------------------------------------ statuses
# What training writes into a run's result.json (the sweep runner writes FAILED for a process that
# ended without one, INTERRUPTED for one it stopped that wrote none, and STOPPED for a run that
# hyperband stopped; it never overwrites COMPLETED or DIVERGED).
COMPLETED = "completed"
DIVERGED = "diverged"
FAILED = "failed"
INTERRUPTED = "interrupted"
RESULT_STATUSES = (COMPLETED, DIVERGED, FAILED, INTERRUPTED)
# Outcomes that a rerun keeps; failed and interrupted runs are resumed or retried.
FINAL_STATUSES = (COMPLETED, DIVERGED)
RETRIED_STATUSES = (FAILED, INTERRUPTED)

# The sweep's own statuses: PENDING (never started) and RUNNING (an attempt that has not ended) for a
# run without a result.json of its own; STOPPED the runner writes into result.json.
PENDING = "pending"
RUNNING = "running"
STOPPED = "stopped"  # stopped early by the sweep (hyperband)
SWEEP_ONLY_STATUSES = (PENDING, RUNNING, STOPPED)  # what a sweep says of a run, never training itself
# Every status a sweep's run can have, in the order a summary counts them.
SWEEP_STATUSES = RESULT_STATUSES + (STOPPED, RUNNING, PENDING)
UNREADABLE = "unreadable"  # the reader's word for a damaged folder; never written

MAX_TEXT_BYTES = 4 * 1024 * 1024  # config.yaml, result.json, sweep.json, a sweep file
MAX_CSV_BYTES = 256 * 1024 * 1024  # metrics.csv, a runs.csv
_STARTED = re.compile(r"attempt \d+ at (\S+?)(?: \(pid (\d+)(?: on ([^)\s]+))?\))?: ")
_ENDED = re.compile(r"ended: exit code (-?\d+|None) after ([\d.]+)s$")


class RunDir:
    """The paths of one run directory (nothing is created or read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config, self.metrics, self.result = (self.path / f for f in (CONFIG_FILE, METRICS_FILE, RESULT_FILE))
        self.checkpoints = self.path / CHECKPOINT_DIR
        self.last_checkpoint, self.best_checkpoint = self.checkpoints / LAST_CHECKPOINT, self.checkpoints / BEST_CHECKPOINT
        self.init_summary, self.lock, self.log = (self.path / f for f in (INIT_SUMMARY_FILE, LOCK_FILE, LOG_FILE))

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"


def checkpoint_file(source: str | os.PathLike) -> Path:
    """A checkpoint file as is; a run directory → its ``checkpoints/last.ckpt`` (the final weights)."""
    path = Path(source)
    if path.is_dir():
        if not RunDir(path).last_checkpoint.is_file():
            raise FileNotFoundError(f"run directory {str(path)!r} has no {CHECKPOINT_DIR}/{LAST_CHECKPOINT}")
        return RunDir(path).last_checkpoint
    if not path.is_file():
        raise FileNotFoundError(f"{str(path)!r} is neither a run directory nor a checkpoint file")
    return path


def run_dir_of(checkpoint: str | os.PathLike) -> Path:
    """The run directory a checkpoint belongs to (``<run>/checkpoints/x.ckpt``), else the file's folder."""
    parent = Path(checkpoint).parent
    return parent.parent if parent.name == CHECKPOINT_DIR else parent


# ------------------------------------------------------------------------------------ safe reading
class Unreadable(ValueError):
    """A file of a run or sweep folder that cannot be read safely; the message says why."""


def read_text(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    size = path.stat().st_size
    if size > limit:
        raise Unreadable(f"{path.name} is {size:,} bytes (over the {limit:,}-byte limit)")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise Unreadable(f"{path.name} is not UTF-8 text") from None


def load_yaml(text: str) -> Any:
    """YAML without aliases: a resolved config has none, and aliases of aliases (a billion laughs) or a
    self-referencing anchor would cost unbounded time in whoever walks the result."""
    if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
        raise Unreadable("uses YAML aliases (a config written by vit-ablate has none)")
    return yaml.safe_load(text)


def why(exc: BaseException) -> str:
    """An exception of a read as a short reason."""
    if isinstance(exc, Unreadable):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON (line {exc.lineno})"
    return f"{exc.__class__.__name__}: {str(exc)[:120]}"


READ_ERRORS = (OSError, ValueError, RecursionError, MemoryError, yaml.YAMLError, csv.Error)


def _read_object(path: Path, parse) -> Dict[str, Any]:
    loaded = parse(read_text(path))
    if not isinstance(loaded, dict):
        raise Unreadable(f"{path.name} holds a {type(loaded).__name__}, not a mapping")
    return loaded


def flatten(tree: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"model": {"pool": "gap"}}`` → ``{"model.pool": "gap"}``; lists stay values."""
    out: Dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def read_result(run_dir: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The run's ``result.json`` as a dict; None when it is absent, unreadable or not a JSON object."""
    try:
        return _read_object(RunDir(run_dir).result, json.loads)
    except READ_ERRORS:
        return None


def write_result(run_dir: str | os.PathLike, data: Dict[str, Any]) -> Path:
    """Write ``result.json`` atomically as strict JSON (a non-finite number becomes ``null``)."""
    return atomic_write_json(RunDir(run_dir).result, data)


def read_metrics(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """``metrics.csv`` as one dict per validation epoch, numbers as floats, empty or missing cells
    left out (a line with more cells than columns is skipped); [] when the file is absent."""
    rows: List[Dict[str, Any]] = []
    try:
        if RunDir(run_dir).metrics.stat().st_size > MAX_CSV_BYTES:
            return []
        with open(RunDir(run_dir).metrics, newline="") as handle:
            for row in csv.DictReader(handle):
                parsed: Dict[str, Any] = {}
                for key, value in row.items():
                    if key is None or value in (None, ""):
                        continue
                    try:
                        parsed[key] = float(value)
                    except ValueError:
                        parsed[key] = value
                if "epoch" in parsed and None not in row:
                    rows.append(parsed)
    except (OSError, csv.Error):
        return []
    return rows


# ------------------------------------------------------------------------------------ a sweep run's attempts
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


# ------------------------------------------------------------------------------------ the reader
def read_run(path: str | os.PathLike, sweep: str = "", entry: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """One run folder, in whatever state: ``name``, ``path``, ``status``, ``reason`` (why it cannot be
    counted; "" when completed), ``error``, ``config`` (flattened config.yaml), ``result``,
    ``history`` (metrics.csv rows), ``attempts``, ``exit_code`` and ``wall_time_s`` (of all attempts),
    ``log_tail`` (the last attempt's output, unless the run finished) and ``pid`` (while it runs).

    ``entry`` is the run's proposal in its sweep's ``sweep.json`` (its keys are kept). Without
    result.json a run is ``interrupted`` when its last attempt has no closing line and its process is
    gone, the status an older sweep.json recorded for it, ``running`` when its folder exists, else
    ``pending``. Never raises: a damaged file makes the run ``unreadable``, with the reason."""
    paths = RunDir(path)
    entry = dict(entry or {})
    name = str(entry.get("name") or paths.path.name)[:200]
    run: Dict[str, Any] = {**entry, "name": name, "path": str(paths.path), "config": {}, "result": {},
                           "history": read_metrics(paths.path), "error": None}
    reasons: List[str] = []
    for file, parse, key in ((paths.config, load_yaml, "config"), (paths.result, json.loads, "result")):
        if file.is_file():
            try:
                run[key] = _read_object(file, parse)
            except READ_ERRORS as exc:
                reasons.append(f"{file.name} unreadable: {why(exc)}")
    attempts = read_attempts(paths.log, sweep, name) if sweep else []
    last = attempts[-1] if attempts else None
    if last and not last.ended and not _written_since(paths.result, last.started_at):
        run["result"] = {}  # an earlier attempt's, and the last one has not ended
    run["config"] = flatten(run["config"])
    result, epochs = run["result"], sum("val/acc1" in row for row in run["history"])
    if reasons:
        status, run["result"] = UNREADABLE, {}
    elif result.get("status"):
        status, run["error"] = str(result["status"]).lower()[:40], result.get("error")
        if status != COMPLETED:
            reasons.append(f"{RESULT_FILE}: {status}" + (f" ({str(run['error'])[:300]})" if run["error"] else ""))
    elif last and not last.ended and _gone(last):
        # no footer and no result: the engine died (else it would have written both), and so did the run
        status, run["error"] = INTERRUPTED, (f"its process (pid {last.pid}) and the sweep engine ended without "
                                             "recording an outcome; rerunning the sweep resumes it")
        reasons.append(run["error"])
    elif entry.get("status") in SWEEP_ONLY_STATUSES:  # an older sweep.json kept a status per run
        status = entry["status"]
        reasons.append({PENDING: "not started", RUNNING: "still running", STOPPED: "stopped early by the sweep"}[status]
                       + f" ({SWEEP_MANIFEST}: {status})")
    elif paths.path.is_dir():
        status = RUNNING
        reasons.append(f"no {RESULT_FILE} (still running, or killed before writing it)"
                       + (f"; {METRICS_FILE} has {epochs} validation epochs" if epochs else ""))
    else:
        status = PENDING
        reasons.append("not started")
    run.update(status=status, reason="; ".join(reasons), attempts=len(attempts),
               exit_code=last.exit_code if last else None,
               wall_time_s=round(sum(a.seconds for a in attempts), 1) if attempts else result.get("wall_time_s"))
    if last and status not in FINAL_STATUSES:
        run["log_tail"] = log_tail(paths.log, last.offset)
    if status == RUNNING and last:
        run["pid"] = last.pid
    return run


def read_sweep(sweep_dir: str | os.PathLike) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """``sweep.json`` and every run it proposes (:func:`read_run`, in its order). Every folder read is
    inside the sweep folder: an entry whose ``dir`` leads out of it is ``unreadable``, not followed.
    Raises :class:`Unreadable` (a ValueError) when the manifest itself cannot be read."""
    sweep_dir = Path(sweep_dir)
    try:
        manifest = _read_object(sweep_dir / SWEEP_MANIFEST, json.loads)
    except READ_ERRORS as exc:
        raise Unreadable(f"{sweep_dir / SWEEP_MANIFEST}: cannot read the sweep manifest ({why(exc)})") from None
    sweep, root = str(manifest.get("sweep") or sweep_dir.name)[:200], sweep_dir.resolve()
    runs = []
    entries = manifest.get("runs") if isinstance(manifest.get("runs"), list) else []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict):
            entry = {"name": f"entry {index}", "problem": f"{SWEEP_MANIFEST} run entry {index} is not an object"}
        relative = str(entry.get("dir") or entry.get("name") or "")
        resolved = (sweep_dir / relative).resolve()
        if not relative or resolved == root or root not in resolved.parents:
            entry = {**entry, "problem": entry.get("problem") or f"{SWEEP_MANIFEST} gives dir {relative[:100]!r}, "
                     "which is not a folder inside the sweep folder: not read"}
        if entry.get("problem"):
            runs.append({**entry, "name": str(entry.get("name"))[:200], "status": UNREADABLE, "reason": entry["problem"],
                         "config": {}, "result": {}, "history": [], "params": {}})
        else:
            runs.append(read_run(sweep_dir / relative, sweep, entry))
    return manifest, runs


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() or (path / RESULT_FILE).is_file()


def read_folder(path: str | os.PathLike) -> List[Tuple[Optional[Dict[str, Any]], List[Dict[str, Any]], str]]:
    """Every run under ``path``, as ``(manifest or None, runs, note)`` per sweep or run folder found: a
    sweep folder (its proposals, then any run folder in it that sweep.json does not list), a run folder,
    or a folder holding either (one level down)."""
    path = Path(path)
    if (path / SWEEP_MANIFEST).is_file():
        manifest, runs = read_sweep(path)
        listed = {Path(r["path"]).resolve() for r in runs if "path" in r}
        extra = [c for c in sorted(path.iterdir()) if c.is_dir() and is_run_dir(c) and c.resolve() not in listed
                 and not c.is_symlink()]
        note = (f"{len(extra)} run folder(s) in {path} not listed in {SWEEP_MANIFEST} were read as well: "
                + ", ".join(c.name for c in extra)) if extra else ""
        return [(manifest, runs + [read_run(c) for c in extra], note)]
    if is_run_dir(path):
        return [(None, [read_run(path)], "")]
    found = []
    for child in sorted(path.iterdir()):
        if child.is_dir() and ((child / SWEEP_MANIFEST).is_file() or is_run_dir(child)):
            found += read_folder(child)
    return found
