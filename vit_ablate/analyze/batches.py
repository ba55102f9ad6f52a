"""Evaluation batches of a data module for analysis: the whole split (or chosen images), one process.

The data module's own ``eval_dataloader`` shards a split across the ranks of its trainer; analysis
(and few-shot evaluation, which runs on every rank after training) needs *every* image of a split on
every process, so batches are assembled here from the same public pieces — ``DeviceLoader`` for
in-memory splits, timm/torchvision eval transforms for splits on disk — with world size 1. Images
are unaugmented and normalised exactly as in evaluation.
"""

from __future__ import annotations

from typing import Iterator, Optional, Tuple

import torch
from torch import Tensor

from vit_ablate.data.device_loader import DeviceLoader
from vit_ablate.data.sample_loader import FileImageDataset, eval_transform, make_sample_loader

__all__ = ["split_batches", "to_display"]


def _out_size(datamodule) -> Optional[int]:
    native = getattr(datamodule, "native_size", None)
    return datamodule.img_size if native not in (None, datamodule.img_size) else None


def split_batches(
    datamodule,
    split: str,
    *,
    indices: Optional[Tensor] = None,
    batch_size: int = 64,
    device: torch.device | str | None = None,
) -> Iterator[Tuple[Tensor, Tensor]]:
    """``(images, labels)`` batches of ``split`` (``indices`` only, in that order, when given).

    Images are float, normalised with the data module's mean/std and resized to its ``img_size``;
    both tensors are on ``device`` (default CPU).
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    data = datamodule.split(split)
    labels, images, paths = data.labels, data.images, data.paths
    if indices is not None:
        indices = torch.as_tensor(indices, dtype=torch.long).cpu()
        labels = labels[indices]
        if images is not None:
            images = images[indices.to(images.device)]
        else:
            paths = [paths[i] for i in indices.tolist()]
    if len(labels) == 0:
        return
    batch_size = max(1, int(batch_size))
    if images is not None:
        loader = DeviceLoader(
            images.to(device),
            labels.to(device),
            batch_size=batch_size,
            mean=datamodule.mean,
            std=datamodule.std,
            train=False,
            out_size=_out_size(datamodule),
        )
        yield from loader
        return
    transform = eval_transform(datamodule.img_size, datamodule.mean, datamodule.std, getattr(datamodule, "native_size", None))
    dataset = FileImageDataset(paths, labels, transform)
    workers = int(getattr(getattr(datamodule, "data_cfg", None), "num_workers", 0) or 0)
    loader = make_sample_loader(dataset, batch_size=batch_size, train=False, seed=0, num_workers=workers)
    for batch_images, batch_labels in loader:
        yield batch_images.to(device, non_blocking=True), batch_labels.to(device, non_blocking=True)


def to_display(images: Tensor, mean, std) -> Tensor:
    """Normalised ``(B, C, H, W)`` images back to [0, 1] for drawing."""
    mean_t = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    std_t = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images * std_t + mean_t).clamp(0.0, 1.0)

