"""Attention rollout (Abnar & Zuidema 2020), the method behind paper Figure 6 (Appendix D.8).

Per layer the attention of all heads is averaged, the identity is added for the residual connection
(``0.5·A + 0.5·I`` up to the row renormalisation) and rows are renormalised to sum to one; the joint
attention is the product through the layers, ``R = Â_L · … · Â_1``. Row ``i`` of ``R`` says how much
of token ``i``'s final state flows from each input token.

The map of an image is the class token's row over the patch tokens. Without a class token (``gap``
and ``map`` pooling) the representation is a function of every patch token, so the map is the mean
of the patch rows over the patches (for ``map``, the pooling's own attention is not included).
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_rollout", "rollout_patch_maps", "upsample_maps"]


def attention_rollout(attentions: Sequence[Tensor] | Tensor, head_fusion: str = "mean") -> Tensor:
    """(B, T, T) joint attention from per-layer (B, heads, T, T) softmax maps (first layer first).

    ``head_fusion``: ``mean`` (Abnar & Zuidema; what Figure 6 uses), ``max`` or ``min`` over heads.
    """
    layers = list(attentions.unbind(0)) if isinstance(attentions, Tensor) and attentions.dim() == 5 else list(attentions)
    if not layers:
        raise ValueError("attention rollout needs at least one layer of attention maps")
    fuse = {"mean": lambda a: a.mean(dim=1), "max": lambda a: a.amax(dim=1), "min": lambda a: a.amin(dim=1)}
    if head_fusion not in fuse:
        raise ValueError(f"head_fusion={head_fusion!r} is not valid; choose one of {', '.join(fuse)}")
    batch, _, tokens, _ = layers[0].shape
    eye = torch.eye(tokens, dtype=torch.float64, device=layers[0].device)
    rollout = eye.expand(batch, tokens, tokens).clone()
    for attn in layers:
        a = fuse[head_fusion](attn.double()) + eye
        a = a / a.sum(dim=-1, keepdim=True)
        rollout = a @ rollout
    return rollout


def rollout_patch_maps(rollout: Tensor, num_prefix_tokens: int, grid_size: Tuple[int, int]) -> Tensor:
    """(B, rows, cols) map of the image representation over the patches (module docstring), each
    summing to the share of the flow that comes from patches (1 without prefix tokens)."""
    rows, cols = int(grid_size[0]), int(grid_size[1])
    if rollout.shape[-1] != num_prefix_tokens + rows * cols:
        raise ValueError(
            f"rollout over {rollout.shape[-1]} tokens does not match {num_prefix_tokens} prefix token(s) + {rows}×{cols} patches"
        )
    if num_prefix_tokens > 0:
        flow = rollout[:, 0, num_prefix_tokens:]
    else:
        flow = rollout.mean(dim=1)  # every row is a patch
    return flow.reshape(-1, rows, cols)


def upsample_maps(maps: Tensor, size: Tuple[int, int], normalize: bool = True) -> Tensor:
    """(B, rows, cols) → (B, H, W) by bilinear interpolation; ``normalize`` scales each map to max 1."""
    out = F.interpolate(maps[:, None].float(), size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)[:, 0]
    out = out.clamp_min(0)
    if normalize:
        out = out / out.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return out
