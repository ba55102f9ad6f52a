"""Our paper-default model is numerically timm's model."""

import pytest
import timm
import torch

from vit_ablate import build_model, load_timm_weights, to_timm_state_dict
from vit_ablate.model import timm_kwargs

B16 = {"variant": "B/16", "img_size": 224, "num_classes": 1000}


def _max_logit_diff(ours, theirs, images):
    ours.eval()
    theirs.eval()
    with torch.no_grad():
        return (ours(images) - theirs(images)).abs().max().item()


@pytest.mark.parametrize(
    "timm_name, our_cfg, timm_args",
    [
        ("vit_base_patch16_224", {}, {}),
        # the other heads and the hybrid stem at 2 of B/16's 12 blocks: every block is the same code,
        # and the full depth is checked once above (4× faster, same mapping of every weight)
        ("vit_base_patch16_224", {"pool": "gap", "depth": 2}, {"class_token": False, "global_pool": "avg", "fc_norm": False, "depth": 2}),
        ("vit_base_patch16_224", {"pool": "gap_fc_norm", "depth": 2}, {"class_token": False, "global_pool": "avg", "depth": 2}),
        ("vit_base_patch16_224", {"pool": "map", "depth": 2}, {"class_token": False, "global_pool": "map", "depth": 2}),
        ("vit_base_r50_s16_224", {"stem": "hybrid", "hybrid_stage": 3, "depth": 2}, {"num_classes": 1000, "depth": 2}),
    ],
    ids=["pre-cls-1d-patch", "gap", "gap_fc_norm", "map", "hybrid-stage3"],
)
def test_logits_match_timm(timm_name, our_cfg, timm_args):
    torch.manual_seed(0)
    theirs = timm.create_model(timm_name, pretrained=False, **timm_args)
    ours = load_timm_weights(build_model({**B16, **our_cfg}), theirs.state_dict())
    images = torch.randn(2, 3, 224, 224)
    assert _max_logit_diff(ours, theirs, images) <= 1e-4
    # and back: our weights under timm's names load into timm strictly and give the same logits
    fresh = timm.create_model(timm_name, pretrained=False, **timm_args)
    fresh.load_state_dict(to_timm_state_dict(ours), strict=True)
    assert _max_logit_diff(ours, fresh, images) <= 1e-4


@pytest.mark.parametrize("pool", ["gap", "gap_fc_norm"])
def test_timm_kwargs_build_the_same_shape(pool):
    ours = build_model({"variant": "Ti/4", "img_size": 32, "num_classes": 10, "pool": pool})
    theirs = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(ours))
    load_timm_weights(ours, theirs.state_dict())
    assert _max_logit_diff(ours, theirs, torch.randn(4, 3, 32, 32)) <= 1e-5


@pytest.mark.parametrize(
    "variant, timm_name, expected, paper_millions",
    [
        ("B/16", "vit_base_patch16_224", 86_567_656, 86),
        ("L/16", "vit_large_patch16_224", 304_326_632, 307),
        # timm's vit_huge_patch14_224 is headless by default: 630,764,800 (the number quoted in
        # shared/paper_reference.md) + the 1000-class linear head 1280·1000 + 1000 = 632,045,800.
        ("H/14", "vit_huge_patch14_224", 632_045_800, 632),
    ],
)
def test_parameter_counts_equal_timm_and_paper(variant, timm_name, expected, paper_millions):
    with torch.device("meta"):  # no memory, no init cost
        ours = build_model({"variant": variant, "num_classes": 1000})
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=1000)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters()) == expected
    assert abs(count / 1e6 - paper_millions) / paper_millions < 0.01  # paper Table 1
    if variant == "H/14":
        head = 1280 * 1000 + 1000
        assert count - head == 630_764_800


@pytest.mark.parametrize("cfg", [{"norm": "post"}, {"pos_embed": "2d"}, {"pos_embed": "relative"}, {"head": "mlp"}, {"stem": "conv"}])
def test_conversion_refuses_components_timm_lacks(cfg):
    model = build_model({"variant": "Ti/8", "img_size": 32, "num_classes": 10, **cfg})
    key = next(iter(cfg))
    with pytest.raises(ValueError, match=f"model.{key}"):
        to_timm_state_dict(model)


def test_load_rejects_mismatched_state_dict():
    model = build_model({"variant": "Ti/8", "img_size": 32, "num_classes": 10})
    state = to_timm_state_dict(model)
    state["pos_embed"] = torch.zeros(1, 5, 192)
    with pytest.raises(ValueError, match="pos_embed"):
        load_timm_weights(model, state)
    del state["pos_embed"]
    with pytest.raises(ValueError, match="missing"):
        load_timm_weights(model, state)
