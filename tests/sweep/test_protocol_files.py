"""The protocol sweep files (sweeps/protocol/): W&B-valid grids whose every run configuration loads,
named after their file, with declared tests the report can parse and the seeds the protocol promises."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from vit_ablate.config import load_config
from vit_ablate.report.contrasts import parse_contrast_comments
from vit_ablate.sweep.engine import expand_command, grid_size, load_sweep, train_arguments, validate_sweep

from .helpers import REPO

PROTOCOLS = sorted((REPO / "sweeps" / "protocol").glob("*.yaml"))
DIAGNOSTICS = {"cpu_relative_diagnostics": 4}  # seeds of a diagnosis, not of a comparison's decision


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_each_comparison_has_a_cpu_and_a_gpu_protocol():
    stems = {p.stem for p in PROTOCOLS}
    for comparison in ("pos_embed", "pooling_lr", "hybrid", "norm"):
        assert {f"cpu_{comparison}", f"gpu_{comparison}"} <= stems


@pytest.mark.parametrize("path", PROTOCOLS, ids=[p.stem for p in PROTOCOLS])
def test_protocol_file_expands_to_valid_runs(path: Path):
    spec = load_sweep(path)
    assert spec.name == f"protocol_{path.stem}"
    assert validate_sweep(spec) == []
    params = spec.parameters
    names = sorted(params)
    values = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
    assert grid_size(spec.config) == math.prod(len(v) for v in values)
    # a sequential plan's seeds are its maximum, split into its stages; a fixed design has 8
    expected = spec.plan.max_seeds if spec.plan else DIAGNOSTICS.get(path.stem, 8)
    assert len(params["seed"]["values"]) == expected
    specs = parse_contrast_comments(spec.text, str(path))
    assert sum(s.role == "primary" for s in specs) == (0 if path.stem in DIAGNOSTICS else 1)
    for combo in itertools.product(*values):
        files, overrides = train_arguments(expand_command(spec.command, dict(zip(names, combo)), spec.config.get("program")))
        cfg = load_config(files, overrides)
        assert cfg.seed == dict(zip(names, combo))["seed"]
