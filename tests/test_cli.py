"""The command line as a new user meets it: `train` alone trains a small ViT on the embedded data, `--help`
explains every key with the names the registries hold, and mistakes get the command's own usage in plain words."""

import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from vit_ablate.cli import main
from vit_ablate.config import (
    FIXED_DATASETS,
    SCHEMA,
    SYNTHETIC_NUM_CLASSES,
    RunConfig,
    is_section,
    load_config,
    to_container,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def captured_train(monkeypatch):
    """Replace the training entry point by one that records the config it is given."""
    seen = []
    stub = types.ModuleType("vit_ablate.training.run")
    stub.train = lambda cfg: seen.append(cfg) or {"status": "completed"}
    monkeypatch.setitem(sys.modules, "vit_ablate.training.run", stub)
    return seen


def test_train_without_arguments_takes_classes_and_image_size_from_the_synthetic_data(captured_train, tmp_path):
    assert main(["train", f"output_dir={tmp_path}"]) == 0
    cfg = captured_train[0]
    assert (cfg.data.name, cfg.model.num_classes, cfg.model.img_size) == ("synthetic", SYNTHETIC_NUM_CLASSES, 32)
    from vit_ablate.model import resolve_spec

    spec = resolve_spec(cfg.model)  # Ti/8: a 4×4 grid of 8-px patches, one glyph cell of the synthetic data each
    assert (spec.variant, spec.dim, spec.depth, spec.grid_side) == ("Ti/8", 192, 12, 4)
    assert resolve_spec(load_config(overrides=["data.name=imagefolder", "model.variant=B/16"]).model).dim == 768  # the paper's


@pytest.mark.parametrize(
    "overrides, num_classes, img_size",
    [
        (["data.synthetic.grid=6"], 8, 48),
        (["data.name=cifar100"], 100, 32),
        (["data.name=cifar10", "data.img_size=64"], 10, 64),
        (["data.name=imagefolder"], 1000, 224),  # only the files know: the paper's ImageNet values stay
        (["data.name=imagefolder", "data.img_size=384"], 1000, 384),
        (["data.name=imagefolder", "model.num_classes=37", "model.img_size=160"], 37, 160),
    ],
)
def test_model_keys_follow_the_data_unless_set(overrides, num_classes, img_size):
    cfg = load_config(overrides=overrides, validate=False)
    assert (cfg.model.num_classes, cfg.model.img_size) == (num_classes, img_size)


def test_a_key_set_in_a_file_is_not_replaced_by_the_data(tmp_path, capsys):
    experiment = tmp_path / "e.yaml"
    experiment.write_text("model:\n  num_classes: 10\n")
    assert main(["config", "show", str(experiment)]) == 2
    assert "model.num_classes=10 but data 'synthetic' gives 8" in capsys.readouterr().err


@pytest.mark.parametrize("experiment", sorted(p.name for p in (REPO / "experiments").glob("*.yaml")))
def test_taking_keys_from_the_data_changes_no_experiment(experiment):
    """Run directories are identified by the config's digest: every experiment file resolves to exactly
    what the schema defaults merged with the file give, as before the data-derived keys existed."""
    path = REPO / "experiments" / experiment
    plain = OmegaConf.merge(OmegaConf.structured(RunConfig), OmegaConf.load(path))
    assert to_container(load_config([path], validate=False)) == to_container(plain)


def test_the_data_facts_agree_with_the_data_modules():
    from vit_ablate.data import CIFAR10DataModule, CIFAR100DataModule, SyntheticDataModule

    assert SyntheticDataModule.num_classes == SYNTHETIC_NUM_CLASSES
    for module, name in ((CIFAR10DataModule, "cifar10"), (CIFAR100DataModule, "cifar100")):
        assert (module.num_classes, module.native_size) == FIXED_DATASETS[name][:2]


# ------------------------------------------------------------------------------------------- --help
def test_train_help_explains_every_key():
    probe = (
        "import json, sys, contextlib, io\n"
        "from vit_ablate.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    try:\n"
        "        main(['train', 'model.pos_embed=2d', '--help'])\n"
        "    except SystemExit as exit:\n"
        "        code = exit.code\n"
        "print(json.dumps({'code': code, 'out': out.getvalue()}))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    result = json.loads(done.stdout)
    assert result["code"] == 0
    lines = result["out"].splitlines()
    for key, f in SCHEMA.items():
        if is_section(key):
            continue
        line = next((l for l in lines if l.startswith(f"  {key}=")), None)
        assert line is not None, key
        assert f.metadata["help"] and f.metadata["help"] in line, key
    assert any(l.startswith("  model.pos_embed=2d ") and l.endswith("valid: 1d | 2d | none | relative | relative_2d_offsets | relative_head_bias | relative_large_init | rope2d | sincos2d") for l in lines)
    assert any(l.startswith("  optim.ema_decay=0.9998 ") and l.endswith("EMA decay per step; valid: [0, 1)") for l in lines)


def test_help_lists_the_names_the_registries_hold(monkeypatch):
    """A name registered anywhere (here a stand-in plugin pooling) is listed and accepted: no list is written twice."""
    from vit_ablate.config import describe
    from vit_ablate.model import AXES, POOLINGS
    from vit_ablate.schema import Registry

    monkeypatch.setitem(POOLINGS._entries, "plugin_pool", POOLINGS.get("gap"))
    text = describe(load_config(overrides=["model.pool=plugin_pool"]))
    registries = {key: f.metadata["valid"] for key, f in SCHEMA.items() if isinstance(f.metadata["valid"], Registry)}
    assert set(registries) == {*AXES, "data.name"}
    for key, registry in registries.items():
        assert any(l.startswith(f"  {key}=") and l.endswith(f"valid: {' | '.join(registry.names())}") for l in text.splitlines()), key
    assert "  model.pool=plugin_pool " in text and "cls | gap | gap_fc_norm | map | plugin_pool" in text


def test_every_key_has_a_meaning():
    for key, f in SCHEMA.items():
        assert f.metadata.get("help"), f"{key} has no help text"


# ------------------------------------------------------------------------------------------- mistakes
def test_dashed_override_gets_trains_usage_and_the_plain_spelling(capsys):
    assert main(["train", "--model.norm=post"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vit-ablate train ")
    assert "overrides are written without dashes: model.norm=post" in err


def test_dashed_key_without_value(capsys):
    assert main(["train", "--model.norm", "post"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vit-ablate train ") and "model.norm=VALUE" in err


def test_unknown_option_of_a_subcommand_shows_that_subcommands_usage(capsys):
    assert main(["config", "show", "--verbose"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: vit-ablate config show ") and "--verbose" in err


def test_patch_that_does_not_tile_the_image_in_plain_words(capsys, tmp_path):
    assert main(["config", "show", "model.variant=Ti/5"]) == 2
    err = capsys.readouterr().err
    assert "model.variant='Ti/5' cuts the image into 5×5-pixel patches" in err
    assert "5 does not divide 32" in err and "model.variant=Ti/4" in err
    assert main(["config", "show", "data.name=imagefolder", "model.patch_size=15"]) == 2
    err = capsys.readouterr().err
    assert "model.patch_size=15" in err and "15 does not divide 224" in err and "model.patch_size=14" in err


def test_wrong_type_reads_like_a_typo_error(capsys, tmp_path):
    experiment = tmp_path / "e.yaml"
    experiment.write_text("trainer:\n  max_epochs: ten\n")
    assert main(["config", "show", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err == f"vit-ablate: error: trainer.max_epochs='ten' (in {experiment}) must be an integer\n"
    assert main(["config", "show", "data.train_subset=many"]) == 2
    assert "data.train_subset='many' (on the command line) must be an integer or null" in capsys.readouterr().err
    assert main(["config", "show", "optim.betas=0.9"]) == 2
    assert "optim.betas=0.9 (on the command line) must be a list of numbers" in capsys.readouterr().err


def test_analyze_out_has_help_text(capsys):
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--out OUT folder for the figures and the summary" in out
