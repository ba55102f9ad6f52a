"""Principal components of the patch-embedding filters (paper Figure 7 left).

The patch stem maps each flattened P×P×C patch linearly to D dimensions: D filters of C·P·P weights.
Their principal components (the right singular vectors of the centred D × C·P·P matrix, by explained
variance) "resemble plausible basis functions for a low-dimensional representation of the fine
structure within each patch"; the paper shows the top 28. Hybrid and conv stems have no such filters.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from vit_ablate.model.stems import PatchStem

NUM_COMPONENTS = 28  # as in the paper's figure


def patch_filters(model) -> Optional[Tensor]:
    """The (D, C, P, P) patch-embedding filters on the CPU, or None for a stem without them."""
    return model.stem.proj.weight.detach().float().cpu() if isinstance(model.stem, PatchStem) else None


def patch_filter_pca(weight: Tensor, num_components: int = NUM_COMPONENTS) -> Tuple[Tensor, Tensor]:
    """(components (K, C, P, P), explained variance ratio (K,)) of (D, C, P, P) filters, largest first,
    K = min(num_components, D, C·P·P). A component's sign is arbitrary: its largest weight is made positive."""
    if weight.dim() != 4:
        raise ValueError(f"patch-embedding filters must be (D, C, P, P), got shape {tuple(weight.shape)}")
    x = weight.detach().double().flatten(1)
    _, singular, vh = torch.linalg.svd(x - x.mean(dim=0), full_matrices=False)
    top = vh[: int(num_components)]
    top = top * top.gather(1, top.abs().argmax(dim=1, keepdim=True)).sign()
    variance = singular**2
    return top.reshape(len(top), *weight.shape[1:]).float(), (variance[: len(top)] / variance.sum().clamp_min(1e-300)).float()
