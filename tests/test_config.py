"""Strict configs: every malformed command line fails before anything runs, naming its problem."""

import subprocess
import sys

import pytest

from vit_ablate.cli import main
from vit_ablate.config import ConfigError, load_config, parse_overrides

BAD_COMMAND_LINES = [
    (["model.pos_embd=2d"], "unknown config key 'model.pos_embd'", "did you mean 'model.pos_embed'"),
    (["optim.lrr=0.1"], "unknown config key 'optim.lrr'", "did you mean 'optim.lr'"),
    (["modle.pos_embed=2d"], "unknown config key 'modle", "model"),
    (["model.pos_embed=2D"], "model.pos_embed='2D' is not valid", "did you mean '2d'"),
    (["model.depth=deep"], "model.depth", "deep"),
    (["model.pool=mean"], "model.pool='mean' is not valid", "cls, gap, gap_fc_norm, map"),
    (["model.pos_embed=none", "model.pos_embed_at=every_layer"], "model.pos_embed_at='every_layer'", "supports input"),
    (["model.img_size=30"], "model.img_size=30 but data 'synthetic' gives 32", "set model.img_size=32"),
    (["data.name=imagefolder", "model.img_size=30"], "model.variant='Ti/8' cuts the image into 8×8-pixel patches", "8 does not divide 30"),
    (["optim.schedule=cosin"], "optim.schedule='cosin' is not valid", "did you mean 'cosine'"),
    (["optim.name=adamm"], "optim.name='adamm' is not a timm optimizer", "did you mean 'adam"),
    (["data.name=cifra10"], "data.name='cifra10' is not valid", "did you mean 'cifar10'"),
    (["data.batch_size=0"], "data.batch_size=0", "positive"),
    (["model.dropout=1.5"], "model.dropout=1.5", "[0, 1)"),
    (["trainer.precision=bf16"], "trainer.precision='bf16' is not valid", "bf16-mixed"),
    (["model.pos_embed"], "not of the form key=value", "model.pos_embed"),
    (["model.hybrid_layers=[1, 2"], "cannot parse", "hybrid_layers"),
    (["does_not_exist.yaml"], "config file 'does_not_exist.yaml' does not exist", ""),
    (["optim.name=sgd", "optim.momentum=0"], "is Nesterov SGD in timm", "optim.name=momentum"),
    (["trainer.compile=reduce-overhed"], "trainer.compile='reduce-overhed' is not valid", "did you mean 'reduce-overhead'"),
]


@pytest.mark.parametrize("argv, first, second", BAD_COMMAND_LINES, ids=[" ".join(a) for a, _, _ in BAD_COMMAND_LINES])
def test_bad_command_lines_exit_2_with_their_own_message(argv, first, second, capsys, tmp_path):
    code = main(["train", *argv, f"output_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert first in err and second in err, err
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad config"


def test_typo_in_a_yaml_file_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  pos_embd: 2d\n")
    assert main(["config", "show", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.pos_embd" in err and str(bad) in err and "did you mean 'model.pos_embed'" in err


def test_wandb_style_values_parse():
    cfg = parse_overrides(["model.hybrid_layers=[1, 2]", "data.train_subset=None", "augment.hflip=True", "model.qkv_bias=false"])
    assert list(cfg.model.hybrid_layers) == [1, 2]
    assert cfg.data.train_subset is None
    assert cfg.augment.hflip is True and cfg.model.qkv_bias is False
    full = load_config(overrides=["data.train_subset=None", "augment.hflip=True", "optim.lr=3e-4", "trainer.devices=2"])
    assert full.optim.lr == pytest.approx(3e-4) and full.trainer.devices == 2


def test_merge_order_files_then_overrides(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("model:\n  pos_embed: 2d\n  depth: 3\n")
    b.write_text("model:\n  depth: 5\n")
    cfg = load_config([a, b], ["model.depth=7"])
    assert (cfg.model.pos_embed, cfg.model.depth) == ("2d", 7)
    assert load_config([a, b]).model.depth == 5


def test_config_show_prints_the_resolved_config(capsys):
    assert main(["config", "show", "experiments/quickstart.yaml", "model.pos_embed=2d"]) == 0
    out = capsys.readouterr().out
    assert "pos_embed: 2d" in out and "name: synthetic" in out


def test_console_script_exit_code_and_help():
    bad = subprocess.run([sys.executable, "-m", "vit_ablate", "train", "model.pos_embd=2d"], capture_output=True, text=True)
    assert bad.returncode == 2 and "did you mean 'model.pos_embed'" in bad.stderr
    helped = subprocess.run([sys.executable, "-m", "vit_ablate", "train", "model.pos_embed=2d", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "model.pos_embed=2d " in helped.stdout


def test_config_error_is_a_value_error():
    with pytest.raises(ValueError):
        load_config(overrides=["model.norm=sandwich"])
    assert issubclass(ConfigError, ValueError)


def test_compile_takes_a_bool_or_a_torch_compile_mode():
    from vit_ablate.config import compile_mode

    assert compile_mode(load_config([], ["trainer.compile=true"]).trainer.compile) == "default"
    assert compile_mode(load_config([], ["trainer.compile=false"]).trainer.compile) is None
    assert compile_mode(load_config([], ["trainer.compile=reduce-overhead"]).trainer.compile) == "reduce-overhead"
    assert compile_mode(load_config().trainer.compile) is None


def test_every_nesterov_optimizer_of_timm_needs_momentum():
    for name in ("sgd", "sgdw", "nesterov"):
        with pytest.raises(ConfigError, match="Nesterov"):
            load_config([], [f"optim.name={name}", "optim.momentum=0"])
    assert load_config([], ["optim.name=momentum", "optim.momentum=0"]).optim.name == "momentum"


def test_a_saved_config_stays_valid_on_another_machine():
    """A checkpoint's config names the trainer's GPU and its init weights; analyze and resume read it on
    machines without either, so only a run about to start checks them (load_config)."""
    from vit_ablate.config import from_container, to_container

    saved = to_container(load_config(overrides=["trainer.accelerator=cuda", "init.path=/elsewhere/w.ckpt"], validate=False))
    cfg = from_container(saved)
    assert (cfg.trainer.accelerator, cfg.init.path) == ("cuda", "/elsewhere/w.ckpt")
    # `config show` and a sweep's up-front check accept it; a run about to start here refuses it
    assert load_config(overrides=["init.path=/elsewhere/w.ckpt", "trainer.accelerator=cuda"]).init.path == "/elsewhere/w.ckpt"
    with pytest.raises(ConfigError, match="init.path='/elsewhere/w.ckpt' does not exist"):
        load_config(overrides=["init.path=/elsewhere/w.ckpt"], machine=True)


def test_limit_batches_take_a_fraction_or_a_whole_count():
    cfg = load_config(overrides=["trainer.limit_train_batches=4", "trainer.limit_val_batches=0.25"])
    assert (cfg.trainer.limit_train_batches, cfg.trainer.limit_val_batches) == (4, 0.25)
    # Lightning reads int 1 as one batch and float 1.0 as all of them: the config keeps the difference
    one, all_ = load_config(overrides=["trainer.limit_val_batches=1"]), load_config(overrides=["trainer.limit_val_batches=1.0"])
    assert (type(one.trainer.limit_val_batches), type(all_.trainer.limit_val_batches)) == (int, float)
    assert (one.trainer.limit_val_batches, all_.trainer.limit_val_batches) == (1, 1.0)
    with pytest.raises(ConfigError, match="for 5 batches write trainer.limit_val_batches=5"):
        load_config(overrides=["trainer.limit_val_batches=5.0"])
    with pytest.raises(ConfigError, match="trainer.limit_val_batches=some"):
        load_config(overrides=["trainer.limit_val_batches=some"])
    with pytest.raises(ConfigError, match="trainer.limit_train_batches=2.5 is neither a fraction"):
        load_config(overrides=["trainer.limit_train_batches=2.5"])


def test_grad_clip_zero_means_off():
    assert load_config(overrides=["optim.grad_clip=0"]).optim.grad_clip == 0
    with pytest.raises(ConfigError, match="optim.grad_clip=-1.0 is out of range"):
        load_config(overrides=["optim.grad_clip=-1"])


def test_relative_data_roots_lie_under_the_one_data_variable(monkeypatch, tmp_path):
    from pathlib import Path

    from vit_ablate.config import DATA_ROOT_ENV, data_root

    def root(*overrides):
        return data_root(load_config(overrides=list(overrides), validate=False))

    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)
    assert (root(), root("data.root=cifar10")) == (Path(".data"), Path(".data/cifar10"))
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path))
    assert (root(), root("data.root=cifar10")) == (tmp_path, tmp_path / "cifar10")
    assert root(f"data.root={tmp_path / 'elsewhere'}") == tmp_path / "elsewhere"  # an absolute root as given
    from vit_ablate.config import SCHEMA

    assert f"${DATA_ROOT_ENV}" in SCHEMA["data.root"].metadata["help"]  # documented where --help shows it


def test_no_experiment_or_sweep_names_one_machines_folder():
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    files = [p for folder in ("experiments", "sweeps") for p in (repo / folder).rglob("*") if p.is_file()]
    assert len(files) > 10
    for path in files:
        assert not re.search(r"/root\b|/home/|\.data/", path.read_text()), path
