"""The synthetic dataset: determinism, balance, geometry, and the premise of its accuracy ceiling."""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict

import pytest
import torch

from vit_ablate.data import DATASETS, DeviceLoader, build_datamodule
from vit_ablate.data.synthetic import (
    BG_HIGH,
    BG_LOW,
    CLASS_NAMES,
    CONTENTS,
    GLYPH_COLOURS,
    NUM_ARRANGEMENTS,
    NUM_CLASSES,
    POSITION_FREE_CEILING,
    RELATION_OFFSETS,
    SyntheticDataModule,
    decode_label,
    generate_synthetic,
    placements,
)


@pytest.fixture(scope="module")
def big():
    return generate_synthetic(8192, seed=123)


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()


def test_shapes_dtypes_and_pixel_ranges():
    s = generate_synthetic(64, cell=8, grid=4, seed=0)
    assert s.images.shape == (64, 3, 32, 32) and s.images.dtype == torch.uint8
    assert s.labels.shape == (64,) and s.labels.dtype == torch.int64
    assert int(s.labels.min()) >= 0 and int(s.labels.max()) < 8
    assert s.cells.shape == (64, 4, 4)
    assert ((s.cells > 0).sum((1, 2)) == 2).all()  # exactly two glyph cells per image
    other = generate_synthetic(10, cell=4, grid=6, seed=0)
    assert other.images.shape == (10, 3, 24, 24)
    # Background cells hold only background noise.
    tiles = s.images.view(64, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5)  # (N, G, G, 3, c, c)
    background = tiles[s.cells == 0]
    assert int(background.min()) >= BG_LOW and int(background.max()) <= BG_HIGH


def test_same_seed_same_bytes_different_seed_different():
    a = generate_synthetic(512, seed=7)
    b = generate_synthetic(512, seed=7)
    c = generate_synthetic(512, seed=8)
    assert digest(a.images) == digest(b.images) and torch.equal(a.labels, b.labels)
    assert torch.equal(a.cells, b.cells)
    assert (a.images != c.images).float().mean() > 0.9  # fresh noise almost everywhere
    assert not torch.equal(a.labels, c.labels)


def test_class_balance():
    assert torch.bincount(generate_synthetic(8192, seed=1).labels).tolist() == [1024] * 8
    assert torch.bincount(generate_synthetic(1000, seed=1).labels).tolist() == [125] * 8
    counts = torch.bincount(generate_synthetic(1003, seed=1).labels, minlength=8)
    assert counts.sum() == 1003 and set(counts.tolist()) <= {125, 126}


def test_labels_match_the_generators_layout(big):
    content, relation, half = decode_label(big.labels)
    rows = torch.arange(len(big.labels))
    first = big.cells[rows, big.anchors[:, 0], big.anchors[:, 1]].long()
    second_pos = big.anchors + torch.tensor(RELATION_OFFSETS)[relation]
    second = big.cells[rows, second_pos[:, 0], second_pos[:, 1]].long()
    assert torch.equal(first, torch.tensor(CONTENTS)[content][:, 0])
    assert torch.equal(second, torch.tensor(CONTENTS)[content][:, 1])
    # both glyphs in the labelled half (rows 0-1 = top, 2-3 = bottom)
    assert torch.equal(big.anchors[:, 0] // 2, half) and torch.equal(second_pos[:, 0] // 2, half)
    assert len(CLASS_NAMES) == NUM_CLASSES == 8
    assert CLASS_NAMES[int(big.labels[0])].count("/") == 2


def test_placements_are_all_used_and_uniform(big):
    table = placements(4)
    assert {k: len(v) for k, v in table.items()} == {(0, 0): 6, (0, 1): 6, (1, 0): 4, (1, 1): 4}
    _, relation, half = decode_label(big.labels)
    for (r, h), valid in table.items():
        chosen = big.anchors[(relation == r) & (half == h)]
        counts = Counter(map(tuple, chosen.tolist()))
        assert set(counts) == set(valid)  # every valid placement occurs, nothing else
        n, k = len(chosen), len(valid)  # n = 2048 (two contents × 1024)
        expected, sd = n / k, (n * (1 / k) * (1 - 1 / k)) ** 0.5
        assert max(abs(c - expected) for c in counts.values()) < 4.5 * sd


def best_accuracy(keys, labels) -> float:
    """The best accuracy of ANY classifier that sees only ``keys``: majority label per key value."""
    groups = defaultdict(Counter)
    for key, label in zip(keys, labels.tolist()):
        groups[key][label] += 1
    return sum(max(c.values()) for c in groups.values()) / len(labels)


def test_ceiling_on_the_generators_metadata(big):
    content, _, _ = decode_label(big.labels)
    multisets = [tuple(sorted(c.flatten().tolist())) for c in big.cells]  # permutation-invariant summary
    for k in range(len(CONTENTS)):
        per_arrangement = {
            int(label): {multisets[i] for i in torch.nonzero(big.labels == label).flatten().tolist()}
            for label in torch.unique(big.labels[content == k])
        }
        assert len(per_arrangement) == NUM_ARRANGEMENTS
        # every arrangement of this content shows the same single multiset of cell types
        assert len(set().union(*per_arrangement.values())) == 1
    # the best permutation-invariant classifier gets exactly the ceiling; the position-aware one 100%
    assert best_accuracy(multisets, big.labels) == 0.25 == POSITION_FREE_CEILING == 1 / NUM_ARRANGEMENTS
    assert best_accuracy([tuple(c.flatten().tolist()) for c in big.cells], big.labels) == 1.0


def cell_summaries(images: torch.Tensor, cell: int = 8, grid: int = 4) -> torch.Tensor:
    """Per-cell mean of each channel: (N, grid * grid, 3) floats."""
    n = len(images)
    tiles = images.view(n, 3, grid, cell, grid, cell).float().mean((3, 5))  # (N, 3, G, G)
    return tiles.flatten(2).transpose(1, 2)


def z_scores(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample z of the per-coordinate means of a and b (rows = samples)."""
    se = (a.var(0) / len(a) + b.var(0) / len(b)).sqrt().clamp_min(1e-6)
    return (a.mean(0) - b.mean(0)).abs() / se


def test_ceiling_premise_on_pixels(big):
    """Per class, the distribution of the *sorted* cell statistics (a function of the cell multiset)
    is the same across arrangements of one content, while the unsorted ones tell arrangements apart."""
    cells = cell_summaries(big.images)  # (N, 16, 3)
    order = cells.sum(2).argsort(1)  # sort cells by brightness: a permutation-invariant summary
    sorted_cells = torch.gather(cells, 1, order[:, :, None].expand(-1, -1, 3)).flatten(1)
    unsorted = cells.flatten(1)
    by_label = {k: big.labels == k for k in range(NUM_CLASSES)}
    for content in range(len(CONTENTS)):
        labels = [content * NUM_ARRANGEMENTS + a for a in range(NUM_ARRANGEMENTS)]
        for a in labels:
            for b in labels:
                if a < b:
                    assert z_scores(sorted_cells[by_label[a]], sorted_cells[by_label[b]]).max() < 5.0
                    assert z_scores(unsorted[by_label[a]], unsorted[by_label[b]]).max() > 10.0
    # while the two contents differ plainly even in the sorted summary
    assert z_scores(sorted_cells[by_label[0]], sorted_cells[by_label[4]]).max() > 20.0


def test_glyphs_are_trivially_separable_from_noise(big):
    """Content is easy: each cell's type is recovered exactly by thresholds on its pixels."""
    n = len(big.images)
    tiles = big.images.view(n, 3, 4, 8, 4, 8).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, 4, 3, 64).float()
    bright = tiles.amax(3) > 160  # (N, G, G, 64): glyph pixels have a channel above any noise
    is_glyph = bright.any(-1)
    assert torch.equal(is_glyph, big.cells > 0)
    colour = (tiles * bright[:, :, :, None]).sum(-1) / bright.sum(-1)[..., None]  # mean glyph colour
    nearest = torch.cdist(colour[is_glyph], torch.tensor(GLYPH_COLOURS, dtype=torch.float)).argmin(1) + 1
    assert torch.equal(nearest, big.cells[is_glyph].long())


def test_generation_is_fast():
    # CPU time, not wall time: other jobs on a shared 2-core machine must not fail this test.
    start = time.process_time()
    for n, seed in ((8192, 0), (2048, 1), (2048, 2)):
        generate_synthetic(n, seed=seed)
    assert time.process_time() - start < 2.0  # ~0.3 s wall / 0.6 s CPU on 2 cores


def test_ceiling_api():
    assert SyntheticDataModule.position_free_ceiling() == 0.25
    assert SyntheticDataModule.position_free_upper_bound(2048) == pytest.approx(0.25 + 3 * (0.1875 / 2048) ** 0.5)
    assert SyntheticDataModule.position_free_upper_bound(2048) == pytest.approx(0.2787, abs=1e-4)


def test_datamodule_attributes_and_loaders(tiny):
    cfg = tiny("data.synthetic.num_train=1024", "data.synthetic.num_val=200", "data.batch_size=128")
    dm = build_datamodule(cfg)
    assert isinstance(dm, SyntheticDataModule) and "synthetic" in DATASETS
    # known before setup
    assert (dm.num_classes, dm.img_size, dm.in_chans) == (8, 32, 3)
    assert dm.mean == (0.5, 0.5, 0.5) and dm.std == (0.5, 0.5, 0.5)
    assert dm.class_names == CLASS_NAMES
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train, DeviceLoader) and len(train) == 8 and len(val) == 2
    x, y = next(iter(train))
    assert x.shape == (128, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    # eval batches are the stored images, scaled to [-1, 1]
    xv, yv = next(iter(val))
    raw = dm.sample("val")
    assert torch.equal(((xv * 0.5 + 0.5) * 255).round().to(torch.uint8), raw.images[:128])
    assert torch.equal(yv, raw.labels[:128])
    assert float(xv.min()) >= -1.0 and float(xv.max()) <= 1.0


def test_splits_are_separate_draws_and_sized_from_config(tiny):
    dm = build_datamodule(tiny("data.synthetic.num_train=256", "data.synthetic.num_val=64", "data.synthetic.num_test=32"))
    assert [len(dm.split(s)) for s in ("train", "val", "test")] == [256, 64, 32]
    assert not torch.equal(dm.sample("val").images[:32], dm.sample("test").images)
    again = build_datamodule(tiny("data.synthetic.num_train=256", "data.synthetic.num_val=64", "data.synthetic.num_test=32"))
    assert torch.equal(again.split("train").images, dm.split("train").images)
    other = build_datamodule(tiny("data.synthetic.num_train=256", "data.synthetic.seed=1"))
    assert not torch.equal(other.split("train").images, dm.split("train").images)


def test_train_subset_is_class_balanced(tiny):
    dm = build_datamodule(tiny("data.synthetic.num_train=1024", "data.train_subset=100"))
    split = dm.split("train")
    assert len(split) == 100
    assert torch.bincount(split.labels, minlength=8).tolist() == [13, 13, 13, 13, 12, 12, 12, 12]


def test_unknown_name_suggests_the_nearest(tiny):
    with pytest.raises(ValueError) as info:
        build_datamodule(tiny("data.name=cifra10"))
    assert str(info.value) == (
        "data.name='cifra10' is not valid; choose one of cifar10, cifar100, imagefolder, synthetic; "
        "did you mean 'cifar10'?"
    )
