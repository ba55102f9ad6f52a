"""The one place a Lightning ``Trainer`` is built from a run config (training and ``vit-ablate bench``).

Both callers get the same gradient clipping (paper Table 3: global norm 1), determinism, logging
cadence and the settings our data modules rely on (no sanity validation, no Lightning sampler: the
data modules shard themselves without padding); each adds its own callbacks, loggers and limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import lightning as L
from omegaconf import DictConfig


def build_trainer(cfg: DictConfig, root_dir: str | Path, callbacks: Sequence[Any], loggers: Sequence[Any], **overrides: Any) -> L.Trainer:
    """A Trainer for ``cfg``; ``overrides`` replace single Trainer arguments (a benchmark's step count,
    a resolved strategy or precision)."""
    trainer = cfg.trainer
    arguments = dict(
        default_root_dir=str(root_dir),
        max_epochs=trainer.max_epochs if trainer.max_epochs > 0 else -1,
        max_steps=trainer.max_steps,
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        num_nodes=trainer.num_nodes,
        precision=trainer.precision,
        # with trainer.cuda_graph the clipping is inside the captured step (Lightning clips only in
        # automatic optimization)
        gradient_clip_val=None if trainer.cuda_graph else cfg.optim.grad_clip,
        gradient_clip_algorithm="norm",
        deterministic=trainer.deterministic,
        limit_train_batches=trainer.limit_train_batches,
        limit_val_batches=trainer.limit_val_batches,
        check_val_every_n_epoch=trainer.check_val_every_n_epoch,
        log_every_n_steps=trainer.log_every_n_steps,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=list(loggers) or False,
        callbacks=list(callbacks),
    )
    unknown = set(overrides) - set(arguments) - {"strategy", "sync_batchnorm", "accumulate_grad_batches", "plugins"}
    if unknown:
        raise TypeError(f"build_trainer: unknown Trainer arguments {sorted(unknown)}")
    arguments.update(overrides)
    return L.Trainer(**arguments)
