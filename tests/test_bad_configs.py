"""The fault campaign's bad configurations: each is refused by config validation with exit code 2 and
a message naming its key, before anything is written and before Lightning is imported."""

import json
import re
import subprocess
import sys
import time
import types

import pytest

from vit_ablate.cli import main

# (command-line items, text the message must contain: the key, and where it helps the valid value)
BAD_CONFIGS = [
    # ranges, by type of key
    (["optim.ema_decay=2.0"], "optim.ema_decay=2.0", "[0, 1)"),
    (["optim.weight_decay=-1"], "optim.weight_decay=-1", ">= 0"),
    (["optim.warmup_steps=-10"], "optim.warmup_steps=-10", ">= 0"),
    (["augment.mixup=-1"], "augment.mixup=-1", ">= 0"),
    (["optim.grad_clip=-1"], "optim.grad_clip=-1", ">= 0"),
    (["data.num_workers=-1"], "data.num_workers=-1", "data.num_workers=0"),
    (["data.eval_batch_size=0"], "data.eval_batch_size=0", "positive"),
    (["data.synthetic.grid=0"], "data.synthetic.grid=0", "data.synthetic.grid=4"),
    (["data.synthetic.grid=5"], "data.synthetic.grid=5", "multiple of 2"),
    (["data.synthetic.cell=1"], "data.synthetic.cell=1", "data.synthetic.cell=2"),
    (["data.synthetic.num_train=0"], "data.synthetic.num_train=0", "positive"),
    (["optim.betas=[1.5,0.999]"], "optim.betas=[1.5, 0.999]", "[0, 1)"),
    (["optim.betas=[0.9]"], "optim.betas=[0.9]", "two numbers"),
    (["optim.lr=0"], "optim.lr=0", "positive"),
    (["optim.lr=inf"], "optim.lr=inf is not a finite number", "optim.lr=0.001"),
    (["optim.lr=nan"], "optim.lr=nan is not a finite number", "optim.lr=0.001"),
    (["optim.momentum=1.5"], "optim.momentum=1.5", "[0, 1)"),
    (["optim.eps=0"], "optim.eps=0", "positive"),
    (["optim.min_lr=-1e-5"], "optim.min_lr=-1e-05", ">= 0"),
    (["optim.warmup_epochs=-1"], "optim.warmup_epochs=-1", ">= 0"),
    (["optim.lr_base_batch=0"], "optim.lr_base_batch=0", "positive"),
    (["augment.cutmix=-0.5"], "augment.cutmix=-0.5", ">= 0"),
    (["augment.label_smoothing=1.0"], "augment.label_smoothing=1.0", "[0, 1)"),
    (["augment.random_crop_padding=-4"], "augment.random_crop_padding=-4", ">= 0"),
    (["model.drop_path=-0.1"], "model.drop_path=-0.1", "[0, 1)"),
    (["model.attn_dropout=1"], "model.attn_dropout=1", "[0, 1)"),
    (["model.layer_norm_eps=0"], "model.layer_norm_eps=0", "positive"),
    (["model.depth=0"], "model.depth=0", "positive"),
    (["model.hybrid_layers=[3,0,9]"], "model.hybrid_layers=[3, 0, 9]", "each element"),
    (["seed=-1"], "seed=-1", "seed=0"),
    (["trainer.num_nodes=0"], "trainer.num_nodes=0", "positive"),
    (["trainer.max_epochs=-5"], "trainer.max_epochs=-5", ">= -1"),
    (["trainer.limit_train_batches=-0.5"], "trainer.limit_train_batches=-0.5", ">= 0"),
    (["trainer.limit_val_batches=2.5"], "trainer.limit_val_batches=2.5", "whole number"),
    (["trainer.check_val_every_n_epoch=0"], "trainer.check_val_every_n_epoch=0", "positive"),
    (["trainer.ddp.bucket_cap_mb=0"], "trainer.ddp.bucket_cap_mb=0", "positive"),
    (["evaluate.fewshot_shots=[0,5]"], "evaluate.fewshot_shots=[0, 5]", "positive"),
    (["evaluate.fewshot_draws=0"], "evaluate.fewshot_draws=0", "positive"),
    # names and shapes
    (["trainer.devices=0"], "trainer.devices=0", "trainer.devices=1"),
    (["trainer.devices=-2"], "trainer.devices=-2", "[0, 1]"),
    (["trainer.devices=[0,0]"], "trainer.devices=[0, 0]", "distinct"),
    # a whole step replayed as one CUDA graph: what it cannot hold
    (["trainer.cuda_graph=true", "trainer.compile=reduce-overhead"], "trainer.compile=reduce-overhead", "trainer.compile=default"),
    (["trainer.cuda_graph=true", "trainer.precision=16-mixed"], "16-mixed", "bf16-mixed"),
    (["trainer.cuda_graph=true", "trainer.devices=2"], "trainer.devices=2", "trainer.devices=1"),
    (["trainer.cuda_graph=true", "optim.name=sgd"], "optim.name=sgd", "adamw"),
    (["trainer.cuda_graph=true", "trainer.strategy=ddp"], "trainer.strategy=ddp", "trainer.strategy=auto"),
    (["trainer.cuda_graph=true", "data.micro_batch_size=32"], "data.micro_batch_size=32", "accumulation"),
    (["trainer.strategy=dpp"], "trainer.strategy='dpp'", "did you mean 'ddp'"),
    (["augment.randaugment=foo"], "augment.randaugment='foo'", "rand-m10-n2"),
    (["augment.randaugment=rand-m9-x3"], "augment.randaugment='rand-m9-x3'", "rand-m10-n2"),
    (["init.format=onnx"], "init.format='onnx'", "auto, vit_ablate, timm, hf"),
    (["init.path=/nonexistent/weights.ckpt"], "init.path='/nonexistent/weights.ckpt' does not exist", "init.path=null"),
    (["model.hybrid_stage=5"], "model.hybrid_stage=5", "3, 4"),
    (["trainer.precision=fp8"], "trainer.precision='fp8'", "bf16-mixed"),
    (["model.variant=Ti/5"], "model.variant='Ti/5'", "5 does not divide 32"),
    # wrong types, read like the typo errors
    (["trainer.max_epochs=abc"], "trainer.max_epochs='abc'", "must be an integer"),
    (["trainer=5"], "trainer=5", "section of keys"),
    (["augment.hflip=maybe"], "augment.hflip='maybe'", "true or false"),
    # the data's sizes
    (["data.val_split=100000"], "data.val_split=100000", "data.synthetic.num_train=8192"),
    (["data.train_subset=100000"], "data.train_subset=100000", "at most data.train_subset=8192"),
    (["data.val_split=6000", "data.train_subset=4000"], "data.train_subset=4000", "data.train_subset=2192"),
    (["data.img_size=64"], "data.img_size=64", "leave data.img_size unset"),
    (["model.num_classes=10"], "model.num_classes=10 but data 'synthetic' gives 8", "model.num_classes=8"),
    (["model.img_size=64"], "model.img_size=64 but data 'synthetic' gives 32", "model.img_size=32"),
    (["data.name=cifar10", "model.num_classes=100"], "model.num_classes=100 but data 'cifar10' gives 10", "model.num_classes=10"),
    # the global batch over devices and micro-batches
    (["trainer.devices=3"], "trainer.devices", "data.batch_size=126 or 129"),
    (["data.micro_batch_size=48"], "data.micro_batch_size=48", "data.micro_batch_size=32 or 64"),
    (["trainer.devices=2", "data.batch_size=127"], "data.batch_size=127", "data.batch_size=126 or 128"),
    (["trainer.devices=2", "trainer.num_nodes=2", "data.batch_size=130"], "data.batch_size=130", "trainer.num_nodes"),
]


@pytest.fixture(scope="module")
def registries_imported():
    """Import what the registry checks import once, so each case's time is the validation's own."""
    import lightning.pytorch.strategies  # noqa: F401
    import timm.optim  # noqa: F401

    import vit_ablate.model  # noqa: F401


@pytest.fixture
def no_training(monkeypatch):
    """A case that passed validation would reach training: make that a failure, not a 10-minute run."""
    stub = types.ModuleType("vit_ablate.training.run")

    def train(cfg):
        raise AssertionError(f"config validation accepted a bad config: {cfg}")

    stub.train = train
    monkeypatch.setitem(sys.modules, "vit_ablate.training.run", stub)


@pytest.mark.parametrize("items, key_text, hint", BAD_CONFIGS, ids=[" ".join(i) for i, _, _ in BAD_CONFIGS])
def test_bad_config_exits_2_naming_its_key_and_writes_nothing(items, key_text, hint, tmp_path, capsys, registries_imported, no_training):
    output_dir = tmp_path / "runs"
    started = time.perf_counter()
    code = main(["train", *items, f"output_dir={output_dir}"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert key_text in err and hint in err, err
    assert err.startswith("vit-ablate: error: ") and err.count("\n") == 1, "one line, no traceback"
    assert "reference_type" not in err and "object_type" not in err
    assert not output_dir.exists() and not any(tmp_path.iterdir()), "nothing may be written for a bad config"
    assert elapsed < 2.0, f"validation took {elapsed:.2f} s"


def test_accelerator_gpu_without_a_gpu_is_named(tmp_path, capsys, no_training):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["train", "trainer.accelerator=gpu", f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert "trainer.accelerator='gpu'" in err and "trainer.accelerator=cpu" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("text", ["inf", "-inf", "nan"])
def test_every_numeric_key_refuses_inf_and_nan(text):
    from vit_ablate.config import SCHEMA, ConfigError, load_config

    numeric = {key: "List" in str(f.type) for key, f in SCHEMA.items() if "float" in str(f.type)}
    assert len(numeric) >= 15
    for key, is_list in numeric.items():
        with pytest.raises(ConfigError, match=f"^{re.escape(key)}=.* is not a finite number"):
            load_config(overrides=[f"{key}={f'[{text}, {text}]' if is_list else text}"])


def test_table_covers_the_campaign():
    assert len(BAD_CONFIGS) >= 40
    campaign = ["optim.ema_decay", "optim.weight_decay", "optim.warmup_steps", "augment.mixup", "optim.grad_clip",
                "data.num_workers", "data.eval_batch_size", "data.val_split", "trainer.devices", "trainer.strategy",
                "data.synthetic.grid", "optim.betas", "augment.randaugment", "data.train_subset", "model.num_classes",
                "model.img_size", "data.micro_batch_size", "data.batch_size"]
    tried = " ".join(" ".join(items) for items, _, _ in BAD_CONFIGS)
    assert all(f"{key}=" in tried for key in campaign)


# The console command, in a fresh interpreter: a config error fails without importing torch or Lightning.
PROBE = """
import json, sys, time
started = time.perf_counter()
from vit_ablate.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "seconds": time.perf_counter() - started,
                  "torch": "torch" in sys.modules, "lightning": "lightning" in sys.modules}))
"""


@pytest.mark.parametrize("items", [["optim.ema_decay=2.0"], ["trainer.devices=3"], ["model.num_classes=10"], ["data.micro_batch_size=48"]])
def test_console_command_fails_fast_without_importing_torch(items, tmp_path):
    output_dir = tmp_path / "runs"
    done = subprocess.run([sys.executable, "-c", PROBE, "train", *items, f"output_dir={output_dir}"],
                          capture_output=True, text=True, cwd=tmp_path)
    probe = json.loads(done.stdout.strip().splitlines()[-1])
    assert probe["code"] == 2 and items[0].partition("=")[0] in done.stderr
    assert not probe["torch"] and not probe["lightning"]
    assert probe["seconds"] < 2.0
    assert not output_dir.exists()
    whole = subprocess.run([sys.executable, "-m", "vit_ablate", "train", *items, f"output_dir={output_dir}"],
                           capture_output=True, text=True)
    assert whole.returncode == 2 and whole.stderr.startswith("vit-ablate: error: ") and not output_dir.exists()


def test_init_path_folder_without_config_json_is_named(tmp_path, capsys, no_training):
    folder = tmp_path / "not-a-hf-model"
    folder.mkdir()
    assert main(["train", f"init.path={folder}", f"output_dir={tmp_path / 'runs'}"]) == 2
    err = capsys.readouterr().err
    assert f"init.path='{folder}' is a folder without config.json" in err
    assert not (tmp_path / "runs").exists()


def test_export_of_a_missing_run_exits_2(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nowhere"), "--to", "hf"]) == 2
    assert "nowhere" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
