"""CIFAR-10 / CIFAR-100 (paper §4: transfer targets) from torchvision's Python pickles, held in memory.

The pickles are raw pixels: the set is read once into a uint8 ``(N, 3, 32, 32)`` tensor (150 MB for the
50k training images) batched by ``DeviceLoader``; another ``data.img_size`` (e.g. 224, fine-tuning at
the pre-training resolution, paper §3.2) resizes each batch on the device. ``train`` is the 50k training
set less the ``data.val_split`` hold-out, then its first ``data.train_subset`` (both class-balanced);
``val`` is the hold-out, or the 10k test set without one; ``test`` is the test set.

``data.root`` (``config.data_root``, by default ``.data``) holds torchvision's ``cifar-10-batches-py`` /
``cifar-100-python``; ``data.download=true`` fetches it once per node (``prepare_data``). Without it,
``check_available`` names a missing folder or a file whose checksum does not match before anything is written.
"""

from __future__ import annotations

import pickle
from typing import Dict, Optional, Tuple

import torch
import torchvision
from torch import Tensor
from torchvision.datasets.utils import check_integrity

from vit_ablate.config import FIXED_DATASETS, data_root
from vit_ablate.data.base import DATASETS, ImageDataModule, Split

__all__ = ["CIFAR10DataModule", "CIFAR100DataModule"]


class _CIFARDataModule(ImageDataModule):
    torchvision_class: type
    folder: str  # torchvision's extracted folder name under the root
    num_classes: int

    def __init__(self, cfg):
        super().__init__(cfg)
        self.root = data_root(cfg)
        self.img_size = int(cfg.data.img_size) if cfg.data.img_size is not None else self.native_size
        self._raw: Dict[bool, Tuple[Tensor, Tensor]] = {}

    def prepare_data(self) -> None:
        """Download once per node (Lightning calls this on local rank 0 only) when asked to."""
        if self.data_cfg.download:
            for train in (True, False):
                self.torchvision_class(str(self.root), train=train, download=True)

    def _files(self):
        """(file name, md5) of every file torchvision reads, in ``root/folder``."""
        cls = self.torchvision_class
        return [*cls.train_list, *cls.test_list, (cls.meta["filename"], cls.meta["md5"])]

    def check_available(self) -> None:
        if self.data_cfg.download:
            return  # prepare_data downloads (and checks) it
        where = self.root.resolve()
        folder = where / self.folder
        missing = [name for name, _ in self._files() if not (folder / name).is_file()]
        if missing:
            state = "does not exist" if not where.exists() else (
                f"has no {self.folder}/ folder" if not folder.is_dir() else f"lacks {self.folder}/{missing[0]}"
            )
            raise FileNotFoundError(
                f"{self.registry_name} not found: data.root={str(where)!r} {state}. Set data.download=true "
                f"to download it there, or point data.root at a folder that contains torchvision's {self.folder}/"
            )
        corrupt = [name for name, md5 in self._files() if not check_integrity(str(folder / name), md5)]
        if corrupt:
            raise ValueError(
                f"{self.registry_name} is corrupt: {', '.join(str(folder / name) for name in corrupt)} "
                f"{'does' if len(corrupt) == 1 else 'do'} not match torchvision's checksum (a truncated or "
                f"damaged download). Delete {str(folder)!r} and set data.download=true to download it again"
            )

    def _load_raw(self, train: bool) -> Tuple[Tensor, Tensor]:
        if train not in self._raw:
            if self.trainer is None and self.data_cfg.download:
                self.prepare_data()  # used outside a Trainer: nobody else calls prepare_data
            try:
                dataset = self.torchvision_class(str(self.root), train=train, download=False)
            except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError) as exc:
                # torchvision says "Dataset not found or corrupted" for both: say which
                self.check_available()
                raise ValueError(f"{self.registry_name} in {str(self.root.resolve())!r} cannot be read: {exc}") from None
            images = torch.from_numpy(dataset.data).permute(0, 3, 1, 2).contiguous()  # NHWC → NCHW
            labels = torch.as_tensor(dataset.targets, dtype=torch.long)
            if self.class_names is None:
                self.class_names = list(dataset.classes)
            self._raw[train] = (images, labels)
        return self._raw[train]

    def _load_split(self, name: str) -> Split:
        if name == "test" or (name == "val" and int(self.data_cfg.val_split) == 0):
            images, labels = self._load_raw(train=False)
            return Split(labels, images=images)
        images, labels = self._load_raw(train=True)
        train_idx, held = self._train_selection(labels, holdout=True)
        index: Optional[Tensor] = train_idx if name == "train" else held
        return Split(labels[index], images=images[index])


@DATASETS.register("cifar10")
class CIFAR10DataModule(_CIFARDataModule):
    torchvision_class = torchvision.datasets.CIFAR10
    folder = "cifar-10-batches-py"
    num_classes, native_size, _ = FIXED_DATASETS["cifar10"]


@DATASETS.register("cifar100")
class CIFAR100DataModule(_CIFARDataModule):
    torchvision_class = torchvision.datasets.CIFAR100
    folder = "cifar-100-python"
    num_classes, native_size, _ = FIXED_DATASETS["cifar100"]
