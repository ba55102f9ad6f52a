"""A position-dependent task for the transfer tests, and a model trained on it."""

from __future__ import annotations

from typing import Dict

import torch
import torch.nn.functional as F

from vit_ablate.model import build_model

# what the halves tests change of the transfer tests' tiny model (conftest.py); they set img_size
HALVES_MODEL = dict(num_classes=2, head_zero_init=False)  # halves_task has two classes


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

