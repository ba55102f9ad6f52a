"""The shipped sweep files: W&B-valid, grids that are the cartesian product of their values, every run's
configuration valid, and the header comments the report reads."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from vit_ablate.config import load_config
from vit_ablate.sweep.engine import expand_command, grid_size, load_sweep, propose, proposal_seed, train_arguments, validate_sweep

from .helpers import REPO, SWEEPS

# How many runs each shipped file expands to (2 × 3 × 3 = 18: the product of its value counts).
EXPECTED_RUNS = {
    "pos_embed": 12,
    "pos_embed_at": 18,
    "pooling_lr": 24,
    "hybrid": 12,
    "norm": 24,
    "quickstart": 12,
    "cpu_pos_embed": 15,
    "cpu_pooling_lr": 12,
    "gpu_short_pooling_lr": 12,
}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the commands name experiments/... relative to the repository


def _ids(paths):
    return [p.stem for p in paths]


def _experiment_files(spec):
    first = {k: (v.get("values") or [v.get("value")])[0] for k, v in spec.parameters.items()}
    files, _ = train_arguments(expand_command(spec.command, first, spec.config.get("program")))
    return files


def _require_experiments(spec):
    missing = [f for f in _experiment_files(spec) if not (REPO / f).is_file()]
    if missing:
        pytest.fail(f"{spec.path.name}: its command names experiment file(s) {missing} that the repository lacks")


def test_every_comparison_is_shipped():
    assert sorted(p.stem for p in SWEEPS) == sorted(EXPECTED_RUNS)


@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_grid_is_the_cartesian_product(path: Path):
    spec = load_sweep(path)
    params = spec.parameters
    names = sorted(params)  # W&B's grid order: names sorted, the first varying slowest
    values = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
    product = [dict(zip(names, combo)) for combo in itertools.product(*values)]

    runs, proposed = [], []
    from vit_ablate.sweep.engine import _sweeps

    sweeps = _sweeps()

    while True:
        params_ = propose(spec.config, runs, proposal_seed(spec.name, len(runs)))
        if params_ is None:
            break
        proposed.append(params_)
        runs.append(sweeps.SweepRun(name=f"r{len(runs)}", config={k: {"value": v} for k, v in params_.items()}))
    assert len(proposed) == len(product) == EXPECTED_RUNS[path.stem] == grid_size(spec.config)
    assert proposed == product


@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_every_run_configuration_loads(path: Path):
    spec = load_sweep(path)
    _require_experiments(spec)
    assert validate_sweep(spec) == []
    params = spec.parameters
    names = sorted(params)
    values = [params[n]["values"] if "values" in params[n] else [params[n]["value"]] for n in names]
    for combo in itertools.product(*values):
        argv = expand_command(spec.command, dict(zip(names, combo)), spec.config.get("program"))
        files, overrides = train_arguments(argv)
        cfg = load_config(files, overrides)
        for name, value in zip(names, combo):
            if name == "seed":
                assert cfg.seed == value
            else:
                section, key = name.split(".", 1)
                assert str(cfg[section][key]) == str(value) or cfg[section][key] == value, (name, value)
        assert cfg.trainer.progress_bar is False


@pytest.mark.parametrize("path", SWEEPS, ids=_ids(SWEEPS))
def test_header_comments(path: Path):
    spec = load_sweep(path)
    text = spec.text
    # the command is exactly what the W&B agent runs: vit-ablate train <experiment> ... ${args_no_hyphens}
    command = spec.config["command"]
    assert command[:2] == ["vit-ablate", "train"] and command[-1] == "${args_no_hyphens}"
    assert spec.config["metric"] == {"name": "val/acc1", "goal": "maximize"}
    assert len(spec.parameters["seed"]["values"]) >= 3
    assert "experiments/imagenet_vit_b16.yaml" in text or path.stem.startswith("cpu_")
    assert "paper" in text.lower() or "Xiong" in text
    # the baseline names exactly one group: every swept key but the seed
    swept = {k for k, v in spec.parameters.items() if "values" in v and len(v["values"]) > 1} - {"seed"}
    assert spec.baseline is not None and set(spec.baseline) == swept
    for key, value in spec.baseline.items():
        assert any(str(v) == value or _same_number(v, value) for v in spec.parameters[key]["values"]), (key, value)
    if path.stem != "norm":  # Xiong et al. report BLEU on translation: no comparable number
        assert spec.references, "every paper comparison quotes its numbers"
    for ref in spec.references:
        assert 0 < ref["value"] < 1 and ref["metric"] and ref["source"]
        for key, value in ref["params"].items():
            assert key in spec.parameters, (key, "a reference must select runs by swept keys")


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def test_table8_numbers():
    refs = {r["params"]["model.pos_embed"]: r["value"] for r in load_sweep(REPO / "sweeps/pos_embed.yaml").references}
    assert refs == {"none": 0.61382, "1d": 0.64206, "2d": 0.64001, "relative": 0.64032}
    at = load_sweep(REPO / "sweeps/pos_embed_at.yaml").references
    assert {(r["params"]["model.pos_embed"], r["params"]["model.pos_embed_at"]): r["value"] for r in at} == {
        ("1d", "input"): 0.64206, ("1d", "every_layer"): 0.63964, ("1d", "every_layer_shared"): 0.64292,
        ("2d", "input"): 0.64001, ("2d", "every_layer"): 0.64046, ("2d", "every_layer_shared"): 0.64022,
    }


def test_learning_rates_are_numbers_to_yaml():
    """PyYAML (what `wandb sweep` uses) reads 8e-4 as a string; the files must write 8.0e-4."""
    for path in SWEEPS:
        for name, param in load_sweep(path).parameters.items():
            for value in param.get("values", [param.get("value")]):
                if name.startswith("optim."):
                    assert isinstance(value, (int, float)), (path.name, name, value)


def test_sweep_names_are_file_stems():
    for path in SWEEPS:
        assert load_sweep(path).name == path.stem
        assert os.path.basename(path).endswith(".yaml")
