"""The data tests' config and a stand-in for what a data module reads from its trainer."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="session")
def tiny(tiny):
    """The suite's tiny run (tests/conftest.py) without ``validate_config``, which would import the model
    package that these tests do not depend on."""
    return tiny.but(validate=False)


def fake_trainer(world_size: int = 1, global_rank: int = 0, device: str = "cpu"):
    """What a data module reads from its trainer: world size, rank and the root device."""
    return SimpleNamespace(
        world_size=world_size,
        global_rank=global_rank,
        strategy=SimpleNamespace(root_device=torch.device(device)),
    )


# Fixtures hand out the helpers: importing ``conftest`` by name would be ambiguous across test folders.
@pytest.fixture
def trainer_stub():
    return fake_trainer
