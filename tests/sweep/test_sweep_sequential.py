"""A sweep with a group-sequential plan runs stage by stage, stops when its primary test decides, and
resumes at the right stage; the runs of stages it never opened do not exist."""

import os

import pytest

from vit_ablate.config import ConfigError
from vit_ablate.sweep import run_sweep

from .helpers import fake_command, manifest, statuses, write_sweep

HEADER = "# primary: paired arm=b vs arm=a expect=greater\n# sequential: stages=3 seeds_per_stage=3 {options}\n"


def staged_sweep(tmp_path, effect, options="spending=pocock", *fixed):
    return write_sweep(tmp_path / "staged.yaml", {"arm": {"values": ["a", "b"]}, "seed": {"values": list(range(9))}},
                       command=fake_command("epochs=1", "sleep=0", f"effect={effect}", *fixed),
                       header=HEADER.format(options=options), name="staged")


def seeds_run(sweep_dir):
    return sorted({int(e["params"]["seed"]) for e in manifest(sweep_dir)["runs"]})


def test_a_clear_effect_stops_after_the_first_stage(tmp_path):
    summary = run_sweep(staged_sweep(tmp_path, 0.05), workers=2, output_dir=tmp_path / "runs")
    sweep_dir = tmp_path / "runs" / "staged"
    assert seeds_run(sweep_dir) == [0, 1, 2] and len(manifest(sweep_dir)["runs"]) == 6
    assert "reproduced at stage 1 of 3 (3 of 9 seeds)" in summary.text
    # a rerun of a decided sweep starts nothing
    again = run_sweep(staged_sweep(tmp_path, 0.05), workers=2, output_dir=tmp_path / "runs")
    assert len(manifest(sweep_dir)["runs"]) == 6 and "reproduced at stage 1 of 3" in again.text


def test_no_effect_runs_every_stage_and_ends_inconclusive(tmp_path):
    summary = run_sweep(staged_sweep(tmp_path, 0.0), output_dir=tmp_path / "runs")
    assert seeds_run(tmp_path / "runs" / "staged") == list(range(9))
    assert "inconclusive at n = 9 (the plan's last stage)" in summary.text


def test_an_interrupted_stage_resumes_and_a_failed_seed_is_dropped_not_retried(tmp_path):
    sweep = staged_sweep(tmp_path, 0.0, "spending=pocock on_failure=drop", "fail_seed=1")
    sweep_dir = tmp_path / "runs" / "staged"
    run_sweep(sweep, count=8, output_dir=tmp_path / "runs")  # stage 1 (6 runs), then 2 runs of stage 2
    assert len(manifest(sweep_dir)["runs"]) == 8 and seeds_run(sweep_dir) == [0, 1, 2, 3, 4]  # arm a first
    failed = [name for name, status in statuses(sweep_dir).items() if status == "failed"]
    summary = run_sweep(sweep, output_dir=tmp_path / "runs")
    assert seeds_run(sweep_dir) == list(range(9)) and len(manifest(sweep_dir)["runs"]) == 18
    assert [name for name, status in statuses(sweep_dir).items() if status == "failed"] == failed  # never retried
    assert "inconclusive at n = 8" in summary.text  # seed 1 dropped from every look


def test_a_sweep_stopped_by_count_at_a_stage_end_looks_at_that_stage(tmp_path):
    sweep = staged_sweep(tmp_path, 0.0)
    first = run_sweep(sweep, count=6, output_dir=tmp_path / "runs")
    assert "undecided: stage 2 of 3: not started" in first.text
    run_sweep(sweep, count=6, output_dir=tmp_path / "runs")
    last = run_sweep(sweep, count=6, output_dir=tmp_path / "runs")
    assert "inconclusive at n = 9 (the plan's last stage)" in last.text


def test_the_emulated_wandb_agent_follows_the_plan(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    summary = run_sweep(staged_sweep(tmp_path, 0.05), backend="wandb", output_dir=tmp_path / "runs")
    assert "reproduced at stage 1 of 3" in summary.text
    (sweep_dir,) = (tmp_path / "runs").glob("sweep-*")
    assert seeds_run(sweep_dir) == [0, 1, 2]


@pytest.mark.parametrize("options, message", [
    ("spending=pocok", "did you mean 'pocock'?"),
    ("alpha=0.7", "must lie in (0, 0.5)"),
])
def test_a_bad_plan_is_refused_before_any_run(tmp_path, options, message):
    with pytest.raises(ConfigError, match="line 2 of") as info:
        run_sweep(staged_sweep(tmp_path, 0.0, options), output_dir=tmp_path / "runs")
    assert message in str(info.value) and not (tmp_path / "runs").exists()


def test_on_wandb_each_stage_is_its_own_wandb_sweep_and_a_rerun_resumes(tmp_path, monkeypatch):
    """`wandb.sweep` and `wandb agent` replaced by stand-ins (they need a server); the agents run each
    stage's grid. A decided plan creates no further W&B sweep, also when the sweep is run again."""
    import itertools
    import json
    import sys

    import wandb

    from vit_ablate.sweep import wandb_backend

    from .helpers import FAKE

    monkeypatch.setenv("WANDB_MODE", "online")
    created = []

    def fake_sweep(config, project=None, entity=None):
        sweep_id = f"stage{len(created)}"
        created.append(config["parameters"]["seed"]["values"])
        (tmp_path / f"{sweep_id}.json").write_text(json.dumps(config))
        return sweep_id

    def fake_agent_argv(sweep_id, project, entity, count):
        config = json.loads((tmp_path / f"{sweep_id}.json").read_text())
        grid = [{"arm": a, "seed": s} for a, s in itertools.product(config["parameters"]["arm"]["values"],
                                                                     config["parameters"]["seed"]["values"])]
        (tmp_path / f"{sweep_id}-params.json").write_text(json.dumps(grid))
        return [sys.executable, str(FAKE.parent / "fake_agent.py"), sweep_id, str(tmp_path / f"{sweep_id}.json"),
                str(tmp_path / f"{sweep_id}-params.json")]

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb_backend, "agent_argv", fake_agent_argv)
    summary = run_sweep(staged_sweep(tmp_path, 0.0), backend="wandb", output_dir=tmp_path / "runs")
    assert created == [[0, 1, 2], [3, 4, 5], [6, 7, 8]] and "inconclusive at n = 9" in summary.text
    created.clear()
    clear = staged_sweep(tmp_path, 0.05)
    (tmp_path / "runs2").mkdir()
    summary = run_sweep(clear, backend="wandb", output_dir=tmp_path / "runs2")
    assert created == [[0, 1, 2]] and "reproduced at stage 1 of 3" in summary.text
    assert json.loads((tmp_path / "runs2" / "staged-stages.json").read_text()) == ["stage0"]

    class FakeApi:  # joining a stage sweep: the server returns the config it was created with
        def sweep(self, path):
            return type("S", (), {"config": json.loads((tmp_path / f"{path.rsplit('/', 1)[-1]}.json").read_text())})()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    summary = run_sweep(clear, backend="wandb", output_dir=tmp_path / "runs2")
    assert created == [[0, 1, 2]] and "reproduced at stage 1 of 3" in summary.text
