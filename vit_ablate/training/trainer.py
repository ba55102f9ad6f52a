"""The one place a Lightning ``Trainer`` is built from a run config: devices, batch plan, precision,
strategy, threads, loggers, callbacks and limits (``run_trainer``; ``vit-ablate bench`` brings its own
callbacks and loggers to ``build_trainer``). Every Trainer gets the same gradient clipping (paper
Table 3: global norm 1), determinism, logging cadence and what our data modules rely on (no sanity
validation, no Lightning sampler: they shard themselves without padding).
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Sequence, Tuple

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig, ListConfig

from vit_ablate import rundir
from vit_ablate.config import ConfigError, check_batches, config_digest, to_container
from vit_ablate.training.callbacks import (AtomicCheckpointIO, DivergenceCallback, EpochRecorder, EpochSeeding,
                                           RankRecord, log)


@dataclass
class BatchPlan:
    world_size: int
    per_device: int
    micro_batch: int
    accumulation: int


def plan_batches(cfg: DictConfig, world_size: int) -> BatchPlan:
    """The per-device batch and gradient accumulation from the global ``data.batch_size``
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
    """How many processes per node Lightning starts for ``trainer.devices``, and on what, through the
    accelerators' public static interface; ``auto`` takes a TPU, else MPS, else CUDA, else the CPU, and
    ``gpu`` MPS, else CUDA (the Trainer's order)."""
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    accelerators = {"tpu": XLAAccelerator, "mps": MPSAccelerator, "cuda": CUDAAccelerator, "cpu": CPUAccelerator}
    name = str(cfg.trainer.accelerator)
    if name in ("auto", "gpu"):
        available = [n for n in ("tpu", "mps", "cuda") if (name == "auto" or n != "tpu") and accelerators[n].is_available()]
        name = available[0] if available else ("cpu" if name == "auto" else "cuda")
    accelerator = accelerators[name]
    if not accelerator.is_available():
        raise ConfigError(f"trainer.accelerator={cfg.trainer.accelerator!r}: no {name} device on this machine (use trainer.accelerator=cpu or auto)")
    devices = cfg.trainer.devices
    devices = list(devices) if isinstance(devices, ListConfig) else devices
    try:
        parallel = accelerator.get_parallel_devices(accelerator.parse_devices(accelerator.auto_device_count() if devices == "auto" else devices))
    except Exception as error:  # Lightning's MisconfigurationException names the devices it lacks
        raise ConfigError(f"trainer.devices={cfg.trainer.devices!r} on {name}: {error}") from None
    return Placement(max(len(parallel), 1), name == "cuda")


def use_sync_batchnorm(cfg: DictConfig, placement: Placement) -> bool:
    """SyncBatchNorm for the conv stem under multi-GPU DDP (torch supports it on CUDA only)."""
    return bool(cfg.trainer.sync_batchnorm and placement.devices * cfg.trainer.num_nodes > 1 and placement.cuda)


def busy_cores(cores: int, seconds: float = 0.25) -> float:
    """Cores that other processes keep busy now: the machine's busy share over ``seconds`` (/proc/stat)
    times ``cores``. Not the 1-minute load average, which still counts a process that has just ended."""
    def idle_and_total() -> Tuple[int, int]:
        with open("/proc/stat") as handle:
            ticks = [int(x) for x in handle.readline().split()[1:]]
        return ticks[3] + ticks[4], sum(ticks)  # idle + iowait, all

    try:
        idle0, total0 = idle_and_total()
        time.sleep(seconds)
        idle1, total1 = idle_and_total()
    except (OSError, ValueError, IndexError):  # no /proc: the load average is what there is
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return cores * (1 - (idle1 - idle0) / max(total1 - total0, 1))


def use_free_cores() -> None:
    """Intra-op threads: OMP_NUM_THREADS where the user or the sweep (a share for each worker) set it,
    else the cores nothing else is using (at least 1): a lone run must not oversubscribe a busy
    machine, where OpenMP threads waiting on a taken core spin."""
    given = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if given.isdigit() and int(given) > 0:
        threads, why = int(given), f"OMP_NUM_THREADS={given}"
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        busy = busy_cores(cores)
        threads, why = max(1, round(cores - busy)), f"{cores} cores, {busy:.1f} busy"
    torch.set_num_threads(threads)
    log(f"using {threads} threads: {why}")


def _not_a_tip(record: logging.LogRecord) -> bool:
    return not str(record.getMessage()).startswith("💡 Tip")


def build_trainer(cfg: DictConfig, root_dir: str | Path, callbacks: Sequence[Any], loggers: Sequence[Any], **overrides: Any) -> L.Trainer:
    """A Trainer for ``cfg``; ``overrides`` replace single Trainer arguments (a benchmark's step count,
    a resolved strategy or precision)."""
    # Lightning's advertising tips and a deprecation warning it raises inside torch's pytree on every
    # run say nothing about the run
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_not_a_tip)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")
    t = cfg.trainer
    arguments = dict(
        default_root_dir=str(root_dir), max_epochs=t.max_epochs if t.max_epochs > 0 else -1, max_steps=t.max_steps,
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, precision=t.precision,
        # with trainer.cuda_graph the clipping is inside the captured step (Lightning clips only in
        # automatic optimization)
        gradient_clip_val=None if t.cuda_graph else cfg.optim.grad_clip, gradient_clip_algorithm="norm",
        deterministic=t.deterministic, limit_train_batches=t.limit_train_batches, limit_val_batches=t.limit_val_batches,
        check_val_every_n_epoch=t.check_val_every_n_epoch, log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0, use_distributed_sampler=False,
        logger=list(loggers) or False, callbacks=list(callbacks),
    )
    return L.Trainer(**{**arguments, **overrides})


def _loggers(cfg: DictConfig, run_dir: Path) -> List[Any]:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

    loggers: List[Any] = []
    if cfg.logging.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    if cfg.logging.wandb:
        # Lightning creates the wandb run on rank 0 only; id = the run directory's name so a resumed run
        # continues the same wandb run (inside a W&B sweep the agent's run id)
        loggers.append(WandbLogger(
            project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity, group=cfg.logging.wandb_group,
            name=run_dir.name, id=os.environ.get("WANDB_RUN_ID") or run_dir.name, resume="allow",
            save_dir=str(run_dir), config=to_container(cfg),
        ))
    if cfg.logging.csv:
        # the per-step log; metrics.csv holds one row per epoch. Each attempt of a resumed run writes its
        # own logs/version_N (Lightning's CSV writer deletes an existing file it starts in).
        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs"))
    return loggers


def run_trainer(cfg: DictConfig, run_dir: Path, *callbacks: Callback) -> Tuple[L.Trainer, BatchPlan]:
    """The Trainer of a training run in ``run_dir`` (nothing is written until it fits) and its batch plan.
    Checkpoints: ``last`` after every epoch (what a rerun resumes from; ModelCheckpoint's own save_last
    saves only when the monitored metric improved) and ``best`` by val/acc1."""
    placement = resolve_devices(cfg)
    plan = plan_batches(cfg, placement.devices * cfg.trainer.num_nodes)
    precision = str(cfg.trainer.precision)
    if not placement.cuda and precision not in ("32-true", "32", "64-true"):
        # CPU autocast runs the matmuls in bf16 emulation, slower than fp32
        log(f"trainer.precision={precision} is for GPUs; on the CPU it trains slower than fp32, so this run "
            "uses 32-true (recorded in result.json as precision)")
        precision = "32-true"
    if placement.devices == 1:  # several processes: Lightning's launcher divides the cores among them
        use_free_cores()
    strategy = cfg.trainer.strategy
    if strategy == "ddp" or (strategy == "auto" and plan.world_size > 1):
        strategy = DDPStrategy(**cfg.trainer.ddp)
    # off a terminal (SLURM, nohup, CI) a progress bar writes a carriage-return update per step into
    # the log file: one line per epoch instead
    progress_bar = bool(cfg.trainer.progress_bar) and sys.stdout.isatty()
    paths = rundir.RunDir(run_dir)
    checkpoints = [
        ModelCheckpoint(dirpath=paths.checkpoints, filename=Path(rundir.LAST_CHECKPOINT).stem, monitor=None,
                        enable_version_counter=False),
        ModelCheckpoint(dirpath=paths.checkpoints, filename=Path(rundir.BEST_CHECKPOINT).stem, monitor="val/acc1",
                        mode="max", auto_insert_metric_name=False, enable_version_counter=False),
    ]
    callbacks = [*callbacks, EpochSeeding(cfg.seed), DivergenceCallback(), RankRecord(run_dir, config_digest(cfg)),
                 EpochRecorder(paths.metrics, announce=not progress_bar), *checkpoints]
    trainer = build_trainer(
        cfg, run_dir, callbacks, _loggers(cfg, run_dir), strategy=strategy, precision=precision,
        sync_batchnorm=use_sync_batchnorm(cfg, placement), accumulate_grad_batches=plan.accumulation,
        enable_progress_bar=progress_bar, plugins=[AtomicCheckpointIO()],
    )
    return trainer, plan
