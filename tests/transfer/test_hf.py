"""Hugging Face ViT both ways, against transformers' own forward; export for timm and transformers."""

import json
from pathlib import Path

import pytest
import timm
import torch

from vit_ablate import build_model
from vit_ablate.export import export
from vit_ablate import cli
from vit_ablate.model.hf_interop import from_hf_state_dict, hf_config, model_config_from_hf, to_hf_state_dict
from vit_ablate.model.transfer import apply_init


transformers = pytest.importorskip("transformers")

HF_TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
               patch_size=8, num_labels=5)


def _hf(cls_name: str, **overrides):
    torch.manual_seed(0)
    config = transformers.ViTConfig(**{**HF_TINY, **overrides})
    model = getattr(transformers, cls_name)(config).eval()
    with torch.no_grad():  # random biases and norms, so that every tensor's mapping is exercised
        for name, param in model.named_parameters():
            if param.ndim == 1:
                param.normal_(0, 0.5)
    return model


def _images(size=32):
    return torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("cls_name, head", [("ViTForImageClassification", "linear"), ("ViTModel", "mlp")])
def test_parity_with_transformers_forward(tmp_path: Path, cls_name, head):
    theirs = _hf(cls_name)
    theirs.save_pretrained(tmp_path / "hf")  # transformers' own files: config.json + model.safetensors
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    ours = build_model({**model_config_from_hf(config), "head": head, "num_classes": 5})
    assert ours.spec.layer_norm_eps == 1e-12
    summary = apply_init(ours, tmp_path / "hf")
    assert summary.format == "hf" and summary.unused == [] and summary.resampled == {}
    with torch.no_grad():
        output = theirs(pixel_values=_images())
        if head == "linear":
            assert not summary.reinitialised
            assert (ours.eval()(_images()) - output.logits).abs().max() < 1e-5
        else:  # HF's pooler is our pre-logits layer; ViTModel has no classifier, so ours starts at zero
            assert set(summary.reinitialised) == {"head.fc.weight", "head.fc.bias"}
            pooled = torch.tanh(ours.head.pre_logits(ours.eval().forward_pre_logits(_images())))
            assert (pooled - output.pooler_output).abs().max() < 1e-5


def test_legacy_names_of_hub_checkpoints_map_the_same():
    theirs = _hf("ViTForImageClassification")
    modern, _ = from_hf_state_dict(theirs.state_dict())
    legacy = {}
    for name, tensor in theirs.state_dict().items():  # transformers 4.x spelling, as on the Hub
        for new, old in ((".layers.", ".encoder.layer."), ("attention.q_proj", "attention.attention.query"),
                         ("attention.k_proj", "attention.attention.key"), ("attention.v_proj", "attention.attention.value"),
                         ("attention.o_proj", "attention.output.dense"), ("mlp.fc1", "intermediate.dense"),
                         ("mlp.fc2", "output.dense")):
            name = name.replace(new, old)
        legacy[name] = tensor
    assert set(legacy) != set(theirs.state_dict())
    converted, unused = from_hf_state_dict(legacy)
    assert unused == [] and set(converted) == set(modern)
    assert all(torch.equal(converted[k], modern[k]) for k in modern)


def test_hf_weights_at_a_new_resolution(tmp_path: Path):
    theirs = _hf("ViTForImageClassification")
    theirs.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    ours = build_model({**model_config_from_hf(config), "img_size": 64, "num_classes": 7})
    summary = apply_init(ours, tmp_path / "hf")
    assert summary.source_grid == [4, 4] and summary.grid == [8, 8]
    assert summary.resampled == {"pos_embed.placement.table.weight": [[1, 17, 32], [1, 65, 32]]}
    # transformers' own interpolation of the position table (interpolate_pos_encoding) at 64 px: the
    # encoder features agree to the difference between its and timm's bicubic (antialias, borders)
    with torch.no_grad():
        theirs_features = theirs.vit(pixel_values=_images(64), interpolate_pos_encoding=True).last_hidden_state[:, 0]
        ours_features = ours.eval().forward_pre_logits(_images(64))
    assert torch.nn.functional.cosine_similarity(theirs_features, ours_features).min() > 0.99


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_export_hf_loads_in_transformers_with_the_same_outputs(tmp_path: Path, head, tiny):
    cfg = tiny(f"model.head={head}", "model.layer_norm_eps=1e-12")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.head.fc.weight.normal_()
    tiny.checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", cfg, model)
    assert cli.main(["export", str(tmp_path / "run"), "--to", "hf"]) == 0
    folder = tmp_path / "run" / "export" / "hf"
    cls = transformers.ViTForImageClassification if head == "linear" else transformers.ViTModel
    theirs = cls.from_pretrained(folder).eval()
    with torch.no_grad():
        if head == "linear":
            assert (theirs(pixel_values=_images()).logits - model.eval()(_images())).abs().max() < 1e-5
        else:
            pooled = torch.tanh(model.head.pre_logits(model.eval().forward_pre_logits(_images())))
            assert (theirs(pixel_values=_images()).pooler_output - pooled).abs().max() < 1e-5
    assert json.loads((folder / "config.json").read_text())["layer_norm_eps"] == 1e-12


def test_export_timm_loads_in_timm_with_the_same_logits(tmp_path: Path, tiny):
    from safetensors.torch import load_file

    cfg = tiny("model.pool=gap")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():
        model.head.fc.weight.normal_()
    path = tiny.checkpoint(tmp_path / "a.ckpt", cfg, model)
    folder = export(path, "timm", tmp_path / "out")
    config = json.loads((folder / "config.json").read_text())
    theirs = timm.models.vision_transformer.VisionTransformer(**config["model_args"]).eval()
    theirs.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    with torch.no_grad():
        assert (theirs(_images()) - model.eval()(_images())).abs().max() < 1e-5


def test_export_refuses_what_the_other_library_cannot_hold(tmp_path: Path, capsys, tiny):
    path = tiny.checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", tiny("model.pos_embed=2d", "model.pool=gap"))
    assert cli.main(["export", str(path), "--to", "hf"]) == 2
    err = capsys.readouterr().err
    assert "model.pos_embed='2d' (needs '1d')" in err and "model.pool='gap' (needs 'cls')" in err
    assert cli.main(["export", str(path), "--to", "timm"]) == 2
    assert "model.pos_embed='2d'" in capsys.readouterr().err
    assert not (tmp_path / "run" / "export").exists()
    with pytest.raises(ValueError, match="Hugging Face's ViT has no equivalent"):
        hf_config(build_model(tiny("model.norm=post").model))
    assert to_hf_state_dict(build_model(tiny().model))  # the default model converts
