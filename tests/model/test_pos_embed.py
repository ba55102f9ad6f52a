"""Known answers for the position embeddings (paper D.4) and the one-class extension rule."""

import pytest
import torch
from torch import nn

from vit_ablate import build_model
from vit_ablate.model.pos_embed import POSITION_EMBEDDINGS, AdditivePositionEmbedding, sincos_2d_table

# what these tests change of the shared tiny model: a 4×4 grid of 4-px patches, two blocks, head dim 8
SIZE = dict(depth=2, img_size=16, patch_size=4, num_classes=5, head_zero_init=False)


def _shuffle_patches(images, perm, patch=4):
    b, c, h, w = images.shape
    g = h // patch
    tiles = images.reshape(b, c, g, patch, g, patch).permute(0, 2, 4, 1, 3, 5).reshape(b, g * g, c, patch, patch)
    tiles = tiles[:, perm]
    return tiles.reshape(b, g, g, c, patch, patch).permute(0, 3, 1, 4, 2, 5).reshape(b, c, h, w)


@pytest.mark.parametrize("pool", ["gap", "cls"])
def test_no_position_embedding_sees_a_bag_of_patches(pool, tiny):
    torch.manual_seed(0)
    images = torch.randn(4, 3, 16, 16)
    perm = torch.randperm(16)
    shuffled = _shuffle_patches(images, perm)
    assert not torch.allclose(images, shuffled)
    bag = build_model(tiny.model(**SIZE, pos_embed="none", pool=pool)).eval()
    with torch.no_grad():
        assert (bag(images) - bag(shuffled)).abs().max() < 1e-5  # logits: invariant
    prefix = bag.num_prefix_tokens
    for pos in POSITION_EMBEDDINGS.names():
        model = build_model(tiny.model(**SIZE, pos_embed=pos, pool=pool)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():  # tables start at std 0.02: make them count
                if "pos_embed" in name or "position" in name:
                    param.mul_(25)
                if "qkv.weight" in name:  # sharper attention, so where a token attends matters
                    param.mul_(10)
            # patch tokens of the shuffled image, put back in place, vs the original's
            tokens = model.forward_features(images)[:, prefix:]
            unshuffled = torch.empty_like(tokens)
            unshuffled[:, perm] = model.forward_features(shuffled)[:, prefix:]
        gap = (tokens - unshuffled).abs().max().item()
        if pos == "none":
            assert gap < 1e-5  # equivariant: each patch's token depends on the bag, not on its place
        else:
            assert gap > 1e-2, pos  # ≥ 1000× the bag model's bound


def test_relative_logits_depend_only_on_the_offset(tiny):
    torch.manual_seed(0)
    model = build_model(tiny.model(**SIZE, pos_embed="relative", pool="gap"))
    relative = model.blocks[0].attn.position
    n = 16
    q = torch.randn(1, 1, 1, 8).expand(2, 4, n, 8)  # constant content: the same query everywhere
    _, _, bias = relative(q, q, 8**-0.5)
    assert bias.shape == (2, 4, n, n)
    for offset in range(-(n - 1), n):
        diagonal = torch.diagonal(bias, offset=offset, dim1=-2, dim2=-1)
        assert torch.allclose(diagonal, diagonal[..., :1].expand_as(diagonal)), offset
    # and different offsets get different logits (the table is not degenerate)
    firsts = torch.stack([torch.diagonal(bias[0, 0], offset=o)[0] for o in range(-(n - 1), n)])
    assert firsts.unique().numel() == 2 * n - 1


@pytest.mark.parametrize("pos", ["relative", "relative_2d_offsets"])
def test_relative_logits_and_table_gradient_match_the_pairwise_formula(pos, tiny):
    """bias[b, h, i, j] = scale · q_i · r[index(i, j)], and the table's gradient is the same sum, by a loop."""
    torch.manual_seed(0)
    relative = build_model(tiny.model(**SIZE, pos_embed=pos, pool="cls")).blocks[0].attn.position
    tokens = relative.index.shape[0]
    q = torch.randn(2, 3, tokens, 8)
    weights = torch.randn(2, 3, tokens, tokens)
    _, _, bias = relative(q, q, 0.5)
    (bias * weights).sum().backward()
    expected = torch.empty_like(bias)
    expected_grad = torch.zeros_like(relative.table)
    table = relative.table.detach()
    for i in range(tokens):
        for j in range(tokens):
            slot = relative.index[i, j]
            expected[:, :, i, j] = 0.5 * q[:, :, i] @ table[slot]
            expected_grad[slot] += 0.5 * (weights[:, :, i, j, None] * q[:, :, i]).sum((0, 1))
    assert torch.allclose(bias, expected, atol=1e-5)
    assert torch.allclose(relative.table.grad, expected_grad, atol=1e-4)


def test_relative_bias_uses_the_prefix_slot_for_the_class_token(tiny):
    model = build_model(tiny.model(**SIZE, pos_embed="relative", pool="cls"))
    relative = model.blocks[0].attn.position
    assert relative.table.shape == (2 * 16, 8)  # 31 offsets + one slot for class-token pairs
    assert (relative.index[0] == 31).all() and (relative.index[:, 0] == 31).all()


def test_each_relative_diagnostic_changes_one_thing(tiny):
    torch.manual_seed(0)
    base = tiny.model(**SIZE, pool="gap")  # a 4×4 grid, head dim 8
    raster = build_model({**base, "pos_embed": "relative"}).blocks[0].attn.position
    # 2-D offsets: two pairs share a table entry exactly when they share the displacement (dy, dx)
    two_d = build_model({**base, "pos_embed": "relative_2d_offsets"}).blocks[0].attn.position
    assert two_d.table.shape == (7 * 7, 8)
    entries = {}
    for i in range(16):
        for j in range(16):
            entries.setdefault((j // 4 - i // 4, j % 4 - i % 4), set()).add(int(two_d.index[i, j]))
    assert all(len(e) == 1 for e in entries.values()) and len(set().union(*entries.values())) == len(entries) == 49
    # patches 0 → 3 are (0, +3) apart and 1 → 4 are (+1, −1): one raster offset, two displacements
    assert raster.index[0, 3] == raster.index[1, 4] and two_d.index[0, 3] != two_d.index[1, 4]
    # head bias: one learned scalar per head and raster offset, whatever the queries and keys
    head_bias = build_model({**base, "pos_embed": "relative_head_bias"}).blocks[0].attn.position
    q = torch.randn(2, 4, 16, 8)
    _, _, bias = head_bias(q, q, 8**-0.5)
    _, _, other = head_bias(torch.randn_like(q), torch.randn_like(q), 8**-0.5)
    assert bias.shape == (1, 4, 16, 16) and torch.equal(bias, other)
    assert bias[0, 2, 1, 4] == head_bias.table[raster.index[1, 4], 2]
    # large init: the paper's table, ten times the spread (0.2 vs 0.02; 248 draws each)
    large = build_model({**base, "pos_embed": "relative_large_init"}).blocks[0].attn.position
    assert large.table.shape == raster.table.shape
    assert 0.17 < large.table.std().item() < 0.23 and 0.017 < raster.table.std().item() < 0.023


def test_2d_embedding_of_patch_rc_is_row_table_then_column_table(tiny):
    model = build_model(tiny.model(**SIZE, pos_embed="2d", pool="cls"))
    table2d = model.pos_embed.placement.table
    full = table2d()
    assert full.shape == (1, 17, 32)
    assert torch.equal(full[0, 0], table2d.prefix[0, 0])
    for r in range(4):
        for c in range(4):
            assert torch.equal(full[0, 1 + r * 4 + c], torch.cat([table2d.rows[r], table2d.cols[c]]))
    assert torch.equal(model.pos_embed.patch_table(), full[0, 1:])
    # 2 × 4 × 16 learned numbers + the class token's 32, instead of 1d's 17 × 32
    assert sum(p.numel() for p in model.pos_embed.parameters()) == 4 * 16 + 4 * 16 + 32


def test_sincos2d_matches_big_vision_formula():
    table = sincos_2d_table((4, 4), 32)
    omega = 1.0 / 10_000 ** (torch.arange(8, dtype=torch.float64) / 7)
    r, c = 2, 3
    expected = torch.cat([torch.sin(c * omega), torch.cos(c * omega), torch.sin(r * omega), torch.cos(r * omega)])
    assert torch.allclose(table[r * 4 + c].double(), expected, atol=1e-6)


def test_rope2d_scores_depend_only_on_the_2d_offset(tiny):
    model = build_model(tiny.model(**SIZE, pos_embed="rope2d", pool="gap"))
    rope = model.blocks[0].attn.position
    q = torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8)
    k = torch.randn(1, 1, 1, 8).expand(1, 1, 16, 8)
    rq, rk, bias = rope(q, k, 1.0)
    assert bias is None
    scores = (rq @ rk.transpose(-2, -1))[0, 0]
    # patch (r, c) = index r*4+c; (0,0)->(1,2) must equal (2,1)->(3,3)
    assert torch.allclose(scores[0 * 4 + 0, 1 * 4 + 2], scores[2 * 4 + 1, 3 * 4 + 3], atol=1e-5)
    assert not torch.allclose(scores[0, 1], scores[0, 4], atol=1e-4)  # (0,1) and (1,0) differ


def test_a_new_position_embedding_is_one_class_and_one_registry_line(tiny):
    class RowIndexTable(nn.Module):
        def __init__(self, tokens, dim):
            super().__init__()
            self.register_buffer("table", torch.arange(tokens, dtype=torch.float32)[None, :, None].expand(1, tokens, dim).clone())

        def forward(self):
            return self.table

    @POSITION_EMBEDDINGS.register("toy_index")  # the one registry line
    class ToyIndex(AdditivePositionEmbedding):  # the one class
        def make_table(self, ctx):
            return RowIndexTable(ctx.num_prefix_tokens + ctx.num_patches, ctx.dim)

    try:
        model = build_model(tiny.model(**SIZE, pos_embed="toy_index", pos_embed_at="every_layer_shared"))
        taps = model.eval().forward_intermediates(torch.zeros(1, 3, 16, 16))
        # zero images: the stem output is its bias alone, and block 0's input gets the index added
        assert torch.allclose(model.pos_embed.before_block(0, taps["pos_embed"])[0, 5] - taps["pos_embed"][0, 5], torch.full((32,), 5.0))
        from vit_ablate.config import load_config

        cfg = load_config(overrides=["model.pos_embed=toy_index"])  # the config layer accepts it too
        assert cfg.model.pos_embed == "toy_index"
    finally:
        POSITION_EMBEDDINGS._entries.pop("toy_index")
