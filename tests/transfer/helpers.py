"""What the transfer tests change of the shared tiny model, a position-dependent task and checkpoint files."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn.functional as F

from vit_ablate.config import to_container
from vit_ablate.model import build_model

# changes to the shared tiny model (conftest.py: tiny_model)
HALVES_MODEL = dict(depth=2, num_classes=2, head_zero_init=False)  # halves_task has two classes; tests set img_size
RUN_MODEL = dict(variant="Ti/8", depth=2, heads=2)  # run configs and `vit-ablate train` on the synthetic data


def halves_task(count: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Red over blue (label 0) or blue over red (label 1), with noise.

    Both classes have the same colours in the same amounts, so a bag of patches cannot tell them apart:
    the model must use where a patch is. The answer does not depend on the image size.
    """
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 2, (count,), generator=gen)
    red = torch.tensor([1.0, -1.0, -1.0])[:, None, None]
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None]
    images = torch.empty(count, 3, size, size)
    half = size // 2
    for i, label in enumerate(labels.tolist()):
        top, bottom = (red, blue) if label == 0 else (blue, red)
        images[i, :, :half] = top
        images[i, :, half:] = bottom
    images += 0.8 * torch.randn(images.shape, generator=gen)
    return images, labels


def train_on_halves(model_cfg: Dict, steps: int = 120, seed: int = 0) -> torch.nn.Module:
    """A few seconds of AdamW on ``halves_task`` (one thread: a tiny model is fastest so on a busy CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        model = build_model(model_cfg)
        with torch.no_grad():  # tables start at std 0.02: make position count from the first step
            for name, param in model.named_parameters():
                if name.startswith("pos_embed") or ".position." in name:
                    param.mul_(25)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
        images, labels = halves_task(512, model_cfg["img_size"], seed=seed)
        model.train()
        for step in range(steps):
            batch = torch.arange(step * 64, step * 64 + 64) % len(labels)
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return model.eval()


@torch.no_grad()
def accuracy(model: torch.nn.Module, size: int, seed: int = 123) -> float:
    images, labels = halves_task(256, size, seed=seed)
    return (model.eval()(images).argmax(-1) == labels).float().mean().item()


def write_checkpoint(path: Path, cfg, model: Optional[torch.nn.Module] = None, extra: Optional[Dict] = None) -> Path:
    """A Lightning-style checkpoint file: hyper_parameters['config'] and `model.`-prefixed tensors."""
    torch.manual_seed(0)
    model = model if model is not None else build_model(cfg.model)
    blob = {"state_dict": {f"model.{k}": v.clone() for k, v in model.state_dict().items()},
            "hyper_parameters": {"config": to_container(cfg)}, "epoch": 1, "global_step": 4, **(extra or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(blob, path)
    return path
