"""The W&B backend: the same sweep file, proposals made by the W&B server, runs started by ``wandb agent``.

Online (``WANDB_MODE`` unset or ``online``; needs ``wandb login`` or ``WANDB_API_KEY``):

1. ``wandb.sweep(config, project=..., entity=...)`` creates the sweep (``project``/``entity`` from the
   file, else ``$WANDB_PROJECT``/``$WANDB_ENTITY``, else project ``vit-ablate``), or ``--sweep-id``
   joins one. The uploaded ``command`` is the file's with, right after ``${args_no_hyphens}``, the
   CLI's ``key=value`` overrides (the local backend inserts them at the same place) and
   ``logging.wandb=true output_dir=<--output-dir>``, so every run logs to W&B (the server sees
   ``val/acc1``) and writes its run directory to ``<output-dir>/sweep-<id>/<run id>/``
   (``vit_ablate.training.run.resolve_run_dir``). When joining, the server's command must equal that
   command; a mismatch is an error rather than runs with other overrides than asked.
2. ``--workers N`` agent processes (``python -m wandb agent --forward-signals``), each with its share
   of ``--count`` and its ``CUDA_VISIBLE_DEVICES`` (dealt as in the local backend). The agent expands
   the command's macros and starts the runs; its log is ``<sweep dir>/agent-<k>.log``.
3. When the agents return, ``<output-dir>/sweep-<id>/sweep.json`` lists the run directories found there
   (params from the agent's ``$WANDB_DIR/wandb/sweep-<id>/config-<run>.yaml``, else the run's
   ``config.yaml``), so ``vit-ablate report`` reads a W&B sweep like a local one.

Offline (``WANDB_MODE=offline`` or ``disabled``): there is no server to create a sweep, propose runs or
run an agent against, and ``wandb.sweep`` needs one even in offline mode. The backend then emulates the
agent on this machine: the proposals come from the ``sweeps`` package (the engine the W&B server runs)
through the local runner, and each run is started as ``wandb agent``'s ``Agent._command_run`` would
start it: ``WANDB_SWEEP_ID``, ``WANDB_RUN_ID`` and ``WANDB_SWEEP_PARAM_PATH`` (the run's parameters
written by wandb's own ``config_util.save_config_file_from_dict``) in its environment, no
``VIT_ABLATE_RUN_DIR``, the uploaded command expanded with the agent's macros. Training then logs
through Lightning's ``WandbLogger`` into an offline run directory
(``<run dir>/wandb/offline-run-*``, ``wandb sync`` uploads it later). Sweep id: ``--sweep-id`` or one
derived from the sweep's name; run ids derived from it and the proposal index (W&B's are random).

What was exercised without a server (tests/sweep/test_sweep_wandb.py): the uploaded command; the
agent's argv (compared with wandb's own ``Agent._command_run``); the offline emulation end to end (a real
training run writing ``offline-run-*``, a real runtime failure recorded as ``failed``); and the online
path with ``wandb.sweep`` and the ``wandb agent`` processes replaced by stand-ins (upload, one agent
process per worker with its share of ``--count``, the manifest read back, the join check). Not
exercised: a real W&B server — ``wandb.sweep``'s upload, the server's proposals and hyperband stops,
``wandb agent`` itself, joining a real sweep with ``--sweep-id``, signal forwarding to agents, and the requeue of a
preempted run (training calls ``wandb.mark_preempting()`` when interrupted; W&B requeues a run that
marked itself preempting and exited non-zero).
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

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.io import atomic_write_json, atomic_write_text
from vit_ablate.sweep import engine
from vit_ablate.sweep.engine import SweepSpec
from vit_ablate.sweep.local import LocalLauncher, SweepRunner, gpu_slots, now
from vit_ablate.sweep.summary import SweepSummary, summarize

OFFLINE_MODES = ("offline", "disabled", "dryrun")
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _short_id(text: str, length: int = 8) -> str:
    number = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    out = []
    for _ in range(length):
        number, digit = divmod(number, len(_ALPHABET))
        out.append(_ALPHABET[digit])
    return "".join(out)


def wandb_command(spec: SweepSpec, output_dir: str | os.PathLike) -> List[str]:
    """The command uploaded to W&B: the file's, then the CLI overrides, then what a W&B run needs."""
    return engine.insert_overrides(
        spec.config.get("command"), spec.overrides, extra=["logging.wandb=true", f"output_dir={output_dir}"]
    )


def project_and_entity(spec: SweepSpec) -> Tuple[str, Optional[str]]:
    project = spec.config.get("project") or os.environ.get("WANDB_PROJECT") or "vit-ablate"
    entity = spec.config.get("entity") or os.environ.get("WANDB_ENTITY")
    return str(project), (str(entity) if entity else None)


# ------------------------------------------------------------------------------------ offline agent
class AgentLauncher(LocalLauncher):
    """Starts each run the way ``wandb agent`` does (environment, parameter file, argv)."""

    kind = "wandb"
    strip_env = (rundir.RUN_DIR_ENV, "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")

    def __init__(self, sweep_id: str, output_dir: str | os.PathLike):
        self.sweep_id = sweep_id
        self.output_dir = str(output_dir)

    def sweep_dir(self, spec: SweepSpec, output_dir: Path) -> Path:
        return Path(output_dir) / f"sweep-{self.sweep_id}"  # where training puts a W&B sweep's runs

    def template(self, spec: SweepSpec) -> List[str]:
        return wandb_command(spec, self.output_dir)

    def manifest_extra(self, spec: SweepSpec) -> Dict[str, Any]:
        project, entity = project_and_entity(spec)
        return {"sweep_id": self.sweep_id, "project": project, "entity": entity,
                "wandb_mode": os.environ.get("WANDB_MODE"), "agent": "emulated offline (no W&B server)"}

    def new_entry(self, spec: SweepSpec, index: int, params: Dict[str, Any]) -> Dict[str, Any]:
        run_id = _short_id(f"{self.sweep_id}/{index}")
        return {"name": f"run-{index:03d}", "dir": run_id, "run_id": run_id, "params": params, "status": rundir.PENDING}

    def prepare(self, spec, template, entry, run_dir):
        from wandb.sdk.lib import config_util

        run_id = entry["run_id"]
        # Agent._command_run writes these under $WANDB_DIR/wandb/sweep-<id>/; here: under the sweep directory.
        base = run_dir.parent / "wandb" / f"sweep-{self.sweep_id}"
        param_file = base / f"config-{run_id}.yaml"
        json_file = base / f"config-{run_id}.json"
        base.mkdir(parents=True, exist_ok=True)
        args = {key: {"value": value} for key, value in entry["params"].items()}
        config_util.save_config_file_from_dict(str(param_file), args)
        if "${args_json_file}" in [str(c) for c in template]:
            atomic_write_text(json_file, json.dumps(dict(entry["params"])))
        argv = engine.expand_command(template, entry["params"], spec.config.get("program"), str(json_file))
        env = {"WANDB_SWEEP_ID": self.sweep_id, "WANDB_RUN_ID": run_id, "WANDB_SWEEP_PARAM_PATH": str(param_file)}
        project, entity = project_and_entity(spec)
        env["WANDB_PROJECT"] = project
        if entity:
            env["WANDB_ENTITY"] = entity
        return argv, env


# ------------------------------------------------------------------------------------------ online
def _agent_counts(count: Optional[int], workers: int) -> List[Optional[int]]:
    if count is None:
        return [None] * workers
    return [count // workers + (1 if k < count % workers else 0) for k in range(workers)]


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def collect_runs(sweep_dir: Path, sweep_id: str, parameters: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """Manifest entries for the run directories the agents left in ``sweep_dir``. A run's params come
    from the file the agent wrote for it (``$WANDB_DIR/wandb/sweep-<id>/config-<run id>.yaml``), else
    from the run's ``config.yaml``."""
    import yaml

    agent_files = Path(os.environ.get("WANDB_DIR") or os.getcwd()) / "wandb" / f"sweep-{sweep_id}"
    entries = []
    for run_dir in sorted(p for p in sweep_dir.iterdir() if p.is_dir() and p.name != "wandb"):
        if not any((run_dir / f).exists() for f in (rundir.CONFIG_FILE, rundir.RESULT_FILE, rundir.METRICS_FILE)):
            continue
        params: Dict[str, Any] = {}
        try:
            given = yaml.safe_load((agent_files / f"config-{run_dir.name}.yaml").read_text()) or {}
            params = {k: v.get("value") for k, v in given.items() if k in parameters and isinstance(v, Mapping)}
        except (OSError, yaml.YAMLError):
            pass
        if not params:
            try:
                config = _flatten(yaml.safe_load(rundir.RunDir(run_dir).config.read_text()) or {})
            except (OSError, yaml.YAMLError):
                config = {}
            params = {k: config.get(k) for k in parameters if k in config}
        result = engine.read_result(run_dir) or {}
        metrics = {}
        for section in ("final", "test"):
            metrics.update({k: v for k, v in (result.get(section) or {}).items() if isinstance(v, (int, float))})
        entries.append({
            "name": run_dir.name, "dir": run_dir.name, "run_id": run_dir.name, "params": params,
            # no result.json: its process died, or another machine's agent is still running it
            "status": result.get("status", rundir.INTERRUPTED),
            "metrics": metrics, "wall_time_s": result.get("wall_time_s"),
        })
    return entries


def agent_argv(sweep_id: str, project: str, entity: Optional[str], count: Optional[int]) -> List[str]:
    """``wandb agent`` as a subprocess of this interpreter (its own process: one per worker/GPU)."""
    argv = [sys.executable, "-m", "wandb", "agent", "--forward-signals", "-p", project]
    argv += ["-e", entity] if entity else []
    argv += ["--count", str(count)] if count is not None else []
    return argv + [sweep_id]


def _run_online(spec: SweepSpec, template: List[str], workers: int, count: Optional[int], sweep_id: Optional[str],
                output_dir: Path, gpus: Optional[str], notes: List[str]) -> SweepSummary:
    import wandb

    started = time.time()
    project, entity = project_and_entity(spec)
    upload = dict(spec.config)
    upload["command"] = template
    if sweep_id is None:
        sweep_id = wandb.sweep(upload, project=project, entity=entity)
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
    atomic_write_json(sweep_dir / "sweep.json", manifest)

    env = {k: v for k, v in os.environ.items() if k != rundir.RUN_DIR_ENV}
    procs = []
    for k, (gpu, n) in enumerate(zip(gpu_slots(workers, gpus), _agent_counts(count, workers))):
        if n == 0:
            continue
        argv = agent_argv(sweep_id, project, entity, n)
        agent_env = dict(env, **({"CUDA_VISIBLE_DEVICES": gpu} if gpu is not None else {}))
        log = open(sweep_dir / f"agent-{k}.log", "ab")
        procs.append((subprocess.Popen(argv, env=agent_env, stdout=log, stderr=subprocess.STDOUT), log))
        print(f"[sweep] wandb agent {k} (pid {procs[-1][0].pid}) → {sweep_dir / f'agent-{k}.log'}", file=sys.stderr)

    interrupted = False
    previous = {}
    signals: List[int] = []
    try:
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda s, f: signals.append(s))
    except ValueError:  # not the main thread
        pass
    try:
        while any(p.poll() is None for p, _ in procs):
            if signals:
                interrupted = True
                for p, _ in procs:
                    if p.poll() is None:
                        p.send_signal(signal.SIGTERM if len(signals) == 1 else signal.SIGKILL)
            time.sleep(1.0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for _, log in procs:
            log.close()
    manifest["runs"] = collect_runs(sweep_dir, sweep_id, spec.parameters)
    manifest["updated_at"] = now()
    atomic_write_json(sweep_dir / "sweep.json", manifest)
    return summarize(manifest, sweep_dir, time.time() - started, interrupted=interrupted, notes=notes,
                     metric=spec.metric["name"])


# ------------------------------------------------------------------------------------------- entry
def run_wandb_sweep(
    spec: SweepSpec,
    workers: int = 1,
    count: Optional[int] = None,
    sweep_id: Optional[str] = None,
    output_dir: str | os.PathLike = "runs",
    gpus: Optional[str] = None,
    **runner_kwargs: Any,
) -> SweepSummary:
    template = wandb_command(spec, output_dir)
    mode = (os.environ.get("WANDB_MODE") or "online").lower()
    offline = mode in OFFLINE_MODES
    notes = engine.validate_sweep(spec, backend="local" if offline else "wandb", template=template)
    if offline:
        sweep_id = sweep_id or _short_id(f"offline/{spec.name}")
        notes.append(
            f"WANDB_MODE={mode}: no W&B server, so the agent was emulated locally (sweep id {sweep_id}); "
            "`wandb sync <run dir>/wandb/offline-run-*` uploads the runs"
        )
        runner = SweepRunner(spec, output_dir=output_dir, workers=workers, count=count, gpus=gpus,
                             launcher=AgentLauncher(sweep_id, output_dir), notes=notes, **runner_kwargs)
        return runner.run()
    return _run_online(spec, template, workers, count, sweep_id, Path(output_dir), gpus, notes)
