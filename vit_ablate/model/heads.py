"""The classifier on the pooled representation (``model.head``), paper §3.1."""

from __future__ import annotations

from typing import Dict, Optional

import torch
from torch import nn

from vit_ablate.model.schema import HEADS, ModelConfig


class Head(nn.Module):
    timm_names: Optional[Dict[str, str]] = {}  # None: timm has no equivalent

    def __init__(self, spec: ModelConfig, in_features: Optional[int] = None):
        super().__init__()
        self.drop = nn.Dropout(spec.dropout)
        self.fc = nn.Linear(in_features or spec.dim, spec.num_classes)
        # Zero for fine-tuning (paper §3.1). From scratch nn.Linear's own init (std 1/√(3·D), initial logits
        # of the same spread at any width): a zero head leaves the features without gradient until it has
        # moved, and timm's std 0.02 nearly so at small D (results/bench/timm_epoch: after one CIFAR-10
        # epoch, +2.7 points over zero and +1.3 over std 0.02, 4 seeds).
        if spec.head_zero_init:
            nn.init.zeros_(self.fc.weight)
            nn.init.zeros_(self.fc.bias)


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

    def __init__(self, spec: ModelConfig):
        super().__init__(spec, spec.head_hidden_dim)
        self.pre_logits = nn.Linear(spec.dim, spec.head_hidden_dim)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(torch.tanh(self.pre_logits(pooled))))
