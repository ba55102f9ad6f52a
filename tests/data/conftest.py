"""Shared helpers of the data tests: a run config built straight from the schema (no model lookup)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from vit_ablate.config import RunConfig


def make_config(*overrides: str):
    """The default run config with ``key=value`` overrides, without ``validate_config`` (which would
    import the model package that these tests do not depend on)."""
    cfg = OmegaConf.structured(RunConfig)
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def fake_trainer(world_size: int = 1, global_rank: int = 0, device: str = "cpu"):
    """What a data module reads from its trainer: world size, rank and the root device."""
    return SimpleNamespace(
        world_size=world_size,
        global_rank=global_rank,
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )


# Fixtures hand out the helpers: importing ``conftest`` by name would be ambiguous across test folders.
@pytest.fixture
def make_cfg():
    return make_config


@pytest.fixture
def trainer_stub():
    return fake_trainer
