"""Every valid combination of the ablation axes builds, trains and validates."""

import itertools

import pytest
import torch

from vit_ablate import build_model
from vit_ablate.model import AXES, POSITION_EMBEDDINGS, resolve_spec
from vit_ablate.model.pooling import POOLINGS

# what these tests change of the shared tiny model: 16-px images in a 4×4 grid of 4-px patches, two blocks
SIZE = dict(depth=2, img_size=16, patch_size=4, num_classes=5, head_zero_init=False)
STEM_SETTINGS = {"patch": {"patch_size": 4}, "conv": {"patch_size": 4}, "hybrid": {"patch_size": 4, "hybrid_layers": [1]}}


def _valid_pos_combinations():
    for pos in POSITION_EMBEDDINGS.names():
        for at in POSITION_EMBEDDINGS.get(pos).placements:
            yield pos, at


def _all_pairs(factors):
    """A small set of rows in which every pair of values of every two factors occurs at least once.

    Greedy, deterministic: from the full product, repeatedly keep the row that covers most pairs not
    yet covered. A fault in one component, or in the meeting of two, is met by some row; the whole
    product (hundreds of rows) adds no power for such faults and costs minutes.
    """
    rows = list(itertools.product(*factors))
    def pairs(row):
        return {(i, row[i], j, row[j]) for i, j in itertools.combinations(range(len(row)), 2)}
    uncovered = set().union(*(pairs(r) for r in rows))
    chosen = []
    while uncovered:
        best = max(rows, key=lambda r: len(pairs(r) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return chosen


# (position embedding, placement) is one factor, so each valid placement meets every pooling (whose
# prefix token the tables must skip) and every stem (whose grid sizes the tables)
FACTORS = (
    tuple(AXES["model.stem"].names()),
    tuple(_valid_pos_combinations()),
    tuple(AXES["model.norm"].names()),
    tuple(AXES["model.pool"].names()),
    tuple(AXES["model.head"].names()),
)
COMBINATIONS = [(stem, pos, at, norm, pool, head) for stem, (pos, at), norm, pool, head in _all_pairs(FACTORS)]


def test_the_combinations_cover_every_pair_of_names():
    full = list(itertools.product(*FACTORS))
    assert len(full) == 3 * 14 * 2 * 4 * 2  # 14 valid (pos_embed, pos_embed_at) pairs
    rows = [(stem, (pos, at), norm, pool, head) for stem, pos, at, norm, pool, head in COMBINATIONS]
    for i, j in itertools.combinations(range(len(FACTORS)), 2):
        assert {(r[i], r[j]) for r in rows} == set(itertools.product(FACTORS[i], FACTORS[j]))
    assert len(COMBINATIONS) <= len(full) // 8
    for key, registry in AXES.items():
        column = {"model.stem": 0, "model.pos_embed": 1, "model.pos_embed_at": 2, "model.norm": 3, "model.pool": 4, "model.head": 5}[key]
        assert {c[column] for c in COMBINATIONS} == set(registry.names())


@pytest.mark.parametrize("stem, pos, at, norm, pool, head", COMBINATIONS, ids=lambda v: str(v))
def test_every_combination_builds_and_backpropagates(stem, pos, at, norm, pool, head, tiny):
    torch.manual_seed(0)
    cfg = {**tiny.model(**SIZE), **STEM_SETTINGS[stem],
           "stem": stem, "pos_embed": pos, "pos_embed_at": at, "norm": norm, "pool": pool, "head": head}
    model = build_model(cfg)
    logits = model(torch.randn(3, 3, 16, 16))
    assert logits.shape == (3, 5)
    assert torch.isfinite(logits).all()
    logits.logsumexp(dim=1).sum().backward()
    silent = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0]
    assert not silent, f"parameters without a (finite, non-zero) gradient: {silent}"


def _names(model):
    return {n for n, _ in model.named_parameters()}


def test_only_used_parameters_are_created(tiny):
    base = tiny.model(**SIZE)
    gap_none = _names(build_model({**base, "pool": "gap", "pos_embed": "none"}))
    assert not any("cls_token" in n or "pos_embed" in n for n in gap_none)
    cls_1d = _names(build_model({**base, "pool": "cls", "pos_embed": "1d"}))
    assert {"pool.cls_token", "pos_embed.placement.table.weight"} <= cls_1d
    every = _names(build_model({**base, "pos_embed": "1d", "pos_embed_at": "every_layer"}))
    assert sum("pos_embed.placement.tables" in n for n in every) == base["depth"]
    shared = _names(build_model({**base, "pos_embed": "1d", "pos_embed_at": "every_layer_shared"}))
    assert sum("pos_embed" in n for n in shared) == 1
    post = build_model({**base, "norm": "post"})
    assert not any(p.numel() for p in post.pool.norm.parameters())  # post-norm: no final LayerNorm
    assert build_model({**base, "head": "linear"}).head.fc.in_features == base["dim"]


def test_paper_gap_normalises_each_token_then_averages_and_timm_gap_the_reverse(tiny):
    torch.manual_seed(0)
    dim = 8
    tokens = torch.randn(2, 5, dim) * torch.arange(1.0, 6.0).view(1, 5, 1) + torch.arange(5.0).view(1, 5, 1)
    norm = torch.nn.LayerNorm(dim, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)

    def layer_norm(x):  # by hand, biased variance as LayerNorm
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        return (x - mean) / torch.sqrt(var + 1e-6) * norm.weight + norm.bias

    with torch.no_grad():
        spec = resolve_spec({"dim": dim, "heads": 2, "mlp_dim": 16})
        paper = POOLINGS.get("gap")(spec, norm)(tokens)
        timm_gap = POOLINGS.get("gap_fc_norm")(spec, norm)(tokens)
        assert torch.allclose(paper, layer_norm(tokens).mean(dim=1), atol=1e-5)
        assert torch.allclose(timm_gap, layer_norm(tokens.mean(dim=1)), atol=1e-5)
        assert (paper - timm_gap).abs().max() > 0.1  # a real difference, not rounding
    # their LayerNorms carry different names, so a checkpoint of one never loads into the other
    base = tiny.model(**SIZE)
    assert {"pool.encoder_norm.weight"} <= _names(build_model({**base, "pool": "gap"}))
    assert {"pool.norm.weight"} <= _names(build_model({**base, "pool": "gap_fc_norm"}))


def test_zero_initialised_head_gives_zero_logits(tiny):
    model = build_model(tiny.model(**{**SIZE, "head_zero_init": True}))
    assert model(torch.randn(2, 3, 16, 16)).abs().max() == 0


def test_no_weight_decay_names(tiny):
    model = build_model(tiny.model(**SIZE, pos_embed="2d"))
    names = model.no_weight_decay()
    assert {"pool.cls_token", "pos_embed.placement.table.rows", "pos_embed.placement.table.cols", "pos_embed.placement.table.prefix"} <= names
    assert "blocks.0.norm1.weight" in names and "blocks.0.attn.qkv.bias" in names
    assert "blocks.0.attn.qkv.weight" not in names and "head.fc.weight" not in names
    assert names <= _names(model)
    rel = build_model(tiny.model(**SIZE, pos_embed="relative"))
    assert "blocks.1.attn.position.table" in rel.no_weight_decay()


def test_intermediates_are_named_and_consistent(tiny):
    model = build_model(tiny.model(**SIZE)).eval()
    images = torch.randn(2, 3, 16, 16)
    taps = model.forward_intermediates(images)
    assert list(taps) == ["stem", "pos_embed", "block0", "block1", "pre_logits", "logits"]
    assert taps["stem"].shape == (2, 16, 32)
    assert taps["pos_embed"].shape == (2, 17, 32)  # class token prepended
    assert torch.allclose(taps["logits"], model(images), atol=1e-6)
    assert torch.allclose(taps["pre_logits"], model.forward_pre_logits(images), atol=1e-6)


@pytest.mark.parametrize("pos", ["1d", "relative", "relative_head_bias", "rope2d"])
def test_explicit_attention_path_matches_sdpa(pos, tiny):
    torch.manual_seed(0)
    model = build_model(tiny.model(**SIZE, pos_embed=pos)).eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # a learned bias without a gradient goes to SDPA on the CPU too
        fused = model(images)
    maps = model.attention_maps(images)
    assert len(maps) == 2 and maps[0].shape == (2, 4, 17, 17)
    assert torch.allclose(maps[0].sum(-1), torch.ones(2, 4, 17), atol=1e-5)
    for block in model.blocks:
        block.attn.record_attention = True
    try:
        explicit = model(images)
    finally:
        for block in model.blocks:
            block.attn.record_attention = False
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_variant_and_overrides_resolve():
    spec = resolve_spec({"variant": "S/16"})
    assert (spec.dim, spec.depth, spec.heads, spec.mlp_dim, spec.patch_size) == (384, 12, 6, 1536, 16)
    spec = resolve_spec({"variant": "Ti/16", "patch_size": 4, "img_size": 32, "depth": 6})
    assert (spec.dim, spec.depth, spec.patch_size, spec.grid_side) == (192, 6, 4, 8)


def test_the_patch_stem_is_the_stride_p_convolution_of_its_weights(tiny):
    """The stem applies timm's conv weights as eq. 1's matrix to flattened patches: the same tokens
    and the same weight gradient as the stride-P convolution, in the grid's raster order."""
    torch.manual_seed(0)
    model = build_model({**tiny.model(**SIZE), "stem": "patch"})
    proj = model.stem.proj
    images = torch.randn(3, 3, 16, 16)
    tokens = model.stem(images)
    reference = torch.nn.functional.conv2d(images, proj.weight, proj.bias, stride=4).flatten(2).transpose(1, 2)
    assert tokens.shape == (3, 16, proj.out_channels)
    assert torch.allclose(tokens, reference, atol=1e-5)
    upstream = torch.randn_like(tokens)
    (grad_ours,) = torch.autograd.grad((tokens * upstream).sum(), proj.weight)
    reference = torch.nn.functional.conv2d(images, proj.weight, proj.bias, stride=4).flatten(2).transpose(1, 2)
    (grad_conv,) = torch.autograd.grad((reference * upstream).sum(), proj.weight)
    assert torch.allclose(grad_ours, grad_conv, atol=1e-4)
    # the token order is raster order of the grid: token 1 is the patch right of token 0
    one_patch = torch.zeros(1, 3, 16, 16)
    one_patch[0, :, 0:4, 4:8] = 1.0
    moved = model.stem(one_patch) - proj.bias
    assert moved.abs().sum(-1).nonzero()[:, 1].tolist() == [1]
