import pytest

from .helpers import SHORT_RUN


@pytest.fixture
def tiny_run(tiny_model):
    """Overrides that make a sweep's real `vit-ablate train` runs short."""
    return [*SHORT_RUN, *tiny_model.overrides()]
