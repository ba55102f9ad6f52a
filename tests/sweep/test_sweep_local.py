"""The local runner: failures, hyperband, signals, persisted proposals (with a fake program that starts in
milliseconds), then real `vit-ablate train` sweeps: completion, and SIGKILL of the engine then resume."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vit_ablate import rundir
from vit_ablate.config import ConfigError
from vit_ablate.sweep import read_sweep, run_sweep

from .helpers import REPO, fake_command, fingerprint, manifest, statuses, write_sweep

FAST = {"poll_s": 0.1, "grace_s": 10.0}


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(REPO)


def _wait_for(predicate, timeout=120.0, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _runs(sweep_dir: Path):
    try:
        return read_sweep(sweep_dir)
    except (OSError, ValueError, KeyError):
        return []


# ------------------------------------------------------------------------------- fake program (fast)
def test_failed_runs_are_recorded_and_the_sweep_goes_on(tmp_path):
    path = write_sweep(tmp_path / "fails.yaml", {"mode": {"values": ["crash", "fail", "ok"]}},
                       command=fake_command("epochs=2"))
    summary = run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    sweep_dir = tmp_path / "runs" / "fails"
    runs = {r["params"]["mode"]: r for r in read_sweep(sweep_dir)}
    assert {m: r["status"] for m, r in runs.items()} == {"crash": "failed", "fail": "failed", "ok": "completed"}
    assert runs["crash"]["error"] == "exited with code 3 without writing result.json"
    assert "simulated crash" in runs["crash"]["log_tail"]
    assert runs["fail"]["error"] == "fake_train: simulated failure" and runs["fail"]["exit_code"] == 1
    assert runs["ok"]["metrics"]["val/acc1"] == 0.5
    assert not summary.ok and summary.exit_code == 1
    assert summary.counts["failed"] == 2 and summary.counts["completed"] == 1
    for name in ("name", "mode", "status", "val/acc1", "wall", "run-002", "0.5000", "2 failed"):
        assert name in summary.text

    # A rerun retries the failed runs only; the completed one is not started again.
    ok_dir = sweep_dir / runs["ok"]["dir"]
    before = fingerprint(ok_dir)
    run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    again = {r["params"]["mode"]: r for r in read_sweep(sweep_dir)}
    assert again["crash"]["attempts"] == 2 and again["ok"]["attempts"] == 1
    assert fingerprint(ok_dir) == before
    assert (sweep_dir / "run-000" / "train.log").read_text().count("==== sweep fails run-000 attempt") == 2


def test_hyperband_stops_a_run_below_the_threshold(tmp_path):
    path = write_sweep(
        tmp_path / "hb.yaml", {"acc": {"values": [0.9, 0.8, 0.1]}},
        command=fake_command("epochs=12", "sleep=0.25"),
        early_terminate={"type": "hyperband", "min_iter": 2, "eta": 2},
    )
    summary = run_sweep(path, output_dir=tmp_path / "runs", early_terminate_every_s=0.1, **FAST)
    sweep_dir = tmp_path / "runs" / "hb"
    assert statuses(sweep_dir) == {"run-000": "completed", "run-001": "completed", "run-002": "stopped"}
    rows = (sweep_dir / "run-002" / "metrics.csv").read_text().splitlines()[1:]
    assert 2 <= len(rows) < 12
    assert summary.ok  # stopping is the sweep's decision, not a failure
    # stopped runs stay stopped on a rerun
    run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    assert statuses(sweep_dir)["run-002"] == "stopped"


def test_sigterm_to_the_engine_interrupts_runs_and_a_rerun_resumes(tmp_path):
    path = write_sweep(tmp_path / "sig.yaml", {"acc": {"values": [0.1, 0.2, 0.3, 0.4]}},
                       command=fake_command("epochs=20", "sleep=0.1"))
    out = tmp_path / "runs"
    sweep_dir = out / "sig"
    engine = subprocess.Popen([sys.executable, "-m", "vit_ablate", "sweep", str(path), "--output-dir", str(out),
                               "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def two_running_with_progress():
            running = [r for r in _runs(sweep_dir) if r["status"] == "running" and r.get("pid")]
            return len(running) == 2 and all(
                len((sweep_dir / r["dir"] / "metrics.csv").read_text().splitlines()) > 3
                for r in running if (sweep_dir / r["dir"] / "metrics.csv").exists()
            ) and running
        running = _wait_for(two_running_with_progress, what="two runs in progress")
        engine.send_signal(signal.SIGTERM)
        output, _ = engine.communicate(timeout=60)
    finally:
        if engine.poll() is None:
            engine.kill()
    assert engine.returncode == 130, output  # interrupted: rerun to resume
    assert "interrupted: rerun the same command to resume" in output
    after = {r["name"]: r for r in _runs(sweep_dir)}
    for run in running:
        assert after[run["name"]]["status"] == "interrupted"
        assert json.loads((sweep_dir / run["dir"] / "result.json").read_text())["status"] == "interrupted"
        assert not os.path.exists(f"/proc/{run['pid']}") or "Z" in Path(f"/proc/{run['pid']}/stat").read_text().split()[2]
    assert manifest(sweep_dir)["invocations"][-1]["interrupted"] is True

    summary = run_sweep(path, output_dir=out, workers=2, **FAST)
    assert summary.ok, summary.text
    final = read_sweep(sweep_dir)
    assert [r["status"] for r in final] == ["completed"] * 4
    for run in running:  # resumed in place: every epoch once
        rows = (sweep_dir / run["dir"] / "metrics.csv").read_text().splitlines()[1:]
        assert len(rows) == 20
        assert next(r for r in final if r["name"] == run["name"])["attempts"] == 2


def test_random_proposals_are_persisted_and_never_redrawn(tmp_path):
    path = write_sweep(tmp_path / "rnd.yaml", {"acc": {"distribution": "uniform", "min": 0.0, "max": 1.0}},
                       command=fake_command("epochs=1"), method="random", run_cap=3)
    out = tmp_path / "runs"
    run_sweep(path, output_dir=out, count=2, **FAST)
    first = [(r["name"], r["params"]) for r in manifest(out / "rnd")["runs"]]
    assert [n for n, _ in first] == ["run-000", "run-001"]
    # a proposal made but never started (engine killed right after proposing) is kept, not redrawn
    data = manifest(out / "rnd")
    data["runs"].append({"name": "run-002", "dir": "run-002", "params": {"acc": 0.123}})
    (out / "rnd" / "sweep.json").write_text(json.dumps(data))
    summary = run_sweep(path, output_dir=out, **FAST)
    runs = manifest(out / "rnd")["runs"]
    assert [(r["name"], r["params"]) for r in runs[:2]] == first
    assert runs[2]["params"] == {"acc": 0.123} and len(runs) == 3  # run_cap
    assert summary.counts["completed"] == 3
    # the draws are the seeded ones: a fresh sweep of the same name proposes the same values
    run_sweep(path, output_dir=tmp_path / "again", count=2, **FAST)
    assert [(r["name"], r["params"]) for r in manifest(tmp_path / "again" / "rnd")["runs"]] == first


def test_a_changed_sweep_or_a_second_engine_is_refused(tmp_path):
    path = write_sweep(tmp_path / "chg.yaml", {"acc": {"values": [0.1]}}, command=fake_command("epochs=1"))
    out = tmp_path / "runs"
    run_sweep(path, output_dir=out, **FAST)
    with pytest.raises(ConfigError, match="belongs to a different sweep"):
        run_sweep(path, output_dir=out, overrides=["epochs=2"], **FAST)
    write_sweep(path, {"acc": {"values": [0.1, 0.2]}}, command=fake_command("epochs=1"))
    with pytest.raises(ConfigError, match="sweep file keys parameters"):
        run_sweep(path, output_dir=out, **FAST)
    write_sweep(path, {"acc": {"values": [0.1]}}, command=fake_command("epochs=1"))
    with open(out / "chg" / ".lock", "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ConfigError, match="already being run"):
            run_sweep(path, output_dir=out, **FAST)
    assert run_sweep(path, output_dir=out, **FAST).ok


def test_an_experiment_file_changed_during_a_sweep_stops_it(tmp_path, monkeypatch):
    from vit_ablate.sweep import engine

    digests = iter(["a", "a", "b", "b", "b"])  # at start, before run-000, before run-001, ...
    monkeypatch.setattr(engine, "base_config_digest", lambda spec, template=None: next(digests))
    path = write_sweep(tmp_path / "chg.yaml", {"acc": {"values": [0.1, 0.2, 0.3]}}, command=fake_command("epochs=1"))
    summary = run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    assert statuses(tmp_path / "runs" / "chg") == {"run-000": "completed", "run-001": "pending"}
    assert not summary.ok and "changed during the sweep: no further run was started" in summary.text


def test_an_experiment_file_changed_since_the_sweep_started_is_refused(tmp_path):
    experiment = tmp_path / "exp.yaml"
    experiment.write_text((REPO / "experiments" / "quickstart.yaml").read_text())
    command = ["vit-ablate", "train", str(experiment), "${args_no_hyphens}"]
    path = write_sweep(tmp_path / "exp_sweep.yaml", {"seed": {"values": [0, 1]}}, command=command)
    sweep_dir = tmp_path / "runs" / "exp_sweep"
    sweep_dir.mkdir(parents=True)
    import yaml

    (sweep_dir / "sweep.json").write_text(json.dumps({
        "sweep": "exp_sweep", "backend": "local", "config": yaml.safe_load(path.read_text()), "command": command,
        "base_config_digest": "digest-of-an-older-exp.yaml",
        "runs": [{"name": "run-000", "dir": "run-000", "params": {"seed": 0}}],
    }))
    rundir.write_result(sweep_dir / "run-000", {"status": rundir.COMPLETED, "final": {"val/acc1": 0.5}})  # it ran
    before = fingerprint(sweep_dir / "run-000")
    with pytest.raises(ConfigError, match=r"exp.yaml \+ its overrides\) changed since 1 of its runs started"):
        run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    assert [p.name for p in (sweep_dir / "run-000").iterdir()] == ["result.json"] and not (sweep_dir / "run-001").exists()
    assert fingerprint(sweep_dir / "run-000") == before


# -------------------------------------------------------------------------- real training (slow)
# The README's quickstart promise, run as the README runs it: experiments/quickstart.yaml through a
# sweep, two runs at once (a quickstart run takes 85-150 s alone on a busy 2-core machine, so the
# suite's 600-s limit, meant for hangs, is raised for this one). The seed is not the default, so a
# run that ignored the sweep's seed would show; the grid's order is the sweeps engine's
# (tests/sweep/test_sweep_engine.py).
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_the_quickstart_sweep_learns_the_known_answer(tmp_path):
    from vit_ablate.data.synthetic import SyntheticDataModule

    path = write_sweep(tmp_path / "known.yaml", {"seed": {"values": [1]}, "model.pos_embed": {"values": ["none", "1d"]}})
    summary = run_sweep(path, overrides=["logging.csv=false"], output_dir=tmp_path / "runs", workers=2, **FAST)
    sweep_dir = tmp_path / "runs" / "known"
    assert summary.ok, summary.text
    runs = read_sweep(sweep_dir)
    assert [(r["name"], r["params"]) for r in runs] == [
        ("run-000", {"model.pos_embed": "none", "seed": 1}), ("run-001", {"model.pos_embed": "1d", "seed": 1})]
    results = {}
    for run in runs:
        result = json.loads((sweep_dir / run["dir"] / "result.json").read_text())
        assert result["status"] == run["status"] == "completed"
        assert 0.0 <= run["metrics"]["val/acc1"] <= 1.0 and run["metrics"]["val/acc1"] == result["final"]["val/acc1"]
        assert result["seed"] == run["params"]["seed"]
        assert "model.pos_embed=" + run["params"]["model.pos_embed"] in (sweep_dir / run["dir"] / "train.log").read_text()
        config = (sweep_dir / run["dir"] / "config.yaml").read_text()
        assert f"pos_embed: {run['params']['model.pos_embed']}" in config and "max_epochs: 8" in config
        results[run["params"]["model.pos_embed"]] = result["test"]["test/acc1"]
    data = manifest(sweep_dir)
    assert data["reference"] == [] and data["overrides"] == ["logging.csv=false"] and data["config"]["method"] == "grid"
    assert (sweep_dir / "known.yaml").read_text() == path.read_text()
    assert "2 runs: 2 completed" in summary.text

    # the known answer: a position embedding learns the position-dependent labels ...
    assert results["1d"] >= 0.95
    # ... and without one the model stays under the data's position-free ceiling (the bound holds in
    # expectation; 3 binomial standard deviations on 2048 test images), while it does learn the
    # content: well above 1/8 chance
    assert SyntheticDataModule.position_free_ceiling() == 0.25
    assert 0.2 <= results["none"] <= SyntheticDataModule.position_free_upper_bound(2048)


@pytest.mark.slow
def test_sigkill_of_the_engine_then_rerun_resumes_without_touching_finished_runs(tmp_path):
    # the runner's part: real training's own resume is tested in tests/training
    path = write_sweep(tmp_path / "kill.yaml", {"seed": {"values": [0, 1]}, "acc": {"values": [0.25, 0.5]}},
                       command=fake_command("epochs=8", "sleep=0.25"))
    out = tmp_path / "runs"
    sweep_dir = out / "kill"
    engine = subprocess.Popen(
        [sys.executable, "-m", "vit_ablate", "sweep", str(path), "--output-dir", str(out), "--workers", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        def third_running():
            runs = _runs(sweep_dir)
            return len(runs) == 3 and runs[2]["status"] == "running" and runs[2].get("pid") and runs
        runs = _wait_for(third_running, timeout=300, what="run-002 to start")
        _wait_for(lambda: (sweep_dir / "run-002" / "metrics.csv").is_file() and
                  len((sweep_dir / "run-002" / "metrics.csv").read_text().splitlines()) >= 3, what="run-002 to train")
        engine.kill()  # SIGKILL: no handler runs, the manifest says run-002 is running
        engine.wait()
    finally:
        if engine.poll() is None:
            engine.kill()
    # the orphaned run got SIGTERM from the kernel (PR_SET_PDEATHSIG) and recorded it
    _wait_for(lambda: (json.loads((sweep_dir / "run-002" / "result.json").read_text()) if (sweep_dir / "run-002" / "result.json").is_file()
                       else {}).get("status") == "interrupted", what="run-002 to stop with its engine")
    assert [r["status"] for r in runs[:2]] == ["completed", "completed"]
    finished = {name: fingerprint(sweep_dir / name) for name in ("run-000", "run-001")}
    assert all(len(f) >= 2 for f in finished.values())  # result.json and metrics.csv

    summary = run_sweep(path, output_dir=out, workers=2, **FAST)
    assert summary.ok, summary.text
    data = manifest(sweep_dir)
    assert [r["status"] for r in read_sweep(sweep_dir)] == ["completed"] * 4
    assert [r["attempts"] for r in read_sweep(sweep_dir)] == [1, 1, 2, 1]
    for name, before in finished.items():
        assert fingerprint(sweep_dir / name) == before  # mtime and sha256 unchanged
    for name in ("run-002", "run-003"):
        result = json.loads((sweep_dir / name / "result.json").read_text())
        assert result["status"] == "completed" and result["epochs"] == 8
    epochs = [int(row.split(",")[0]) for row in (sweep_dir / "run-002" / "metrics.csv").read_text().splitlines()[1:]]
    assert epochs == list(range(8))  # resumed where the killed attempt stopped: no epoch twice
    assert len(data["invocations"]) == 2 and "ended_at" not in data["invocations"][0]


def test_a_finished_sweep_leaves_no_lock_and_writes_strict_json(tmp_path):
    path = write_sweep(tmp_path / "nan.yaml", {"acc": {"values": ["nan", 0.5]}}, command=fake_command("epochs=1"))
    summary = run_sweep(path, output_dir=tmp_path / "runs", **FAST)
    sweep_dir = tmp_path / "runs" / "nan"
    assert summary.counts["completed"] == 2
    assert not (sweep_dir / ".lock").exists()

    def refuse(constant):
        raise ValueError(f"sweep.json holds {constant}")

    json.loads((sweep_dir / "sweep.json").read_text(), parse_constant=refuse)
    runs = {r["params"]["acc"]: r for r in read_sweep(sweep_dir)}
    assert runs[0.5]["metrics"]["val/acc1"] == 0.5
    assert runs["nan"]["metrics"].get("best/val/acc1") is None  # NaN became null


@pytest.mark.parametrize("escape", ["../../..", "/tmp", "", "a/b"])
def test_a_manifest_entry_whose_dir_leaves_the_sweep_folder_is_refused(tmp_path, escape):
    path = write_sweep(tmp_path / "esc.yaml", {"acc": {"values": [0.1]}}, command=fake_command("epochs=1"))
    out = tmp_path / "runs"
    run_sweep(path, output_dir=out, **FAST)
    sweep_json = out / "esc" / "sweep.json"
    data = json.loads(sweep_json.read_text())
    data["runs"][0].update(dir=escape)
    sweep_json.write_text(json.dumps(data))
    outside = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ConfigError, match=f"dir={escape!r}, which is not a folder inside the sweep folder"):
        run_sweep(path, output_dir=out, **FAST)
    assert sorted(p.name for p in tmp_path.iterdir()) == outside
    assert json.loads(sweep_json.read_text()) == data  # not rewritten


def test_the_runner_never_overwrites_a_finished_result_and_records_what_ended_without_one():
    from vit_ablate.sweep.local import runner_record

    def tail():
        return "last lines"

    completed = {"status": "completed", "final": {"val/acc1": 0.5}}
    for stop in (None, "hyperband", "shutdown"):  # a finished result stays, whatever stopped the process
        assert runner_record(completed, True, stop, 0, tail) is None
        assert runner_record({"status": "diverged"}, False, stop, 1, tail) is None
    stopped = runner_record({"status": "interrupted", "final": {"val/acc1": 0.3}}, True, "hyperband", 130, tail)
    assert stopped["status"] == "stopped" and stopped["final"] == {"val/acc1": 0.3}  # its metrics kept
    assert runner_record({"status": "failed", "error": "x"}, True, None, 1, tail) is None  # the run's own failure
    assert runner_record({}, False, "shutdown", -15, tail) == {"status": "interrupted", "error": "the sweep was interrupted"}
    # an older attempt's result.json does not speak for this attempt's crash
    assert runner_record({"status": "interrupted"}, False, None, 3, tail) == {
        "status": "failed", "error": "exited with code 3 without writing result.json", "log_tail": "last lines"}


def test_more_omp_threads_than_cores_over_all_workers_is_named(monkeypatch):
    from vit_ablate.sweep.local import _oversubscription

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    message = _oversubscription(2, [None, None])
    assert "OMP_NUM_THREADS=2 for each of 2 workers is 4 threads on 2 cores" in message and "gives each run 1" in message
    assert _oversubscription(1, [None]) is None  # one run may use every core
    assert _oversubscription(2, ["0", "0"]) is None  # GPU runs: their threads feed the GPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert _oversubscription(2, [None, None]) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert _oversubscription(2, [None, None]) is None  # the runner sets cores // workers itself


def test_default_workers_two_on_a_cpu_one_where_runs_get_gpus(monkeypatch):
    from vit_ablate.cli import _default_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _default_workers("none") == 2
    assert _default_workers("0") == _default_workers("0,1") == 1
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert _default_workers("none") == 1
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # detection: no visible GPU
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert _default_workers(None) == 2


def test_an_attempt_whose_output_ends_mid_line_is_still_read_as_ended(tmp_path):
    from vit_ablate.sweep.local import _on_its_own_line
    from vit_ablate.sweep.summary import attempt_footer, attempt_header, read_attempts

    log = tmp_path / "train.log"
    log.write_text(attempt_header("s", "run-000", 1, 123, ["train"]) + "epoch 1 of 3, killed mid-li")
    with open(log, "ab") as handle:
        handle.write(_on_its_own_line(log, attempt_footer("s", "run-000", -9, 2.5)))
    (attempt,) = read_attempts(log, "s", "run-000")
    assert attempt.ended and attempt.exit_code == -9 and attempt.seconds == 2.5
    assert log.read_text().splitlines()[1] == "epoch 1 of 3, killed mid-li"  # the output itself untouched
    assert _on_its_own_line(log, "x\n") == b"x\n"  # already at a line's start


def test_a_run_whose_process_and_engine_both_died_reads_as_interrupted_not_running(tmp_path):
    import socket

    from vit_ablate.sweep.summary import attempt_header

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    sweep_dir = tmp_path / "s"
    runs = {"run-000": gone.pid, "run-001": os.getpid()}  # a freed pid; a live one
    for name in runs:
        (sweep_dir / name).mkdir(parents=True)
    (sweep_dir / "sweep.json").write_text(json.dumps(
        {"sweep": "s", "config": {}, "runs": [{"name": n, "dir": n, "params": {}} for n in [*runs, "run-002"]]}))
    for name, pid in runs.items():
        (sweep_dir / name / "train.log").write_text(attempt_header("s", name, 1, pid, ["train"]) + "epoch 1 of 3\n")
    elsewhere = attempt_header("s", "run-002", 1, gone.pid, ["train"]).replace(socket.gethostname(), "another-host")
    (sweep_dir / "run-002").mkdir()
    (sweep_dir / "run-002" / "train.log").write_text(elsewhere)
    read = {r["name"]: r for r in read_sweep(sweep_dir)}
    assert read["run-000"]["status"] == "interrupted"
    assert f"pid {gone.pid}" in read["run-000"]["error"] and "pid" not in read["run-000"]
    assert "epoch 1 of 3" in read["run-000"]["log_tail"]
    assert read["run-001"]["status"] == "running" and read["run-001"]["pid"] == os.getpid()
    assert read["run-002"]["status"] == "running"  # another host's pid says nothing here
