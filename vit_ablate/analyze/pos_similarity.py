"""Similarity of position embeddings (paper Figure 7 centre, Appendix D.4).

The cosine similarity of every patch's position embedding to every other's: an (N, N) matrix, drawn
as a rows × cols mosaic of rows × cols maps (the map at (r, c) is patch (r, c)'s similarity to every
patch). A 1-D table that has learned the image's 2-D structure shows a blob around each patch plus its
row and column. Only additive tables (``patch_table()``) have such a picture; with ``every_layer``
placement it is the table added before the first layer.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from vit_ablate.analyze.attention_distance import patch_distance_matrix


def cosine_similarity_matrix(table: Tensor) -> Tensor:
    """(N, D) → (N, N) float64 cosine similarities (a zero row gives zeros, not NaN)."""
    x = F.normalize(table.detach().double(), dim=1)
    return x @ x.t()


def position_table(model) -> Optional[Tensor]:
    """The (patches, D) additive position table of ``model`` on the CPU, or None where it has none."""
    table = model.pos_embed.patch_table()
    return None if table is None else table.detach().float().cpu()


def similarity_by_distance(similarity: Tensor, grid_size: Tuple[int, int]) -> List[Dict[str, float]]:
    """Mean similarity against the grid distance between two patches (0, 1, √2, 2, …): how much 2-D
    locality a table has learned, in numbers."""
    distance = patch_distance_matrix(grid_size).round(decimals=4)
    return [{"distance": d, "mean_similarity": round(float(similarity[distance == d].mean()), 4),
             "pairs": int((distance == d).sum())} for d in distance.unique().tolist()]


def similarity_mosaic(similarity: np.ndarray, grid_size: Tuple[int, int]) -> np.ndarray:
    """(N, N) → one image of rows × cols maps, patch (r, c)'s at grid cell (r, c), one NaN pixel apart."""
    rows, cols = grid_size
    maps = np.pad(np.asarray(similarity, dtype=np.float64).reshape(rows, cols, rows, cols),
                  ((0, 0), (0, 0), (0, 1), (0, 1)), constant_values=np.nan)
    return maps.transpose(0, 2, 1, 3).reshape(rows * (rows + 1), cols * (cols + 1))[:-1, :-1]
