"""Data sources of the ablations: ``DATASETS`` maps ``data.name`` to a LightningDataModule class.

``build_datamodule(cfg)`` builds the one named by ``cfg.data.name`` from the full run config. Every
data module exposes ``num_classes``, ``img_size``, ``in_chans``, ``mean``, ``std`` right after
construction and the three Lightning loaders; see ``data/base.py`` for the shared behaviour.
"""

from __future__ import annotations

from vit_ablate.data.base import DATASETS, ImageDataModule, Split
from vit_ablate.data.device_loader import DeviceLoader, ShardSampler
from vit_ablate.data.synthetic import SyntheticDataModule

__all__ = ["DATASETS", "build_datamodule", "ImageDataModule", "Split", "DeviceLoader", "ShardSampler", "SyntheticDataModule"]


def build_datamodule(cfg) -> ImageDataModule:
    """The data module named by ``cfg.data.name`` (``cfg``: the full run config)."""
    return DATASETS.get(cfg.data.name)(cfg)
