"""Data sources of the ablations: ``DATASETS`` maps ``data.name`` to a LightningDataModule class.

``build_datamodule(cfg)`` builds the one named by ``cfg.data.name`` from the full run config. Every
data module exposes ``num_classes``, ``img_size``, ``in_chans``, ``mean``, ``std`` right after
construction (to be checked against ``cfg.model`` before any image is read) and the three Lightning
loaders; ``data/base.py`` describes the shared behaviour (splits, per-device batch sizes, DDP).

Registered names: ``synthetic`` (the embedded default with a provable position-free accuracy
ceiling, ``data/synthetic.py``), ``cifar10``, ``cifar100`` (``data/cifar.py``), ``imagefolder``
(``data/imagefolder.py``).
"""

from __future__ import annotations

from vit_ablate.data.base import DATASETS, ImageDataModule, Split, balanced_indices, holdout_split
from vit_ablate.data.cifar import CIFAR10DataModule, CIFAR100DataModule
from vit_ablate.data.device_loader import DeviceLoader, ShardSampler, derive_seed
from vit_ablate.data.imagefolder import ImageFolderDataModule
from vit_ablate.data.synthetic import POSITION_FREE_CEILING, SyntheticDataModule, generate_synthetic

__all__ = [
    "DATASETS",
    "build_datamodule",
    "ImageDataModule",
    "Split",
    "SyntheticDataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ImageFolderDataModule",
    "DeviceLoader",
    "ShardSampler",
    "derive_seed",
    "balanced_indices",
    "holdout_split",
    "generate_synthetic",
    "POSITION_FREE_CEILING",
]


def build_datamodule(cfg) -> ImageDataModule:
    """The data module named by ``cfg.data.name``, built from the full run config ``cfg``.

    An unknown name raises ``ValueError`` naming the valid ones and the nearest spelling.
    """
    return DATASETS.get(cfg.data.name)(cfg)
