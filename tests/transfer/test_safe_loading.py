"""No file we read runs code: a pickle whose __reduce__ creates a file is refused by every reader."""

import json
import os
from pathlib import Path

import pytest
import torch

from vit_ablate.analyze.checkpoint import load_checkpoint
from vit_ablate.cli import main as cli_main
from vit_ablate.model import build_model
from vit_ablate.model.safe_load import UnsafeCheckpointError, load_state_dict_file
from vit_ablate.model.transfer import apply_init


class CreatesAFile:
    """Unpickling this calls os.mkdir(marker): what any crafted checkpoint could do instead."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.fixture
def hostile(tmp_path: Path, tiny):
    """(marker, make): ``make(path)`` writes a file that creates ``marker`` when unpickled."""
    marker = tmp_path / "payload-ran"
    cfg = tiny()

    def make(path: Path, kind: str = "checkpoint") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if kind == "checkpoint":
            return tiny.checkpoint(path, cfg, extra={"callbacks": {"x": CreatesAFile(marker)}})
        state = build_model(cfg.model).state_dict()
        torch.save({**state, "extra": CreatesAFile(marker)}, path)
        return path

    return marker, make


def test_the_payload_is_live(hostile, tmp_path: Path):
    marker, make = hostile
    path = make(tmp_path / "live.ckpt")
    torch.load(path, weights_only=False)  # what analyze did before: the code runs
    assert marker.is_dir()


def test_analyze_refuses_and_says_how_to_convert(hostile, tmp_path: Path, capsys):
    marker, make = hostile
    path = make(tmp_path / "run" / "checkpoints" / "last.ckpt")
    with pytest.raises(UnsafeCheckpointError, match=r"refused: loading it would run code.*posix\.mkdir.*safetensors"):
        load_checkpoint(path)
    assert cli_main(["analyze", str(path), "--out", str(tmp_path / "analysis")]) == 2
    assert "was refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "analysis").exists()


@pytest.mark.parametrize("layout", ["checkpoint", "timm.pth", "timm.bin", "hf"])
def test_init_path_refuses_every_format(hostile, tmp_path: Path, layout, tiny):
    marker, make = hostile
    if layout == "checkpoint":
        path = make(tmp_path / "pre.ckpt")
    elif layout == "hf":
        path = tmp_path / "hf"
        make(path / "pytorch_model.bin", kind="state")
        (path / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 32}))
    else:
        path = make(tmp_path / f"weights.{layout.split('.')[1]}", kind="state")
    with pytest.raises(UnsafeCheckpointError):
        apply_init(build_model(tiny().model), path)
    assert not marker.exists()


def test_train_with_a_hostile_init_path_exits_2_and_runs_nothing(hostile, tmp_path: Path, capsys, tiny):
    marker, make = hostile
    path = make(tmp_path / "pre.ckpt")
    code = cli_main(["train", *tiny.args(f"init.path={path}", f"output_dir={tmp_path / 'runs'}", "name=t")])
    assert code == 2
    assert "pre.ckpt was refused: loading it would run code" in capsys.readouterr().err
    assert not marker.exists()
    assert not (tmp_path / "runs" / "t" / "result.json").exists()


def test_export_refuses(hostile, tmp_path: Path, capsys):
    marker, make = hostile
    path = make(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert cli_main(["export", str(tmp_path / "run"), "--to", "timm"]) == 2
    assert "was refused" in capsys.readouterr().err
    assert not marker.exists() and not (tmp_path / "run" / "export").exists()


def test_safetensors_and_plain_torch_files_still_load(tmp_path: Path):
    state = {"a": torch.arange(3.0)}
    torch.save({"state_dict": state, "epoch": 3, "note": "plain values are fine"}, tmp_path / "ok.pth")
    assert torch.equal(load_state_dict_file(tmp_path / "ok.pth")["a"], state["a"])
    (tmp_path / "junk.pth").write_text("not a torch file")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_state_dict_file(tmp_path / "junk.pth")
