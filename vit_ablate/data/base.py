"""What every data module (registered in ``config.DATASETS``) shares: splits, batch sizes, ranks, loaders.

A data module is built from the full run config, knows ``num_classes``, ``img_size``, ``in_chans``,
``mean`` and ``std`` right after construction (so the run can be checked against ``cfg.model`` before
any image is read), and knows nothing of the model.

Splits are held in one of two forms:

* in memory — one uint8 tensor ``(N, C, H, W)`` per split. Batches come from ``DeviceLoader``, on the
  training device when ``data.on_device`` (moved in ``setup``), with pad-crop/flip done in batches;
  a training split that asks for RandAugment or the Inception crop goes through the per-sample path;
* on disk — file paths, read per sample by ``DataLoader`` workers (``sample_loader.py``).

Batch sizes: ``data.batch_size`` is the global batch. ``per_device_batch_size`` defaults to
``data.batch_size // world_size``; the training code may assign it (e.g. the micro-batch under
gradient accumulation) before the loaders are created. ``per_device_eval_batch_size`` likewise,
from ``data.eval_batch_size`` (default ``data.batch_size``).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import lightning as L
import torch
from torch import Tensor

from vit_ablate.data.device_loader import DeviceLoader
from vit_ablate.data.sample_loader import (
    FileImageDataset,
    TensorImageDataset,
    eval_transform,
    make_sample_loader,
    train_transform,
)
from vit_ablate.config import DATASETS

__all__ = ["DATASETS", "Split", "ImageDataModule", "balanced_indices", "holdout_split", "PAPER_MEAN", "PAPER_STD"]

# The ViT reference code maps pixels to [-1, 1], i.e. (x - 127.5) / 127.5 (timm: IMAGENET_INCEPTION_*).
PAPER_MEAN: Tuple[float, float, float] = (0.5, 0.5, 0.5)
PAPER_STD: Tuple[float, float, float] = (0.5, 0.5, 0.5)

SPLITS = ("train", "val", "test")


@dataclasses.dataclass
class Split:
    """One split: ``labels`` (int64, CPU) and either ``images`` (uint8 ``(N, C, H, W)``) or ``paths``."""

    labels: Tensor
    images: Optional[Tensor] = None
    paths: Optional[List[str]] = None

    def __post_init__(self):
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split holds either images or paths")
        n = len(self.images) if self.images is not None else len(self.paths)
        if n != len(self.labels):
            raise ValueError(f"{n} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None


def balanced_indices(labels: Tensor, n: int, num_classes: int, *, what: str = "data.train_subset") -> Tensor:
    """The first ``n`` indices (in index order) that are class-balanced: ``n // C`` per class, the
    remainder one each to the lowest class ids. Raises if a class has too few samples."""
    labels = torch.as_tensor(labels)
    if n <= 0:
        raise ValueError(f"{what}={n} must be positive")
    if n > len(labels):
        raise ValueError(f"{what}={n} exceeds the {len(labels)} available training images")
    quota = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    quota[: n % num_classes] += 1
    # rank of each sample within its class, in index order (a stable sort keeps index order per class)
    labels = labels.long()
    order = torch.argsort(labels, stable=True)
    available = torch.bincount(labels, minlength=num_classes)
    class_start = available.cumsum(0) - available
    rank_in_class = torch.empty_like(labels)
    rank_in_class[order] = torch.arange(len(labels)) - class_start[labels[order]]
    keep = rank_in_class < quota[labels]
    counts = torch.bincount(labels[keep], minlength=num_classes)
    if not torch.equal(counts, quota):
        short = int(torch.nonzero(counts < quota)[0])
        raise ValueError(
            f"{what}={n} needs {int(quota[short])} images of class {short}, which has only {int(counts[short])}"
        )
    return torch.nonzero(keep).flatten()


def holdout_split(labels: Tensor, n: int, num_classes: int) -> Tuple[Tensor, Tensor]:
    """``data.val_split``: (train indices, held-out indices). The hold-out is the *last* ``n``
    class-balanced training images, deterministic and disjoint from any ``train_subset`` (the first)."""
    labels = torch.as_tensor(labels)
    reversed_labels = labels.flip(0)
    held_rev = balanced_indices(reversed_labels, n, num_classes, what="data.val_split")
    held = torch.sort(len(labels) - 1 - held_rev).values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held] = False
    return torch.nonzero(mask).flatten(), held


class ImageDataModule(L.LightningDataModule):
    """Base of every registered data module. Subclasses set the attributes below in ``__init__`` and
    implement ``_load_split(name) -> Split`` for ``name`` in ``train``/``val``/``test``."""

    num_classes: int
    img_size: int
    in_chans: int = 3
    mean: Tuple[float, ...] = PAPER_MEAN
    std: Tuple[float, ...] = PAPER_STD
    class_names: Optional[List[str]] = None
    # side of the stored square images when in memory; batches are resized to img_size if it differs
    native_size: Optional[int] = None

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.data_cfg = cfg.data
        self.augment = cfg.augment
        self.seed = int(cfg.seed)
        self._per_device_batch_size: Optional[int] = None
        self._per_device_eval_batch_size: Optional[int] = None
        self._splits: Dict[str, Split] = {}
        self._resident: Dict[str, Split] = {}  # splits moved to the training device

    # ----------------------------------------------------------------------------------------- ranks
    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def global_rank(self) -> int:
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        if self._per_device_batch_size is not None:
            return self._per_device_batch_size
        return max(1, int(self.data_cfg.batch_size) // self.world_size)

    @per_device_batch_size.setter
    def per_device_batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"per-device batch size must be positive, got {value}")
        self._per_device_batch_size = int(value)

    @property
    def per_device_eval_batch_size(self) -> int:
        if self._per_device_eval_batch_size is not None:
            return self._per_device_eval_batch_size
        global_batch = self.data_cfg.eval_batch_size or self.data_cfg.batch_size
        return max(1, int(global_batch) // self.world_size)

    @per_device_eval_batch_size.setter
    def per_device_eval_batch_size(self, value: int) -> None:
        if int(value) < 1:
            raise ValueError(f"per-device eval batch size must be positive, got {value}")
        self._per_device_eval_batch_size = int(value)

    @property
    def data_device(self) -> torch.device:
        """Where in-memory splits live: the trainer's device if ``data.on_device``, else the CPU."""
        if self.data_cfg.on_device and self.trainer is not None:
            return self.trainer.strategy.root_device
        return torch.device("cpu")

    def check_available(self) -> None:
        """Raise ``FileNotFoundError`` (missing) or ``ValueError`` (corrupt), naming the path and the
        fix, if the data cannot be read. Called before a run directory is created; reads no images
        where that can be avoided. Data that is generated or was scanned on construction has nothing
        to check."""

    # ----------------------------------------------------------------------------------------- splits
    def _load_split(self, name: str) -> Split:
        """Read split ``name`` from its source; every subclass implements this (called once per split)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement _load_split")  # abstract: each data module loads its splits

    def split(self, name: str) -> Split:
        """The split ``name`` (``train``/``val``/``test``), loaded once and kept on the CPU."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
        if name not in self._splits:
            self._splits[name] = self._load_split(name)
        return self._splits[name]

    def num_samples(self, name: str) -> int:
        return len(self.split(name))

    def _on_device(self, name: str) -> Split:
        split = self.split(name)
        if not split.in_memory:
            return split
        device = self.data_device
        cached = self._resident.get(name)
        if cached is None or cached.images.device != device:
            if split.images.device == device:
                cached = split
            else:
                cached = Split(split.labels.to(device), images=split.images.to(device))
            self._resident[name] = cached
        return cached

    def setup(self, stage: Optional[str] = None) -> None:
        needed = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for name in needed.get(stage, SPLITS):
            self._on_device(name)

    def teardown(self, stage: Optional[str] = None) -> None:
        self._resident.clear()  # frees the device copies; the CPU splits stay for a later stage

    # ----------------------------------------------------------------------------------------- loaders
    @property
    def per_sample_train_augment(self) -> bool:
        """RandAugment and the Inception crop need single PIL images (see ``device_loader.py``)."""
        return bool(self.augment.randaugment) or bool(self.augment.random_resized_crop)

    @property
    def _out_size(self) -> Optional[int]:
        return self.img_size if self.native_size not in (None, self.img_size) else None

    def _pin_memory(self) -> bool:
        return self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"

    def train_dataloader(self):
        split = self.split("train")
        common = dict(seed=self.seed, world_size=self.world_size, rank=self.global_rank)
        if split.in_memory and not self.per_sample_train_augment:
            resident = self._on_device("train")
            return DeviceLoader(
                resident.images,
                resident.labels,
                batch_size=self.per_device_batch_size,
                mean=self.mean,
                std=self.std,
                train=True,
                crop_padding=int(self.augment.random_crop_padding),
                hflip=bool(self.augment.hflip),
                out_size=self._out_size,
                **common,
            )
        transform = train_transform(self.augment, self.img_size, self.mean, self.std, self.native_size)
        return make_sample_loader(
            self._sample_dataset(split, transform),
            batch_size=self.per_device_batch_size,
            train=True,
            num_workers=int(self.data_cfg.num_workers),
            pin_memory=self._pin_memory(),
            **common,
        )

    def eval_dataloader(self, name: str, batch_size: Optional[int] = None):
        """Deterministic, unaugmented batches of any split (``train`` too, e.g. for few-shot features);
        every sample exactly once across ranks."""
        split = self.split(name)
        batch_size = batch_size or self.per_device_eval_batch_size
        common = dict(seed=self.seed, world_size=self.world_size, rank=self.global_rank)
        if split.in_memory:
            resident = self._on_device(name)
            return DeviceLoader(
                resident.images,
                resident.labels,
                batch_size=batch_size,
                mean=self.mean,
                std=self.std,
                train=False,
                out_size=self._out_size,
                **common,
            )
        transform = eval_transform(self.img_size, self.mean, self.std, self.native_size)
        return make_sample_loader(
            self._sample_dataset(split, transform),
            batch_size=batch_size,
            train=False,
            num_workers=int(self.data_cfg.num_workers),
            pin_memory=self._pin_memory(),
            **common,
        )

    def val_dataloader(self):
        return self.eval_dataloader("val")

    def test_dataloader(self):
        return self.eval_dataloader("test")

    @staticmethod
    def _sample_dataset(split: Split, transform):
        if split.in_memory:
            return TensorImageDataset(split.images, split.labels, transform)
        return FileImageDataset(split.paths, split.labels, transform)

    # ----------------------------------------------------------------------------------------- helpers
    def _train_selection(self, labels: Tensor, *, holdout: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """Apply ``data.val_split`` (when ``holdout``) then ``data.train_subset`` to training labels:
        (train indices, held-out validation indices or None)."""
        train_idx = torch.arange(len(labels))
        held = None
        if holdout and int(self.data_cfg.val_split) > 0:
            train_idx, held = holdout_split(labels, int(self.data_cfg.val_split), self.num_classes)
        if self.data_cfg.train_subset is not None:
            chosen = balanced_indices(labels[train_idx], int(self.data_cfg.train_subset), self.num_classes)
            train_idx = train_idx[chosen]
        return train_idx, held

    def describe(self) -> str:
        return (
            f"{type(self).__name__}: {self.num_classes} classes, {self.in_chans}×{self.img_size}×{self.img_size}, "
            f"mean {tuple(round(m, 4) for m in self.mean)}, std {tuple(round(s, 4) for s in self.std)}"
        )
