"""The per-sample path: PIL images through timm/torchvision transforms in ``DataLoader`` workers.

Used for datasets too large to hold in memory (ImageFolder at ImageNet scale) and for a *training*
split whose augmentations need single PIL images: RandAugment (``augment.randaugment``) and the
Inception crop (``augment.random_resized_crop``, paper §B.1). The pipelines are composed from the timm
blocks that ``timm.data.create_transform`` composes, so that each config key maps to one transform and
nothing else is switched on (``create_transform`` would add colour jitter and random interpolation).
Order, sharding and epochs come from ``ShardSampler``; worker seeds derive from ``(seed, epoch, rank)``.
"""

from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from vit_ablate.data.device_loader import ShardSampler

__all__ = ["resize_center_crop", "train_transform", "eval_transform", "TensorImageDataset", "FileImageDataset",
           "load_rgb", "seed_worker", "make_sample_loader"]


def resize_center_crop(img_size: int) -> T.Compose:
    """Shorter side to ``img_size`` (bicubic), then the central square: the evaluation geometry, also of
    ImageFolder's in-memory decode, so a dataset gives the same images in memory or streamed."""
    return T.Compose([T.Resize(img_size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(img_size)])


def train_transform(augment, img_size: int, mean: Sequence[float], std: Sequence[float], native_size: Optional[int] = None) -> T.Compose:
    """PIL image → normalised tensor with the ``augment`` section's augmentations. ``native_size``: the
    side of square in-memory images; None (files) brings them to ``img_size`` unless the Inception crop does."""
    from timm.data.auto_augment import rand_augment_transform
    from timm.data.transforms import RandomResizedCropAndInterpolation

    steps: List[Callable] = []
    if augment.random_resized_crop:
        # Inception crop: area in [8%, 100%], aspect ratio in [3/4, 4/3] (paper §B.1 / timm default)
        steps.append(RandomResizedCropAndInterpolation(img_size, scale=(0.08, 1.0), interpolation="bicubic"))
    elif native_size != img_size:
        steps.append(resize_center_crop(img_size))
    if augment.random_crop_padding:
        steps.append(T.RandomCrop(img_size, padding=int(augment.random_crop_padding)))
    if augment.hflip:
        steps.append(T.RandomHorizontalFlip())
    if augment.randaugment:
        hparams = {"translate_const": int(img_size * 0.45), "img_mean": tuple(round(255 * m) for m in mean)}
        steps.append(rand_augment_transform(str(augment.randaugment), hparams))
    return T.Compose(steps + [T.ToTensor(), T.Normalize(mean, std)])


def eval_transform(img_size: int, mean: Sequence[float], std: Sequence[float], native_size: Optional[int] = None) -> T.Compose:
    resize = [resize_center_crop(img_size)] if native_size != img_size else []
    return T.Compose(resize + [T.ToTensor(), T.Normalize(mean, std)])


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB; any failure names the file (a corrupt JPEG in 1.2M must be findable)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:  # PIL raises several types (UnidentifiedImageError, OSError, SyntaxError…)
        raise ValueError(f"cannot read image file {path}: {type(exc).__name__}: {exc}") from None


class TensorImageDataset(Dataset):
    """Samples of an in-memory uint8 ``(N, C, H, W)`` CPU tensor, as PIL images through ``transform``."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable):
        self.images, self.labels, self.transform = images.cpu(), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        array = self.images[index].permute(1, 2, 0).numpy()
        return self.transform(Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)), int(self.labels[index])


class FileImageDataset(Dataset):
    """Samples read from image files (ImageFolder semantics: ``paths[i]`` has class ``labels[i]``)."""

    def __init__(self, paths: Sequence[str], labels: Tensor, transform: Callable):
        self.paths, self.labels, self.transform = list(paths), labels.cpu(), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tuple[Tensor, int]:
        return self.transform(load_rgb(self.paths[index])), int(self.labels[index])


def seed_worker(worker_id: int) -> None:
    """Seed ``random`` (RandAugment draws from it) and NumPy in a worker from its torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def make_sample_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int, world_size: int = 1, rank: int = 0,
                       num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` in ``ShardSampler`` order with deterministic worker seeds. Workers
    are not persistent: fresh ones per epoch take their seeds from the generator that
    ``ShardSampler.set_epoch`` reseeds, so epoch ``e`` augments identically however the run got there."""
    generator = torch.Generator()
    sampler = ShardSampler(len(dataset), train=train, seed=seed, world_size=world_size, rank=rank, loader_generator=generator)
    loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=train, num_workers=num_workers,
                        pin_memory=pin_memory, worker_init_fn=seed_worker, generator=generator, persistent_workers=False)
    if train and len(loader) == 0:
        raise ValueError(f"{len(dataset)} training images give rank {rank} of {world_size} no full batch of "
                         f"{batch_size}; lower data.batch_size or use more training images")
    return loader
