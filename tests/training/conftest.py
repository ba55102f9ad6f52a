import pytest

# A small, fast configuration of the quickstart experiment for training tests: the suite's tiny model
# (tests/conftest.py) on a small synthetic dataset.
FAST = [
    "experiments/quickstart.yaml",
    "trainer.progress_bar=false",
    "logging.csv=false",
    "data.synthetic.num_train=1024",
    "data.synthetic.num_val=256",
    "data.synthetic.num_test=256",
    "data.batch_size=64",
]


@pytest.fixture
def fast_args(tmp_path, tiny_model):
    return [*FAST, *tiny_model.overrides(), f"output_dir={tmp_path}"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Runs compared with each other, in this process or another, sum in the same order (and one thread
    is the fastest for these tiny models on a shared CPU); subprocesses inherit it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
