import pytest

# A small, fast configuration of the quickstart experiment for training tests.
FAST = [
    "experiments/quickstart.yaml",
    "trainer.progress_bar=false",
    "logging.csv=false",
    "data.synthetic.num_train=1024",
    "data.synthetic.num_val=256",
    "data.synthetic.num_test=256",
    "model.dim=32",
    "model.mlp_dim=64",
    "model.depth=1",
    "data.batch_size=64",
]


@pytest.fixture
def fast_args(tmp_path):
    return [*FAST, f"output_dir={tmp_path}"]
