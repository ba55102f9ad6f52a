"""Patch-embedding filter PCA: a known low-rank set of filters."""

from __future__ import annotations

import pytest
import torch

from vit_ablate.analyze.filters import patch_filter_pca, patch_filters
from vit_ablate.model import build_model

# what these tests change of the shared tiny model: 4-px patches (Ti/4's) on 16-px images, two heads
SIZE = dict(variant="Ti/4", heads=2, patch_size=4, img_size=16, num_classes=4)


def test_pca_recovers_the_directions_of_rank_two_filters():
    g = torch.Generator().manual_seed(0)
    c, p, d = 3, 4, 64
    basis, _ = torch.linalg.qr(torch.randn(c * p * p, 2, dtype=torch.float64, generator=g))
    u, v = basis[:, 0], basis[:, 1]
    a = 3.0 * torch.randn(d, 1, dtype=torch.float64, generator=g)
    b = 1.0 * torch.randn(d, 1, dtype=torch.float64, generator=g)
    a, b = a - a.mean(), b - b.mean()
    weight = (a * u + b * v + 0.5).reshape(d, c, p, p)  # a constant offset: removed by centring
    components, explained = patch_filter_pca(weight, num_components=28)
    assert components.shape == (28, c, p, p)
    assert explained.shape == (28,)
    assert explained[:2].sum().item() == pytest.approx(1.0, abs=1e-6)
    assert explained[0] > explained[1]
    flat = components.reshape(28, -1).double()
    # the first component is ±u (a has the larger variance), the second ±v
    assert abs(flat[0] @ u).item() == pytest.approx(1.0, abs=1e-4)
    assert abs(flat[1] @ v).item() == pytest.approx(1.0, abs=1e-4)
    # sign convention: the largest-magnitude weight of each component is positive
    top = flat[:2].gather(1, flat[:2].abs().argmax(1, keepdim=True))
    assert bool((top > 0).all())


def test_component_count_is_capped_by_the_filter_size():
    components, explained = patch_filter_pca(torch.randn(40, 1, 2, 2), num_components=28)
    assert components.shape == (4, 1, 2, 2)
    assert explained.sum().item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError):
        patch_filter_pca(torch.randn(4, 12))


def test_only_the_patch_stem_has_filters(tiny):
    weight = patch_filters(build_model(tiny.model(**SIZE, stem="patch")))
    assert weight.shape == (32, 3, 4, 4)
    assert patch_filters(build_model(tiny.model(**SIZE, stem="conv"))) is None
