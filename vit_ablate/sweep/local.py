"""Run a sweep on this machine: proposals from ``engine``, each run a subprocess of the file's command.

Layout (docs/CONTRACTS.md)::

    <output_dir>/<sweep>/sweep.json     the manifest, rewritten atomically after every state change
    <output_dir>/<sweep>/<file>.yaml    a copy of the sweep file (the report reads its header comments)
    <output_dir>/<sweep>/run-000/       one run directory per proposal, in proposal order
        train.log                       the run's stdout and stderr (appended to by every attempt)

Each run is the sweep file's own ``command`` with ``${...}`` expanded as ``wandb agent`` expands it;
the engine only adds ``VIT_ABLATE_RUN_DIR=<sweep dir>/<run>`` to its environment, which
``vit-ablate train`` uses as its run directory. So a run started here and a run started by the W&B agent
execute the same argv.

Crash safety. A proposal is written to the manifest (``pending``) before it is launched, and a run is
marked ``running`` before its process starts. Killing the engine at any moment (even SIGKILL) and
running the same command again resumes:

* ``completed`` and ``diverged`` runs (their ``result.json`` says so) are never started again, so
  nothing finished is overwritten;
* a run that was ``running`` (its process is found by its environment and stopped first, if it
  outlived the engine), ``interrupted``, ``failed`` or ``pending`` is run again in the same directory,
  where ``vit-ablate train`` resumes from ``checkpoints/last.ckpt``;
* ``stopped`` runs (hyperband ``early_terminate``) stay stopped.

Children get ``PR_SET_PDEATHSIG=SIGTERM`` (Linux), so they are told to stop when the engine dies, and
their own session, so a terminal's Ctrl-C reaches only the engine, which then stops them with SIGTERM,
waits ``grace_s`` seconds, kills what is left and marks those runs ``interrupted``.

Comparability. The manifest records a digest of the configuration the command resolves to before the
sweep's parameters (experiment files + fixed overrides). If it changes (an experiment file edited while
the sweep runs or between invocations), no further run is started: runs of one comparison must share
their recipe. Code changes are not caught here; each run's ``result.json`` records ``git_rev``.

Within one invocation a failed run is recorded (status ``failed``, with the tail of its log in the
manifest) and the sweep goes on; a process that exits without writing ``result.json`` is ``failed``.

Devices. ``--workers N`` runs N processes at once. GPU ids (``--gpus 0,1``, default: the visible
ones) are dealt to worker slots round-robin through ``CUDA_VISIBLE_DEVICES``: with more workers than
GPUs several runs share a GPU (``--workers 4 --gpus 0`` packs four small runs onto GPU 0, which one
small model would leave mostly idle); with fewer workers than GPUs each worker gets several
(``--workers 2 --gpus 0,1,2,3`` → ``0,2`` and ``1,3``, for runs that use ``trainer.devices>1``). With
more than one worker and no ``OMP_NUM_THREADS`` set, each child gets ``cpu_count // workers`` threads.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.io import FolderBusy, FolderLock, atomic_write_json, atomic_write_text, remove_stale_temporaries
from vit_ablate.sweep import engine
from vit_ablate.sweep.engine import SweepSpec
from vit_ablate.sweep.summary import SweepSummary, summarize

RUN_DIR_ENV = rundir.RUN_DIR_ENV
MARKER_ENV = "VIT_ABLATE_SWEEP_RUN"  # every child carries it: finds a run's processes after a crash
FINAL = rundir.FINAL_STATUSES
MANIFEST = "sweep.json"
# Keys of the sweep file that may change between invocations of the same sweep (the others define it).
_MUTABLE_KEYS = ("run_cap", "early_terminate", "metric", "description", "name", "project", "entity")


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _log(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------- launchers
class LocalLauncher:
    """How the local backend names, places and starts a run."""

    kind = "local"
    strip_env = ("WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH", RUN_DIR_ENV)

    def sweep_dir(self, spec: SweepSpec, output_dir: Path) -> Path:
        return Path(output_dir) / spec.name

    def template(self, spec: SweepSpec) -> List[str]:
        return spec.command

    def manifest_extra(self, spec: SweepSpec) -> Dict[str, Any]:
        return {}

    def new_entry(self, spec: SweepSpec, index: int, params: Dict[str, Any]) -> Dict[str, Any]:
        name = f"run-{index:03d}"
        return {"name": name, "dir": name, "params": params, "status": rundir.PENDING}

    def prepare(self, spec: SweepSpec, template: List[str], entry: Mapping[str, Any], run_dir: Path) -> Tuple[List[str], Dict[str, str]]:
        """The argv and the environment variables to add."""
        json_file = run_dir / "args.json"
        argv = engine.expand_command(template, entry["params"], spec.config.get("program"), str(json_file))
        if "${args_json_file}" in [str(c) for c in template]:
            atomic_write_text(json_file, json.dumps(dict(entry["params"])))
        return argv, {RUN_DIR_ENV: str(run_dir.resolve())}


# ---------------------------------------------------------------------------------------- processes
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def _child_setup(parent: int) -> None:
    """Runs in the child between fork and exec: die (SIGTERM) with the engine."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the engine died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)


def find_processes(marker: str) -> List[int]:
    """PIDs of this user's processes whose environment holds ``VIT_ABLATE_SWEEP_RUN=<marker>`` (Linux)."""
    wanted = f"{MARKER_ENV}={marker}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if wanted in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def stop_orphans(marker: str, grace_s: float) -> List[int]:
    """Stop processes left by a previous engine for one run: SIGTERM, then SIGKILL after ``grace_s``."""
    pids = find_processes(marker)
    if not pids:
        return []
    for pid in pids:
        try:
            if os.getpgid(pid) == pid:  # the run's main process (session leader); its workers follow it
                os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    return pids


def detect_gpus() -> List[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``'s count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU ")]


def gpu_slots(workers: int, gpus: Optional[str]) -> List[Optional[str]]:
    """``CUDA_VISIBLE_DEVICES`` for each worker slot (``None``: leave it alone, no GPU)."""
    if gpus is None:
        ids = detect_gpus()
    elif str(gpus).strip().lower() in ("", "none", "cpu"):
        ids = []
    else:
        ids = [g.strip() for g in str(gpus).split(",") if g.strip()]
    if not ids:
        return [None] * workers
    if workers >= len(ids):
        return [ids[k % len(ids)] for k in range(workers)]
    return [",".join(ids[k::workers]) for k in range(workers)]


@dataclass
class _Active:
    entry: Dict[str, Any]
    proc: subprocess.Popen
    run_dir: Path
    slot: int
    started: float
    log: Any
    log_offset: int
    result_before: Optional[Tuple[int, int]]
    stop_reason: Optional[str] = None  # "hyperband" | "shutdown"
    term_sent_at: Optional[float] = None
    killed: bool = False


def _stat(path: Path) -> Optional[Tuple[int, int]]:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


def _tail(path: Path, offset: int, lines: int = 30, chars: int = 4000) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-chars:]


def check_run_dirs(manifest: Mapping[str, Any], path: Path) -> None:
    """Every run's ``dir`` is one folder inside the sweep folder: a manifest edited (or crafted) to
    point elsewhere is refused before anything is read, stopped or written there."""
    runs = manifest.get("runs")
    if not isinstance(runs, list):
        raise ConfigError(f"{path}: 'runs' is not a list; move the manifest away to start over")
    for entry in runs:
        name = entry.get("dir") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not engine.is_folder_name(name):
            raise ConfigError(
                f"{path}: run {entry.get('name') if isinstance(entry, dict) else entry!r} has dir={name!r}, which is not "
                "a folder inside the sweep folder; fix or move the manifest away to start over"
            )


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------------- runner
class SweepRunner:
    """One invocation of a sweep. ``run()`` returns the ``SweepSummary``."""

    def __init__(
        self,
        spec: SweepSpec,
        output_dir: str | os.PathLike = "runs",
        workers: int = 1,
        count: Optional[int] = None,
        gpus: Optional[str] = None,
        launcher: Optional[LocalLauncher] = None,
        notes: Sequence[str] = (),
        poll_s: float = 0.5,
        grace_s: float = 30.0,
        early_terminate_every_s: float = 2.0,
    ):
        if workers < 1:
            raise ConfigError(f"--workers {workers}: must be at least 1")
        if count is not None and count < 1:
            raise ConfigError(f"--count {count}: must be at least 1")
        self.spec = spec
        self.launcher = launcher or LocalLauncher()
        self.output_dir = Path(output_dir)
        self.sweep_dir = self.launcher.sweep_dir(spec, self.output_dir)
        self.template = self.launcher.template(spec)
        self.workers = workers
        self.count = count
        self.slots = gpu_slots(workers, gpus)
        self.notes = list(notes)
        self.poll_s = poll_s
        self.grace_s = grace_s
        self.early_terminate_every_s = early_terminate_every_s
        self.metric = spec.metric["name"]
        self.manifest: Dict[str, Any] = {}
        self.active: Dict[str, _Active] = {}
        self.queue: List[Dict[str, Any]] = []
        self.handled: set = set()  # names started (or settled) in this invocation
        self.launched = 0
        self.exhausted = False
        self._signals: List[int] = []
        self.halt: Optional[str] = None  # why no further run may start (the experiment changed)
        self.base_digest: Optional[str] = None
        self._lock_handle: Optional[FolderLock] = None
        self._started = time.time()
        self._last_save = self._started
        self._last_early_check = 0.0

    # ------------------------------------------------------------------------------ manifest
    def save(self) -> None:
        now_t = time.time()
        self.manifest["updated_at"] = now()
        self.manifest["wall_time_s"] = round(self._previous_wall + (now_t - self._started), 1)
        atomic_write_json(self.sweep_dir / MANIFEST, self.manifest)
        self._last_save = now_t

    def _open_manifest(self) -> None:
        path = self.sweep_dir / MANIFEST
        spec = self.spec
        fresh = {
            "sweep": spec.name,
            "file": str(spec.path),
            "backend": self.launcher.kind,
            "config": spec.config,
            "command": self.template,
            "overrides": list(spec.overrides),
            "reference": spec.references,
            "baseline": spec.baseline,
            **self.launcher.manifest_extra(spec),
        }
        self.base_digest = engine.base_config_digest(spec, self.template)
        fresh["base_config_digest"] = self.base_digest
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: cannot read the sweep manifest ({exc}); move it away to start over") from None
            self._check_same_sweep(manifest, fresh, path)
            check_run_dirs(manifest, path)
            started = [r["name"] for r in manifest.get("runs") or [] if r.get("attempts") or r.get("status") in FINAL]
            old = manifest.get("base_config_digest")
            if started and old and old != self.base_digest:
                raise ConfigError(
                    f"{path}: {self._base_changed_message()} since {len(started)} of its runs started; they would "
                    "not be comparable with new ones. Restore it, or start a new sweep (another `name:` or --output-dir)"
                )
            manifest.update({k: v for k, v in fresh.items() if k not in ("backend",)})
        else:
            manifest = {**fresh, "created_at": now(), "runs": [], "invocations": []}
        self._previous_wall = float(manifest.get("wall_time_s") or 0.0)
        manifest.setdefault("invocations", []).append(
            {"started_at": now(), "pid": os.getpid(), "workers": self.workers, "count": self.count,
             "gpus": [s for s in self.slots], "host": os.uname().nodename if hasattr(os, "uname") else None}
        )
        self.manifest = manifest
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.sweep_dir / spec.path.name, spec.text)
        self.save()

    def _base_changed_message(self) -> str:
        files = [c for c in self.template if str(c).endswith((".yaml", ".yml"))]
        return f"the configuration the command resolves to ({', '.join(files) or 'its experiment files'} + its overrides) changed"

    def _check_same_sweep(self, manifest: Mapping[str, Any], fresh: Mapping[str, Any], path: Path) -> None:
        old_config = {k: v for k, v in (manifest.get("config") or {}).items() if k not in _MUTABLE_KEYS}
        new_config = {k: v for k, v in fresh["config"].items() if k not in _MUTABLE_KEYS}
        differences = []
        if _normalised(old_config) != _normalised(new_config):
            keys = sorted(k for k in set(old_config) | set(new_config) if _normalised(old_config.get(k)) != _normalised(new_config.get(k)))
            differences.append("sweep file keys " + ", ".join(keys))
        if _normalised(manifest.get("command")) != _normalised(fresh["command"]):
            differences.append(f"command {manifest.get('command')} → {fresh['command']} (CLI overrides are part of it)")
        if manifest.get("backend", self.launcher.kind) != self.launcher.kind:
            differences.append(f"backend {manifest.get('backend')} → {self.launcher.kind}")
        if differences:
            raise ConfigError(
                f"{path} belongs to a different sweep ({'; '.join(differences)}). Finished runs are never "
                "overwritten: give the sweep another `name:`, use another --output-dir, or move that directory away"
            )

    # ------------------------------------------------------------------------------ lock
    def _lock(self) -> None:
        try:
            self._lock_handle = FolderLock(self.sweep_dir).acquire()
        except FolderBusy as exc:
            raise ConfigError(f"sweep {self.spec.name!r} in {self.sweep_dir} is already being run (by pid {exc.holder})") from None
        remove_stale_temporaries(self.sweep_dir)  # a killed engine's half-written manifest

    def _unlock(self) -> None:
        if self._lock_handle is not None:
            self._lock_handle.release()  # removes .lock: a finished sweep leaves none behind
            self._lock_handle = None

    def run_dir(self, entry: Mapping[str, Any]) -> Path:
        return self.sweep_dir / entry["dir"]

    # ------------------------------------------------------------------------------ reconcile
    def _reconcile(self) -> None:
        """Statuses from the run directories; stop processes a killed engine left behind."""
        for entry in self.manifest["runs"]:
            run_dir = self.sweep_dir / entry["dir"]
            status = entry.get("status", rundir.PENDING)
            if status == rundir.RUNNING or entry.get("pid"):
                stopped = stop_orphans(str(run_dir.resolve()), self.grace_s)
                if stopped:
                    _log(f"{entry['name']}: stopped {len(stopped)} process(es) a previous engine left running")
            result = engine.read_result(run_dir)
            if result and result.get("status") in FINAL:
                self._apply_result(entry, result)
                entry["status"] = result["status"]
            elif status in FINAL:
                entry["status"] = rundir.PENDING
                entry["note"] = f"manifest said {status} but {run_dir}/{rundir.RESULT_FILE} does not: run again"
            elif status == rundir.RUNNING:
                entry["status"] = rundir.INTERRUPTED
                entry["error"] = "the sweep engine stopped while this run was running"
            entry.pop("pid", None)
            if entry["status"] not in FINAL + (rundir.STOPPED,):
                self.queue.append(entry)
        self.save()

    # ------------------------------------------------------------------------------ proposals
    def _sweep_runs(self, with_history: bool) -> List[Any]:
        return [
            engine.to_sweep_run(e, self.sweep_dir / e["dir"], self.metric, with_history=with_history)
            for e in self.manifest["runs"]
        ]

    def _next_entry(self) -> Optional[Dict[str, Any]]:
        while self.queue:
            entry = self.queue.pop(0)
            if entry["name"] not in self.handled:
                return entry
        if self.exhausted:
            return None
        runs = self.manifest["runs"]
        cap = self.spec.run_cap
        if cap is not None and len(runs) >= cap:
            self.exhausted = True
            return None
        index = len(runs)
        needs_metrics = self.spec.method == "bayes"
        params = engine.propose(self.spec.config, self._sweep_runs(with_history=needs_metrics),
                                engine.proposal_seed(self.spec.name, index))
        if params is None:
            self.exhausted = True
            return None
        entry = self.launcher.new_entry(self.spec, index, params)
        entry["proposed_at"] = now()
        runs.append(entry)
        self.save()  # persisted before anything else happens to it
        return entry

    # ------------------------------------------------------------------------------ processes
    def _free_slot(self) -> int:
        used = {a.slot for a in self.active.values()}
        return next(k for k in range(self.workers) if k not in used)

    def _launch(self, entry: Dict[str, Any]) -> None:
        if self.base_digest is not None and engine.base_config_digest(self.spec, self.template) != self.base_digest:
            self.halt = f"{self._base_changed_message()} during the sweep: no further run was started"
            _log(self.halt)
            return
        self.handled.add(entry["name"])
        self.launched += 1
        error = engine.check_run_params(self.spec, entry["params"], self.template)
        if error:
            entry.update(status=rundir.FAILED, error=error, ended_at=now())
            self.save()
            _log(f"{entry['name']} failed before starting: {error}")
            return
        run_dir = self.sweep_dir / entry["dir"]
        run_dir.mkdir(parents=True, exist_ok=True)
        argv, extra_env = self.launcher.prepare(self.spec, self.template, entry, run_dir)
        env = {k: v for k, v in os.environ.items() if k not in self.launcher.strip_env}
        env.update(extra_env)
        env[MARKER_ENV] = str(run_dir.resolve())
        bin_dir = os.path.dirname(sys.executable)
        if env.get("PATH", "").split(os.pathsep)[:1] != [bin_dir]:
            env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the engine's own vit-ablate/python
        if self.workers > 1 and "OMP_NUM_THREADS" not in os.environ:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        slot = self._free_slot()
        gpu = self.slots[slot]
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        attempt = int(entry.get("attempts", 0)) + 1
        log = open(run_dir / "train.log", "ab")
        header = f"==== sweep {self.spec.name} {entry['name']} attempt {attempt} at {now()}: {' '.join(argv)}\n"
        log.write(header.encode())
        log.flush()
        offset = log.tell()
        entry.update(status=rundir.RUNNING, attempts=attempt, started_at=now(), argv=argv, gpu=gpu, pid=None)
        for key in ("error", "log_tail", "exit_code", "ended_at", "note"):
            entry.pop(key, None)
        self.save()  # "running" before the process exists: a crash from here on reruns it
        result_before = _stat(rundir.RunDir(run_dir).result)
        parent = os.getpid()
        try:
            proc = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=lambda: _child_setup(parent),
            )
        except OSError as exc:
            log.close()
            entry.update(status=rundir.FAILED, error=f"cannot start {argv[0]!r}: {exc}", ended_at=now())
            self.save()
            _log(f"{entry['name']} failed to start: {exc}")
            return
        entry["pid"] = proc.pid
        self.save()
        self.active[entry["name"]] = _Active(entry, proc, run_dir, slot, time.time(), log, offset, result_before)
        params = " ".join(f"{k}={v}" for k, v in entry["params"].items())
        _log(f"{entry['name']} started (pid {proc.pid}{', GPU ' + gpu if gpu else ''}): {params}")

    def _apply_result(self, entry: Dict[str, Any], result: Mapping[str, Any]) -> None:
        metrics: Dict[str, Any] = {}
        for section in ("final", "test"):
            metrics.update({k: v for k, v in (result.get(section) or {}).items() if isinstance(v, (int, float))})
        if result.get("best"):
            metrics["best/" + self.metric] = (result["best"] or {}).get(self.metric)
        entry["metrics"] = metrics
        if result.get("wall_time_s") is not None:
            entry["train_wall_time_s"] = result["wall_time_s"]

    def _finish(self, active: _Active, code: int) -> None:
        entry = active.entry
        active.log.close()
        del self.active[entry["name"]]
        run_dir = active.run_dir
        changed = _stat(rundir.RunDir(run_dir).result) != active.result_before
        result = engine.read_result(run_dir) if changed else None
        elapsed = time.time() - active.started
        entry["wall_time_s"] = round(float(entry.get("wall_time_s") or 0.0) + elapsed, 1)
        entry.update(exit_code=code, ended_at=now())
        entry.pop("pid", None)
        if result:
            self._apply_result(entry, result)
        if active.stop_reason == "hyperband":
            status, error = rundir.STOPPED, "stopped early by hyperband (early_terminate)"
        elif result and result.get("status") in FINAL:
            status, error = result["status"], result.get("error")
        elif active.stop_reason == "shutdown":
            status, error = rundir.INTERRUPTED, "the sweep was interrupted"
        elif result and result.get("status") in rundir.RETRIED_STATUSES:
            status, error = result["status"], result.get("error")
        else:
            status = rundir.FAILED
            error = f"exited with code {code} without writing {rundir.RESULT_FILE}"
        entry["status"] = status
        if error:
            entry["error"] = str(error)[-4000:]
        if status not in FINAL:
            entry["log_tail"] = _tail(run_dir / "train.log", active.log_offset)
        self.save()
        value = (entry.get("metrics") or {}).get(self.metric)
        shown = f" {self.metric}={value:.4f}" if isinstance(value, (int, float)) else ""
        _log(f"{entry['name']} {status}{shown} after {elapsed:.1f}s" + (f": {str(error).splitlines()[-1] if error else ''}" if status == rundir.FAILED else ""))

    def _terminate(self, active: _Active, reason: str) -> None:
        if active.stop_reason is None:
            active.stop_reason = reason
        if active.term_sent_at is None:
            active.term_sent_at = time.time()
            try:
                active.proc.send_signal(signal.SIGTERM)
            except OSError:
                pass

    def _kill(self, active: _Active) -> None:
        if active.killed:
            return
        active.killed = True
        try:
            os.killpg(active.proc.pid, signal.SIGKILL)
        except OSError:
            try:
                active.proc.kill()
            except OSError:
                pass

    def _reap(self) -> None:
        for active in list(self.active.values()):
            code = active.proc.poll()
            if code is not None:
                try:  # the run's own children (data loader workers) go with it
                    os.killpg(active.proc.pid, signal.SIGKILL)
                except OSError:
                    pass
                self._finish(active, code)
            elif active.term_sent_at is not None and time.time() - active.term_sent_at > self.grace_s:
                self._kill(active)

    def _early_terminate(self) -> None:
        if not self.spec.config.get("early_terminate") or not self.active:
            return
        if time.time() - self._last_early_check < self.early_terminate_every_s:
            return
        self._last_early_check = time.time()
        try:
            names = engine.runs_to_stop(self.spec.config, self._sweep_runs(with_history=True))
        except ValueError as exc:
            _log(f"early_terminate: {exc}")
            return
        for name in names:
            active = self.active.get(name)
            if active is not None and active.stop_reason is None:
                _log(f"{name}: hyperband stops it")
                self._terminate(active, "hyperband")

    # ------------------------------------------------------------------------------ signals
    def _on_signal(self, signum, frame) -> None:  # noqa: ARG002
        self._signals.append(signum)

    def _install_signals(self) -> Dict[int, Any]:
        previous: Dict[int, Any] = {}
        if threading.current_thread() is not threading.main_thread():
            return previous
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    # ------------------------------------------------------------------------------ main loop
    def _may_launch(self) -> bool:
        return not self._signals and not self.halt and (self.count is None or self.launched < self.count)

    def _loop(self) -> None:
        while True:
            self._reap()
            if self._signals:
                if len(self._signals) == 1 and not any(a.stop_reason == "shutdown" for a in self.active.values()):
                    if self.active:
                        _log(f"signal {self._signals[0]}: stopping {len(self.active)} run(s) (again to kill them)")
                for active in self.active.values():
                    self._terminate(active, "shutdown")
                    if len(self._signals) > 1:
                        self._kill(active)
                if not self.active:
                    return
            else:
                self._early_terminate()
                while len(self.active) < self.workers and self._may_launch():
                    entry = self._next_entry()
                    if entry is None:
                        break
                    self._launch(entry)
                if not self.active and (not self._may_launch() or (self.exhausted and not self.queue)):
                    return
            if time.time() - self._last_save > 30:
                self.save()  # keeps wall_time_s current
            time.sleep(self.poll_s)

    def run(self) -> SweepSummary:
        self._lock()
        previous = {}
        try:
            self._open_manifest()
            self._reconcile()
            total = engine.grid_size(self.spec.config)
            done = sum(1 for e in self.manifest["runs"] if e.get("status") in FINAL + (rundir.STOPPED,))
            _log(
                f"sweep {self.spec.name}: {self.spec.method}"
                + (f", {total} runs" if total is not None else "")
                + f", {done} finished, {len(self.queue)} to resume; {self.workers} worker(s)"
                + (f", GPUs {self.slots}" if any(self.slots) else "")
                + f" → {self.sweep_dir}"
            )
            previous = self._install_signals()
            self._loop()
        finally:
            interrupted = bool(self._signals)
            if self.active:  # an exception in the engine itself: do not leave runs behind
                for active in list(self.active.values()):
                    self._terminate(active, "shutdown")
                deadline = time.time() + self.grace_s
                while self.active and time.time() < deadline:
                    self._reap()
                    time.sleep(0.2)
                for active in list(self.active.values()):
                    self._kill(active)
                    active.proc.wait()
                    self._finish(active, active.proc.returncode)
                interrupted = True
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.manifest:
                self.manifest["invocations"][-1]["ended_at"] = now()
                self.manifest["invocations"][-1]["interrupted"] = interrupted
                self.save()
            self._unlock()
        return summarize(self.manifest, self.sweep_dir, time.time() - self._started, interrupted=interrupted,
                         notes=self.notes, metric=self.metric, error=self.halt)
