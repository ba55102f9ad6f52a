"""Fixtures for the report tests; the fabricated directories themselves are in fabricate.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from .fabricate import make_sweep


@pytest.fixture
def sweep_dir(tmp_path: Path) -> Path:
    return make_sweep(tmp_path)
