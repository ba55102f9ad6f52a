"""The size table: one source of truth for the names "Ti/16" … "H/14".

Ti and S are DeiT's (Touvron et al. 2021); B, L and H are the ViT paper's Table 1.
"""

from __future__ import annotations

import re
from typing import Dict, Tuple

from vit_ablate.schema import ConfigError, did_you_mean

# name: (hidden size D, layers, heads, MLP size)
SIZES: Dict[str, Tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),  # paper Table 1: 86M
    "L": (1024, 24, 16, 4096),  # paper Table 1: 307M
    "H": (1280, 32, 16, 5120),  # paper Table 1: 632M
}


def parse_variant(variant: str) -> Dict[str, int]:
    """``"B/16"`` → ``{"dim": 768, "depth": 12, "heads": 12, "mlp_dim": 3072, "patch_size": 16}``."""
    match = re.fullmatch(r"(?P<size>[A-Za-z]+)/(?P<patch>[1-9]\d*)", str(variant).strip())
    if not match or match["size"] not in SIZES:
        raise ConfigError(
            f"model.variant={variant!r} is not valid; use '<size>/<patch>' with size one of {', '.join(SIZES)} "
            f"(e.g. 'B/16', 'Ti/4'){did_you_mean(str(variant).partition('/')[0], SIZES)}"
        )
    dim, depth, heads, mlp_dim = SIZES[match["size"]]
    return {"dim": dim, "depth": depth, "heads": heads, "mlp_dim": mlp_dim, "patch_size": int(match["patch"])}
