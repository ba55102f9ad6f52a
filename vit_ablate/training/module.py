"""The LightningModule: a ViT built from ``cfg.model``, timm's optimizer/schedule/mixup, torchmetrics.

It knows nothing of where batches come from. Its only hyperparameter is the resolved run config, so a
checkpoint rebuilds its own model (``ViTModule.load_from_checkpoint(path, weights_only=True)``).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from torch import nn
from lightning.pytorch.utilities import rank_zero_warn
from omegaconf import DictConfig
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.utils import ModelEmaV3
from timm.scheduler import CosineLRScheduler, PolyLRScheduler

from vit_ablate.config import ConfigError, compile_mode, from_container, to_container
from vit_ablate.model import build_model
from vit_ablate.schema import Registry
from vit_ablate.training.callbacks import log
from vit_ablate.training.whole_step import ReplayingOptimizer, WholeTrainStep

# Linear warmup from 0, then the decay that optim.schedule names (paper Table 3: cosine; Beyer et al. 2022)
SCHEDULES: Registry = Registry("optim.schedule")
SCHEDULES.register("cosine")(partial(CosineLRScheduler))
SCHEDULES.register("linear")(partial(PolyLRScheduler, power=1.0))
SCHEDULES.register("constant")(partial(PolyLRScheduler, power=0.0))


LR_SCALE_RULES = {"none": 0.0, "sqrt": 0.5, "linear": 1.0}


def scaled_lr(cfg: DictConfig) -> float:
    """``optim.lr`` rescaled to the global batch (never to the device count) when ``optim.lr_scale_rule`` asks."""
    exponent = LR_SCALE_RULES[cfg.optim.lr_scale_rule]
    return float(cfg.optim.lr) * (cfg.data.batch_size / cfg.optim.lr_base_batch) ** exponent


def optimizer_kwargs(cfg: DictConfig) -> Dict[str, Any]:
    """The arguments for timm's ``create_optimizer_v2`` (also used by ``vit-ablate bench``)."""
    optim = cfg.optim
    extra: Dict[str, Any] = {"eps": optim.eps}
    name = optim.name.lower()
    if "sgd" in name or "momentum" in name:
        extra = {"momentum": optim.momentum}
    elif "adam" in name or "lamb" in name:
        extra["betas"] = tuple(optim.betas)
    return dict(opt=optim.name, lr=scaled_lr(cfg), weight_decay=optim.weight_decay, **extra)


def compile_forward(model: nn.Module, setting: Any) -> Callable[..., torch.Tensor]:
    """``model`` as trainer.compile asks (false: itself; true or a mode: ``torch.compile``d). dynamic=False:
    a second shape is compiled again, never with symbolic sizes, on which Inductor fails for ViT-B/16
    (results/bench/gpu_whole_step)."""
    mode = compile_mode(setting)
    return torch.compile(model, mode=mode, dynamic=False) if mode else model


class ViTModule(L.LightningModule):
    def __init__(self, config: Mapping[str, Any]):
        super().__init__()
        cfg = config if isinstance(config, DictConfig) else from_container(config)
        self.save_hyperparameters({"config": to_container(cfg)})
        self.cfg = cfg
        self.model = build_model(cfg.model)
        # trainer.compile compiles the training forward only: a compiled evaluation (reduce-overhead, H100)
        # gave other val/acc1 inside fit than in test on the same weights, so reported metrics stay eager.
        # object.__setattr__: not a second submodule, so checkpoints keep the model's own parameter names.
        object.__setattr__(self, "_train_forward", compile_forward(self.model, cfg.trainer.compile))
        # trainer.cuda_graph: the whole step is one replayed CUDA graph, under manual optimization (whole_step.py)
        self.automatic_optimization = not cfg.trainer.cuda_graph
        self._whole_step: Optional[WholeTrainStep] = None
        # timm's exponential moving average of the weights; when on, it is what gets evaluated
        self.ema = ModelEmaV3(self.model, decay=cfg.optim.ema_decay) if cfg.optim.ema else None

        num_classes, aug = cfg.model.num_classes, cfg.augment
        self.mixup: Optional[Mixup] = None
        if aug.mixup > 0 or aug.cutmix > 0:  # timm's Mixup folds label smoothing into its soft targets
            self.mixup = Mixup(mixup_alpha=aug.mixup, cutmix_alpha=aug.cutmix, label_smoothing=aug.label_smoothing, num_classes=num_classes)
            self.soft_loss = SoftTargetCrossEntropy()
        for stage in ("val", "test"):
            setattr(self, f"{stage}_acc1", torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=1, average="micro"))
            setattr(self, f"{stage}_acc5", torchmetrics.classification.MulticlassAccuracy(num_classes, top_k=min(5, num_classes), average="micro"))
            # nan_strategy="disable": the default checks every update on the host (a sync per step); a
            # non-finite evaluation loss stays visible as nan, training losses are screened on the device
            setattr(self, f"{stage}_loss", torchmetrics.MeanMetric(nan_strategy="disable"))
        self.train_loss = torchmetrics.MeanMetric(nan_strategy="disable")
        # counted on the device, read by DivergenceCallback without a host sync every step
        self.register_buffer("nonfinite_steps", torch.zeros((), dtype=torch.long), persistent=False)

    def apply_init(self, run_dir: Optional[Path] = None):
        """Initialise the model (and its EMA) from ``init.path`` (model/transfer.py, paper §3.2); print the
        summary and save it in ``run_dir`` as ``init_summary.json``."""
        from vit_ablate.model.transfer import apply_init, write_summary

        init = self.cfg.init
        try:
            summary = apply_init(self.model, init.path, init.format, list(init.exclude or ()))
        except (ValueError, FileNotFoundError) as exc:  # InitError, UnsafeCheckpointError: exit 2, nothing trained
            raise ConfigError(str(exc)) from None
        if self.ema is not None:
            self.ema.set(self.model)
        if run_dir is not None:
            log(summary.describe())
            write_summary(summary, run_dir)
        return summary

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.mixup is not None:  # soft targets, label smoothing folded in
            return self.soft_loss(logits, targets)
        return F.cross_entropy(logits, targets, label_smoothing=self.cfg.augment.label_smoothing)

    def training_step(self, batch, batch_idx):
        images, targets = batch
        if self.mixup is not None:
            images, targets = self.mixup(images, targets)
        log_step = self._log_this_step()  # asked before the step: a replayed step advances global_step
        if self.automatic_optimization:
            loss = self._loss(self._train_forward(images), targets)
        else:
            loss = self._replayed_step(images, targets)
        finite = torch.isfinite(loss.detach())
        self.nonfinite_steps += (~finite).long()
        self.train_loss.update(torch.where(finite, loss.detach(), torch.zeros_like(loss)))
        if log_step:
            self.log("train/loss", loss.detach(), on_step=True, on_epoch=False, prog_bar=True, sync_dist=False)
        return loss

    def _replayed_step(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """trainer.cuda_graph: Lightning steps the optimizer (counting the step, running its hooks), the
        optimizer's step runs the whole captured step, then the schedule advances as Lightning's would."""
        optimizer = self.optimizers()
        if self._whole_step is None:
            inner = optimizer.optimizer.optimizer  # LightningOptimizer → ReplayingOptimizer → the real one
            self._whole_step = WholeTrainStep(self._train_forward, self.model, self._loss, inner, grad_clip=self.cfg.optim.grad_clip)
        loss = optimizer.step(closure=lambda: self._whole_step(images, targets))
        self.lr_scheduler_step(self.lr_schedulers(), None)
        return loss

    def _log_this_step(self) -> bool:
        """Whether a per-step ``self.log`` reaches anyone (a progress bar, or a logger on one of its
        ``log_every_n_steps`` steps): each call costs ~1 ms of host time, a small ViT's whole GPU step."""
        try:
            trainer = self.trainer
        except RuntimeError:  # not attached to a Trainer (a bare forward in a test or a notebook)
            return False
        if trainer.progress_bar_callback is not None:
            return True
        # Lightning's rule for a logging step: before the optimizer step global_step counts the steps done
        return (trainer.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.should_stop

    def on_train_start(self) -> None:
        # a checkpoint keeps its optimizer's "capturable" flag: an eager run resumed from a whole-step run's
        # checkpoint updates on the host again (WholeTrainStep sets the flag when it captures)
        for optimizer in self.trainer.optimizers:
            for group in optimizer.param_groups:
                if "capturable" in group:
                    group["capturable"] = False
        if not self.automatic_optimization and self.device.type != "cuda":
            rank_zero_warn(f"trainer.cuda_graph=true on {self.device.type}: the whole step runs eagerly (CUDA graphs need a CUDA device)")

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self.ema is not None:
            self.ema.update(self.model, step=self.global_step)

    def _evaluate(self, batch, stage: str) -> None:
        images, labels = batch
        logits = self.ema.module(images) if self.ema is not None else self(images)
        loss = F.cross_entropy(logits.float(), labels, reduction="none")
        getattr(self, f"{stage}_acc1").update(logits, labels)
        getattr(self, f"{stage}_acc5").update(logits, labels)
        getattr(self, f"{stage}_loss").update(loss)  # per-sample: the epoch mean is over samples, not batches

    def validation_step(self, batch, batch_idx):
        self._evaluate(batch, "val")

    def test_step(self, batch, batch_idx):
        self._evaluate(batch, "test")

    def _log_epoch(self, stage: str) -> None:
        # torchmetrics all-reduce across ranks in compute(): every sample counted once (no padding)
        for name in ("acc1", "acc5", "loss"):
            metric = getattr(self, f"{stage}_{name}")
            self.log(f"{stage}/{name}", metric.compute(), prog_bar=(name == "acc1"), sync_dist=False, rank_zero_only=False)
            metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def on_train_epoch_end(self) -> None:
        self.log("train/epoch_loss", self.train_loss.compute(), sync_dist=False)
        self.train_loss.reset()
        self.log("lr", self.optimizers().param_groups[0]["lr"])

    def configure_optimizers(self):
        optim = self.cfg.optim
        # timm exempts model.no_weight_decay() (position tables, class token), biases and norms from decay
        optimizer = create_optimizer_v2(self.model, **optimizer_kwargs(self.cfg))
        if not self.automatic_optimization:
            optimizer = ReplayingOptimizer(optimizer)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = optim.warmup_steps or math.ceil(optim.warmup_epochs * total / max(1, self.trainer.max_epochs or 1))
        if warmup >= total:
            rank_zero_warn(f"the warmup ({warmup} steps) is at least as long as the run ({total} steps): the learning rate "
                           f"never reaches optim.lr={optim.lr:g} and no decay follows; shorten optim.warmup_steps or optim.warmup_epochs")
        warmup = min(warmup, total)
        scheduler = SCHEDULES.get(optim.schedule)(
            optimizer, t_initial=max(1, total - warmup), lr_min=optim.min_lr, warmup_t=warmup, warmup_lr_init=0.0,
            warmup_prefix=True, t_in_epochs=False,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def lr_scheduler_step(self, scheduler, metric) -> None:
        # timm schedulers are driven by the update count, not by Lightning's torch-scheduler protocol
        scheduler.step_update(num_updates=self.global_step)
