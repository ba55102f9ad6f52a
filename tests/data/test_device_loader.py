"""DeviceLoader / ShardSampler: order, DDP sharding, batched augmentation, normalisation, Lightning use."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from vit_ablate.data import DeviceLoader, ShardSampler, build_datamodule
from vit_ablate.data.device_loader import batch_crop_flip, normalize_batch


def indexed_images(n: int, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Image i is filled with i % 256 and labelled i, so batches reveal which samples they hold."""
    index = torch.arange(n)
    images = (index % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, size, size).contiguous()
    return images, index


def loader(n=1001, **kw) -> DeviceLoader:
    images, labels = indexed_images(n)
    args = dict(batch_size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), train=True, seed=0)
    args.update(kw)
    return DeviceLoader(images, labels, **args)


def labels_of(it) -> list[int]:
    return [i for _, y in it for i in y.tolist()]


# --------------------------------------------------------------------------------------------- order
def test_training_order_is_deterministic_per_seed_and_epoch():
    a, b = ShardSampler(1000, train=True, seed=3), ShardSampler(1000, train=True, seed=3)
    assert list(a) == list(b)
    assert sorted(a) == list(range(1000))  # one rank: a permutation of everything
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(1000))
    a.set_epoch(0)
    assert list(a) == first  # an epoch's order does not depend on the epochs before it
    assert list(ShardSampler(1000, train=True, seed=4)) != first


def test_two_rank_training_shards_are_disjoint_and_equal():
    shards = [ShardSampler(1001, train=True, seed=0, world_size=2, rank=r) for r in range(2)]
    a, b = list(shards[0]), list(shards[1])
    assert len(a) == len(b) == 500 == len(shards[0]) == len(shards[1])
    assert not set(a) & set(b)
    assert a != b
    for s in shards:
        s.set_epoch(5)
    assert not set(shards[0]) & set(shards[1]) and list(shards[0]) != a


def test_two_rank_eval_shards_cover_every_index_once():
    shards = [ShardSampler(1001, train=False, world_size=2, rank=r) for r in range(2)]
    a, b = list(shards[0]), list(shards[1])
    assert (len(a), len(b)) == (501, 500) == (len(shards[0]), len(shards[1]))
    assert sorted(a + b) == list(range(1001))
    assert a == sorted(a) and b == sorted(b)  # no shuffle


def test_three_rank_eval_loaders_yield_every_sample_exactly_once():
    loaders = [loader(1001, train=False, world_size=3, rank=r) for r in range(3)]
    assert [len(l) for l in loaders] == [6, 6, 6]  # 334, 334, 333 samples in batches of 64
    seen = sum((labels_of(l) for l in loaders), [])
    assert sorted(seen) == list(range(1001))


def test_training_loader_batches_per_rank_and_epochs():
    ranks = [loader(1000, world_size=2, rank=r) for r in range(2)]
    assert [len(l) for l in ranks] == [7, 7]  # 500 per rank → 7 full batches, remainder dropped
    assert ranks[0].num_samples == 448
    r0, r1 = labels_of(ranks[0]), labels_of(ranks[1])
    assert len(r0) == len(r1) == 448 and not set(r0) & set(r1)
    assert r0 == labels_of(loader(1000, world_size=2, rank=0))  # deterministic
    ranks[0].set_epoch(1)
    assert labels_of(ranks[0]) != r0
    # Lightning calls set_epoch on loader.sampler; that is the same state
    ranks[1].sampler.set_epoch(1)
    assert ranks[1].epoch == 1 and labels_of(ranks[1]) != r1


def test_too_few_images_for_one_batch_is_an_error():
    with pytest.raises(ValueError, match="no full batch of 64"):
        loader(100, world_size=2, rank=0)


def test_invalid_rank():
    with pytest.raises(ValueError, match="rank 2"):
        ShardSampler(10, train=False, world_size=2, rank=2)


# --------------------------------------------------------------------------------------------- augmentation
def pattern(n: int = 256, size: int = 16) -> torch.Tensor:
    """Distinct, asymmetric content in every pixel (values 1..255, never the zero padding)."""
    g = torch.Generator().manual_seed(0)
    return torch.randint(1, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def test_pad_crop_shifts_content_by_at_most_the_padding():
    x = pattern()
    out = batch_crop_flip(x, padding=4, hflip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    offsets = []
    for i in range(len(x)):
        found = [
            (dy, dx)
            for dy in range(9)
            for dx in range(9)
            if torch.equal(out[i], padded[i, :, dy : dy + 16, dx : dx + 16])
        ]
        assert len(found) == 1  # every output is exactly one crop of the zero-padded input
        offsets.append(found[0])
    shifted = sum(o != (4, 4) for o in offsets)
    assert shifted > 0.9 * len(x)  # 80 of 81 offsets move the content
    assert len(set(offsets)) > 60  # offsets spread over the 9 × 9 choices
    # content moved off the image is replaced by zeros
    assert (out == 0).any()


def test_hflip_flips_about_half():
    x = pattern()
    out = batch_crop_flip(x, padding=0, hflip=True, generator=torch.Generator().manual_seed(2))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped ^ same).all())
    assert 0.4 < flipped.float().mean() < 0.6


def test_training_loader_augments_deterministically_and_eval_does_not():
    x = pattern(256)
    y = torch.arange(256)
    common = dict(batch_size=64, mean=(0.5,) * 3, std=(0.5,) * 3, seed=0, crop_padding=4, hflip=True)
    a = [b for b, _ in DeviceLoader(x, y, train=True, **common)]
    b = [b for b, _ in DeviceLoader(x, y, train=True, **common)]
    assert all(torch.equal(p, q) for p, q in zip(a, b))
    other_rank = DeviceLoader(x, y, train=True, world_size=2, rank=1, **{**common, "batch_size": 32})
    assert len(other_rank) == 4
    evaluated = torch.cat([b for b, _ in DeviceLoader(x, y, train=False, **common)])
    assert torch.equal(((evaluated * 0.5 + 0.5) * 255).round().to(torch.uint8), x)  # untouched


# --------------------------------------------------------------------------------------------- normalisation
def test_normalisation_numbers():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2).contiguous()
    mean = torch.tensor([0.0, 0.2, 0.5]).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.5, 0.1, 0.25]).view(1, 3, 1, 1) * 255
    out = normalize_batch(x, mean, std)
    assert out.dtype == torch.float32
    assert out[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.0, 2.0])  # 0/0.5, (0.2-0.2)/0.1, (1-0.5)/0.25
    images, labels = indexed_images(4)
    batch, _ = next(iter(DeviceLoader(images, labels, batch_size=4, mean=(0.5,) * 3, std=(0.5,) * 3, train=False)))
    assert batch[:, 0, 0, 0].tolist() == pytest.approx([-1.0, -1 + 2 / 255, -1 + 4 / 255, -1 + 6 / 255])


def test_batches_are_resized_to_out_size():
    images = torch.full((4, 3, 32, 32), 200, dtype=torch.uint8)
    batch, _ = next(
        iter(DeviceLoader(images, torch.arange(4), batch_size=4, mean=(0.0,) * 3, std=(1.0,) * 3, train=False, out_size=48))
    )
    assert batch.shape == (4, 3, 48, 48)
    assert torch.allclose(batch, torch.full_like(batch, 200 / 255), atol=1e-5)  # a flat image stays flat


# --------------------------------------------------------------------------------------------- data modules
def test_datamodule_per_device_batch_and_ranks(tiny, trainer_stub):
    cfg = tiny("data.synthetic.num_train=1024", "data.synthetic.num_val=301", "data.batch_size=128")
    dm = build_datamodule(cfg)
    assert dm.per_device_batch_size == 128 and dm.world_size == 1
    dm.trainer = trainer_stub(world_size=2, global_rank=1)
    assert dm.per_device_batch_size == 64 and dm.per_device_eval_batch_size == 64
    dm.per_device_batch_size = 16  # training code may set it (gradient accumulation micro-batch)
    train = dm.train_dataloader()
    assert (train.batch_size, train.rank, train.world_size, len(train)) == (16, 1, 2, 32)
    val = dm.val_dataloader()
    assert (val.rank, len(val.sampler), len(val)) == (1, 150, 3)  # indices 1, 3, …, 299


def test_randaugment_uses_the_per_sample_path_with_deterministic_workers(tiny):
    cfg = tiny(
        "data.synthetic.num_train=64", "data.batch_size=32", "data.num_workers=1",
        "augment.randaugment=rand-m9-n2", "augment.hflip=true",
    )
    loaders = [build_datamodule(cfg).train_dataloader() for _ in range(2)]
    assert isinstance(loaders[0], DataLoader) and isinstance(loaders[0].sampler, ShardSampler)
    x0, y0 = next(iter(loaders[0]))
    x1, y1 = next(iter(loaders[1]))
    assert x0.shape == (32, 3, 32, 32) and x0.dtype == torch.float32
    assert torch.equal(y0, y1) and torch.equal(x0, x1)
    loaders[1].sampler.set_epoch(1)
    x2, y2 = next(iter(loaders[1]))
    assert not torch.equal(y0, y2) or not torch.equal(x0, x2)
    # eval stays on the in-memory path, unaugmented
    assert isinstance(build_datamodule(cfg).val_dataloader(), DeviceLoader)


class _Recorder(L.LightningModule):
    """A linear probe that records which samples each epoch started with."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 8)
        self.first_labels: list[list[int]] = []
        self.sampler_epochs: list[int] = []

    def on_train_epoch_start(self):
        self.sampler_epochs.append(self.trainer.train_dataloader.sampler.epoch)

    def training_step(self, batch, batch_idx):
        x, y = batch
        if batch_idx == 0:
            self.first_labels.append(y[:16].tolist())
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val_loss", torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_lightning_sets_the_epoch_and_sees_the_length(tiny, tmp_path):
    dm = build_datamodule(tiny("data.synthetic.num_train=512", "data.synthetic.num_val=64", "data.batch_size=64"))
    model = _Recorder()
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=dm)
    assert model.sampler_epochs == [0, 1, 2]
    assert trainer.num_training_batches == 8
    assert len({tuple(l) for l in model.first_labels}) == 3  # a new shuffle every epoch


class _ShardRecorder(L.LightningModule):
    """Saves, per rank, the (denormalised) images it trained and validated on."""

    def __init__(self, out_dir: str):
        super().__init__()
        self.layer = torch.nn.Linear(3 * 32 * 32, 8)
        self.out_dir = out_dir
        self.train_seen: list[torch.Tensor] = []
        self.val_seen: list[torch.Tensor] = []

    @staticmethod
    def _raw(x: torch.Tensor) -> torch.Tensor:
        return ((x * 0.5 + 0.5) * 255).round().to(torch.uint8)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.train_seen.append(self._raw(x))
        return torch.nn.functional.cross_entropy(self.layer(x.flatten(1)), y)

    def validation_step(self, batch, batch_idx):
        self.val_seen.append(self._raw(batch[0]))

    def on_train_end(self):
        torch.save(
            {"train": torch.cat(self.train_seen), "val": torch.cat(self.val_seen), "world": self.trainer.world_size},
            f"{self.out_dir}/rank{self.global_rank}.pt",
        )

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.slow
def test_lightning_ddp_two_processes_shard_as_specified(tiny, tmp_path):
    """Real DDP (2 CPU processes, gloo): disjoint equal training shards; every val image exactly once."""
    cfg = tiny("data.synthetic.num_train=200", "data.synthetic.num_val=101", "data.batch_size=40")
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy="ddp_spawn", max_epochs=1, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_ShardRecorder(str(tmp_path)), datamodule=build_datamodule(cfg))
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]
    reference = build_datamodule(cfg)

    def ids(images: torch.Tensor, split: str) -> list[int]:
        lookup = {bytes(img.numpy().tobytes()): i for i, img in enumerate(reference.split(split).images)}
        return [lookup[bytes(img.numpy().tobytes())] for img in images]

    train = [ids(r["train"], "train") for r in ranks]
    assert len(train[0]) == len(train[1]) == 100  # per-device batch 20, 5 steps each
    assert not set(train[0]) & set(train[1])
    val = [ids(r["val"], "val") for r in ranks]
    assert (len(val[0]), len(val[1])) == (51, 50)
    assert sorted(val[0] + val[1]) == list(range(101))


def test_the_batched_inception_crop_draws_torchvisions_boxes_and_resamples_them_exactly():
    from vit_ablate.data.device_loader import batch_inception_crop, inception_boxes

    boxes = inception_boxes(20_000, 32, 32, torch.Generator().manual_seed(0))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 32).all() and (boxes[:, 3] <= 32).all() and (w >= 1).all()
    share = w * h / 1024
    import torchvision.transforms as T
    from PIL import Image

    torch.manual_seed(0)
    theirs = torch.tensor([[hh * ww / 1024, ww / hh] for _, _, hh, ww in
                           (T.RandomResizedCrop.get_params(Image.new("RGB", (32, 32)), (0.08, 1.0), (3 / 4, 4 / 3))
                            for _ in range(5000))])
    assert share.min() >= 0.07 and share.max() <= 1.0
    assert abs(share.mean() - theirs[:, 0].mean()) < 0.01 and abs((w / h).mean() - theirs[:, 1].mean()) < 0.02
    # a box of the whole image at its own size returns the image; the flip mirrors it
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    from torchvision.ops import roi_align

    whole = roi_align(images.float(), torch.tensor([[0, 0, 0, 8, 8], [1, 0, 0, 8, 8]], dtype=torch.float), (8, 8),
                      spatial_scale=1.0, sampling_ratio=1, aligned=True)
    assert torch.equal(whole, images.float())
    out = batch_inception_crop(images, (8, 8), hflip=False, generator=torch.Generator().manual_seed(1))
    again = batch_inception_crop(images, (8, 8), hflip=False, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 3, 8, 8) and torch.equal(out, again) and out.min() >= 0 and out.max() <= 255
