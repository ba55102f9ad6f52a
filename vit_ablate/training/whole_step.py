"""The whole training step (forward, loss, backward, clipping, optimizer update) as one callable that a
CUDA device captures once as a CUDA graph and then replays (``trainer.cuda_graph``); off CUDA it runs
eagerly, so its arithmetic and Lightning plumbing are tested anywhere.

Why: a small ViT's GPU step is bound by the host (ViT-Ti/4, batch 128, H100: ~830 kernel launches for
~6.5 ms of work, results/bench/h100_step_profile.txt); ``torch.compile(mode="reduce-overhead")`` graphs
forward and backward only. What capture requires (PyTorch's "CUDA Graphs" notes), and how it is met:
static inputs (each batch is copied into buffers; training drops the short last batch); an optimizer
that updates on the device (``capturable=True``, the learning rate a device tensor refilled from the
param group before each replay, so timm's host-side schedule still drives it); gradients allocated
inside the capture; autocast without its weight-cast cache; warm-up iterations on a side stream,
whose changes to weights, buffers and optimizer state are undone, so the first replay is the run's
first update.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn


class WholeTrainStep:
    """``step(images, targets) -> loss`` (detached): one full optimizer update on the batch.

    ``forward`` maps images to logits (the model, or its compiled form); ``model`` owns the parameters
    and buffers. Mixed precision follows the caller's autocast context. After a capture the gradients
    live in the graph's memory: another ``zero_grad(set_to_none=True)`` leaves ``p.grad`` None, and the
    replays still train.
    """

    def __init__(
        self,
        forward: Callable[[Tensor], Tensor],
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        optimizer: torch.optim.Optimizer,
        grad_clip: Optional[float] = None,
        warmup_iters: int = 3,
    ):
        self.forward = forward
        self.model = model
        self.loss_fn = loss_fn
        self.optimizer = optimizer
        self.grad_clip = float(grad_clip) if grad_clip else None
        self.warmup_iters = warmup_iters
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self._static_images: Optional[Tensor] = None
        self._static_targets: Optional[Tensor] = None
        self._static_loss: Optional[Tensor] = None
        self._lrs: List[Tensor] = []

    @property
    def captured(self) -> bool:
        return self.graph is not None

    def __call__(self, images: Tensor, targets: Tensor) -> Tensor:
        if images.device.type != "cuda":
            return self._eager(images, targets)
        if self.graph is None:
            self._capture(images, targets)
        if images.shape != self._static_images.shape or targets.shape != self._static_targets.shape:
            raise ValueError(
                f"trainer.cuda_graph replays a step captured for images {tuple(self._static_images.shape)} and "
                f"targets {tuple(self._static_targets.shape)}; this batch has {tuple(images.shape)} and "
                f"{tuple(targets.shape)} (every training batch must have the same shape)"
            )
        self._static_images.copy_(images, non_blocking=True)
        self._static_targets.copy_(targets, non_blocking=True)
        for lr, group in zip(self._lrs, self.optimizer.param_groups):
            lr.fill_(float(group["lr"]))  # the schedule's value for this step; a float: no host sync
        self.graph.replay()
        return self._static_loss.clone()

    def _parameters(self) -> List[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _forward_backward_update(self, images: Tensor, targets: Tensor, autocast) -> Tensor:
        with autocast():
            loss = self.loss_fn(self.forward(images), targets)
        loss.backward()
        if self.grad_clip is not None:
            # the same call Lightning makes for gradient_clip_val (global L2 norm, paper Table 3);
            # on CUDA it scales by a device tensor, so nothing is read back
            torch.nn.utils.clip_grad_norm_(self._parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _eager(self, images: Tensor, targets: Tensor) -> Tensor:
        loss = self._forward_backward_update(images, targets, contextlib.nullcontext)
        self.optimizer.zero_grad(set_to_none=True)
        return loss

    def _capture(self, images: Tensor, targets: Tensor) -> None:
        device = images.device
        groups = self.optimizer.param_groups
        for group in groups:
            if "capturable" not in group:
                raise ValueError(
                    f"trainer.cuda_graph needs an optimizer that updates on the device (capturable: adam, adamw); "
                    f"{type(self.optimizer).__name__} is not"
                )
            group["capturable"] = True
        for p in self._parameters():  # optimizer state loaded onto the host keeps its step there
            state = self.optimizer.state.get(p, {})
            if isinstance(state.get("step"), Tensor) and state["step"].device != p.device:
                state["step"] = state["step"].to(p.device, torch.float32)

        saved_model = {name: t.detach().clone() for name, t in self.model.state_dict(keep_vars=True).items()}
        saved_state = {p: {k: v.clone() for k, v in self.optimizer.state[p].items() if isinstance(v, Tensor)}
                       for p in self._parameters() if p in self.optimizer.state}
        lrs = [float(group["lr"]) for group in groups]
        self._lrs = [torch.tensor(lr, dtype=torch.float32, device=device) for lr in lrs]
        for lr, group in zip(self._lrs, groups):
            group["lr"] = lr
        try:
            self._warm_up_and_capture(images, targets, device)
        finally:
            for lr, group in zip(lrs, groups):
                group["lr"] = lr  # the schedule writes floats; __call__ copies them into the captured tensors

        with torch.no_grad():
            for name, tensor in self.model.state_dict(keep_vars=True).items():
                tensor.detach().copy_(saved_model[name])
            for p in self._parameters():
                before = saved_state.get(p, {})
                for key, value in self.optimizer.state.get(p, {}).items():
                    if isinstance(value, Tensor):  # state the warm-up created restarts at zero (Adam's start)
                        value.copy_(before[key]) if key in before else value.zero_()

    def _warm_up_and_capture(self, images: Tensor, targets: Tensor, device: torch.device) -> None:
        autocast = _capture_safe_autocast(device)
        self._static_images = images.detach().clone()
        self._static_targets = targets.detach().clone()
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup_iters):
                self._forward_backward_update(self._static_images, self._static_targets, autocast)
                self.optimizer.zero_grad(set_to_none=True)
        torch.cuda.current_stream(device).wait_stream(side)

        self.optimizer.zero_grad(set_to_none=True)  # the captured backward allocates the gradients
        torch.clear_autocast_cache()
        graph = torch.cuda.CUDAGraph()
        # thread_local: a DataLoader's pin-memory thread may make CUDA calls while this thread captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            self._static_loss = self._forward_backward_update(self._static_images, self._static_targets, autocast)
        self.graph = graph


def _capture_safe_autocast(device: torch.device):
    """The caller's autocast (if any) again, with the weight-cast cache off (required while capturing)."""
    if not torch.is_autocast_enabled(device.type):
        return contextlib.nullcontext
    dtype = torch.get_autocast_dtype(device.type)
    return lambda: torch.autocast(device.type, dtype=dtype, cache_enabled=False)


class ReplayingOptimizer(torch.optim.Optimizer):
    """What Lightning steps when the update happens inside :class:`WholeTrainStep`: ``step(closure)`` runs
    the whole step, so Lightning still counts it, runs its hooks and checkpoints the wrapped optimizer's
    state. Param groups and state are the wrapped optimizer's own (as timm's Lookahead)."""

    def __init__(self, optimizer: torch.optim.Optimizer):  # no super().__init__: nothing of its own to hold
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self._optimizer_step_pre_hooks: Dict[int, Callable] = OrderedDict()
        self._optimizer_step_post_hooks: Dict[int, Callable] = OrderedDict()

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def step(self, closure: Callable[[], Tensor]) -> Tensor:
        return closure()

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict) -> None:
        self.optimizer.load_state_dict(state_dict)
