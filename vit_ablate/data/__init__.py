"""Data sources of the ablations: ``DATASETS`` (config.py) maps ``data.name`` to a LightningDataModule.

``synthetic`` (the embedded default with a provable position-free accuracy ceiling, synthetic.py),
``cifar10``, ``cifar100`` (cifar.py), ``imagefolder`` (imagefolder.py); base.py describes what they
share (splits, per-device batch sizes, DDP).
"""

from __future__ import annotations

from vit_ablate.data.base import DATASETS, ImageDataModule, Split, balanced_indices, holdout_split
from vit_ablate.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from vit_ablate.data.device_loader import DeviceLoader, ShardSampler, derive_seed
from vit_ablate.data.imagefolder import ImageFolderDataModule
from vit_ablate.data.synthetic import POSITION_FREE_CEILING, SyntheticDataModule, generate_synthetic

__all__ = ["DATASETS", "build_datamodule", "ImageDataModule", "Split", "SyntheticDataModule", "CIFAR10DataModule",
           "CIFAR100DataModule", "ImageFolderDataModule", "DeviceLoader", "ShardSampler", "derive_seed",
           "balanced_indices", "holdout_split", "generate_synthetic", "POSITION_FREE_CEILING"]


def build_datamodule(cfg) -> ImageDataModule:
    """The data module named by ``cfg.data.name``, built from the full run config ``cfg``."""
    return DATASETS.get(cfg.data.name)(cfg)
