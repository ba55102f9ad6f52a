"""Principal components of the patch-embedding filters (paper Figure 7 left).

The ``patch`` stem is a linear map of flattened P×P×C patches to D dimensions: D filters of
C·P·P weights (the stride-P convolution ``stem.proj``). Their principal components — the right
singular vectors of the centred (D, C·P·P) filter matrix, ordered by explained variance — resemble
plausible basis functions for a low-dimensional representation of the fine structure within each
patch. The paper shows the top 28 as P×P RGB tiles.

The ``hybrid`` and ``conv`` stems have no per-patch linear filters on pixels, so they get a note.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = ["patch_filter_pca", "patch_filters", "no_filters_note", "NUM_COMPONENTS"]

NUM_COMPONENTS = 28  # as in the paper's figure


@torch.no_grad()
def patch_filters(model) -> Optional[Tensor]:
    """The (D, C, P, P) patch-embedding filters of a ``patch``-stem model (CPU), or None."""
    if model.spec.stem != "patch":
        return None
    return model.stem.proj.weight.detach().float().cpu()


def no_filters_note(model) -> str:
    return (
        f"patch-embedding filter PCA: not drawn — model.stem={model.spec.stem!r} has no linear per-patch "
        f"filters on pixels (only the patch stem has)"
    )


def patch_filter_pca(weight: Tensor, num_components: int = NUM_COMPONENTS) -> Tuple[Tensor, Tensor]:
    """Principal components of (D, C, P, P) filters: ``(components (K, C, P, P), explained variance
    ratio (K,))``, K = min(num_components, D, C·P·P), largest first. Filters are centred over D first;
    a component's sign is arbitrary (fixed here so that its largest-magnitude weight is positive)."""
    if weight.dim() != 4:
        raise ValueError(f"patch-embedding filters must be (D, C, P, P), got shape {tuple(weight.shape)}")
    d, c, ph, pw = weight.shape
    x = weight.detach().double().reshape(d, c * ph * pw)
    x = x - x.mean(dim=0, keepdim=True)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    variance = s**2
    total = variance.sum().clamp_min(1e-300)
    k = min(int(num_components), vh.shape[0])
    components = vh[:k]
    flip = components.gather(1, components.abs().argmax(dim=1, keepdim=True)).sign()
    components = components * torch.where(flip == 0, torch.ones_like(flip), flip)
    return components.reshape(k, c, ph, pw).float(), (variance[:k] / total).float()
