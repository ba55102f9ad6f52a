"""Position tables moved to a new token grid (paper §3.2): identity, smooth functions, a learned task."""

import math

import pytest
import torch

from vit_ablate import build_model
from vit_ablate.model.pos_embed import RelativeLogits, relative_offsets_to_grid, resample_position_tensors
from vit_ablate.model.transfer import InitError, SourceWeights, apply_source

from .helpers import HALVES_MODEL, accuracy, train_on_halves

KINDS = [("1d", "input"), ("1d", "every_layer"), ("1d", "every_layer_shared"), ("2d", "input"), ("2d", "every_layer"),
         ("relative", "input"), ("sincos2d", "input"), ("rope2d", "input"), ("none", "input"),
         ("relative_2d_offsets", "input"), ("relative_head_bias", "input"), ("relative_large_init", "input")]


def _transfer(source: torch.nn.Module, cfg: dict, grid) -> torch.nn.Module:
    target = build_model(cfg)
    apply_source(target, SourceWeights("memory", "vit_ablate", source.state_dict(), [], grid))
    return target.eval()


@pytest.mark.parametrize("pos, at", KINDS)
@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_same_grid_gives_the_same_model(pos, at, pool, tiny):
    cfg = tiny.model(**HALVES_MODEL, img_size=32, pos_embed=pos, pos_embed_at=at, pool=pool)
    torch.manual_seed(0)
    source = build_model(cfg).eval()
    torch.manual_seed(1)  # the target starts elsewhere
    target = _transfer(source, cfg, (4, 4))
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(source(images), target(images))


def _smooth(y: torch.Tensor, x: torch.Tensor, channels: int) -> torch.Tensor:
    """A table that is a smooth function of the (row, column) position, in old-grid index units."""
    k = torch.arange(channels, dtype=torch.float64)
    return torch.sin(0.25 * y[..., None] * (1 + k / channels)) + torch.cos(0.2 * x[..., None] * (1 + k / (2 * channels)))


def _old_coordinate(new_index: torch.Tensor, old: int, new: int) -> torch.Tensor:
    return (new_index + 0.5) * old / new - 0.5  # patch centres, as align_corners=False


@pytest.mark.parametrize("old, new", [(4, 8), (6, 9)])
def test_1d_table_of_a_smooth_function_resamples_to_that_function(old, new, tiny):
    dim = 16
    cfg = tiny.model(**HALVES_MODEL, dim=dim, heads=2, patch_size=4, pos_embed="1d", pool="cls")
    source, target = build_model({**cfg, "img_size": 4 * old}), build_model({**cfg, "img_size": 4 * new})
    r, c = torch.meshgrid(torch.arange(old, dtype=torch.float64), torch.arange(old, dtype=torch.float64), indexing="ij")
    prefix = torch.randn(1, 1, dim)
    table = torch.cat([prefix, _smooth(r, c, dim).reshape(1, old * old, dim).float()], dim=1)
    state = {"pos_embed.placement.table.weight": table}
    moved, changed = resample_position_tensors(target, state, (old, old))
    assert changed == ["pos_embed.placement.table.weight"]
    result = moved["pos_embed.placement.table.weight"]
    assert result.shape == (1, 1 + new * new, dim)
    assert torch.equal(result[:, :1], prefix)  # the class token's vector is kept as it is
    ry, cx = torch.meshgrid(*[_old_coordinate(torch.arange(new, dtype=torch.float64), old, new)] * 2, indexing="ij")
    expected = _smooth(ry, cx, dim).reshape(new * new, dim)
    # where the cubic kernel's four taps lie inside the old grid (at the border edge values are held)
    inside = ((ry >= 1) & (ry <= old - 2) & (cx >= 1) & (cx <= old - 2)).reshape(-1)
    error = (result[0, 1:].double() - expected).abs()
    nearest = _smooth(ry.round().clamp(0, old - 1), cx.round().clamp(0, old - 1), dim).reshape(new * new, dim)
    assert inside.sum() >= 4
    assert error[inside].max() < 0.01
    assert (nearest - expected)[inside].abs().max() > 0.05  # the tolerance tells interpolation from a copy
    assert error.max() < 0.3


def test_2d_axis_tables_resample_along_their_own_axis(tiny):
    cfg = tiny.model(**HALVES_MODEL, patch_size=4, pos_embed="2d", pool="cls")
    target = build_model({**cfg, "img_size": 48})  # grid 12
    rows = _smooth(torch.arange(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64), 16).float()
    moved, _ = resample_position_tensors(target, {"pos_embed.placement.table.rows": rows}, (6, 6))
    coord = _old_coordinate(torch.arange(12, dtype=torch.float64), 6, 12)
    expected = _smooth(coord, torch.zeros(12, dtype=torch.float64), 16)
    inside = (coord >= 1) & (coord <= 4)
    assert moved["pos_embed.placement.table.rows"].shape == (12, 16)
    assert (moved["pos_embed.placement.table.rows"].double() - expected)[inside].abs().max() < 0.02


def test_relative_table_maps_each_offset_through_its_displacement():
    """A raster offset that is a multiple of the grid width stands only for a vertical displacement
    (dy, 0); its entry on the new grid is the old function at dy' · H/H'."""
    old, new, channels = 5, 10, 4
    dy = torch.arange(-(old - 1), old, dtype=torch.float64)
    g = lambda y: _smooth(y, torch.zeros_like(y), channels)  # noqa: E731
    table = torch.randn(2 * old * old - 1, channels, dtype=torch.float64)
    table[(dy * old + old * old - 1).long()] = g(dy)
    moved = relative_offsets_to_grid(table, (old, old), (new, new))
    assert moved.shape == (2 * new * new - 1, channels)
    new_dy = torch.arange(-(new - 1), new, dtype=torch.float64)
    vertical = moved[(new_dy * new + new * new - 1).long()]
    inside = (new_dy * old / new).abs() <= old - 2
    assert (vertical - g(new_dy * old / new))[inside].abs().max() < 0.01
    # the same grid is the identity, and a constant table stays constant
    assert torch.allclose(relative_offsets_to_grid(table, (old, old), (old, old)), table, rtol=0, atol=1e-12)
    constant = relative_offsets_to_grid(torch.full((2 * old * old - 1, 3), 0.7), (old, old), (7, 7))
    assert torch.allclose(constant, torch.full_like(constant, 0.7), atol=1e-6)


def test_2d_offset_table_maps_each_displacement_to_the_same_image_displacement():
    old, new, channels = 5, 10, 4
    dy = torch.arange(-(old - 1), old, dtype=torch.float64)[:, None].expand(2 * old - 1, 2 * old - 1)
    dx = torch.arange(-(old - 1), old, dtype=torch.float64)[None, :].expand(2 * old - 1, 2 * old - 1)
    table = _smooth(dy, dx, channels).reshape(-1, channels).float()
    target = RelativeLogits((new, new), 0, channels, two_d=True)
    moved = target.resample_tensors({"table": table}, (old, old))["table"]
    assert moved.shape == target.table.shape == ((2 * new - 1) ** 2, channels)
    new_dy = torch.arange(-(new - 1), new, dtype=torch.float64)[:, None].expand(2 * new - 1, 2 * new - 1)
    new_dx = torch.arange(-(new - 1), new, dtype=torch.float64)[None, :].expand(2 * new - 1, 2 * new - 1)
    expected = _smooth(new_dy * old / new, new_dx * old / new, channels)
    inside = ((new_dy * old / new).abs() <= old - 2) & ((new_dx * old / new).abs() <= old - 2)
    # bicubic in both axes: ≤ 0.014 measured on this function of amplitude 2; a displacement read half a
    # cell off would err by ~0.2
    assert (moved.reshape(2 * new - 1, 2 * new - 1, channels).double() - expected)[inside].abs().max() < 0.02
    # without a stated grid, the square source grid is read from the shape
    assert torch.equal(target.resample_tensors({"table": table}, None)["table"], moved)


def test_relative_prefix_slot_is_kept(tiny):
    cfg = tiny.model(**HALVES_MODEL, patch_size=8, pos_embed="relative", pool="cls")
    source = build_model({**cfg, "img_size": 32})
    target = _transfer(source, {**cfg, "img_size": 64}, (4, 4))
    old, new = source.blocks[0].attn.position.table, target.blocks[0].attn.position.table
    assert new.shape == (2 * 64 - 1 + 1, old.shape[1])
    assert torch.equal(new[-1], old[-1])


def test_a_table_that_is_not_a_square_grid_is_an_error_naming_it(tiny):
    target = build_model(tiny.model(**HALVES_MODEL, img_size=32, pos_embed="1d", pool="cls"))
    with pytest.raises(ValueError, match=r"pos_embed\.placement\.table\.weight.*not a square grid"):
        resample_position_tensors(target, {"pos_embed.placement.table.weight": torch.zeros(1, 1 + 12, 32)})


@pytest.mark.parametrize("pos, pool", [("1d", "cls"), ("2d", "cls"), ("relative", "gap")])
def test_transfer_to_64px_keeps_a_scale_independent_task(pos, pool, tiny):
    """Trained at 32 px (grid 4) to tell red-over-blue from blue-over-red, a task a bag of patches
    cannot solve, the model moved to 64 px (grid 8) still solves it without further training."""
    cfg = tiny.model(**HALVES_MODEL, img_size=32, pos_embed=pos, pool=pool)
    small = train_on_halves(cfg)
    assert accuracy(small, 32) >= 0.95
    large = _transfer(small, {**cfg, "img_size": 64}, (4, 4))
    assert accuracy(large, 64) >= 0.9
    if pos == "1d":  # control: the same weights with the patch positions scrambled lose the task
        with torch.no_grad():
            table = large.pos_embed.placement.table.weight
            table[0, 1:] = table[0, 1 + torch.randperm(64, generator=torch.Generator().manual_seed(0))]
        assert accuracy(large, 64) <= 0.75


def test_relative_upsampling_stays_within_the_old_tables_range():
    """The outermost new offsets lie beyond the old table: they take its border values, not a bicubic
    overshoot of them."""
    table = torch.arange(-3, 4, dtype=torch.float32)[:, None]  # a 1×4 grid's offsets −3 … 3, value = offset
    resampled = relative_offsets_to_grid(table, (1, 4), (1, 8))
    assert resampled.shape == (15, 1)
    assert resampled.min().item() >= -3.0 - 1e-6 and resampled.max().item() <= 3.0 + 1e-6
    assert resampled[0].item() == pytest.approx(-3.0) and resampled[-1].item() == pytest.approx(3.0)


def test_a_timm_gap_source_into_the_papers_gap_is_refused_naming_gap_fc_norm(tiny):
    cfg = tiny.model(**HALVES_MODEL, img_size=32, pool="gap_fc_norm")
    source = build_model(cfg)
    with pytest.raises(InitError, match="model.pool=gap_fc_norm"):
        _transfer(source, {**cfg, "pool": "gap"}, (4, 4))
    _transfer(source, cfg, (4, 4))  # into the same pooling it loads
