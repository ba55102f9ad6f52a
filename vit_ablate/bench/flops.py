"""Analytic FLOP counts of a ViT, the torch FlopCounterMode cross-check, and device peaks for MFU.

``vit_flops(spec)`` counts matrix-multiply FLOPs (2 × multiply-accumulates) from the model's spec alone:
the stem (patch conv, conv stem; the hybrid ResNet is counted by ``FlopCounterMode`` on the meta
device, since its layout lives in timm), per block qkv, attention scores, the attention-weighted sum,
the output projection and the two MLP layers, the relative-position logits when present, the pooling
(MAP's latent attention and MLP) and the head. Element-wise work (LayerNorm, GELU, softmax, RoPE,
adding tables) is not counted — neither does ``torch.utils.flop_counter``. Training ≈ 3 × forward
(forward, plus the gradients with respect to activations and to weights).

SDPA counting: ``FlopCounterMode`` knows the CUDA SDPA kernels (flash, mem-efficient, cuDNN) but not the
CPU fused kernel ``_scaled_dot_product_flash_attention_for_cpu``, so on a CPU it silently drops every
attention-score and weighted-sum FLOP (ViT-B/16: 16.85 instead of 17.56 GMACs). ``count_flops`` adds
that kernel (forward and backward) to the mapping; counting on the ``meta`` device runs the math path,
whose matmuls are counted anyway.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn

from vit_ablate.model import ViTSpec, resolve_spec

__all__ = [
    "vit_flops",
    "vit_flops_breakdown",
    "count_flops",
    "count_model_flops",
    "PEAK_BF16_FLOPS",
    "device_peak_flops",
    "PEAK_ENV",
]


# --------------------------------------------------------------------------------------------
# Analytic count
# --------------------------------------------------------------------------------------------
def _as_spec(spec: Any) -> ViTSpec:
    return spec if isinstance(spec, ViTSpec) else resolve_spec(spec)


def vit_flops_breakdown(spec: Any) -> Dict[str, int]:
    """Forward FLOPs of ONE image by part: stem, qkv, attention, proj, mlp, relative, pool, head.

    The transformer's own matmuls are counted here; each component states the cost of what it adds
    (``flops``/``attention_flops`` on the stem, position-embedding, pooling and head classes).
    """
    spec = _as_spec(spec)
    from vit_ablate.model.heads import HEADS
    from vit_ablate.model.pooling import POOLINGS
    from vit_ablate.model.pos_embed import POSITION_EMBEDDINGS
    from vit_ablate.model.stems import STEMS
    from vit_ablate.model.vit import _position_context

    d, m, depth = spec.dim, spec.mlp_dim, spec.depth
    pool = POOLINGS.get(spec.pool)
    ctx = _position_context(spec, pool.num_prefix_tokens, (spec.grid_side, spec.grid_side))
    t = ctx.num_patches + ctx.num_prefix_tokens
    return {
        "stem": STEMS.get(spec.stem).flops(spec),
        "qkv": depth * 2 * t * d * 3 * d,
        # scores q·kᵀ and the weighted sum softmax·v: each 2·T²·(heads·head_dim) = 2·T²·D
        "attention": depth * 2 * (2 * t * t * d),
        "proj": depth * 2 * t * d * d,
        "mlp": depth * 2 * (2 * t * d * m),
        "relative": depth * POSITION_EMBEDDINGS.get(spec.pos_embed).attention_flops(ctx),
        "pool": pool.flops(d, m, t),
        "head": HEADS.get(spec.head).flops(d, spec.num_classes, spec.head_hidden_dim),
    }


def vit_flops(spec: Any, batch: int = 1, training: bool = False) -> int:
    """Matmul FLOPs (2·MACs) of ``batch`` images through the model described by ``spec``.

    ``spec``: a ViTSpec or anything ``resolve_spec`` takes (the ``model`` config section, a dict).
    ``training``: forward + backward ≈ 3 × forward. ViT-B/16 at 224: 35.13 GFLOPs forward
    (17.57 GMACs; the reference quotes 17.58), ≈ 105 GFLOPs per training image.
    """
    forward = sum(vit_flops_breakdown(spec).values()) * int(batch)
    return 3 * forward if training else forward


# --------------------------------------------------------------------------------------------
# FlopCounterMode cross-check
# --------------------------------------------------------------------------------------------
def _cpu_sdpa_mapping() -> Dict[Any, Any]:
    """FLOP formulas for the CPU fused SDPA kernel, which torch's registry lacks."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping: Dict[Any, Any] = {}
    forward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward_op = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)

    if forward_op is not None:

        def forward(query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_flop_count(query, key, value)

        mapping[forward_op] = forward
    if backward_op is not None:

        def backward(grad_out, query, key, value, *args, out_shape=None, **kwargs):
            return sdpa_backward_flop_count(grad_out, query, key, value)

        mapping[backward_op] = backward
    return mapping


def count_flops(fn, *args, **kwargs) -> Tuple[Any, int, Dict[str, int]]:
    """Run ``fn(*args, **kwargs)`` under ``FlopCounterMode`` (with the CPU SDPA kernel counted).

    Returns ``(result, total FLOPs, {op name: FLOPs})``.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping()) as counter:
        result = fn(*args, **kwargs)
    by_op = {str(op): int(n) for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return result, int(counter.get_total_flops()), by_op


def count_model_flops(model: nn.Module, batch: int = 1, training: bool = False, device: Any = "meta") -> int:
    """FLOPs that ``torch.utils.flop_counter`` measures for ``batch`` images (forward, or forward and
    backward of a summed output). Default on the ``meta`` device: instant, no memory; the model must
    live there too (build it under ``with torch.device("meta")``) or pass its device."""
    spec = model.spec
    images = torch.empty(batch, spec.in_chans, spec.img_size, spec.img_size, device=device)
    if training:

        def run():
            model(images).float().sum().backward()

    else:

        def run():  # grad stays enabled: torch's ModuleTracker trips over no_grad + expanded parameters
            model(images)

    _, total, _ = count_flops(run)
    return total


# --------------------------------------------------------------------------------------------
# Device peaks (dense bf16 tensor-core FLOP/s, vendor data sheets) for MFU
# --------------------------------------------------------------------------------------------
PEAK_ENV = "VIT_ABLATE_BENCH_PEAK_TFLOPS"

# Matched against torch.cuda.get_device_name() in this order (first match wins; the more specific
# names come first: "H100 PCIe" before "H100", "H200" before "H20").
PEAK_BF16_FLOPS: Tuple[Tuple[Tuple[str, ...], float], ...] = (
    (("GH200",), 989e12),
    (("H200",), 989e12),
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM (device name "NVIDIA H100 80GB HBM3")
    (("H800", "PCIE"), 756e12),
    (("H800",), 989e12),
    (("H20",), 148e12),
    (("B200",), 2250e12),
    (("A100",), 312e12),
    (("A800",), 312e12),
    (("L40S",), 362e12),
    (("L40",), 181e12),
    (("L4",), 121e12),
    (("A10G",), 70e12),
    (("A10",), 125e12),
    (("RTX 4090",), 165e12),
    (("RTX 6000 ADA",), 364e12),
    (("RTX A6000",), 155e12),
)


def device_peak_flops(device_name: Optional[str], override_tflops: Optional[float] = None) -> Tuple[Optional[float], str]:
    """(peak dense bf16 FLOP/s or None, where it came from). An explicit override or the
    ``VIT_ABLATE_BENCH_PEAK_TFLOPS`` environment variable (in TFLOP/s) wins over the table."""
    if override_tflops is None and os.environ.get(PEAK_ENV):
        try:
            override_tflops = float(os.environ[PEAK_ENV])
        except ValueError:
            raise ValueError(f"{PEAK_ENV}={os.environ[PEAK_ENV]!r} is not a number (TFLOP/s)") from None
    if override_tflops is not None:
        return float(override_tflops) * 1e12, "override"
    name = (device_name or "").upper()
    for needles, peak in PEAK_BF16_FLOPS:
        if all(needle in name for needle in needles):
            return peak, f"table ({' '.join(needles)})"
    return None, "unknown device"
