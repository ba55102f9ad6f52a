"""Batches straight from an in-memory uint8 tensor, augmented in batches where the tensor lives.

The small datasets of the ablations (synthetic, CIFAR, small image folders) fit in memory many times
over, yet a per-sample ``DataLoader`` spends most of a 2-core machine (or starves a GPU) decoding and
collating 32×32 images one by one. Here a split is one uint8 tensor ``(N, C, H, W)`` (on the training
device with ``data.on_device``) and a batch is one ``index_select``, one vectorised pad-crop/flip gather
(or one ``roi_align`` for the Inception crop) and one normalisation. RandAugment acts on single PIL
images: the data modules send a training split that asks for it through the per-sample path
(``sample_loader.py``).

Distributed semantics, shared with the per-sample path through ``ShardSampler``:

* training — one permutation per epoch, seeded from ``(seed, epoch)`` and identical on every rank;
  rank ``r`` takes ``perm[r::world][:N // world]`` and drops its last partial batch, so every rank runs
  the same number of steps (DDP's all-reduce requires it). Augmentation draws come from
  ``(seed, epoch, rank)``.
* evaluation — no shuffle, no augmentation; rank ``r`` takes ``r::world``: every sample exactly once
  across ranks, without ``DistributedSampler``'s padding duplicates (which would bias accuracies).
  Ranks may then run different numbers of batches, so metrics are reduced once at epoch end
  (torchmetrics), never all-reduced per step.

All random numbers are drawn on the CPU and then moved, so a seed gives the same batches on any device.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DistributedSampler

__all__ = ["derive_seed", "ShardSampler", "DeviceLoader", "batch_crop_flip", "batch_inception_crop", "normalize_batch"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any values, stable across processes (``hash()`` is salted per process)."""
    return int.from_bytes(hashlib.sha256("/".join(map(repr, parts)).encode()).digest()[:8], "little") & ((1 << 63) - 1)


class ShardSampler(DistributedSampler):
    """The index order of one rank for one epoch (semantics in the module docstring).

    A ``DistributedSampler`` only so that Lightning sees it as distributed and does not swap in its own
    (padding) sampler; Lightning calls ``set_epoch`` on ``loader.sampler`` every epoch. ``loader_generator``
    (a worker ``DataLoader``'s) is reseeded from ``(seed, epoch, rank)`` there, so that worker seeds, and
    every random transform, are a function of the epoch, not of how many epochs ran before.
    """

    def __init__(self, num_samples: int, *, train: bool, seed: int = 0, world_size: int = 1, rank: int = 0,
                 loader_generator: Optional[torch.Generator] = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not valid for world size {world_size}")
        super().__init__(range(num_samples), num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train)
        self.size, self.train, self.loader_generator = num_samples, train, loader_generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(derive_seed(self.seed, "workers", epoch, self.rank))

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch, as a CPU int64 tensor."""
        if not self.train:
            return torch.arange(self.rank, self.size, self.num_replicas)
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", self.epoch)))
        return perm[self.rank:: self.num_replicas][: self.size // self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        return self.size // self.num_replicas if self.train else len(range(self.rank, self.size, self.num_replicas))


def batch_crop_flip(images: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """Random pad-and-crop and horizontal flip of a uint8 batch ``(B, C, H, W)`` in one gather: per sample
    ``RandomCrop(H, padding=padding)`` (zero fill) then ``RandomHorizontalFlip()``."""
    b, _, h, w = images.shape
    device = images.device
    offsets = torch.zeros(b, 2, dtype=torch.long)
    if padding > 0:
        images = F.pad(images, (padding,) * 4)
        offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator)
    offsets = offsets.to(device)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # (B, W)
    if hflip:
        cols = torch.where((torch.rand(b, generator=generator) < 0.5).to(device)[:, None], cols.flip(1), cols)
    # advanced indices separated by a slice put the indexed dims first: (B, H, W, C)
    out = images[torch.arange(b, device=device)[:, None, None], :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def inception_boxes(b: int, h: int, w: int, generator: torch.Generator, scale=(0.08, 1.0),
                    ratio=(3 / 4, 4 / 3), attempts: int = 10) -> Tensor:
    """``(B, 4)`` crop boxes ``(x1, y1, x2, y2)`` drawn as torchvision's ``RandomResizedCrop.get_params``
    draws them (an area share in ``scale``, a log-uniform aspect in ``ratio``, the first of ``attempts``
    that fits, else the whole image clamped to ``ratio``), for a batch at once."""
    area = h * w * torch.empty(b, attempts).uniform_(*scale, generator=generator)
    aspect = torch.exp(torch.empty(b, attempts).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator))
    cw, ch = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = fits.float().argmax(1, keepdim=True)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    if w / h < ratio[0]:
        whole_w, whole_h = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        whole_w, whole_h = round(h * ratio[1]), h
    else:
        whole_w, whole_h = w, h
    none = ~fits.any(1)
    cw, ch = torch.where(none, float(whole_w), cw), torch.where(none, float(whole_h), ch)
    x1 = (torch.rand(b, generator=generator) * (w - cw + 1)).floor()
    y1 = (torch.rand(b, generator=generator) * (h - ch + 1)).floor()
    x1, y1 = torch.where(none, ((w - cw) / 2).floor(), x1), torch.where(none, ((h - ch) / 2).floor(), y1)
    return torch.stack([x1, y1, x1 + cw, y1 + ch], 1)


def batch_inception_crop(images: Tensor, size: Tuple[int, int], hflip: bool, generator: torch.Generator) -> Tensor:
    """The Inception crop (paper §B.1's random-resized crop) of a uint8 batch, resized to ``size`` with
    bilinear sampling (``roi_align``; PIL's per-image path is bicubic), then the flip: float, 0–255."""
    from torchvision.ops import roi_align

    b, _, h, w = images.shape
    boxes = inception_boxes(b, h, w, generator).to(images.device)
    rois = torch.cat([torch.arange(b, device=images.device, dtype=boxes.dtype)[:, None], boxes], 1)
    out = roi_align(images.float(), rois, size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(images.device)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out


def normalize_batch(images: Tensor, mean255: Tensor, std255: Tensor, out_size: Optional[Tuple[int, int]] = None) -> Tensor:
    """uint8 ``(B, C, H, W)`` → float32 ``(x - mean) / std``, mean and std on the 0–255 scale. ``out_size``
    resizes first (bicubic, antialiased when shrinking, clamped like a PIL resize): small datasets stay in
    memory at their native size, e.g. CIFAR at 32 px feeding a model built for 224 px."""
    x = images.float()
    if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
        x = F.interpolate(x, size=out_size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)
    return x.sub_(mean255).div_(std255)


class DeviceLoader:
    """An iterable of ``(images, labels)`` batches over an in-memory split: ``images`` uint8 ``(N, C, H, W)``
    and ``labels`` int64 ``(N,)`` on the device where batches are assembled, augmented and normalised.
    ``mean``/``std`` per channel on the 0–1 scale; ``train`` picks the training or the evaluation semantics
    (module docstring); ``len()`` is the number of batches this rank yields per epoch."""

    def __init__(self, images: Tensor, labels: Tensor, *, batch_size: int, mean: Sequence[float], std: Sequence[float],
                 train: bool, seed: int = 0, world_size: int = 1, rank: int = 0, crop_padding: int = 0,
                 hflip: bool = False, inception_crop: bool = False, out_size: Optional[int] = None):
        self.images, self.labels, self.batch_size = images, labels, int(batch_size)
        self.train, self.seed, self.world_size, self.rank = train, seed, world_size, rank
        self.crop_padding, self.hflip = (int(crop_padding), bool(hflip)) if train else (0, False)
        self.inception_crop = bool(inception_crop) and train
        self.out_size = (int(out_size),) * 2 if out_size is not None else None
        self._mean255 = torch.tensor([255.0 * m for m in mean], device=images.device).view(1, -1, 1, 1)
        self._std255 = torch.tensor([255.0 * s for s in std], device=images.device).view(1, -1, 1, 1)
        self.sampler = ShardSampler(len(images), train=train, seed=seed, world_size=world_size, rank=rank)
        self.batch_sampler = None  # Lightning inspects DataLoader-like objects for these two attributes
        if train and len(self) == 0:
            raise ValueError(f"{len(images)} training images give rank {rank} of {world_size} no full batch of "
                             f"{batch_size}; lower data.batch_size or use more training images")

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        return len(self) * self.batch_size if self.train else len(self.sampler)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        order = self.sampler.indices().to(self.images.device)
        augment = self.crop_padding > 0 or self.hflip
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "augment", self.epoch, self.rank))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start: start + self.batch_size]
            images = self.images.index_select(0, index)
            if self.inception_crop:
                size = self.out_size or tuple(images.shape[-2:])
                images = batch_inception_crop(images, size, self.hflip, generator)
                yield images.sub_(self._mean255).div_(self._std255), self.labels.index_select(0, index)
                continue
            if augment:
                images = batch_crop_flip(images, self.crop_padding, self.hflip, generator)
            yield normalize_batch(images, self._mean255, self._std255, self.out_size), self.labels.index_select(0, index)
