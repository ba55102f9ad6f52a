"""Attention rollout (Abnar & Zuidema 2020), the method of paper Figure 6 (Appendix D.8).

Per layer the heads' attention is averaged, the identity is added for the residual connection and the
rows are renormalised; the joint attention is the product through the layers, ``R = Â_L · … · Â_1``:
row i says how much of token i's final state flows from each input token.

An image's map is the class token's row over the patches. Without a class token (gap and map pooling)
the representation depends on every patch token, so it is the mean of the patch rows (for map pooling,
its own attention is not included).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def attention_rollout(attentions: Sequence[Tensor]) -> Tensor:
    """(B, T, T) float64 joint attention from per-layer (B, heads, T, T) softmax maps, first layer first."""
    if not len(attentions):
        raise ValueError("attention rollout needs at least one layer of attention maps")
    eye = torch.eye(attentions[0].shape[-1], dtype=torch.float64, device=attentions[0].device)
    rollout = eye
    for attn in attentions:
        joint = attn.double().mean(dim=1) + eye
        rollout = (joint / joint.sum(-1, keepdim=True)) @ rollout
    return rollout


def rollout_patch_maps(rollout: Tensor, num_prefix_tokens: int, grid_size: Tuple[int, int]) -> Tensor:
    """(B, rows, cols): the image representation's share of the flow from each patch (module docstring)."""
    rows, cols = grid_size
    if rollout.shape[-1] != num_prefix_tokens + rows * cols:
        raise ValueError(f"rollout over {rollout.shape[-1]} tokens does not fit {num_prefix_tokens} prefix "
                         f"token(s) + {rows}×{cols} patches")
    flow = rollout[:, 0, num_prefix_tokens:] if num_prefix_tokens else rollout.mean(dim=1)
    return flow.reshape(-1, rows, cols)


def upsample_maps(maps: Tensor, size: Tuple[int, int]) -> Tensor:
    """(B, rows, cols) → (B, H, W), bilinear, each scaled to a maximum of 1 to weight its image."""
    out = F.interpolate(maps[:, None].float(), size=tuple(size), mode="bilinear")[:, 0].clamp_min(0)
    return out / out.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
