"""Callbacks that make a run honest: per-epoch seeding, divergence detection, per-epoch records."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from vit_ablate.io import atomic_write_json, atomic_write_text, storage_error, temporary_sibling


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed from the run seed and e.g. (epoch, rank): distinct streams, reproducible."""
    digest = hashlib.sha256(":".join(str(p) for p in (seed, *parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


class EpochSeeding(Callback):
    """Reseed torch/numpy/random at every training epoch from (seed, epoch, rank).

    Each rank gets its own dropout, drop-path and mixup randomness, and an epoch replays exactly
    after a resume from the previous epoch's checkpoint (Lightning does not checkpoint RNG state).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)


class DivergenceCallback(Callback):
    """Stop the run when the loss became NaN/inf on any rank (status ``diverged``, not a crash).

    The module counts non-finite losses on the device; reading the counter needs a host sync, so it
    is read every ``check_every`` steps and at each epoch end. A non-finite loss poisons the weights,
    so a late check still catches it.
    """

    def __init__(self, check_every: int = 20):
        self.check_every = check_every
        self.diverged_at: Optional[int] = None

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = bool(pl_module.nonfinite_steps.item() > 0)
        if trainer.strategy.reduce_boolean_decision(local, all=False):
            self.diverged_at = trainer.global_step
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.diverged_at is None and trainer.global_step % self.check_every == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.diverged_at is None:
            self._check(trainer, pl_module)

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None


COLUMNS = ["epoch", "step", "train/loss", "val/loss", "val/acc1", "val/acc5", "lr", "time_s", "train_img_s"]


class EpochRecorder(Checkpoint):
    """Appends one row per epoch to ``metrics.csv`` and measures training throughput.

    It subclasses ``Checkpoint`` only so that Lightning calls it, like ModelCheckpoint, after the
    LightningModule has logged its epoch-end metrics. On a resume, rows of epochs that will be
    re-run are dropped first, so the file never holds an epoch twice.
    """

    def __init__(self, path: Path, announce: Optional[Callable[[str], None]] = None):
        self.path = Path(path)
        self.announce = announce  # gets one line per epoch (logs without a progress bar)
        self.rows: List[Dict[str, object]] = []
        self._time_offset = 0.0
        self._epoch_start = 0.0
        self._fit_start = 0.0
        self._train_time = 0.0
        self._samples = 0
        self._epoch_samples = 0
        self._epoch_val_time = 0.0
        self._val_start = 0.0

    def restore(self, current_epoch: int) -> None:
        """The rows of the epochs before ``current_epoch`` from ``metrics.csv``. Lightning skips
        ``on_train_start`` when it resumes from a checkpoint of the final epoch (a run killed after
        its last checkpoint): the run driver then calls this itself."""
        self.rows = []
        if self.path.exists():
            with open(self.path, newline="") as handle:
                self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < current_epoch]
        self._time_offset = float(self.rows[-1]["time_s"]) if self.rows else 0.0

    @property
    def started(self) -> bool:
        return self._fit_start > 0

    def on_train_start(self, trainer, pl_module) -> None:
        self.restore(trainer.current_epoch)
        self._fit_start = time.perf_counter()
        if trainer.is_global_zero:
            self._write()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._epoch_samples = 0
        self._epoch_val_time = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_samples += int(batch[0].shape[0]) * trainer.world_size

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._epoch_val_time += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        # validation runs inside the training epoch; its time is not training time
        train_time = now - self._epoch_start - self._epoch_val_time
        self._train_time += train_time
        self._samples += self._epoch_samples
        metrics = trainer.callback_metrics

        def value(key: str):
            return float(metrics[key]) if key in metrics else ""

        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "step": trainer.global_step,
                "train/loss": value("train/epoch_loss"),
                "val/loss": value("val/loss"),
                "val/acc1": value("val/acc1"),
                "val/acc5": value("val/acc5"),
                "lr": value("lr"),
                "time_s": round(self._time_offset + now - self._fit_start, 3),
                "train_img_s": round(self._epoch_samples / train_time, 1) if train_time > 0 else "",
            }
        )
        if trainer.is_global_zero:
            self._write()
            if self.announce is not None:
                self._announce(trainer, self.rows[-1])

    def _announce(self, trainer, row: Dict[str, object]) -> None:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        shown = [f"{key} {float(row[key]):.4f}" for key in ("train/loss", "val/loss", "val/acc1") if row[key] != ""]
        speed = f", {row['train_img_s']} img/s" if row["train_img_s"] != "" else ""
        self.announce(f"epoch {int(row['epoch']) + 1}{total} step {row['step']}: {', '.join(shown)}{speed}")

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())

    @property
    def throughput(self) -> Optional[float]:
        if self._train_time > 0:
            return self._samples / self._train_time
        # nothing trained in this process (resumed after the final epoch): the recorded epochs'
        # rates, combined as total images / total time (equal epochs: their harmonic mean)
        rates = [float(r["train_img_s"]) for r in self.rows if r.get("train_img_s") not in ("", None)]
        rates = [r for r in rates if r > 0]
        return len(rates) / sum(1.0 / r for r in rates) if rates else None

    @property
    def elapsed(self) -> float:
        return self._time_offset + time.perf_counter() - self._fit_start if self._fit_start else self._time_offset

    # Checkpoint protocol: nothing of ours goes into checkpoints
    def state_dict(self):
        return {}


class RankRecord(Callback):
    """Each rank writes ``ranks/rank-<r>.json``: its config digest and the samples of its first batch.

    Lets anyone check that every DDP rank trained the same configuration on different samples.
    """

    def __init__(self, run_dir: Path, digest: str):
        self.run_dir = Path(run_dir)
        self.digest = digest
        self.written = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.written:
            return
        images = batch[0].detach().to("cpu", torch.float32)
        hashes = [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in images]
        atomic_write_json(
            self.run_dir / "ranks" / f"rank-{trainer.global_rank}.json",
            {
                "rank": trainer.global_rank,
                "world_size": trainer.world_size,
                "config_digest": self.digest,
                "epoch": trainer.current_epoch,
                "first_batch_samples": hashes,
                "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules()),
            },
        )
        self.written = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed into place.

    A job killed while saving leaves the previous ``last.ckpt`` intact instead of a truncated file
    that the rerun could not resume from.
    """

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = temporary_sibling(path)
        os.close(fd)
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except BaseException as exc:
            if os.path.exists(tmp):
                os.unlink(tmp)
            # torch reports a full disk as "PytorchStreamWriter failed writing file", naming no file
            if isinstance(exc, (OSError, RuntimeError)):
                raise storage_error(exc, path) from exc
            raise


    def load_checkpoint(self, path, map_location=None, weights_only=None):
        # weights only, whatever the installed torch's default (it was full unpickling before 2.6)
        from vit_ablate.model.safe_load import load_torch_file

        return load_torch_file(path)


class KeptCSVLogger(CSVLogger):
    """Lightning's per-step ``logs/metrics.csv``, continued on a resume instead of deleted.

    Lightning's own writer deletes an existing file when it starts. Here the file's rows are kept
    up to the epoch the run resumes from (``keep_epochs_before``), so a resumed run's file reads like
    an uninterrupted one's.
    """

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeptExperimentWriter(self.log_dir)
        return self._experiment

    def keep_epochs_before(self, epoch: int) -> None:
        self.experiment.keep_epochs_before(epoch)


class _KeptExperimentWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as handle:
                self.metrics_keys = sorted(csv.DictReader(handle).fieldnames or [])

    def keep_epochs_before(self, epoch: int) -> None:
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as handle:
            reader = csv.DictReader(handle)
            fields = reader.fieldnames or []
            rows = [row for row in reader if row.get("epoch") not in (None, "") and int(float(row["epoch"])) < epoch]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, buffer.getvalue())


class TrimLoggedEpochs(Callback):
    """On a resume, drop the per-step rows of the epochs that will be trained again."""

    def __init__(self, logger: KeptCSVLogger):
        self.logger = logger

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.logger.keep_epochs_before(trainer.current_epoch)
