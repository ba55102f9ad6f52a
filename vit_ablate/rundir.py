"""The run directory's one owner: its file names, the status values, the environment variable that
names it, and reading/writing ``result.json`` and ``metrics.csv`` (layout: docs/CONTRACTS.md).

Training writes a run directory; sweep, report and analyze read it. They all spell the contract
through this module, so a renamed file or a new status is one edit here. It imports only the standard
library and ``vit_ablate.io``, so it sits below every layer that uses it (and a report runs without
torch).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from vit_ablate.io import FolderLock, atomic_write_json

__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "RESULT_FILE",
    "CHECKPOINT_DIR",
    "LAST_CHECKPOINT",
    "BEST_CHECKPOINT",
    "INIT_SUMMARY_FILE",
    "LOCK_FILE",
    "LOG_FILE",
    "RUN_DIR_ENV",
    "COMPLETED",
    "DIVERGED",
    "FAILED",
    "INTERRUPTED",
    "PENDING",
    "RUNNING",
    "STOPPED",
    "RESULT_STATUSES",
    "FINAL_STATUSES",
    "RETRIED_STATUSES",
    "SWEEP_STATUSES",
    "SWEEP_ONLY_STATUSES",
    "RunDir",
    "read_result",
    "write_result",
    "read_metrics",
]

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
# Beside the run directories of a local sweep: its proposals and invocations (vit_ablate/sweep/summary.py)
SWEEP_MANIFEST = "sweep.json"

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
# run without a result.json of its own; STOPPED the runner writes into result.json (a sweep.json written
# before the statuses moved out of it has its STOPPED runs' result.json rewritten so on the next invocation).
PENDING = "pending"
RUNNING = "running"
STOPPED = "stopped"  # stopped early by the sweep (hyperband)
SWEEP_ONLY_STATUSES = (PENDING, RUNNING, STOPPED)  # what a sweep says of a run, never training itself
# Every status a sweep's run can have, in the order a summary counts them.
SWEEP_STATUSES = RESULT_STATUSES + (STOPPED, RUNNING, PENDING)


class RunDir:
    """The paths of one run directory (nothing is created or read)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def result(self) -> Path:
        return self.path / RESULT_FILE

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / LAST_CHECKPOINT

    @property
    def best_checkpoint(self) -> Path:
        return self.checkpoints / BEST_CHECKPOINT

    @property
    def init_summary(self) -> Path:
        return self.path / INIT_SUMMARY_FILE

    @property
    def lock(self) -> Path:
        return self.path / LOCK_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE


def read_result(run_dir: str | os.PathLike) -> Optional[Dict[str, Any]]:
    """The run's ``result.json`` as a dict; None when it is absent, unreadable or not a JSON object."""
    try:
        data = json.loads(RunDir(run_dir).result.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_result(run_dir: str | os.PathLike, data: Dict[str, Any]) -> Path:
    """Write ``result.json`` atomically as strict JSON (a non-finite number becomes ``null``)."""
    return atomic_write_json(RunDir(run_dir).result, data)


def read_metrics(run_dir: str | os.PathLike) -> List[Dict[str, Any]]:
    """``metrics.csv`` as one dict per validation epoch, numbers as floats, empty or missing cells
    left out (a line with more cells than columns is skipped); [] when the file is absent."""
    rows: List[Dict[str, Any]] = []
    try:
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
