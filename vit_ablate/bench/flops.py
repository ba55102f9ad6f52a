"""A model's FLOPs, counted by torch's ``FlopCounterMode``, and device peaks for MFU.

Counting runs on the ``meta`` device: instant, no memory, and attention takes the math path there,
whose matmuls the counter sees (on a CPU the fused SDPA kernel is missing from torch's table, and
its FLOPs would be dropped). FLOPs are 2 × multiply-accumulates of matmuls and convolutions;
element-wise work (norms, softmax, GELU) is not counted.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_model_flops", "device_peak_flops", "PEAK_BF16_FLOPS"]


def count_model_flops(model_cfg: Any, training: bool = False) -> int:
    """FLOPs per image of the model that ``model_cfg`` (a ``model`` config section) describes: its
    forward, or with ``training`` forward and backward (≈ 3 × forward). ViT-B/16 at 224: 35.13 G."""
    from vit_ablate.model import build_model

    with torch.device("meta"):
        model = build_model(model_cfg)
        images = torch.empty(1, model.spec.in_chans, model.spec.img_size, model.spec.img_size)
    # grad stays enabled even for the forward: torch's ModuleTracker trips over no_grad + expanded parameters
    with FlopCounterMode(display=False) as counter:
        logits = model(images)
        if training:
            logits.float().sum().backward()
    return int(counter.get_total_flops())


# Dense bf16 tensor-core FLOP/s (vendor data sheets), matched against torch.cuda.get_device_name() in
# this order: the more specific names first ("H100 PCIe" before "H100", "H200" before "H20").
PEAK_BF16_FLOPS: Tuple[Tuple[Tuple[str, ...], float], ...] = (
    (("GH200",), 989e12),
    (("H200",), 989e12),
    (("H100", "PCIE"), 756e12),
    (("H100", "NVL"), 835e12),
    (("H100",), 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
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
    """(peak dense bf16 FLOP/s or None, where it came from); ``override_tflops`` (--peak-tflops) wins."""
    if override_tflops is not None:
        return float(override_tflops) * 1e12, "--peak-tflops"
    name = (device_name or "").upper()
    for needles, peak in PEAK_BF16_FLOPS:
        if all(needle in name for needle in needles):
            return peak, f"table ({' '.join(needles)})"
    return None, "unknown device"
