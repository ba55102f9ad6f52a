"""What every benchmark section is handed: the run's settings and the report it adds to.

``BenchContext`` holds the settings, fixed before the first section runs (configuration, device,
precision, batch, steps, rounds, warmup, components, the section options, the progress log).
``BenchReport`` accumulates what the sections find: the table's ``rows``, the ``notes`` printed under
it, and ``results``, the JSON content. A section is a function ``section_xxx(ctx, report)``; the
helpers below build its candidates (a seeded model, a fixed random batch, a training step) from the
settings alone.
"""

from __future__ import annotations

import os
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from vit_ablate.bench.settings import CORE_COMPONENTS, DEFAULT_COMPONENTS, ENV_COMPONENTS, ENV_ROUNDS, ENV_WARMUP, EXTRA_COMPONENTS, MFU_REFERENCE
from vit_ablate.bench.table import Row, format_table
from vit_ablate.bench.timing import Precision, make_optimizer, make_train_step, precision_of
from vit_ablate.config import ConfigError, to_container
from vit_ablate.model import ViTSpec, resolve_spec
from vit_ablate.training.module import compile_forward
from vit_ablate.training.whole_step import WholeTrainStep

__all__ = [
    "BenchContext",
    "BenchReport",
    "make_context",
    "parse_components",
    "random_inputs",
    "seeded_model",
    "model_train_step",
    "guarded",
]


@dataclass(frozen=True)
class BenchContext:
    """The settings of one benchmark, shared read-only by every section."""

    cfg: DictConfig
    model_cfg: Dict[str, Any]  # cfg.model as a plain dict
    spec: ViTSpec  # the configured model's shape
    device: torch.device
    precision: Precision
    seed: int
    batch: int  # what one forward/backward sees on one device (the micro-batch under accumulation)
    steps: int  # timed steps per round
    rounds: int
    warmup: int  # untimed steps before the first round
    components: Tuple[Tuple[str, str], ...]  # (key, value) pairs of the components section
    log: Callable[[str], None]  # progress lines (stderr, or nothing)
    # options of single sections
    feed: bool  # data: also measure training fed by the loader
    gpu_on_cpu: bool  # gpu: run the section's code path without CUDA (the tests)
    gpu_compile: bool  # gpu: include the torch.compile configurations
    peak_tflops: Optional[float]  # gpu: the device's peak, overriding the table of known devices
    mfu_reference: Dict[str, Any]  # gpu: the model cfg the MFU target is stated for
    mfu_batch: Optional[int]  # gpu: the MFU model's first batch to try (halved on out-of-memory)


@dataclass
class BenchReport:
    """What the sections found; ``results`` is written as the JSON file, ``table()`` is the text."""

    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    results: Dict[str, Any] = field(default_factory=dict)
    # the configured model's training img/s, from the model/components pool: what the data section's
    # loaders are compared with (None when the pool did not run)
    model_img_s: Optional[float] = None

    def table(self) -> str:
        return format_table(self.rows, self.notes)


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} must be an integer") from None


def parse_components(spec: Optional[Any], device: torch.device) -> List[Tuple[str, str]]:
    """``None`` → all on a GPU, the four with targets on a CPU; "core", "all", or a list/comma string
    of ``key=value`` (``pos_embed=rope2d`` or ``model.pos_embed=rope2d``)."""
    if spec is None:
        spec = os.environ.get(ENV_COMPONENTS) or ("all" if device.type == "cuda" else "core")
    if isinstance(spec, str):
        if spec == "core":
            return list(CORE_COMPONENTS)
        if spec == "all":
            return list(CORE_COMPONENTS + EXTRA_COMPONENTS)
        spec = [item for item in spec.split(",") if item.strip()]
    out = []
    for item in spec:
        if isinstance(item, (tuple, list)):
            key, value = item
        else:
            key, sep, value = str(item).partition("=")
            if not sep:
                raise ConfigError(f"bench component {item!r} is not of the form key=value (e.g. pos_embed=relative)")
        key = key.strip().removeprefix("model.")
        if key not in DEFAULT_COMPONENTS:
            raise ConfigError(f"bench component key {key!r} is not one of {', '.join(DEFAULT_COMPONENTS)}")
        out.append((key, str(value).strip()))
    return out


def _pick_device(cfg: DictConfig) -> torch.device:
    accelerator = str(cfg.trainer.accelerator)
    if accelerator != "cpu" and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _print_progress(message: str) -> None:
    print(f"[vit-ablate bench] {message}", file=sys.stderr, flush=True)


def _no_progress(message: str) -> None:
    pass


def make_context(
    cfg: DictConfig,
    *,
    steps: int = 20,
    rounds: Optional[int] = None,
    warmup: Optional[int] = None,
    components: Optional[Any] = None,
    peak_tflops: Optional[float] = None,
    device: Optional[Any] = None,
    progress: bool = True,
    mfu_reference: Optional[Dict[str, Any]] = None,
    mfu_batch: Optional[int] = None,
    gpu_compile: bool = True,
    gpu_on_cpu: bool = False,
    feed: Optional[bool] = None,
) -> BenchContext:
    """The settings for ``cfg``: rounds and warmup default to their environment variables (else 3
    and 2), the device to the configured accelerator when CUDA is there, ``feed`` to on-a-GPU."""
    if int(steps) < 1:
        raise ConfigError(f"--steps={steps} must be at least 1")
    rounds = int(rounds if rounds is not None else (_env_int(ENV_ROUNDS) or 3))
    warmup = int(warmup if warmup is not None else (_env_int(ENV_WARMUP) or 2))
    if rounds < 1 or warmup < 1:
        raise ConfigError(f"rounds ({rounds}) and warmup ({warmup}) must be at least 1")
    chosen_device = torch.device(device) if device is not None else _pick_device(cfg)
    precision = precision_of(cfg.trainer.precision)
    chosen_components = tuple(parse_components(components, chosen_device))
    model_cfg: Dict[str, Any] = to_container(cfg)["model"]

    from vit_ablate.training.run import plan_batches

    spec = resolve_spec(model_cfg)
    return BenchContext(
        cfg=cfg,
        model_cfg=model_cfg,
        spec=spec,
        device=chosen_device,
        precision=precision,
        seed=int(cfg.seed),
        batch=plan_batches(cfg, 1).micro_batch,
        steps=int(steps),
        rounds=rounds,
        warmup=warmup,
        components=chosen_components,
        log=_print_progress if progress else _no_progress,
        feed=(chosen_device.type == "cuda") if feed is None else bool(feed),
        gpu_on_cpu=gpu_on_cpu,
        gpu_compile=gpu_compile,
        peak_tflops=peak_tflops,
        mfu_reference=dict(mfu_reference or MFU_REFERENCE),
        mfu_batch=mfu_batch,
    )


# ---------------------------------------------------------------------------------------- helpers
def random_inputs(ctx: BenchContext, spec: ViTSpec, batch: int, dtype: torch.dtype = torch.float32):
    """A fixed batch of random images and labels for ``spec``, on the device, the same for every candidate."""
    generator = torch.Generator().manual_seed(ctx.seed)
    images = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=generator)
    return images.to(ctx.device, dtype), labels.to(ctx.device)


def seeded_model(ctx: BenchContext, model_cfg: Dict[str, Any]) -> nn.Module:
    """``model_cfg`` built after seeding, so that models of one shape start with the same weights."""
    from vit_ablate.model import build_model

    torch.manual_seed(ctx.seed)
    return build_model(model_cfg)


def model_train_step(ctx: BenchContext, model: nn.Module, images, labels, precision: Optional[Precision] = None,
                     compile_model: Any = None, whole_graph: bool = False) -> Callable[[], torch.Tensor]:
    """``model`` on the device in training mode with the run's optimizer, as a one-step closure.
    ``compile_model``: None → the config's trainer.compile; else false, true or a torch.compile mode.
    ``whole_graph``: the step of ``trainer.cuda_graph`` (forward to update captured as one CUDA graph)."""
    precision = precision or ctx.precision
    model = model.to(ctx.device, precision.param_dtype).train()
    forward = compile_forward(model, ctx.cfg.trainer.compile if compile_model is None else compile_model)
    optimizer = make_optimizer(model, ctx.cfg)
    if not whole_graph:
        return make_train_step(forward, optimizer, images, labels, precision, ctx.device)
    whole = WholeTrainStep(forward, model, F.cross_entropy, optimizer)

    def step() -> torch.Tensor:
        with precision.autocast(ctx.device):
            return whole(images, labels)

    return step


def guarded(ctx: BenchContext, report: BenchReport, section: str, what: str, fn: Callable[[], None]) -> None:
    """Run a section; a failure becomes an ERROR row (and a traceback in the JSON), not a crash."""
    try:
        fn()
    except ConfigError:
        raise
    except Exception as exc:  # recorded: a benchmark reports what failed and goes on
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        report.rows.append(Row(section, what, error=message))
        report.results.setdefault("errors", {})[f"{section}: {what}"] = "".join(traceback.format_exception(exc))[-4000:]
        ctx.log(f"{section} failed: {message}")
