"""Timing primitives: device synchronisation, precision policies, one training step, interleaved A/B.

Every comparison of the benchmark is *interleaved*: the candidates are warmed up, then timed in rounds;
within a round the candidates take turns of one step each, in alternating order (A B C, C B A, …,
which cancels a linear drift of the machine's load), until each has run ``steps`` steps. A candidate's
img/s is the median over rounds of its round throughput; a ratio is the median of the paired per-step
ratios (``paired_ratio``). Candidates compared with each other thus run seconds apart, and a burst of
load on a shared machine spoils a few pairs rather than the estimate.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "synchronize",
    "StepTimer",
    "Precision",
    "precision_of",
    "make_optimizer",
    "make_train_step",
    "Measured",
    "interleaved",
    "Clock",
    "paired_ratio",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class StepTimer:
    """Seconds of device work in a ``with`` block: CUDA events on a GPU, ``perf_counter`` on a CPU.

    The block's queued GPU work is waited for at the end (the start synchronises too, so work queued
    before the block is not billed to it)."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.seconds = float("nan")

    def __enter__(self) -> "StepTimer":
        synchronize(self.device)
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1e3
        else:
            self.seconds = time.perf_counter() - self._t0


# --------------------------------------------------------------------------------------------
# Precision: what trainer.precision means for a hand-written step
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Precision:
    name: str
    autocast_dtype: Optional[torch.dtype] = None  # mixed precision: autocast to this dtype
    param_dtype: torch.dtype = torch.float32  # "-true" precisions: parameters and inputs in this dtype
    grad_scaler: bool = False  # fp16 mixed precision scales the loss

    def autocast(self, device: torch.device):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


_PRECISIONS = {
    "32-true": Precision("32-true"),
    "32": Precision("32"),
    "bf16-mixed": Precision("bf16-mixed", autocast_dtype=torch.bfloat16),
    "16-mixed": Precision("16-mixed", autocast_dtype=torch.float16, grad_scaler=True),
    "bf16-true": Precision("bf16-true", param_dtype=torch.bfloat16),
    "64-true": Precision("64-true", param_dtype=torch.float64),
}


def precision_of(name: str) -> Precision:
    """``trainer.precision`` → the autocast / dtype policy Lightning applies for it."""
    try:
        return _PRECISIONS[str(name)]
    except KeyError:
        raise ValueError(f"trainer.precision={name!r} is not supported by the benchmark; use one of {', '.join(_PRECISIONS)}") from None


# --------------------------------------------------------------------------------------------
# Optimizer and training step
# --------------------------------------------------------------------------------------------
def optimizer_kwargs(cfg) -> Dict[str, object]:
    """The keyword arguments ``ViTModule.configure_optimizers`` gives timm's ``create_optimizer_v2``."""
    from vit_ablate.training.module import optimizer_kwargs as training_optimizer_kwargs

    return training_optimizer_kwargs(cfg)


def make_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """The run's optimizer (timm ``create_optimizer_v2``, weight-decay groups from ``no_weight_decay``)."""
    from timm.optim import create_optimizer_v2

    return create_optimizer_v2(model, **optimizer_kwargs(cfg))


def make_train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: Tensor,
    labels: Tensor,
    precision: Precision,
    device: torch.device,
    *,
    grad_clip: Optional[float] = None,
    label_smoothing: float = 0.0,
    batches: Optional[Callable[[], Tuple[Tensor, Tensor]]] = None,
) -> Callable[[], Tensor]:
    """A closure doing one forward, cross-entropy, backward, (clip,) optimizer step, zero_grad on a
    fixed batch (or on ``batches()`` each step, when given). It returns the detached loss and never
    synchronises with the host itself."""
    scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def step() -> Tensor:
        x, y = batches() if batches is not None else (images, labels)
        with precision.autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            if grad_clip:
                torch.nn.utils.clip_grad_norm_(params, grad_clip)
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


# --------------------------------------------------------------------------------------------
# Interleaved measurement
# --------------------------------------------------------------------------------------------
@dataclass
class Measured:
    """One candidate's measurement: img/s per round (in round order) and its step-0 loss."""

    name: str
    img_s: List[float] = field(default_factory=list)
    loss_step0: Optional[float] = None
    seconds: List[float] = field(default_factory=list)
    turns: List[float] = field(default_factory=list)  # seconds of every turn, all rounds, in order

    @property
    def median(self) -> float:
        return statistics.median(self.img_s) if self.img_s else float("nan")

    def as_dict(self) -> Dict[str, object]:
        return {
            "img_s": self.median,
            "img_s_rounds": list(self.img_s),
            "seconds_rounds": list(self.seconds),
            "turn_seconds": list(self.turns),
            "loss_step0": self.loss_step0,
        }


class Clock:
    """Marks on the device timeline: CUDA events (recorded in the stream, no host sync) on a GPU,
    ``perf_counter`` on a CPU. Intervals between consecutive marks partition the timeline, so
    alternating candidates step by step costs no synchronisation on a GPU either."""

    def __init__(self, device: torch.device):
        self.cuda = torch.device(device).type == "cuda"

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter()

    def seconds(self, start, end) -> float:
        """Call after ``synchronize`` on a GPU."""
        return start.elapsed_time(end) / 1e3 if self.cuda else end - start


def interleaved(
    steps_fns: Mapping[str, Callable[[], Tensor]],
    *,
    images_per_step: int,
    steps: int,
    rounds: int,
    warmup: int,
    device: torch.device,
    seed: int = 0,
    turn: int = 1,
    progress: Optional[Callable[[str], None]] = None,
) -> Dict[str, Measured]:
    """Time every candidate's step function, interleaved (module docstring).

    A round gives each candidate ``steps`` steps, taken in turns of ``turn`` step(s): A B C, C B A,
    A B C, … so that candidates compared with each other run seconds apart, not minutes, and a load
    change on a shared machine hits both sides of a ratio alike. A candidate's round time is the sum
    of its turns.

    The very first step of each candidate runs after ``torch.manual_seed(seed)`` and its loss is kept
    (``loss_step0``): candidates with identical weights and inputs give identical step-0 losses.
    """
    if steps < 1 or rounds < 1 or turn < 1:
        raise ValueError(f"steps ({steps}), rounds ({rounds}) and turn ({turn}) must be positive")
    names = list(steps_fns)
    results = {name: Measured(name) for name in names}
    for name in names:
        fn = steps_fns[name]
        torch.manual_seed(seed)
        results[name].loss_step0 = float(fn())
        for _ in range(max(0, warmup - 1)):
            fn()
        synchronize(device)
    clock = Clock(device)
    turns = 0
    for r in range(rounds):
        marks: Dict[str, list] = {name: [] for name in names}
        done = 0
        synchronize(device)
        while done < steps:
            n = min(turn, steps - done)
            order: Sequence[str] = names if turns % 2 == 0 else list(reversed(names))
            for name in order:
                fn = steps_fns[name]
                start = clock.mark()
                for _ in range(n):
                    fn()
                marks[name].append((start, clock.mark()))
            done += n
            turns += 1
        synchronize(device)
        for name in names:
            turn_seconds = [clock.seconds(a, b) for a, b in marks[name]]
            seconds = sum(turn_seconds)
            results[name].turns.extend(turn_seconds)
            results[name].seconds.append(seconds)
            results[name].img_s.append(steps * images_per_step / seconds)
        if progress is not None:
            progress(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {results[n].img_s[-1]:.1f}" for n in names) + " img/s")
    return results


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_ratio(a: Measured, b: Measured) -> Dict[str, object]:
    """Throughput of a ÷ throughput of b.

    When both were timed in the same turns (``interleaved``, the framework lockstep), the ratio is the
    median over turns of the paired per-turn ratio ``b_time / a_time`` — each pair ran seconds apart,
    so a burst of load on a shared machine spoils one pair, not the estimate — and ``low``/``high``
    are the quartiles of those per-turn ratios. Otherwise it is the median of the per-round ratios
    with their range. ``rounds`` always holds the per-round throughput ratios."""
    rounds = [x / y for x, y in zip(a.img_s, b.img_s)]
    if a.turns and len(a.turns) == len(b.turns):
        turns = [tb / ta for ta, tb in zip(a.turns, b.turns) if ta > 0]
        return {"ratio": statistics.median(turns), "low": _quantile(turns, 0.25), "high": _quantile(turns, 0.75),
                "rounds": rounds, "spread": "interquartile range of the paired per-step ratios", "pairs": len(turns)}
    if not rounds:
        return {"ratio": float("nan"), "low": float("nan"), "high": float("nan"), "rounds": [], "spread": None, "pairs": 0}
    return {"ratio": statistics.median(rounds), "low": min(rounds), "high": max(rounds), "rounds": rounds,
            "spread": "range of the per-round ratios", "pairs": len(rounds)}
