"""Learning on a task whose answer is known: the synthetic data's position-free ceiling."""

import pytest

from vit_ablate.config import load_config
from vit_ablate.data.synthetic import SyntheticDataModule
from vit_ablate.training.run import train

KNOWN_ANSWER = [
    "experiments/quickstart.yaml",
    "trainer.progress_bar=false",
    "logging.csv=false",
    "seed=0",
]


@pytest.mark.slow
def test_position_embedding_learns_and_no_embedding_stays_under_the_ceiling(tmp_path):
    with_1d = train(load_config(overrides=[*KNOWN_ANSWER[1:], f"output_dir={tmp_path}", "name=1d", "model.pos_embed=1d"], files=KNOWN_ANSWER[:1]))
    without = train(load_config(overrides=[*KNOWN_ANSWER[1:], f"output_dir={tmp_path}", "name=none", "model.pos_embed=none"], files=KNOWN_ANSWER[:1]))
    assert with_1d["status"] == without["status"] == "completed"
    assert with_1d["test"]["test/acc1"] >= 0.95
    ceiling = SyntheticDataModule.position_free_ceiling()
    assert ceiling == 0.25
    # the bound holds in expectation; 3 binomial standard deviations on 2048 test images
    assert without["test"]["test/acc1"] <= SyntheticDataModule.position_free_upper_bound(2048)
    # and the bag-of-patches model does learn the content: well above 1/8 chance
    assert without["test"]["test/acc1"] >= 0.2
