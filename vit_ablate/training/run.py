"""One training run: its directory, seeds, pieces, Trainer.fit/test and ``result.json`` (docs/CONTRACTS.md).

Re-running the same command into the same directory resumes from ``checkpoints/last.ckpt``; a run whose
``result.json`` says ``completed`` or ``diverged`` is not run again; a directory that holds another
configuration, or is no run directory, is never written into.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import re
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

import vit_ablate
from vit_ablate import rundir
from vit_ablate.config import ConfigError, config_digest, experiment_digest, from_container, to_yaml
from vit_ablate.data import build_datamodule
from vit_ablate.io import FolderBusy, FolderLock, StorageError, atomic_write_text, finite_or_none, remove_stale_temporaries, storage_error
from vit_ablate.training.callbacks import DivergenceCallback, EpochRecorder, SigtermGuard, log
from vit_ablate.training.module import ViTModule, scaled_lr
from vit_ablate.training.trainer import run_trainer

FINAL_KEYS = ("val/acc1", "val/acc5", "val/loss")


# ------------------------------------------------------------------------------------ run directory
def check_run_name(name: str) -> None:
    """``name`` is one folder inside ``output_dir``: no separators, no ``..``, not absolute."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        cleaned = re.sub(r"[^A-Za-z0-9._=+,@-]+", "-", name).strip("-.") or "run"
        raise ConfigError(f"name={name!r} must be one folder name inside output_dir (no '/', '\\' or '..'); "
                          f"e.g. name={cleaned}, and output_dir= for the parent folder")


def _wandb_sweep_run() -> bool:
    return bool(os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"))


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``$VIT_ABLATE_RUN_DIR`` (set by the local sweep engine), a W&B sweep run's own folder, or
    ``output_dir/name`` with ``name`` defaulting to a digest of the experiment."""
    if os.environ.get(rundir.RUN_DIR_ENV):
        return Path(os.environ[rundir.RUN_DIR_ENV])
    if _wandb_sweep_run():
        for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID"):
            check_run_name(os.environ[key])
        return Path(cfg.output_dir) / f"sweep-{os.environ['WANDB_SWEEP_ID']}" / os.environ["WANDB_RUN_ID"]
    if cfg.name:
        check_run_name(str(cfg.name))
    return Path(cfg.output_dir) / (cfg.name or f"{cfg.data.name}-{experiment_digest(cfg)}")


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse a folder that holds a run of another experiment, or that is no run folder at all (files
    but no ``config.yaml``: a ``name=`` that points at someone's folder). Writes nothing."""
    paths = rundir.RunDir(run_dir)
    if paths.config.exists():
        try:
            saved = from_container(rundir.load_yaml(rundir.read_text(paths.config)), validate=False)
        except rundir.READ_ERRORS as exc:
            raise ConfigError(f"run directory {str(run_dir)!r} holds an unreadable {rundir.CONFIG_FILE} "
                              f"({rundir.why(exc)}); pick another `name=` (or output_dir=)") from None
        if experiment_digest(saved) != experiment_digest(cfg):
            raise ConfigError(f"run directory {str(run_dir)!r} already holds a run of a different configuration; "
                              "pick another `name=` (or output_dir=) instead of overwriting it")
        # before 0.2.0 pool=gap was timm's mean-then-LayerNorm (now gap_fc_norm): not the paper's gap
        version = str((rundir.read_result(run_dir) or {}).get("version") or "")
        if cfg.model.pool == "gap" and re.match(r"0\.[01]\.", version) and "+unknown" not in version:
            raise ConfigError(f"run directory {str(run_dir)!r} holds a model.pool=gap run of vit_ablate {version}, whose gap "
                              "was timm's mean-then-LayerNorm (model.pool=gap_fc_norm since 0.2.0), not the paper's gap "
                              "that this version runs; pick another `name=` (or output_dir=)")
        return
    # a sweep engine made this folder (and its train.log) for this run; under torchrun every rank
    # starts at once and only rank 0, which makes the folder, judges it (a refusal ends the others too)
    if os.environ.get(rundir.RUN_DIR_ENV) or _wandb_sweep_run() or rank_zero_only.rank != 0:
        return
    if run_dir.exists() and (not run_dir.is_dir() or any(e.name != rundir.LOCK_FILE for e in os.scandir(run_dir))):
        if run_dir.is_dir() and (holder := FolderLock(run_dir).holder()) is not None:
            raise _busy(run_dir, holder)  # its owner is writing config.yaml right now
        raise ConfigError(f"{str(run_dir)!r} exists and is not a run directory (a file, or a folder with files but no "
                          f"{rundir.CONFIG_FILE}); nothing was written there: pick another `name=` (or output_dir=)")


def prepare_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Create the directory and its ``config.yaml``; refuse a directory of another configuration."""
    check_run_dir(run_dir, cfg)
    paths = rundir.RunDir(run_dir)
    if rank_zero_only.rank == 0 and not paths.config.exists():
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config, to_yaml(cfg))


def finished_result(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The ``result.json`` of a run that is not to be run again, else None."""
    previous = rundir.read_result(run_dir)
    if previous is None or previous.get("status") not in rundir.FINAL_STATUSES:
        return None
    log(f"{run_dir} already finished ({previous['status']}); nothing to do")
    return previous


def _busy(run_dir: Path, holder: str) -> ConfigError:
    return ConfigError(f"run directory {str(run_dir)!r} is being trained by another process (pid {holder}); "
                       "wait for it to end, or stop it and run this command again to resume")


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``<run_dir>/.lock`` (rank 0 only: the other DDP ranks are its own children)."""
    if rank_zero_only.rank != 0:
        yield
        return
    lock = FolderLock(run_dir)
    try:
        lock.acquire()
    except FolderBusy as exc:
        raise _busy(run_dir, exc.holder) from None
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {str(run_dir)!r}: {exc.strerror or exc}") from None
    try:
        for folder in (run_dir, rundir.RunDir(run_dir).checkpoints, run_dir / "ranks"):
            remove_stale_temporaries(folder)  # left by a killed writer; nobody else writes here now
        yield
    finally:
        lock.release()


def resume_checkpoint(run_dir: Path) -> Optional[str]:
    """The newest checkpoint to resume from: ``last.ckpt`` (every epoch end) or a SLURM requeue's
    ``hpc_ckpt_N.ckpt`` (Lightning writes one on SIGUSR1 before the job is requeued)."""
    existing = [p for p in (rundir.RunDir(run_dir).last_checkpoint, *run_dir.glob("hpc_ckpt_*.ckpt")) if p.exists()]
    return str(max(existing, key=lambda path: path.stat().st_mtime_ns)) if existing else None


# ------------------------------------------------------------------------------------ checks
def git_revision() -> Optional[str]:
    try:
        root = Path(vit_ablate.__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def open_data(cfg: DictConfig):
    """The data module, its files found and readable and its shapes the model's: a missing or corrupt
    dataset is a ``ConfigError`` naming the path and the fix, raised before the run directory exists."""
    try:
        datamodule = build_datamodule(cfg)
        datamodule.check_available()
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    for key in ("num_classes", "img_size", "in_chans"):
        if cfg.model[key] != getattr(datamodule, key):
            raise ConfigError(f"model.{key}={cfg.model[key]} but data '{cfg.data.name}' gives "
                              f"{getattr(datamodule, key)}; set model.{key}={getattr(datamodule, key)}")
    return datamodule


def storage_problem(exc: BaseException) -> Optional[str]:
    """One line for a full, read-only or unwritable disk, naming the file; None for other errors."""
    if isinstance(exc, StorageError) or (isinstance(exc, OSError) and exc.errno in (
            errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)):
        error = storage_error(exc, exc.filename or "a file")
        return str(error.strerror or error)
    return None


# ------------------------------------------------------------------------------------ the run
def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train (or resume, or report the finished run) and return the content of ``result.json``. The name,
    folder, data, devices, batch plan and ``init.path`` are checked before the run directory is created;
    it is locked while the run trains."""
    run_dir = resolve_run_dir(cfg)
    check_run_dir(run_dir, cfg)
    if (previous := finished_result(run_dir)) is not None:
        return previous
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = open_data(cfg)
    sigterm = SigtermGuard()
    trainer, plan = run_trainer(cfg, run_dir, sigterm)
    datamodule.per_device_batch_size = plan.micro_batch
    module = ViTModule(cfg)
    # every rank loads init.path (a source that does not fit is refused before the run directory exists);
    # a run that resumes from its own checkpoint does not read it again
    init = module.apply_init() if cfg.init.path and resume_checkpoint(run_dir) is None else None
    with sigterm, run_lock(run_dir):  # a SIGTERM from here on stops the run with its outcome recorded
        prepare_run_dir(run_dir, cfg)
        if (previous := finished_result(run_dir)) is not None:  # finished while we waited for the lock
            return previous
        log(f"run directory {run_dir}")
        log(f"global batch {cfg.data.batch_size} = {plan.world_size} device(s) × {plan.micro_batch} per device × "
            f"{plan.accumulation} accumulation step(s); lr {scaled_lr(cfg):g} (optim.lr_scale_rule={cfg.optim.lr_scale_rule})")
        return _fit(cfg, run_dir, trainer, module, datamodule, sigterm, init)


def _fit(cfg: DictConfig, run_dir: Path, trainer: L.Trainer, module: ViTModule, datamodule, sigterm: SigtermGuard,
         init) -> Dict[str, Any]:
    recorder = next(c for c in trainer.callbacks if isinstance(c, EpochRecorder))
    divergence = next(c for c in trainer.callbacks if isinstance(c, DivergenceCallback))
    resume = resume_checkpoint(run_dir)
    if resume:
        log(f"resuming from {resume}")  # the checkpoint holds the weights
    elif init is not None and rank_zero_only.rank == 0:
        from vit_ablate.model.transfer import write_summary

        log(init.describe())
        write_summary(init, run_dir)
    status, error, final, outcome, failure, problem = rundir.COMPLETED, None, None, {}, None, None
    started, revision = time.time(), git_revision()  # the code that started the run, even if the checkout changes
    try:
        with sigterm.trainer_calls(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            if divergence.diverged_at is not None:
                status, error = rundir.DIVERGED, f"non-finite loss by step {divergence.diverged_at}"
            else:
                rows = recorder.rows
                final = _last_validation(rows) if rows and int(float(rows[-1]["step"])) == trainer.global_step else {}
                if not final and cfg.trainer.limit_val_batches != 0:
                    # the final weights were never validated (no validation on the last epoch, or the
                    # run was killed before its metrics.csv was read back): validate them now
                    outputs = trainer.validate(module, datamodule=datamodule, verbose=False)
                    final = {k: float(v) for k, v in (outputs[0] if outputs else {}).items() if k in FINAL_KEYS}
                if cfg.evaluate.test:
                    outcome["test"] = _test(cfg, trainer, module, datamodule, final)
                if cfg.evaluate.fewshot:
                    from vit_ablate.analyze.fewshot import fewshot_from_datamodule

                    evaluated = module.ema.module if module.ema is not None else module.model  # what validation measured
                    outcome["fewshot"] = fewshot_from_datamodule(evaluated, datamodule, shots=list(cfg.evaluate.fewshot_shots),
                                                                 draws=cfg.evaluate.fewshot_draws, seed=cfg.seed, device=module.device)
    except (KeyboardInterrupt, SystemExit, SIGTERMException) as exc:
        # Ctrl-C (Lightning turns it into SystemExit), SIGTERM from a scheduler: recorded, resumed later
        status = rundir.INTERRUPTED
        error = "stopped by SIGTERM" if isinstance(exc, SIGTERMException) else "stopped by Ctrl-C (SIGINT)"
    except Exception as exc:  # recorded, then re-raised for the exit code
        if isinstance(exc, ConfigError):
            raise
        status, failure, problem = rundir.FAILED, exc, storage_problem(exc)
        error = problem or "".join(traceback.format_exception(exc))[-4000:]
    result = _result(cfg, trainer, recorder, status, error, final, outcome, started, revision)
    _record(trainer, run_dir, result)
    if failure is not None:
        if problem is None:
            raise failure
        log(f"failed: {problem}")  # a full or read-only disk: the message says it all, no traceback
    elif status == rundir.INTERRUPTED:
        if trainer.is_global_zero and trainer.progress_bar_callback is not None:
            print(file=sys.stderr)  # end the progress bar's line
        log(f"interrupted ({error}) after {result['epochs']} epoch(s), step {result['global_step']}: "
            "run the same command again to resume from checkpoints/last.ckpt")
    else:
        shown = {**result["final"], **result.get("test", {})}
        log(f"{status}: " + (", ".join(f"{k}={v:.4f}" if v is not None else f"{k}=null" for k, v in shown.items())
                             or (error or "no metrics")))
    return result


def _test(cfg: DictConfig, trainer: L.Trainer, module: ViTModule, datamodule, final: Dict[str, float]) -> Dict[str, float]:
    """The test metrics of the final weights. Where the test split is the validation split and the last
    validation saw all of it with these weights, they are that validation's numbers (sent to the loggers
    as a test pass would): a second pass over the same images computes the same values."""
    if (set(final) == set(FINAL_KEYS) and cfg.trainer.limit_val_batches is None and datamodule.test_is_validation()):
        test = {k.replace("val/", "test/", 1): v for k, v in final.items()}
        for logger in trainer.loggers:
            logger.log_metrics(test, step=trainer.global_step)
        return test
    outputs = trainer.test(module, datamodule=datamodule, verbose=False)
    return {k: float(v) for k, v in (outputs[0] if outputs else {}).items()}


def _last_validation(rows: List[Dict[str, Any]]) -> Dict[str, float]:
    return {k: float(rows[-1][k]) for k in FINAL_KEYS if rows[-1].get(k) not in ("", None)} if rows else {}


def _result(cfg, trainer, recorder: EpochRecorder, status, error, final, outcome, started, revision) -> Dict[str, Any]:
    rows = recorder.rows
    scored = [r for r in rows if r.get("val/acc1") not in ("", None) and float(r["val/acc1"]) == float(r["val/acc1"])]
    top = max(scored, key=lambda r: float(r["val/acc1"]), default=None)
    result = {
        "status": status,
        "error": error,
        "final": _last_validation(rows) if final is None else final,
        "best": {"val/acc1": float(top["val/acc1"]), "epoch": int(top["epoch"])} if top else {},
        "test": {},
        **outcome,
        "epochs": len(rows),
        "global_step": int(trainer.global_step),
        "wall_time_s": round(recorder.elapsed if rows else time.time() - started, 2),
        "throughput_img_s": round(recorder.throughput, 1) if recorder.throughput else None,
        "precision": trainer.precision,
        "seed": int(cfg.seed),
        "config_digest": config_digest(cfg),
        "experiment_digest": experiment_digest(cfg),
        "version": vit_ablate.__version__,
        "git_rev": revision,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # strict JSON has no NaN: a diverged run's non-finite metrics become null, each named here
    replaced: List[str] = []
    result = finite_or_none(result, replaced)
    if replaced:
        reason = f" ({error})" if status == rundir.DIVERGED else ""
        result["non_finite"] = {path: "not a finite number" + reason for path in replaced}
    return result


def _record(trainer: L.Trainer, run_dir: Path, result: Dict[str, Any]) -> None:
    """Write ``result.json`` (rank 0); a full disk under a failed run is logged, not raised over the
    error that the result records."""
    if not trainer.is_global_zero:
        return
    try:
        rundir.write_result(run_dir, result)
    except OSError as exc:
        if result["status"] != rundir.FAILED:
            raise
        log(f"could not record the failure in {rundir.RunDir(run_dir).result}: {exc.strerror or exc}")
