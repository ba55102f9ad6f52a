"""An init.path that does not fit the model is refused before the run directory exists."""

from pathlib import Path

import torch

from vit_ablate.cli import main as cli_main
from vit_ablate.model import build_model

from .helpers import RUN_MODEL


def test_a_source_of_another_depth_is_refused_before_anything_is_written(tmp_path: Path, capsys, tiny_model, train_args):
    args = train_args  # a 2-block model on the 32-px synthetic data
    model_cfg = {**tiny_model(**RUN_MODEL), "depth": 3}
    weights = tmp_path / "deeper.pth"
    torch.save(build_model(model_cfg).state_dict(), weights)

    code = cli_main(["train", *args, f"init.path={weights}", f"output_dir={tmp_path / 'runs'}", "name=t"])
    assert code == 2
    assert "blocks." in capsys.readouterr().err  # the error names the tensor that does not fit
    assert not (tmp_path / "runs").exists()
