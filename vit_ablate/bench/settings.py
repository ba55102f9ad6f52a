"""The benchmark's constants: sections, the project's performance targets, the component list, reference anchors."""

from __future__ import annotations

from typing import Dict, Tuple

SECTIONS = ("model", "components", "framework", "data", "startup", "gpu")

# The project's performance targets: a row is met when its ratio is at least this.
TARGETS = {
    "model": 1.00,  # ours / timm
    "components": 0.90,  # variant / default: each component costs at most 10 %
    "framework": 0.97,  # Lightning / plain loop: at most a 3 % tax per step
    "data": 10.0,  # loader img/s / model img/s
    "gpu_mfu": 0.45,  # ViT-B/16 bf16 model FLOPs utilisation
}

# The paper-default model of the same size, which component costs are measured against.
DEFAULT_COMPONENTS = {"norm": "pre", "pool": "cls", "pos_embed": "1d", "pos_embed_at": "input", "stem": "patch", "head": "linear"}
CORE_COMPONENTS: Tuple[Tuple[str, str], ...] = (("pos_embed", "relative"), ("pos_embed", "2d"), ("pool", "gap"), ("norm", "post"))
EXTRA_COMPONENTS: Tuple[Tuple[str, str], ...] = (("pos_embed", "rope2d"), ("pos_embed", "sincos2d"), ("pool", "map"), ("stem", "conv"))

# shared/paper_reference.md: this project's own CPU reference (2-core machine, timm VisionTransformer,
# batch 128, AdamW, fp32), measured on a quiet machine. Matched on (img, patch, dim, depth).
CPU_ANCHORS: Tuple[Tuple[Dict[str, int], float], ...] = (
    ({"img_size": 32, "patch_size": 4, "dim": 192, "depth": 12}, 49.0),
    ({"img_size": 32, "patch_size": 4, "dim": 192, "depth": 6}, 105.0),
    ({"img_size": 32, "patch_size": 8, "dim": 128, "depth": 4}, 1071.0),
)

MFU_REFERENCE = {"variant": "B/16", "img_size": 224, "num_classes": 1000}  # the model the MFU target is stated for
ENV_ROUNDS = "VIT_ABLATE_BENCH_ROUNDS"
ENV_WARMUP = "VIT_ABLATE_BENCH_WARMUP"
ENV_COMPONENTS = "VIT_ABLATE_BENCH_COMPONENTS"
LOSS_TOLERANCE = 1e-6
STANDIN_BYTES = 256 * 2**20  # memory budget of a stand-in training split
