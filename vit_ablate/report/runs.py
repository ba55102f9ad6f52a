"""Collect the runs a report is about: a sweep directory, run directories, or a W&B sweep.

Reads only what docs/CONTRACTS.md promises (``sweep.json``, ``config.yaml``, ``result.json``,
``metrics.csv``); never imports training code, so a report works on a machine without torch and on
directories written by older versions.

Every run found becomes a :class:`RunRecord`, whether or not it finished: a run that diverged, failed,
was interrupted or never started is kept with its status, so that the report can list it under
"Not included" instead of silently averaging over the survivors.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import yaml

from vit_ablate.report.references import parse_baseline_comment, parse_assignments, parse_reference_comments
from vit_ablate.report.values import canon, flatten

__all__ = [
    "RunRecord",
    "RunCollection",
    "collect_runs",
    "read_run_dir",
    "read_metrics_csv",
    "lookup_metric",
    "swept_parameters",
    "runs_from_wandb",
    "COMPLETED",
]

COMPLETED = "completed"
# Statuses a run writes into its own result.json (CONTRACTS.md).
RESULT_STATUSES = ("completed", "diverged", "failed", "interrupted")

# W&B run.state → this project's status. A W&B run that "finished" may still have diverged: the
# training layer decides that, so a "status" key in the run's summary wins when it holds one.
_WANDB_STATES = {
    "finished": "completed",
    "crashed": "failed",
    "failed": "failed",
    "killed": "interrupted",
    "preempted": "interrupted",
    "preempting": "interrupted",
    "running": "running",
    "pending": "pending",
}


@dataclass
class RunRecord:
    """One run, from whatever source, in the one form the report uses."""

    name: str
    params: Dict[str, Any]  # flattened dotted config; the manifest's params override it
    status: str  # completed | diverged | failed | interrupted | missing | pending | running | stopped | …
    result: Dict[str, Any] = field(default_factory=dict)  # result.json ({} when absent)
    curves: Dict[str, np.ndarray] = field(default_factory=dict)  # metrics.csv columns (NaN = empty cell)
    path: Optional[str] = None  # the run directory, or the W&B run path
    reason: str = ""  # why it cannot be included, whatever the metric ("" when completed)
    source: str = ""  # "sweep <name>", "directory" or "wandb <path>"

    @property
    def seed(self) -> Optional[str]:
        """The replicate index (canonical string), from the config, else from result.json."""
        for value in (self.params.get("seed"), self.result.get("seed")):
            if value is not None:
                return canon(value)
        return None


@dataclass
class RunCollection:
    """The runs plus what the sweep manifests say about them."""

    runs: List[RunRecord]
    swept: Dict[str, Optional[list]] = field(default_factory=dict)  # key → values (None: a distribution)
    has_manifest: bool = False
    baseline: Optional[Dict[str, str]] = None  # the sweep's declared baseline, if any
    references: List[Dict[str, Any]] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)  # one line per path read, for the report header
    notes: List[str] = field(default_factory=list)
    name: Optional[str] = None  # the (first) sweep's name

    def __iter__(self) -> Iterator[RunRecord]:
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)


# ---------------------------------------------------------------------------------------------
# Reading one run directory
# ---------------------------------------------------------------------------------------------
def read_metrics_csv(path: str | Path) -> Dict[str, np.ndarray]:
    """metrics.csv → ``{column: float array}``, one entry per row, NaN for an empty or non-numeric cell.

    Rows are kept in file order; the contract promises one row per validation epoch, but a logger that
    also writes training-only rows leaves NaN in the validation columns, which the plots skip.
    """
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns: Dict[str, List[float]] = {name: [] for name in (reader.fieldnames or [])}
        for row in reader:
            for name in columns:
                cell = row.get(name)
                try:
                    columns[name].append(float(cell) if cell not in (None, "") else math.nan)
                except ValueError:
                    columns[name].append(math.nan)
    return {name: np.asarray(values, dtype=float) for name, values in columns.items()}


def read_run_dir(path: str | Path, source: str = "directory") -> RunRecord:
    """A run directory → RunRecord. Never raises for a damaged run: the damage becomes its status."""
    path = Path(path)
    params: Dict[str, Any] = {}
    reasons: List[str] = []
    config_file = path / "config.yaml"
    if config_file.is_file():
        try:
            loaded = yaml.safe_load(config_file.read_text())
            params = flatten(loaded) if isinstance(loaded, Mapping) else {}
        except yaml.YAMLError as exc:
            reasons.append(f"config.yaml unreadable ({exc.__class__.__name__})")

    curves: Dict[str, np.ndarray] = {}
    metrics_file = path / "metrics.csv"
    if metrics_file.is_file():
        try:
            curves = read_metrics_csv(metrics_file)
        except (OSError, csv.Error) as exc:
            reasons.append(f"metrics.csv unreadable ({exc})")

    result: Dict[str, Any] = {}
    result_file = path / "result.json"
    if result_file.is_file():
        try:
            result = json.loads(result_file.read_text())
            status = str(result.get("status", "unknown")).lower()
            if status != COMPLETED:
                error = result.get("error")
                reasons.append(f"result.json: {status}" + (f" ({error})" if error else ""))
        except (json.JSONDecodeError, OSError) as exc:
            status = "unreadable"
            reasons.append(f"result.json unreadable ({exc.__class__.__name__})")
    else:
        status = "missing"
        epochs = _logged_epochs(curves)
        reasons.append(
            "no result.json (still running, or killed before writing it)"
            + (f"; metrics.csv has {epochs} validation epochs" if epochs else "")
        )
    return RunRecord(
        name=path.name,
        params=params,
        status=status,
        result=result,
        curves=curves,
        path=str(path),
        reason="; ".join(reasons),
        source=source,
    )


def _logged_epochs(curves: Mapping[str, np.ndarray]) -> int:
    column = curves.get("val/acc1")
    return int(np.isfinite(column).sum()) if column is not None else 0


# ---------------------------------------------------------------------------------------------
# Metrics in result.json
# ---------------------------------------------------------------------------------------------
def lookup_metric(result: Mapping[str, Any], metric: str) -> Tuple[Optional[float], Optional[str]]:
    """Find ``metric`` in a result.json: ``(value, section)`` or ``(None, None)``.

    Order: the ``final`` section (``val/acc1``), then ``test`` (``test/acc1``), ``best``, ``fewshot``
    (``fewshot/5`` → ``fewshot["5"]``); a section-qualified name (``best/val/acc1``) picks the section;
    last, a top-level number (``wall_time_s``, ``throughput_img_s``).
    """

    def number(value: Any) -> Optional[float]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return float(value)

    head, _, rest = metric.partition("/")
    if head == "fewshot" and rest:
        shots = result.get("fewshot") or {}
        for key, value in shots.items():
            if canon(key) == canon(rest):  # "5" also matches a key written as 5 or "5.0"
                return number(value), "fewshot"
        return None, None
    for section in ("final", "test", "best"):
        values = result.get(section) or {}
        if isinstance(values, Mapping) and metric in values:
            return number(values[metric]), section
    if head in ("final", "test", "best") and rest:
        values = result.get(head) or {}
        if isinstance(values, Mapping) and rest in values:
            return number(values[rest]), head
    if metric in result:
        return number(result[metric]), "result"
    return None, None


# ---------------------------------------------------------------------------------------------
# Sweeps
# ---------------------------------------------------------------------------------------------
def swept_parameters(sweep_config: Mapping[str, Any]) -> Dict[str, Optional[list]]:
    """The parameters a W&B-style sweep file varies: ``values`` with more than one entry, or a
    distribution (``min``/``max``/``distribution``, value list ``None``). Nested ``parameters`` blocks
    become dotted keys. Fixed ``value`` entries are not swept."""
    swept: Dict[str, Optional[list]] = {}

    def walk(spec: Mapping[str, Any], prefix: str) -> None:
        for key, value in spec.items():
            dotted = f"{prefix}{key}"
            if not isinstance(value, Mapping):
                continue
            if isinstance(value.get("parameters"), Mapping):
                walk(value["parameters"], dotted + ".")
            elif isinstance(value.get("values"), list):
                if len(value["values"]) > 1:
                    swept[dotted] = list(value["values"])
            elif any(k in value for k in ("distribution", "min", "max")):
                swept[dotted] = None

    parameters = (sweep_config or {}).get("parameters") or {}
    if isinstance(parameters, Mapping):
        walk(parameters, "")
    return swept


def _normalise_baseline(value: Any) -> Optional[Dict[str, str]]:
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {str(k): canon(v) for k, v in value.items()}
    return {k: canon(v) for k, v in parse_assignments(str(value), "baseline: ").items()}


def _sweep_file_text(sweep_dir: Path, file: Optional[str]) -> Optional[str]:
    """The sweep file the manifest names, tried as written, then relative to the sweep directory."""
    if not file:
        return None
    for candidate in (Path(file), sweep_dir / file, sweep_dir / Path(file).name):
        if candidate.is_file():
            try:
                return candidate.read_text()
            except OSError:
                return None
    return None


def _manifest_status_record(entry: Mapping[str, Any], run_dir: Path, sweep: str) -> RunRecord:
    """A manifest entry whose directory holds no result.json (or does not exist)."""
    manifest_status = str(entry.get("status", "pending")).lower()
    exists = run_dir.is_dir()
    record = read_run_dir(run_dir, source=f"sweep {sweep}") if exists else None
    if manifest_status in ("pending", "running", "stopped"):
        status = manifest_status
        reason = {
            "pending": "not started (manifest: pending)",
            "running": "still running (manifest: running)",
            "stopped": "stopped early by the sweep (manifest: stopped)",
        }[manifest_status]
    else:
        status = "missing"
        where = "run directory is absent" if not exists else "result.json is absent"
        reason = f"manifest says {manifest_status} but {where}"
    if record is not None:
        epochs = _logged_epochs(record.curves)
        if epochs:
            reason += f"; metrics.csv has {epochs} validation epochs"
        record.status, record.reason = status, reason
        return record
    return RunRecord(name=str(entry.get("name", run_dir.name)), params={}, status=status,
                     path=str(run_dir), reason=reason, source=f"sweep {sweep}")


def _collect_sweep(sweep_dir: Path, into: RunCollection) -> None:
    manifest_file = sweep_dir / "sweep.json"
    try:
        manifest = json.loads(manifest_file.read_text())
    except (json.JSONDecodeError, OSError) as exc:
        raise ValueError(f"{manifest_file}: cannot read the sweep manifest ({exc})") from None
    name = str(manifest.get("sweep") or sweep_dir.name)
    into.has_manifest = True
    into.name = into.name or name
    sweep_config = manifest.get("config") or {}
    for key, values in swept_parameters(sweep_config).items():
        into.swept.setdefault(key, values)

    file_text = _sweep_file_text(sweep_dir, manifest.get("file"))
    references = manifest.get("reference")
    if references is None and file_text is not None:
        # Older manifests (or a sweep engine that did not fill it): read the header comments ourselves.
        references = parse_reference_comments(file_text)
    into.references.extend(references or [])
    baseline = manifest.get("baseline")
    if baseline is None and file_text is not None:
        baseline = parse_baseline_comment(file_text)
    if into.baseline is None:
        into.baseline = _normalise_baseline(baseline)

    listed = set()
    count = 0
    for entry in manifest.get("runs") or []:
        run_dir = sweep_dir / str(entry.get("dir") or entry.get("name"))
        listed.add(run_dir.resolve())
        if (run_dir / "result.json").is_file():
            record = read_run_dir(run_dir, source=f"sweep {name}")
        else:
            record = _manifest_status_record(entry, run_dir, name)
        # The manifest's params are what the sweep set; they win over the config's spelling.
        record.params.update(entry.get("params") or {})
        record.name = str(entry.get("name") or record.name)
        into.runs.append(record)
        count += 1

    # Run directories the manifest does not list (copied in by hand, or a manifest written before a
    # crash): reported too, and said so, rather than dropped.
    extra = [
        child
        for child in sorted(sweep_dir.iterdir())
        if child.is_dir() and (child / "config.yaml").is_file() and child.resolve() not in listed
    ]
    for child in extra:
        into.runs.append(read_run_dir(child, source=f"sweep {name}"))
    if extra:
        into.notes.append(
            f"{len(extra)} run director{'y' if len(extra) == 1 else 'ies'} in {sweep_dir} not listed in "
            f"sweep.json were read as well: {', '.join(c.name for c in extra)}"
        )
    into.sources.append(f"{sweep_dir} (sweep {name!r}, {count} runs in sweep.json)")


def _is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / "result.json").is_file()


def collect_runs(paths: Sequence[str | Path]) -> RunCollection:
    """Every run under ``paths``: sweep directories, run directories, or directories holding either.

    Raises ValueError when a path does not exist or when no run is found at all.
    """
    collection = RunCollection(runs=[])
    seen: set = set()

    def add_run(run_dir: Path) -> None:
        collection.runs.append(read_run_dir(run_dir))

    for raw in paths:
        path = Path(raw)
        if path.is_file() and path.name == "sweep.json":
            path = path.parent
        if not path.exists():
            raise ValueError(f"{raw}: no such file or directory")
        if not path.is_dir():
            raise ValueError(f"{raw}: not a directory (expected a sweep directory or run directories)")
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        if (path / "sweep.json").is_file():
            _collect_sweep(path, collection)
        elif _is_run_dir(path):
            add_run(path)
            collection.sources.append(f"{path} (run directory)")
        else:
            found = 0
            for child in sorted(path.iterdir()):
                if not child.is_dir() or child.resolve() in seen:
                    continue
                if (child / "sweep.json").is_file():
                    seen.add(child.resolve())
                    before = len(collection.runs)
                    _collect_sweep(child, collection)
                    found += len(collection.runs) - before
                elif _is_run_dir(child):
                    add_run(child)
                    found += 1
            if found:
                collection.sources.append(f"{path} ({found} runs in its subdirectories)")

    if not collection.runs:
        raise ValueError(
            f"no runs found in {', '.join(str(p) for p in paths) or '(no paths given)'}: expected a sweep "
            "directory (with sweep.json), run directories (with config.yaml / result.json), or a "
            "directory holding them"
        )
    # The same run reached twice (a sweep directory and one of its runs given explicitly).
    unique: Dict[str, RunRecord] = {}
    for record in collection.runs:
        key = str(Path(record.path).resolve()) if record.path else f"{record.source}:{record.name}"
        unique.setdefault(key, record)
    collection.runs = list(unique.values())
    return collection


# ---------------------------------------------------------------------------------------------
# Weights & Biases
# ---------------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    """W&B config values sometimes arrive wrapped as ``{"value": v, "desc": …}``."""
    if isinstance(value, Mapping):
        if "value" in value and set(value) <= {"value", "desc"}:
            return _plain(value["value"])
        return {k: _plain(v) for k, v in value.items()}
    return value


def _as_dict(obj: Any) -> Dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    json_dict = getattr(obj, "_json_dict", None)  # wandb's HTTPSummary keeps its data here
    if isinstance(json_dict, Mapping):
        return dict(json_dict)
    return dict(obj.items())


def _result_from_summary(summary: Mapping[str, Any], status: str) -> Dict[str, Any]:
    """A W&B run summary → the result.json layout, so lookup_metric works on both."""
    result: Dict[str, Any] = {"status": status, "final": {}, "test": {}, "best": {}, "fewshot": {}}
    for key, value in summary.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key.startswith("val/"):
            result["final"][key] = value
        elif key.startswith("test/"):
            result["test"][key] = value
        elif key.startswith("best/"):
            result["best"][key[len("best/"):]] = value
        elif key.startswith("fewshot/"):
            result["fewshot"][key[len("fewshot/"):]] = value
        elif not key.startswith("_"):
            result[key] = value
    return result


def runs_from_wandb(path: str, api: Any = None, history: bool = True) -> RunCollection:
    """The runs of W&B sweep ``ENTITY/PROJECT/SWEEP_ID`` as RunRecords.

    ``api`` defaults to ``wandb.Api()``; tests pass a stand-in with the same attributes
    (``api.sweep(path)`` → object with ``.config``, ``.runs``; each run with ``.name``, ``.id``,
    ``.state``, ``.config``, ``.summary`` and optionally ``.scan_history(keys=…)``).
    """
    if api is None:
        import wandb  # imported here: only this path needs the client (and its login)

        api = wandb.Api()
    sweep = api.sweep(path)
    sweep_config = _as_dict(getattr(sweep, "config", None))
    collection = RunCollection(runs=[], has_manifest=True)
    collection.name = str(getattr(sweep, "name", None) or path.rsplit("/", 1)[-1])
    collection.swept = swept_parameters(sweep_config)

    # W&B keeps the sweep file's text; its "# reference:" comments survive there, not in .config.
    raw = (getattr(sweep, "_attrs", None) or {}).get("config")
    if isinstance(raw, str):
        collection.references = parse_reference_comments(raw)
        collection.baseline = _normalise_baseline(parse_baseline_comment(raw))

    source = f"wandb {path}"
    for run in getattr(sweep, "runs", []) or []:
        config = {k: v for k, v in _plain(_as_dict(run.config)).items() if not str(k).startswith("_")}
        summary = _as_dict(run.summary)
        state = str(getattr(run, "state", "unknown")).lower()
        status = _WANDB_STATES.get(state, state)
        reported = str(summary.get("status", "")).lower()
        if reported in RESULT_STATUSES:
            status = reported
        curves: Dict[str, np.ndarray] = {}
        if history and hasattr(run, "scan_history"):
            rows = list(run.scan_history(keys=["epoch", "val/acc1"]))
            if rows:
                curves = {
                    key: np.asarray([float(r.get(key, math.nan)) for r in rows], dtype=float)
                    for key in ("epoch", "val/acc1")
                }
        run_id = getattr(run, "id", None) or run.name
        collection.runs.append(
            RunRecord(
                name=str(run.name or run_id),
                params=flatten(config),
                status=status,
                result=_result_from_summary(summary, status),
                curves=curves,
                path=f"{path.rsplit('/', 1)[0]}/{run_id}",
                reason="" if status == COMPLETED else f"W&B state {state}",
                source=source,
            )
        )
    collection.sources.append(f"W&B sweep {path} ({len(collection.runs)} runs)")
    if not collection.runs:
        raise ValueError(f"W&B sweep {path} has no runs")
    return collection


def merge_collections(collections: Iterable[RunCollection]) -> RunCollection:
    """Several collections (directories and a W&B sweep) as one."""
    merged = RunCollection(runs=[])
    for c in collections:
        merged.runs.extend(c.runs)
        for key, values in c.swept.items():
            merged.swept.setdefault(key, values)
        merged.has_manifest = merged.has_manifest or c.has_manifest
        merged.baseline = merged.baseline or c.baseline
        merged.references.extend(c.references)
        merged.sources.extend(c.sources)
        merged.notes.extend(c.notes)
        merged.name = merged.name or c.name
    return merged
