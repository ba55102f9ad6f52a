"""init.path: our checkpoints, timm state dicts; the head, exclude, the summary and the errors."""

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed

from vit_ablate import build_model, to_timm_state_dict
from vit_ablate.config import ConfigError
from vit_ablate.model import timm_kwargs
from vit_ablate.model.transfer import SUMMARY_FILE, InitError, apply_init, detect_format
from vit_ablate.training.module import ViTModule


def _logits(model, size, seed=0):
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(images)


def test_checkpoint_at_a_new_resolution_and_class_count(tmp_path: Path, tiny):
    cfg = tiny("model.pos_embed=2d")
    torch.manual_seed(0)
    source = build_model(cfg.model)
    path = tiny.checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", cfg, source)
    target = build_model({**tiny("model.pos_embed=2d").model, "img_size": 64, "num_classes": 100})
    summary = apply_init(target, path)
    assert summary.format == "vit_ablate" and summary.weights == "model"
    assert summary.source_grid == [4, 4] and summary.grid == [8, 8]
    assert summary.resampled == {"pos_embed.placement.table.rows": [[4, 16], [8, 16]],
                                 "pos_embed.placement.table.cols": [[4, 16], [8, 16]]}
    assert set(summary.reinitialised) == {"head.fc.weight", "head.fc.bias"}
    assert "num_classes 8 in the source, 100 here" in summary.reinitialised["head.fc.weight"]
    # paper §3.1: the new classifier starts at zero, so the first logits are all zero
    assert target.head.fc.weight.abs().sum() == 0 and target.head.fc.bias.abs().sum() == 0
    assert torch.equal(target.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert torch.equal(target.pos_embed.placement.table.prefix, source.pos_embed.placement.table.prefix)
    assert summary.unused == [] and summary.excluded == []


def test_same_config_checkpoint_gives_the_same_logits_and_prefers_ema(tmp_path: Path, tiny):
    cfg = tiny("model.pos_embed=relative")
    torch.manual_seed(0)
    source, ema = build_model(cfg.model), build_model(cfg.model)
    blob_path = tiny.checkpoint(tmp_path / "a.ckpt", cfg, source)
    target = build_model(cfg.model)
    assert apply_init(target, blob_path).loaded
    assert torch.equal(_logits(target, 32), _logits(source, 32))
    blob = torch.load(blob_path, weights_only=True)
    blob["state_dict"].update({f"ema.module.{k}": v for k, v in ema.state_dict().items()})
    torch.save(blob, tmp_path / "b.ckpt")
    summary = apply_init(target, tmp_path / "b.ckpt")
    assert summary.weights == "ema" and torch.equal(_logits(target, 32), _logits(ema, 32))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin"])
def test_timm_state_dict_at_a_new_resolution_equals_timm_own_resampling(tmp_path: Path, suffix, tiny):
    small = build_model(tiny().model)  # cls, 1d, patch: timm builds the same model
    theirs = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(small)).eval()
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in theirs.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save({"state_dict": state}, path)
    assert detect_format(path) == "timm"
    target = build_model({**tiny().model, "img_size": 64})
    summary = apply_init(target, path)
    assert summary.format == "timm" and list(summary.resampled) == ["pos_embed.placement.table.weight"]
    # timm at 64 px with timm's own position-embedding resampling gives the same logits
    large = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(target)).eval()
    state["pos_embed"] = resample_abs_pos_embed(state["pos_embed"], [8, 8], [4, 4], num_prefix_tokens=1)
    large.load_state_dict(state)
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert (target.eval()(images) - large(images)).abs().max() < 1e-5


def test_exclude_keeps_fresh_init_and_a_typo_is_named(tmp_path: Path, tiny):
    cfg = tiny()
    path = tiny.checkpoint(tmp_path / "a.ckpt", cfg)
    torch.manual_seed(5)
    target = build_model(cfg.model)
    fresh = target.pos_embed.placement.table.weight.detach().clone()
    summary = apply_init(target, path, exclude=["pos_embed", "head"])
    assert torch.equal(target.pos_embed.placement.table.weight, fresh)
    assert "pos_embed.placement.table.weight" in summary.excluded and "head.fc.weight" in summary.excluded
    with pytest.raises(InitError, match=r"init.exclude entry 'pos_emb\.x'.*did you mean 'pos_embed'"):
        apply_init(target, path, exclude=["pos_emb.x"])


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.depth=3", r"the source has 2 blocks, this model model.depth=3 \('blocks\.2\."),
        ("model.depth=1", r"the source has 2 blocks, this model model.depth=1 \('blocks\.1\."),
        ("model.dim=48", r"'stem\.proj\.weight' has shape \[32, 3, 8, 8\] in the source, \[48, 3, 8, 8\] here"),
        ("model.pos_embed=2d", r"'pos_embed\.placement\.table\.prefix' \[1, 1, 32\] is missing.*init.exclude=\[pos_embed"),
        ("model.patch_size=4", r"'stem\.proj\.weight' has shape"),
    ],
)
def test_what_does_not_fit_is_an_error_naming_the_tensor(tmp_path: Path, override, named, tiny):
    path = tiny.checkpoint(tmp_path / "a.ckpt", tiny())
    target_cfg = tiny(override).model
    torch.manual_seed(3)
    target = build_model(target_cfg)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(InitError, match=named):
        apply_init(target, path)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing half-loaded


def test_bad_sources_are_named(tmp_path: Path, tiny):
    model = build_model(tiny().model)
    with pytest.raises(InitError, match="does not exist"):
        apply_init(model, tmp_path / "missing.ckpt")
    with pytest.raises(InitError, match="init.format='keras' is not valid"):
        apply_init(model, tmp_path, fmt="keras")
    (tmp_path / "folder").mkdir()
    with pytest.raises(InitError, match="needs config.json"):
        apply_init(model, tmp_path / "folder")
    torch.save({"state_dict": {"model.x": torch.zeros(1)}}, tmp_path / "nocfg.ckpt")
    with pytest.raises(InitError, match="not a vit-ablate checkpoint.*init.format=timm"):
        apply_init(model, tmp_path / "nocfg.ckpt")


def test_module_applies_init_and_its_ema_follows(tmp_path: Path, tiny):
    source_cfg = tiny()
    torch.manual_seed(0)
    source = build_model(source_cfg.model)
    path = tiny.checkpoint(tmp_path / "a.ckpt", source_cfg, source)
    cfg = tiny(f"init.path={path}", "optim.ema=true")
    cfg.model.img_size, cfg.model.num_classes = 64, 4  # as a 64-px, 4-class dataset would set them
    module = ViTModule(cfg)
    summary = module.apply_init(tmp_path)
    saved = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert saved["resampled"] == {"pos_embed.placement.table.weight": [[1, 17, 32], [1, 65, 32]]}
    assert sorted(saved["reinitialised"]) == ["head.fc.bias", "head.fc.weight"] == sorted(summary.reinitialised)
    assert len(saved["loaded"]) == len(module.model.state_dict()) - 2
    assert torch.equal(module.ema.module.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    bad = ViTModule(tiny(f"init.path={path}", "model.depth=3"))
    with pytest.raises(ConfigError, match="this model model.depth=3"):
        bad.apply_init(None)


def test_timm_export_roundtrip_via_our_names(tiny):
    model = build_model(tiny().model)
    theirs = timm.models.vision_transformer.VisionTransformer(**timm_kwargs(model))
    theirs.load_state_dict(to_timm_state_dict(model))
    assert torch.allclose(_logits(model, 32), _logits(theirs, 32), atol=1e-6)


def test_train_from_a_real_run_at_twice_the_resolution(tmp_path: Path, tiny):
    """A Lightning checkpoint of `vit-ablate train` starts a 64-px run; the summary lands in its folder."""
    from vit_ablate.cli import main as cli_main

    runs = tmp_path / "runs"
    assert cli_main(["train", *tiny.args(f"output_dir={runs}", "name=pre")]) == 0
    checkpoint = runs / "pre" / "checkpoints" / "last.ckpt"
    pretrained = torch.load(checkpoint, weights_only=True)["state_dict"]
    args = tiny.args(f"output_dir={runs}", "name=fine", "data.synthetic.cell=16", "model.img_size=64",
                     f"init.path={checkpoint}", "optim.lr=1e-12")
    assert cli_main(["train", *args]) == 0
    summary = json.loads((runs / "fine" / SUMMARY_FILE).read_text())
    assert summary["format"] == "vit_ablate" and summary["grid"] == [8, 8] and summary["source_grid"] == [4, 4]
    assert list(summary["resampled"]) == ["pos_embed.placement.table.weight"]
    tuned = torch.load(runs / "fine" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    # a learning rate of 1e-12 leaves the loaded weights where init.path put them
    assert torch.allclose(tuned["model.blocks.1.mlp.fc1.weight"], pretrained["model.blocks.1.mlp.fc1.weight"], atol=1e-6)
