"""Fixtures shared across the test packages."""

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import pytest

# The suite's one tiny ViT: 16 patches of 8×8 px on the 32-px synthetic images, one block of width 32.
# A test names only what it changes (tiny_model(depth=2, pos_embed="2d")), so a reader sees at a glance
# what the test depends on, and the model every package trains or builds is this one.
TINY_MODEL: Dict[str, Any] = {"dim": 32, "depth": 1, "heads": 4, "mlp_dim": 64, "img_size": 32, "patch_size": 8, "num_classes": 8}


class TinyModel:
    """``tiny_model(**changes)``: the model section as a dict (``build_model`` takes it);
    ``tiny_model.overrides(**changes)``: the same as ``model.key=value`` items (``load_config``, the CLI)."""

    def __init__(self, base: Dict[str, Any]):
        self.base = dict(base)

    def __call__(self, **changes: Any) -> Dict[str, Any]:
        return {**self.base, **changes}

    def overrides(self, **changes: Any) -> List[str]:
        def text(value: Any) -> str:
            return str(value).lower() if isinstance(value, bool) else str(value)

        return [f"model.{key}={text(value)}" for key, value in self(**changes).items()]


@pytest.fixture(scope="session")
def tiny_model() -> TinyModel:
    return TinyModel(TINY_MODEL)

# shared/ lies beside the checkout (in CI too); VIT_ABLATE_CIFAR10_JPEG points elsewhere
ARCHIVE = Path(
    os.environ.get("VIT_ABLATE_CIFAR10_JPEG")
    or Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
)
EXTRACT_TO = Path(__file__).resolve().parents[1] / ".data" / "cifar10-jpeg"  # git-ignored


@pytest.fixture(scope="session")
def cifar10_jpeg() -> Path:
    """CIFAR-10 as JPEGs (cifar10/{train,test}/<class>/NNNN.jpg), extracted once per checkout."""
    if not ARCHIVE.is_file():
        pytest.skip(
            f"CIFAR-10 JPEG archive not found at {ARCHIVE}: these tests expect the project's shared data folder "
            "beside the checkout (../shared/data/cifar10-jpeg.tar.gz); copy the archive there or set "
            "VIT_ABLATE_CIFAR10_JPEG=/path/to/cifar10-jpeg.tar.gz"
        )
    if not (EXTRACT_TO / ".extracted").is_file():
        # Extract beside the target and rename into place, so that a concurrent test session never
        # reads a half-extracted tree (the rename is atomic; the loser of a race discards its copy).
        EXTRACT_TO.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".cifar10-jpeg-", dir=EXTRACT_TO.parent))
        try:
            with tarfile.open(ARCHIVE) as tar:
                tar.extractall(staging, filter="data")
            (staging / ".extracted").write_text(ARCHIVE.name)
            if EXTRACT_TO.exists() and not (EXTRACT_TO / ".extracted").is_file():
                shutil.rmtree(EXTRACT_TO)  # left over from an interrupted extraction
            try:
                os.rename(staging, EXTRACT_TO)
            except OSError:  # another session finished first
                pass
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return EXTRACT_TO / "cifar10"


