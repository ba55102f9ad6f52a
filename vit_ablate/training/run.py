"""One training run: its directory, seeds, pieces, Trainer.fit/test and ``result.json``.

A run directory is the unit everything else reads (see docs/CONTRACTS.md). Re-running the same
command into the same directory resumes from ``checkpoints/last.ckpt``; a run whose ``result.json``
says ``completed`` or ``diverged`` is not run again; a directory that holds another configuration
is never overwritten.
"""

from __future__ import annotations

import datetime as _dt
import errno
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
import warnings
from dataclasses import dataclass
from pathlib import Path
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, ListConfig

import vit_ablate
from vit_ablate import rundir
from vit_ablate.config import ConfigError, check_batches, config_digest, experiment_digest, from_container, to_container, to_yaml
from vit_ablate.data import build_datamodule
from vit_ablate.io import (
    FolderBusy,
    FolderLock,
    StorageError,
    atomic_write_json,
    atomic_write_text,
    finite_or_none,
    remove_stale_temporaries,
)
from vit_ablate.training.callbacks import (
    AtomicCheckpointIO,
    DivergenceCallback,
    EpochRecorder,
    EpochSeeding,
    KeptCSVLogger,
    RankRecord,
    TrimLoggedEpochs,
)
from vit_ablate.training.module import ViTModule, scaled_lr
from vit_ablate.training.trainer import build_trainer

FINAL_STATUSES = rundir.FINAL_STATUSES  # outcomes that a rerun keeps; the others are resumed or retried
RUN_DIR_ENV = rundir.RUN_DIR_ENV


def log(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"[vit-ablate] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- paths
_UNSAFE_NAME = re.compile(r"[^A-Za-z0-9._=+,@-]+")


def check_run_name(name: str) -> None:
    """``name`` is one folder inside ``output_dir``: no separators, no ``..``, not absolute."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        cleaned = _UNSAFE_NAME.sub("-", name.replace("/", "-").replace("\\", "-")).strip("-.") or "run"
        raise ConfigError(
            f"name={name!r} must be one folder name inside output_dir (no '/', '\\' or '..'); "
            f"e.g. name={cleaned}, and output_dir= for the parent folder"
        )


def _sweep_managed() -> bool:
    """Whether a sweep engine or W&B agent chose the run directory (see ``resolve_run_dir``)."""
    return bool(os.environ.get(RUN_DIR_ENV) or (os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID")))


def resolve_run_dir(cfg: DictConfig) -> Path:
    """``$VIT_ABLATE_RUN_DIR`` (set by the local sweep engine), a W&B sweep run's own folder, or
    ``output_dir/name`` with ``name`` defaulting to a digest of the configuration."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        for key in ("WANDB_SWEEP_ID", "WANDB_RUN_ID"):
            check_run_name(os.environ[key])
        return Path(cfg.output_dir) / f"sweep-{os.environ['WANDB_SWEEP_ID']}" / os.environ["WANDB_RUN_ID"]
    if cfg.name:
        check_run_name(str(cfg.name))
    name = cfg.name or f"{cfg.data.name}-{experiment_digest(cfg)}"
    return Path(cfg.output_dir) / name


def _saved_config(run_dir: Path):
    from omegaconf import OmegaConf

    return from_container(OmegaConf.to_container(OmegaConf.load(rundir.RunDir(run_dir).config)), validate=False)


def check_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse a folder that holds a run of another configuration, or that is no run folder at all
    (files but no ``config.yaml``: a ``name=`` that points at someone's folder). Writes nothing."""
    if rundir.RunDir(run_dir).config.exists():
        if experiment_digest(_saved_config(run_dir)) != experiment_digest(cfg):
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run of a different configuration; "
                "pick another `name=` (or output_dir=) instead of overwriting it"
            )
        _refuse_timm_gap_run(run_dir, cfg)
        return
    if _sweep_managed():
        return  # the sweep engine made this folder (and its train.log) for this run
    if rank_zero_only.rank != 0:
        # torchrun starts every rank at once: rank 0 decides and makes the folder, and another rank
        # looking now could see rank 0's first files before its config.yaml. A refusal by rank 0
        # ends the others with it.
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"run directory {str(run_dir)!r} is a file; pick another `name=` (or output_dir=)")
    if run_dir.is_dir() and any(entry.name != rundir.LOCK_FILE for entry in os.scandir(run_dir)):
        raise ConfigError(
            f"{str(run_dir)!r} exists and is not a run directory (it has files but no {rundir.CONFIG_FILE}); "
            "nothing was written there: pick another `name=` (or output_dir=)"
        )


def _refuse_timm_gap_run(run_dir: Path, cfg: DictConfig) -> None:
    """Before 0.2.0 ``pool=gap`` was timm's mean-then-LayerNorm (now ``gap_fc_norm``); a run it finished
    under the same config is not a run of today's ``gap`` (the paper's), so it is neither kept nor resumed."""
    if cfg.model.pool != "gap":
        return
    version = str((rundir.read_result(run_dir) or {}).get("version") or "")
    numbers = re.match(r"(\d+)\.(\d+)", version)
    if numbers and "+unknown" not in version and (int(numbers[1]), int(numbers[2])) < (0, 2):
        raise ConfigError(
            f"run directory {str(run_dir)!r} holds a model.pool=gap run of vit_ablate {version}, whose gap was timm's "
            "mean-then-LayerNorm (model.pool=gap_fc_norm since 0.2.0), not the paper's gap that this version runs; "
            "pick another `name=` (or output_dir=)"
        )


def prepare_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Create the directory and its ``config.yaml``; refuse a directory of another configuration."""
    check_run_dir(run_dir, cfg)
    paths = rundir.RunDir(run_dir)
    if paths.config.exists():
        return
    if rank_zero_only.rank == 0:
        paths.checkpoints.mkdir(parents=True, exist_ok=True)
        atomic_write_text(paths.config, to_yaml(cfg))


def finished_result(run_dir: Path) -> Optional[Dict[str, Any]]:
    """The ``result.json`` of a run that is not to be run again, else None. A ``completed`` result
    without final metrics (left by a version that lost them) is rebuilt, not kept."""
    path = rundir.RunDir(run_dir).result
    previous = rundir.read_result(run_dir)
    if previous is None or previous.get("status") not in FINAL_STATUSES:
        return None
    if previous["status"] == rundir.COMPLETED and not previous.get("final") and previous.get("epochs", 0) == 0:
        log(f"{path} says completed but holds no final metrics: rebuilding it from the run's checkpoint")
        return None
    return previous


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
        raise ConfigError(
            f"run directory {str(run_dir)!r} is being trained by another process (pid {exc.holder}); "
            "wait for it to end, or stop it and run this command again to resume"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot create the run directory {str(run_dir)!r}: {exc.strerror or exc}") from None
    try:
        for folder in (run_dir, rundir.RunDir(run_dir).checkpoints, run_dir / "ranks", run_dir / "logs"):
            remove_stale_temporaries(folder)  # left by a killed writer; nobody else writes here now
        yield
    finally:
        lock.release()


class SigtermGuard(Callback):
    """A SIGTERM at any time the run directory is locked stops the run with ``interrupted`` recorded.

    Lightning's own SIGTERM handling covers only part of a run, and not multi-process training:
    - it is installed inside ``Trainer.fit`` after the data, the model and the checkpoint are set up,
      which can take minutes (the first run decodes the dataset);
    - with several processes its handler runs a collective broadcast inside the signal handler, and
      ranks that get the signal at different moments deadlock (a two-process CPU run hung for good).

    Used as a context manager around the locked part of a run, this handler holds a SIGTERM that
    arrives while nothing may be interrupted (the run directory being prepared, the result being
    written). Inside ``trainer_calls`` it raises ``SIGTERMException``, as Ctrl-C raises
    ``KeyboardInterrupt``; Lightning's error path tears the Trainer down after stopping the ranks its
    launcher started. A held signal is raised on entering ``trainer_calls``, or on exit, after the
    outcome is written, with the previous handler. While Lightning's handler is installed it calls
    this one too, which then does nothing. In multi-process runs this handler replaces Lightning's
    once training or an evaluation starts: a rank's signal is held, and after every training step the
    ranks agree (one all-reduce) whether any got one, then all stop at that step together; one that
    arrives after the last step is raised once the outcome is written.
    """

    def __init__(self) -> None:
        self.held = False
        self._previous = None
        self._trainer: Optional[L.Trainer] = None
        self._at_step_ends = False  # multi-process training: stop only where all ranks agree

    def _handle(self, signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) != self._handle:
            return  # Lightning's handler runs this one after its own
        if self._trainer is None or self._at_step_ends:
            self.held = True
            return
        self._stop(signum)

    def _stop(self, signum) -> None:
        launcher = self._trainer.strategy.launcher
        if launcher is not None:
            launcher.kill(signum)
        raise SIGTERMException

    def __enter__(self) -> "SigtermGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
        if self.held:
            self.held = False
            signal.raise_signal(signal.SIGTERM)

    @contextmanager
    def trainer_calls(self, trainer: L.Trainer) -> Iterator[None]:
        self._trainer = trainer
        try:
            if self.held:
                self.held = False
                self._stop(signal.SIGTERM)
            yield
        finally:
            self._trainer, self._at_step_ends = None, False

    def _replace_lightnings_handler(self, trainer: L.Trainer) -> None:
        # Lightning has just installed its handler (it restores ours when the call ends)
        if trainer.world_size > 1 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._handle)
            self._at_step_ends = True

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replace_lightnings_handler(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replace_lightnings_handler(trainer)  # an evaluation runs to its end; the next step stops

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._replace_lightnings_handler(trainer)  # held until the outcome is written

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        if self._at_step_ends and trainer.strategy.reduce_boolean_decision(self.held, all=False):
            self.held = False
            raise SIGTERMException  # on every rank, after the same step



def git_revision() -> Optional[str]:
    try:
        root = Path(vit_ablate.__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ------------------------------------------------------------------------------------------- plan
@dataclass
class BatchPlan:
    world_size: int
    per_device: int
    micro_batch: int
    accumulation: int

    def describe(self, global_batch: int) -> str:
        return (
            f"global batch {global_batch} = {self.world_size} device(s) × {self.micro_batch} per device"
            f" × {self.accumulation} accumulation step(s)"
        )


def plan_batches(cfg: DictConfig, world_size: int) -> BatchPlan:
    """Derive the per-device batch and gradient accumulation from the global ``data.batch_size``
    (``config.check_batches`` names what does not divide, with the nearest values that do)."""
    check_batches(cfg, world_size)
    per_device = cfg.data.batch_size // world_size
    micro = min(cfg.data.micro_batch_size or per_device, per_device)
    return BatchPlan(world_size, per_device, micro, per_device // micro)


@dataclass
class Placement:
    devices: int  # processes per node
    cuda: bool


def resolve_devices(cfg: DictConfig) -> Placement:
    """How many processes per node Lightning will start for ``trainer.devices``, and on what.

    Through the accelerators' public static interface (``is_available``, ``auto_device_count``,
    ``parse_devices``, ``get_parallel_devices``), choosing ``auto`` and ``gpu`` in the Trainer's order:
    ``auto`` takes a TPU, else MPS, else CUDA, else the CPU; ``gpu`` takes MPS, else CUDA.
    """
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    accelerators = {"cpu": CPUAccelerator, "cuda": CUDAAccelerator, "mps": MPSAccelerator, "tpu": XLAAccelerator}
    name = str(cfg.trainer.accelerator)
    if name in ("auto", "gpu"):
        order = ("tpu", "mps", "cuda") if name == "auto" else ("mps", "cuda")
        available = [n for n in order if accelerators[n].is_available()]
        name = available[0] if available else ("cpu" if name == "auto" else "cuda")  # gpu without one: the error below
    accelerator = accelerators.get(name)
    if accelerator is None:
        raise ConfigError(f"trainer.accelerator={name!r}: vit-ablate runs on cpu, cuda (gpu), mps or tpu")
    if name != "cpu" and not accelerator.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator!r}: no {name} device on this machine (use trainer.accelerator=cpu or auto)")
    devices = cfg.trainer.devices
    if isinstance(devices, ListConfig):
        devices = list(devices)
    if devices == "auto":
        devices = accelerator.auto_device_count()
    try:
        parallel = accelerator.get_parallel_devices(accelerator.parse_devices(devices))
    except Exception as error:  # Lightning's MisconfigurationException names the devices it lacks
        raise ConfigError(f"trainer.devices={cfg.trainer.devices!r} on {name}: {error}") from None
    return Placement(max(len(parallel), 1), name == "cuda")


def use_sync_batchnorm(cfg: DictConfig, placement: Placement) -> bool:
    """SyncBatchNorm for the conv stem under multi-GPU DDP (torch supports it on CUDA only)."""
    distributed = placement.devices * cfg.trainer.num_nodes > 1
    return bool(cfg.trainer.sync_batchnorm and distributed and placement.cuda)


def _strategy(cfg: DictConfig, devices: int):
    trainer = cfg.trainer
    distributed = devices * trainer.num_nodes > 1
    if trainer.strategy == "ddp" or (trainer.strategy == "auto" and distributed):
        knobs = trainer.ddp
        return DDPStrategy(
            gradient_as_bucket_view=knobs.gradient_as_bucket_view,
            bucket_cap_mb=knobs.bucket_cap_mb,
            static_graph=knobs.static_graph,
            find_unused_parameters=knobs.find_unused_parameters,
        )
    return trainer.strategy


def _loggers(cfg: DictConfig, run_dir: Path) -> List[Any]:
    loggers: List[Any] = []
    if cfg.logging.tensorboard:
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if cfg.logging.wandb:
        from lightning.pytorch.loggers import WandbLogger

        # Lightning creates the wandb run on rank 0 only; id = the run directory's name so a resumed
        # run continues the same wandb run (inside a W&B sweep the agent's run id is used).
        loggers.append(
            WandbLogger(
                project=cfg.logging.wandb_project,
                entity=cfg.logging.wandb_entity,
                group=cfg.logging.wandb_group,
                name=run_dir.name,
                id=os.environ.get("WANDB_RUN_ID") or f"{run_dir.name}",
                resume="allow",
                save_dir=str(run_dir),
                config=to_container(cfg),
            )
        )
    if cfg.logging.csv:
        # the per-step log (train/loss every log_every_n_steps); metrics.csv holds one row per epoch
        loggers.append(KeptCSVLogger(save_dir=str(run_dir), name="logs", version=""))
    return loggers


# ------------------------------------------------------------------------------------------- run
def check_data_matches_model(cfg: DictConfig, datamodule) -> None:
    pairs = {
        "num_classes": datamodule.num_classes,
        "img_size": datamodule.img_size,
        "in_chans": datamodule.in_chans,
    }
    for key, data_value in pairs.items():
        if cfg.model[key] != data_value:
            raise ConfigError(
                f"model.{key}={cfg.model[key]} but data '{cfg.data.name}' gives {data_value}; set model.{key}={data_value}"
            )


def open_data(cfg: DictConfig):
    """The data module, with its files found and readable: a missing or corrupt dataset is a
    ``ConfigError`` naming the path and the fix, raised before the run directory exists."""
    try:
        datamodule = build_datamodule(cfg)
        datamodule.check_available()
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    check_data_matches_model(cfg, datamodule)
    return datamodule


# Mixed precision is a GPU feature: CPU autocast runs the matmuls in bf16 emulation, slower than fp32.
_MIXED_PRECISIONS = ("bf16-mixed", "16-mixed", "bf16-true", "16-true", "bf16", "16")


def choose_precision(cfg: DictConfig, placement: Placement) -> str:
    precision = str(cfg.trainer.precision)
    if not placement.cuda and precision in _MIXED_PRECISIONS:
        log(
            f"trainer.precision={precision} is for GPUs; on the CPU it trains slower than fp32, so this run "
            "uses 32-true (recorded in result.json as precision)"
        )
        return "32-true"
    return precision


_STORAGE_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM)


def storage_problem(exc: BaseException) -> Optional[str]:
    """One line for a full, read-only or unwritable disk, naming the file; None for other errors."""
    if isinstance(exc, StorageError):
        return str(exc.strerror or exc)
    if isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS:
        return f"cannot write {exc.filename or 'a file'}: {exc.strerror}"
    return None


_quiet_installed = False


def quiet_lightning() -> None:
    """Drop Lightning's advertising tips and a deprecation warning it raises inside torch's pytree on
    every run: they say nothing about the run."""
    global _quiet_installed
    if _quiet_installed:
        return
    _quiet_installed = True
    tips = logging.Filter()
    tips.filter = lambda record: not str(record.getMessage()).startswith("💡 Tip")
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(tips)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def check_init_source(cfg: DictConfig, run_dir: Path) -> None:
    """``init.path`` fits the model (every tensor present, resampled or excluded), checked before the run
    directory exists. A run that resumes from its own checkpoint does not read ``init.path`` again."""
    if not cfg.init.path or resume_checkpoint(run_dir) is not None:
        return
    from vit_ablate.model.transfer import check_init

    try:
        check_init(cfg.model, cfg.init.path, cfg.init.format, list(cfg.init.exclude))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train (or resume, or report the finished run) and return the content of ``result.json``.

    Everything that can be checked without training (the run name, the folder, the data, the batch
    plan) is checked before the run directory is created; the run directory is locked while it runs.
    """
    run_dir = resolve_run_dir(cfg)
    check_run_dir(run_dir, cfg)  # refuses a directory that holds another experiment
    previous = finished_result(run_dir)
    if previous is not None:
        log(f"{run_dir} already finished ({previous['status']}); nothing to do")
        return previous

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = open_data(cfg)
    placement = resolve_devices(cfg)
    plan = plan_batches(cfg, placement.devices * cfg.trainer.num_nodes)
    precision = choose_precision(cfg, placement)
    check_init_source(cfg, run_dir)
    # a SIGTERM from here on stops the run with its outcome recorded
    with SigtermGuard() as sigterm, run_lock(run_dir):
        prepare_run_dir(run_dir, cfg)
        previous = finished_result(run_dir)  # finished while we waited for the lock
        if previous is not None:
            log(f"{run_dir} already finished ({previous['status']}); nothing to do")
            return previous
        return _train(cfg, run_dir, datamodule, placement, plan, precision, sigterm)


def _train(cfg: DictConfig, run_dir: Path, datamodule, placement: Placement, plan: BatchPlan, precision: str,
           sigterm: SigtermGuard) -> Dict[str, Any]:
    digest = config_digest(cfg)
    devices = placement.devices
    datamodule.per_device_batch_size = plan.micro_batch
    log(f"run directory {run_dir}")
    log(plan.describe(cfg.data.batch_size) + f"; lr {scaled_lr(cfg):g} (optim.lr_scale_rule={cfg.optim.lr_scale_rule})")
    quiet_lightning()
    # Off a terminal (SLURM, nohup, CI) a progress bar writes a carriage-return update per step
    # into the log file: one line per epoch instead.
    progress_bar = bool(cfg.trainer.progress_bar) and sys.stdout.isatty()

    module = ViTModule(cfg)
    divergence = DivergenceCallback()
    recorder = EpochRecorder(rundir.RunDir(run_dir).metrics, announce=None if progress_bar else log)
    # Two checkpoints: `last` after every epoch (what a rerun resumes from) and `best` by val/acc1.
    # (ModelCheckpoint's own save_last only saves when the monitored metric improved.)
    last_checkpoint = ModelCheckpoint(
        dirpath=rundir.RunDir(run_dir).checkpoints, filename=Path(rundir.LAST_CHECKPOINT).stem, monitor=None, save_top_k=1, every_n_epochs=1,
        enable_version_counter=False,
    )
    checkpoints = ModelCheckpoint(
        dirpath=rundir.RunDir(run_dir).checkpoints, filename=Path(rundir.BEST_CHECKPOINT).stem, monitor="val/acc1", mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    loggers = _loggers(cfg, run_dir)
    callbacks = [sigterm, EpochSeeding(cfg.seed), divergence, RankRecord(run_dir, digest), recorder, last_checkpoint,
                 checkpoints]
    callbacks += [TrimLoggedEpochs(lg) for lg in loggers if isinstance(lg, KeptCSVLogger)]
    trainer = build_trainer(
        cfg, run_dir, callbacks, loggers,
        strategy=_strategy(cfg, devices),
        precision=precision,
        sync_batchnorm=use_sync_batchnorm(cfg, placement),
        accumulate_grad_batches=plan.accumulation,
        enable_progress_bar=progress_bar,
        plugins=[AtomicCheckpointIO()],
    )

    resume = resume_checkpoint(run_dir)
    if resume:
        log(f"resuming from {resume}")  # the checkpoint holds the weights: init.path is not read again
    elif cfg.init.path:
        module.apply_init(run_dir if rank_zero_only.rank == 0 else None)  # every rank loads; rank 0 reports
    status, error, test_metrics, final = rundir.COMPLETED, None, {}, None
    started = time.time()
    revision = git_revision()  # the code that starts the run, even if the checkout changes while it trains
    try:
        with sigterm.trainer_calls(trainer):
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
            if not recorder.started:  # resumed from the final epoch's checkpoint: nothing left to train
                recorder.restore(trainer.current_epoch)
            if divergence.diverged:
                status = rundir.DIVERGED
                error = f"non-finite loss by step {divergence.diverged_at}"
            elif trainer.interrupted:
                status, error = rundir.INTERRUPTED, "stopped by a signal"
            else:
                final = _final_metrics(recorder.rows, trainer.global_step)
                if final is None and _validates(cfg):
                    # the final weights were never validated (killed before metrics.csv was read back,
                    # or no validation on the last epoch): validate them now
                    outputs = trainer.validate(module, datamodule=datamodule, verbose=False)
                    final = {k: float(v) for k, v in (outputs[0] if outputs else {}).items() if k in _FINAL_KEYS}
                if cfg.evaluate.test:
                    outputs = trainer.test(module, datamodule=datamodule, verbose=False)
                    test_metrics = {k: float(v) for k, v in (outputs[0] if outputs else {}).items()}
    except (KeyboardInterrupt, SystemExit, SIGTERMException) as exc:
        # Ctrl-C (Lightning turns it into SystemExit), SIGTERM from a scheduler: record and resume later
        status = rundir.INTERRUPTED
        error = "stopped by SIGTERM" if isinstance(exc, SIGTERMException) else "stopped by Ctrl-C (SIGINT)"
        _mark_preempting(cfg)
    except Exception as exc:  # recorded, then re-raised for the exit code
        status, error = rundir.FAILED, "".join(traceback.format_exception(exc))[-4000:]
        if isinstance(exc, ConfigError):
            raise
        problem = storage_problem(exc)
        result = _result(cfg, status, problem or error, recorder, trainer, test_metrics, digest, started, precision,
                         revision=revision)
        _record(trainer, run_dir, result)
        if problem is None:
            raise
        log(f"failed: {problem}")  # a full or read-only disk: the message says it all, no traceback
        return result
    result = _result(cfg, status, error, recorder, trainer, test_metrics, digest, started, precision, final,
                     revision=revision)
    if status == rundir.COMPLETED and cfg.evaluate.fewshot:
        result["fewshot"] = _fewshot(cfg, module, datamodule, trainer)
    if trainer.is_global_zero:
        _record(trainer, run_dir, result)
        if status == rundir.INTERRUPTED:
            if progress_bar:
                print(file=sys.stderr)  # end the progress bar's line
            log(f"interrupted ({error}) after {result['epochs']} epoch(s), step {result['global_step']}: "
                "run the same command again to resume from checkpoints/last.ckpt")
        else:
            shown = {**result.get("final", {}), **test_metrics}
            log(f"{status}: " + (", ".join(f"{k}={v:.4f}" if v is not None else f"{k}=null" for k, v in shown.items())
                                 or (error or "no metrics")))
    return result


_FINAL_KEYS = ("val/acc1", "val/acc5", "val/loss")


def _validates(cfg: DictConfig) -> bool:
    return cfg.trainer.limit_val_batches != 0


def _final_metrics(rows: List[Dict[str, Any]], global_step: int) -> Optional[Dict[str, float]]:
    """The validation metrics of the final weights, from the last row of ``metrics.csv`` if that row
    was written at the final step with validation metrics; else None."""
    if not rows or int(float(rows[-1]["step"])) != int(global_step):
        return None
    last = rows[-1]
    final = {k: float(last[k]) for k in _FINAL_KEYS if last.get(k) not in ("", None)}
    return final or None


def _record(trainer, run_dir: Path, result: Dict[str, Any]) -> None:
    """Write ``result.json`` where the disk allows; a full disk is logged, not raised over the error
    that the result records."""
    if not trainer.is_global_zero:
        return
    path = rundir.RunDir(run_dir).result
    try:
        atomic_write_json(path, result)  # what rundir.write_result does; called here so tests can intercept it
    except OSError as exc:
        if result.get("status") != rundir.FAILED:
            raise
        log(f"could not record the failure in {path}: {exc.strerror or exc}")


def resume_checkpoint(run_dir: Path) -> Optional[str]:
    """The newest checkpoint to resume from: ``last.ckpt`` (every epoch end) or a SLURM requeue's
    ``hpc_ckpt_N.ckpt`` (Lightning writes one on SIGUSR1 before the job is requeued)."""
    candidates = [rundir.RunDir(run_dir).last_checkpoint, *run_dir.glob("hpc_ckpt_*.ckpt")]
    existing = [path for path in candidates if path.exists()]
    return str(max(existing, key=lambda path: path.stat().st_mtime_ns)) if existing else None


PREEMPTION_ENV = "VIT_ABLATE_SIGTERM_IS_PREEMPTION"


def _mark_preempting(cfg: DictConfig) -> None:
    """Tell a W&B sweep agent to requeue this run instead of counting it as crashed.

    Only where the cluster says SIGTERM means preemption (``VIT_ABLATE_SIGTERM_IS_PREEMPTION=1``, set
    in a SLURM or Kubernetes job script): the W&B agent itself stops hyperband-terminated runs with
    SIGTERM, and those must not be requeued.
    """
    if cfg.logging.wandb and os.environ.get(PREEMPTION_ENV) == "1":
        import wandb

        if wandb.run is not None:
            wandb.mark_preempting()


def _fewshot(cfg: DictConfig, module: ViTModule, datamodule, trainer) -> Dict[str, float]:
    from vit_ablate.analyze.fewshot import fewshot_from_datamodule

    evaluated = module.ema.module if module.ema is not None else module.model  # what validation measured
    return fewshot_from_datamodule(evaluated, datamodule, shots=list(cfg.evaluate.fewshot_shots),
                                   draws=cfg.evaluate.fewshot_draws, seed=cfg.seed, device=module.device)


def _result(cfg, status, error, recorder: EpochRecorder, trainer, test_metrics, digest, started, precision,
            final: Optional[Dict[str, float]] = None, *, revision: Optional[str]) -> Dict[str, Any]:
    rows = recorder.rows
    best: Dict[str, Any] = {}
    if final is None:
        final = {}
        if rows:
            last = rows[-1]
            final = {k: float(last[k]) for k in _FINAL_KEYS if last.get(k) not in ("", None)}
    scored = [r for r in rows if r.get("val/acc1") not in ("", None) and float(r["val/acc1"]) == float(r["val/acc1"])]
    if scored:
        top = max(scored, key=lambda r: float(r["val/acc1"]))
        best = {"val/acc1": float(top["val/acc1"]), "epoch": int(top["epoch"])}
    result = {
        "status": status,
        "error": error,
        "final": final,
        "best": best,
        "test": test_metrics,
        "epochs": len(rows),
        "global_step": int(trainer.global_step),
        "wall_time_s": round(recorder.elapsed if rows else time.time() - started, 2),
        "throughput_img_s": round(recorder.throughput, 1) if recorder.throughput else None,
        "precision": precision,
        "seed": int(cfg.seed),
        "config_digest": digest,
        "experiment_digest": experiment_digest(cfg),
        "version": vit_ablate.__version__,
        "git_rev": revision,
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # strict JSON has no NaN: a diverged run's non-finite metrics become null, each named here
    replaced: List[str] = []
    result = finite_or_none(result, replaced)
    if replaced:
        result["non_finite"] = {path: "not a finite number" + (f" ({error})" if status == rundir.DIVERGED else "")
                                for path in replaced}
    return result
