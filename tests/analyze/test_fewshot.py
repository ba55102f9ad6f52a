"""Few-shot linear evaluation: separable features are solved, random labels stay at chance."""

from __future__ import annotations

import math

import pytest
import torch

from vit_ablate.analyze.fewshot import (
    DEFAULT_L2_REG,
    extract_features,
    fewshot_accuracy,
    fewshot_evaluate,
    fewshot_from_datamodule,
    linear_fewshot_accuracy,
    sample_support,
)
from vit_ablate.data import build_datamodule
from vit_ablate.model import build_model


def _clusters(num_classes: int, per_class: int, dim: int, seed: int, centres=None):
    g = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = 5.0 * torch.randn(num_classes, dim, generator=g)
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    features = centres[labels] + 0.3 * torch.randn(len(labels), dim, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return features[perm], labels[perm], centres


@pytest.mark.parametrize("l2_reg", [DEFAULT_L2_REG, 1e-3])
def test_linearly_separable_features_reach_100_percent(l2_reg):
    train_x, train_y, centres = _clusters(num_classes=6, per_class=40, dim=24, seed=0)
    test_x, test_y, _ = _clusters(num_classes=6, per_class=50, dim=24, seed=1, centres=centres)
    support = sample_support(train_y, [1, 5, 10, 25], draws=3, seed=0)
    acc = fewshot_accuracy(train_x, train_y, test_x, test_y, support, num_classes=6, l2_reg=l2_reg)
    assert acc == {"1": [1.0] * 3, "5": [1.0] * 3, "10": [1.0] * 3, "25": [1.0] * 3}


def test_random_labels_stay_at_chance():
    g = torch.Generator().manual_seed(0)
    k, n_test, dim = 4, 3000, 32
    train_x, train_y = torch.randn(400, dim, generator=g), torch.randint(0, k, (400,), generator=g)
    test_x, test_y = torch.randn(n_test, dim, generator=g), torch.randint(0, k, (n_test,), generator=g)
    per_draw = fewshot_accuracy(train_x, train_y, test_x, test_y, sample_support(train_y, [1, 5, 25], 3, 0, k), k)
    acc = {shot: sum(values) / len(values) for shot, values in per_draw.items()}
    # Test labels are independent of everything the classifier sees: each prediction is right with
    # probability exactly 1/k, so an accuracy is a binomial proportion; 4.5 standard deviations.
    chance = 1 / k
    tolerance = 4.5 * math.sqrt(chance * (1 - chance) / n_test)
    for shot, value in acc.items():
        assert abs(value - chance) < tolerance, (shot, value, tolerance)


def test_primal_and_dual_solutions_agree():
    # N ≥ D uses (XᵀX + λI)⁻¹XᵀY, N < D uses Xᵀ(XXᵀ + λI)⁻¹Y; both are the same ridge solution.
    # Compare with a direct solve through the normal equations on the whitened design.
    g = torch.Generator().manual_seed(3)
    for n, d in [(40, 8), (8, 40)]:
        x, y = torch.randn(n, d, generator=g), torch.randint(0, 3, (n,), generator=g)
        tx, ty = torch.randn(200, d, generator=g), torch.randint(0, 3, (200,), generator=g)
        got = linear_fewshot_accuracy(x, y, tx, ty, 3, l2_reg=2.0)
        xd = x.double()
        mean, std = xd.mean(0, keepdim=True), xd.std(0, unbiased=False, keepdim=True) + 1e-5
        design = torch.cat([(xd - mean) / std, torch.full((n, 1), 100.0, dtype=torch.float64)], 1)
        targets = 2.0 * torch.nn.functional.one_hot(y, 3).double() - 1
        w = torch.linalg.lstsq(
            torch.cat([design, 2.0**0.5 * torch.eye(d + 1, dtype=torch.float64)]),
            torch.cat([targets, torch.zeros(d + 1, 3, dtype=torch.float64)]),
        ).solution
        test_design = torch.cat([(tx.double() - mean) / std, torch.full((200, 1), 100.0, dtype=torch.float64)], 1)
        expected = float(((test_design @ w).argmax(1) == ty).double().mean())
        assert got == pytest.approx(expected)


def test_support_sets_are_nested_balanced_and_seeded():
    labels = torch.arange(5).repeat(20)  # 20 images per class
    draws = sample_support(labels, [1, 5, 10], draws=3, seed=7, num_classes=5)
    assert len(draws) == 3
    for support in draws:
        for k, idx in support.items():
            assert len(idx) == 5 * k
            assert torch.equal(torch.bincount(labels[idx], minlength=5), torch.full((5,), k))
        assert set(support[1].tolist()) <= set(support[5].tolist()) <= set(support[10].tolist())
    assert not torch.equal(draws[0][5], draws[1][5])
    again = sample_support(labels, [1, 5, 10], draws=3, seed=7, num_classes=5)
    assert all(torch.equal(a[k], b[k]) for a, b in zip(draws, again) for k in (1, 5, 10))
    other = sample_support(labels, [5], draws=1, seed=8, num_classes=5)
    assert not torch.equal(other[0][5], draws[0][5])
    # a class with too few images contributes all it has
    few = sample_support(torch.tensor([0, 0, 0, 1]), [2], draws=1, seed=0)
    assert sorted(torch.tensor([0, 0, 0, 1])[few[0][2]].tolist()) == [0, 0, 1]
    with pytest.raises(ValueError):
        sample_support(labels, [0], draws=1, seed=0)


def test_fewshot_from_datamodule_on_a_tiny_model(tiny):
    cfg = tiny()
    torch.manual_seed(0)
    model = build_model(cfg.model)
    model.train()
    dm = build_datamodule(cfg)
    acc = fewshot_from_datamodule(model, dm, shots=[1, 5], draws=2, seed=0, device="cpu")
    assert list(acc) == ["1", "5"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in acc.values())
    assert model.training  # mode restored
    assert fewshot_from_datamodule(model, dm, shots=[1, 5], draws=2, seed=0, device="cpu") == acc
    detail = fewshot_evaluate(model, dm, shots=[1, 5, 25], draws=2, seed=0)
    assert detail["num_eval"] == len(dm.split("val"))
    assert detail["support_sizes"] == {"1": 8, "5": 40, "25": 96}  # 12 training images per class
    assert detail["capped"] == ["25"]
    assert detail["accuracy"]["1"] == acc["1"]
    assert detail["accuracy"]["5"] == sum(detail["per_draw"]["5"]) / 2


def test_extract_features_are_the_pre_logits(tiny):
    cfg = tiny()
    torch.manual_seed(0)
    model = build_model(cfg.model).eval()
    images, labels = torch.randn(5, 3, 32, 32), torch.arange(5)
    feats, got_labels = extract_features(model, [(images[:3], labels[:3]), (images[3:], labels[3:])])
    with torch.no_grad():
        expected = model.forward_pre_logits(images)
    assert torch.allclose(feats, expected, atol=1e-5)
    assert torch.equal(got_labels, labels)


def test_extract_features_of_a_bf16_model(tiny):
    cfg = tiny()
    torch.manual_seed(0)
    model = build_model(cfg.model).to(torch.bfloat16)
    feats, _ = extract_features(model, [(torch.randn(2, 3, 32, 32), torch.arange(2))])
    assert feats.dtype == torch.float32 and feats.shape == (2, 32)
