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

from vit_ablate import rundir
from vit_ablate.report.contrasts import ContrastSpec, parse_contrast_comments
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
    "read_runs_table",
    "safe_yaml_load",
    "metric_names",
    "COMPLETED",
    "RUNS_TABLE",
]

COMPLETED = rundir.COMPLETED
RUNS_TABLE = "runs.csv"  # the per-run table a report writes beside report.md, and can be regenerated from
# Reading limits: a run directory is data from anywhere, so no file may cost unbounded memory or time.
MAX_TEXT_BYTES = 4 * 1024 * 1024  # config.yaml, result.json, sweep.json, a sweep file
MAX_CSV_BYTES = 256 * 1024 * 1024  # metrics.csv
MAX_YAML_NODES = 100_000  # nodes after expanding aliases: a resolved config has a few hundred
MAX_YAML_DEPTH = 64
# Columns of runs.csv that are not run parameters; a column with "/" (val/acc1) or one of
# TABLE_METRICS is a metric.
TABLE_FIXED = ("run", "seed", "status", "reason")
TABLE_METRICS = ("wall_time_s", "throughput_img_s", "epochs", "global_step")
# Statuses a run writes into its own result.json (CONTRACTS.md).
RESULT_STATUSES = rundir.RESULT_STATUSES

# W&B run.state → this project's status. A W&B run that "finished" may still have diverged: the
# training layer decides that, so a "status" key in the run's summary wins when it holds one.
_WANDB_STATES = {
    "finished": rundir.COMPLETED,
    "crashed": rundir.FAILED,
    "failed": rundir.FAILED,
    "killed": rundir.INTERRUPTED,
    "preempted": rundir.INTERRUPTED,
    "preempting": rundir.INTERRUPTED,
    "running": rundir.RUNNING,
    "pending": rundir.PENDING,
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
    contrasts: List[ContrastSpec] = field(default_factory=list)  # "# primary:" / "# secondary:" lines
    single_folder: bool = True  # every run came from one path (the default output goes beside it)

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


class UnreadableFile(ValueError):
    """A file of a run directory that cannot be read safely; the message says why."""


def _read_text(path: Path, limit: int = MAX_TEXT_BYTES) -> str:
    size = path.stat().st_size
    if size > limit:
        raise UnreadableFile(f"{path.name} is {size:,} bytes (over the {limit:,}-byte limit)")
    try:
        return path.read_text()
    except UnicodeDecodeError:
        raise UnreadableFile(f"{path.name} is not UTF-8 text") from None


def _check_yaml_tree(node: Any) -> None:
    """Walk a composed YAML node graph as the loader would expand it: a billion-laughs document (aliases
    of aliases) exceeds the node budget, a self-referencing anchor the depth limit."""
    visited = 0
    stack = [(node, 0)]
    while stack:
        current, depth = stack.pop()
        visited += 1
        if visited > MAX_YAML_NODES:
            raise UnreadableFile(f"YAML expands to over {MAX_YAML_NODES:,} nodes (aliases of aliases)")
        if depth > MAX_YAML_DEPTH:
            raise UnreadableFile(f"YAML nests deeper than {MAX_YAML_DEPTH} levels (a self-referencing anchor?)")
        if isinstance(current, yaml.SequenceNode):
            stack.extend((child, depth + 1) for child in current.value)
        elif isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                stack.append((key, depth + 1))
                stack.append((value, depth + 1))


def safe_yaml_load(text: str) -> Any:
    """``yaml.safe_load`` with limits: size, expanded node count and depth are checked on the composed
    node graph first (composing keeps aliases shared, so it costs the text's size, not the expansion)."""
    if len(text) > MAX_TEXT_BYTES:
        raise UnreadableFile(f"YAML text of {len(text):,} characters (over {MAX_TEXT_BYTES:,})")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return None
        _check_yaml_tree(node)
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UnreadableFile(f"not valid YAML ({exc.__class__.__name__})") from None
    except (RecursionError, OverflowError, ValueError) as exc:
        if isinstance(exc, UnreadableFile):
            raise
        raise UnreadableFile(f"YAML cannot be loaded ({exc.__class__.__name__}: {str(exc)[:80]})") from None


def _checked_params(loaded: Any) -> Dict[str, Any]:
    if not isinstance(loaded, Mapping):
        raise UnreadableFile(f"holds a {type(loaded).__name__}, not a mapping of config keys")
    params = flatten(loaded)
    for key, value in params.items():
        canon(value)  # every value must have a canonical form (raises for what cannot be grouped)
    return params


_READ_ERRORS = (UnreadableFile, OSError, RecursionError, OverflowError, MemoryError, ValueError, csv.Error)


def read_run_dir(path: str | Path, source: str = "directory") -> RunRecord:
    """A run directory → RunRecord. Never raises for a damaged or hostile run: the damage becomes its
    status ("unreadable") and its reason, and the report lists it under Not included."""
    path = Path(path)
    params: Dict[str, Any] = {}
    reasons: List[str] = []
    unreadable = False
    config_file = path / rundir.CONFIG_FILE
    if config_file.is_file():
        try:
            params = _checked_params(safe_yaml_load(_read_text(config_file)))
        except _READ_ERRORS as exc:
            params, unreadable = {}, True
            reasons.append(f"{rundir.CONFIG_FILE} unreadable: {_why(exc)}")

    curves: Dict[str, np.ndarray] = {}
    metrics_file = path / rundir.METRICS_FILE
    if metrics_file.is_file():
        try:
            if metrics_file.stat().st_size > MAX_CSV_BYTES:
                raise UnreadableFile(f"{rundir.METRICS_FILE} is over {MAX_CSV_BYTES:,} bytes")
            curves = read_metrics_csv(metrics_file)
        except _READ_ERRORS as exc:
            reasons.append(f"{rundir.METRICS_FILE} unreadable: {_why(exc)}")

    result: Dict[str, Any] = {}
    result_file = path / rundir.RESULT_FILE
    if result_file.is_file():
        try:
            loaded = json.loads(_read_text(result_file))
            if not isinstance(loaded, Mapping):
                raise UnreadableFile(f"{rundir.RESULT_FILE} holds a JSON {type(loaded).__name__}, not an object")
            result = dict(loaded)
            status = str(result.get("status", "unknown")).lower()[:40]
            if status != COMPLETED:
                error = result.get("error")
                reasons.append(f"{rundir.RESULT_FILE}: {status}" + (f" ({str(error)[:300]})" if error else ""))
        except (json.JSONDecodeError, *_READ_ERRORS) as exc:
            result, unreadable = {}, True
            reasons.append(f"{rundir.RESULT_FILE} unreadable: {_why(exc)}")
            status = "unreadable"
    else:
        status = "missing"
        epochs = _logged_epochs(curves)
        reasons.append(
            f"no {rundir.RESULT_FILE} (still running, or killed before writing it)"
            + (f"; {rundir.METRICS_FILE} has {epochs} validation epochs" if epochs else "")
        )
    if unreadable:
        status = "unreadable"
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


def _why(exc: BaseException) -> str:
    if isinstance(exc, UnreadableFile):
        return str(exc)
    if isinstance(exc, json.JSONDecodeError):
        return f"not valid JSON (line {exc.lineno})"
    return f"{exc.__class__.__name__}: {str(exc)[:120]}"


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
        try:
            return float(value)
        except OverflowError:  # a 400-digit integer is no metric value
            return math.nan

    if not isinstance(result, Mapping):
        return None, None

    head, _, rest = metric.partition("/")
    if head == "fewshot" and rest:
        shots = result.get("fewshot") or {}
        if not isinstance(shots, Mapping):
            return None, None
        for key, value in shots.items():
            if canon(key) == canon(rest):  # "5" also matches a key written as 5 or "5.0"
                return number(value), "fewshot"
        return None, None
    for section in ("table", "final", "test", "best"):
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
    """The sweep file the manifest names (its copy in the sweep directory first, then the path as
    written): only a YAML file, within the size limit, is read."""
    if not file or not isinstance(file, str) or not file.endswith((".yaml", ".yml")):
        return None
    for candidate in (sweep_dir / Path(file).name, sweep_dir / file, Path(file)):
        try:
            if candidate.is_file():
                return _read_text(candidate)
        except (OSError, UnreadableFile):
            return None
    return None


def _read_header(into: RunCollection, text: str, origin: str, baseline: Any = None,
                 references: Optional[list] = None) -> None:
    """References, baseline and declared contrasts from a sweep file's header comments."""
    if references is None:
        references = parse_reference_comments(text)
    into.references.extend(r for r in references or [] if isinstance(r, Mapping))
    if baseline is None:
        baseline = parse_baseline_comment(text)
    if into.baseline is None:
        into.baseline = _normalise_baseline(baseline)
    if not any(c.origin == origin for c in into.contrasts):
        into.contrasts.extend(parse_contrast_comments(text, origin))


def _manifest_status_record(entry: Mapping[str, Any], run_dir: Path, sweep: str) -> RunRecord:
    """A manifest entry whose directory holds no result.json (or does not exist)."""
    manifest_status = str(entry.get("status", rundir.PENDING)).lower()
    exists = run_dir.is_dir()
    record = read_run_dir(run_dir, source=f"sweep {sweep}") if exists else None
    if record is not None and record.status == "unreadable":
        return record
    if manifest_status in rundir.SWEEP_ONLY_STATUSES:
        status = manifest_status
        reason = {
            rundir.PENDING: "not started",
            rundir.RUNNING: "still running",
            rundir.STOPPED: "stopped early by the sweep",
        }[manifest_status] + f" (manifest: {manifest_status})"
    else:
        status = "missing"
        where = "run directory is absent" if not exists else f"{rundir.RESULT_FILE} is absent"
        reason = f"manifest says {manifest_status[:40]} but {where}"
    if record is not None:
        epochs = _logged_epochs(record.curves)
        if epochs:
            reason += f"; {rundir.METRICS_FILE} has {epochs} validation epochs"
        record.status, record.reason = status, reason
        return record
    return RunRecord(name=str(entry.get("name", run_dir.name)), params={}, status=status,
                     path=str(run_dir), reason=reason, source=f"sweep {sweep}")


def _unreadable(name: str, reason: str, source: str, path: Optional[str] = None) -> RunRecord:
    return RunRecord(name=name, params={}, status="unreadable", path=path, reason=reason, source=source)


def _collect_sweep(sweep_dir: Path, into: RunCollection) -> None:
    manifest_file = sweep_dir / rundir.SWEEP_MANIFEST
    try:
        manifest = json.loads(_read_text(manifest_file))
    except (json.JSONDecodeError, *_READ_ERRORS) as exc:
        raise ValueError(f"{manifest_file}: cannot read the sweep manifest ({_why(exc)})") from None
    if not isinstance(manifest, Mapping):
        raise ValueError(f"{manifest_file}: the manifest holds a JSON {type(manifest).__name__}, not an object")
    name = str(manifest.get("sweep") or sweep_dir.name)[:200]
    into.has_manifest = True
    into.name = into.name or name
    sweep_config = manifest.get("config") if isinstance(manifest.get("config"), Mapping) else {}
    for key, values in swept_parameters(sweep_config).items():
        into.swept.setdefault(key, values)

    file_text = _sweep_file_text(sweep_dir, manifest.get("file"))
    references = manifest.get("reference") if isinstance(manifest.get("reference"), list) else None
    if file_text is not None:
        _read_header(into, file_text, str(manifest.get("file")), manifest.get("baseline"), references)
    else:
        into.references.extend(r for r in references or [] if isinstance(r, Mapping))
        if into.baseline is None:
            into.baseline = _normalise_baseline(manifest.get("baseline"))

    root = sweep_dir.resolve()
    listed = set()
    count = 0
    source = f"sweep {name}"
    entries = manifest.get("runs") if isinstance(manifest.get("runs"), list) else []
    for index, entry in enumerate(entries):
        count += 1
        if not isinstance(entry, Mapping):
            into.runs.append(_unreadable(f"entry {index}", f"sweep.json run entry {index} is not an object", source))
            continue
        run_name = str(entry.get("name") or f"entry {index}")[:200]
        relative = str(entry.get("dir") or entry.get("name") or "")
        run_dir = sweep_dir / relative
        resolved = run_dir.resolve()
        if not relative or resolved == root or root not in resolved.parents:
            # Every directory read is confined to the sweep folder: "dir": "../../.." is not followed.
            into.runs.append(_unreadable(
                run_name, f"sweep.json gives dir {relative[:100]!r}, which is not a folder inside the sweep "
                "folder: not read", source))
            continue
        listed.add(resolved)
        # A run's status is its result.json's; a sweep.json written before that held one per run, which
        # still says what became of a run that left no result.json.
        if (run_dir / rundir.RESULT_FILE).is_file() or ("status" not in entry and run_dir.is_dir()):
            record = read_run_dir(run_dir, source=source)
        else:
            record = _manifest_status_record(entry, run_dir, name)
        # The manifest's params are what the sweep set; they win over the config's spelling.
        params = entry.get("params")
        if isinstance(params, Mapping) and record.status != "unreadable":
            record.params.update({str(k): v for k, v in params.items()})
        record.name = run_name
        into.runs.append(record)

    # Run directories the manifest does not list (copied in by hand, or a manifest written before a
    # crash): reported too, and said so, rather than dropped.
    extra = [
        child
        for child in sorted(sweep_dir.iterdir())
        if child.is_dir() and (child / rundir.CONFIG_FILE).is_file() and child.resolve() not in listed
        and root in child.resolve().parents
    ]
    for child in extra:
        into.runs.append(read_run_dir(child, source=source))
    if extra:
        into.notes.append(
            f"{len(extra)} run director{'y' if len(extra) == 1 else 'ies'} in {sweep_dir} not listed in "
            f"sweep.json were read as well: {', '.join(c.name for c in extra)}"
        )
    into.sources.append(f"{sweep_dir} (sweep {name!r}, {count} runs in sweep.json)")


def _is_run_dir(path: Path) -> bool:
    return (path / rundir.CONFIG_FILE).is_file() or (path / rundir.RESULT_FILE).is_file()


def _is_table_metric(column: str) -> bool:
    return "/" in column or column in TABLE_METRICS


def read_runs_table(path: str | Path, into: RunCollection) -> None:
    """A runs.csv written by the report (run, grouping keys, seed, status, metric values, reason) →
    RunRecords: a report can be regenerated without the run directories."""
    path = Path(path)
    try:
        text = _read_text(path, MAX_CSV_BYTES)
        reader = csv.DictReader(text.splitlines())
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    except (*_READ_ERRORS,) as exc:
        raise ValueError(f"{path}: cannot read the runs table ({_why(exc)})") from None
    missing = [c for c in ("run", "status") if c not in columns]
    if missing:
        raise ValueError(
            f"{path}: not a runs table: no column {', '.join(missing)} (expected run, <grouping keys>, seed, "
            "status, <metrics>, reason, as `vit-ablate report` writes it)"
        )
    param_columns = [c for c in columns if c not in TABLE_FIXED and not _is_table_metric(c)]
    metric_columns = [c for c in columns if _is_table_metric(c)]
    for i, row in enumerate(rows, start=2):
        params: Dict[str, Any] = {c: row[c] for c in param_columns if row.get(c) not in (None, "")}
        if row.get("seed") not in (None, ""):
            params["seed"] = row["seed"]
        values: Dict[str, Any] = {}
        for column in metric_columns:
            cell = row.get(column)
            if cell in (None, ""):
                continue
            try:
                values[column] = float(cell)
            except ValueError:
                values[column] = math.nan
        status = str(row.get("status") or "unknown").lower()[:40]
        into.runs.append(
            RunRecord(
                name=str(row.get("run") or f"row {i}")[:200],
                params=params,
                status=status,
                result={"status": status, "table": values},
                path=f"{path}:{i}",
                reason="" if status == COMPLETED else (row.get("reason") or status)[:300],
                source=f"table {path}",
            )
        )
    into.has_manifest = into.has_manifest or False
    into.sources.append(f"{path} ({len(rows)} runs in the table)")


def metric_names(runs: Iterable[RunRecord]) -> List[str]:
    """Every metric name some run recorded, in the spelling ``--metric`` takes."""
    names: Dict[str, None] = {}
    for run in runs:
        result = run.result if isinstance(run.result, Mapping) else {}
        for section in ("table", "final", "test"):
            values = result.get(section)
            if isinstance(values, Mapping):
                names.update((str(k), None) for k in values)
        best = result.get("best")
        if isinstance(best, Mapping):
            names.update((f"best/{k}", None) for k in best if k != "epoch")
        shots = result.get("fewshot")
        if isinstance(shots, Mapping):
            names.update((f"fewshot/{k}", None) for k in shots)
        for key, value in result.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("seed", "version"):
                names[str(key)] = None
    return list(names)


def collect_runs(paths: Sequence[str | Path]) -> RunCollection:
    """Every run under ``paths``: sweep directories, run directories, directories holding either, a
    runs.csv table, and sweep files (``*.yaml``: their header comments and swept parameters apply to
    the runs given beside them).

    Raises ValueError when a path does not exist or when no run is found at all.
    """
    collection = RunCollection(runs=[])
    seen: set = set()
    run_paths = 0

    def add_run(run_dir: Path) -> None:
        collection.runs.append(read_run_dir(run_dir))

    sweep_files = [Path(p) for p in paths if str(p).endswith((".yaml", ".yml"))]
    for raw in paths:
        path = Path(raw)
        if path in sweep_files:
            continue
        if path.is_file() and path.name == rundir.SWEEP_MANIFEST:
            path = path.parent
        if not path.exists():
            raise ValueError(f"{raw}: no such file or directory")
        resolved = path.resolve()
        if resolved in seen:
            continue
        seen.add(resolved)
        run_paths += 1
        if path.is_file() and path.suffix == ".csv":
            read_runs_table(path, collection)
            continue
        if not path.is_dir():
            raise ValueError(
                f"{raw}: not a directory (expected a sweep directory, run directories, a runs.csv or a sweep .yaml)"
            )
        if (path / rundir.SWEEP_MANIFEST).is_file():
            _collect_sweep(path, collection)
        elif _is_run_dir(path):
            add_run(path)
            collection.sources.append(f"{path} (run directory)")
        else:
            found = 0
            for child in sorted(path.iterdir()):
                if not child.is_dir() or child.resolve() in seen:
                    continue
                if (child / rundir.SWEEP_MANIFEST).is_file():
                    seen.add(child.resolve())
                    before = len(collection.runs)
                    _collect_sweep(child, collection)
                    found += len(collection.runs) - before
                elif _is_run_dir(child):
                    add_run(child)
                    found += 1
            if found:
                collection.sources.append(f"{path} ({found} runs in its subdirectories)")
    collection.single_folder = run_paths <= 1

    for sweep_file in sweep_files:
        if not sweep_file.is_file():
            raise ValueError(f"{sweep_file}: no such sweep file")
        try:
            text = _read_text(sweep_file)
            config = safe_yaml_load(text)
        except (*_READ_ERRORS,) as exc:
            raise ValueError(f"{sweep_file}: cannot read the sweep file ({_why(exc)})") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"{sweep_file}: a sweep file holds a mapping (method, parameters, command, ...)")
        # The file given on the command line is the authority for what the runs are compared against.
        collection.references = []
        collection.contrasts = []
        collection.baseline = None
        collection.swept = {}
        _read_header(collection, text, str(sweep_file))
        collection.swept.update(swept_parameters(config))
        collection.has_manifest = True
        collection.name = collection.name or sweep_file.stem
        collection.sources.append(f"{sweep_file} (sweep file: swept keys, references, declared contrasts)")

    if not collection.runs:
        raise ValueError(
            f"no runs found in {', '.join(str(p) for p in paths) or '(no paths given)'}: expected a sweep "
            "directory (with sweep.json), run directories (with config.yaml / result.json), a runs.csv, or "
            "a directory holding them"
        )
    # The same run reached twice (a sweep directory and one of its runs given explicitly).
    unique: Dict[str, RunRecord] = {}
    for record in collection.runs:
        key = str(Path(record.path).resolve()) if record.path and not record.source.startswith("table") \
            else f"{record.source}:{record.path}:{record.name}"
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
        _read_header(collection, raw, f"W&B sweep {path}")

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
        merged.contrasts.extend(c.contrasts)
    merged.single_folder = False
    return merged
