"""``run_analysis`` end to end on tiny checkpoints: files, numbers, notes, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch

from vit_ablate.analyze import run_analysis
from vit_ablate.cli import main

ALL_FIGURES = ["pos_similarity.png", "filters.png", "attention_distance.png", "rollout.png"]
LAST = Path("run/checkpoints/last.ckpt")  # a run directory's layout: the analysis goes beside checkpoints/


def _png_shape(path: Path):
    image = mpimg.imread(path)
    assert image.dtype == np.float32 and image.ndim == 3 and image.shape[2] in (3, 4)
    return image.shape


def test_writes_every_figure_and_analysis_json(tiny, tmp_path: Path):
    ckpt = tiny.checkpoint(tmp_path / LAST)
    summary = run_analysis(ckpt, num_images=12)
    out = ckpt.parent.parent / "analysis"
    result = json.loads((out / "analysis.json").read_text())
    assert result["figures"] == ALL_FIGURES
    for name in ALL_FIGURES:
        height, width, _ = _png_shape(out / name)
        assert 100 <= height <= 1200 and 100 <= width <= 1600, (name, height, width)
        assert name in summary
    assert not list(out.glob(".*.tmp"))

    # numbers
    assert result["model"]["grid_size"] == [4, 4] and result["model"]["num_prefix_tokens"] == 1
    dist = result["attention_distance"]
    assert dist["images"] == 12 and dist["split"] == "val"
    assert np.array(dist["per_head"]).shape == (2, 2)  # depth × heads
    largest = 8 * np.sqrt(2 * 3**2)
    assert all(0 < v < largest for row in dist["per_head"] for v in row)
    assert np.array(dist["prefix_attention_fraction"]).shape == (2, 2)
    assert result["rollout"]["images"] == 8
    maps = np.load(out / "rollout_maps.npy")
    assert maps.shape == (8, 4, 4)
    similarity = np.load(out / "pos_similarity.npy")
    assert similarity.shape == (16, 16)
    assert np.allclose(np.diag(similarity), 1.0, atol=1e-5)
    assert result["pos_similarity"]["by_distance"][0]["mean_similarity"] == pytest.approx(1.0, abs=1e-4)
    assert len(result["filters"]["explained_variance_ratio"]) == 28
    few = result["fewshot"]
    assert list(few["accuracy"]) == ["1", "5"]  # evaluate.fewshot_shots of the run
    assert few["draws"] == 2 and few["num_eval"] == 40
    assert all(0.0 <= v <= 1.0 for v in few["accuracy"].values())
    assert "few-shot linear accuracy" in summary and "1-shot" in summary

    # PNG sizes follow the grid: the rollout row is 8 images wide
    assert _png_shape(out / "rollout.png")[1] > _png_shape(out / "attention_distance.png")[1]


def test_models_without_table_or_patch_stem_get_notes(tiny, tmp_path: Path):
    ckpt = tiny.checkpoint(tmp_path / LAST, tiny("model.pos_embed=rope2d", "model.pool=gap", "model.stem=conv"))
    out = tmp_path / "elsewhere"
    summary = run_analysis(ckpt, out=out, num_images=4, overrides=["evaluate.fewshot_shots=[2]"])
    result = json.loads((out / "analysis.json").read_text())
    assert result["figures"] == ["attention_distance.png", "rollout.png"]
    assert not (out / "pos_similarity.png").exists() and not (out / "filters.png").exists()
    assert "rope2d" in result["pos_similarity"]["note"] and "no position table" in result["pos_similarity"]["note"]
    assert "conv" in result["filters"]["note"]
    assert "no position table" in summary and "model.stem='conv'" in summary
    assert result["rollout"]["query"].startswith("mean over patch queries")
    assert result["rollout"]["images"] == 4
    assert list(result["fewshot"]["accuracy"]) == ["2"]
    for name in result["figures"]:
        _png_shape(out / name)


def test_data_overrides_and_skipping(tiny, tmp_path: Path):
    ckpt = tiny.checkpoint(tmp_path / LAST)
    out = tmp_path / "o"
    summary = run_analysis(ckpt, out=out, num_images=0, overrides=["data.synthetic.num_val=16"])
    result = json.loads((out / "analysis.json").read_text())
    assert result["fewshot"]["num_eval"] == 16
    assert "skipped" in result["attention_distance"]["note"]
    assert "attention_distance.png" not in result["figures"]
    assert "skipped" in summary
    with pytest.raises(ValueError, match="only data"):
        run_analysis(ckpt, out=out, overrides=["model.depth=3"])
    with pytest.raises(FileNotFoundError, match="no-images.*--data"):
        run_analysis(ckpt, out=out, overrides=["data.name=imagefolder"], data=str(tmp_path / "no-images"))


def test_bad_checkpoints_raise_clear_errors(tmp_path: Path, tiny):
    old = tiny.checkpoint(tmp_path / "old.ckpt", tiny(), with_config=False)
    with pytest.raises(ValueError, match="version/format"):
        run_analysis(old, out=tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        run_analysis(tmp_path / "missing.ckpt")
    assert not (tmp_path / "x").exists()


def test_cli(tiny, tmp_path: Path, capsys):
    ckpt = tiny.checkpoint(tmp_path / LAST)
    out = tmp_path / "cli-out"
    assert main(["analyze", str(ckpt), "evaluate.fewshot_draws=1", "--out", str(out), "--images", "4"]) == 0
    printed = capsys.readouterr().out
    assert "rollout.png" in printed and str(out) in printed
    assert json.loads((out / "analysis.json").read_text())["fewshot"]["draws"] == 1
    old = tiny.checkpoint(tmp_path / "old.ckpt", tiny(), with_config=False)
    assert main(["analyze", str(old)]) == 2
    assert "version/format" in capsys.readouterr().err


def test_analysis_runs_on_cuda_when_available(tiny, tmp_path: Path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    ckpt = tiny.checkpoint(tmp_path / LAST)
    run_analysis(ckpt, out=tmp_path / "gpu", num_images=8, device="cuda")
    assert json.loads((tmp_path / "gpu" / "analysis.json").read_text())["device"] == "cuda"
