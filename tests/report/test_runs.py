"""Collecting runs: directories, manifests, metric lookup, and W&B (through a stand-in Api)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from .fabricate import run_config, write_run
from vit_ablate.report.analysis import default_by
from vit_ablate.report.references import canon, sort_key
from vit_ablate.report.runs import Design, collect_runs, lookup_metric, runs_from_wandb, swept_parameters
from vit_ablate.rundir import flatten, read_run

RESULT = {
    "status": "completed",
    "final": {"val/acc1": 0.93, "val/loss": 0.21},
    "best": {"val/acc1": 0.94, "epoch": 8},
    "test": {"test/acc1": 0.92},
    "fewshot": {"1": 0.4, "5": 0.7},
    "wall_time_s": 120.3,
}


@pytest.mark.parametrize(
    "metric, expected",
    [
        ("val/acc1", (0.93, "final")),
        ("test/acc1", (0.92, "test")),
        ("best/val/acc1", (0.94, "best")),
        ("epoch", (8.0, "best")),
        ("fewshot/5", (0.7, "fewshot")),
        ("fewshot/25", (None, None)),
        ("wall_time_s", (120.3, "result")),
        ("val/acc5", (None, None)),
    ],
)
def test_lookup_metric(metric, expected):
    assert lookup_metric(RESULT, metric) == expected


def test_canon_unifies_spellings():
    assert canon(0.0008) == canon("8e-4") == canon("0.0008") == "0.0008"
    assert canon(1.0) == canon(1) == canon("1") == "1"
    assert canon(True) == canon("True") == "true"
    assert canon("none") == "none" and canon(None) == canon("None") == "null"
    assert canon([0.9, 0.999]) == "[0.9, 0.999]"
    assert sorted(["none", "0.0008", "0.0003", "2d"], key=sort_key) == ["0.0003", "0.0008", "2d", "none"]
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": None}) == {"a.b": 1, "a.c.d": [1, 2], "e": None}


def test_swept_parameters_reads_values_distributions_and_nesting():
    config = {
        "parameters": {
            "model.pos_embed": {"values": ["1d", "2d"]},
            "seed": {"values": [0, 1, 2]},
            "trainer.max_epochs": {"value": 5},
            "model.pool": {"values": ["gap"]},
            "optim.lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 1e-2},
            "model": {"parameters": {"norm": {"values": ["pre", "post"]}}},
        }
    }
    assert swept_parameters(config) == {
        "model.pos_embed": ["1d", "2d"],
        "seed": [0, 1, 2],
        "optim.lr": None,
        "model.norm": ["pre", "post"],
    }


def test_read_run_statuses(tmp_path: Path):
    done = read_run(write_run(tmp_path / "a", run_config("1d", 0, "a"), final=0.8))
    assert done["status"] == "completed" and done["reason"] == "" and done["config"]["seed"] == 0
    assert done["config"]["model.pos_embed"] == "1d" and done["config"]["optim.lr"] == 0.001
    assert np.allclose([row["val/acc1"] for row in done["history"]], [0.16, 0.32, 0.48, 0.64, 0.8])
    running = read_run(write_run(tmp_path / "b", run_config("1d", 1, "b"), status=None, epochs=3))
    assert running["status"] == "running"
    assert "no result.json" in running["reason"] and "3 validation epochs" in running["reason"]
    broken = tmp_path / "c"
    write_run(broken, run_config("1d", 2, "c"), final=0.8)
    (broken / "result.json").write_text("{not json")
    assert read_run(broken)["status"] == "unreadable" and "not valid JSON" in read_run(broken)["reason"]
    assert read_run(tmp_path / "never")["status"] == "pending"


def test_collect_errors(tmp_path: Path):
    with pytest.raises(ValueError, match="no such file"):
        collect_runs([str(tmp_path / "nope")])
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(ValueError, match="no runs found"):
        collect_runs([str(tmp_path / "empty")])


def test_directory_of_runs_groups_by_differing_keys(tmp_path: Path):
    for i, (pool, lr, seed) in enumerate([("cls", 8e-4, 0), ("cls", 8e-4, 1), ("gap", 3e-4, 0)]):
        config = run_config("1d", seed, f"r{i}")
        config["model"]["pool"], config["optim"]["lr"] = pool, lr
        config["logging"] = {"wandb_group": f"g{i}"}  # bookkeeping: differs, never a grouping key
        write_run(tmp_path / f"r{i}", config, final=0.8)
    runs, design = collect_runs([str(tmp_path)])
    assert len(runs) == 3 and not design.has_manifest
    assert default_by(runs, design) == ["model.pool", "optim.lr"]


def test_manifest_runs_missing_and_pending(sweep_dir: Path):
    runs, design = collect_runs([str(sweep_dir)])
    statuses = dict(zip(runs["run"], runs["status"]))
    assert statuses["run-009"] == "diverged" and statuses["run-010"] == "pending"
    assert sum(s == "completed" for s in statuses.values()) == 9
    assert design.swept == {"model.pos_embed": ["1d", "2d", "none"], "seed": [0, 1, 2]}
    assert default_by(runs, design) == ["model.pos_embed"]
    assert len(design.references) == 3
    assert runs.set_index("run").loc["run-010", "model.pos_embed"] == "2d"  # from the manifest: it has no folder


def test_manifest_without_reference_reads_the_sweep_file(sweep_dir: Path):
    manifest = json.loads((sweep_dir / "sweep.json").read_text())
    del manifest["reference"]
    manifest["baseline"] = None
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest))
    sweep_file = Path(manifest["file"])
    sweep_file.write_text("# baseline: model.pos_embed=2d\n" + sweep_file.read_text())
    _, design = collect_runs([str(sweep_dir)])
    assert [r["params"] for r in design.references] == [
        {"model.pos_embed": "none"}, {"model.pos_embed": "1d"}, {"model.pos_embed": "2d"}
    ]
    assert design.baseline == {"model.pos_embed": "2d"}


# ---------------------------------------------------------------------------------------------
# W&B: a stand-in for wandb.Api with the attributes runs_from_wandb uses
# ---------------------------------------------------------------------------------------------
class FakeRun:
    def __init__(self, name, state, pos_embed, seed, acc, status=None):
        self.name, self.id, self.state = name, f"id-{name}", state
        self.config = {"model": {"pos_embed": pos_embed}, "seed": seed, "_wandb": {"cli_version": "x"}}
        self.summary = {"val/acc1": acc, "test/acc1": acc - 0.01, "fewshot/5": acc / 2, "_step": 9}
        if status:
            self.summary["status"] = status

    def scan_history(self, keys=None):
        return [{"epoch": e, "val/acc1": 0.1 * (e + 1)} for e in range(3)]


class FakeSweep:
    def __init__(self, runs):
        self.runs = runs
        self.name = "fake-sweep"
        self.config = {"parameters": {"model.pos_embed": {"values": ["1d", "none"]}, "seed": {"values": [0, 1]}}}
        self._attrs = {"config": "# reference: model.pos_embed=none value=0.61382 source=\"paper Table 8\"\n"}


class FakeApi:
    def __init__(self, runs):
        self._sweep = FakeSweep(runs)
        self.asked = None

    def sweep(self, path):
        self.asked = path
        return self._sweep


FAKE_RUNS = [
    FakeRun("a", "finished", "1d", 0, 0.80),
    FakeRun("b", "finished", "1d", 1, 0.82),
    FakeRun("c", "finished", "none", 0, 0.70),
    FakeRun("d", "finished", "none", 1, 0.72),
    FakeRun("e", "crashed", "none", 2, 0.1),
    FakeRun("f", "finished", "none", 3, 0.1, status="diverged"),
    FakeRun("g", "running", "1d", 2, 0.5),
]


def test_runs_from_wandb_with_fake_api():
    api, design = FakeApi(FAKE_RUNS), Design()
    records = runs_from_wandb("ent/proj/abc123", design, api=api)
    assert api.asked == "ent/proj/abc123"
    assert [r["status"] for r in records] == [
        "completed", "completed", "completed", "completed", "failed", "diverged", "running"
    ]
    first = records[0]
    assert first["params"] == {"model.pos_embed": "1d", "seed": 0}  # "_wandb" dropped
    assert lookup_metric(first["result"], "val/acc1") == (0.80, "summary")
    assert lookup_metric(first["result"], "test/acc1") == (pytest.approx(0.79), "summary")
    assert lookup_metric(first["result"], "fewshot/5") == (0.40, "summary")
    assert [row["val/acc1"] for row in first["history"]] == pytest.approx([0.1, 0.2, 0.3])
    assert design.swept == {"model.pos_embed": ["1d", "none"], "seed": [0, 1]}
    assert design.references[0]["params"] == {"model.pos_embed": "none"}
