"""ImageFolder data module: layout errors naming paths, in-memory decode + cache, streaming, real CIFAR JPEGs."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import vit_ablate.data.imagefolder as imagefolder
from vit_ablate.data import DeviceLoader, ShardSampler, build_datamodule
from vit_ablate.data.imagefolder import ImageFolderDataModule, decode_images

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def write_folder(root: Path, splits=("train", "val"), per_class=4, size=(12, 12), fmt="PNG", classes=COLOURS) -> Path:
    """Class folders of solid-colour images; image k of a class has its top-left pixel set to k."""
    for split in splits:
        for name, colour in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for k in range(per_class):
                img = Image.new("RGB", size, colour)
                img.putpixel((0, 0), (k, k, k))
                img.save(folder / f"{k:03d}.{fmt.lower()}", fmt)
    return root


def cfg_for(tiny, root, *more):
    return tiny("data.name=imagefolder", f"data.root={root}", "data.num_workers=0", "data.batch_size=4", *more)


def test_a_relative_root_lies_under_the_data_variable(tiny, tmp_path, monkeypatch):
    write_folder(tmp_path / "shapes")
    monkeypatch.setenv("VIT_ABLATE_DATA", str(tmp_path))
    dm = build_datamodule(cfg_for(tiny, "shapes"))
    assert dm.root == tmp_path / "shapes" and len(dm.split("train")) == 12


# --------------------------------------------------------------------------------------------- errors
def test_root_must_be_set(tiny):
    with pytest.raises(ValueError, match="data.root must be set"):
        build_datamodule(tiny("data.name=imagefolder"))


def test_missing_root_is_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        build_datamodule(cfg_for(tiny, tmp_path / "absent"))


def test_root_without_train_is_named(tiny, tmp_path):
    write_folder(tmp_path, splits=("val",))
    with pytest.raises(FileNotFoundError, match=f"{tmp_path}.*has no train/"):
        build_datamodule(cfg_for(tiny, tmp_path))


def test_empty_class_folder_is_named(tiny, tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "fox").mkdir()
    (tmp_path / "train" / "fox" / "notes.txt").write_text("not an image")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'train' / 'fox'}' contains no images"):
        build_datamodule(cfg_for(tiny, tmp_path))


def test_train_without_class_folders(tiny, tmp_path):
    (tmp_path / "train").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "train" / "loose.png")
    with pytest.raises(FileNotFoundError, match="has no class folders"):
        build_datamodule(cfg_for(tiny, tmp_path))


def test_class_mismatch_between_splits_is_named(tiny, tmp_path):
    write_folder(tmp_path, splits=("train",))
    write_folder(tmp_path, splits=("val",), classes={"cat": (1, 2, 3), "dog": (4, 5, 6)})
    with pytest.raises(ValueError) as info:
        build_datamodule(cfg_for(tiny, tmp_path))
    message = str(info.value)
    assert str(tmp_path / "val") in message and "3 classes" in message and "has 2" in message and "['emu']" in message


def test_no_validation_source(tiny, tmp_path):
    write_folder(tmp_path, splits=("train",))
    with pytest.raises(FileNotFoundError, match="neither val/ nor test/.*data.val_split"):
        build_datamodule(cfg_for(tiny, tmp_path))
    dm = build_datamodule(cfg_for(tiny, tmp_path, "data.val_split=3"))  # a hold-out instead
    assert len(dm.split("val")) == 3 and len(dm.split("train")) == 9
    assert len(dm.split("test")) == 3  # falls back to the hold-out


@pytest.mark.parametrize("in_memory", [True, False])
def test_corrupt_image_is_named(tiny, tmp_path, in_memory):
    write_folder(tmp_path, fmt="JPEG")
    bad = tmp_path / "train" / "dog" / "bad.jpg"
    bad.write_bytes(os.urandom(300))
    dm = build_datamodule(cfg_for(tiny, tmp_path, f"data.in_memory={str(in_memory).lower()}", "data.batch_size=13"))
    with pytest.raises(ValueError, match=f"cannot read image file {bad}"):
        dm.setup("fit")
        for _ in dm.train_dataloader():
            pass


def test_unreadable_file_in_the_pool_is_named(tmp_path):
    paths = []
    for k in range(2100):  # enough to use the process pool
        paths.append(str(tmp_path / f"{k}.png"))
    Image.new("RGB", (4, 4)).save(paths[0])
    for p in paths[1:]:
        os.link(paths[0], p)
    Path(paths[1500]).unlink()
    Path(paths[1500]).write_bytes(b"garbage")
    with pytest.raises(ValueError, match=f"cannot read image file {paths[1500]}"):
        decode_images(paths, 4, num_workers=2)


def test_jpegs_decode_to_the_bytes_pil_gives(tmp_path, monkeypatch):
    """RGB and greyscale JPEGs at the target size take torchvision's decoder; CMYK, resized and PNG
    files take PIL's; every pixel is the one PIL alone gives."""
    generator = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (16, 16, 4), dtype=torch.uint8, generator=generator).numpy()
    images = {"rgb.jpg": Image.fromarray(noise[..., :3]), "grey.jpeg": Image.fromarray(noise[..., 0]),
              "cmyk.jpg": Image.fromarray(noise, "CMYK"), "big.jpg": Image.fromarray(noise[..., :3]).resize((24, 20)),
              "rgb.png": Image.fromarray(noise[..., 1:])}
    paths = []
    for name, img in images.items():
        img.save(tmp_path / name, quality=75) if name.endswith(("jpg", "jpeg")) else img.save(tmp_path / name)
        paths.append(str(tmp_path / name))
    fast, decode_jpeg = [], imagefolder._decode_jpeg

    def counted(decode, path, size):
        out = decode_jpeg(decode, path, size)
        if out is not None:
            fast.append(path)
        return out

    monkeypatch.setattr(imagefolder, "_decode_jpeg", counted)
    both = decode_images(paths, 16)
    assert fast == paths[:2]
    monkeypatch.setattr(imagefolder, "_decode_jpeg", lambda *a: None)
    assert torch.equal(both, decode_images(paths, 16))


def test_the_pool_ends_although_the_parent_holds_sigterm(tmp_path):
    """A worker that does not end on SIGTERM (here the parent's handler, inherited, holds it; in a sweep
    the trainer's handler never ran, the signal having landed just before the worker blocked) must not
    leave the pool waiting forever, on an unreadable file or at the end."""
    import subprocess
    import sys

    Image.new("RGB", (4, 4)).save(tmp_path / "0.png")
    for k in range(1, 2100):
        os.link(tmp_path / "0.png", tmp_path / f"{k}.png")
    script = (
        "import signal, sys; from pathlib import Path; from vit_ablate.data.imagefolder import decode_images\n"
        "signal.signal(signal.SIGTERM, lambda *a: None)  # held, as SigtermGuard holds it\n"
        f"paths = [str(Path({str(tmp_path)!r}) / f'{{k}}.png') for k in range(2100)]\n"
        "assert decode_images(paths, 4, num_workers=2).shape == (2100, 3, 4, 4)\n"
        "Path(paths[1500]).unlink(); Path(paths[1500]).write_bytes(b'garbage')\n"
        "try:\n    decode_images(paths, 4, num_workers=2)\nexcept ValueError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"cannot read image file {tmp_path / '1500.png'}" in done.stdout


# --------------------------------------------------------------------------------------------- in memory
def test_in_memory_decode_labels_and_pixels(tiny, tmp_path):
    write_folder(tmp_path, splits=("train", "val", "test"), per_class=4, size=(12, 12))
    dm = build_datamodule(cfg_for(tiny, tmp_path))
    assert isinstance(dm, ImageFolderDataModule)
    assert (dm.num_classes, dm.img_size, dm.in_chans, dm.in_memory) == (3, 12, 3, True)
    assert dm.class_names == ["cat", "dog", "emu"]
    dm.setup("fit")
    train = dm.split("train")
    assert train.images.shape == (12, 3, 12, 12) and train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert train.images[4:8, :, 5, 5].tolist() == [[30, 200, 30]] * 4  # dog green
    assert train.images[:4, 0, 0, 0].tolist() == [0, 1, 2, 3]  # file order within a class
    assert isinstance(dm.train_dataloader(), DeviceLoader)
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 12, 12) and x[0, 0, 5, 5].item() == pytest.approx((200 / 255 - 0.5) / 0.5)


def test_non_square_images_are_resized_and_centre_cropped(tiny, tmp_path):
    write_folder(tmp_path, size=(20, 10))
    assert build_datamodule(cfg_for(tiny, tmp_path)).img_size == 10  # the shorter side
    dm = build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=6"))
    assert dm.split("train").images.shape == (12, 3, 6, 6)


def test_decode_cache_is_written_reused_and_invalidated(tiny, tmp_path, monkeypatch):
    write_folder(tmp_path)
    dm = build_datamodule(cfg_for(tiny, tmp_path))
    first = dm.split("train").images
    caches = sorted(tmp_path.glob(".vit_ablate_cache_*.pt"))
    assert len(caches) == 1 and dm.cache_path(dm.split_files("train")[0]) == caches[0]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache exists")

    monkeypatch.setattr(imagefolder, "decode_images", no_decoding)
    again = build_datamodule(cfg_for(tiny, tmp_path))
    assert torch.equal(again.split("train").images, first)
    # a changed file changes the digest: decoded afresh
    changed = tmp_path / "train" / "cat" / "000.png"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    with pytest.raises(AssertionError, match="decoded although"):
        build_datamodule(cfg_for(tiny, tmp_path)).split("train")


def test_no_cache_on_a_read_only_root(tiny, tmp_path, monkeypatch):
    write_folder(tmp_path)
    real_access = os.access
    monkeypatch.setattr(imagefolder.os, "access", lambda path, mode: False if mode == os.W_OK else real_access(path, mode))
    dm = build_datamodule(cfg_for(tiny, tmp_path))
    assert dm.split("train").images.shape == (12, 3, 12, 12)
    assert dm.cache_path(dm.split_files("train")[0]) is None
    assert not list(tmp_path.glob(".vit_ablate_cache_*"))


def test_automatic_in_memory_rule(tiny, tmp_path):
    write_folder(tmp_path)
    assert build_datamodule(cfg_for(tiny, tmp_path)).in_memory is True
    assert build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=128")).in_memory is False
    assert build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=128", "data.in_memory=true")).in_memory is True
    assert build_datamodule(cfg_for(tiny, tmp_path, "data.in_memory=false")).in_memory is False


# --------------------------------------------------------------------------------------------- streaming
def test_streamed_and_in_memory_evaluation_agree(tiny, tmp_path):
    write_folder(tmp_path, size=(20, 14))
    memory = build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=8"))
    stream = build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=8", "data.in_memory=false"))
    memory.setup("fit")
    stream.setup("fit")
    assert stream.split("val").paths is not None
    loader = stream.val_dataloader()
    assert isinstance(loader, DataLoader) and isinstance(loader.sampler, ShardSampler)
    xs = torch.cat([x for x, _ in loader])
    xm = torch.cat([x for x, _ in memory.val_dataloader()])
    assert xs.shape == xm.shape == (12, 3, 8, 8)
    assert torch.allclose(xs, xm, atol=1e-6)
    assert memory.test_is_validation() and stream.test_is_validation()  # test/ stands in for the missing val/
    write_folder(tmp_path, splits=("test",), size=(20, 14), classes={k: v[::-1] for k, v in COLOURS.items()})
    apart = [build_datamodule(cfg_for(tiny, tmp_path, "data.img_size=8", f"data.in_memory={m}")) for m in ("true", "false")]
    assert not any(dm.test_is_validation() for dm in apart)


def test_streamed_training_uses_transforms_and_shards(tiny, tmp_path, trainer_stub):
    write_folder(tmp_path, per_class=8, size=(20, 14))
    dm = build_datamodule(
        cfg_for(tiny, tmp_path, "data.img_size=8", "data.in_memory=false", "augment.random_resized_crop=true",
                "augment.hflip=true", "augment.randaugment=rand-m9-n2")
    )
    dm.trainer = trainer_stub(world_size=2, global_rank=0)
    loader = dm.train_dataloader()
    assert len(loader.sampler) == 12 and len(loader) == 6  # per-device batch 4 // 2 = 2
    batches = list(loader)
    assert all(x.shape == (2, 3, 8, 8) and x.dtype == torch.float32 for x, _ in batches)


# --------------------------------------------------------------------------------------------- real data
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_real_cifar10_jpegs_subset(tiny, cifar10_jpeg):
    dm = build_datamodule(
        tiny("data.name=imagefolder", f"data.root={cifar10_jpeg}", "data.train_subset=1000", "data.num_workers=2",
             "data.batch_size=128")
    )
    assert (dm.num_classes, dm.img_size, dm.in_memory) == (10, 32, True)
    assert dm.class_names == CIFAR10_CLASSES
    dm.setup("fit")
    train, val = dm.split("train"), dm.split("val")
    assert train.images.shape == (1000, 3, 32, 32) and torch.bincount(train.labels).tolist() == [100] * 10
    assert val.images.shape == (10000, 3, 32, 32) and torch.bincount(val.labels).tolist() == [1000] * 10
    assert dm.split("test") is not None and dm.split("test").images is val.images  # test/ serves both
    # CIFAR-10's per-channel means are about (0.49, 0.48, 0.45) of 255
    means = val.images.float().mean((0, 2, 3)) / 255
    assert torch.allclose(means, torch.tensor([0.49, 0.48, 0.45]), atol=0.02)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 3, 32, 32) and -1.0 <= float(x.min()) and float(x.max()) <= 1.0


def test_real_cifar10_test_split_decodes_and_comes_back_from_the_cache(tiny, cifar10_jpeg):
    """The 10k real test JPEGs decoded in a 2-process pool (cache bypassed), then served from the
    cache written by prepare_data, equal to the last byte. (Decode and start-up times are the
    bench's data section's business, not a test's.)"""
    cfg = tiny("data.name=imagefolder", f"data.root={cifar10_jpeg}", "data.num_workers=2")
    files, labels = ImageFolderDataModule(cfg).split_files("test")
    images = decode_images(files, 32, 2)
    assert images.shape == (10000, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [1000] * 10
    build_datamodule(cfg).prepare_data()  # writes the caches (once)
    assert torch.equal(build_datamodule(cfg).split("test").images, images)


def test_an_imagefolder_gives_the_model_its_class_count_and_image_side(tmp_path, monkeypatch):
    """`vit-ablate train data.name=imagefolder data.root=X` needs no model keys: the config takes what
    the data module will find (class folders, the first training image's shorter side)."""
    from PIL import Image

    from vit_ablate.config import load_config

    for name in ("cat", "dog", "emu"):
        (tmp_path / "imgs" / "train" / name).mkdir(parents=True)
        Image.new("RGB", (24, 20)).save(tmp_path / "imgs" / "train" / name / "0.png")
    (tmp_path / "imgs" / "test").symlink_to(tmp_path / "imgs" / "train")
    monkeypatch.setenv("VIT_ABLATE_DATA", str(tmp_path))
    cfg = load_config(overrides=["data.name=imagefolder", "data.root=imgs", "model.variant=Ti/4"])
    assert (cfg.model.num_classes, cfg.model.img_size) == (3, 20)
    assert load_config(overrides=["data.name=imagefolder", "data.root=imgs", "data.img_size=32"]).model.img_size == 32
