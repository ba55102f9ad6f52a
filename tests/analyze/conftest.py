import pytest


@pytest.fixture(scope="session")
def tiny(tiny):
    """The suite's tiny run (tests/conftest.py) with two layers of two heads on 96 training and 40
    validation images (12 and 5 a class), evaluated few-shot with 1 and 5 shots, two draws each."""
    return tiny.but("data.synthetic.num_train=96", "data.synthetic.num_val=40", "data.synthetic.num_test=16", "data.batch_size=16",
                    "evaluate.fewshot_shots=[1,5]", "evaluate.fewshot_draws=2", depth=2, heads=2)
