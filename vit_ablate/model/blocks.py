"""Norm placement: where LayerNorm sits in a Transformer block (``model.norm``).

``pre``  — the ViT paper's block (§3.1, eq. 2–3): LN before MSA and MLP, residual after; a final
           LN before the head (eq. 4), which the pooling component applies.
``post`` — the original Transformer/BERT block: ``LN(x + f(x))``. Its output is already normalised,
           so it needs no final LN. Xiong et al. (2020) show it needs learning-rate warmup.
"""

from __future__ import annotations

import torch
from timm.layers import DropPath, Mlp
from torch import nn

from vit_ablate.model.schema import NORM_PLACEMENTS, ModelConfig


class TransformerBlock(nn.Module):
    """Attention + MLP sub-layers; subclasses decide where the LayerNorms go."""

    # Whether the encoder output still needs a final LayerNorm before pooling (eq. 4).
    needs_final_norm: bool = True
    # timm builds the same block, so timm weights load into it (no timm class matches `post`).
    timm_equivalent: bool = True

    def __init__(self, spec: ModelConfig, attention: nn.Module, drop_path: float):
        super().__init__()
        # Attribute names follow timm's Block so state dicts convert by prefix alone.
        self.norm1 = nn.LayerNorm(spec.dim, eps=spec.layer_norm_eps)
        self.attn = attention
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(spec.dim, eps=spec.layer_norm_eps)
        self.mlp = Mlp(spec.dim, spec.mlp_dim, act_layer=nn.GELU, drop=spec.dropout)  # dropout after both dense layers
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    @classmethod
    def final_norm(cls, spec: ModelConfig) -> nn.Module:
        return nn.LayerNorm(spec.dim, eps=spec.layer_norm_eps) if cls.needs_final_norm else nn.Identity()


@NORM_PLACEMENTS.register("pre")
class PreNormBlock(TransformerBlock):
    """z' = MSA(LN(z)) + z;  z = MLP(LN(z')) + z'   (paper eq. 2–3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


@NORM_PLACEMENTS.register("post")
class PostNormBlock(TransformerBlock):
    """z' = LN(z + MSA(z));  z = LN(z' + MLP(z'))   (Vaswani et al. 2017; BERT)."""

    needs_final_norm = False
    timm_equivalent = False  # timm's ResPostBlock is x + LN(f(x)), a different block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop_path1(self.attn(x)))
        return self.norm2(x + self.drop_path2(self.mlp(x)))

