"""CIFAR-10/100 data modules on miniature fake pickles (the real archives cannot be downloaded here).

The fakes have torchvision's exact file layout; only its MD5 checks are patched out, because the
checksums of the real files cannot be matched by small fakes.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from vit_ablate.data import DeviceLoader, build_datamodule
from vit_ablate.data import cifar as cifar_module
from vit_ablate.data.cifar import CIFAR10DataModule, CIFAR100DataModule

PER_BATCH = 100  # 5 training batches → 500 training images; 60 test images


def fake_images(start: int, n: int) -> np.ndarray:
    """Rows of 3072 bytes in CIFAR's channel-major layout. Image i (global index) has red = i % 256,
    green = i // 256, blue = 7, so tests can tell which image ended up where and check the layout."""
    index = np.arange(start, start + n)
    planes = [np.repeat((index % 256)[:, None], 1024, 1), np.repeat((index // 256)[:, None], 1024, 1), np.full((n, 1024), 7)]
    return np.concatenate(planes, 1).astype(np.uint8)


def fake_labels(start: int, n: int, classes: int) -> list[int]:
    return [(i * 7 + i // classes) % classes for i in range(start, start + n)]  # balanced-ish, not sorted


def write(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f)


@pytest.fixture
def no_md5(monkeypatch):
    monkeypatch.setattr(torchvision.datasets.CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda path, md5=None: Path(path).is_file())
    monkeypatch.setattr(cifar_module, "check_integrity", lambda path, md5=None: Path(path).is_file())


@pytest.fixture
def cifar10_root(tmp_path, no_md5) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    for b in range(5):
        start = b * PER_BATCH
        write(folder / f"data_batch_{b + 1}", {"data": fake_images(start, PER_BATCH), "labels": fake_labels(start, PER_BATCH, 10)})
    write(folder / "test_batch", {"data": fake_images(1000, 60), "labels": fake_labels(0, 60, 10)})
    write(folder / "batches.meta", {"label_names": [f"class{i}" for i in range(10)]})
    return tmp_path


@pytest.fixture
def cifar100_root(tmp_path, no_md5) -> Path:
    folder = tmp_path / "cifar-100-python"
    write(folder / "train", {"data": fake_images(0, 1000), "fine_labels": [i % 100 for i in range(1000)]})
    write(folder / "test", {"data": fake_images(2000, 200), "fine_labels": [i % 100 for i in range(200)]})
    write(folder / "meta", {"fine_label_names": [f"c{i:02d}" for i in range(100)]})
    return tmp_path


def image_ids(images: torch.Tensor) -> list[int]:
    return (images[:, 0, 0, 0].long() + 256 * images[:, 1, 0, 0].long()).tolist()


def test_attributes_before_any_file_is_read(tiny, tmp_path):
    dm = build_datamodule(tiny("data.name=cifar10", f"data.root={tmp_path / 'nowhere'}"))
    assert isinstance(dm, CIFAR10DataModule)
    assert (dm.num_classes, dm.img_size, dm.in_chans, dm.mean, dm.std) == (10, 32, 3, (0.5,) * 3, (0.5,) * 3)
    dm100 = build_datamodule(tiny("data.name=cifar100", "data.img_size=224"))
    assert isinstance(dm100, CIFAR100DataModule) and (dm100.num_classes, dm100.img_size) == (100, 224)
    assert str(dm100.root) == ".data"  # the git-ignored default


def test_missing_dataset_names_the_path_and_the_download_switch(tiny, tmp_path):
    root = tmp_path / "nowhere"
    dm = build_datamodule(tiny("data.name=cifar10", f"data.root={root}"))
    with pytest.raises(FileNotFoundError) as info:
        dm.setup("fit")
    message = str(info.value)
    assert str(root) in message and "does not exist" in message and "data.download=true" in message
    (root / "empty").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="has no cifar-10-batches-py/ folder"):
        build_datamodule(tiny("data.name=cifar10", f"data.root={root}")).setup("fit")
    with pytest.raises(FileNotFoundError, match="data.download=true"):
        build_datamodule(tiny("data.name=cifar10", f"data.root={root}")).check_available()


def test_a_truncated_pickle_is_named_as_corrupt_not_missing(tiny, cifar10_root, monkeypatch):
    """A cut-off download passes a file-exists check; the checksum tells it apart from a missing file."""
    folder = cifar10_root / "cifar-10-batches-py"
    # the fakes' own checksums stand in for torchvision's (which small fakes cannot match)
    digests = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    monkeypatch.setattr(cifar_module, "check_integrity",
                        lambda path, md5=None: hashlib.md5(Path(path).read_bytes()).hexdigest() == digests[Path(path).name])
    batch = folder / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(ValueError) as info:
        build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}")).check_available()
    message = str(info.value)
    assert "corrupt" in message and str(batch) in message and "data.download=true" in message
    assert "not found" not in message and "data_batch_2" not in message
    # loading it (torchvision's own checks patched out) fails on the pickle: named the same way
    with pytest.raises(ValueError, match="corrupt: .*data_batch_3 does not match"):
        build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}")).setup("fit")


def test_splits_and_pixel_layout(tiny, cifar10_root):
    dm = build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}"))
    dm.setup("fit")
    train, val, test = dm.split("train"), dm.split("val"), dm.split("test")
    assert train.images.shape == (500, 3, 32, 32) and train.images.dtype == torch.uint8
    assert image_ids(train.images) == list(range(500))
    assert (train.images[:, 2] == 7).all()  # channel order survived NHWC → NCHW
    assert train.labels.tolist() == fake_labels(0, 500, 10)
    assert image_ids(val.images) == image_ids(test.images) == list(range(1000, 1060))  # val = test split
    assert dm.test_is_validation()
    assert dm.class_names == [f"class{i}" for i in range(10)]
    assert isinstance(dm.train_dataloader(), DeviceLoader)


def test_val_split_holds_out_the_last_balanced_training_images(tiny, cifar10_root):
    dm = build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}", "data.val_split=100", "data.train_subset=50"))
    train, val, test = dm.split("train"), dm.split("val"), dm.split("test")
    assert torch.bincount(val.labels, minlength=10).tolist() == [10] * 10
    assert torch.bincount(train.labels, minlength=10).tolist() == [5] * 10
    held, used = set(image_ids(val.images)), set(image_ids(train.images))
    assert not held & used and len(held) == 100
    labels = torch.tensor(fake_labels(0, 500, 10))
    for c in range(10):  # the hold-out is each class's last 10 training images …
        assert sorted(i for i in held if labels[i] == c) == torch.nonzero(labels == c).flatten()[-10:].tolist()
        # … and the subset each class's first 5
        assert sorted(i for i in used if labels[i] == c) == torch.nonzero(labels == c).flatten()[:5].tolist()
    assert len(test) == 60
    assert not dm.test_is_validation()
    # deterministic: a second module holds out the same images
    again = build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}", "data.val_split=100"))
    assert set(image_ids(again.split("val").images)) == held and len(again.split("train")) == 400


def test_img_size_resizes_batches_on_the_fly(tiny, cifar10_root):
    dm = build_datamodule(tiny("data.name=cifar10", f"data.root={cifar10_root}", "data.img_size=48", "data.batch_size=50"))
    dm.setup("fit")
    assert dm.split("train").images.shape[-1] == 32  # stored at native size
    x, _ = next(iter(dm.train_dataloader()))
    xv, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (50, 3, 48, 48) and xv.shape == (50, 3, 48, 48)
    blue = (7 / 255 - 0.5) / 0.5
    assert torch.allclose(xv[:, 2], torch.full_like(xv[:, 2], blue), atol=1e-5)  # flat planes stay flat


def test_cifar100_fine_labels(tiny, cifar100_root):
    dm = build_datamodule(tiny("data.name=cifar100", f"data.root={cifar100_root}", "data.train_subset=200"))
    dm.setup("fit")
    assert len(dm.split("train")) == 200 and torch.bincount(dm.split("train").labels).tolist() == [2] * 100
    assert len(dm.split("val")) == 200 and dm.class_names[:2] == ["c00", "c01"]


def test_train_subset_larger_than_a_class_allows_is_an_error(tiny, cifar100_root):
    dm = build_datamodule(tiny("data.name=cifar100", f"data.root={cifar100_root}", "data.train_subset=2000"))
    with pytest.raises(ValueError, match="data.train_subset=2000 exceeds the 1000"):
        dm.setup("fit")
