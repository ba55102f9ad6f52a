"""Fixtures shared across the test packages."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from vit_ablate.config import load_config, to_container

# The suite's one tiny run: a ViT of one block of width 32 (16 patches of 8×8 px on the synthetic data's
# 32-px images, 8 classes), one CPU epoch of 64 images in batches of 32. A test states only what it changes:
#   tiny("model.pos_embed=2d")   the resolved run config (config.load_config)
#   tiny.args("name=x")          the same as `key=value` items (`vit-ablate train`, sweeps, bench)
#   tiny.model(depth=2)          the model section as a dict (build_model)
#   tiny.checkpoint(path, cfg)   a Lightning-style checkpoint file of it (no training)
# A package whose every test needs something else overrides the fixture in its conftest.py with
# tiny.but(*overrides, **model_changes) (e.g. tests/analyze: two layers of two heads, few-shot settings).
TINY_MODEL: Dict[str, Any] = {"dim": 32, "depth": 1, "heads": 4, "mlp_dim": 64, "img_size": 32, "patch_size": 8, "num_classes": 8}
TINY_RUN = ("data.synthetic.num_train=64", "data.synthetic.num_val=32", "data.synthetic.num_test=32", "data.batch_size=32",
            "trainer.max_epochs=1", "trainer.accelerator=cpu", "trainer.progress_bar=false", "logging.csv=false")


class Tiny:
    def __init__(self, model: Dict[str, Any], overrides=TINY_RUN, validate: bool = True):
        self._model, self.overrides, self.validate = dict(model), tuple(overrides), validate

    def model(self, **changes: Any) -> Dict[str, Any]:
        return {**self._model, **changes}

    def args(self, *overrides: str) -> List[str]:
        model = [f"model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in self._model.items()]
        return [*model, *self.overrides, *overrides]

    def __call__(self, *overrides: str):
        """``validate=False`` (tests/data) skips validate_config, which imports the model package."""
        return load_config([], self.args(*overrides), validate=self.validate)

    def but(self, *overrides: str, validate: Optional[bool] = None, **model_changes: Any) -> "Tiny":
        return Tiny(self.model(**model_changes), (*self.overrides, *overrides), self.validate if validate is None else validate)

    def checkpoint(self, path: Path, cfg=None, model=None, *, ema=None, with_config: bool = True,
                   tensors: Optional[Dict[str, Any]] = None, extra: Optional[Dict[str, Any]] = None) -> Path:
        """A Lightning-style checkpoint file, nothing trained: ``model``'s tensors (else those of a model of
        ``cfg``, by default ``self()``, built with seed 0) prefixed `model.`, ``ema``'s `ema.module.`, plus
        ``tensors``; ``cfg`` as hyper_parameters['config'] unless ``with_config=False``; ``extra`` at the top."""
        import torch

        from vit_ablate.model import build_model

        cfg = cfg if cfg is not None else self()
        torch.manual_seed(0)
        model = model if model is not None else build_model(cfg.model)
        state = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
        state.update({f"ema.module.{k}": v.clone() for k, v in (ema.state_dict() if ema is not None else {}).items()})
        blob = {"state_dict": {**state, **(tensors or {})}, "epoch": 2, "global_step": 10, "pytorch-lightning_version": "2.x",
                **({"hyper_parameters": {"config": to_container(cfg)}} if with_config else {}), **(extra or {})}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        torch.save(blob, path)
        return Path(path)


@pytest.fixture(scope="session")
def tiny() -> Tiny:
    return Tiny(TINY_MODEL)


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


