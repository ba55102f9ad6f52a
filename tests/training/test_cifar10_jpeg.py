"""`train` end to end on the real CIFAR-10 JPEG archive (shared/data), a handful of steps."""

import json

import pytest

from vit_ablate.config import load_config
from vit_ablate.training.run import train


@pytest.mark.slow
def test_train_a_few_steps_on_cifar10_jpegs(cifar10_jpeg, tmp_path):
    cfg = load_config(
        ["experiments/cpu_cifar10_p8.yaml"],
        [
            f"data.root={cifar10_jpeg}",
            f"output_dir={tmp_path}",
            "name=cifar",
            "data.train_subset=1000",
            "data.val_split=200",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=4",
            "trainer.limit_val_batches=2",
            "evaluate.test=false",
            "trainer.progress_bar=false",
            "model.depth=1",
        ],
    )
    result = train(cfg)
    assert result["status"] == "completed"
    assert result["global_step"] == 4
    assert 0.0 <= result["final"]["val/acc1"] <= 1.0
    assert json.loads((tmp_path / "cifar" / "result.json").read_text())["global_step"] == 4
