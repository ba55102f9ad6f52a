"""The ``model`` section of the run configuration, owned here beside the model it describes.

``vit_ablate.config`` mounts it as ``RunConfig.model``; ``build_model`` consumes exactly these keys.
Importing this module costs no torch import, so configuration checks stay fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from vit_ablate.schema import FRACTION, POSITIVE, setting

__all__ = ["ModelConfig"]


@dataclass
class ModelConfig:
    """The ``model`` section; ``vit_ablate.model.build_model`` consumes exactly these keys."""

    variant: str = setting("Ti/16", "<size>/<patch> from model/presets.py (paper Table 1 + DeiT Ti/S); the patch must divide img_size",
                       valid="Ti | S | B | L | H, then /patch, e.g. Ti/4, B/16")
    dim: Optional[int] = setting(None, "hidden size D; null = the variant's (the keys down to patch_size override the preset)", valid=POSITIVE)
    depth: Optional[int] = setting(None, "transformer layers; null = the variant's", valid=POSITIVE)
    heads: Optional[int] = setting(None, "attention heads (must divide dim); null = the variant's", valid=POSITIVE)
    mlp_dim: Optional[int] = setting(None, "MLP hidden size; null = the variant's", valid=POSITIVE)
    patch_size: Optional[int] = setting(None, "patch side in pixels; null = the variant's", valid=POSITIVE)
    img_size: int = setting(224, "input side in pixels; unset on the command line and in the files = the data's image size", valid=POSITIVE)
    in_chans: int = setting(3, "input channels", valid=POSITIVE)
    num_classes: int = setting(1000, "classes of the head; unset on the command line and in the files = the data's class count", valid=POSITIVE)
    norm: str = setting("pre", "LayerNorm placement (model/blocks.py): pre = paper eq. 2-3, post = LN(x + f(x))", valid="pre | post")
    pool: str = setting("cls", "image representation (model/pooling.py): class token, global average (the paper's: LayerNorm on each token, then the mean; gap_fc_norm: timm's mean, then LayerNorm) or attention pooling", valid="cls | gap | gap_fc_norm | map")
    head: str = setting("linear", "classifier (model/heads.py): mlp = tanh pre-logits", valid="linear | mlp")
    head_hidden_dim: Optional[int] = setting(None, "mlp head width; null = dim (paper §3.1 pre-logits)", valid=POSITIVE)
    head_zero_init: bool = setting(True, "zero-initialise the head (paper §3.1, fine-tuning)")
    pos_embed: str = setting("1d", "position embedding (model/pos_embed.py; relative_* other than relative: diagnostic variants, not in the paper)", valid="none | 1d | 2d | relative | sincos2d | rope2d | relative_2d_offsets | relative_head_bias | relative_large_init")
    pos_embed_at: str = setting("input", "where position embeddings are added (model/pos_embed.py)", valid="input | every_layer | every_layer_shared")
    stem: str = setting("patch", "image to tokens (model/stems.py)", valid="patch | hybrid | conv")
    hybrid_stage: int = setting(3, "paper §3.1: 4 = ResNet-50 stage-4 output; 3 = stage 4 folded into stage 3", valid=(3, 4))
    hybrid_layers: Optional[List[int]] = setting(None, "ResNet blocks per stage; overrides hybrid_stage", valid=POSITIVE)
    qkv_bias: bool = setting(True, "bias in the query/key/value projection")
    layer_norm_eps: float = setting(1e-6, "LayerNorm epsilon", valid=POSITIVE)
    dropout: float = setting(0.0, "after every dense layer but qkv, and after adding position embeddings", valid=FRACTION)
    attn_dropout: float = setting(0.0, "dropout on the attention weights", valid=FRACTION)
    drop_path: float = setting(0.0, "stochastic depth rate", valid=FRACTION)
    rope_theta: float = setting(100.0, "rope2d frequency base", valid=POSITIVE)
