"""The ``framework`` section: a training step through ViTModule and Lightning's Trainer vs a plain
PyTorch loop doing the same work, stepping in lockstep: the framework tax.

One ``Trainer.fit`` (from ``training/trainer.py::build_trainer``, as for a run) of ``warmup + rounds ×
steps`` batches; after each Lightning step a callback takes one step of the plain loop on its own copy
of the module: ``ViTModule.training_step`` itself (the forward, mixup, the loss), backward, clipping,
the module's own optimizer and schedule (from ``configure_optimizers``, given the run's length by
that same Trainer), EMA. A Lightning step's time is the interval between two visits of the callback
(everything Lightning does per batch); a plain step's time is the plain loop's share of the visit.
"""

from __future__ import annotations

import itertools
import logging
import tempfile
import warnings

import torch

from vit_ablate import rundir
from vit_ablate.bench.context import Bench, Row, random_inputs
from vit_ablate.bench.timing import Clock, Measured, paired_ratio

__all__ = ["section_framework"]


def _plain_loop(module, trainer, batch, precision, device):
    """One step of ``module`` trained by hand, as Lightning's automatic optimisation would train it."""
    module.automatic_optimization = True  # trainer.cuda_graph: the plain loop steps eagerly
    module.trainer = trainer  # configure_optimizers reads the run's length (and so the warmup) from it
    try:
        configured = module.configure_optimizers()
    finally:
        module.trainer = None
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip, scaler, updates = module.cfg.optim.grad_clip, precision.grad_scaler(device), [0]

    def step() -> None:
        with precision.autocast(device):
            loss = module.training_step(batch, updates[0])
        scaler.scale(loss).backward()
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        updates[0] += 1
        scheduler.step_update(num_updates=updates[0])  # as ViTModule.lr_scheduler_step
        if module.ema is not None:
            module.ema.update(module.model, step=updates[0])

    return step


def section_framework(bench: Bench) -> None:
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.loggers import CSVLogger

    from vit_ablate.training.callbacks import DivergenceCallback, EpochRecorder, EpochSeeding
    from vit_ablate.training.module import ViTModule
    from vit_ablate.training.trainer import build_trainer

    cfg, device, precision, warmup = bench.cfg, bench.device, bench.precision, bench.warmup
    if cfg.trainer.cuda_graph and device.type == "cuda":
        bench.notes.append("framework: with trainer.cuda_graph=true Lightning replays the captured step and the plain "
                           "loop runs eagerly: the ratio is not Lightning's overhead alone")
    total = warmup + bench.rounds * bench.steps
    torch.manual_seed(bench.seed)
    lit, plain = ViTModule(cfg), ViTModule(cfg)
    plain.load_state_dict(lit.state_dict())
    images, labels = random_inputs(bench, bench.spec, bench.batch)
    plain.to(device, precision.param_dtype).train()
    clock = Clock(device)

    class Lockstep(Callback):
        def __init__(self):
            self.exit_mark, self.lightning, self.plain = None, [], []  # (start, end) marks after the warmup

        def on_fit_start(self, trainer, pl_module):
            self.plain_step = _plain_loop(plain, trainer, (images.to(precision.param_dtype), labels), precision, device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            enter = clock.mark()
            with torch.enable_grad():
                self.plain_step()
            leave = clock.mark()
            if batch_idx >= warmup:
                self.lightning.append((self.exit_mark, enter))
                self.plain.append((enter, leave))
            self.exit_mark = leave

    lockstep = Lockstep()
    bench.log(f"framework: Lightning Trainer.fit of {warmup} + {bench.rounds}×{bench.steps} steps, a plain loop in lockstep")
    with tempfile.TemporaryDirectory(prefix="vit-ablate-bench-") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lightning_logger = logging.getLogger("lightning.pytorch")
        level = lightning_logger.level
        lightning_logger.setLevel(logging.ERROR)  # the "GPU available" banner is not benchmark output
        try:
            # as a run's Trainer, less checkpoints (epoch-end work); EpochRecorder is a Checkpoint, so
            # Lightning adds no ModelCheckpoint of its own
            trainer = build_trainer(
                cfg, tmp, [EpochSeeding(cfg.seed), DivergenceCallback(), EpochRecorder(rundir.RunDir(tmp).metrics), lockstep],
                [CSVLogger(save_dir=tmp, name="logs")] if cfg.logging.csv else [],
                max_epochs=1, max_steps=total, accelerator="cuda" if device.type == "cuda" else "cpu",
                devices=[device.index or 0] if device.type == "cuda" else 1, num_nodes=1, accumulate_grad_batches=1,
                limit_train_batches=1.0, limit_val_batches=0,
            )
            # an iterator, not a list: Lightning would read a list as a list of loaders
            trainer.fit(lit, train_dataloaders=itertools.repeat((images, labels), total))
        finally:
            lightning_logger.setLevel(level)
    clock.sync()
    if len(lockstep.lightning) != bench.rounds * bench.steps:
        raise RuntimeError(f"Lightning ran {trainer.global_step} of {total} steps")
    runs = {}
    for name, marks in (("lightning", lockstep.lightning), ("plain", lockstep.plain)):
        seconds = [clock.seconds(a, b) for a, b in marks]
        rounds = [sum(seconds[r * bench.steps:(r + 1) * bench.steps]) for r in range(bench.rounds)]
        runs[name] = Measured(name, [bench.steps * bench.batch / s for s in rounds], seconds)
    pair = paired_ratio(runs["lightning"], runs["plain"])
    bench.results["framework"] = {
        **pair, "tax": 1 / pair["ratio"] - 1,
        "lightning": runs["lightning"].as_dict(), "plain": runs["plain"].as_dict(),
        "loggers": ["csv"] if cfg.logging.csv else [], "callbacks": ["EpochSeeding", "DivergenceCallback", "EpochRecorder"],
    }
    bench.rows.append(Row("framework", "Lightning Trainer.fit vs plain PyTorch loop", runs["lightning"].median,
                          runs["plain"].median, pair["ratio"], pair["low"], pair["high"]))
