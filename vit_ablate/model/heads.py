"""The classifier on the pooled representation (``model.head``), paper §3.1."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from vit_ablate.model.schema import HEADS



class Head(nn.Module):
    timm_names: Optional[Dict[str, str]] = {}  # None: timm has no equivalent

    def __init__(self, dim: int, num_classes: int, hidden_dim: int, dropout: float, zero_init: bool):
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(self._in_features(dim, hidden_dim), num_classes)
        if zero_init:  # paper §3.1 (fine-tuning head) and big_vision's default for training from scratch
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)

    def _in_features(self, dim: int, hidden_dim: int) -> int:
        return dim

    @classmethod
    def flops(cls, dim: int, num_classes: int, hidden_dim: int) -> int:
        """Matmul FLOPs of the head for one image."""
        return 2 * dim * num_classes


@HEADS.register("linear")
class LinearHead(Head):
    """One linear layer: the paper's fine-tuning head."""

    timm_names = {"fc.": "head."}

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(pooled))


@HEADS.register("mlp")
class MLPHead(Head):
    """One tanh hidden layer then a linear classifier: the paper's pre-training head (§3.1)."""

    timm_names = None  # timm's VisionTransformer has no pre-logits layer any more

    def __init__(self, dim: int, num_classes: int, hidden_dim: int, dropout: float, zero_init: bool):
        super().__init__(dim, num_classes, hidden_dim, dropout, zero_init)
        self.pre_logits = nn.Linear(dim, hidden_dim)

    def _in_features(self, dim: int, hidden_dim: int) -> int:
        return hidden_dim

    @classmethod
    def flops(cls, dim: int, num_classes: int, hidden_dim: int) -> int:
        return 2 * dim * hidden_dim + 2 * hidden_dim * num_classes

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.tanh(self.pre_logits(pooled))))
