"""Similarity of position embeddings (paper Figure 7 centre, Appendix D.4).

For every patch, the cosine similarity of its position embedding to the embedding of every other
patch: an (N, N) matrix, drawn as a ``rows × cols`` grid of ``rows × cols`` maps (the map at
(r, c) shows patch (r, c)'s similarity to every patch). A learned 1-D table that has discovered the
image's 2-D structure shows a bright blob around each patch plus its row and column.

Only additive tables have such a picture: ``1d``, ``2d`` and ``sincos2d`` (``patch_table()``). With
``every_layer`` placement the table added to the first layer's input is shown. Models without an
additive table (``none``, ``relative``, ``rope2d``) get a note instead of a figure.
"""

from __future__ import annotations

from typing import Dict, List, Optional

import torch
from torch import Tensor

from vit_ablate.analyze.attention_distance import patch_distance_matrix

__all__ = ["cosine_similarity_matrix", "position_table", "similarity_by_distance", "no_table_note"]


def cosine_similarity_matrix(table: Tensor) -> Tensor:
    """(N, D) → (N, N) float64 cosine similarities (a zero row gives zeros, not NaN)."""
    x = table.detach().double()
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x @ x.t()


@torch.no_grad()
def position_table(model) -> Optional[Tensor]:
    """The (num_patches, D) additive position table of ``model`` on the CPU, or None if it has none."""
    table = model.pos_embed.patch_table()
    return None if table is None else table.detach().float().cpu()


def no_table_note(model) -> str:
    name = model.spec.pos_embed
    return (
        f"position-embedding similarity: not drawn — model.pos_embed={name!r} adds no position table to "
        f"the patch tokens (only 1d, 2d and sincos2d do)"
    )


def similarity_by_distance(similarity: Tensor, grid_size, decimals: int = 6) -> List[Dict[str, float]]:
    """Mean cosine similarity as a function of the Euclidean grid distance between two patches
    (0, 1, √2, 2, …): a compact summary of how much 2-D locality a table has learned."""
    distance = patch_distance_matrix(grid_size, 1.0)
    keys = torch.round(distance * 10**decimals) / 10**decimals
    out = []
    for d in torch.unique(keys).tolist():
        mask = keys == d
        out.append({"distance": float(d), "mean_similarity": float(similarity[mask].mean()), "pairs": int(mask.sum())})
    return out
