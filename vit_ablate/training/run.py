"""One training run: its directory, seeds, pieces, Trainer.fit/test and ``result.json``.

A run directory is the unit everything else reads (see docs/CONTRACTS.md). Re-running the same
command into the same directory resumes from ``checkpoints/last.ckpt``; a run whose ``result.json``
says ``completed`` or ``diverged`` is not run again; a directory that holds another configuration
is never overwritten.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import lightning as L
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

import vit_ablate
from vit_ablate.config import ConfigError, config_digest, experiment_digest, from_container, to_container, to_yaml
from vit_ablate.data import build_datamodule
from vit_ablate.io import atomic_write_json, atomic_write_text, read_json
from vit_ablate.training.callbacks import AtomicCheckpointIO, DivergenceCallback, EpochRecorder, EpochSeeding, RankRecord
from vit_ablate.training.module import ViTModule, scaled_lr

# Outcomes that a rerun keeps; "failed" and "interrupted" runs are resumed or retried.
FINAL_STATUSES = ("completed", "diverged")
RUN_DIR_ENV = "VIT_ABLATE_RUN_DIR"


def log(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"[vit-ablate] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------- paths
def resolve_run_dir(cfg: DictConfig) -> Path:
    """``$VIT_ABLATE_RUN_DIR`` (set by the local sweep engine), a W&B sweep run's own folder, or
    ``output_dir/name`` with ``name`` defaulting to a digest of the configuration."""
    if os.environ.get(RUN_DIR_ENV):
        return Path(os.environ[RUN_DIR_ENV])
    if os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        return Path(cfg.output_dir) / f"sweep-{os.environ['WANDB_SWEEP_ID']}" / os.environ["WANDB_RUN_ID"]
    name = cfg.name or f"{cfg.data.name}-{experiment_digest(cfg)}"
    return Path(cfg.output_dir) / name


def prepare_run_dir(run_dir: Path, cfg: DictConfig) -> None:
    """Create the directory and its ``config.yaml``; refuse a directory of another configuration."""
    saved = run_dir / "config.yaml"
    if saved.exists():
        from omegaconf import OmegaConf

        previous = from_container(OmegaConf.to_container(OmegaConf.load(saved)), validate=False)
        if experiment_digest(previous) != experiment_digest(cfg):
            raise ConfigError(
                f"run directory {str(run_dir)!r} already holds a run of a different configuration; "
                "pick another `name=` (or output_dir=) instead of overwriting it"
            )
        return
    if rank_zero_only.rank == 0:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, to_yaml(cfg))


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
    """Derive the per-device batch and gradient accumulation from the global ``data.batch_size``."""
    batch = cfg.data.batch_size
    if batch % world_size:
        raise ConfigError(
            f"data.batch_size={batch} (the global batch) is not divisible by the {world_size} devices "
            f"(trainer.devices × trainer.num_nodes); use a multiple of {world_size}"
        )
    per_device = batch // world_size
    micro = cfg.data.micro_batch_size or per_device
    if micro > per_device:
        micro = per_device
    if per_device % micro:
        raise ConfigError(
            f"the per-device batch {per_device} (data.batch_size={batch} / {world_size} devices) is not "
            f"divisible by data.micro_batch_size={micro}"
        )
    return BatchPlan(world_size, per_device, micro, per_device // micro)


@dataclass
class Placement:
    devices: int  # processes per node
    cuda: bool


def resolve_devices(cfg: DictConfig) -> Placement:
    """How many processes per node Lightning will start for ``trainer.devices``, and on what."""
    from lightning.pytorch.accelerators import CUDAAccelerator
    from lightning.pytorch.trainer.connectors.accelerator_connector import _AcceleratorConnector

    connector = _AcceleratorConnector(
        devices=cfg.trainer.devices, accelerator=cfg.trainer.accelerator, strategy="auto", num_nodes=cfg.trainer.num_nodes
    )
    devices = len(connector._parallel_devices) if connector._parallel_devices else 1
    return Placement(devices, isinstance(connector.accelerator, CUDAAccelerator))


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
        from lightning.pytorch.loggers import CSVLogger

        loggers.append(CSVLogger(save_dir=str(run_dir), name="logs", version=""))
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


def train(cfg: DictConfig) -> Dict[str, Any]:
    """Train (or resume, or report the finished run) and return the content of ``result.json``."""
    run_dir = resolve_run_dir(cfg)
    result_path = run_dir / "result.json"
    prepare_run_dir(run_dir, cfg)  # refuses a directory that holds another experiment
    if result_path.exists():
        previous = read_json(result_path)
        if previous.get("status") in FINAL_STATUSES:
            log(f"{run_dir} already finished ({previous['status']}); nothing to do")
            return previous
    digest = config_digest(cfg)

    L.seed_everything(cfg.seed, workers=True, verbose=False)
    datamodule = build_datamodule(cfg)
    check_data_matches_model(cfg, datamodule)

    placement = resolve_devices(cfg)
    devices = placement.devices
    plan = plan_batches(cfg, devices * cfg.trainer.num_nodes)
    datamodule.per_device_batch_size = plan.micro_batch
    log(f"run directory {run_dir}")
    log(plan.describe(cfg.data.batch_size) + f"; lr {scaled_lr(cfg):g} (optim.lr_scale_rule={cfg.optim.lr_scale_rule})")

    module = ViTModule(cfg)
    divergence = DivergenceCallback()
    recorder = EpochRecorder(run_dir / "metrics.csv")
    # Two checkpoints: `last` after every epoch (what a rerun resumes from) and `best` by val/acc1.
    # (ModelCheckpoint's own save_last only saves when the monitored metric improved.)
    last_checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="last", monitor=None, save_top_k=1, every_n_epochs=1,
        enable_version_counter=False,
    )
    checkpoints = ModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor="val/acc1", mode="max", save_top_k=1,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    trainer = L.Trainer(
        default_root_dir=str(run_dir),
        max_epochs=cfg.trainer.max_epochs if cfg.trainer.max_epochs > 0 else -1,
        max_steps=cfg.trainer.max_steps,
        accelerator=cfg.trainer.accelerator,
        devices=cfg.trainer.devices,
        num_nodes=cfg.trainer.num_nodes,
        strategy=_strategy(cfg, devices),
        precision=cfg.trainer.precision,
        sync_batchnorm=use_sync_batchnorm(cfg, placement),
        accumulate_grad_batches=plan.accumulation,
        gradient_clip_val=cfg.optim.grad_clip,
        gradient_clip_algorithm="norm",
        deterministic=cfg.trainer.deterministic,
        limit_train_batches=cfg.trainer.limit_train_batches,
        limit_val_batches=cfg.trainer.limit_val_batches,
        check_val_every_n_epoch=cfg.trainer.check_val_every_n_epoch,
        log_every_n_steps=cfg.trainer.log_every_n_steps,
        enable_progress_bar=cfg.trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,  # the data modules shard themselves, without padding
        logger=_loggers(cfg, run_dir) or False,
        callbacks=[EpochSeeding(cfg.seed), divergence, RankRecord(run_dir, digest), recorder, last_checkpoint, checkpoints],
        plugins=[AtomicCheckpointIO()],
    )

    resume = resume_checkpoint(run_dir)
    if resume:
        log(f"resuming from {resume}")
    status, error, test_metrics = "completed", None, {}
    started = time.time()
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        if divergence.diverged:
            status = "diverged"
            error = f"non-finite loss by step {divergence.diverged_at}"
        elif trainer.interrupted:
            status = "interrupted"
        elif cfg.evaluate.test:
            outputs = trainer.test(module, datamodule=datamodule, verbose=False)
            test_metrics = {k: float(v) for k, v in (outputs[0] if outputs else {}).items()}
    except (KeyboardInterrupt, SystemExit, SIGTERMException) as exc:
        # Ctrl-C (Lightning turns it into SystemExit), SIGTERM from a scheduler: record and resume later
        status, error = "interrupted", type(exc).__name__
        _mark_preempting(cfg)
    except Exception as exc:  # recorded, then re-raised for the exit code
        status, error = "failed", "".join(traceback.format_exception(exc))[-4000:]
        if isinstance(exc, ConfigError):
            raise
        result = _result(cfg, status, error, recorder, checkpoints, trainer, test_metrics, digest, started)
        if trainer.is_global_zero:
            atomic_write_json(result_path, result)
        raise
    result = _result(cfg, status, error, recorder, checkpoints, trainer, test_metrics, digest, started)
    if status == "completed" and cfg.evaluate.fewshot:
        result["fewshot"] = _fewshot(cfg, module, datamodule, trainer)
    if trainer.is_global_zero:
        atomic_write_json(result_path, result)
        log(f"{status}: " + ", ".join(f"{k}={v:.4f}" for k, v in {**result.get("final", {}), **test_metrics}.items()))
    return result


def resume_checkpoint(run_dir: Path) -> Optional[str]:
    """The newest checkpoint to resume from: ``last.ckpt`` (every epoch end) or a SLURM requeue's
    ``hpc_ckpt_N.ckpt`` (Lightning writes one on SIGUSR1 before the job is requeued)."""
    candidates = [run_dir / "checkpoints" / "last.ckpt", *run_dir.glob("hpc_ckpt_*.ckpt")]
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


def _result(cfg, status, error, recorder: EpochRecorder, checkpoints, trainer, test_metrics, digest, started) -> Dict[str, Any]:
    rows = recorder.rows
    final = {}
    best: Dict[str, Any] = {}
    if rows:
        last = rows[-1]
        final = {k: float(last[k]) for k in ("val/acc1", "val/acc5", "val/loss") if last.get(k) not in ("", None)}
        scored = [r for r in rows if r.get("val/acc1") not in ("", None)]
        if scored:
            top = max(scored, key=lambda r: float(r["val/acc1"]))
            best = {"val/acc1": float(top["val/acc1"]), "epoch": int(top["epoch"])}
    return {
        "status": status,
        "error": error,
        "final": final,
        "best": best,
        "test": test_metrics,
        "epochs": len(rows),
        "global_step": int(trainer.global_step),
        "wall_time_s": round(recorder.elapsed if rows else time.time() - started, 2),
        "throughput_img_s": round(recorder.throughput, 1) if recorder.throughput else None,
        "seed": int(cfg.seed),
        "config_digest": digest,
        "experiment_digest": experiment_digest(cfg),
        "version": vit_ablate.__version__,
        "git_rev": git_revision(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
