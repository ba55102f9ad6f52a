"""The ViT model: one registry per ablation axis, composed by ``VisionTransformer``.

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

# Names resolve on first use (PEP 562), so that ``vit_ablate.model.schema`` (the config's ``model``
# section) imports without torch; any name below imports its module, which registers its components.
_EXPORTS = {
    "NORM_PLACEMENTS": "blocks",
    "HEADS": "heads",
    "POOLINGS": "pooling",
    "PLACEMENTS": "pos_embed",
    "POSITION_EMBEDDINGS": "pos_embed",
    "STEMS": "stems",
    "load_timm_weights": "timm_interop",
    "load_timm_weights_file": "timm_interop",
    "timm_kwargs": "timm_interop",
    "to_timm_state_dict": "timm_interop",
    "VisionTransformer": "vit",
    "ViTSpec": "vit",
    "build_model": "vit",
    "resolve_spec": "vit",
}

__all__ = ["AXES", *_EXPORTS]


def _axes():
    from vit_ablate.model.blocks import NORM_PLACEMENTS
    from vit_ablate.model.heads import HEADS
    from vit_ablate.model.pooling import POOLINGS
    from vit_ablate.model.pos_embed import PLACEMENTS, POSITION_EMBEDDINGS
    from vit_ablate.model.stems import STEMS

    # The ablation axes, by config key: what `vit-ablate config show` and the tests enumerate.
    return {
        "model.stem": STEMS,
        "model.pos_embed": POSITION_EMBEDDINGS,
        "model.pos_embed_at": PLACEMENTS,
        "model.norm": NORM_PLACEMENTS,
        "model.pool": POOLINGS,
        "model.head": HEADS,
    }


def __getattr__(name: str):
    import importlib

    if name == "AXES":
        value = _axes()
    elif name in _EXPORTS:
        import vit_ablate.model.vit  # noqa: F401  (builds on every registry: import them all first)

        value = getattr(importlib.import_module(f"vit_ablate.model.{_EXPORTS[name]}"), name)
    else:
        raise AttributeError(f"module 'vit_ablate.model' has no attribute {name!r}")
    globals()[name] = value
    return value
