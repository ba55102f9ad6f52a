"""Batches straight from an in-memory uint8 tensor, augmented in batches where the tensor lives.

Why: the small datasets of the ablations (the synthetic set, CIFAR, small ImageFolders) fit into
memory many times over, yet a per-sample ``DataLoader`` spends most of a 2-core machine (or starves a
GPU) decoding, converting and collating 32×32 images one by one. Here the whole split is one uint8
tensor ``(N, C, H, W)`` — on the training device when ``data.on_device`` is set — and a batch is one
``index_select``, one vectorised crop/flip gather, and one float conversion + normalisation.

What can be done on uint8 batches here: CIFAR-style pad-and-crop (``augment.random_crop_padding``,
zero fill like ``torchvision.transforms.RandomCrop(padding=p)``) and horizontal flips
(``augment.hflip``). RandAugment and the Inception crop (``augment.randaugment``,
``augment.random_resized_crop``) operate on individual PIL images; when either is requested the data
modules switch the *training* split to the per-sample ``DataLoader`` path with timm transforms
(``data/sample_loader.py``). Mixup/CutMix/label smoothing act on batches and belong to training.

Distributed semantics (shared with the per-sample path through ``ShardSampler``):

* training — one permutation per epoch, seeded from ``(seed, epoch)`` and identical on every rank;
  rank ``r`` takes ``perm[r::world][:N // world]``, so shards are disjoint and equally long, and each
  rank drops its last partial batch: all ranks run the same number of steps, which DDP's gradient
  all-reduce requires. Augmentation draws come from a generator seeded from ``(seed, epoch, rank)``.
* evaluation — no shuffle, no augmentation; rank ``r`` takes indices ``r::world``: every sample is
  seen exactly once across ranks, without the padding duplicates of ``DistributedSampler`` (which
  would bias accuracies). Shards may differ by one sample, so ranks may run a different number of
  evaluation batches; metrics must therefore be accumulated locally and reduced once at epoch end
  (torchmetrics does this), never all-reduced per step.

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

__all__ = ["derive_seed", "ShardSampler", "DeviceLoader", "batch_crop_flip", "normalize_batch"]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of values, stable across processes and Python versions.

    ``hash()`` is salted per process, so ranks and workers would disagree; SHA-256 does not.
    """
    blob = "/".join(repr(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:8], "little") & ((1 << 63) - 1)


class ShardSampler(DistributedSampler):
    """The index order of one rank for one epoch (semantics in the module docstring).

    It subclasses ``DistributedSampler`` only so that Lightning recognises it as already distributed
    and does not replace it with its own (padding) sampler; the logic is entirely its own. Lightning
    calls ``set_epoch`` on ``loader.sampler`` at the start of every epoch.

    ``loader_generator``, when given, is the ``torch.Generator`` of a worker ``DataLoader``; it is
    reseeded from ``(seed, epoch, rank)`` at every ``set_epoch`` so that worker seeds (and with them
    every random transform) are a function of the epoch, not of how many epochs ran before.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        train: bool,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        loader_generator: Optional[torch.Generator] = None,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not valid for world size {world_size}")
        super().__init__(
            range(num_samples), num_replicas=world_size, rank=rank, shuffle=train, seed=seed, drop_last=train
        )
        self.size = num_samples
        self.train = train
        self.loader_generator = loader_generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self.loader_generator is not None:
            self.loader_generator.manual_seed(derive_seed(self.seed, "workers", epoch, self.rank))

    def indices(self) -> Tensor:
        """This rank's indices for the current epoch, as a CPU int64 tensor."""
        if self.train:
            generator = torch.Generator().manual_seed(derive_seed(self.seed, "shuffle", self.epoch))
            perm = torch.randperm(self.size, generator=generator)
            return perm[self.rank :: self.num_replicas][: self.size // self.num_replicas]
        return torch.arange(self.rank, self.size, self.num_replicas)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices().tolist())

    def __len__(self) -> int:
        if self.train:
            return self.size // self.num_replicas
        return len(range(self.rank, self.size, self.num_replicas))


def batch_crop_flip(images: Tensor, padding: int, hflip: bool, generator: torch.Generator) -> Tensor:
    """Random pad-and-crop and horizontal flip of a uint8 batch ``(B, C, H, W)``, one gather.

    Equivalent per sample to ``RandomCrop(H, padding=padding)`` (zero fill) followed by
    ``RandomHorizontalFlip()``: crop offsets are uniform in ``[0, 2 * padding]`` per axis and a flip
    reverses the column index, so both become one advanced-indexing read of the padded batch.
    """
    b, _, h, w = images.shape
    device = images.device
    if padding > 0:
        images = F.pad(images, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator).to(device)
    else:
        offsets = torch.zeros(b, 2, dtype=torch.long, device=device)
    rows = offsets[:, :1] + torch.arange(h, device=device)  # (B, H)
    cols = offsets[:, 1:] + torch.arange(w, device=device)  # (B, W)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)
    batch = torch.arange(b, device=device)[:, None, None]
    # Advanced indices separated by a slice put the indexed dims first: (B, H, W, C).
    out = images[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def normalize_batch(
    images: Tensor, mean255: Tensor, std255: Tensor, out_size: Optional[Tuple[int, int]] = None
) -> Tensor:
    """uint8 ``(B, C, H, W)`` → float32 ``(x - mean) / std`` with mean/std given on the 0–255 scale.

    ``out_size`` resizes (bicubic, antialiased when shrinking, clamped to the uint8 range like a
    PIL resize) before normalising: small datasets stay in memory at their native size and are
    resized per batch, e.g. CIFAR at 32 px feeding a model built for 224 px.
    """
    x = images.float()
    if out_size is not None and tuple(x.shape[-2:]) != tuple(out_size):
        x = F.interpolate(x, size=out_size, mode="bicubic", antialias=True, align_corners=False).clamp_(0, 255)
    return x.sub_(mean255).div_(std255)


class DeviceLoader:
    """An iterable of ``(images, labels)`` batches over an in-memory uint8 split.

    ``images``: uint8 ``(N, C, H, W)``; ``labels``: int64 ``(N,)``; both on the same device, which is
    where batches are assembled, augmented and normalised. ``mean``/``std`` are per-channel on the
    0–1 scale. ``train`` selects the training semantics (shuffle, equal shards, drop the last partial
    batch, augmentation) or the evaluation ones (see the module docstring). ``len()`` is the number of
    batches this rank yields per epoch.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        *,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        train: bool,
        seed: int = 0,
        world_size: int = 1,
        rank: int = 0,
        crop_padding: int = 0,
        hflip: bool = False,
        out_size: Optional[int] = None,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(f"images must be a uint8 (N, C, H, W) tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels of shape {tuple(labels.shape)} do not match {images.shape[0]} images")
        if images.device != labels.device:
            raise ValueError(f"images on {images.device} but labels on {labels.device}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if crop_padding < 0:
            raise ValueError(f"augment.random_crop_padding must be >= 0, got {crop_padding}")
        channels = images.shape[1]
        if len(mean) != channels or len(std) != channels:
            raise ValueError(f"mean/std need {channels} values, got {list(mean)} / {list(std)}")
        self.images = images
        self.labels = labels
        self.batch_size = int(batch_size)
        self.train = train
        self.seed = seed
        self.world_size = world_size
        self.rank = rank
        self.crop_padding = int(crop_padding) if train else 0
        self.hflip = bool(hflip) and train
        self.out_size = (int(out_size), int(out_size)) if out_size is not None else None
        device = images.device
        self._mean255 = torch.tensor([255.0 * m for m in mean], device=device).view(1, -1, 1, 1)
        self._std255 = torch.tensor([255.0 * s for s in std], device=device).view(1, -1, 1, 1)
        self.sampler = ShardSampler(len(images), train=train, seed=seed, world_size=world_size, rank=rank)
        self.batch_sampler = None  # Lightning inspects DataLoader-like objects for these two attributes
        if train and len(self) == 0:
            raise ValueError(
                f"{len(images)} training images give rank {rank} of {world_size} no full batch of "
                f"{batch_size}; lower data.batch_size or use more training images"
            )

    @property
    def device(self) -> torch.device:
        return self.images.device

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    @property
    def num_samples(self) -> int:
        """Samples this rank yields per epoch."""
        n = len(self.sampler)
        return (n // self.batch_size) * self.batch_size if self.train else n

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Tuple[Tensor, Tensor]]:
        order = self.sampler.indices().to(self.device)
        augment = self.train and (self.crop_padding > 0 or self.hflip)
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "augment", self.epoch, self.rank))
        for start in range(0, len(self) * self.batch_size, self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images.index_select(0, index)
            if augment:
                images = batch_crop_flip(images, self.crop_padding, self.hflip, generator)
            yield normalize_batch(images, self._mean255, self._std255, self.out_size), self.labels.index_select(0, index)

    def __repr__(self) -> str:
        mode = "train" if self.train else "eval"
        return (
            f"DeviceLoader({mode}, {len(self.images)} images on {self.device}, batch {self.batch_size}, "
            f"rank {self.rank}/{self.world_size}, {len(self)} batches)"
        )
