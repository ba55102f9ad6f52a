"""The ViT model: one registry per ablation axis, composed by ``VisionTransformer``.

Where each axis lives:
    model.stem          stems.py       patch | hybrid | conv
    model.pos_embed     pos_embed.py   none | 1d | 2d | relative | sincos2d | rope2d
    model.pos_embed_at  pos_embed.py   input | every_layer | every_layer_shared
    model.norm          blocks.py      pre | post
    model.pool          pooling.py     cls | gap | map
    model.head          heads.py       linear | mlp
    model.variant       presets.py     Ti, S, B, L, H  ×  /patch
"""

from vit_ablate.model.blocks import NORM_PLACEMENTS
from vit_ablate.model.heads import HEADS
from vit_ablate.model.pooling import POOLINGS
from vit_ablate.model.pos_embed import PLACEMENTS, POSITION_EMBEDDINGS
from vit_ablate.model.stems import STEMS
from vit_ablate.model.timm_interop import load_timm_weights, load_timm_weights_file, timm_kwargs, to_timm_state_dict
from vit_ablate.model.vit import VisionTransformer, ViTSpec, build_model, resolve_spec

# The ablation axes, by config key: what `vit-ablate config show` and the tests enumerate.
AXES = {
    "model.stem": STEMS,
    "model.pos_embed": POSITION_EMBEDDINGS,
    "model.pos_embed_at": PLACEMENTS,
    "model.norm": NORM_PLACEMENTS,
    "model.pool": POOLINGS,
    "model.head": HEADS,
}

__all__ = [
    "AXES",
    "VisionTransformer",
    "ViTSpec",
    "build_model",
    "resolve_spec",
    "load_timm_weights",
    "load_timm_weights_file",
    "to_timm_state_dict",
    "timm_kwargs",
]
