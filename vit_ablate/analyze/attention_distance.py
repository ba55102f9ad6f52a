"""Mean attention distance per head and layer (paper Figure 7 right, Appendix D.7).

For one head, the attention distance of a query patch is the attention-weighted mean distance, in
pixels, to the patches it attends to; averaged over query patches and images it is the analogue of a
CNN's receptive field size. Patch (r, c) sits at the centre of its P×P square (a hybrid's "patch" is
its stride), so two patches are ``P·sqrt((r - r')² + (c - c')²)`` pixels apart.

Prefix tokens (the class token) have no place in the image: only patch queries are averaged, and each
query's weights over the patches are renormalised to one, so the distance says where in the image a
head looks. The share of attention the patches send to the prefix is returned beside it.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor


def patch_distance_matrix(grid_size: Tuple[int, int], patch_size: float = 1.0) -> Tensor:
    """(N, N) float64 pixel distances between the patches of a rows × cols grid, raster order."""
    r, c = torch.meshgrid(*(torch.arange(int(n), dtype=torch.float64) for n in grid_size), indexing="ij")
    position = torch.stack([r.flatten(), c.flatten()], dim=1)
    return torch.cdist(position, position) * float(patch_size)


def mean_attention_distance(
    attentions: Sequence[Tensor], grid_size: Tuple[int, int], patch_size: float, num_prefix_tokens: int = 0
) -> Tuple[Tensor, Tensor]:
    """(layers, heads) float64 mean attention distance in pixels, and the mean share of a patch query's
    attention on the prefix tokens, from per-layer (B, heads, T, T) softmax maps (T = prefix + patches)."""
    distance = patch_distance_matrix(grid_size, patch_size)
    prefix = num_prefix_tokens
    distances, shares = [], []
    for attn in attentions:
        if tuple(attn.shape[-2:]) != (prefix + len(distance),) * 2:
            raise ValueError(f"attention maps of shape {tuple(attn.shape)} do not fit {prefix} prefix token(s) + "
                             f"{grid_size[0]}×{grid_size[1]} patches")
        queries = attn[..., prefix:, :].double()  # B, heads, patches, T
        to_patches = queries[..., prefix:]
        to_patches = to_patches / to_patches.sum(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        distances.append((to_patches * distance.to(attn.device)).sum(-1).mean(dim=(0, 2)).cpu())
        shares.append(queries[..., :prefix].sum(-1).mean(dim=(0, 2)).cpu())
    return torch.stack(distances), torch.stack(shares)
