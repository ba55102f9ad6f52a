"""Callbacks that make a run honest: per-epoch seeding, divergence detection, per-epoch records,
atomic checkpoints, and a SIGTERM that always ends with the outcome recorded."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vit_ablate.data.device_loader import derive_seed
from vit_ablate.io import atomic_write_json, atomic_write_text, storage_error, temporary_sibling


def log(message: str) -> None:
    if rank_zero_only.rank == 0:
        print(f"[vit-ablate] {message}", file=sys.stderr, flush=True)


class EpochSeeding(Callback):
    """Reseed torch/numpy/random at every training epoch from (seed, epoch, rank): each rank gets its
    own dropout, drop-path and mixup randomness, and an epoch replays exactly after a resume from the
    previous epoch's checkpoint (Lightning does not checkpoint RNG state)."""

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = derive_seed(self.seed, trainer.current_epoch, trainer.global_rank)
        torch.manual_seed(value)
        np.random.seed(value % 2**32)
        random.seed(value)


class DivergenceCallback(Callback):
    """Stop the run when the loss became NaN/inf on any rank (status ``diverged``, not a crash). Reading
    the module's device-side counter is a host sync: every ``check_every`` steps and at each epoch end
    (a non-finite loss poisons the weights, so a late check still catches it)."""

    def __init__(self, check_every: int = 20):
        self.check_every = check_every
        self.diverged_at: Optional[int] = None

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.diverged_at is None and trainer.strategy.reduce_boolean_decision(bool(pl_module.nonfinite_steps.item() > 0), all=False):
            self.diverged_at = trainer.global_step
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.check_every == 0:
            self._check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._check(trainer, pl_module)


COLUMNS = ["epoch", "step", "train/loss", "val/loss", "val/acc1", "val/acc5", "lr", "time_s", "train_img_s"]


class EpochRecorder(Checkpoint):
    """Appends one row per epoch to ``metrics.csv`` and measures training throughput (from an epoch's
    start to its last training batch: validation excluded). A ``Checkpoint`` only so that Lightning calls
    it, like ModelCheckpoint, after the module logged its epoch-end metrics. On a resume the rows of
    epochs trained again are dropped first.
    """

    def __init__(self, path: Path, announce: bool = False):
        self.path = Path(path)
        self.announce = announce  # one log line per epoch (off a terminal, where no progress bar is shown)
        self.rows: List[Dict[str, object]] = []
        self._time_offset = self._fit_start = self._epoch_start = self._last_batch_end = self._train_time = 0.0
        self._samples = self._epoch_samples = 0

    def _restore(self, current_epoch: int) -> None:
        with open(self.path, newline="") if self.path.exists() else io.StringIO() as handle:
            self.rows = [row for row in csv.DictReader(handle) if int(row["epoch"]) < current_epoch]
        self._time_offset = float(self.rows[-1]["time_s"]) if self.rows else 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        self._restore(trainer.current_epoch)
        self._fit_start = time.perf_counter()
        if trainer.is_global_zero:
            self._write()

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self._fit_start:  # resumed from the final epoch's checkpoint: Lightning skipped on_train_start
            self._restore(trainer.current_epoch)

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = self._last_batch_end = time.perf_counter()
        self._epoch_samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._epoch_samples += int(batch[0].shape[0]) * trainer.world_size
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        now = time.perf_counter()
        train_time = self._last_batch_end - self._epoch_start
        self._train_time += train_time
        self._samples += self._epoch_samples
        metrics = trainer.callback_metrics
        values = {key: float(metrics[name]) if name in metrics else "" for key, name in (
            ("train/loss", "train/epoch_loss"), ("val/loss", "val/loss"), ("val/acc1", "val/acc1"), ("val/acc5", "val/acc5"), ("lr", "lr"))}
        row = {"epoch": trainer.current_epoch, "step": trainer.global_step, **values,
               "time_s": round(self._time_offset + now - self._fit_start, 3),
               "train_img_s": round(self._epoch_samples / train_time, 1) if train_time > 0 else ""}
        self.rows.append(row)
        if trainer.is_global_zero:
            self._write()
            if self.announce:
                total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
                shown = [f"{key} {row[key]:.4f}" for key in ("train/loss", "val/loss", "val/acc1") if row[key] != ""]
                speed = f", {row['train_img_s']} img/s" if row["train_img_s"] != "" else ""
                log(f"epoch {row['epoch'] + 1}{total} step {row['step']}: {', '.join(shown)}{speed}")

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
        # nothing trained in this process (resumed after the final epoch): the recorded epochs' rates
        # as total images / total time (equal epochs: their harmonic mean)
        rates = [float(r["train_img_s"]) for r in self.rows if r.get("train_img_s") not in ("", None)]
        rates = [r for r in rates if r > 0]
        return len(rates) / sum(1.0 / r for r in rates) if rates else None

    @property
    def elapsed(self) -> float:
        return self._time_offset + (time.perf_counter() - self._fit_start if self._fit_start else 0.0)

    def state_dict(self):
        return {}  # nothing of ours goes into checkpoints


class RankRecord(Callback):
    """Each rank writes ``ranks/rank-<r>.json``: its config digest and the samples of its first batch,
    so anyone can check that every DDP rank trained the same configuration on different samples."""

    def __init__(self, run_dir: Path, digest: str):
        self.run_dir, self.digest, self.written = Path(run_dir), digest, False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.written:
            return
        images = batch[0].detach().to("cpu", torch.float32)
        atomic_write_json(self.run_dir / "ranks" / f"rank-{trainer.global_rank}.json", {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "config_digest": self.digest,
            "epoch": trainer.current_epoch,
            "first_batch_samples": [hashlib.sha1(image.numpy().tobytes()).hexdigest()[:16] for image in images],
            "sync_batchnorm": any(isinstance(m, torch.nn.SyncBatchNorm) for m in pl_module.modules()),
        })
        self.written = True


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints are written to a temporary file and renamed into place: a job killed while saving
    leaves the previous ``last.ckpt`` intact. Reads are weights-only whatever torch's default."""

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
        from vit_ablate.model.safe_load import load_torch_file

        return load_torch_file(path)


class SigtermGuard(Callback):
    """A SIGTERM at any time the run directory is locked stops the run with ``interrupted`` recorded.

    Lightning's own handling is installed only inside ``fit``, after the data and model are set up
    (minutes, the first time a dataset is decoded), and with several processes it broadcasts inside the
    signal handler, which deadlocks ranks signalled at different moments. As a context manager this
    handler holds a signal while nothing may be interrupted (the folder being prepared, the result
    being written) and raises it again on exit; inside ``trainer_calls`` it raises ``SIGTERMException``
    (as Ctrl-C raises ``KeyboardInterrupt``), a held one at once. In multi-process runs it replaces
    Lightning's handler: a rank's signal is held, and after every step the ranks agree (one
    all-reduce) whether any got one, then all stop after that same step.
    """

    def __init__(self) -> None:
        self.held = False
        self._previous = None
        self._trainer: Optional[L.Trainer] = None
        self._at_step_ends = False

    def _handle(self, signum, frame) -> None:
        if signal.getsignal(signal.SIGTERM) != self._handle:
            return  # Lightning's handler calls this one after its own
        if self._trainer is None or self._at_step_ends:
            self.held = True
        else:
            self._stop(signum)

    def _stop(self, signum) -> None:
        if self._trainer.strategy.launcher is not None:
            self._trainer.strategy.launcher.kill(signum)
        raise SIGTERMException

    def __enter__(self) -> "SigtermGuard":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is None:
            return
        signal.signal(signal.SIGTERM, self._previous)
        self._previous = None
        if self.held:
            self.held = False
            signal.raise_signal(signal.SIGTERM)

    @contextmanager
    def trainer_calls(self, trainer: L.Trainer) -> Iterator[None]:
        self._trainer = trainer
        try:
            if self.held:
                self.held = False
                self._stop(signal.SIGTERM)
            yield
        finally:
            self._trainer, self._at_step_ends = None, False

    def _replace_lightnings_handler(self, trainer: L.Trainer, *args) -> None:
        # Lightning has just installed its handler (it restores ours when the call ends); an evaluation
        # runs to its end and the next training step stops, a test's signal waits for the outcome
        if trainer.world_size > 1 and self._previous is not None:
            signal.signal(signal.SIGTERM, self._handle)
            self._at_step_ends = True

    on_train_start = on_validation_start = on_test_start = _replace_lightnings_handler

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._at_step_ends and trainer.strategy.reduce_boolean_decision(self.held, all=False):
            self.held = False
            raise SIGTERMException  # on every rank, after the same step
