"""The ViT model: one registry per ablation axis (model/schema.py), composed by ``VisionTransformer``.

Where each axis lives:
    model.stem          stems.py       patch | hybrid | conv
    model.pos_embed     pos_embed.py   none | 1d | 2d | relative | sincos2d | rope2d
                                       (diagnostics of relative: relative_2d_offsets | relative_head_bias | relative_large_init)
    model.pos_embed_at  pos_embed.py   input | every_layer | every_layer_shared
    model.norm          blocks.py      pre | post
    model.pool          pooling.py     cls | gap | gap_fc_norm | map
    model.head          heads.py       linear | mlp
    model.variant       presets.py     Ti, S, B, L, H  ×  /patch
"""

import dataclasses
import importlib

from vit_ablate.model.schema import HEADS, NORM_PLACEMENTS, PLACEMENTS, POOLINGS, POSITION_EMBEDDINGS, STEMS, ModelConfig
from vit_ablate.schema import Registry

# The ablation axes, by config key: the model's fields whose names a registry holds.
AXES = {f"model.{f.name}": f.metadata["valid"] for f in dataclasses.fields(ModelConfig) if isinstance(f.metadata["valid"], Registry)}

# Names that import torch resolve on first use (PEP 562), so that the config imports this package without it.
_EXPORTS = {
    "load_timm_weights": "timm_interop",
    "timm_kwargs": "timm_interop",
    "to_timm_state_dict": "timm_interop",
    "VisionTransformer": "vit",
    "build_model": "vit",
    "resolve_spec": "vit",
}

__all__ = ["AXES", "ModelConfig", "STEMS", "NORM_PLACEMENTS", "PLACEMENTS", "POSITION_EMBEDDINGS", "POOLINGS", "HEADS", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vit_ablate.model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"vit_ablate.model.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
