"""What every benchmark section is handed: ``Bench``, the run's settings and what it has found.

A section is a function ``section_xxx(bench)``: it builds its candidates with the helpers below (a
seeded model, a fixed random batch, a training step), times them, and adds table ``rows``, ``notes``
and ``results`` (the JSON content) to the ``Bench``.
"""

from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from vit_ablate.bench.timing import Precision, make_optimizer, make_train_step
from vit_ablate.config import SCHEMA, ConfigError, to_container
from vit_ablate.model import ModelConfig, resolve_spec

__all__ = ["Row", "Bench", "make_bench", "parse_components", "random_inputs", "seeded_model", "model_train_step", "guarded"]

# The variants the components section measures against the config's default components: the core
# four (class token vs GAP, paper Appendix D.3; position embeddings, D.4; post-norm) have a target in
# TARGETS_FILE, the extra four are measured with components="all" (the GPU default).
COMPONENT_KEYS = ("norm", "pool", "pos_embed", "pos_embed_at", "stem", "head")
CORE_COMPONENTS = (("pos_embed", "relative"), ("pos_embed", "2d"), ("pool", "gap"), ("norm", "post"))
EXTRA_COMPONENTS = (("pos_embed", "rope2d"), ("pos_embed", "sincos2d"), ("pool", "map"), ("stem", "conv"))
# (steps, rounds, warmup) by device: enough for a ratio in about three minutes on a 2-core CPU
DEFAULT_COUNTS = {"cpu": (3, 2, 1), "cuda": (20, 3, 3)}
TARGETS_FILE = "results/bench/targets.md"


@dataclass
class Row:
    """One line of the table: img/s against a reference img/s, their ratio with its spread, or a note
    (an error, a skipped section) instead."""

    section: str
    what: str
    img_s: Optional[float] = None
    ref_img_s: Optional[float] = None
    ratio: Optional[float] = None
    low: Optional[float] = None
    high: Optional[float] = None
    note: Optional[str] = None

    def summary(self) -> str:
        """The row as one progress line."""
        text = self.what + (f": {self.note}" if self.note else "")
        if self.img_s is not None:
            text += f": {self.img_s:.1f}" + (f" vs {self.ref_img_s:.1f}" if self.ref_img_s is not None else "") + " img/s"
        return text + (f", ratio {self.ratio:.3f}" if self.ratio is not None else "")


@dataclass
class Bench:
    cfg: DictConfig
    model_cfg: Dict[str, Any]  # cfg.model as a plain dict
    spec: ModelConfig
    device: torch.device
    precision: Precision
    seed: int
    batch: int  # what one forward/backward sees on one device (the micro-batch under accumulation)
    steps: int  # timed steps per round
    rounds: int
    warmup: int  # untimed steps before the first round
    components: Tuple[Tuple[str, str], ...]  # (key, value) pairs of the components section
    progress: bool = True
    feed: bool = False  # data: also measure training fed by the loader
    gpu_on_cpu: bool = False  # gpu: run the section's code path without CUDA (the tests)
    gpu_compile: bool = True  # gpu: include the torch.compile configurations
    peak_tflops: Optional[float] = None  # gpu: the device's peak, instead of the table of known GPUs
    mfu_reference: Dict[str, Any] = field(default_factory=lambda: {"variant": "B/16", "img_size": 224, "num_classes": 1000})
    mfu_batch: Optional[int] = None  # gpu: the MFU model's first batch to try (halved on out-of-memory)
    rows: List[Row] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    results: Dict[str, Any] = field(default_factory=dict)
    model_img_s: Optional[float] = None  # the configured model's training img/s, once a section measured it

    def log(self, message: str) -> None:
        if self.progress:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    def table(self) -> str:
        return format_table(self.rows, self.notes)


def _num(value: Optional[float], digits: int = 1) -> str:
    if value is None or not math.isfinite(value):
        return "" if value is None else "—"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}f}"


def format_table(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    cells = [("section", "what", "img/s", "ref img/s", "ratio", "spread")]
    for r in rows:
        spread = f"{r.low:.2f}–{r.high:.2f}" if r.low is not None and r.high is not None else ""
        numbers = ("", "", "", "") if r.note else (_num(r.img_s), _num(r.ref_img_s), _num(r.ratio, 2), spread)
        cells.append((r.section, r.what, *numbers))
    widths = [max(len(line[i]) for line in cells) for i in range(6)]
    lines = ["  ".join(c.rjust(w) if 2 <= i <= 4 else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [*notes, *(f"{r.section} / {r.what}: {r.note}" for r in rows if r.note)]
    return "\n".join(lines + ([""] + [f"* {note}" for note in notes] if notes else []))


def parse_components(spec: Optional[Any], device: torch.device) -> List[Tuple[str, str]]:
    """``None`` → "all" on a GPU, "core" on a CPU; "core", "all", or a list or comma string of
    ``key=value`` (``pos_embed=rope2d`` or ``model.pos_embed=rope2d``)."""
    spec = spec or ("all" if device.type == "cuda" else "core")
    if spec in ("core", "all"):
        return list(CORE_COMPONENTS + (EXTRA_COMPONENTS if spec == "all" else ()))
    out = []
    for item in spec.split(",") if isinstance(spec, str) else spec:
        item = "=".join(item) if isinstance(item, (tuple, list)) else str(item)
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("model.")
        if not sep or key not in COMPONENT_KEYS:
            raise ConfigError(f"bench component {item!r}: write key=value with key one of {', '.join(COMPONENT_KEYS)}")
        out.append((key, str(value).strip()))
    return out


def default_components(model_cfg: Dict[str, Any]) -> Dict[str, Any]:
    """``model_cfg`` with the config's default components (paper defaults: pre-norm, class token, 1-D
    learned position embedding at the input, patch stem, linear head)."""
    return {**model_cfg, **{k: SCHEMA[f"model.{k}"].default for k in COMPONENT_KEYS}}


def make_bench(cfg: DictConfig, *, steps: Optional[int] = None, rounds: Optional[int] = None,
               warmup: Optional[int] = None, components: Optional[Any] = None, device: Optional[Any] = None,
               feed: Optional[bool] = None, **options: Any) -> Bench:
    """The settings for ``cfg``; counts left out take ``DEFAULT_COUNTS`` of the device (the configured
    accelerator when CUDA is there), ``feed`` defaults to on a GPU."""
    from vit_ablate.training.trainer import plan_batches

    if device is None:
        device = "cuda" if str(cfg.trainer.accelerator) != "cpu" and torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    counts = [given if given is not None else default
              for given, default in zip((steps, rounds, warmup), DEFAULT_COUNTS["cuda" if device.type == "cuda" else "cpu"])]
    if min(counts) < 1:
        raise ConfigError(f"bench: steps, rounds and warmup must be at least 1 (got {', '.join(map(str, counts))})")
    model_cfg = to_container(cfg)["model"]
    return Bench(cfg, model_cfg, resolve_spec(model_cfg), device, Precision(str(cfg.trainer.precision)), int(cfg.seed),
                 plan_batches(cfg, 1).micro_batch, *counts, tuple(parse_components(components, device)),
                 feed=device.type == "cuda" if feed is None else bool(feed), **options)


def random_inputs(bench: Bench, spec: ModelConfig, batch: int, dtype: torch.dtype = torch.float32):
    """A fixed batch of random images and labels for ``spec`` on the device, the same for every candidate."""
    generator = torch.Generator().manual_seed(bench.seed)
    images = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator)
    labels = torch.randint(0, spec.num_classes, (batch,), generator=generator)
    return images.to(bench.device, dtype), labels.to(bench.device)


def seeded_model(bench: Bench, model_cfg: Dict[str, Any]) -> nn.Module:
    """``model_cfg`` built after seeding, so that models of one shape start with the same weights."""
    from vit_ablate.model import build_model

    torch.manual_seed(bench.seed)
    return build_model(model_cfg)


def model_train_step(bench: Bench, model: nn.Module, images, labels, precision: Optional[Precision] = None,
                     compile_model: Any = None, whole_graph: bool = False) -> Callable[[], torch.Tensor]:
    """``model`` on the device in training mode with the run's optimizer, as a one-step closure.
    ``compile_model``: None → the config's trainer.compile; ``whole_graph``: the step of
    ``trainer.cuda_graph`` (forward to update captured as one CUDA graph)."""
    from vit_ablate.training.module import compile_forward
    from vit_ablate.training.whole_step import WholeTrainStep

    precision = precision or bench.precision
    model = model.to(bench.device, precision.param_dtype).train()
    forward = compile_forward(model, bench.cfg.trainer.compile if compile_model is None else compile_model)
    optimizer = make_optimizer(model, bench.cfg)
    if not whole_graph:
        return make_train_step(forward, optimizer, lambda: (images, labels), precision, bench.device)
    whole = WholeTrainStep(forward, model, F.cross_entropy, optimizer)

    def step() -> torch.Tensor:
        with precision.autocast(bench.device):
            return whole(images, labels)

    return step


def guarded(bench: Bench, section: str, what: str, fn: Callable[[], None]) -> None:
    """Run ``fn``; a failure becomes an ERROR row (and its traceback goes to the JSON), not a crash."""
    try:
        fn()
    except ConfigError:
        raise
    except Exception as exc:  # recorded: a benchmark reports what failed and goes on
        message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        bench.rows.append(Row(section, what, note=f"ERROR {message}"))
        bench.results.setdefault("errors", {})[f"{section}: {what}"] = "".join(traceback.format_exception(exc))[-4000:]
        bench.log(f"{section} failed: {message}")
