"""Proposals (W&B's own `sweeps` engine), the agent's macros, validation, hyperband, GPU slots."""

from __future__ import annotations

import json
import random

import warnings

import numpy as np
import pytest

with warnings.catch_warnings():  # pydantic's notice about the sweeps package's model config
    warnings.simplefilter("ignore", UserWarning)
    import sweeps

from vit_ablate import cli
from vit_ablate.config import ConfigError
from vit_ablate.sweep import run_sweep
from vit_ablate.sweep.engine import (
    expand_command,
    insert_overrides,
    load_sweep,
    propose,
    proposal_seed,
    runs_to_stop,
    to_sweep_run,
    train_arguments,
)
from vit_ablate.sweep.local import gpu_slots

from .helpers import REPO, write_sweep

RANDOM = {
    "method": "random",
    "metric": {"name": "val/acc1", "goal": "maximize"},
    "parameters": {
        "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 3e-3},
        "optim.weight_decay": {"distribution": "uniform", "min": 0.0, "max": 0.3},
        "model.depth": {"distribution": "int_uniform", "min": 1, "max": 4},
        "model.pool": {"values": ["cls", "gap"]},
        "seed": {"value": 0},
    },
}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _as_run(name, params):
    return sweeps.SweepRun(name=name, config={k: {"value": v} for k, v in params.items()})


# ------------------------------------------------------------------------------------------ proposals
def test_grid_proposals_equal_the_sweeps_engine():
    config = load_sweep(REPO / "sweeps/pooling_lr.yaml").config
    ours, theirs = [], []
    while True:
        got = propose(config, [_as_run(f"r{i}", p) for i, p in enumerate(ours)], proposal_seed("pooling_lr", len(ours)))
        if got is None:
            break
        ours.append(got)
    while True:
        run = sweeps.next_run(config, [_as_run(f"r{i}", p) for i, p in enumerate(theirs)], validate=True)
        if run is None:
            break
        theirs.append({k: v["value"] for k, v in run.config.items()})
    assert len(ours) == 24 and ours == theirs
    # W&B's order: names sorted, first slowest: model.pool, optim.lr, seed
    assert ours[:4] == [
        {"model.pool": "cls", "optim.lr": 1e-3, "seed": 0},
        {"model.pool": "cls", "optim.lr": 1e-3, "seed": 1},
        {"model.pool": "cls", "optim.lr": 1e-3, "seed": 2},
        {"model.pool": "cls", "optim.lr": 8e-4, "seed": 0},
    ]


def test_random_proposals_equal_the_sweeps_engine_with_the_same_seed():
    py_state, np_state = random.getstate(), np.random.get_state()
    for index in range(5):
        seed = proposal_seed("lr-search", index)
        ours = propose(RANDOM, [], seed)
        random.seed(seed)
        np.random.seed(seed)
        run = sweeps.next_run(RANDOM, [], validate=True)
        theirs = {k: v["value"] for k, v in run.config.items()}
        assert ours == theirs
        assert 1e-4 <= ours["optim.lr"] <= 3e-3 and ours["model.depth"] in (1, 2, 3, 4)
        assert propose(RANDOM, [], seed) == ours  # reproducible
    random.setstate(py_state)
    np.random.set_state(np_state)
    # proposing does not disturb the caller's RNGs
    before = (random.random(), np.random.rand())
    random.setstate(py_state)
    np.random.set_state(np_state)
    propose(RANDOM, [], 1)
    assert (random.random(), np.random.rand()) == before
    # different indices, different draws
    draws = {json.dumps(propose(RANDOM, [], proposal_seed("lr-search", i)), sort_keys=True) for i in range(5)}
    assert len(draws) == 5


def test_bayes_proposals_are_reproducible():
    config = {**RANDOM, "method": "bayes"}
    runs = []
    for i, acc in enumerate([0.3, 0.5, 0.4]):
        params = propose(config, runs, proposal_seed("b", i))
        run = _as_run(f"r{i}", params)
        run.state = "finished"
        run.summary_metrics = {"val/acc1": acc}
        runs.append(run)
    assert propose(config, runs, proposal_seed("b", 3)) == propose(config, runs, proposal_seed("b", 3))


# ---------------------------------------------------------------------------------------------- macros
class _Captured:
    def __init__(self, command=None, env=None, **kwargs):
        self.command, self.env = command, env


def _agent_argv(monkeypatch, tmp_path, command, params, program="train.py"):
    """What wandb's own Agent._command_run would start."""
    from wandb import wandb_agent

    captured = {}

    def fake_process(**kwargs):
        captured.update(kwargs)
        return _Captured(**kwargs)

    monkeypatch.setattr(wandb_agent, "AgentProcess", fake_process)
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SWEEP_ID", "abc123")
    monkeypatch.setenv("WANDB_RUN_ID", "placeholder")  # restored after the test; the agent overwrites it
    monkeypatch.setenv("MY_VAR", "from-env")
    agent = wandb_agent.Agent(api=None, queue=None, sweep_id="abc123")
    agent._sweep_command = list(command)
    agent._command_run({"run_id": "run42", "program": program, "args": {k: {"value": v} for k, v in params.items()}})
    json_file = str(tmp_path / "wandb" / "sweep-abc123" / "config-run42.json")
    return captured["command"], json_file


def test_macros_equal_the_wandb_agent(monkeypatch, tmp_path):
    command = ["${env}", "${interpreter}", "${program}", "--fixed", "${args}", "${args_no_hyphens}", "${args_json}",
               "${args_json_file}", "${envvar:MY_VAR}", "x${envvar:MY_VAR}y", "${args_no_boolean_flags}",
               "${args_no_equals}", "${args_override_hydra}"]
    params = {"model.pos_embed": "2d", "optim.lr": 0.0008, "logging.wandb": True, "evaluate.test": False,
              "name": None, "model.hybrid_layers": [2, 2], "seed": 3}
    theirs, json_file = _agent_argv(monkeypatch, tmp_path, command, params)
    ours = expand_command(command, params, program="train.py", args_json_file=json_file)
    assert ours == theirs
    assert "model.hybrid_layers=[2, 2]" in ours and "name=None" in ours and "logging.wandb=True" in ours
    assert "xfrom-envy" in ours and "from-env" in ours


def test_shipped_command_equals_the_wandb_agent(monkeypatch, tmp_path):
    spec = load_sweep(REPO / "sweeps/hybrid.yaml", overrides=["trainer.max_epochs=3"])
    params = {"model.hybrid_layers": [2, 2], "model.stem": "hybrid", "model.variant": "S/8", "seed": 1}
    theirs, _ = _agent_argv(monkeypatch, tmp_path, spec.command, params, program=spec.config["program"])
    ours = expand_command(spec.command, params, program=spec.config["program"])
    assert ours == theirs == [
        "vit-ablate", "train", "experiments/cifar10_vit_ti4.yaml", "trainer.progress_bar=false",
        "model.hybrid_layers=[2, 2]", "model.stem=hybrid", "model.variant=S/8", "seed=1", "trainer.max_epochs=3",
    ]
    assert train_arguments(ours) == (["experiments/cifar10_vit_ti4.yaml"], ours[3:])


def test_overrides_go_right_after_args_no_hyphens():
    assert insert_overrides(["a", "${args_no_hyphens}", "b=1"], ["c=2"]) == ["a", "${args_no_hyphens}", "c=2", "b=1"]
    assert insert_overrides(["a", "${args}"], ["c=2"], extra=["d=3"]) == ["a", "${args}", "c=2", "d=3"]
    assert train_arguments(["python", "custom.py", "train", "a=1"]) is None
    assert train_arguments(["/usr/bin/env", "python", "vit_ablate/__main__.py", "train", "x.yaml", "a=1"]) == (["x.yaml"], ["a=1"])


# ------------------------------------------------------------------------------------------ validation
def test_unknown_key_and_value_rejected_before_any_run(tmp_path, capsys):
    path = write_sweep(tmp_path / "bad.yaml", {
        "seed": {"values": [0, 1]},
        "model.pos_embd": {"values": ["none", "1d"]},
        "model.pool": {"values": ["cls", "mean"]},
    })
    out = tmp_path / "runs"
    with pytest.raises(ConfigError) as raised:
        run_sweep(path, output_dir=out)
    message = str(raised.value)
    assert "model.pos_embd" in message and "did you mean 'model.pos_embed'" in message
    assert "model.pool='mean'" in message and "cls, gap, gap_fc_norm, map" in message
    assert "no run was started" in message
    assert not out.exists()
    # the CLI turns it into exit status 2
    assert cli.main(["sweep", str(path), "--output-dir", str(out)]) == 2
    assert "model.pos_embd" in capsys.readouterr().err
    assert not out.exists()


def test_bad_overrides_schema_and_macros_are_all_listed(tmp_path):
    path = write_sweep(
        tmp_path / "bad.yaml",
        {"model.pos_embed": {"values": ["1d", "2d"]}, "optim.lr": {"values": ["8e-4"]}},
        command=["vit-ablate", "train", "experiments/quickstart.yaml", "${args_no_hypens}"],
        run_caps=3,
    )
    with pytest.raises(ConfigError) as raised:
        run_sweep(path, overrides=["model.pos_embed=2d", "trainer.max_epoch=1"], output_dir=tmp_path / "runs")
    message = str(raised.value)
    assert "'run_caps' was unexpected" in message  # W&B's schema
    assert "${args_no_hypens}" in message  # a macro the agent would silently drop
    assert "'8e-4' is a string" in message
    assert "sets 'model.pos_embed', which the sweep varies" in message
    assert not (tmp_path / "runs").exists()


def test_hyphenated_args_are_rejected_for_vit_ablate_train(tmp_path):
    path = write_sweep(tmp_path / "args.yaml", {"model.pos_embed": {"values": ["1d", "2d"]}},
                       command=["vit-ablate", "train", "experiments/quickstart.yaml", "${args}"])
    with pytest.raises(ConfigError, match=r"takes key=value, not '--model.pos_embed=1d'"):
        run_sweep(path, output_dir=tmp_path / "runs")


def test_combination_errors_name_the_combination(tmp_path):
    # Each value is fine alone; Ti/8 with a [2, 2, 2] ResNet (stride 16) is not.
    path = write_sweep(tmp_path / "hyb.yaml", {
        "model.stem": {"value": "hybrid"},
        "model.hybrid_layers": {"values": [[2, 2], [2, 2, 2]]},
        "model.variant": {"value": "Ti/8"},
    })
    with pytest.raises(ConfigError) as raised:
        run_sweep(path, output_dir=tmp_path / "runs")
    message = str(raised.value)
    assert "does not match the hybrid stem's total stride 16" in message
    assert "model.hybrid_layers=[2, 2, 2]" in message


# ----------------------------------------------------------------------------------------- hyperband
def test_hyperband_stops_the_run_below_the_band_threshold(tmp_path):
    config = {
        "method": "grid", "metric": {"name": "val/acc1", "goal": "maximize"},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "parameters": {"acc": {"values": [0.9, 0.8, 0.1, 0.85]}},
    }
    entries = []
    # a band applies to a run whose history is longer than the band (sweeps' hyperband_stop_runs)
    for i, (acc, epochs, status) in enumerate([(0.9, 4, "completed"), (0.8, 4, "completed"), (0.1, 3, "running"),
                                               (0.85, 3, "running")]):
        run_dir = tmp_path / f"run-{i:03d}"
        run_dir.mkdir()
        (run_dir / "metrics.csv").write_text("epoch,val/acc1\n" + "".join(f"{e},{acc}\n" for e in range(epochs)))
        entries.append(({"name": run_dir.name, "params": {"acc": acc}, "status": status}, run_dir))
    runs = [to_sweep_run(e, d, "val/acc1") for e, d in entries]
    assert [r.metric_history("val/acc1") for r in runs][2] == [0.1, 0.1, 0.1]
    assert runs_to_stop(config, runs) == ["run-002"]
    assert runs_to_stop({**config, "early_terminate": None}, runs) == []


# ------------------------------------------------------------------------------------------------ GPUs
def test_gpu_slots():
    assert gpu_slots(4, "0") == ["0", "0", "0", "0"]  # four small runs packed on GPU 0
    assert gpu_slots(4, "0,1") == ["0", "1", "0", "1"]
    assert gpu_slots(2, "0,1,2,3") == ["0,2", "1,3"]
    assert gpu_slots(2, "none") == [None, None]


def test_gpu_detection_follows_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert gpu_slots(3, None) == ["2", "3", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpu_slots(2, None) == [None, None]


def test_a_malformed_declared_test_fails_when_the_sweep_starts(tmp_path):
    """A declared primary contrast is checked as the sweep file is read, not first at report time."""
    header = "# primary: paired model.pos_embed=none vs\n"  # the right-hand side is missing
    path = write_sweep(tmp_path / "bad.yaml", {"model.pos_embed": {"values": ["none", "1d"]}}, header=header)
    with pytest.raises(ConfigError, match=r"bad\.yaml.*line 1"):
        load_sweep(path)
    assert not (tmp_path / "runs").exists()
