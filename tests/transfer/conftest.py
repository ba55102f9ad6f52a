"""Fixtures of the transfer tests: run configs and `vit-ablate train` arguments of the shared tiny model."""

from __future__ import annotations

from typing import List

import pytest

from vit_ablate.config import load_config

from .helpers import RUN_MODEL


@pytest.fixture
def run_config(tiny_model):
    """``run_config(*overrides)`` → a resolved run config of the tiny model on the synthetic data (32 px, 8 classes)."""

    def make(*overrides: str):
        return load_config([], [*tiny_model.overrides(**RUN_MODEL), "data.name=synthetic", *overrides])

    return make


@pytest.fixture
def train_args(tiny_model) -> List[str]:
    """`vit-ablate train` arguments: one CPU epoch of the tiny model on a little synthetic data."""
    return [*tiny_model.overrides(**RUN_MODEL),
            "data.name=synthetic", "data.synthetic.num_train=64", "data.synthetic.num_val=32", "data.synthetic.num_test=32",
            "data.batch_size=32", "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.devices=1",
            "data.num_workers=0", "evaluate.fewshot=false", "logging.csv=false"]
