"""Multi-head self-attention through ``F.scaled_dot_product_attention``.

Position information that lives inside attention (the relative bias of paper D.4, 2-D RoPE) is a small
module handed in by the position-embedding component: it maps ``(q, k)`` to ``(q, k, additive_bias)``.
The bias goes to SDPA as a float mask, except where the bias is learned and the tensors are on a CPU:
there SDPA falls back to its unfused path to return the mask's gradient, and the explicit
softmax(q·kᵀ·scale + bias)·v below is faster (results/bench/relative_attention_cpu.md). The explicit
path also records the attention maps for analysis (paper Figures 6 and 7); both compute the same numbers.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(
        self,
        dim: int,
        heads: int,
        qkv_bias: bool = True,
        attn_dropout: float = 0.0,
        dropout: float = 0.0,
        position: Optional[nn.Module] = None,
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"model.dim={dim} is not divisible by model.heads={heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        # Names match timm's Attention so state dicts convert by prefix alone.
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)  # paper: no dropout after the qkv projection
        self.attn_dropout = attn_dropout
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)
        self.position = position
        self.record_attention = False  # set by VisionTransformer.attention_maps
        self.last_attention: Optional[torch.Tensor] = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        bias = None
        if self.position is not None:
            q, k, bias = self.position(q, k, self.scale)
        dropout_p = self.attn_dropout if self.training else 0.0
        learned_bias_on_cpu = bias is not None and bias.requires_grad and q.device.type == "cpu"
        if self.record_attention or learned_bias_on_cpu:
            logits = (q * self.scale) @ k.transpose(-2, -1)
            if bias is not None:
                logits = logits + bias
            weights = logits.softmax(dim=-1)
            if self.record_attention:
                self.last_attention = weights.detach()
            out = F.dropout(weights, dropout_p, self.training) @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p)
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj_drop(self.proj(out))
