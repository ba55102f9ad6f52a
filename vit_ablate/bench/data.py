"""The ``data`` section: the configured data module's training loader alone, vs what the model consumes.

When the dataset cannot be loaded (CIFAR not on disk, a missing ImageFolder) a stand-in data module of
the same shape is measured instead — random uint8 images through the same loader path, resizing,
normalisation and augmentation — and labelled as such.

On a GPU (or with ``feed=True``) a second row measures training fed by that loader against training on
one resident batch, step by step on one model: the loader's cost *inside* training, including any
host-device synchronisation it forces (a CPU→GPU copy of pageable memory synchronises the stream).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict

import torch
from omegaconf import DictConfig, OmegaConf

from vit_ablate.bench.context import BenchContext, BenchReport, seeded_model
from vit_ablate.bench.settings import STANDIN_BYTES, TARGETS
from vit_ablate.bench.table import Row
from vit_ablate.bench.timing import Measured, StepTimer, interleaved, make_optimizer, make_train_step, paired_ratio
from vit_ablate.config import to_container
from vit_ablate.training.module import compile_forward

__all__ = ["section_data"]


def section_data(ctx: BenchContext, report: BenchReport) -> None:
    """Each pipeline's loader img/s against the model's (``report.model_img_s``, from the pool): the
    configured data, and the embedded synthetic data at the same shape for comparison."""
    consumption = report.model_img_s
    cfgs = [ctx.cfg]
    img = ctx.spec.img_size
    if ctx.cfg.data.name != "synthetic" and img % 4 == 0 and img // 4 >= 2:
        bytes_per_image = 3 * img * img
        synthetic = OmegaConf.merge(
            ctx.cfg,
            {"data": {"name": "synthetic", "img_size": None, "synthetic": {
                "cell": img // 4, "grid": 4,
                "num_train": int(min(ctx.cfg.data.synthetic.num_train, max(4 * ctx.batch, STANDIN_BYTES // bytes_per_image))),
                "num_val": 8, "num_test": 8}}},
        )
        cfgs.append(synthetic)
    out: Dict[str, Any] = {"model_img_s": consumption, "pipelines": {}}
    for cfg in cfgs:
        label, loader, reason = _train_loader(ctx, cfg)
        if reason:
            report.notes.append(
                f"data: {cfg.data.name} could not be loaded ({reason}); measured a STAND-IN: random uint8 images "
                f"of the same shape through the same {type(loader).__name__} path and augmentation"
            )
        ctx.log(f"data: timing {label} ({type(loader).__name__})")
        measured = _time_loader(ctx, loader)
        ratio = measured.median / consumption if consumption else None
        out["pipelines"][label] = {
            "img_s": measured.median, "img_s_rounds": measured.img_s, "loader": type(loader).__name__,
            "stand_in": reason is not None, "stand_in_reason": reason, "ratio_to_model": ratio,
            "augment": {k: v for k, v in to_container(cfg)["augment"].items()},
        }
        what = f"{label} train loader (incl. augmentation) vs model"
        report.rows.append(Row("data", what, measured.median, consumption, ratio, TARGETS["data"]))
        if cfg is ctx.cfg and ctx.feed:
            out["feed"] = _feed(ctx, report, label, loader)
    if not ctx.feed:
        out["feed"] = {"skipped": "on a CPU the loader's cost simply adds to the step (see the ratio above); "
                                  "set feed=True to measure it inside training anyway"}
    report.results["data"] = out


def _attach(datamodule, device: torch.device, batch: int) -> None:
    """What a data module reads from its trainer (world size, rank, device), without a Trainer."""
    datamodule.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=SimpleNamespace(root_device=device))
    datamodule.per_device_batch_size = batch


def _train_loader(ctx: BenchContext, cfg: DictConfig):
    """(label, loader, stand-in reason or None) for ``cfg.data``: the real training loader, or a
    stand-in of the same shape when the dataset cannot be loaded (e.g. CIFAR not on disk)."""
    from vit_ablate.data import build_datamodule

    datamodule = None
    try:
        datamodule = build_datamodule(cfg)
        _attach(datamodule, ctx.device, ctx.batch)
        return cfg.data.name, datamodule.train_dataloader(), None
    except (FileNotFoundError, OSError, RuntimeError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    standin = _standin(cfg, datamodule, ctx.spec, ctx.batch, ctx.steps)
    _attach(standin, ctx.device, ctx.batch)
    return f"{cfg.data.name} (stand-in)", standin.train_dataloader(), reason


def _time_loader(ctx: BenchContext, loader) -> Measured:
    """Each round: a fresh pass over the loader, its first batch (worker start-up) untimed, then up to
    ``max(steps, 20)`` batches copied to the device."""
    batches = max(ctx.steps, 20)
    available = len(loader) - 1
    if available < 1:
        raise RuntimeError(f"the training loader yields only {len(loader)} batch(es) of {ctx.batch}")
    batches = min(batches, available)
    measured = Measured("data")
    for _ in range(ctx.rounds):
        iterator = iter(loader)
        next(iterator)  # first batch: worker start-up, device copies
        count = images_seen = 0
        with StepTimer(ctx.device) as timer:
            for images, labels in iterator:
                images = images.to(ctx.device, non_blocking=True)
                labels = labels.to(ctx.device, non_blocking=True)
                images_seen += images.shape[0]
                count += 1
                if count >= batches:
                    break
        del iterator
        measured.seconds.append(timer.seconds)
        measured.img_s.append(images_seen / timer.seconds)
    return measured


def _feed(ctx: BenchContext, report: BenchReport, label: str, loader) -> Dict[str, Any]:
    """Training fed by the loader (a fresh batch every step) vs the same training on one resident
    batch, alternating step by step on one model. This is the loader's whole cost inside training,
    including any host-device synchronisation it forces (on a GPU a sync drains the queue, and the
    GPU then idles while the host launches the next step)."""
    device, precision = ctx.device, ctx.precision

    def cycle():
        while True:
            for images, labels in loader:
                yield images.to(device, precision.param_dtype, non_blocking=True), labels.to(device, non_blocking=True)

    stream = cycle()
    resident = next(stream)
    model = seeded_model(ctx, ctx.model_cfg).to(device, precision.param_dtype).train()
    optimizer = make_optimizer(model, ctx.cfg)
    forward = compile_forward(model, ctx.cfg.trainer.compile)
    # one model and one optimizer behind both candidates: they differ only in where the batch comes from
    fed = make_train_step(forward, optimizer, None, None, precision, device, batches=lambda: next(stream))
    fixed = make_train_step(forward, optimizer, *resident, precision, device)
    ctx.log(f"data: training fed by {label} vs a resident batch, step by step")
    measured = interleaved(
        {"fed": fed, "resident": fixed}, images_per_step=ctx.batch, steps=ctx.steps, rounds=ctx.rounds,
        warmup=ctx.warmup, device=device, seed=ctx.seed, progress=ctx.log,
    )
    pair = paired_ratio(measured["fed"], measured["resident"])
    report.rows.append(
        Row("data", f"training fed by {label} vs a resident batch", measured["fed"].median,
            measured["resident"].median, pair["ratio"], None, pair["low"], pair["high"])
    )
    del fed, fixed, model, optimizer, stream
    return {"fed": measured["fed"].as_dict(), "resident": measured["resident"].as_dict(), "ratio": pair["ratio"],
            "ratio_spread": [pair["low"], pair["high"]], "ratio_rounds": pair["rounds"]}


def _standin(cfg: DictConfig, datamodule, spec, batch: int, steps: int):
    """A data module of the same shape as ``cfg.data`` (classes, stored image size, output size,
    normalisation, augmentation, loader path) whose splits are random uint8 images."""
    from vit_ablate.data.base import ImageDataModule, Split
    from vit_ablate.data.device_loader import derive_seed

    like = datamodule
    num_classes = getattr(like, "num_classes", None) or spec.num_classes
    img_size = getattr(like, "img_size", None) or spec.img_size
    native = getattr(like, "native_size", None) or img_size
    in_chans = getattr(like, "in_chans", None) or spec.in_chans
    mean = tuple(getattr(like, "mean", None) or (0.5,) * in_chans)
    std = tuple(getattr(like, "std", None) or (0.5,) * in_chans)
    per_image = in_chans * native * native
    num_train = int(min(50_000, max(batch * (max(steps, 20) + 2), STANDIN_BYTES // per_image)))
    if cfg.data.train_subset:
        num_train = max(min(num_train, int(cfg.data.train_subset)), 2 * batch)
    seed = int(cfg.seed)

    class StandInData(ImageDataModule):
        def _load_split(self, name: str) -> Split:
            generator = torch.Generator().manual_seed(derive_seed("bench-stand-in", seed, name))
            n = num_train if name == "train" else min(num_train, 1024)
            images = torch.randint(0, 256, (n, in_chans, native, native), dtype=torch.uint8, generator=generator)
            labels = torch.randint(0, num_classes, (n,), generator=generator)
            return Split(labels, images=images)

    module = StandInData(cfg)
    module.num_classes, module.img_size, module.native_size, module.in_chans = num_classes, img_size, native, in_chans
    module.mean, module.std = mean, std
    return module
