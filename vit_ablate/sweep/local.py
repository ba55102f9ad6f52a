"""Run a sweep on this machine: proposals from ``engine``, each run a subprocess of the file's command.

    <output_dir>/<sweep>/sweep.json     the proposals, in order, and the invocations (docs/CONTRACTS.md)
    <output_dir>/<sweep>/<file>.yaml    a copy of the sweep file (the report reads its header comments)
    <output_dir>/<sweep>/run-000/       one run directory per proposal; train.log holds its output

A run is the sweep file's ``command`` expanded as ``wandb agent`` expands it, with
``VIT_ABLATE_RUN_DIR=<sweep dir>/<run>`` added to its environment, so it runs the argv the W&B agent
would. Its status is its ``result.json``'s; for a process that ends without writing one the runner
writes one (``failed`` with the log's tail, or ``interrupted`` when the sweep stopped it), and for a
run that hyperband stopped, ``stopped``. A proposal is saved before its run starts, so rerunning the
same command resumes: completed, diverged and stopped runs are kept, the others start again in their
directory, where ``vit-ablate train`` resumes from its last checkpoint.

Children get ``PR_SET_PDEATHSIG=SIGTERM`` (Linux), so they stop when the engine dies, and their own
session, so a terminal's Ctrl-C reaches only the engine, which stops them with SIGTERM, waits
``grace_s`` seconds and kills what is left. A process that outlived a killed engine still holds its
run directory's lock, which keeps a second ``vit-ablate train`` out of that directory.

When the configuration the command resolves to before the sweep's parameters (experiment files +
fixed overrides) changes, no further run starts: runs of one comparison share their recipe.
GPU ids (``--gpus 0,1``, default: the visible ones) are dealt to the ``--workers`` slots round-robin:
``--workers 4 --gpus 0`` packs four runs onto GPU 0, ``--workers 2 --gpus 0,1,2,3`` gives each run two.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
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
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.io import FolderBusy, FolderLock, atomic_write_json, atomic_write_text, remove_stale_temporaries
from vit_ablate.sweep import engine
from vit_ablate.sweep.engine import SweepSpec
from vit_ablate.sweep.summary import (MANIFEST, SweepSummary, attempt_footer, attempt_header, describe_run, log_tail,
                                      now, read_attempts, summarize)

# Set by a W&B agent or an outer sweep for its own run: a run of this sweep must not inherit them.
NOT_INHERITED = (rundir.RUN_DIR_ENV, "WANDB_RUN_ID", "WANDB_SWEEP_ID", "WANDB_SWEEP_PARAM_PATH")
KEPT = rundir.FINAL_STATUSES + (rundir.STOPPED,)  # what a rerun does not start again
PROPOSAL_KEYS = ("name", "dir", "params", "proposed_at", "run_id")  # what sweep.json holds of a run
# Keys of the sweep file that may change between invocations of the same sweep (the others define it).
HYPERBAND_STOP = "stopped early by hyperband (early_terminate)"
MUTABLE_KEYS = ("run_cap", "early_terminate", "metric", "description", "name", "project", "entity")


def _log(message: str) -> None:
    print(f"[sweep] {message}", file=sys.stderr, flush=True)


class LocalLauncher:
    """How the local backend names, places and starts a run."""

    kind = "local"

    def __init__(self, spec: SweepSpec, output_dir: str | os.PathLike):
        self.spec = spec
        self.sweep_dir = Path(output_dir) / spec.name
        self.template = spec.command
        self.manifest_extra: Dict[str, Any] = {}

    def new_entry(self, index: int, params: Dict[str, Any]) -> Dict[str, Any]:
        return {"name": f"run-{index:03d}", "dir": f"run-{index:03d}", "params": params}

    def prepare(self, entry: Mapping[str, Any], run_dir: Path) -> Tuple[List[str], Dict[str, str]]:
        """The argv and the environment variables to add."""
        json_file = run_dir / rundir.ARGS_FILE
        if "${args_json_file}" in map(str, self.template):
            atomic_write_text(json_file, json.dumps(dict(entry["params"])))
        argv = engine.expand_command(self.template, entry["params"], self.spec.config.get("program"), str(json_file))
        return argv, {rundir.RUN_DIR_ENV: str(run_dir.resolve())}


# ---------------------------------------------------------------------------------------- processes
_PR_SET_PDEATHSIG = 1
try:
    _LIBC = ctypes.CDLL("libc.so.6", use_errno=True) if sys.platform.startswith("linux") else None
except OSError:  # pragma: no cover
    _LIBC = None


def _child_setup(parent: int, header: Callable[[int], str]) -> None:
    """Runs in the child between fork and exec: the attempt's header, with the child's own pid, as the
    first line of its output; SIGTERM when the engine dies (PR_SET_PDEATHSIG)."""
    # The engine's own SIGTERM/SIGINT handlers only note a signal, and exec would then drop it: the
    # defaults make a signal that arrives before exec end the child.
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(ValueError):  # Popen called off the main thread: its handlers are the defaults
            signal.signal(signum, signal.SIG_DFL)
    os.write(1, header(os.getpid()).encode())
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the engine died before prctl took effect
            os._exit(128 + signal.SIGTERM)


def detect_gpus() -> List[str]:
    """GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi -L``'s count."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [v.strip() for v in visible.split(",") if v.strip() and v.strip() != "-1"]
    return list(_nvidia_smi_gpus())


@functools.lru_cache(maxsize=1)
def _nvidia_smi_gpus() -> Tuple[str, ...]:
    """Asked once per process (the CLI's default --workers and the runner both need it)."""
    smi = shutil.which("nvidia-smi")
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout if smi else ""
    except (OSError, subprocess.SubprocessError):
        out = ""
    return tuple(str(i) for i, line in enumerate(out.splitlines()) if line.startswith("GPU "))


def gpu_slots(workers: int, gpus: Optional[str]) -> List[Optional[str]]:
    """``CUDA_VISIBLE_DEVICES`` for each worker slot (``None``: leave it alone, no GPU)."""
    if gpus is None:
        ids = detect_gpus()
    else:
        ids = [] if str(gpus).strip().lower() in ("", "none", "cpu") else [g.strip() for g in str(gpus).split(",") if g.strip()]
    if not ids:
        return [None] * workers
    if workers >= len(ids):
        return [ids[k % len(ids)] for k in range(workers)]
    return [",".join(ids[k::workers]) for k in range(workers)]


def runner_record(result: Mapping[str, Any], wrote: bool, stop_reason: Optional[str], code: int,
                  tail: Callable[[], str]) -> Optional[Dict[str, Any]]:
    """What the runner writes as result.json when a run's process has ended, or ``None`` to keep what
    is there. ``result``: the run's result.json now; ``wrote``: whether this attempt wrote it. Only a
    result that says nothing final is replaced: a completed or diverged run stays so, whoever wrote it
    and whenever (hyperband may pick a run during its test phase)."""
    if result.get("status") in rundir.FINAL_STATUSES:
        return None
    if stop_reason == "hyperband":
        return {**result, "status": rundir.STOPPED, "error": HYPERBAND_STOP}
    if wrote and result.get("status") in rundir.RESULT_STATUSES:
        return None
    if stop_reason == "shutdown":
        return {"status": rundir.INTERRUPTED, "error": "the sweep was interrupted"}
    return {"status": rundir.FAILED, "error": f"exited with code {code} without writing {rundir.RESULT_FILE}", "log_tail": tail()}


def _oversubscription(workers: int, slots: List[Optional[str]]) -> Optional[str]:
    """A warning when OMP_NUM_THREADS (which the runner then leaves alone) gives CPU runs more threads
    together than the machine has cores: OpenMP threads that wait on each other spin, so such runs
    are several times slower than one run per core, not a little."""
    threads, cores = os.environ.get("OMP_NUM_THREADS", ""), os.cpu_count() or 1
    if workers < 2 or any(slots) or not threads.isdigit() or workers * int(threads) <= cores:
        return None
    return (f"OMP_NUM_THREADS={threads} for each of {workers} workers is {workers * int(threads)} threads on {cores} "
            f"cores: the runs compete for cores; unset OMP_NUM_THREADS and the runner gives each run {max(1, cores // workers)}")


@contextlib.contextmanager
def signals_caught(received: List[int]) -> Iterator[None]:
    """SIGINT and SIGTERM are appended to ``received`` instead of ending the engine (main thread only)."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def check_run_dirs(manifest: Mapping[str, Any], path: Path) -> None:
    """Every run's ``dir`` is one folder inside the sweep folder: a manifest edited (or crafted) to
    point elsewhere is refused before anything is read or written there."""
    if not isinstance(manifest.get("runs"), list):
        raise ConfigError(f"{path}: 'runs' is not a list; move the manifest away to start over")
    for entry in manifest["runs"]:
        name = entry.get("dir") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in ("", ".", "..") or any(c in name for c in "/\\\0"):
            raise ConfigError(
                f"{path}: run {entry.get('name') if isinstance(entry, dict) else entry!r} has dir={name!r}, which is not "
                "a folder inside the sweep folder; fix or move the manifest away to start over")


def _on_its_own_line(log: Path, line: str) -> bytes:
    """``line`` as bytes, after a newline when the run's output did not end with one (a killed
    process's last line): the frame lines must start a line to be read back."""
    try:
        with open(log, "rb") as handle:
            handle.seek(-1, os.SEEK_END)
            ends_a_line = handle.read(1) == b"\n"
    except OSError:  # empty or missing: nothing to end
        ends_a_line = True
    return (line if ends_a_line else "\n" + line).encode()


def _canonical_seed(entry: Mapping[str, Any]) -> str:
    """A proposal's seed in the canonical spelling a plan's stages use."""
    from vit_ablate.report.references import canon

    return canon((entry.get("params") or {}).get("seed"))


def _normalised(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _stat(path: Path) -> Optional[Tuple[int, int]]:
    try:
        return path.stat().st_mtime_ns, path.stat().st_size
    except OSError:
        return None


@dataclass
class _Active:
    """A run's process in this invocation."""

    entry: Dict[str, Any]
    paths: rundir.RunDir
    slot: int
    log: Any  # train.log, open for appending
    output_offset: int  # where this attempt starts in train.log
    result_before: Optional[Tuple[int, int]]  # result.json's mtime and size before the attempt
    started: float
    proc: Any = None
    stop_reason: Optional[str] = None  # "hyperband" | "shutdown"
    term_sent_at: Optional[float] = None
    killed: bool = False


# ------------------------------------------------------------------------------------------- runner
class SweepRunner:
    """One invocation of a sweep. ``run()`` returns the ``SweepSummary``."""

    def __init__(self, spec: SweepSpec, output_dir: str | os.PathLike = "runs", workers: int = 1,
                 count: Optional[int] = None, gpus: Optional[str] = None, launcher: Optional[LocalLauncher] = None,
                 notes=(), poll_s: float = 0.5, grace_s: float = 30.0, early_terminate_every_s: float = 2.0):
        self.spec, self.metric, self.notes = spec, spec.metric, list(notes)
        self.launcher = launcher or LocalLauncher(spec, output_dir)
        self.sweep_dir, self.template = self.launcher.sweep_dir, self.launcher.template
        self.workers, self.count, self.slots = workers, count, gpu_slots(workers, gpus)
        self.poll_s, self.grace_s, self.early_terminate_every_s = poll_s, grace_s, early_terminate_every_s
        self.manifest: Dict[str, Any] = {}
        self.active: Dict[str, _Active] = {}
        self.queue: List[Dict[str, Any]] = []  # runs of earlier invocations to start again
        self.launched = 0
        self.exhausted = False  # no more proposals (grid done, or run_cap reached)
        self.signals: List[int] = []
        self.halt: Optional[str] = None  # why no further run may start (the experiment changed)
        self.base_digest: Optional[str] = None
        self.stage = 0  # with a sequential plan: the stage whose seeds may run (0-based)
        self.looked = 0  # looks logged so far
        self.decided = False  # the plan ended the sweep
        self.plan_state = ""  # its verdict so far, for the summary
        self._started = time.time()
        self._last_early_check = 0.0

    def run_dir(self, entry: Mapping[str, Any]) -> Path:
        return self.sweep_dir / entry["dir"]

    def _status(self, entry: Mapping[str, Any]) -> Optional[str]:
        if entry["name"] in self.active:
            return rundir.RUNNING
        return (rundir.read_result(self.run_dir(entry)) or {}).get("status", rundir.PENDING)

    # ------------------------------------------------------------------------------ manifest
    def save(self) -> None:
        atomic_write_json(self.sweep_dir / MANIFEST, self.manifest)

    def _open_manifest(self) -> None:
        path, spec = self.sweep_dir / MANIFEST, self.spec
        fresh = {"sweep": spec.name, "file": str(spec.path), "backend": self.launcher.kind, "config": spec.config,
                 "command": self.template, "overrides": list(spec.overrides), "reference": spec.references,
                 "baseline": spec.baseline, **self.launcher.manifest_extra}
        self.base_digest = fresh["base_config_digest"] = engine.base_config_digest(spec, self.template)
        if path.exists():
            try:
                manifest = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{path}: cannot read the sweep manifest ({exc}); move it away to start over") from None
            self._check_same_sweep(manifest, fresh, path)
            check_run_dirs(manifest, path)
            started = [entry for entry in manifest["runs"] if self.run_dir(entry).is_dir()]
            if started and manifest.get("base_config_digest") not in (None, self.base_digest):
                raise ConfigError(
                    f"{path}: {self._base_changed_message()} since {len(started)} of its runs started; they would "
                    "not be comparable with new ones. Restore it, or start a new sweep (another `name:` or --output-dir)")
            manifest.update(fresh)
            # Older versions kept statuses here; hyperband's stop existed only here, so it moves to result.json.
            for entry in manifest["runs"]:
                if entry.get("status") == rundir.STOPPED and self.run_dir(entry).is_dir() and self._status(entry) not in KEPT:
                    rundir.write_result(self.run_dir(entry), {**(rundir.read_result(self.run_dir(entry)) or {}),
                                                              "status": rundir.STOPPED, "error": HYPERBAND_STOP})
            manifest["runs"] = [{k: entry[k] for k in PROPOSAL_KEYS if k in entry} for entry in manifest["runs"]]
        else:
            manifest = {**fresh, "created_at": now(), "runs": [], "invocations": []}
        manifest.setdefault("invocations", []).append(
            {"started_at": now(), "pid": os.getpid(), "workers": self.workers, "count": self.count, "gpus": self.slots,
             "host": os.uname().nodename if hasattr(os, "uname") else None})
        self.manifest = manifest
        atomic_write_text(self.sweep_dir / spec.path.name, spec.text)
        self.save()
        self.queue = [entry for entry in manifest["runs"] if self._status(entry) not in KEPT]

    def _base_changed_message(self) -> str:
        files = [c for c in self.template if str(c).endswith((".yaml", ".yml"))]
        return f"the configuration the command resolves to ({', '.join(files) or 'its experiment files'} + its overrides) changed"

    def _check_same_sweep(self, manifest: Mapping[str, Any], fresh: Mapping[str, Any], path: Path) -> None:
        old = {k: v for k, v in (manifest.get("config") or {}).items() if k not in MUTABLE_KEYS}
        new = {k: v for k, v in fresh["config"].items() if k not in MUTABLE_KEYS}
        differences = []
        if _normalised(old) != _normalised(new):
            keys = sorted(k for k in set(old) | set(new) if _normalised(old.get(k)) != _normalised(new.get(k)))
            differences.append("sweep file keys " + ", ".join(keys))
        if _normalised(manifest.get("command")) != _normalised(fresh["command"]):
            differences.append(f"command {manifest.get('command')} → {fresh['command']} (CLI overrides are part of it)")
        if manifest.get("backend", self.launcher.kind) != self.launcher.kind:
            differences.append(f"backend {manifest.get('backend')} → {self.launcher.kind}")
        if differences:
            raise ConfigError(
                f"{path} belongs to a different sweep ({'; '.join(differences)}). Finished runs are never "
                "overwritten: give the sweep another `name:`, use another --output-dir, or move that directory away")

    # ------------------------------------------------------------------------------ proposals
    def _sweep_runs(self, with_history: bool) -> List[Any]:
        """Every proposal as the ``sweeps`` engine sees a run (status, metrics, history)."""
        return [engine.to_sweep_run({**entry, "status": self._status(entry)}, self.run_dir(entry), self.metric,
                                    with_history=with_history) for entry in self.manifest["runs"]]

    def _next_entry(self) -> Optional[Dict[str, Any]]:
        """A run of an earlier invocation to start again, else a new proposal, else ``None``."""
        while self.queue:  # re-read: a run may have finished since (by hand, or a process the engine outlived)
            entry = self.queue.pop(0)
            if self._status(entry) not in KEPT:
                return entry
        runs, cap = self.manifest["runs"], self.spec.config.get("run_cap")
        params = None
        if not self.exhausted and not (cap and len(runs) >= int(cap)):
            config = self.spec.stage_config(self.stage) if self.spec.plan else self.spec.config
            params = engine.propose(config, self._sweep_runs(with_history=self.spec.method == "bayes"),
                                    engine.proposal_seed(self.spec.name, len(runs)))
        if params is None:
            self.exhausted = True
            return None
        runs.append({**self.launcher.new_entry(len(runs), params), "proposed_at": now()})
        self.save()  # persisted before anything else happens to it
        return runs[-1]

    # ------------------------------------------------------------------------------ a sequential plan
    def _next_stage(self) -> bool:
        """Look at the stages whose runs have all ended, as the report does; True when that opens a
        further stage of the plan. A decision, or the plan's stop on failed runs, ends the sweep."""
        from vit_ablate.report.analysis import analyse
        from vit_ablate.report.runs import collect_runs

        if not self.manifest["runs"]:
            return False
        try:
            primary = analyse(*collect_runs([str(self.sweep_dir)]), metric=self.metric).primary
        except ValueError as exc:
            self.halt = f"sequential plan: no look possible ({exc})"
            _log(self.halt)
            return False
        plan = self.spec.plan
        for look in primary.looks[self.looked:]:
            _log(f"look {look.stage} of {len(plan.stages)}: {look.n} seeds, t = {look.t:+.3f} against |t| ≥ "
                 f"{look.efficacy:.3f}" + (f" (futile below {look.futility:.3f})" if look.futility is not None else "")
                 + f" → {look.decision}")
        self.looked = len(primary.looks)
        self.plan_state = primary.verdict if primary.stage_open or not primary.looks_end else f"stopped: {primary.looks_end}"
        if not primary.stage_open:
            self.decided = True
            _log(f"plan: {self.plan_state}")
            return False
        opened, self.stage = len(primary.looks) > self.stage, len(primary.looks)
        if opened:
            _log(f"stage {self.stage + 1} of {len(plan.stages)}: seeds {', '.join(plan.stages[self.stage])}")
        return opened

    def _resume_stage(self) -> None:
        """On a rerun: the stage the finished runs reach; the runs of stages already looked at are not
        started again (a look is never revised), those of the open stage are."""
        plan = self.spec.plan
        _log(f"sequential plan ({plan.where}): {plan.describe()}")
        self._next_stage()
        looked = set(plan.seeds_through(self.stage - 1)) if self.stage else set()
        if self.decided:
            self.queue, self.exhausted = [], True
        self.queue = [e for e in self.queue if _canonical_seed(e) not in looked]

    # ------------------------------------------------------------------------------ processes
    def _launch(self, entry: Dict[str, Any]) -> None:
        if self.base_digest is not None and engine.base_config_digest(self.spec, self.template) != self.base_digest:
            self.halt = f"{self._base_changed_message()} during the sweep: no further run was started"
            _log(self.halt)
            return
        self.launched += 1
        paths = rundir.RunDir(self.run_dir(entry))
        paths.path.mkdir(parents=True, exist_ok=True)
        argv, extra_env = self.launcher.prepare(entry, paths.path)
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update(extra_env)
        bin_dir = os.path.dirname(sys.executable)
        if env.get("PATH", "").split(os.pathsep)[:1] != [bin_dir]:
            env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")  # the engine's own vit-ablate/python
        if self.workers > 1 and "OMP_NUM_THREADS" not in os.environ:  # N runs must not each take every core
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.workers))
        slot = min(set(range(self.workers)) - {a.slot for a in self.active.values()})
        gpu = self.slots[slot]
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        attempt = len(read_attempts(paths.log, self.spec.name, entry["name"])) + 1
        header = functools.partial(attempt_header, self.spec.name, entry["name"], attempt, argv=argv)
        log = open(paths.log, "ab")
        active = _Active(entry, paths, slot, log, log.seek(0, os.SEEK_END), _stat(paths.result), time.time())
        parent = os.getpid()
        try:
            active.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, preexec_fn=lambda: _child_setup(parent, header))
        except (OSError, subprocess.SubprocessError, TypeError, ValueError) as exc:  # a missing program, a bad argv
            self._end(active, None, {"status": rundir.FAILED, "error": f"cannot start {argv[0]!r}: {exc}"})
            return
        self.active[entry["name"]] = active
        params = " ".join(f"{k}={v}" for k, v in entry["params"].items())
        _log(f"{entry['name']} started (pid {active.proc.pid}{', GPU ' + gpu if gpu else ''}): {params}")

    def _finish(self, active: _Active, code: int) -> None:
        del self.active[active.entry["name"]]
        record = runner_record(rundir.read_result(active.paths.path) or {},
                               _stat(active.paths.result) != active.result_before, active.stop_reason, code,
                               lambda: log_tail(active.paths.log, active.output_offset))
        self._end(active, code, record)

    def _end(self, active: _Active, code: Optional[int], record: Optional[Dict[str, Any]]) -> None:
        """Write the runner's ``record`` of the outcome (if any) as result.json, then close the attempt."""
        elapsed = time.time() - active.started
        if record is not None:
            rundir.write_result(active.paths.path, record)
        active.log.write(_on_its_own_line(active.paths.log, attempt_footer(self.spec.name, active.entry["name"], code, elapsed)))
        active.log.close()
        result = record or rundir.read_result(active.paths.path) or {}
        error = str(result.get("error") or "").strip().splitlines()
        _log(f"{active.entry['name']} {result.get('status')} after {elapsed:.1f}s" + (f": {error[-1]}" if error else ""))

    def _terminate(self, active: _Active, reason: str) -> None:
        active.stop_reason = active.stop_reason or reason
        if active.term_sent_at is None:
            active.term_sent_at = time.time()
            with contextlib.suppress(OSError):
                active.proc.send_signal(signal.SIGTERM)

    def _kill(self, active: _Active) -> None:
        """SIGKILL to the run's whole session (its data loader workers go with it)."""
        active.killed = True
        with contextlib.suppress(OSError):
            os.killpg(active.proc.pid, signal.SIGKILL)

    def _reap(self) -> None:
        for active in list(self.active.values()):
            code = active.proc.poll()
            if code is not None:
                self._kill(active)  # what the run left behind in its session goes with it
                self._finish(active, code)
            elif active.term_sent_at is not None and time.time() - active.term_sent_at > self.grace_s and not active.killed:
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
            if name in self.active and self.active[name].stop_reason is None:
                _log(f"{name}: hyperband stops it")
                self._terminate(self.active[name], "hyperband")

    # ------------------------------------------------------------------------------ main loop
    def _may_launch(self) -> bool:
        return not self.signals and not self.halt and not self.decided and (self.count is None or self.launched < self.count)

    def _loop(self) -> None:
        while True:
            self._reap()
            if self.signals:
                if len(self.signals) == 1 and self.active and not any(a.stop_reason == "shutdown" for a in self.active.values()):
                    _log(f"signal {self.signals[0]}: stopping {len(self.active)} run(s) (again to kill them)")
                for active in self.active.values():
                    self._terminate(active, "shutdown")
                    if len(self.signals) > 1 and not active.killed:
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
                    # every ended stage is looked at, also when --count stops the sweep at a stage's end
                    if not (self.spec.plan and self._next_stage() and self._may_launch()):
                        return
                    self.exhausted = False
            time.sleep(self.poll_s)

    def run(self) -> SweepSummary:
        try:
            lock = FolderLock(self.sweep_dir).acquire()
        except FolderBusy as exc:
            raise ConfigError(f"sweep {self.spec.name!r} in {self.sweep_dir} is already being run (by pid {exc.holder})") from None
        remove_stale_temporaries(self.sweep_dir)  # a killed engine's half-written manifest
        try:
            self._open_manifest()
            if self.spec.plan:
                self._resume_stage()
            total = engine.grid_size(self.spec.config)
            _log(f"sweep {self.spec.name}: {self.spec.method}" + (f", {total} runs" if total is not None else "")
                 + f", {len(self.manifest['runs']) - len(self.queue)} finished, {len(self.queue)} to resume; "
                 + f"{self.workers} worker(s)" + (f", GPUs {self.slots}" if any(self.slots) else "") + f" → {self.sweep_dir}")
            oversubscribed = _oversubscription(self.workers, self.slots)
            if oversubscribed:
                self.notes.append(oversubscribed)
                _log(oversubscribed)
            with signals_caught(self.signals):
                self._loop()
        finally:
            if self.active:  # an exception in the engine itself: stop the runs rather than leave them behind
                self.signals.append(signal.SIGTERM)
                self._loop()
            if self.manifest:
                self.manifest["invocations"][-1].update(ended_at=now(), interrupted=bool(self.signals),
                                                        wall_time_s=round(time.time() - self._started, 1))
                self.save()
            lock.release()  # removes .lock: a finished sweep leaves none behind
        if self.spec.plan and self.plan_state:
            self.notes.append(f"sequential plan: {self.plan_state}")
        runs = [describe_run(self.sweep_dir, self.spec.name, entry, self.metric) for entry in self.manifest["runs"]]
        return summarize(self.manifest, runs, self.sweep_dir, time.time() - self._started,
                         interrupted=bool(self.signals), notes=self.notes, metric=self.metric, error=self.halt)
