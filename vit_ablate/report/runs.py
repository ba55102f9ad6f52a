"""The runs of a report as one DataFrame, one row a run finished or not (a failed run is listed, not
averaged away), from sweep and run folders (``vit_ablate.rundir``), a runs.csv or a W&B sweep; and what
their sweep declares. A config key is a column of canonical values (``—`` where a run lacks it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from vit_ablate import rundir
from vit_ablate.report.contrasts import ContrastSpec, parse_contrast_comments, parse_holm_comment
from vit_ablate.report.sequential import Plan, parse_plan
from vit_ablate.report.references import canon, parse_baseline_comment, parse_reference_comments

RUNS_TABLE = "runs.csv"  # the per-run table a report writes beside report.md, and can be regenerated from
TABLE_METRICS = ("wall_time_s", "throughput_img_s", "epochs", "global_step")  # metrics without a "/"
DEFAULT_HOLM = (("secondary", "baseline"), "the default: the sweep file has no # holm: line")
# W&B run.state → this project's status; a "status" in the run's summary (training's word) wins.
_WANDB_STATES = {"finished": rundir.COMPLETED, "crashed": rundir.FAILED, "failed": rundir.FAILED,
                 "killed": rundir.INTERRUPTED, "preempted": rundir.INTERRUPTED, "preempting": rundir.INTERRUPTED,
                 "running": rundir.RUNNING, "pending": rundir.PENDING}


@dataclass
class Design:
    """What the sweep says about its runs."""
    name: Optional[str] = None
    swept: Dict[str, Optional[list]] = field(default_factory=dict)  # key → values (None: a distribution)
    has_manifest: bool = False
    baseline: Optional[Dict[str, str]] = None  # the sweep's declared baseline
    references: List[Dict[str, Any]] = field(default_factory=list)
    contrasts: List[ContrastSpec] = field(default_factory=list)
    holm: Tuple[Tuple[str, ...], str] = DEFAULT_HOLM  # the Holm family's members and where it was declared
    sources: List[str] = field(default_factory=list)  # one line per input, for the report's header
    notes: List[str] = field(default_factory=list)
    params: List[str] = field(default_factory=list)  # the parameter columns of the runs table
    header: Tuple[str, str] = ("", "")  # the sweep file's text and where it came from (the plan is read from it)

    def plan(self) -> Optional[Plan]:
        """The sweep's group-sequential plan (``# sequential:``), checked against its seeds and primary."""
        primary = next((c for c in self.contrasts if c.role == "primary"), None)
        return parse_plan(self.header[0], self.header[1], self.swept.get("seed"), primary is not None,
                          primary.kind if primary else "")

    def read_header(self, text: str, origin: str) -> None:
        """A sweep file's header comments (the file given last is the authority)."""
        self.references = parse_reference_comments(text)
        self.baseline = {k: canon(v) for k, v in (parse_baseline_comment(text) or {}).items()} or None
        self.contrasts = parse_contrast_comments(text, origin)
        self.holm = parse_holm_comment(text, origin) or DEFAULT_HOLM
        self.header = (text, origin)


def swept_parameters(sweep_config: Mapping[str, Any], prefix: str = "") -> Dict[str, Optional[list]]:
    """The keys a W&B sweep file varies (nested blocks dotted): ``values`` of more than one, or a distribution (None)."""
    swept: Dict[str, Optional[list]] = {}
    parameters = (sweep_config or {}).get("parameters")
    for key, spec in (parameters if isinstance(parameters, Mapping) else {}).items():
        values = spec.get("values") if isinstance(spec, Mapping) else None
        if isinstance(spec, Mapping) and isinstance(spec.get("parameters"), Mapping):
            swept.update(swept_parameters(spec, f"{prefix}{key}."))
        elif isinstance(values, list) and len(values) > 1:
            swept[f"{prefix}{key}"] = list(values)
        elif isinstance(spec, Mapping) and not isinstance(values, list) and {"distribution", "min", "max"} & set(spec):
            swept[f"{prefix}{key}"] = None
    return swept


def lookup_metric(result: Mapping[str, Any], metric: str) -> Tuple[Optional[float], Optional[str]]:
    """``(value, section)`` of ``metric`` by its full name in ``table``, ``summary``, ``final``, ``test``, ``best``; then as
    ``best/val/acc1`` or ``fewshot/5``; then top-level; else ``(None, None)``."""
    def number(value: Any) -> Optional[float]:  # a 400-digit integer is no metric value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value) if isinstance(value, float) or abs(value) < 1e308 else math.nan

    for section, name in [(s, metric) for s in ("table", "summary", "final", "test", "best")] + [metric.partition("/")[::2]]:
        values = result.get(section)
        if isinstance(values, Mapping) and name in values:
            return number(values[name]), section
    return (number(result[metric]), "result") if metric in result else (None, None)


def metric_names(results: Sequence[Mapping[str, Any]]) -> List[str]:
    """Every metric some run recorded, in the spelling ``--metric`` takes."""
    names: Dict[str, None] = {}
    for result in results:
        for section in ("table", "summary", "final", "test", "best", "fewshot"):
            if isinstance(result.get(section), Mapping):  # best and fewshot ones by their section: best/val/acc1, fewshot/5
                prefix = f"{section}/" if section in ("best", "fewshot") else ""
                names.update((prefix + k, None) for k in result[section] if (section, k) != ("best", "epoch"))
        names.update((k, None) for k, v in result.items()
                     if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("seed", "version"))
    return list(names)


def _record(run: Mapping[str, Any], source: str, has_config: Optional[bool] = None) -> Dict[str, Any]:
    """A run as rundir reads it (``name``, ``path``, ``status``, ``reason``, ``config``, ``params``, ``result``) → a row."""
    return {"run": run["name"], "path": run.get("path"), "status": run["status"], "reason": run.get("reason", ""),
            "source": source, "has_config": bool(run.get("config")) if has_config is None else has_config,
            "result": run.get("result") or {}, "history": run.get("history") or [],
            "params": {**run.get("config", {}), **{str(k): v for k, v in (run.get("params") or {}).items()}}}


def _from_folder(path: Path, design: Design) -> List[Dict[str, Any]]:
    records, plain = [], 0
    for manifest, runs, note in rundir.read_folder(path):
        if manifest is None:
            records += [_record(run, "directory") for run in runs]
            plain += len(runs)
            continue
        name = str(manifest.get("sweep") or path.name)[:200]
        design.name, design.has_manifest = design.name or name, True
        design.swept |= {k: v for k, v in swept_parameters(manifest.get("config") or {}).items() if k not in design.swept}
        file = manifest.get("file")
        copies = [path / Path(file).name, Path(file)] if isinstance(file, str) and file.endswith((".yaml", ".yml")) else []
        if (copy := next((c for c in copies if c.is_file()), None)) is not None:
            design.read_header(rundir.read_text(copy), file)
        if isinstance(manifest.get("reference"), list):  # what the sweep recorded from its file's header
            design.references = [r for r in manifest["reference"] if isinstance(r, Mapping)]
        if isinstance(manifest.get("baseline"), Mapping):
            design.baseline = {str(k): canon(v) for k, v in manifest["baseline"].items()}
        records += [_record(run, f"sweep {name}") for run in runs]
        design.notes += [note] if note else []
        design.sources.append(f"{path} (sweep {name!r}, {len(manifest.get('runs') or [])} runs in {rundir.SWEEP_MANIFEST}"
                              f"{_command_line_overrides(manifest)})")
    if plain:
        design.sources.append(f"{path} (run directory)" if rundir.is_run_dir(path) else f"{path} ({plain} runs in its subdirectories)")
    return records


def _command_line_overrides(manifest: Mapping[str, Any]) -> str:
    """The ``key=value`` items given after the sweep file on ``vit-ablate sweep``'s command line (e.g. a doubled
    ``trainer.max_epochs``): every run has them, the sweep file does not show them, so the report says so."""
    command, declared = manifest.get("command"), (manifest.get("config") or {}).get("command")
    if not (isinstance(command, list) and isinstance(declared, list)) or command[:len(declared)] != declared:
        return ""
    extra = " ".join(str(item) for item in command[len(declared):])[:500]
    return f"; every run also given {extra} on the sweep's command line" if extra else ""


def _from_table(path: Path, design: Design) -> List[Dict[str, Any]]:
    """A runs.csv written by a report: a report is regenerated without its run folders."""
    try:
        rundir.read_text(path, rundir.MAX_CSV_BYTES)
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except rundir.READ_ERRORS as exc:
        raise ValueError(f"{path}: cannot read the runs table ({rundir.why(exc)})") from None
    if missing := [c for c in ("run", "status") if c not in table]:
        raise ValueError(f"{path}: not a runs table: no column {', '.join(missing)} (expected run, <grouping keys>, "
                         "seed, status, <metrics>, reason, as `vit-ablate report` writes it)")
    metrics = [c for c in table if "/" in c or c in TABLE_METRICS]
    params = [c for c in table if c not in ("run", "seed", "status", "reason", *metrics)]
    design.sources.append(f"{path} ({len(table)} runs in the table)")
    records = []
    for i, row in table.iterrows():
        status = (row["status"] or "unknown").lower()[:40]
        records.append(_record({
            "name": row["run"][:200] or f"row {i + 2}", "path": f"{path}:{i + 2}", "status": status,
            "reason": "" if status == rundir.COMPLETED else (row.get("reason") or status)[:300],
            "result": {"table": {c: float(pd.to_numeric(row[c], errors="coerce")) for c in metrics if row[c] != ""}},
            "params": {c: row[c] for c in params + ["seed"] if c in row and row[c] != ""}}, f"table {path}", True))
    return records


def runs_from_wandb(path: str, design: Design, api: Any = None) -> List[Dict[str, Any]]:
    """The runs of W&B sweep ``ENTITY/PROJECT/SWEEP_ID`` through ``api`` (default ``wandb.Api()``; a stand-in in tests)."""
    if api is None:
        import wandb  # only this path needs the client (and its login)
        api = wandb.Api()
    sweep = api.sweep(path)
    design.name, design.has_manifest = design.name or str(getattr(sweep, "name", None) or path.rsplit("/", 1)[-1]), True
    design.swept.update(swept_parameters(dict(getattr(sweep, "config", None) or {})))
    text = (getattr(sweep, "_attrs", None) or {}).get("config")  # the sweep file's text, header comments included
    if isinstance(text, str):
        design.read_header(text, f"W&B sweep {path}")
    records = []
    for run in getattr(sweep, "runs", None) or []:
        summary, state = dict(getattr(run.summary, "_json_dict", None) or run.summary), str(getattr(run, "state", "unknown")).lower()
        config = {k: v["value"] if isinstance(v, Mapping) and set(v) <= {"value", "desc"} and "value" in v else v
                  for k, v in dict(run.config).items() if not str(k).startswith("_")}
        status = str(summary.get("status", "")).lower()
        status = status if status in rundir.RESULT_STATUSES else _WANDB_STATES.get(state, state)
        records.append(_record({
            "name": str(run.name or run.id), "path": f"{path.rsplit('/', 1)[0]}/{run.id}", "status": status,
            "reason": "" if status == rundir.COMPLETED else f"W&B state {state}", "params": rundir.flatten(config),
            "result": {"status": status, "summary": {k: v for k, v in summary.items() if not k.startswith("_")}},
            "history": list(run.scan_history(keys=["epoch", "val/acc1"])) if hasattr(run, "scan_history") else []},
            f"wandb {path}", True))
    design.sources.append(f"W&B sweep {path} ({len(records)} runs)")
    if not records:
        raise ValueError(f"W&B sweep {path} has no runs")
    return records


def collect_runs(paths: Sequence[str | Path], wandb_path: Optional[str] = None, api: Any = None) -> Tuple[pd.DataFrame, Design]:
    """Every run under ``paths`` and in W&B sweep ``wandb_path`` as one DataFrame, and what their sweep files (``*.yaml``)
    or manifests declare. ValueError for a missing path or no run at all."""
    design, records = Design(), []
    sweep_files = [Path(p) for p in paths if str(p).endswith((".yaml", ".yml"))]
    for raw in dict.fromkeys(Path(p) for p in paths if Path(p) not in sweep_files):
        path = raw.parent if raw.name == rundir.SWEEP_MANIFEST and raw.is_file() else raw
        if not path.exists():
            raise ValueError(f"{raw}: no such file or directory")
        if path.is_file() and path.suffix == ".csv":
            records += _from_table(path, design)
        elif path.is_dir():
            records += _from_folder(path, design)
        else:
            raise ValueError(f"{raw}: not a directory (expected a sweep directory, run directories, a runs.csv or a sweep .yaml)")
    if wandb_path:
        records += runs_from_wandb(wandb_path, design, api)
    for path in sweep_files:  # its header and swept keys apply to the runs given with it
        try:
            text = rundir.read_text(path)
            config = rundir.load_yaml(text)
        except rundir.READ_ERRORS as exc:
            raise ValueError(f"{path}: cannot read the sweep file ({rundir.why(exc)})") from None
        if not isinstance(config, Mapping):
            raise ValueError(f"{path}: a sweep file holds a mapping (method, parameters, command, ...)")
        design.read_header(text, str(path))
        design.swept, design.has_manifest, design.name = swept_parameters(config), True, design.name or str(config.get("name") or path.stem)
        design.sources.append(f"{path} (sweep file: swept keys, references, declared contrasts)")
    if not records:
        raise ValueError(f"no runs found in {', '.join(str(p) for p in paths) or '(no paths given)'}: expected a sweep folder "
                         "(sweep.json), run folders (config.yaml, result.json), a runs.csv, or a folder holding them")
    unique: Dict[str, Dict[str, Any]] = {}
    for record in records:  # the same run folder reached twice (a sweep folder and one of its runs) counts once
        local = record["source"] == "directory" or record["source"].startswith("sweep")
        unique.setdefault(str(Path(record["path"]).resolve()) if local and record["path"] else
                          f"{record['source']}:{record['path']}:{record['run']}", record)
    records = list(unique.values())
    design.params = list(dict.fromkeys(k for r in records for k in r["params"] if k != "seed"))
    frame = pd.DataFrame([{key: value for key, value in r.items() if key != "params"} for r in records])
    seeds = [r["params"].get("seed", r["result"].get("seed") if isinstance(r["result"], Mapping) else None) for r in records]
    frame["seed"] = [None if s is None else canon(s) for s in seeds]
    columns = pd.DataFrame([{k: canon(v) for k, v in r["params"].items() if k != "seed"} for r in records],
                           columns=design.params, index=frame.index).fillna("—")  # a key the run lacks
    return pd.concat([frame, columns.drop(columns=[c for c in columns if c in frame])], axis=1), design
