"""Mean attention distance: known answers for identity and uniform attention, and the prefix rule."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vit_ablate.analyze.attention_distance import mean_attention_distance, patch_distance_matrix
from vit_ablate.model import build_model


def _maps(weights: torch.Tensor, batch: int = 2, heads: int = 3, layers: int = 2):
    """The same (T, T) attention for every image, head and layer."""
    return [weights.expand(batch, heads, *weights.shape).clone() for _ in range(layers)]


@pytest.mark.parametrize("prefix", [0, 1])
def test_attention_to_self_only_has_distance_zero(prefix):
    grid = (3, 3)
    maps = _maps(torch.eye(prefix + 9))
    distance, share = mean_attention_distance(maps, grid, patch_size=16, num_prefix_tokens=prefix)
    assert distance.shape == (2, 3)
    assert torch.equal(distance, torch.zeros(2, 3, dtype=torch.float64))
    assert torch.equal(share, torch.zeros(2, 3, dtype=torch.float64))


@pytest.mark.parametrize("p", [1, 16])
def test_uniform_attention_on_2x2_grid(p):
    # From any patch of a 2×2 grid the distances are 0, p, p and p·√2.
    expected = (2 * p + p * math.sqrt(2)) / 4
    maps = _maps(torch.full((4, 4), 1 / 4))
    distance, _ = mean_attention_distance(maps, (2, 2), patch_size=p)
    assert torch.allclose(distance, torch.full((2, 3), expected, dtype=torch.float64), rtol=0, atol=1e-12)
    assert patch_distance_matrix((2, 2), p).mean().item() == pytest.approx(expected, abs=1e-12)  # the figure's reference line


def test_uniform_attention_on_14x14_grid_with_class_token():
    p, side = 16, 14
    cells = [(r, c) for r in range(side) for c in range(side)]
    total = 0.0
    for r, c in cells:  # the analytic value: mean pairwise Euclidean distance, self included
        for r2, c2 in cells:
            total += p * math.sqrt((r - r2) ** 2 + (c - c2) ** 2)
    expected = total / len(cells) ** 2
    tokens = 1 + side * side
    # Uniform over all tokens, class token included: renormalised over patches it is uniform again.
    maps = _maps(torch.full((tokens, tokens), 1 / tokens), batch=1, heads=2, layers=1)
    distance, share = mean_attention_distance(maps, (side, side), patch_size=p, num_prefix_tokens=1)
    assert distance.shape == (1, 2)
    assert torch.allclose(distance, torch.full((1, 2), expected, dtype=torch.float64), rtol=1e-12, atol=0)
    # sanity: close to the mean distance of two random points of a 224-px square, 0.5214 × 224 px
    assert expected == pytest.approx(0.5214 * 224, rel=0.01)
    assert torch.allclose(share, torch.full((1, 2), 1 / tokens, dtype=torch.float64))


def test_class_token_attention_is_excluded_and_patch_weights_renormalised():
    # Every patch query sends half its attention to the class token, half to its right/left neighbour.
    p, grid = 8, (2, 2)
    weights = torch.zeros(5, 5)
    weights[:, 0] = 0.5
    neighbour = {0: 1, 1: 0, 2: 3, 3: 2}
    for i, j in neighbour.items():
        weights[1 + i, 1 + j] = 0.5
    weights[0] = torch.tensor([0.2, 0.2, 0.2, 0.2, 0.2])  # the class token's own row is ignored
    maps = _maps(weights)
    distance, share = mean_attention_distance(maps, grid, patch_size=p, num_prefix_tokens=1)
    assert torch.allclose(distance, torch.full((2, 3), float(p), dtype=torch.float64))
    assert torch.allclose(share, torch.full((2, 3), 0.5, dtype=torch.float64))


def test_heads_and_layers_are_kept_apart():
    grid, p = (2, 2), 10
    eye, uniform = torch.eye(4), torch.full((4, 4), 0.25)
    layer0 = torch.stack([eye, uniform])[None]  # heads: self-only, uniform
    layer1 = torch.stack([uniform, eye])[None]
    distance, _ = mean_attention_distance([layer0, layer1], grid, patch_size=p)
    u = (2 * p + p * math.sqrt(2)) / 4
    assert torch.allclose(distance, torch.tensor([[0.0, u], [u, 0.0]], dtype=torch.float64))


def test_distance_matrix_and_shape_checks():
    d = patch_distance_matrix((2, 3), patch_size=4)
    assert d.shape == (6, 6)
    assert d[0, 5].item() == pytest.approx(4 * math.sqrt(1 + 4))  # (0,0) → (1,2)
    assert torch.allclose(d, d.t())
    with pytest.raises(ValueError, match="prefix"):
        mean_attention_distance(_maps(torch.eye(5)), (3, 3), 16, num_prefix_tokens=0)


def test_real_model_attention_lies_between_zero_and_the_largest_distance(tiny):
    torch.manual_seed(0)
    model = build_model(tiny().model).eval()
    maps = model.attention_maps(torch.randn(3, 3, 32, 32))
    distance, share = mean_attention_distance(maps, model.grid_size, model.spec.patch_size, model.num_prefix_tokens)
    assert distance.shape == (model.spec.depth, model.spec.heads)
    largest = patch_distance_matrix(model.grid_size, model.spec.patch_size).max().item()
    assert bool((distance > 0).all()) and bool((distance < largest).all())
    assert np.isfinite(distance.numpy()).all()
    assert bool((share > 0).all()) and bool((share < 1).all())  # the class token gets some, not all
