"""An init.path that does not fit the model is refused before the run directory exists."""

from pathlib import Path

import torch

from vit_ablate.cli import main as cli_main
from vit_ablate.model import build_model


def test_a_source_of_another_depth_is_refused_before_anything_is_written(tmp_path: Path, capsys, tiny):
    model_cfg = tiny.model(depth=3)  # the run's model has two blocks
    weights = tmp_path / "deeper.pth"
    torch.save(build_model(model_cfg).state_dict(), weights)

    code = cli_main(["train", *tiny.args(f"init.path={weights}", f"output_dir={tmp_path / 'runs'}", "name=t")])
    assert code == 2
    assert "blocks." in capsys.readouterr().err  # the error names the tensor that does not fit
    assert not (tmp_path / "runs").exists()
