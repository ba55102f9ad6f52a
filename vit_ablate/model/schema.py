"""The ``model`` section of the run configuration and the ``init`` section that starts it from trained
weights: the one declaration of the model's fields, defaults and valid names, beside the registries
that hold the names. ``vit_ablate.config`` mounts both; ``resolve_spec`` (vit.py) fills in the variant's
sizes and hands the section to the model. Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

from vit_ablate.model.presets import SIZES
from vit_ablate.schema import FRACTION, POSITIVE, Registry, setting

__all__ = ["ModelConfig", "InitConfig", "INIT_FORMATS", "STEMS", "NORM_PLACEMENTS", "POOLINGS", "HEADS",
           "POSITION_EMBEDDINGS", "PLACEMENTS"]

STEMS: Registry = Registry("model.stem", "vit_ablate.model.stems")
NORM_PLACEMENTS: Registry = Registry("model.norm", "vit_ablate.model.blocks")
POOLINGS: Registry = Registry("model.pool", "vit_ablate.model.pooling")
HEADS: Registry = Registry("model.head", "vit_ablate.model.heads")
POSITION_EMBEDDINGS: Registry = Registry("model.pos_embed", "vit_ablate.model.pos_embed")
PLACEMENTS: Registry = Registry("model.pos_embed_at", "vit_ablate.model.pos_embed")

INIT_FORMATS = ("auto", "vit_ablate", "timm", "hf")


@dataclass
class ModelConfig:
    """The ``model`` section; after ``resolve_spec``, also the model's description (``model.spec``)."""

    # Ti/8 cuts the default 32-pixel synthetic images into a 4×4 grid; B/16 is the paper's ViT-B/16
    variant: str = setting("Ti/8", "<size>/<patch> from model/presets.py (paper Table 1 + DeiT Ti/S); the patch must divide img_size",
                           valid=f"{' | '.join(SIZES)}, then /patch, e.g. Ti/4, B/16")
    dim: Optional[int] = setting(None, "hidden size D; null = the variant's (the keys down to patch_size override the preset)", valid=POSITIVE)
    depth: Optional[int] = setting(None, "transformer layers; null = the variant's", valid=POSITIVE)
    heads: Optional[int] = setting(None, "attention heads (must divide dim); null = the variant's", valid=POSITIVE)
    mlp_dim: Optional[int] = setting(None, "MLP hidden size; null = the variant's", valid=POSITIVE)
    patch_size: Optional[int] = setting(None, "patch side in pixels; null = the variant's", valid=POSITIVE)
    img_size: int = setting(224, "input side in pixels; unset on the command line and in the files = the data's image size", valid=POSITIVE)
    in_chans: int = setting(3, "input channels", valid=POSITIVE)
    num_classes: int = setting(1000, "classes of the head; unset on the command line and in the files = the data's class count", valid=POSITIVE)
    norm: str = setting("pre", "LayerNorm placement (model/blocks.py): pre = paper eq. 2-3, post = LN(x + f(x))", valid=NORM_PLACEMENTS)
    pool: str = setting("cls", "image representation (model/pooling.py): class token, global average (the paper's: LayerNorm on each token, then the mean; gap_fc_norm: timm's mean, then LayerNorm) or attention pooling", valid=POOLINGS)
    head: str = setting("linear", "classifier (model/heads.py): mlp = tanh pre-logits", valid=HEADS)
    head_hidden_dim: Optional[int] = setting(None, "mlp head width; null = dim (paper §3.1 pre-logits)", valid=POSITIVE)
    head_zero_init: bool = setting(False, "zero-initialise the head (paper §3.1's fine-tuning head; init.path zeroes a re-created head anyway); false = nn.Linear's init")
    pos_embed: str = setting("1d", "position embedding (model/pos_embed.py; relative_* other than relative: diagnostic variants, not in the paper)", valid=POSITION_EMBEDDINGS)
    pos_embed_at: str = setting("input", "where position embeddings are added (model/pos_embed.py)", valid=PLACEMENTS)
    stem: str = setting("patch", "image to tokens (model/stems.py)", valid=STEMS)
    hybrid_stage: int = setting(3, "paper §3.1: 4 = ResNet-50 stage-4 output; 3 = stage 4 folded into stage 3", valid=(3, 4))
    hybrid_layers: Optional[List[int]] = setting(None, "ResNet blocks per stage; overrides hybrid_stage", valid=POSITIVE)
    qkv_bias: bool = setting(True, "bias in the query/key/value projection")
    layer_norm_eps: float = setting(1e-6, "LayerNorm epsilon", valid=POSITIVE)
    dropout: float = setting(0.0, "after every dense layer but qkv, and after adding position embeddings", valid=FRACTION)
    attn_dropout: float = setting(0.0, "dropout on the attention weights", valid=FRACTION)
    drop_path: float = setting(0.0, "stochastic depth rate", valid=FRACTION)
    rope_theta: float = setting(100.0, "rope2d frequency base", valid=POSITIVE)

    @property
    def grid_side(self) -> int:
        return self.img_size // self.patch_size


@dataclass
class InitConfig:
    """Start a run from trained weights (paper §3.2: pre-train, then fine-tune, often at a new resolution)."""

    path: Optional[str] = setting(None, "a vit-ablate .ckpt, a timm state dict (.pth/.bin/.safetensors) or a Hugging Face ViT folder; null = random init")
    format: str = setting("auto", "the file's kind; auto decides from the file", valid=INIT_FORMATS)
    exclude: List[str] = setting(help="parameter-name prefixes left at their fresh init, e.g. [head]", factory=list)
