"""The W&B backend: the same sweep file, proposals made by the W&B server, runs started by ``wandb agent``.

The uploaded ``command`` is the file's with, after ``${args_no_hyphens}``, the CLI's overrides and
``logging.wandb=true output_dir=<--output-dir>``: every run logs to W&B and writes its run directory
to ``<output-dir>/sweep-<id>/<run id>/``. Online, ``wandb.sweep`` creates the sweep (or ``--sweep-id``
joins one with that same command) and ``--workers N`` ``wandb agent`` processes run it, each with its
share of ``--count`` and its GPUs; their run directories are then listed in ``sweep.json``. Offline
(``WANDB_MODE=offline``), with no server to propose runs, the local runner proposes them with the
``sweeps`` package (the engine the server runs) and starts each as ``wandb agent``'s
``Agent._command_run`` would: ``WANDB_SWEEP_ID``, ``WANDB_RUN_ID`` and ``WANDB_SWEEP_PARAM_PATH`` in
its environment, the macros expanded; training logs into an offline W&B run that ``wandb sync``
uploads. tests/sweep/test_sweep_wandb.py runs both (online with stand-ins for ``wandb.sweep`` and the
agent); a real server's proposals, hyperband stops and requeues are not exercised.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple

import yaml

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.io import atomic_write_json, atomic_write_text
from vit_ablate.sweep import engine
from vit_ablate.sweep.engine import SweepSpec
from vit_ablate.sweep.local import LocalLauncher, SweepRunner, gpu_slots, signals_caught
from vit_ablate.sweep.summary import MANIFEST, SweepSummary, describe_run, now, summarize

OFFLINE_MODES = ("offline", "disabled", "dryrun")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _short_id(text: str, length: int = 8) -> str:
    """An id in W&B's alphabet derived from ``text`` (W&B's own are random; these are reproducible)."""
    number = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    digits = []
    for _ in range(length):
        number, digit = divmod(number, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "".join(digits)


def wandb_command(spec: SweepSpec, output_dir: str | os.PathLike) -> List[str]:
    """The command uploaded to W&B: the file's, then the CLI overrides, then what a W&B run needs."""
    return engine.insert_overrides(spec.config.get("command"), spec.overrides,
                                   extra=["logging.wandb=true", f"output_dir={output_dir}"])


def project_and_entity(spec: SweepSpec) -> Tuple[str, Optional[str]]:
    project = spec.config.get("project") or os.environ.get("WANDB_PROJECT") or "vit-ablate"
    entity = spec.config.get("entity") or os.environ.get("WANDB_ENTITY")
    return str(project), (str(entity) if entity else None)


class AgentLauncher(LocalLauncher):
    """Starts each run the way ``wandb agent`` does (environment, parameter file, argv)."""

    kind = "wandb"

    def __init__(self, spec: SweepSpec, sweep_id: str, output_dir: str | os.PathLike):
        super().__init__(spec, output_dir)
        self.sweep_id = sweep_id
        self.sweep_dir = Path(output_dir) / f"sweep-{sweep_id}"  # where training puts a W&B sweep's runs
        self.template = wandb_command(spec, output_dir)
        project, entity = project_and_entity(spec)
        self.manifest_extra = {"sweep_id": sweep_id, "project": project, "entity": entity,
                               "wandb_mode": os.environ.get("WANDB_MODE"), "agent": "emulated offline (no W&B server)"}

    def new_entry(self, index: int, params: Dict[str, Any]) -> Dict[str, Any]:
        run_id = _short_id(f"{self.sweep_id}/{index}")
        return {"name": f"run-{index:03d}", "dir": run_id, "run_id": run_id, "params": params}

    def prepare(self, entry: Mapping[str, Any], run_dir: Path) -> Tuple[List[str], Dict[str, str]]:
        from wandb.sdk.lib import config_util

        run_id = entry["run_id"]
        # Agent._command_run writes these under $WANDB_DIR/wandb/sweep-<id>/; here: under the sweep directory.
        base = run_dir.parent / "wandb" / f"sweep-{self.sweep_id}"
        param_file, json_file = base / f"config-{run_id}.yaml", base / f"config-{run_id}.json"
        base.mkdir(parents=True, exist_ok=True)
        config_util.save_config_file_from_dict(str(param_file), {k: {"value": v} for k, v in entry["params"].items()})
        if "${args_json_file}" in map(str, self.template):
            atomic_write_text(json_file, json.dumps(dict(entry["params"])))
        argv = engine.expand_command(self.template, entry["params"], self.spec.config.get("program"), str(json_file))
        project, entity = project_and_entity(self.spec)
        env = {"WANDB_SWEEP_ID": self.sweep_id, "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": str(param_file),
               "WANDB_PROJECT": project, **({"WANDB_ENTITY": entity} if entity else {})}
        return argv, env


# ------------------------------------------------------------------------------------------ online
def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        out.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, Mapping) else {f"{prefix}{key}": value})
    return out


def collect_runs(sweep_dir: Path, parameters: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Proposal entries for the run directories the agents left in ``sweep_dir``, each run's swept
    parameters read from its resolved ``config.yaml``."""
    runs = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != "wandb"):
        try:
            config = _flatten(yaml.safe_load(rundir.RunDir(run_dir).config.read_text()) or {})
        except (OSError, yaml.YAMLError):
            continue  # not a run directory: training writes config.yaml first
        runs.append({"name": run_dir.name, "dir": run_dir.name, "run_id": run_dir.name,
                     "params": {k: config[k] for k in parameters if k in config}})
    return runs


def agent_argv(sweep_id: str, project: str, entity: Optional[str], count: Optional[int]) -> List[str]:
    """``wandb agent`` as a subprocess of this interpreter (its own process: one per worker/GPU)."""
    argv = [sys.executable, "-m", "wandb", "agent", "--forward-signals", "-p", project]
    argv += ["-e", entity] if entity else []
    argv += ["--count", str(count)] if count is not None else []
    return argv + [sweep_id]


def _run_online(spec: SweepSpec, template: List[str], workers: int, count: Optional[int], sweep_id: Optional[str],
                output_dir: Path, gpus: Optional[str], notes: List[str], on_created=lambda sweep_id: None) -> SweepSummary:
    import wandb

    started = time.time()
    project, entity = project_and_entity(spec)
    if sweep_id is None:
        sweep_id = wandb.sweep({**spec.config, "command": template}, project=project, entity=entity)
        on_created(sweep_id)
    else:
        path = "/".join(p for p in (entity, project, sweep_id) if p)
        server = wandb.Api().sweep(path).config
        if list(server.get("command") or []) != template:
            raise ConfigError(
                f"W&B sweep {path} runs {server.get('command')}, not {template}: join it without (or with the "
                "same) key=value overrides and --output-dir, or create a new sweep"
            )
    sweep_dir = Path(output_dir) / f"sweep-{sweep_id}"
    sweep_dir.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = {
        "sweep": spec.name, "file": str(spec.path), "backend": "wandb", "sweep_id": sweep_id,
        "project": project, "entity": entity, "config": spec.config, "command": template,
        "overrides": list(spec.overrides), "reference": spec.references, "baseline": spec.baseline,
        "created_at": now(), "runs": [],
    }
    atomic_write_text(sweep_dir / spec.path.name, spec.text)
    atomic_write_json(sweep_dir / MANIFEST, manifest)

    env = {k: v for k, v in os.environ.items() if k != rundir.RUN_DIR_ENV}
    shares = [None] * workers if count is None else [count // workers + (1 if k < count % workers else 0) for k in range(workers)]
    agents = []
    for k, (gpu, share) in enumerate(zip(gpu_slots(workers, gpus), shares)):
        if share == 0:
            continue
        log = open(sweep_dir / f"agent-{k}.log", "ab")
        agent_env = dict(env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        proc = subprocess.Popen(agent_argv(sweep_id, project, entity, share), env=agent_env, stdout=log,
                                stderr=subprocess.STDOUT)
        agents.append((proc, log))
        print(f"[sweep] wandb agent {k} (pid {proc.pid}) → {sweep_dir / f'agent-{k}.log'}", file=sys.stderr)

    signals: List[int] = []
    try:
        with signals_caught(signals):
            while any(proc.poll() is None for proc, _ in agents):
                for proc, _ in agents if signals else ():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM if len(signals) == 1 else signal.SIGKILL)
                time.sleep(1.0)
    finally:
        for _, log in agents:
            log.close()
    manifest["runs"] = collect_runs(sweep_dir, spec.parameters)
    atomic_write_json(sweep_dir / MANIFEST, manifest)
    metric = spec.metric
    runs = [describe_run(sweep_dir, spec.name, entry, metric) for entry in manifest["runs"]]
    return summarize(manifest, runs, sweep_dir, time.time() - started, interrupted=bool(signals), notes=notes,
                     metric=metric)


def _run_online_staged(spec: SweepSpec, template: List[str], workers: int, count: Optional[int], output_dir: Path,
                       gpus: Optional[str], notes: List[str]) -> SweepSummary:
    """A sweep with a group-sequential plan on W&B: one W&B sweep per stage (that stage's seeds), run to its
    end by the agents, then a look at every stage so far, as the report makes it. ``<output-dir>/<name>-stages.json``
    keeps the stage sweeps' ids, so a rerun joins the unfinished stage instead of creating it again.
    ``--count`` applies to each stage."""
    from vit_ablate.report.analysis import analyse
    from vit_ablate.report.runs import collect_runs

    plan, state = spec.plan, Path(output_dir) / f"{spec.name}-stages.json"
    ids: List[str] = json.loads(state.read_text()) if state.is_file() else []
    seeds = spec.parameters["seed"]["values"]
    summary, verdict = None, ""
    for k in range(len(plan.stages)):
        first = plan.looks[k - 1] if k else 0
        stage = {**spec.config, "parameters": {**spec.parameters, "seed": {"values": seeds[first:plan.looks[k]]}}}
        stage_spec = SweepSpec(spec.path, spec.text, stage, spec.name, spec.overrides, spec.references, spec.baseline)
        print(f"[sweep] stage {k + 1} of {len(plan.stages)}: seeds {', '.join(map(str, seeds[first:plan.looks[k]]))}",
              file=sys.stderr)
        summary = _run_online(stage_spec, template, workers, count, ids[k] if k < len(ids) else None, output_dir, gpus,
                              list(notes), on_created=lambda sweep_id: atomic_write_json(state, [*ids, sweep_id]))
        if k >= len(ids):
            ids.append(summary.manifest["sweep_id"])
        if summary.exit_code == 130:  # interrupted: the rerun joins this stage again
            break
        dirs = [str(Path(output_dir) / f"sweep-{i}") for i in ids]
        primary = analyse(*collect_runs([*dirs, str(spec.path)]), metric=spec.metric).primary
        verdict = primary.verdict if primary.stage_open or not primary.looks_end else f"stopped: {primary.looks_end}"
        if not primary.stage_open or len(primary.looks) <= k:
            break
    summary.text += f"\nsequential plan: {verdict or 'no look yet'}"
    return summary


# ------------------------------------------------------------------------------------------- entry
def run_wandb_sweep(spec: SweepSpec, workers: int = 1, count: Optional[int] = None, sweep_id: Optional[str] = None,
                    output_dir: str | os.PathLike = "runs", gpus: Optional[str] = None, **runner_kwargs: Any) -> SweepSummary:
    template = wandb_command(spec, output_dir)
    mode = (os.environ.get("WANDB_MODE") or "online").lower()
    offline = mode in OFFLINE_MODES
    notes = engine.validate_sweep(spec, backend="local" if offline else "wandb", template=template)
    if not offline and spec.plan:
        if sweep_id is not None:
            raise ConfigError("--sweep-id joins one W&B sweep; a sweep with a sequential plan is one W&B sweep per stage, "
                              f"resumed from {Path(output_dir) / (spec.name + '-stages.json')}: rerun without --sweep-id")
        return _run_online_staged(spec, template, workers, count, Path(output_dir), gpus, notes)
    if not offline:
        return _run_online(spec, template, workers, count, sweep_id, Path(output_dir), gpus, notes)
    sweep_id = sweep_id or _short_id(f"offline/{spec.name}")
    notes.append(f"WANDB_MODE={mode}: no W&B server, so the agent was emulated locally (sweep id {sweep_id}); "
                 "`wandb sync <run dir>/wandb/offline-run-*` uploads the runs")
    runner = SweepRunner(spec, output_dir=output_dir, workers=workers, count=count, gpus=gpus,
                         launcher=AgentLauncher(spec, sweep_id, output_dir), notes=notes, **runner_kwargs)
    return runner.run()
