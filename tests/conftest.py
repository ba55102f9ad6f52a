"""Fixtures shared across the test packages."""

import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import pytest

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


