"""How the token sequence becomes one vector (``model.pool``), paper Appendix D.3.

Each pooling owns what it needs: ``cls`` owns the class token (so the GAPs create none) and every
pooling applies the final LayerNorm where its reference implementation does: on the class token
(eq. 4: y = LN(z_L^0)), on every token before averaging (``gap``: the paper's GAP, whose reference code
ends the encoder with ``encoder_norm`` on all tokens and then takes the mean), after averaging
(``gap_fc_norm``: timm's ``global_pool="avg"`` with ``fc_norm``), or before attention pooling. The two
GAPs differ whenever the LayerNorm's inputs differ across tokens: the mean of normalised tokens is not
the normalised mean.
"""

from __future__ import annotations

from functools import partial
from typing import Dict, Optional

import torch
from timm.layers import AttentionPoolLatent
from torch import nn

from vit_ablate.model.schema import POOLINGS, ModelConfig


class Pooling(nn.Module):
    num_prefix_tokens: int = 0
    timm_names: Optional[Dict[str, str]] = {}  # our suffix → timm's name; None: timm has no equivalent
    timm_kwargs: Dict[str, object] = {}  # the timm VisionTransformer arguments that build the same pooling

    def __init__(self, spec: ModelConfig, final_norm: nn.Module):
        super().__init__()
        self.norm = final_norm

    def prefix_tokens(self, batch: int) -> Optional[torch.Tensor]:
        """Tokens prepended to the patch sequence before position embeddings are added."""
        return None


@POOLINGS.register("cls")
class ClassTokenPooling(Pooling):
    """A learned [class] token is prepended; its final state is the image representation (§3.1)."""

    num_prefix_tokens = 1
    timm_names = {"cls_token": "cls_token", "norm.": "norm."}
    timm_kwargs = {"class_token": True, "global_pool": "token"}
    no_weight_decay_names = ("cls_token",)

    def __init__(self, spec: ModelConfig, final_norm: nn.Module):
        super().__init__(spec, final_norm)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, spec.dim))
        nn.init.normal_(self.cls_token, std=1e-6)  # as timm

    def prefix_tokens(self, batch: int) -> torch.Tensor:
        return self.cls_token.expand(batch, -1, -1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens[:, 0])


@POOLINGS.register("gap")
class GlobalAveragePooling(Pooling):
    """The paper's GAP (D.3): the final LayerNorm on every patch token, then their mean; no class token.

    The LayerNorm is called ``encoder_norm`` as in the reference code (google-research/vision_transformer,
    big_vision), which also keeps checkpoints of the two GAPs from loading into each other silently.
    """

    timm_names = {"encoder_norm.": "norm."}
    timm_kwargs = {"class_token": False, "global_pool": "avg", "fc_norm": False}

    def __init__(self, spec: ModelConfig, final_norm: nn.Module):
        nn.Module.__init__(self)
        self.encoder_norm = final_norm

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder_norm(tokens).mean(dim=1)


@POOLINGS.register("gap_fc_norm")
class MeanThenNormPooling(Pooling):
    """timm's GAP: the mean of the patch tokens, then the final LayerNorm (timm's ``fc_norm``)."""

    timm_names = {"norm.": "fc_norm."}
    timm_kwargs = {"class_token": False, "global_pool": "avg", "fc_norm": True}

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.norm(tokens.mean(dim=1))


@POOLINGS.register("map")
class AttentionPooling(Pooling):
    """Multi-head attention pooling with a learned query (big_vision's MAP head, timm's AttentionPoolLatent)."""

    timm_names = {"norm.": "norm.", "attn_pool.": "attn_pool."}
    timm_kwargs = {"class_token": False, "global_pool": "map"}
    # attention rollout (analyze) follows the encoder only; the pooling's own attention is not in it
    rollout_note = "rollout: map pooling's own attention is not part of the rollout (mean over patch queries)"
    no_weight_decay_names = ("attn_pool.latent",)

    def __init__(self, spec: ModelConfig, final_norm: nn.Module):
        super().__init__(spec, final_norm)
        self.attn_pool = AttentionPoolLatent(spec.dim, num_heads=spec.heads, mlp_ratio=spec.mlp_dim / spec.dim,
                                             norm_layer=partial(nn.LayerNorm, eps=1e-6))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.attn_pool(self.norm(tokens))
