"""How pixels become tokens (``model.stem``), paper §3.1.

``patch``  — the pure ViT: non-overlapping P×P patches, linearly projected (a stride-P conv, timm's
             PatchEmbed).
``hybrid`` — the paper's hybrid: a ResNet feature map cut into 1×1 patches (timm's ResNetV2 and
             HybridEmbed, exactly what timm's ``vit_base_r50_s16_224`` builds). ``hybrid_stage: 4``
             uses ResNet-50 up to stage 4 (stride 32); ``hybrid_stage: 3`` removes stage 4 and moves its
             blocks into stage 3 (layers 3, 4, 9; stride 16, a 4× longer sequence). "/16" in a hybrid's
             name is this total stride.
``conv``   — a small stack of stride-2 3×3 convolutions with BatchNorm and ReLU, then a 1×1
             projection (Xiao et al. 2021, "Early convolutions help transformers see better").
"""

from __future__ import annotations

import math
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import HybridEmbed, PatchEmbed, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from torch import nn

from vit_ablate.model.schema import STEMS, ModelConfig
from vit_ablate.schema import ConfigError

# paper §3.1: ResNet-50 up to stage 4, or with stage 4 folded into stage 3.
HYBRID_STAGE_LAYERS: Dict[int, List[int]] = {3: [3, 4, 9], 4: [3, 4, 6, 3]}


class Stem(nn.Module):
    grid_size: Tuple[int, int]
    timm_names: Optional[Dict[str, str]] = {"": "patch_embed."}  # None: timm has no equivalent

    @classmethod
    def check(cls, spec: ModelConfig) -> None:
        """Raise ConfigError for a model this stem cannot serve (resolve_spec checks that the patch tiles the image)."""


@STEMS.register("patch")
class PatchStem(Stem):
    """Linear projection of flattened P×P patches (paper eq. 1)."""

    def __init__(self, spec: ModelConfig):
        super().__init__()
        embed = PatchEmbed(spec.img_size, spec.patch_size, spec.in_chans, spec.dim)
        # The weights stay those of timm's stride-P conv (`patch_embed.proj.*` converts by prefix);
        # the forward applies them as the matrix of eq. 1 to the flattened patches.
        self.proj = embed.proj
        self.patch_size = spec.patch_size
        self.grid_size = tuple(embed.grid_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # A reshape and one matmul rather than the conv: the same numbers (the conv's weight read as
        # a D × (C·P·P) matrix), without cuDNN's layout conversions of the images on a GPU
        # (results/bench/gpu_whole_step).
        batch, chans, height, width = images.shape
        p = self.patch_size
        patches = images.reshape(batch, chans, height // p, p, width // p, p).permute(0, 2, 4, 1, 3, 5)
        patches = patches.reshape(batch, (height // p) * (width // p), chans * p * p)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def hybrid_layers(spec: ModelConfig) -> List[int]:
    return list(spec.hybrid_layers or HYBRID_STAGE_LAYERS[spec.hybrid_stage])


def hybrid_stride(layers: List[int]) -> int:
    # ResNetV2 "same" stem: conv stride 2 + max-pool stride 2; every stage after the first halves again.
    return 4 * 2 ** (len(layers) - 1)


@STEMS.register("hybrid")
class HybridStem(Stem):
    """ResNetV2 (BiT-style, standardised convs, GroupNorm) feature map → 1×1 patches → D."""

    @classmethod
    def check(cls, spec: ModelConfig) -> None:
        layers = hybrid_layers(spec)
        if not 1 <= len(layers) <= 4:
            raise ConfigError(f"model.hybrid_layers={layers} must hold 1 to 4 block counts")
        stride = hybrid_stride(layers)
        if spec.patch_size != stride:
            raise ConfigError(
                f"model.patch_size={spec.patch_size} does not match the hybrid stem's total stride {stride} "
                f"(ResNet layers {layers}); a hybrid's '/P' is its stride: use variant '<size>/{stride}'"
            )
        if spec.img_size % stride:
            raise ConfigError(f"model.img_size={spec.img_size} is not divisible by the hybrid stem's stride {stride}")

    def __init__(self, spec: ModelConfig):
        super().__init__()
        backbone = ResNetV2(layers=hybrid_layers(spec), num_classes=0, global_pool="", in_chans=spec.in_chans, preact=False,
                            stem_type="same", conv_layer=partial(StdConv2dSame, eps=1e-8))
        embed = HybridEmbed(backbone, img_size=spec.img_size, patch_size=1, in_chans=spec.in_chans, embed_dim=spec.dim)
        self.backbone = embed.backbone
        self.proj = embed.proj
        self.grid_size = tuple(embed.grid_size)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.backbone(images)
        return self.proj(features).flatten(2).transpose(1, 2)


@STEMS.register("conv")
class ConvStem(Stem):
    """log2(P) stride-2 3×3 conv + BN + ReLU layers, then a 1×1 conv to D (Xiao et al. 2021)."""

    timm_names = None

    @classmethod
    def check(cls, spec: ModelConfig) -> None:
        if spec.patch_size < 2 or spec.patch_size & (spec.patch_size - 1):
            raise ConfigError(f"model.stem='conv' needs a power-of-two model.patch_size ≥ 2 (got {spec.patch_size})")

    @staticmethod
    def widths(spec: ModelConfig) -> List[int]:
        steps = int(math.log2(spec.patch_size))
        return [max(16, spec.dim >> (steps - i)) for i in range(steps)]

    def __init__(self, spec: ModelConfig):
        super().__init__()
        layers: List[nn.Module] = []
        channels = spec.in_chans
        for width in self.widths(spec):
            layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            channels = width
        self.convs = nn.Sequential(*layers, nn.Conv2d(channels, spec.dim, 1))
        self.grid_size = (spec.grid_side, spec.grid_side)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.convs(images).flatten(2).transpose(1, 2)
