"""A run directory under faults and hostile input: a kill after the final checkpoint, a second
process, names that leave output_dir, folders that are not runs, missing data, non-finite metrics."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vit_ablate.cli import main
from vit_ablate.training.run import train

REPO = Path(__file__).resolve().parents[2]


def _strict(path: Path):
    def refuse(constant):
        raise ValueError(f"{path} holds {constant}, which strict JSON readers reject")

    return json.loads(path.read_text(), parse_constant=refuse)


def _tree(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# Runs `vit-ablate train` and SIGKILLs it when it is about to write result.json: after the final
# checkpoint, metrics.csv and the test evaluation, the last moment a kill loses the result.
KILL_AT_RESULT = textwrap.dedent(
    """
    import os, signal, sys
    from vit_ablate import rundir
    def write(run_dir, data):
        os.kill(os.getpid(), signal.SIGKILL)
    rundir.write_result = write
    from vit_ablate.cli import main
    sys.exit(main(["train", *sys.argv[1:]]))
    """
)


def test_a_kill_between_the_final_checkpoint_and_result_json_is_rebuilt(tiny, tmp_path):
    args = ["trainer.max_epochs=2"]
    run = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-c", KILL_AT_RESULT, *tiny.args(*args), "name=killed"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        reference = train(tiny(*args, "name=reference"))  # while the other process starts
    finally:
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, stderr[-2000:]
    assert (run / "checkpoints" / "last.ckpt").is_file() and not (run / "result.json").exists()

    def same_as_reference(result):
        assert result["status"] == "completed"
        assert (result["epochs"], result["global_step"]) == (reference["epochs"], reference["global_step"])
        for section in ("final", "test", "best"):
            assert result[section].keys() == reference[section].keys(), section
            for key, value in reference[section].items():
                assert result[section][key] == pytest.approx(value, abs=1e-6), (section, key)
        # not re-measured (nothing trained in the rebuilding process): the killed run's own epochs'
        # rates from its metrics.csv, combined as total images / total time (equal epochs)
        rates = [float(r["train_img_s"]) for r in csv.DictReader((run / "metrics.csv").open())]
        assert result["throughput_img_s"] == pytest.approx(len(rates) / sum(1 / r for r in rates), abs=0.06)

    rebuilt = train(tiny(*args, "name=killed"))  # resumes a finished fit: nothing left to train
    same_as_reference(rebuilt)
    assert _strict(run / "result.json")["final"] == rebuilt["final"]
    assert [int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())] == [0, 1]

    # The same kill with metrics.csv lost too: the final weights are validated again.
    (run / "result.json").unlink()
    (run / "metrics.csv").write_text("epoch,step\n")
    revalidated = train(tiny(*args, "name=killed"))
    assert revalidated["status"] == "completed" and revalidated["global_step"] == reference["global_step"]
    for key, value in reference["final"].items():
        assert revalidated["final"][key] == pytest.approx(value, abs=1e-5), key
    for key, value in reference["test"].items():
        assert revalidated["test"][key] == pytest.approx(value, abs=1e-6), key


def _lock_pid(run: Path):
    try:
        return int((run / ".lock").read_text().strip())
    except (OSError, ValueError):
        return None


def test_a_second_train_into_the_same_directory_is_refused_and_the_lock_goes_with_its_owner(tiny, tmp_path, capsys):
    args = ["train", *tiny.args("trainer.max_epochs=50", "name=busy")]
    run = tmp_path / "busy"
    first = subprocess.Popen([sys.executable, "-m", "vit_ablate", *args], cwd=REPO,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while _lock_pid(run) != first.pid and time.time() < deadline:
            time.sleep(0.1)
        assert _lock_pid(run) == first.pid
        capsys.readouterr()
        assert main(args) == 2  # the second `vit-ablate train`, in this process
        second = capsys.readouterr().err
        assert f"being trained by another process (pid {first.pid})" in second
        assert "Traceback" not in second and not (run / "result.json").exists()
    finally:
        first.send_signal(signal.SIGTERM)
        _, stderr = first.communicate(timeout=120)
    assert first.returncode == 130, stderr[-2000:]
    assert not (run / ".lock").exists()  # removed on exit
    assert _strict(run / "result.json")["status"] == "interrupted"
    interrupted = [line for line in stderr.splitlines() if "interrupted" in line]
    assert interrupted and interrupted[-1].startswith("[vit-ablate] interrupted (stopped by SIGTERM) after ")
    assert "run the same command again to resume" in interrupted[-1]


@pytest.mark.parametrize("when", ["preparing the run directory", "inside fit, before Lightning listens"])
def test_a_sigterm_while_the_run_is_set_up_is_recorded_and_the_rerun_finishes(tiny, tmp_path, monkeypatch, when):
    # Lightning's own SIGTERM handler exists only once fit has set up the data, model and checkpoint:
    # a signal before that (held while the run directory is prepared, raised at once inside fit,
    # e.g. while the data module decodes) still stops the run with its outcome recorded.
    import vit_ablate.training.run as run_module
    from vit_ablate.data.synthetic import SyntheticDataModule

    def sigterm_to_this_process(*args):
        os.kill(os.getpid(), signal.SIGTERM)

    if when == "preparing the run directory":
        real = run_module.prepare_run_dir
        monkeypatch.setattr(run_module, "prepare_run_dir", lambda *args: (real(*args), sigterm_to_this_process()))
    else:
        monkeypatch.setattr(SyntheticDataModule, "prepare_data", sigterm_to_this_process)
    before = signal.getsignal(signal.SIGTERM)
    args = ["trainer.max_epochs=2", "name=early"]
    stopped = train(tiny(*args))
    assert (stopped["status"], stopped["error"]) == ("interrupted", "stopped by SIGTERM")
    assert (stopped["epochs"], stopped["global_step"]) == (0, 0)
    assert _strict(tmp_path / "early" / "result.json")["status"] == "interrupted"
    assert signal.getsignal(signal.SIGTERM) == before  # the caller's handler is back
    assert not (tmp_path / "early" / ".lock").exists()
    monkeypatch.undo()
    finished = train(tiny(*args))
    assert finished["status"] == "completed" and finished["epochs"] == 2


def test_the_stale_lock_of_a_dead_process_is_taken_over(tiny, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "stale"
    run.mkdir()
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert train(tiny("name=stale"))["status"] == "completed"
    assert not (run / ".lock").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute-run", "a/b", ".."])
def test_a_run_name_is_one_folder_inside_output_dir(tiny, tmp_path, capsys, name):
    out = tmp_path / "deep" / "runs"
    out.mkdir(parents=True)
    code = main(["train", *tiny.args(f"output_dir={out}", f"name={name}")])
    err = capsys.readouterr().err
    assert code == 2 and f"name={name!r} must be one folder name inside output_dir" in err
    assert _tree(tmp_path) == ["deep", "deep/runs"]
    assert not Path("/tmp/absolute-run").exists()


def test_a_folder_that_is_not_a_run_is_never_written(tiny, tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "metrics.csv").write_text("mine\n")
    (folder / "result.json").write_text("{}")
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()}
    code = main(["train", *tiny.args("name=notes")])
    assert code == 2 and "is not a run directory (a file, or a folder with files but no config.yaml)" in capsys.readouterr().err
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir()} == before


def test_missing_data_is_one_line_before_any_run_directory(tmp_path):
    # a fresh process: everything it prints (warnings, import-time messages) counts
    missing = tmp_path / "no-data"
    command = [sys.executable, "-m", "vit_ablate", "train", "experiments/cifar10_vit_ti4.yaml",
               f"data.root={missing}", f"output_dir={tmp_path / 'runs'}", "name=cifar"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    stderr = done.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert str(missing) in lines[0] and "data.download=true" in lines[0] and "cifar-10-batches-py" in lines[0]
    assert not (tmp_path / "runs").exists()


def test_a_diverged_run_writes_strict_json_with_null_and_the_reason(tiny, tmp_path, monkeypatch):
    from vit_ablate.training import module as module_lib

    original = module_lib.ViTModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 3 else loss

    monkeypatch.setattr(module_lib.ViTModule, "training_step", poisoned)
    # check every step and validate on the poisoned weights: NaN reaches val/loss
    monkeypatch.setattr("vit_ablate.training.callbacks.DivergenceCallback.__init__.__defaults__", (1,))
    result = train(tiny("name=nan", "trainer.max_epochs=3"))
    on_disk = _strict(tmp_path / "nan" / "result.json")
    assert on_disk["status"] == "diverged" and "non-finite loss by step" in on_disk["error"]
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["non_finite"]  # the NaN validation loss of the poisoned weights
    for path, reason in on_disk["non_finite"].items():
        section, key = path.split(".", 1)
        assert on_disk[section][key] is None and "non-finite loss" in reason
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in on_disk["final"].values())


def test_off_a_terminal_the_log_has_one_line_per_epoch_and_a_cpu_trains_in_fp32(tiny, tmp_path):
    """stdout and stderr to a file, as under SLURM, nohup or CI: no progress-bar updates, no tips,
    no per-run deprecation warning; and bf16 autocast (slower than fp32 on a CPU) is replaced, saying so."""
    log_file = tmp_path / "train.log"
    args = tiny.args("trainer.max_epochs=3", "trainer.progress_bar=true", "trainer.precision=bf16-mixed", "name=logged")
    with open(log_file, "w") as handle:
        done = subprocess.run([sys.executable, "-m", "vit_ablate", "train", *args], cwd=REPO,
                              stdout=handle, stderr=subprocess.STDOUT, timeout=300)
    text = log_file.read_text()
    assert done.returncode == 0, text[-2000:]
    assert "\r" not in text and "Tip:" not in text and "deprecated" not in text
    epochs = [line for line in text.splitlines() if line.startswith("[vit-ablate] epoch ")]
    assert [line.split()[2] for line in epochs] == ["1/3", "2/3", "3/3"]
    assert all("val/acc1" in line and "img/s" in line for line in epochs)
    assert "trainer.precision=bf16-mixed is for GPUs" in text and "uses 32-true" in text
    assert _strict(tmp_path / "logged" / "result.json")["precision"] == "32-true"


def test_a_full_disk_during_training_records_failed_naming_the_file(tiny, tmp_path, monkeypatch, capsys):
    import errno

    from vit_ablate.training import callbacks

    def full(checkpoint, path):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(callbacks.torch, "save", full)
    code = main(["train", *tiny.args("name=full")])
    err = capsys.readouterr().err
    run = tmp_path / "full"
    assert code == 1 and "Traceback" not in err
    assert f"failed: cannot write {run / 'checkpoints'}" in err and "No space left on device" in err
    result = _strict(run / "result.json")
    assert result["status"] == "failed" and "No space left on device" in result["error"]
    leftovers = [p for p in run.rglob("*") if p.name.endswith(".tmp") or p.name == ".lock"]
    assert leftovers == []


@pytest.mark.parametrize("env", [{"VIT_ABLATE_RUN_DIR": "{dir}"}, {"WANDB_SWEEP_ID": "abc", "WANDB_RUN_ID": "r1"}])
def test_a_sweep_folder_with_only_its_train_log_is_accepted(tiny, tmp_path, monkeypatch, env):
    """The sweep engines create the run folder and its train.log before `train` starts in it."""
    from vit_ablate.training.run import check_run_dir, resolve_run_dir

    folder = tmp_path / "sweep-abc" / "r1"
    folder.mkdir(parents=True)
    (folder / "train.log").write_text("==== attempt 1\n")
    cfg = tiny()
    for key, value in env.items():
        monkeypatch.setenv(key, value.format(dir=folder))
    assert resolve_run_dir(cfg) == folder
    check_run_dir(folder, cfg)  # no error
    monkeypatch.delenv("VIT_ABLATE_RUN_DIR", raising=False)
    monkeypatch.delenv("WANDB_SWEEP_ID", raising=False)
    with pytest.raises(Exception, match="not a run directory"):
        check_run_dir(folder, cfg)


def test_only_rank_0_judges_a_folder_that_torchrun_ranks_start_in_together(tiny, monkeypatch):
    """Under torchrun every rank starts `train` at once. What another rank may see while rank 0 makes
    the run folder (its checkpoints/ and a half-written config.yaml, no config.yaml yet) is not a
    stranger's folder to that rank; rank 0, which sees the folder before it writes, still refuses one."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from vit_ablate import rundir
    from vit_ablate.config import ConfigError
    from vit_ablate.training.run import check_run_dir, resolve_run_dir

    cfg = tiny("name=ddp")
    run_dir = resolve_run_dir(cfg)
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / f".{rundir.CONFIG_FILE}.tmp").write_text("model: {")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    check_run_dir(run_dir, cfg)  # no error
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    with pytest.raises(ConfigError, match="not a run directory"):
        check_run_dir(run_dir, cfg)


def test_a_folder_its_owner_is_still_making_is_reported_busy_not_foreign(tiny, tmp_path):
    """Between taking the lock and writing config.yaml, the first `train` has made checkpoints/: a
    second `train` that looks then is told the folder is busy, as it is a moment later."""
    import os

    from vit_ablate import rundir
    from vit_ablate.config import ConfigError
    from vit_ablate.io import FolderLock
    from vit_ablate.training.run import check_run_dir, resolve_run_dir

    cfg = tiny("name=making")
    run_dir = resolve_run_dir(cfg)
    (run_dir / "checkpoints").mkdir(parents=True)
    with FolderLock(run_dir):  # another open file description: flock refuses it as it would another process
        with pytest.raises(ConfigError, match=rf"being trained by another process \(pid {os.getpid()}\)"):
            check_run_dir(run_dir, cfg)
    assert not (run_dir / rundir.LOCK_FILE).exists()
    with pytest.raises(ConfigError, match="not a run directory"):  # nobody holds it: a stranger's folder
        check_run_dir(run_dir, cfg)


def test_a_finished_gap_run_of_before_0_2_is_not_taken_for_the_papers_gap(tiny):
    """vit_ablate 0.1 ran timm's mean-then-LayerNorm as pool=gap; its finished run is refused, not reused."""
    from vit_ablate import rundir
    from vit_ablate.config import ConfigError, to_yaml
    from vit_ablate.training.run import check_run_dir, resolve_run_dir

    cases = [("gap", "0.1.0", True), ("gap", "0.2.0", False), ("cls", "0.1.0", False), ("gap", "0.0.0+unknown", False)]
    for index, (pool, version, refused) in enumerate(cases):
        cfg = tiny(f"name=run{index}", f"model.pool={pool}")
        run_dir = resolve_run_dir(cfg)
        run_dir.mkdir(parents=True)
        (run_dir / rundir.CONFIG_FILE).write_text(to_yaml(cfg))
        rundir.write_result(run_dir, {"status": rundir.COMPLETED, "version": version})
        if refused:
            with pytest.raises(ConfigError, match="gap_fc_norm"):
                check_run_dir(run_dir, cfg)
        else:
            check_run_dir(run_dir, cfg)
