"""Bad names and impossible combinations fail at build time, naming key, value and the valid ones."""

import pytest
from omegaconf import OmegaConf

from vit_ablate import build_model
from vit_ablate.model import resolve_spec

SIZE = dict(num_classes=3)  # what these tests change of the shared tiny model


@pytest.mark.parametrize(
    "override, fragments",
    [
        ({"pos_embed": "2D"}, ["model.pos_embed='2D'", "none, relative, relative_2d_offsets, relative_head_bias, relative_large_init, rope2d, sincos2d", "did you mean '2d'"]),
        ({"pool": "mean"}, ["model.pool='mean'", "cls, gap, gap_fc_norm, map"]),
        ({"norm": "sandwich"}, ["model.norm='sandwich'", "post, pre"]),
        ({"head": "mlp2"}, ["model.head='mlp2'", "did you mean 'mlp'"]),
        ({"stem": "patches"}, ["model.stem='patches'", "did you mean 'patch'"]),
        ({"pos_embed_at": "every"}, ["model.pos_embed_at='every'", "every_layer_shared"]),
        ({"pos_embed": "none", "pos_embed_at": "every_layer"}, ["model.pos_embed_at='every_layer'", "model.pos_embed='none'", "supports input"]),
        ({"pos_embed": "relative", "pos_embed_at": "every_layer_shared"}, ["model.pos_embed='relative'", "supports input"]),
        ({"pos_embed": "rope2d", "pos_embed_at": "every_layer"}, ["model.pos_embed='rope2d'"]),
        ({"pos_embed": "sincos2d", "pos_embed_at": "every_layer"}, ["supports input, every_layer_shared"]),
        ({"img_size": 30}, ["model.img_size=30", "model.patch_size=8"]),
        ({"stem": "hybrid", "img_size": 224, "patch_size": 16, "hybrid_stage": 4}, ["model.patch_size=16", "stride 32"]),
        ({"stem": "hybrid", "img_size": 40, "patch_size": 16, "hybrid_stage": 3}, ["model.img_size=40", "stride"]),
        ({"stem": "hybrid", "hybrid_stage": 5}, ["model.hybrid_stage=5", "3, 4"]),
        ({"stem": "conv", "patch_size": 6, "img_size": 36}, ["model.stem='conv'", "power-of-two"]),
        ({"variant": "XL/16"}, ["model.variant='XL/16'", "Ti, S, B, L, H"]),
        ({"heads": 5}, ["model.dim=32", "model.heads=5"]),
        ({"pos_embed": "rope2d", "dim": 24, "heads": 4}, ["rope2d", "divisible by 4"]),
        ({"pos_embd": "2d"}, ["unknown config key 'model.pos_embd'", "did you mean 'model.pos_embed'"]),
        ({"depth": 0}, ["model.depth=0", "positive"]),
    ],
)
def test_invalid_model_configs_name_the_problem(override, fragments, tiny):
    with pytest.raises(ValueError) as info:
        build_model(tiny.model(**{**SIZE, **override}))
    for fragment in fragments:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_omegaconf_node_is_accepted(tiny):
    model = build_model(OmegaConf.create(tiny.model(**SIZE, pos_embed="2d")))
    assert model.spec.pos_embed == "2d"
    assert resolve_spec(model.spec) == model.spec
