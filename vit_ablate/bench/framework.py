"""The ``framework`` section: a training step through ViTModule + Lightning's Trainer vs a plain
PyTorch loop doing the same work (optimizer, schedule, grad clipping, loss), stepping in lockstep:
the "framework tax".

The Trainer comes from ``training/trainer.py::build_trainer``, as for a training run; the plain loop's
optimizer and learning-rate schedule come from ``ViTModule.configure_optimizers`` itself, given the
run's length by that same Trainer, so both sides follow one schedule by construction.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import warnings
from typing import Any, List, Tuple

import torch
import torch.nn.functional as F

from vit_ablate import rundir
from vit_ablate.bench.context import BenchContext, BenchReport, random_inputs
from vit_ablate.bench.settings import TARGETS
from vit_ablate.bench.table import Row
from vit_ablate.bench.timing import Clock, Measured, Precision, paired_ratio, synchronize
from vit_ablate.training.whole_step import ReplayingOptimizer

__all__ = ["section_framework"]


class _FixedBatches:
    """An in-memory loader: the same device-resident batch ``n`` times (what both loops consume)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n: int):
        self.batch = (images, labels)
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's banner lines and per-run hints (and timm's scheduler notices) are not benchmark output."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "timm")
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


class _PlainLoop:
    """The same work as ViTModule.training_step + Lightning's optimisation, written out, on its own
    copy of the module (``module``, already on the device)."""

    def __init__(self, module, trainer, batches: _FixedBatches, precision: Precision, device: torch.device):
        # The module's own optimizer and schedule: configure_optimizers reads the run's length (and
        # so the warmup) from the trainer, here the Trainer the Lightning side runs in.
        module.trainer = trainer
        try:
            configured = module.configure_optimizers()
        finally:
            module.trainer = None
        self.module = module
        optimizer = configured["optimizer"]
        # trainer.cuda_graph: the plain loop steps the optimizer that the whole step wraps
        self.optimizer = optimizer.optimizer if isinstance(optimizer, ReplayingOptimizer) else optimizer
        self.scheduler = configured["lr_scheduler"]["scheduler"]
        self.precision = precision
        self.device = device
        self.clip = module.cfg.optim.grad_clip
        self.smoothing = module.cfg.augment.label_smoothing
        self.scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.batches = iter(batches)
        self.updates = 0

    def step(self) -> None:
        plain, optimizer, clip = self.module, self.optimizer, self.clip
        x, y = next(self.batches)
        with self.precision.autocast(self.device):
            if plain.mixup is not None:
                x, targets = plain.mixup(x, y)
                loss = plain.soft_loss(plain(x), targets)
            else:
                loss = F.cross_entropy(plain(x), y, label_smoothing=self.smoothing)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if clip:
                self.scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(self.params, clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.updates += 1
        # as ViTModule.lr_scheduler_step and on_train_batch_end, with the update count for global_step
        self.scheduler.step_update(num_updates=self.updates)
        if plain.ema is not None:
            plain.ema.update(plain.model, step=self.updates)


def section_framework(ctx: BenchContext, report: BenchReport) -> None:
    """One Lightning ``Trainer.fit`` of ``warmup + rounds × steps`` batches, with a plain PyTorch
    loop stepping in lockstep from a callback: after each Lightning step the plain loop takes its
    own step on its own copy of the module. A Lightning step's time is the interval between two
    visits of the callback (everything Lightning does per batch: fetch, hooks, training_step,
    backward, clipping, optimizer, scheduler, logging, callbacks); a plain step's time is the
    plain loop's share of the visit. Trainer setup and teardown are outside every interval."""
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import CSVLogger

    from vit_ablate.training.callbacks import DivergenceCallback, EpochRecorder, EpochSeeding
    from vit_ablate.training.module import ViTModule
    from vit_ablate.training.trainer import build_trainer

    cfg, device, precision, warmup = ctx.cfg, ctx.device, ctx.precision, ctx.warmup
    if cfg.trainer.cuda_graph and device.type == "cuda":
        report.notes.append("framework: with trainer.cuda_graph=true the Lightning side replays the captured step and "
                            "the plain loop runs eager: the ratio is not Lightning's overhead alone")
    total = warmup + ctx.rounds * ctx.steps
    torch.manual_seed(ctx.seed)
    lit = ViTModule(cfg)
    plain = ViTModule(cfg)
    plain.load_state_dict(lit.state_dict())
    images, labels = random_inputs(ctx, ctx.spec, ctx.batch)
    plain.to(device, precision.param_dtype).train()
    plain_batches = _FixedBatches(images.to(precision.param_dtype), labels, total)
    clock = Clock(device)

    class Lockstep(Callback):
        """Builds the plain loop once the Trainer knows the run's length, then steps it after every
        Lightning step and keeps both sides' intervals (after the warmup steps)."""

        def __init__(self):
            self.plain_loop = None
            self.exit_mark = None
            self.lightning: List[Tuple[Any, Any]] = []
            self.plain: List[Tuple[Any, Any]] = []

        def on_fit_start(self, trainer, pl_module):
            self.plain_loop = _PlainLoop(plain, trainer, plain_batches, precision, device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            enter = clock.mark()
            with torch.enable_grad():
                self.plain_loop.step()
            leave = clock.mark()
            if batch_idx >= warmup:
                self.lightning.append((self.exit_mark, enter))
                self.plain.append((enter, leave))
            self.exit_mark = leave

    lockstep = Lockstep()
    accelerator = "cuda" if device.type == "cuda" else "cpu"
    devices = [device.index or 0] if device.type == "cuda" else 1
    clip = cfg.optim.grad_clip
    ctx.log(f"framework: Lightning Trainer.fit of {warmup} + {ctx.rounds}×{ctx.steps} steps, a plain loop in lockstep")
    with tempfile.TemporaryDirectory(prefix="vit-ablate-bench-") as tmp, _quiet_lightning():
        loggers: List[Any] = []
        if cfg.logging.csv:
            loggers.append(CSVLogger(save_dir=tmp, name="logs", version=""))
        if cfg.logging.tensorboard:
            try:
                from lightning.pytorch.loggers import TensorBoardLogger

                loggers.append(TensorBoardLogger(save_dir=tmp, name="tensorboard", version=""))
            except Exception:  # tensorboard not installed
                pass
        trainer = build_trainer(
            cfg, tmp,
            # as run.py, less ModelCheckpoint/RankRecord (epoch-end / first-batch only). EpochRecorder
            # is a Checkpoint, so Lightning adds no default ModelCheckpoint. Lockstep comes last.
            [EpochSeeding(cfg.seed), DivergenceCallback(), EpochRecorder(rundir.RunDir(tmp).metrics), lockstep],
            loggers,
            max_epochs=1,
            max_steps=total,
            accelerator=accelerator,
            devices=devices,
            num_nodes=1,
            accumulate_grad_batches=1,
            limit_train_batches=1.0,
            limit_val_batches=0,
            check_val_every_n_epoch=1,
        )
        trainer.fit(lit, train_dataloaders=_FixedBatches(images, labels, total))
    synchronize(device)
    measured_steps = ctx.rounds * ctx.steps
    if len(lockstep.lightning) != measured_steps:
        raise RuntimeError(f"Lightning ran {trainer.global_step} of {total} steps; expected {measured_steps} timed steps")
    runs = {"lightning": Measured("lightning"), "plain": Measured("plain")}
    for name, marks in (("lightning", lockstep.lightning), ("plain", lockstep.plain)):
        runs[name].turns = [clock.seconds(a, b) for a, b in marks]
        for r in range(ctx.rounds):
            seconds = sum(runs[name].turns[r * ctx.steps : (r + 1) * ctx.steps])
            runs[name].seconds.append(seconds)
            runs[name].img_s.append(ctx.steps * ctx.batch / seconds)
    ctx.log(
        "framework: Lightning " + ", ".join(f"{x:.1f}" for x in runs["lightning"].img_s)
        + " | plain " + ", ".join(f"{x:.1f}" for x in runs["plain"].img_s) + " img/s per round"
    )
    pair = paired_ratio(runs["lightning"], runs["plain"])
    lm, pm = runs["lightning"], runs["plain"]
    report.results["framework"] = {
        "lightning_img_s": lm.median, "plain_img_s": pm.median, "ratio": pair["ratio"], "ratio_rounds": pair["rounds"],
        "ratio_spread": [pair["low"], pair["high"]], "spread": pair["spread"],
        "tax": 1 / pair["ratio"] - 1 if pair["ratio"] else None,
        "lightning_img_s_rounds": lm.img_s, "plain_img_s_rounds": pm.img_s,
        "lightning_seconds_rounds": lm.seconds, "plain_seconds_rounds": pm.seconds,
        "lightning_step_seconds": lm.turns, "plain_step_seconds": pm.turns,
        "method": "one Trainer.fit; a plain loop steps in lockstep from a callback after every Lightning step",
        "warmup_steps": warmup, "grad_clip": clip, "log_every_n_steps": int(cfg.trainer.log_every_n_steps),
        "loggers": [n for n, on in (("csv", cfg.logging.csv), ("tensorboard", cfg.logging.tensorboard)) if on],
        "callbacks": ["EpochSeeding", "DivergenceCallback", "EpochRecorder"],
        "progress_bar": False,
    }
    if cfg.logging.wandb:
        report.notes.append("framework: W&B logging is left out of the benchmark (it would create a W&B run)")
    report.rows.append(
        Row("framework", "Lightning Trainer.fit vs plain PyTorch loop", lm.median, pm.median, pair["ratio"],
            TARGETS["framework"], pair["low"], pair["high"])
    )
