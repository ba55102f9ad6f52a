"""Any dataset laid out as class folders (torchvision ``ImageFolder`` semantics) under ``data.root``:
``train/<class>/**/<image>`` (required), ``val/`` and ``test/`` alike (each stands in for the other when
absent; ``data.val_split`` holds training images out instead). Classes are ``train/``'s sub-folders in
sorted order, and the other splits must have the same ones (class ids would silently shift otherwise).

In memory (``data.in_memory``, by default when there are fewer than 100k images of at most 64 px) every
image is decoded once, in ``data.num_workers`` processes (JPEGs by torchvision's libjpeg-turbo, which
gives PIL's bytes in half the time, the rest by PIL), resized (shorter side to ``img_size``, bicubic)
and centre-cropped into one uint8 tensor served by ``DeviceLoader``; it is cached at
``<root>/.vit_ablate_cache_<digest>.pt`` when the root is writable (the digest covers the file list,
sizes, mtimes and ``img_size``). Otherwise (e.g. ImageNet) ``DataLoader`` workers read each image per
sample (``sample_loader.py``). ``img_size`` is ``data.img_size`` or the first training image's shorter
side. Every error names the offending path.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
import signal
import warnings
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from vit_ablate.config import IMAGE_EXTENSIONS, data_root
from vit_ablate.data.base import DATASETS, ImageDataModule, Split
from vit_ablate.data.sample_loader import load_rgb, resize_center_crop

__all__ = ["ImageFolderDataModule", "scan_split", "decode_images", "IN_MEMORY_MAX_IMAGES", "IN_MEMORY_MAX_SIZE"]

log = logging.getLogger(__name__)

IN_MEMORY_MAX_IMAGES = 100_000  # automatic in-memory decode below this many images (all splits) …
IN_MEMORY_MAX_SIZE = 64  # … of at most this many pixels per side (60k CIFAR images: 180 MB as uint8)
_CACHE_VERSION = 1  # bump when the decoded bytes would change (resize method, layout)
_CHUNK = 512  # images per task of the decoding pool
_POOL_MIN_IMAGES = 2048  # below this, starting processes costs more than it saves


def scan_split(folder: Path) -> Tuple[List[str], List[str], List[int]]:
    """``(classes, paths, labels)`` of one split folder, ImageFolder-style, with errors naming paths."""
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder {str(folder)!r} does not exist")
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if not classes:
        raise FileNotFoundError(f"{str(folder)!r} has no class folders (expected {folder}/<class>/<image>)")
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        found = []
        for directory, subdirs, files in os.walk(folder / name, followlinks=True):
            subdirs.sort()
            found += [os.path.join(directory, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS)]
        if not found:
            raise FileNotFoundError(f"class folder {str(folder / name)!r} contains no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        paths += found
        labels += [label] * len(found)
    return classes, paths, labels


def _decode_jpeg(decode, path: str, img_size: int) -> Optional[np.ndarray]:
    """A JPEG of one or three channels and exactly ``img_size`` px decoded by ``decode`` (torchvision's
    libjpeg-turbo: the bytes PIL gives, in half the time), as ``(H, W, 3)``; None for anything else
    (CMYK, which PIL converts its own way; a size that needs resizing; a corrupt file, which PIL names)."""
    with open(path, "rb") as file:
        data = file.read()
    if not data.startswith(b"\xff\xd8\xff"):
        return None
    try:
        image = decode(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    except RuntimeError:
        return None
    if image.shape[0] not in (1, 3) or image.shape[1:] != (img_size, img_size):
        return None
    return image.expand(3, -1, -1).permute(1, 2, 0).numpy()


def _decode_chunk(task: Tuple[Sequence[str], int]) -> np.ndarray:
    paths, img_size = task
    resize = resize_center_crop(img_size)
    out = np.empty((len(paths), img_size, img_size, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torchvision 0.29 defers its decoders to TorchCodec
        try:
            from torchvision.io import decode_jpeg
        except ImportError:  # a torchvision without them: PIL decodes everything
            decode_jpeg = None
        for i, path in enumerate(paths):
            if decode_jpeg is not None and path.lower().endswith((".jpg", ".jpeg")):
                image = _decode_jpeg(decode_jpeg, path, img_size)
                if image is not None:
                    out[i] = image
                    continue
            img = load_rgb(path)  # raises ValueError naming the file
            if img.size != (img_size, img_size):
                img = resize(img)
            out[i] = np.asarray(img)
    return out


def _default_signals() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it ends the pool


def decode_images(paths: Sequence[str], img_size: int, num_workers: int = 0) -> Tensor:
    """Decode files into a uint8 ``(N, 3, img_size, img_size)`` tensor, in ``num_workers`` processes.

    The pool forks (where available) so that workers start in milliseconds without re-importing torch;
    they only decode. A fork inherits the trainer's Python SIGTERM handler, which runs only when the
    worker is back in the interpreter: a SIGTERM from ``Pool.terminate`` that lands just before a worker
    blocks on the pool's queue lock stays pending, and the pool waits on that worker forever. So each
    worker takes the kernel's default action back, and a finished pool ends by its workers' own exit.
    """
    out = np.empty((len(paths), img_size, img_size, 3), dtype=np.uint8)
    tasks = [(paths[i : i + _CHUNK], img_size) for i in range(0, len(paths), _CHUNK)]
    workers = min(int(num_workers), os.cpu_count() or 1, len(tasks))
    if workers > 1 and len(paths) >= _POOL_MIN_IMAGES:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        with multiprocessing.get_context(method).Pool(workers, initializer=_default_signals) as pool:
            for k, block in enumerate(pool.imap(_decode_chunk, tasks)):
                out[k * _CHUNK : k * _CHUNK + len(block)] = block
            pool.close()
            pool.join()
    else:
        for k, task in enumerate(tasks):
            out[k * _CHUNK : k * _CHUNK + len(task[0])] = _decode_chunk(task)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@DATASETS.register("imagefolder")
class ImageFolderDataModule(ImageDataModule):
    """``data.name=imagefolder`` (module docstring). Attributes after construction: ``num_classes``,
    ``class_names``, ``img_size``, ``in_chans`` (3: images are converted to RGB), ``mean``/``std``
    (0.5: the ViT reference code's [-1, 1] scaling), ``in_memory``, ``root``."""

    def __init__(self, cfg):
        super().__init__(cfg)
        if not cfg.data.root:
            raise ValueError("data.root must be set for data.name=imagefolder (a folder with train/<class>/ images)")
        self.root = data_root(cfg)
        if not self.root.is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} does not exist or is not a folder")
        if not (self.root / "train").is_dir():
            raise FileNotFoundError(f"data.root={str(self.root)!r} has no train/ folder (expected train/<class>/<image>)")
        self._decoded: Dict[str, Tensor] = {}  # digest → decoded images, shared by splits with the same files
        self.class_names, *train = scan_split(self.root / "train")
        self._index: Dict[str, Tuple[List[str], List[int]]] = {"train": tuple(train)}
        for name in ("val", "test"):
            if (self.root / name).is_dir():
                classes, *files = scan_split(self.root / name)
                self._check_classes(self.root / name, classes)
                self._index[name] = tuple(files)
        if int(cfg.data.val_split) == 0 and len(self._index) == 1:
            raise FileNotFoundError(f"data.root={str(self.root)!r} has neither val/ nor test/; add one or set "
                                    f"data.val_split>0 to hold out training images for validation")
        self.num_classes = len(self.class_names)
        self.img_size = int(cfg.data.img_size or min(load_rgb(self._index["train"][0][0]).size))
        total = sum(len(paths) for paths, _ in self._index.values())
        auto = total < IN_MEMORY_MAX_IMAGES and self.img_size <= IN_MEMORY_MAX_SIZE
        self.in_memory = auto if cfg.data.in_memory is None else bool(cfg.data.in_memory)
        # in memory, images are stored at img_size already; streamed, transforms resize each file
        self.native_size = self.img_size if self.in_memory else None

    def _check_classes(self, folder: Path, classes: List[str]) -> None:
        if classes != self.class_names:
            missing = sorted(set(self.class_names) - set(classes))
            extra = sorted(set(classes) - set(self.class_names))
            raise ValueError(
                f"class folders differ: {str(self.root / 'train')!r} has {len(self.class_names)} classes but "
                f"{str(folder)!r} has {len(classes)}; missing there: {missing}, not in train/: {extra}"
            )

    # -------------------------------------------------------------------------------------------- files
    def split_files(self, name: str) -> Tuple[List[str], Tensor]:
        """The file paths and labels of split ``name`` after hold-out and subset selection."""
        holdout = int(self.data_cfg.val_split) > 0
        if name == "train" or (name == "val" and holdout):
            source = "train"
        else:  # val/ and test/ stand in for each other
            source = next((s for s in (name, "test" if name == "val" else "val") if s in self._index), None)
        if source is None:  # only possible for test with a hold-out and neither folder
            log.warning("%s has no test/ or val/ folder: testing on the data.val_split hold-out", self.root)
            return self.split_files("val")
        paths, labels = self._index[source]
        labels = torch.as_tensor(labels, dtype=torch.long)
        index = torch.arange(len(paths))
        if source == "train":
            train_idx, held = self._train_selection(labels, holdout=holdout)
            index = train_idx if name == "train" else held
        return [paths[i] for i in index.tolist()], labels[index]

    # -------------------------------------------------------------------------------------------- decode
    def _digest(self, paths: Sequence[str]) -> str:
        """Identifies the decoded bytes: file list, sizes, mtimes, ``img_size`` and the decode version."""
        digest = hashlib.sha256(f"v{_CACHE_VERSION}/{self.img_size}".encode())
        for path in paths:
            stat = os.stat(path)
            digest.update(f"\n{os.path.relpath(path, self.root)}\t{stat.st_size}\t{stat.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]

    def cache_path(self, paths: Sequence[str]) -> Optional[Path]:
        """Where the decoded tensor of ``paths`` is cached, or None when the root is not writable."""
        return self.root / f".vit_ablate_cache_{self._digest(paths)}.pt" if os.access(self.root, os.W_OK) else None

    def _decode_cached(self, paths: Sequence[str]) -> Tensor:
        key = self._digest(paths)
        if key in self._decoded:  # e.g. val and test both read test/
            return self._decoded[key]
        cache = self.cache_path(paths)
        images = None
        if cache is not None and cache.is_file():
            try:
                loaded = torch.load(cache, map_location="cpu", weights_only=True)
                if loaded.shape == (len(paths), 3, self.img_size, self.img_size) and loaded.dtype == torch.uint8:
                    images = loaded
            except Exception as exc:  # a truncated cache (killed writer) is rebuilt
                log.warning("ignoring unreadable cache %s: %s", cache, exc)
        if images is None:
            images = decode_images(paths, self.img_size, int(self.data_cfg.num_workers))
            if cache is not None:
                tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
                try:
                    torch.save(images, tmp)
                    os.replace(tmp, cache)  # atomic: concurrent ranks never see a half-written cache
                except OSError as exc:
                    log.warning("could not write the decode cache %s: %s", cache, exc)
                    tmp.unlink(missing_ok=True)
        self._decoded[key] = images
        return images

    def prepare_data(self) -> None:
        """Decode and cache once per node (local rank 0), so that the other ranks load the cache."""
        if self.in_memory and os.access(self.root, os.W_OK):
            for name in ("train", "val", "test"):
                self._decode_cached(self.split_files(name)[0])

    def _load_split(self, name: str) -> Split:
        paths, labels = self.split_files(name)
        if self.in_memory:
            return Split(labels, images=self._decode_cached(paths))
        return Split(labels, paths=paths)
