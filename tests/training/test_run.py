"""The run directory contract: resume after SIGKILL, divergence, atomic results, no overwrites."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from vit_ablate.config import ConfigError, load_config
from vit_ablate.training import module as module_lib
from vit_ablate.training.run import train
from vit_ablate.training.trainer import plan_batches, resolve_devices



def _colour_folder(root: Path, splits) -> Path:
    """Three classes of 32-px images, four each, every image a different colour."""
    from PIL import Image

    for s, split in enumerate(splits):
        for c, name in enumerate(("cat", "dog", "emu")):
            (root / split / name).mkdir(parents=True)
            for k in range(4):
                Image.new("RGB", (32, 32), (80 * c, 60 * k, 100 * s + 7 * k)).save(root / split / name / f"{k}.png")
    return root


@pytest.mark.parametrize("splits", [("train", "test"), ("train", "val", "test")])
def test_the_test_pass_is_not_repeated_where_the_test_split_is_the_validation_split(tiny, tmp_path, monkeypatch, splits):
    """With test/ standing in for val/, the last validation has already measured the final weights on the
    test images: its numbers are the test numbers, the same a test pass computes (forced here)."""
    import lightning as L

    from vit_ablate.data.base import ImageDataModule

    root = _colour_folder(tmp_path / "colours", splits)
    args = ("data.name=imagefolder", f"data.root={root}", "data.num_workers=0", "data.batch_size=4",
            "model.num_classes=3", "trainer.max_epochs=2")
    tests_run, real_test = [], L.Trainer.test
    monkeypatch.setattr(L.Trainer, "test", lambda self, *a, **k: tests_run.append(1) or real_test(self, *a, **k))
    result = train(tiny(*args, "name=once"))
    assert result["status"] == "completed" and len(tests_run) == (len(splits) == 3)
    if len(splits) == 2:
        assert result["test"] == {k.replace("val/", "test/"): v for k, v in result["final"].items()}
        monkeypatch.setattr(ImageDataModule, "test_is_validation", lambda self: False)
        tested = train(tiny(*args, "name=twice"))
        assert len(tests_run) == 1 and tested["final"] == result["final"]
        assert tested["test"] == pytest.approx(result["test"], abs=1e-6)
    else:  # val/ and test/ differ: tested apart
        assert result["test"]["test/loss"] != result["final"]["val/loss"]


def test_run_directory_layout_and_result(tiny, tmp_path):
    result = train(tiny("name=layout", "trainer.max_epochs=2"))
    run = tmp_path / "layout"
    assert result["status"] == "completed"
    assert (run / "config.yaml").is_file() and (run / "checkpoints" / "last.ckpt").is_file()
    assert (run / "checkpoints" / "best.ckpt").is_file()
    on_disk = json.loads((run / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    for key in ("status", "final", "best", "test", "epochs", "global_step", "wall_time_s", "throughput_img_s",
                "seed", "config_digest", "version", "git_rev", "finished_at"):
        assert key in on_disk
    assert on_disk["epochs"] == 2 and on_disk["global_step"] == 2 * (1024 // 64)
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert float(rows[-1]["val/acc1"]) == pytest.approx(on_disk["final"]["val/acc1"])
    assert 0.0 <= on_disk["test"]["test/acc1"] <= 1.0
    rank = json.loads((run / "ranks" / "rank-0.json").read_text())
    assert rank["config_digest"] == on_disk["config_digest"] and len(rank["first_batch_samples"]) == 64
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))


def test_a_finished_run_is_not_run_again_and_a_different_config_is_refused(tiny, tmp_path):
    train(tiny("name=once"))
    result_file = tmp_path / "once" / "result.json"
    before = (result_file.stat().st_mtime_ns, result_file.read_bytes())
    again = train(tiny("name=once"))
    assert again["status"] == "completed"
    assert (result_file.stat().st_mtime_ns, result_file.read_bytes()) == before
    with pytest.raises(ConfigError, match="different configuration"):
        train(tiny("name=once", "model.pos_embed=2d"))


def test_a_nan_loss_ends_the_run_as_diverged(tiny, tmp_path, monkeypatch):
    original = module_lib.ViTModule.training_step

    def poisoned(self, batch, batch_idx):
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step >= 5 else loss

    monkeypatch.setattr(module_lib.ViTModule, "training_step", poisoned)
    result = train(tiny("name=nan", "trainer.max_epochs=50"))
    assert result["status"] == "diverged"
    assert "non-finite" in result["error"]
    assert result["global_step"] < 50  # stopped within the check interval, not after 50 epochs
    assert json.loads((tmp_path / "nan" / "result.json").read_text())["status"] == "diverged"


def test_global_batch_plan():
    cfg = load_config(overrides=["data.batch_size=256", "data.micro_batch_size=32"])
    plan = plan_batches(cfg, 4)
    assert (plan.per_device, plan.micro_batch, plan.accumulation) == (64, 32, 2)
    with pytest.raises(ConfigError, match="not divisible by the 3 devices"):
        plan_batches(cfg, 3)
    with pytest.raises(ConfigError, match="micro_batch_size=24"):
        plan_batches(load_config(overrides=["data.batch_size=256", "data.micro_batch_size=24"]), 2)


def _state(path):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def test_device_placement_through_lightnings_public_accelerator_interface():
    # the interface resolve_devices relies on; a Lightning release that renames it fails here, by name
    from lightning.pytorch.accelerators import CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator

    for accelerator in (CPUAccelerator, CUDAAccelerator, MPSAccelerator, XLAAccelerator):
        for method in ("is_available", "auto_device_count", "parse_devices", "get_parallel_devices"):
            assert callable(getattr(accelerator, method, None)), f"{accelerator.__name__}.{method}"
    cpu = ["trainer.accelerator=cpu"]
    assert resolve_devices(load_config(overrides=cpu + ["trainer.devices=1"])).devices == 1
    assert resolve_devices(load_config(overrides=cpu + ["trainer.devices=2"])).devices == 2  # DDP over CPU processes
    assert resolve_devices(load_config(overrides=cpu + ["trainer.devices=auto"])).devices == 1
    placement = resolve_devices(load_config(overrides=["trainer.accelerator=auto"]))
    assert placement.cuda == torch.cuda.is_available()
    if not torch.cuda.is_available():
        assert placement.devices == 1
        with pytest.raises(ConfigError, match="no cuda device"):
            resolve_devices(load_config(overrides=["trainer.accelerator=cuda"]))


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tiny, tmp_path, capfd):
    args = ["trainer.max_epochs=4", "data.synthetic.num_train=2048"]
    command = [sys.executable, "-m", "vit_ablate", "train", *tiny.args(*args), "name=killed"]
    run = tmp_path / "killed"
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def kill_in_epoch_2():
        # once epoch 1 has been checkpointed and epoch 2 is under way: SIGKILL, without warning
        deadline = time.time() + 240
        while time.time() < deadline:
            rows = list(csv.DictReader((run / "metrics.csv").open())) if (run / "metrics.csv").exists() else []
            if len(rows) >= 2 and (run / "checkpoints" / "last.ckpt").exists():
                time.sleep(0.3)
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)

    killer = threading.Thread(target=kill_in_epoch_2)
    killer.start()  # watches the run while this process trains the reference (the run starts by importing)
    try:
        reference = train(tiny(*args, "name=reference"))
    finally:
        killer.join()
        proc.wait()
    assert not (run / "result.json").exists(), "the killed run must not have finished"

    capfd.readouterr()
    assert train(tiny(*args, "name=killed"))["status"] == "completed"  # the rerun, in this process
    assert "resuming from" in capfd.readouterr().err
    result = json.loads((run / "result.json").read_text())
    assert result["status"] == "completed" and result["epochs"] == 4
    for section in ("final", "test"):
        for key, value in reference[section].items():
            assert result[section][key] == pytest.approx(value, abs=1e-6), (section, key)
    ours, theirs = _state(run / "checkpoints" / "last.ckpt"), _state(tmp_path / "reference" / "checkpoints" / "last.ckpt")
    assert max((ours[k].float() - theirs[k].float()).abs().max().item() for k in ours) <= 1e-6
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]  # no epoch twice


def test_compile_wraps_the_training_forward_only(tiny):
    cfg = tiny("trainer.compile=reduce-overhead")
    compiled = module_lib.ViTModule(cfg)
    assert isinstance(compiled._train_forward, torch._dynamo.eval_frame.OptimizedModule)
    assert compiled._train_forward._orig_mod is compiled.model  # the same parameters, trained in place
    eager = module_lib.ViTModule(tiny())
    assert eager._train_forward is eager.model
    # not registered as a submodule: checkpoints hold the model's own names, once
    assert set(compiled.state_dict()) == set(eager.state_dict())
    assert not any("_orig_mod" in k or "_train_forward" in k for k in compiled.state_dict())


def test_every_compile_is_static_so_a_second_shape_is_never_traced_symbolically(monkeypatch):
    """trainer.compile and the bench compile through compile_forward, with dynamic=False: a recompile
    for another shape (a second model in the bench) is then a static one, which Inductor compiles,
    where its automatic-dynamic form failed on ViT-B/16 (results/bench/gpu_whole_step)."""
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    model = torch.nn.Linear(2, 2)
    assert module_lib.compile_forward(model, False) is model and not calls
    for setting, mode in ((True, "default"), ("reduce-overhead", "reduce-overhead")):
        module_lib.compile_forward(model, setting)
        assert calls.pop() == {"mode": mode, "dynamic": False}


@pytest.mark.slow
def test_a_compiled_run_matches_an_eager_one(tiny, tmp_path):
    """torch.compile (CPU inductor here) trains the same model: same checkpoint keys, metrics within
    compile's rounding after one epoch, and val = test on the same data as in eager runs."""
    eager = train(tiny("name=eager"))
    compiled = train(tiny("name=compiled", "trainer.compile=true"))
    assert compiled["status"] == "completed"
    assert compiled["final"]["val/loss"] == pytest.approx(eager["final"]["val/loss"], rel=1e-3)
    assert compiled["final"]["val/acc1"] == pytest.approx(eager["final"]["val/acc1"], abs=0.01)
    keys = {name: set(torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"])
            for name in ("eager", "compiled")}
    assert keys["eager"] == keys["compiled"]


def test_step_loss_reaches_the_logger_on_its_logging_steps(tiny, tmp_path):
    """The step loss is logged only on the steps Lightning writes to its loggers: all of those, no
    others; and with trainer.cuda_graph (manual optimization, eager on a CPU) the same losses."""
    logged = {}
    for name, extra in (("steplog", []), ("steplog_whole", ["trainer.cuda_graph=true"])):
        result = train(tiny(f"name={name}", "logging.csv=true", "trainer.log_every_n_steps=4", *extra))
        assert result["status"] == "completed"
        rows = list(csv.DictReader((tmp_path / name / "logs" / "version_0" / "metrics.csv").open()))
        logged[name] = {int(r["step"]): float(r["train/loss"]) for r in rows if r.get("train/loss")}
        assert sorted(logged[name]) == [3, 7, 11, 15]  # 16 steps an epoch (1024 / 64), every 4th
        assert all(value > 0 for value in logged[name].values())
    for step, value in logged["steplog"].items():
        assert logged["steplog_whole"][step] == pytest.approx(value, abs=1e-6), step


def test_a_lone_run_takes_the_free_cores_unless_omp_num_threads_says_otherwise(monkeypatch, capsys):
    from vit_ablate.training import trainer

    chosen = []
    monkeypatch.setattr(trainer.torch, "set_num_threads", chosen.append)
    monkeypatch.setattr(trainer.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS")
    for busy, threads in ((5.4, 3), (0.3, 8), (12.0, 1)):
        monkeypatch.setattr(trainer, "busy_cores", lambda cores, busy=busy: busy)
        trainer.use_free_cores()
        assert chosen.pop() == threads
        assert f"[vit-ablate] using {threads} threads: 8 cores, {busy:.1f} busy" in capsys.readouterr().err
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # set by the user, or by the sweep for each worker
    trainer.use_free_cores()
    assert chosen == [2] and "using 2 threads: OMP_NUM_THREADS=2" in capsys.readouterr().err


def test_busy_cores_are_the_busy_share_of_proc_stat_now_not_the_lagging_load_average(monkeypatch):
    import io

    from vit_ablate.training import trainer

    # cpu user nice system idle iowait ...: between the two reads 25 of 100 ticks were busy
    reads = iter(["cpu 100 0 100 700 100 0 0 0 0 0\n", "cpu 120 0 105 760 115 0 0 0 0 0\n"])
    monkeypatch.setattr(trainer, "open", lambda path: io.StringIO(next(reads)), raising=False)
    monkeypatch.setattr(trainer.os, "getloadavg", lambda: (7.0, 7.0, 7.0))
    assert trainer.busy_cores(4, seconds=0) == pytest.approx(1.0)
