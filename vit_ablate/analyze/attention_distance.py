"""Mean attention distance per head and layer (paper Figure 7 right, Appendix D.7).

For one head, the attention distance of a query patch is the attention-weighted average distance, in
pixels, between it and the patches it attends to; the "mean attention distance" averages this over
query patches and images. It is the analogue of a CNN's receptive field size.

Distance: patch ``(r, c)`` sits at the centre of its P×P square, so the distance between two patches
is ``P × sqrt((r - r')² + (c - c')²)`` pixels (``P`` = ``model.patch_size``; a hybrid's "patch" is
its stride, so the same formula holds for every stem).

Prefix tokens (the class token): they have no position in the image, so they are excluded on both
sides — only patch queries are averaged, and each query's weights over the *patches* are
renormalised to sum to one before the distance is taken. The distance therefore describes *where in
the image* a head looks, whatever share of its attention goes to the class token. That share is
reported separately (``prefix_attention_fraction``), so nothing is hidden by the renormalisation.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "patch_distance_matrix",
    "mean_attention_distance",
    "prefix_attention_fraction",
    "uniform_attention_distance",
]


def patch_distance_matrix(grid_size: Tuple[int, int], patch_size: float = 1.0) -> Tensor:
    """(N, N) float64 pixel distances between the patches of a ``rows × cols`` grid, raster order."""
    rows, cols = int(grid_size[0]), int(grid_size[1])
    r, c = torch.meshgrid(torch.arange(rows, dtype=torch.float64), torch.arange(cols, dtype=torch.float64), indexing="ij")
    pos = torch.stack([r.flatten(), c.flatten()], dim=1)
    return torch.cdist(pos, pos) * float(patch_size)


def _as_layers(attentions: Tensor | Sequence[Tensor]) -> Sequence[Tensor]:
    """A list of per-layer (B, H, T, T) maps, or one (B, H, T, T) / (L, B, H, T, T) tensor → per-layer maps."""
    if isinstance(attentions, Tensor):
        if attentions.dim() == 4:
            return [attentions]
        if attentions.dim() == 5:
            return list(attentions.unbind(0))
        raise ValueError(f"attention maps must be (B, heads, T, T) per layer, got shape {tuple(attentions.shape)}")
    layers = list(attentions)
    for attn in layers:
        if attn.dim() != 4:
            raise ValueError(f"attention maps must be (B, heads, T, T) per layer, got shape {tuple(attn.shape)}")
    return layers


def _patch_block(attn: Tensor, grid_size: Tuple[int, int], num_prefix_tokens: int) -> Tensor:
    tokens = attn.shape[-1]
    patches = int(grid_size[0]) * int(grid_size[1])
    if tokens != num_prefix_tokens + patches or attn.shape[-2] != tokens:
        raise ValueError(
            f"attention over {tokens} tokens does not match {num_prefix_tokens} prefix token(s) + "
            f"{grid_size[0]}×{grid_size[1]} patches"
        )
    return attn[..., num_prefix_tokens:, num_prefix_tokens:]


def mean_attention_distance(
    attentions: Tensor | Sequence[Tensor],
    grid_size: Tuple[int, int],
    patch_size: float,
    num_prefix_tokens: int = 0,
) -> Tensor:
    """(layers, heads) float64 mean attention distance in pixels, averaged over images and query patches.

    ``attentions``: per layer a softmax map (B, heads, T, T) (``VisionTransformer.attention_maps``),
    T = prefix + rows·cols tokens. Patch→patch weights are renormalised per query (module docstring).
    """
    distance = None
    rows = []
    for attn in _as_layers(attentions):
        block = _patch_block(attn, grid_size, num_prefix_tokens).double()  # B, H, N, N
        if distance is None:
            distance = patch_distance_matrix(grid_size, patch_size).to(block.device)
        block = block / block.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        per_query = (block * distance).sum(dim=-1)  # B, H, N
        rows.append(per_query.mean(dim=(0, 2)).cpu())
    return torch.stack(rows)


def prefix_attention_fraction(attentions: Tensor | Sequence[Tensor], num_prefix_tokens: int) -> Tensor:
    """(layers, heads): the mean share of a patch query's attention that goes to the prefix tokens."""
    rows = []
    for attn in _as_layers(attentions):
        if num_prefix_tokens == 0:
            rows.append(torch.zeros(attn.shape[1], dtype=torch.float64))
            continue
        share = attn[..., num_prefix_tokens:, :num_prefix_tokens].double().sum(dim=-1)  # B, H, N
        rows.append(share.mean(dim=(0, 2)).cpu())
    return torch.stack(rows)


def uniform_attention_distance(grid_size: Tuple[int, int], patch_size: float) -> float:
    """The mean attention distance of a head that attends uniformly to every patch (self included):
    the mean pairwise distance of the grid. A reference line in the figure."""
    return float(patch_distance_matrix(grid_size, patch_size).mean())

