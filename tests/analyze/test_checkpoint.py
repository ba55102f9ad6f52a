"""Loading checkpoints: round trip, EMA, overrides, and clear errors for other formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vit_ablate.analyze.checkpoint import load_checkpoint
from vit_ablate.model import build_model


def test_round_trip_gives_the_same_model(tmp_path: Path, tiny):
    cfg = tiny("model.pos_embed=2d")
    torch.manual_seed(1)
    model = build_model(cfg.model).eval()
    path = tiny.checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", cfg, model)
    loaded = load_checkpoint(path)
    assert loaded.weights == "model"
    assert (loaded.epoch, loaded.global_step) == (2, 10)
    assert loaded.config.model.pos_embed == "2d"
    assert not loaded.model.training
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), model(images))


def test_ema_weights_are_preferred_when_present(tmp_path: Path, tiny):
    cfg = tiny()
    torch.manual_seed(0)
    model, ema = build_model(cfg.model), build_model(cfg.model)
    path = tiny.checkpoint(tmp_path / "a.ckpt", cfg, model, ema=ema)
    auto = load_checkpoint(path)
    assert auto.weights == "ema"
    assert torch.equal(auto.model.stem.proj.weight, ema.stem.proj.weight)
    forced = load_checkpoint(path, weights="model")
    assert forced.weights == "model"
    assert torch.equal(forced.model.stem.proj.weight, model.stem.proj.weight)
    plain = tiny.checkpoint(tmp_path / "b.ckpt", cfg, model)
    with pytest.raises(ValueError, match="EMA"):
        load_checkpoint(plain, weights="ema")


def test_compiled_module_names_are_accepted(tmp_path: Path, tiny):
    cfg = tiny()
    model = build_model(cfg.model)
    extra = {f"model._orig_mod.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "c.ckpt"
    tiny.checkpoint(path, cfg, model)
    blob = torch.load(path, weights_only=False)
    blob["state_dict"] = extra
    torch.save(blob, path)
    assert torch.equal(load_checkpoint(path).model.stem.proj.weight, model.stem.proj.weight)


def test_checkpoint_without_config_is_another_format(tmp_path: Path, tiny):
    path = tiny.checkpoint(tmp_path / "old.ckpt", tiny(), with_config=False)
    with pytest.raises(ValueError, match=r"version/format.*hyper_parameters\['config'\]"):
        load_checkpoint(path)


def test_tensors_that_do_not_fit_the_config_are_rejected(tmp_path: Path, tiny):
    cfg = tiny()
    other = build_model(tiny("model.dim=48", "model.mlp_dim=96").model)
    path = tiny.checkpoint(tmp_path / "x.ckpt", cfg, other)
    with pytest.raises(ValueError, match="version/format.*of another shape"):
        load_checkpoint(path)
    path = tiny.checkpoint(tmp_path / "y.ckpt", cfg, tensors={"model.something_new.weight": torch.zeros(2)})
    with pytest.raises(ValueError, match="unexpected: something_new.weight"):
        load_checkpoint(path)
    # a config of an older schema (unknown key) is a format error too
    blob = torch.load(path, weights_only=False)
    blob["hyper_parameters"]["config"]["model"]["patch_embedding"] = "linear"
    torch.save(blob, path)
    with pytest.raises(ValueError, match="version/format"):
        load_checkpoint(path)


def test_files_that_are_not_checkpoints(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.ckpt")
    junk = tmp_path / "junk.ckpt"
    junk.write_text("not a checkpoint")
    with pytest.raises(ValueError, match="version/format"):
        load_checkpoint(junk)
    listing = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], listing)
    with pytest.raises(ValueError, match="version/format"):
        load_checkpoint(listing)


def test_overrides_change_data_only(tmp_path: Path, tiny):
    path = tiny.checkpoint(tmp_path / "o.ckpt", tiny())
    loaded = load_checkpoint(path, overrides=["data.synthetic.num_val=12", "evaluate.fewshot_draws=5"], data_root="/some/where")
    assert loaded.config.data.synthetic.num_val == 12
    assert loaded.config.evaluate.fewshot_draws == 5
    assert loaded.config.data.root == "/some/where"
    with pytest.raises(ValueError, match="only data"):
        load_checkpoint(path, overrides=["model.pos_embed=2d"])
    with pytest.raises(ValueError, match="did you mean 'data.batch_size'"):
        load_checkpoint(path, overrides=["data.batch_sise=3"])
    with pytest.raises(ValueError, match=r"data.batch_size=abc: Value 'abc' of type 'str' could not be converted to Integer$"):
        load_checkpoint(path, overrides=["data.batch_size=abc"])  # one line, without OmegaConf's full_key lines
    with pytest.raises(ValueError):
        load_checkpoint(path, overrides=["data.name=nosuchdata"])

