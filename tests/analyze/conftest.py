"""Fixtures of the analysis tests: tiny checkpoints in a run-directory layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import tiny_config, write_checkpoint


@pytest.fixture
def make_checkpoint(tmp_path: Path):
    """``make_checkpoint(*overrides)`` → path of ``<tmp>/run/checkpoints/last.ckpt`` of a tiny model."""

    def make(*overrides: str, name: str = "run"):
        cfg = tiny_config(*overrides)
        return write_checkpoint(tmp_path / name / "checkpoints" / "last.ckpt", cfg)

    return make
