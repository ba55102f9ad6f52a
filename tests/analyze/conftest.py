"""Fixtures of the analysis tests: run configs of the shared tiny model, tiny checkpoints in a run-directory layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from vit_ablate.config import load_config

from .helpers import RUN_MODEL, TINY_DATA, write_checkpoint


@pytest.fixture
def tiny_config(tiny_model):
    """``tiny_config(*overrides)`` → the resolved run config of the tiny model on a small synthetic dataset."""

    def make(*overrides: str):
        return load_config([], [*tiny_model.overrides(**RUN_MODEL), *TINY_DATA, *overrides])

    return make


@pytest.fixture
def make_checkpoint(tmp_path: Path, tiny_config):
    """``make_checkpoint(*overrides)`` → path of ``<tmp>/run/checkpoints/last.ckpt`` of a tiny model."""

    def make(*overrides: str, name: str = "run"):
        cfg = tiny_config(*overrides)
        return write_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt", cfg)

    return make
