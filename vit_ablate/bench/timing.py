"""Timing: what a precision means for a hand-written step, one training step, interleaved A/B.

Candidates compared with each other are timed *interleaved*: after warmup, each round gives every
candidate ``steps`` steps, one at a time in alternating order (A B C, C B A, …, which cancels a linear
drift of the machine's load), so candidates run seconds apart and a burst of load on a shared machine
spoils a few pairs rather than the estimate. A candidate's img/s is the median over rounds of its
round throughput; a ratio is the median of the paired per-step ratios (``paired_ratio``).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["Precision", "make_optimizer", "make_train_step", "Clock", "timed", "Measured", "interleaved", "paired_ratio"]


@dataclass(frozen=True)
class Precision:
    """``trainer.precision`` as Lightning applies it: autocast, the parameters' dtype, fp16 loss scaling."""

    name: str

    @property
    def param_dtype(self) -> torch.dtype:
        return {"bf16-true": torch.bfloat16, "64-true": torch.float64}.get(self.name, torch.float32)

    def autocast(self, device: torch.device):
        dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.name)
        return torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None)

    def grad_scaler(self, device: torch.device) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(device.type, enabled=self.name == "16-mixed")


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """The run's optimizer, as ``ViTModule.configure_optimizers`` makes it (timm, weight-decay groups)."""
    from timm.optim import create_optimizer_v2

    from vit_ablate.training.module import optimizer_kwargs

    return create_optimizer_v2(model, **optimizer_kwargs(cfg))


def make_train_step(forward: Callable[[Tensor], Tensor], optimizer: torch.optim.Optimizer,
                    next_batch: Callable[[], Tuple[Tensor, Tensor]], precision: Precision,
                    device: torch.device) -> Callable[[], Tensor]:
    """One forward, cross-entropy, backward, optimizer step and zero_grad on ``next_batch()``, as a
    closure returning the detached loss; it never synchronises with the host itself."""
    scaler = precision.grad_scaler(device)

    def step() -> Tensor:
        images, labels = next_batch()
        with precision.autocast(device):
            logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


class Clock:
    """Marks on the device's timeline: CUDA events (recorded in the stream, no host sync) on a GPU,
    ``perf_counter`` on a CPU, so that timing every step costs no synchronisation."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def mark(self) -> Any:
        if self.device.type != "cuda":
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, start: Any, end: Any) -> float:
        """Between two marks; on a GPU, call after ``sync``."""
        return start.elapsed_time(end) / 1e3 if self.device.type == "cuda" else end - start


def timed(device: torch.device, fn: Callable[[], Any], repeat: int = 1) -> float:
    """Seconds of device work for ``repeat`` calls of ``fn`` (work queued before is not billed)."""
    clock = Clock(device)
    clock.sync()
    start = clock.mark()
    for _ in range(repeat):
        fn()
    end = clock.mark()
    clock.sync()
    return clock.seconds(start, end)


@dataclass
class Measured:
    """One candidate: img/s per round, seconds of every step in order, and its step-0 loss."""

    name: str
    img_s: List[float] = field(default_factory=list)
    turns: List[float] = field(default_factory=list)
    loss_step0: Optional[float] = None

    @property
    def median(self) -> float:
        return statistics.median(self.img_s) if self.img_s else float("nan")

    def as_dict(self) -> Dict[str, Any]:
        return {"img_s": self.median, "img_s_rounds": self.img_s, "step_seconds": self.turns, "loss_step0": self.loss_step0}


def interleaved(step_fns: Mapping[str, Callable[[], Tensor]], *, images_per_step: int, steps: int, rounds: int,
                warmup: int, device: torch.device, seed: int = 0,
                progress: Optional[Callable[[str], None]] = None) -> Dict[str, Measured]:
    """Time every candidate's step function interleaved (module docstring). Each candidate's first
    step runs after ``torch.manual_seed(seed)`` and its loss is kept: candidates with identical
    weights and inputs give identical step-0 losses. ``warmup`` counts that first step."""
    if steps < 1 or rounds < 1:
        raise ValueError(f"steps ({steps}) and rounds ({rounds}) must be positive")
    names = list(step_fns)
    results = {name: Measured(name) for name in names}
    for name, fn in step_fns.items():
        torch.manual_seed(seed)
        results[name].loss_step0 = float(fn())
        for _ in range(warmup - 1):
            fn()
    clock = Clock(device)
    for r in range(rounds):
        marks: Dict[str, list] = {name: [] for name in names}
        clock.sync()
        for s in range(steps):
            for name in names if (r * steps + s) % 2 == 0 else reversed(names):
                start = clock.mark()
                step_fns[name]()
                marks[name].append((start, clock.mark()))
        clock.sync()
        for name in names:
            seconds = [clock.seconds(a, b) for a, b in marks[name]]
            results[name].turns.extend(seconds)
            results[name].img_s.append(steps * images_per_step / sum(seconds))
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {results[n].img_s[-1]:.1f}" for n in names) + " img/s")
    return results


def paired_ratio(a: Measured, b: Measured) -> Dict[str, Any]:
    """Throughput of a ÷ throughput of b. When both were timed step by step in the same turns, the
    median of the paired per-step ratios with their quartiles as the spread; otherwise the median of
    the per-round ratios with their range."""
    rounds = [x / y for x, y in zip(a.img_s, b.img_s)]
    paired = [tb / ta for ta, tb in zip(a.turns, b.turns) if ta > 0] if len(a.turns) == len(b.turns) else []
    if paired:
        low, ratio, high = np.percentile(paired, [25, 50, 75])
        spread = "interquartile range of the paired per-step ratios"
    elif rounds:
        low, ratio, high = min(rounds), statistics.median(rounds), max(rounds)
        spread = "range of the per-round ratios"
    else:
        low = ratio = high = float("nan")
        spread = None
    return {"ratio": float(ratio), "low": float(low), "high": float(high), "ratio_rounds": rounds, "spread": spread,
            "pairs": len(paired) or len(rounds)}
