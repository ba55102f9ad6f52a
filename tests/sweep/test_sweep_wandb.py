"""The W&B backend without a server: the uploaded command, and the offline agent emulation writing a real
offline wandb run (``wandb.sweep``/``wandb.agent`` need a server even with WANDB_MODE=offline)."""

from __future__ import annotations

import json

import pytest
import yaml

from vit_ablate.sweep import read_sweep, run_sweep
from vit_ablate.sweep.engine import load_sweep, validate_sweep
from vit_ablate.sweep.wandb_backend import wandb_command

from .helpers import REPO, manifest, write_sweep


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def test_uploaded_command_carries_the_overrides_and_wandb_logging():
    spec = load_sweep(REPO / "sweeps/pos_embed.yaml", overrides=["trainer.max_epochs=3"])
    command = wandb_command(spec, "runs")
    assert command == [
        "vit-ablate", "train", "experiments/cifar10_vit_ti4.yaml", "trainer.progress_bar=false", "${args_no_hyphens}",
        "trainer.max_epochs=3", "logging.wandb=true", "output_dir=runs",
    ]
    # the local backend puts the overrides at the same place
    assert spec.command == command[:-2]
    assert validate_sweep(spec, backend="wandb", template=command) == []


@pytest.mark.slow
def test_offline_backend_writes_an_offline_wandb_run(tmp_path, monkeypatch, tiny):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("VIT_ABLATE_RUN_DIR", raising=False)
    # imagefolder passes the config schema but its folder is missing: refused when the run starts
    path = write_sweep(tmp_path / "wb.yaml", {"data.name": {"values": ["synthetic", "imagefolder"]}})
    out = tmp_path / "runs"
    overrides = tiny.args(f"data.root={tmp_path / 'no-images-here'}")  # the suite's tiny run: seconds, not minutes
    summary = run_sweep(path, backend="wandb", overrides=overrides, output_dir=out, workers=2, poll_s=0.1)
    data = manifest(next(out.glob("sweep-*")))
    sweep_dir = out / f"sweep-{data['sweep_id']}"
    assert data["backend"] == "wandb" and data["command"][-2:] == ["logging.wandb=true", f"output_dir={out}"]
    good, bad = read_sweep(sweep_dir)
    assert good["params"] == {"data.name": "synthetic"} and good["status"] == "completed"
    assert bad["status"] == "failed" and "no-images-here' does not exist" in bad["log_tail"]
    assert summary.counts == {**summary.counts, "completed": 1, "failed": 1} and not summary.ok

    run_dir = sweep_dir / good["run_id"]  # where training itself puts a W&B sweep run: output_dir/sweep-<id>/<run id>
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    offline = list((run_dir / "wandb").glob(f"offline-run-*-{good['run_id']}"))
    assert len(offline) == 1 and list(offline[0].glob("run-*.wandb"))
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["logging"]["wandb"] is True
    # the agent's parameter file, in wandb's own format
    params = yaml.safe_load((sweep_dir / "wandb" / f"sweep-{data['sweep_id']}" / f"config-{good['run_id']}.yaml").read_text())
    assert params["data.name"] == {"value": "synthetic"}
    assert "WANDB_MODE=offline" in summary.text


def test_online_backend_with_a_stand_in_server_and_agents(tmp_path, monkeypatch):
    """`wandb.sweep` and `wandb agent` replaced (they need a server); everything around them is real:
    the uploaded config, one agent process per worker with its share of --count, the manifest."""
    import sys

    import wandb

    from vit_ablate.config import ConfigError
    from vit_ablate.sweep import wandb_backend

    from .helpers import FAKE, fake_command

    monkeypatch.setenv("WANDB_MODE", "online")
    path = write_sweep(tmp_path / "on.yaml", {"acc": {"values": [0.1, 0.2, 0.3]}}, command=fake_command("epochs=1"),
                       project="p")
    uploaded = {}

    def fake_sweep(config, project=None, entity=None):
        uploaded.update(config=config, project=project)
        (tmp_path / "uploaded.json").write_text(json.dumps(config))
        return "abc12345"

    agents = []

    def fake_agent_argv(sweep_id, project, entity, count):
        params = [{"acc": a} for a in ([0.1, 0.3] if not agents else [0.2])][:count]
        (tmp_path / f"params-{len(agents)}.json").write_text(json.dumps(params))
        agents.append(count)
        return [sys.executable, str(FAKE.parent / "fake_agent.py"), sweep_id, str(tmp_path / "uploaded.json"),
                str(tmp_path / f"params-{len(agents) - 1}.json")]

    monkeypatch.setattr(wandb, "sweep", fake_sweep)
    monkeypatch.setattr(wandb_backend, "agent_argv", fake_agent_argv)
    out = tmp_path / "runs"
    summary = run_sweep(path, backend="wandb", workers=2, count=3, output_dir=out)
    assert uploaded["project"] == "p"
    assert uploaded["config"]["command"] == [*fake_command("epochs=1"), "logging.wandb=true", f"output_dir={out}"]
    assert agents == [2, 1]  # --count 3 over two agents
    data = manifest(out / "sweep-abc12345")
    assert data["sweep_id"] == "abc12345" and data["backend"] == "wandb"
    assert sorted(r["params"]["acc"] for r in data["runs"]) == [0.1, 0.2, 0.3]
    assert {r["status"] for r in read_sweep(out / "sweep-abc12345")} == {"completed"} and summary.ok

    # joining a sweep whose command differs (other overrides or output dir) is refused
    class FakeApi:
        def sweep(self, path):
            return type("S", (), {"config": {"command": ["other"]}})()

    monkeypatch.setattr(wandb, "Api", FakeApi)
    with pytest.raises(ConfigError, match="join it without"):
        run_sweep(path, backend="wandb", sweep_id="abc12345", output_dir=out)
