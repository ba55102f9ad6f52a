"""What every data module (registered in ``config.DATASETS``) shares: splits, batch sizes, ranks, loaders.

A data module is built from the full run config, knows ``num_classes``, ``img_size``, ``in_chans``,
``mean`` and ``std`` right after construction, and knows nothing of the model. A split is held in
memory (one uint8 ``(N, C, H, W)`` tensor, batched by ``DeviceLoader`` on the training device when
``data.on_device``; a training split that asks for RandAugment or the Inception crop goes through the
per-sample path) or on disk (file paths, read per sample by ``DataLoader`` workers, ``sample_loader.py``).

``data.batch_size`` is the global batch: ``per_device_batch_size`` is ``data.batch_size // world_size``
unless training assigns it (the micro-batch under gradient accumulation) before the loaders are made;
``per_device_eval_batch_size`` likewise from ``data.eval_batch_size`` (default ``data.batch_size``).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Tuple

import lightning as L
import torch
from torch import Tensor

from vit_ablate.config import DATASETS
from vit_ablate.data.device_loader import DeviceLoader
from vit_ablate.data.sample_loader import FileImageDataset, TensorImageDataset, eval_transform, make_sample_loader, train_transform

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

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None


def balanced_indices(labels: Tensor, n: int, num_classes: int, *, what: str = "data.train_subset") -> Tensor:
    """The first ``n`` indices (in index order) that are class-balanced: ``n // C`` per class, the
    remainder one each to the lowest class ids. Raises if a class has too few samples."""
    labels = torch.as_tensor(labels).long()
    if n > len(labels):
        raise ValueError(f"{what}={n} exceeds the {len(labels)} available training images")
    quota = torch.full((num_classes,), n // num_classes, dtype=torch.long)
    quota[: n % num_classes] += 1
    # rank of each sample within its class, in index order (a stable sort keeps index order per class)
    order = torch.argsort(labels, stable=True)
    available = torch.bincount(labels, minlength=num_classes)
    rank_in_class = torch.empty_like(labels)
    rank_in_class[order] = torch.arange(len(labels)) - (available.cumsum(0) - available)[labels[order]]
    keep = rank_in_class < quota[labels]
    counts = torch.bincount(labels[keep], minlength=num_classes)
    if not torch.equal(counts, quota):
        short = int(torch.nonzero(counts < quota)[0])
        raise ValueError(f"{what}={n} needs {int(quota[short])} images of class {short}, which has only {int(counts[short])}")
    return torch.nonzero(keep).flatten()


def holdout_split(labels: Tensor, n: int, num_classes: int) -> Tuple[Tensor, Tensor]:
    """``data.val_split``: (train indices, held-out indices). The hold-out is the *last* ``n``
    class-balanced training images, deterministic and disjoint from any ``train_subset`` (the first)."""
    labels = torch.as_tensor(labels)
    held = torch.sort(len(labels) - 1 - balanced_indices(labels.flip(0), n, num_classes, what="data.val_split")).values
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
        self.cfg, self.data_cfg, self.augment, self.seed = cfg, cfg.data, cfg.augment, int(cfg.seed)
        self._per_device_batch_size: Optional[int] = None
        self._splits: Dict[str, Split] = {}
        self._resident: Dict[str, Split] = {}  # splits moved to the training device

    @property
    def world_size(self) -> int:
        return int(self.trainer.world_size) if self.trainer is not None else 1

    @property
    def global_rank(self) -> int:
        return int(self.trainer.global_rank) if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        return self._per_device_batch_size or max(1, int(self.data_cfg.batch_size) // self.world_size)

    @per_device_batch_size.setter
    def per_device_batch_size(self, value: int) -> None:
        self._per_device_batch_size = int(value)

    @property
    def per_device_eval_batch_size(self) -> int:
        return max(1, int(self.data_cfg.eval_batch_size or self.data_cfg.batch_size) // self.world_size)

    def check_available(self) -> None:
        """Raise ``FileNotFoundError`` (missing) or ``ValueError`` (corrupt), naming the path and the
        fix, if the data cannot be read. Called before a run directory is created; reads no images
        where that can be avoided. Generated data, or data scanned on construction, has nothing to check."""

    def _load_split(self, name: str) -> Split:
        raise NotImplementedError(f"{type(self).__name__} does not implement _load_split")  # abstract: each module loads its splits

    def split(self, name: str) -> Split:
        """The split ``name`` (``train``/``val``/``test``), loaded once and kept on the CPU."""
        if name not in self._splits:
            self._splits[name] = self._load_split(name)
        return self._splits[name]

    def test_is_validation(self) -> bool:
        """Whether ``test`` holds the very samples of ``val``, in order (CIFAR without a hold-out, a
        folder with only one of val/ and test/): then testing the weights last validated repeats it."""
        val, test = self.split("val"), self.split("test")
        if val.in_memory != test.in_memory or not torch.equal(val.labels, test.labels):
            return False
        return torch.equal(val.images, test.images) if val.in_memory else val.paths == test.paths

    def _on_device(self, name: str) -> Split:
        """The in-memory split on the trainer's device when ``data.on_device`` (else the CPU), moved once."""
        split = self.split(name)
        device = self.trainer.strategy.root_device if self.data_cfg.on_device and self.trainer is not None else torch.device("cpu")
        if not split.in_memory or split.images.device == device:
            return split
        if name not in self._resident or self._resident[name].images.device != device:
            self._resident[name] = Split(split.labels.to(device), images=split.images.to(device))
        return self._resident[name]

    def setup(self, stage: Optional[str] = None) -> None:
        for name in {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}.get(stage, SPLITS):
            self._on_device(name)

    def teardown(self, stage: Optional[str] = None) -> None:
        self._resident.clear()  # frees the device copies; the CPU splits stay for a later stage

    def _loader(self, name: str, batch_size: int, train: bool):
        common = dict(batch_size=batch_size, train=train, seed=self.seed, world_size=self.world_size, rank=self.global_rank)
        split = self.split(name)
        # RandAugment needs single PIL images (device_loader.py)
        per_sample = train and bool(self.augment.randaugment)
        if split.in_memory and not per_sample:
            resident = self._on_device(name)
            out_size = self.img_size if self.native_size not in (None, self.img_size) else None
            return DeviceLoader(resident.images, resident.labels, mean=self.mean, std=self.std, out_size=out_size,
                                crop_padding=int(self.augment.random_crop_padding) if train else 0,
                                hflip=bool(self.augment.hflip) and train,
                                inception_crop=bool(self.augment.random_resized_crop) and train, **common)
        transform = (train_transform(self.augment, self.img_size, self.mean, self.std, self.native_size) if train
                     else eval_transform(self.img_size, self.mean, self.std, self.native_size))
        dataset = (TensorImageDataset(split.images, split.labels, transform) if split.in_memory
                   else FileImageDataset(split.paths, split.labels, transform))
        pin = self.trainer is not None and self.trainer.strategy.root_device.type == "cuda"
        return make_sample_loader(dataset, num_workers=int(self.data_cfg.num_workers), pin_memory=pin, **common)

    def train_dataloader(self):
        return self._loader("train", self.per_device_batch_size, train=True)

    def eval_dataloader(self, name: str, batch_size: Optional[int] = None):
        """Deterministic, unaugmented batches of any split (``train`` too, e.g. for few-shot features);
        every sample exactly once across ranks."""
        return self._loader(name, batch_size or self.per_device_eval_batch_size, train=False)

    def val_dataloader(self):
        return self.eval_dataloader("val")

    def test_dataloader(self):
        return self.eval_dataloader("test")

    def _train_selection(self, labels: Tensor, *, holdout: bool) -> Tuple[Tensor, Optional[Tensor]]:
        """Apply ``data.val_split`` (when ``holdout``) then ``data.train_subset`` to training labels:
        (train indices, held-out validation indices or None)."""
        train_idx, held = torch.arange(len(labels)), None
        if holdout and int(self.data_cfg.val_split) > 0:
            train_idx, held = holdout_split(labels, int(self.data_cfg.val_split), self.num_classes)
        if self.data_cfg.train_subset is not None:
            train_idx = train_idx[balanced_indices(labels[train_idx], int(self.data_cfg.train_subset), self.num_classes)]
        return train_idx, held
