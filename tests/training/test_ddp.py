"""DDP on CPU (gloo, two processes): the device count is a speed knob, not a change of science.

Every DDP training runs in a subprocess (Lightning's launcher or torchrun), never inside pytest.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.fixture
def tiny(tiny):
    """The training tests' tiny run on 512 training images; 257 validation images, which two ranks cannot
    split evenly."""
    return tiny.but("data.synthetic.num_train=512", "data.synthetic.num_val=257", "data.synthetic.num_test=129")


ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def _run(command, cwd, timeout=300):
    done = subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{command}\n{done.stderr[-3000:]}"
    return done


def _train(tiny, name, devices, *extra, launcher=None):
    args = tiny.args(f"name={name}", f"trainer.devices={devices}", *extra)
    if launcher == "torchrun":
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
                   "-m", "vit_ablate", "train", *args]
    else:
        command = [sys.executable, "-m", "vit_ablate", "train", *args]
    return _run(command, cwd=Path(__file__).resolve().parents[2])


def _weights(run):
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("model.")}


@pytest.mark.slow
def test_one_step_on_two_ranks_equals_one_step_on_one(tiny, tmp_path):
    # SGD makes the update proportional to the gradient, so this compares the all-reduced gradient.
    step = ["trainer.max_steps=1", "optim.name=momentum", "optim.momentum=0", "optim.lr=0.5", "optim.warmup_steps=0",
            "optim.weight_decay=0", "model.dropout=0", "model.drop_path=0", "evaluate.test=false"]
    _train_here(tiny, "one", *step)
    _train(tiny, "two", 2, *step, launcher="torchrun")  # ranks start together: half the imports' wait
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    initial = _initial(tiny)
    moved = max((one[k] - initial[k]).abs().max().item() for k in one)
    assert moved > 1e-3, "the step must actually change the weights"
    diff = max((one[k] - two[k]).abs().max().item() for k in one)
    print(f"max |w_1proc - w_2proc| after one step: {diff:.3g}")
    assert diff <= 1e-6


def _train_here(tiny, name, *extra):
    """A one-process run in this process: the same code path as `vit-ablate train` without paying
    a fresh interpreter's imports (the two-process runs need their own processes)."""
    from vit_ablate.training.run import train

    # one thread (tests/training/conftest.py), as the two-process side's OMP_NUM_THREADS=1: the same summation order
    result = train(tiny(f"name={name}", *extra))
    assert result["status"] == "completed", result
    return result


def _initial(tiny):
    # the initial weights: a fresh model built with the run's seed, exactly as training builds it
    from vit_ablate.training.module import ViTModule
    import lightning as L

    cfg = tiny()
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    return {f"model.{k}": v for k, v in ViTModule(cfg).model.state_dict().items()}


def _validate_in_one_process(checkpoint):
    """The checkpoint's validation metrics, computed in this process on one device."""
    import lightning as L

    from vit_ablate.data import build_datamodule
    from vit_ablate.training.module import ViTModule

    module = ViTModule.load_from_checkpoint(checkpoint, map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False)
    metrics = trainer.validate(module, datamodule=build_datamodule(module.cfg), verbose=False)[0]
    return {k: float(v) for k, v in metrics.items()}


def _ranks(run):
    return [json.loads((run / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]


def _two_ranks_were_placed_and_fed_as_specified(run, stderr):
    assert "global batch 64 = 2 device(s) × 32 per device × 1 accumulation step(s)" in stderr
    rank0, rank1 = _ranks(run)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert rank0["config_digest"] == rank1["config_digest"]  # both ranks trained the same config
    assert set(rank0["first_batch_samples"]).isdisjoint(rank1["first_batch_samples"])
    assert len(rank0["first_batch_samples"]) == 32
    # torch's SyncBatchNorm runs on CUDA only; on CPU the conv stem keeps per-rank statistics
    assert rank0["sync_batchnorm"] is rank1["sync_batchnorm"] is False


# Lightning's own launcher (rank 1 a child of rank 0) is run, killed and resumed in the test below,
# with the conv stem's per-rank batch-norm statistics; here the patch stem keeps the ranks' weights
# and buffers identical, so one process can validate what the two ranks validated.
@pytest.mark.slow
def test_a_torchrun_run_end_to_end_validates_as_one_process_would(tiny, tmp_path):
    done = _train(tiny, "ddp", 2, "trainer.max_epochs=2", launcher="torchrun")
    run = tmp_path / "ddp"
    _two_ranks_were_placed_and_fed_as_specified(run, done.stderr)
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"] == 2
    assert result["global_step"] == 2 * (512 // 64)  # each step consumed the global batch of 64
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]

    # The two ranks' validation of the final weights (257 samples: the ranks cannot split them
    # evenly) equals one process's validation of the same checkpoint ...
    two = result["final"]
    one = _validate_in_one_process(run / "checkpoints" / "last.ckpt")
    print("1 process:", one, "2 processes:", two)
    assert one["val/acc1"] == two["val/acc1"]
    assert one["val/loss"] == pytest.approx(two["val/loss"], abs=1e-6)
    # ... and the accuracy is a count over all 257 samples, not over a padded 258
    correct = two["val/acc1"] * 257
    assert abs(correct - round(correct)) < 1e-4


def test_sync_batchnorm_is_chosen_for_multi_gpu_ddp_only():
    from vit_ablate.config import load_config
    from vit_ablate.training.trainer import Placement, use_sync_batchnorm

    cfg = load_config(overrides=["model.stem=conv"])
    assert use_sync_batchnorm(cfg, Placement(devices=2, cuda=True))
    assert not use_sync_batchnorm(cfg, Placement(devices=1, cuda=True))
    assert not use_sync_batchnorm(cfg, Placement(devices=2, cuda=False))
    assert not use_sync_batchnorm(load_config(overrides=["trainer.sync_batchnorm=false"]), Placement(devices=2, cuda=True))


@pytest.mark.slow
def test_a_lightning_launched_ddp_run_stopped_by_sigterm_resumes_on_one_device(tiny, tmp_path, capfd):
    # SIGTERM to rank 0 alone (as `kill <pid>`); Lightning's own handler deadlocked two ranks here
    import csv
    import time

    args = tiny.args("name=moving", "trainer.max_epochs=4", "data.synthetic.num_train=2048", "model.stem=conv")
    run = tmp_path / "moving"
    stderr = tmp_path / "launcher.err"
    with open(stderr, "w") as err:
        launcher = subprocess.Popen([sys.executable, "-m", "vit_ablate", "train", *args, "trainer.devices=2"],
                                    cwd=Path(__file__).resolve().parents[2], env=ENV, start_new_session=True,
                                    stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            rows = list(csv.DictReader((run / "metrics.csv").open())) if (run / "metrics.csv").exists() else []
            if rows and (run / "checkpoints" / "last.ckpt").exists():
                break
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=120) == 130, stderr.read_text()[-3000:]
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    result = json.loads((run / "result.json").read_text())
    assert (result["status"], result["error"]) == ("interrupted", "stopped by SIGTERM") and result["epochs"] < 4
    assert not (run / ".lock").exists()
    _two_ranks_were_placed_and_fed_as_specified(run, stderr.read_text())

    capfd.readouterr()
    _train_here(tiny, "moving", "trainer.max_epochs=4", "data.synthetic.num_train=2048", "model.stem=conv")
    assert "resuming from" in capfd.readouterr().err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"] == 4
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
