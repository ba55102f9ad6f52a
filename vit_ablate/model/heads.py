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
        # Zero for fine-tuning (paper §3.1); from scratch timm's truncated normal: a zero head leaves the
        # features without gradient until the head has moved, which costs a short run its first steps
        # (results/bench/timm_epoch: +2.8 points after one CIFAR-10 epoch).
        nn.init.zeros_(self.fc.bias)
        if spec.head_zero_init:
            nn.init.zeros_(self.fc.weight)
        else:
            nn.init.trunc_normal_(self.fc.weight, std=0.02)


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
