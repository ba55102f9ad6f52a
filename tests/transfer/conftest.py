import pytest


@pytest.fixture(scope="session")
def tiny(tiny):
    """The suite's tiny run (tests/conftest.py) with two blocks, so that weights move block by block."""
    return tiny.but(depth=2)
