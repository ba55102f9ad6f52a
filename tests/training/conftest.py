import pytest


@pytest.fixture
def tiny(tiny, tmp_path):
    """The suite's tiny run (tests/conftest.py) on 1024 training images in batches of 64 (16 steps an
    epoch, which these tests count), written into tmp_path."""
    return tiny.but("data.synthetic.num_train=1024", "data.synthetic.num_val=256", "data.synthetic.num_test=256",
                    "data.batch_size=64", f"output_dir={tmp_path}")


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    """Runs compared with each other, in this process or another, sum in the same order (and one thread
    is the fastest for these tiny models on a shared CPU); subprocesses inherit it."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
