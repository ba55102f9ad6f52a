"""The ``data`` section: the configured training loader alone, vs what the model consumes.

When the dataset cannot be loaded (CIFAR not on disk, a missing image folder) a stand-in is measured
instead, labelled as such: the same data module class, so the same loader path, resizing,
normalisation and augmentation, whose splits are random uint8 images of the same shape.

With ``feed`` (the default on a GPU) a second row measures training fed by that loader against
training on one resident batch, step by step on one model: the loader's cost *inside* training,
including any host-device synchronisation it forces.
"""

from __future__ import annotations

import statistics
from types import SimpleNamespace
from typing import Any, Dict, List

import torch

from vit_ablate.bench.context import Bench, Row, seeded_model
from vit_ablate.bench.models import measure_models
from vit_ablate.bench.timing import interleaved, make_optimizer, make_train_step, paired_ratio, timed
from vit_ablate.config import to_container

__all__ = ["section_data"]


def section_data(bench: Bench) -> None:
    if bench.model_img_s is None:
        bench.model_img_s = measure_models(bench, {"ours": seeded_model(bench, bench.model_cfg)})["ours"].median
    label, loader, reason = _train_loader(bench)
    if reason:
        bench.notes.append(f"data: {bench.cfg.data.name} could not be loaded ({reason}); measured a STAND-IN: random "
                           f"uint8 images of the same shape through the same {type(loader).__name__} path and augmentation")
    bench.log(f"data: timing {label} ({type(loader).__name__})")
    rounds = _time_loader(bench, loader)
    img_s = statistics.median(rounds)
    ratio = img_s / bench.model_img_s
    out: Dict[str, Any] = {"pipeline": label, "loader": type(loader).__name__, "img_s": img_s, "img_s_rounds": rounds,
                           "model_img_s": bench.model_img_s, "ratio_to_model": ratio, "stand_in_reason": reason,
                           "augment": to_container(bench.cfg)["augment"]}
    bench.rows.append(Row("data", f"{label} train loader (incl. augmentation) vs model", img_s, bench.model_img_s, ratio))
    if bench.feed:
        out["feed"] = _feed(bench, label, loader)
    bench.results["data"] = out


def _train_loader(bench: Bench):
    """(label, loader, why a stand-in is measured or None)."""
    from vit_ablate.data import build_datamodule

    datamodule = None
    try:
        datamodule = build_datamodule(bench.cfg)
        return bench.cfg.data.name, _attach(bench, datamodule).train_dataloader(), None
    except (OSError, RuntimeError, ValueError) as exc:  # FileNotFoundError is an OSError
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return f"{bench.cfg.data.name} (stand-in)", _attach(bench, _stand_in(bench, datamodule)).train_dataloader(), reason


def _attach(bench: Bench, datamodule):
    """What a data module reads from its Trainer (world size, rank, device), without a Trainer."""
    datamodule.trainer = SimpleNamespace(world_size=1, global_rank=0, strategy=SimpleNamespace(root_device=bench.device))
    datamodule.per_device_batch_size = bench.batch
    return datamodule


def _stand_in(bench: Bench, like):
    """A data module of ``like``'s class (of the base class when even ``like`` could not be made)
    whose splits are random uint8 images, at the data's stored size, else the model's."""
    from vit_ablate.data.base import ImageDataModule, Split

    spec, n = bench.spec, bench.batch * (max(bench.steps, 20) + 2)
    native = getattr(like, "native_size", None) or getattr(like, "img_size", None) or spec.img_size

    class StandIn(type(like) if like is not None else ImageDataModule):
        num_classes, img_size, in_chans, native_size = spec.num_classes, spec.img_size, spec.in_chans, native

        def __init__(self, cfg):
            ImageDataModule.__init__(self, cfg)  # not the source's own: it would look for its files

        def _load_split(self, name: str) -> Split:
            generator = torch.Generator().manual_seed(bench.seed)
            images = torch.randint(0, 256, (n, spec.in_chans, native, native), dtype=torch.uint8, generator=generator)
            return Split(torch.randint(0, spec.num_classes, (n,), generator=generator), images=images)

    return StandIn(bench.cfg)


def _time_loader(bench: Bench, loader) -> List[float]:
    """img/s per round: a fresh pass over the loader, its first batch (worker start-up) untimed, then
    up to ``max(steps, 20)`` batches copied to the device."""
    batches = min(max(bench.steps, 20), len(loader) - 1)
    if batches < 1:
        raise RuntimeError(f"the training loader yields only {len(loader)} batch(es) of {bench.batch}")
    img_s = []
    for _ in range(bench.rounds):
        iterator, seen = iter(loader), []
        next(iterator)

        def fetch() -> None:
            images, labels = next(iterator)
            seen.append(images.to(bench.device, non_blocking=True).shape[0])
            labels.to(bench.device, non_blocking=True)

        seconds = timed(bench.device, fetch, batches)
        img_s.append(sum(seen) / seconds)
    return img_s


def _feed(bench: Bench, label: str, loader) -> Dict[str, Any]:
    """Training fed by the loader (a fresh batch every step) vs the same training on one resident
    batch, alternating step by step on one model and one optimizer: they differ only in where the
    batch comes from."""
    from vit_ablate.training.module import compile_forward

    device, precision = bench.device, bench.precision

    def cycle():
        while True:
            for images, labels in loader:
                yield images.to(device, precision.param_dtype, non_blocking=True), labels.to(device, non_blocking=True)

    stream = cycle()
    resident = next(stream)
    model = seeded_model(bench, bench.model_cfg).to(device, precision.param_dtype).train()
    optimizer = make_optimizer(model, bench.cfg)
    forward = compile_forward(model, bench.cfg.trainer.compile)
    candidates = {"fed": make_train_step(forward, optimizer, lambda: next(stream), precision, device),
                  "resident": make_train_step(forward, optimizer, lambda: resident, precision, device)}
    bench.log(f"data: training fed by {label} vs a resident batch, step by step")
    measured = interleaved(candidates, images_per_step=bench.batch, steps=bench.steps, rounds=bench.rounds,
                           warmup=bench.warmup, device=device, seed=bench.seed, progress=bench.log)
    pair = paired_ratio(measured["fed"], measured["resident"])
    bench.rows.append(Row("data", f"training fed by {label} vs a resident batch", measured["fed"].median,
                          measured["resident"].median, pair["ratio"], pair["low"], pair["high"]))
    return {**{name: m.as_dict() for name, m in measured.items()}, **pair}
