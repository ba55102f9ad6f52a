"""The analysis tests' tiny model and data, and checkpoint files (no training needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch

from vit_ablate.config import to_container
from vit_ablate.model import build_model

# What the analysis tests change of the shared tiny model (conftest.py: tiny_model): 2 layers of 2 heads
# on the synthetic data's 32-px images, 4×4 patches of 8 px.
RUN_MODEL = dict(variant="Ti/8", depth=2, heads=2)
TINY_DATA = [
    "data.name=synthetic",
    "data.synthetic.num_train=96",
    "data.synthetic.num_val=40",
    "data.synthetic.num_test=16",
    "data.batch_size=16",
    "evaluate.fewshot_shots=[1,5]",
    "evaluate.fewshot_draws=2",
]


def write_checkpoint(
    path: Path,
    cfg,
    model: Optional[torch.nn.Module] = None,
    *,
    ema: Optional[torch.nn.Module] = None,
    with_config: bool = True,
    extra: Optional[Dict[str, torch.Tensor]] = None,
) -> Path:
    """A Lightning-style checkpoint file: hyper_parameters['config'] and `model.`-prefixed tensors."""
    torch.manual_seed(0)
    model = model if model is not None else build_model(cfg.model)
    state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    if ema is not None:
        state.update({f"ema.module.{k}": v.clone() for k, v in ema.state_dict().items()})
    state.update(extra or {})
    blob = {"state_dict": state, "epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.x"}
    if with_config:
        blob["hyper_parameters"] = {"config": to_container(cfg)}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path
