"""Attention rollout: identity in, identity out; known products; the maps."""

from __future__ import annotations

import pytest
import torch

from vit_ablate.analyze.rollout import attention_rollout, rollout_patch_maps, upsample_maps


def test_rollout_of_identity_attention_is_the_identity():
    tokens = 1 + 9
    maps = [torch.eye(tokens).expand(2, 4, tokens, tokens) for _ in range(3)]
    rollout = attention_rollout(maps)
    assert rollout.shape == (2, tokens, tokens)
    assert torch.equal(rollout, torch.eye(tokens, dtype=torch.float64).expand(2, tokens, tokens))
    # The class token then gets nothing from the patches.
    assert torch.equal(rollout_patch_maps(rollout, 1, (3, 3)), torch.zeros(2, 3, 3, dtype=torch.float64))


def test_rollout_adds_the_residual_and_multiplies_through_layers():
    t = 4
    uniform = torch.full((t, t), 1 / t)
    one = attention_rollout([uniform[None, None]])
    expected_one = 0.5 * uniform + 0.5 * torch.eye(t)  # (A + I) / 2: rows of A + I sum to 2
    assert torch.allclose(one[0], expected_one.double())
    two = attention_rollout([uniform[None, None], uniform[None, None]])
    assert torch.allclose(two[0], (expected_one @ expected_one).double())
    # rows of a rollout are distributions
    assert torch.allclose(two.sum(-1), torch.ones(1, t, dtype=torch.float64))


def test_heads_are_averaged_before_the_residual():
    t = 3
    heads = torch.stack([torch.eye(t), torch.full((t, t), 1 / t)])[None]  # (1, 2, t, t)
    rollout = attention_rollout([heads])
    mean = 0.5 * torch.eye(t) + 0.5 * torch.full((t, t), 1 / t)
    expected = (mean + torch.eye(t)) / 2
    assert torch.allclose(rollout[0], expected.double())


def test_rollout_layer_order_matters():
    # Layer 1 moves everything to token 1, layer 2 to token 0: R = Â2 · Â1.
    t = 2
    to0 = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    to1 = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    a1 = (to1 + torch.eye(t)) / 2
    a2 = (to0 + torch.eye(t)) / 2
    rollout = attention_rollout([to1[None, None], to0[None, None]])
    assert torch.allclose(rollout[0], (a2 @ a1).double())
    assert not torch.allclose(rollout[0], (a1 @ a2).double())


def test_maps_without_class_token_average_the_patch_queries():
    n = 4
    uniform = torch.full((n, n), 1 / n)
    rollout = attention_rollout([uniform[None, None]])
    maps = rollout_patch_maps(rollout, 0, (2, 2))
    assert maps.shape == (1, 2, 2)
    assert torch.allclose(maps, torch.full((1, 2, 2), 1 / n, dtype=torch.float64))


def test_class_token_map_is_its_row_over_the_patches():
    t = 5
    weights = torch.zeros(t, t)
    weights[0, 3] = 1.0  # the class token attends to patch 2 only
    weights[1:, 1:] = torch.eye(4)
    rollout = attention_rollout([weights[None, None]])
    maps = rollout_patch_maps(rollout, 1, (2, 2))
    expected = torch.tensor([[0.0, 0.0], [0.5, 0.0]], dtype=torch.float64)
    assert torch.allclose(maps[0], expected)


def test_upsample_scales_to_the_image_and_max_one():
    maps = torch.tensor([[[0.0, 1.0], [2.0, 4.0]]])
    up = upsample_maps(maps, (32, 32))
    assert up.shape == (1, 32, 32)
    assert up.max().item() == pytest.approx(1.0)
    assert up.min().item() >= 0.0


def test_bad_arguments():
    with pytest.raises(ValueError):
        attention_rollout([])
    with pytest.raises(ValueError, match="prefix"):
        rollout_patch_maps(torch.eye(5)[None], 0, (2, 2))
