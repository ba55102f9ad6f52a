"""The benchmark sections: our training step measured against timm and a plain PyTorch loop.

model       our model vs timm's VisionTransformer of the same shape with the same weights
            (forward + backward + optimizer step, same optimizer, same inputs, interleaved)
components  each ablation component's cost: img/s ratio vs our default pre/cls/1d/patch model
framework   a training step through ViTModule + Lightning's Trainer vs a plain PyTorch loop doing the
            same work (optimizer, schedule, grad clipping, loss), stepping in lockstep: the "framework tax"
data        the configured data module's training loader alone vs what the model consumes
gpu         (CUDA only) bf16 autocast, torch.compile, the fused SDPA kernels, peak memory, MFU
ddp         (``ddp=N``, CUDA only) DDP scaling efficiency on N devices

The model, components and framework sections live here; data.py and gpu.py hold the others (mixed
into ``Bench``). Every number of every section ends up in ``Bench.results`` (the JSON file);
``Bench.rows`` is the table.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import nn

from vit_ablate import rundir
from vit_ablate.bench.data import DataSection
from vit_ablate.bench.env import environment, load_average
from vit_ablate.bench.flops import count_model_flops, vit_flops, vit_flops_breakdown
from vit_ablate.bench.gpu import GpuSections, sdpa_kernels_used
from vit_ablate.bench.settings import (
    CORE_COMPONENTS,
    CPU_ANCHORS,
    DEFAULT_COMPONENTS,
    ENV_COMPONENTS,
    ENV_ROUNDS,
    ENV_WARMUP,
    EXTRA_COMPONENTS,
    LOSS_TOLERANCE,
    MFU_REFERENCE,
    SECTIONS,
    TARGETS,
)
from vit_ablate.bench.table import Row, format_table
from vit_ablate.bench.timing import (
    Clock,
    Measured,
    interleaved,
    make_optimizer,
    make_train_step,
    paired_ratio,
    precision_of,
    synchronize,
)
from vit_ablate.config import ConfigError, compile_mode, to_container

__all__ = [
    "SECTIONS",
    "TARGETS",
    "CORE_COMPONENTS",
    "EXTRA_COMPONENTS",
    "DEFAULT_COMPONENTS",
    "CPU_ANCHORS",
    "Bench",
    "parse_components",
    "sdpa_kernels_used",
]



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


class _FixedBatches:
    """An in-memory loader: the same device-resident batch ``n`` times (what both loops consume)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, n: int):
        self.batch = (images, labels)
        self.n = int(n)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        for _ in range(self.n):
            yield self.batch


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's banner lines and per-run hints (and timm's scheduler notices) are not benchmark output."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning", "timm")
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


class Bench(DataSection, GpuSections):
    """One benchmark of one run configuration. ``run(sections)`` fills ``rows``, ``notes``, ``results``."""

    def __init__(
        self,
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
    ):
        if int(steps) < 1:
            raise ConfigError(f"--steps={steps} must be at least 1")
        self.cfg = cfg
        self.steps = int(steps)
        self.rounds = int(rounds if rounds is not None else (_env_int(ENV_ROUNDS) or 3))
        self.warmup = int(warmup if warmup is not None else (_env_int(ENV_WARMUP) or 2))
        if self.rounds < 1 or self.warmup < 1:
            raise ConfigError(f"rounds ({self.rounds}) and warmup ({self.warmup}) must be at least 1")
        self.device = torch.device(device) if device is not None else self._pick_device(cfg)
        self.precision = precision_of(cfg.trainer.precision)
        self.seed = int(cfg.seed)
        self.progress = progress
        self.peak_tflops = peak_tflops
        self.components = parse_components(components, self.device)
        self.mfu_reference = dict(mfu_reference or MFU_REFERENCE)
        self.mfu_batch = mfu_batch
        self.gpu_compile = gpu_compile
        self.gpu_on_cpu = gpu_on_cpu
        self.feed = (self.device.type == "cuda") if feed is None else bool(feed)
        self.model_cfg: Dict[str, Any] = to_container(cfg)["model"]

        from vit_ablate.model import resolve_spec
        from vit_ablate.training.run import plan_batches

        self.spec = resolve_spec(self.model_cfg)
        # the batch one forward/backward sees on one device (the micro-batch under accumulation)
        self.plan = plan_batches(cfg, 1)
        self.batch = self.plan.micro_batch
        self.rows: List[Row] = []
        self.notes: List[str] = []
        self.results: Dict[str, Any] = {}
        self.model_img_s: Optional[float] = None

    # ------------------------------------------------------------------------------------ helpers
    @staticmethod
    def _pick_device(cfg: DictConfig) -> torch.device:
        accelerator = str(cfg.trainer.accelerator)
        if accelerator != "cpu" and torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[vit-ablate bench] {message}", file=sys.stderr, flush=True)

    def _inputs(self, spec, batch: int, dtype: torch.dtype = torch.float32):
        generator = torch.Generator().manual_seed(self.seed)
        images = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator)
        labels = torch.randint(0, spec.num_classes, (batch,), generator=generator)
        return images.to(self.device, dtype), labels.to(self.device)

    def _build(self, model_cfg: Dict[str, Any]) -> nn.Module:
        from vit_ablate.model import build_model

        torch.manual_seed(self.seed)
        return build_model(model_cfg)

    def _prepare(self, model: nn.Module, images, labels, precision=None, compile_model: Any = None):
        """``compile_model``: None → the config's trainer.compile; else false, true or a torch.compile mode."""
        precision = precision or self.precision
        model = model.to(self.device, precision.param_dtype).train()
        mode = compile_mode(self.cfg.trainer.compile if compile_model is None else compile_model)
        forward = torch.compile(model, mode=mode) if mode is not None else model
        optimizer = make_optimizer(model, self.cfg)
        return make_train_step(forward, optimizer, images, labels, precision, self.device)

    def _guard(self, section: str, what: str, fn: Callable[[], None]) -> None:
        """Run a section; a failure becomes an ERROR row (and a traceback in the JSON), not a crash."""
        try:
            fn()
        except ConfigError:
            raise
        except Exception as exc:  # recorded: a benchmark reports what failed and goes on
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            self.rows.append(Row(section, what, error=message))
            self.results.setdefault("errors", {})[f"{section}: {what}"] = "".join(traceback.format_exception(exc))[-4000:]
            self.log(f"{section} failed: {message}")

    # ------------------------------------------------------------------------------------ run
    def run(self, sections: Optional[Sequence[str]] = None, ddp: int = 0, json_path: Optional[str] = None) -> Dict[str, Any]:
        """Measure the chosen sections (None: all that apply). With ``json_path`` the results are
        written after every section (``"complete": false``) and once more at the end, so a run that is
        killed half-way still leaves the sections it finished."""
        if sections is None:
            chosen = [s for s in SECTIONS if s != "gpu" or self.device.type == "cuda"]
        else:
            unknown = [s for s in sections if s not in SECTIONS]
            if unknown:
                raise ConfigError(f"bench --only {' '.join(unknown)}: unknown section(s); choose from {', '.join(SECTIONS)}")
            chosen = [s for s in SECTIONS if s in sections]
        started = time.perf_counter()
        self.results["environment"] = environment(self.cfg, self.device)
        self.results["config"] = to_container(self.cfg)
        self.results["settings"] = {
            "sections": chosen,
            "ddp": int(ddp),
            "steps": self.steps,
            "rounds": self.rounds,
            "warmup": self.warmup,
            "batch": self.batch,
            "global_batch": int(self.cfg.data.batch_size),
            "precision": self.precision.name,
            "compile": compile_mode(self.cfg.trainer.compile),
            "device": str(self.device),
            "components": [f"model.{k}={v}" for k, v in self.components],
            "targets": dict(TARGETS),
            "method": "after warmup, rounds in which the candidates alternate step by step (A B C, C B A, ...); "
            "framework: a plain loop steps in lockstep inside one Trainer.fit; img/s = median over rounds of "
            "the round throughput; ratio = median of the paired per-step ratios, spread = their quartiles "
            "(data, gpu: per-round)",
        }
        self.results["flops"] = self._flops()
        env = self.results["environment"]
        load = env.get("load_average_start")
        self.notes.append(
            f"{env['device_name']} ({self.device}), {env['torch_threads']} torch thread(s), batch {self.batch}, "
            f"{self.precision.name}, {self.rounds} rounds × {self.steps} steps after {self.warmup} warmup step(s)"
            + (f"; load average {load[0]:.1f} on {env['cpu_affinity']} CPU(s)" if load else "")
        )
        self.notes.append(
            "ratio: median of the paired per-step ratios (candidates alternate step by step); spread: their "
            "quartiles (data, gpu: the per-round range); a miss whose spread reaches the target is 'within noise'"
        )
        if load and self.device.type == "cpu" and load[0] > 0.5 * (env.get("cpu_affinity") or 1) + 0.5:
            self.notes.append("the machine was busy while measuring: absolute img/s are low and noisy; ratios are paired per round")

        plan: List[Tuple[str, str, Callable[[], None]]] = []
        if any(s in chosen for s in ("model", "components", "data")):
            plan.append(("model", "model and component pool", lambda: self.section_pool(
                timm_compare="model" in chosen, components=self.components if "components" in chosen else []
            )))
        if "framework" in chosen:
            plan.append(("framework", "Lightning vs plain loop", self.section_framework))
        if "data" in chosen:
            plan.append(("data", "data pipeline", self.section_data))
        if "gpu" in chosen:
            plan.append(("gpu", "bf16 / compile / SDPA / MFU", self.section_gpu))
        if ddp:
            plan.append(("ddp", f"DDP on {ddp} devices", lambda: self.section_ddp(int(ddp))))
        for section, what, fn in plan:
            before = len(self.rows)
            self._guard(section, what, fn)
            for row in self.rows[before:]:
                self.log(f"{row.section}: {row.what}: {row.img_s or 0:.1f} vs {row.ref_img_s or 0:.1f} img/s, "
                         f"ratio {row.ratio if row.ratio is not None else float('nan'):.3f}, {row.verdict}")
            self._finish(started, complete=False, json_path=json_path)
        return self._finish(started, complete=True, json_path=json_path)

    def _finish(self, started: float, complete: bool, json_path: Optional[str]) -> Dict[str, Any]:
        from vit_ablate.io import atomic_write_json

        self.results["environment"]["load_average_end"] = load_average()
        self.results["elapsed_s"] = round(time.perf_counter() - started, 1)
        self.results["rows"] = [row.as_dict() for row in self.rows]
        self.results["notes"] = list(self.notes)
        self.results["complete"] = complete
        if json_path:
            atomic_write_json(json_path, self.results)
        return self.results

    def table(self) -> str:
        return format_table(self.rows, self.notes)

    # ------------------------------------------------------------------------------------ flops
    def _flops(self) -> Dict[str, Any]:
        from vit_ablate.model import build_model

        forward = vit_flops(self.spec)
        out: Dict[str, Any] = {
            "forward_per_image": forward,
            "training_per_image": vit_flops(self.spec, training=True),
            "forward_breakdown": vit_flops_breakdown(self.spec),
        }
        try:
            with torch.device("meta"):
                meta = build_model(self.model_cfg)
            counted = count_model_flops(meta)
            out["flop_counter_forward_per_image"] = counted
            out["flop_counter_relative_error"] = forward / counted - 1 if counted else None
        except Exception as exc:  # a cross-check that cannot run is reported, not fatal
            out["flop_counter_error"] = f"{type(exc).__name__}: {exc}"
        check = out.get("flop_counter_relative_error")
        self.notes.append(
            f"FLOPs/img (matmul, 2·MAC): forward {forward / 1e9:.3f} G analytic"
            + (f" (torch FlopCounterMode {out['flop_counter_forward_per_image'] / 1e9:.3f} G, Δ {check:+.2%})" if check is not None else "")
            + f", training ≈ 3× = {out['training_per_image'] / 1e9:.3f} G"
        )
        return out

    # ------------------------------------------------------------------------------------ model + components
    def section_pool(self, timm_compare: bool, components: Sequence[Tuple[str, str]]) -> None:
        """Build every candidate (ours, timm, the default model, the component variants), time them all
        interleaved in the same rounds, then derive the model, components and consumption numbers."""
        import timm
        from vit_ablate.model import load_timm_weights, resolve_spec, timm_kwargs, to_timm_state_dict

        models: Dict[str, nn.Module] = {}
        alias: Dict[str, str] = {}  # logical name → pool key (a variant equal to ours is measured once)
        info: Dict[str, Any] = {}
        models["ours"] = ours = self._build(self.model_cfg)
        alias["ours"] = "ours"

        reference = None
        if timm_compare:
            try:
                kwargs = timm_kwargs(ours)
                torch.manual_seed(self.seed)
                theirs = timm.models.vision_transformer.VisionTransformer(**kwargs)
                load_timm_weights(ours, theirs.state_dict())
                mine = to_timm_state_dict(ours)
                theirs_sd = theirs.state_dict()
                info["weights_identical"] = set(mine) == set(theirs_sd) and all(torch.equal(mine[k], theirs_sd[k]) for k in mine)
                info["timm_kwargs"] = {k: v for k, v in kwargs.items()}
                models["timm"] = theirs
                alias["timm"] = "timm"
                reference = "timm"
            except ValueError as exc:
                info["timm_unavailable"] = str(exc)
                reference = "default"
        base_cfg = {**self.model_cfg, **DEFAULT_COMPONENTS}
        if components or reference == "default":
            if resolve_spec(base_cfg) == self.spec:
                alias["default"] = "ours"
            else:
                models["default"] = self._build(base_cfg)
                alias["default"] = "default"
        skipped: Dict[str, str] = {}
        for key, value in components:
            name = f"model.{key}={value}"
            variant_cfg = {**base_cfg, key: value}
            try:
                spec = resolve_spec(variant_cfg)
            except ValueError as exc:
                skipped[name] = str(exc)
                continue
            if spec == resolve_spec(base_cfg):
                skipped[name] = "is the default model"
                continue
            if spec == self.spec:
                alias[name] = "ours"
                continue
            models[name] = self._build(variant_cfg)
            alias[name] = name

        images, labels = self._inputs(self.spec, self.batch, self.precision.param_dtype)
        steps_fns = {key: self._prepare(model, images, labels) for key, model in models.items()}
        self.log(f"timing {', '.join(steps_fns)}: {self.rounds} rounds × {self.steps} steps of batch {self.batch}")
        measured = interleaved(
            steps_fns, images_per_step=self.batch, steps=self.steps, rounds=self.rounds, warmup=self.warmup,
            device=self.device, seed=self.seed, progress=self.log,
        )
        del steps_fns, models, ours
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        self.results["pool"] = {key: m.as_dict() for key, m in measured.items()}
        self.results["pool_alias"] = dict(alias)
        ours_m = measured["ours"]
        self.model_img_s = ours_m.median
        flops_img = self.results["flops"]["training_per_image"]

        if timm_compare:
            ref_m = measured[alias[reference]]
            pair = paired_ratio(ours_m, ref_m)
            model_result: Dict[str, Any] = {
                "ours_img_s": ours_m.median,
                "reference": reference,
                "reference_img_s": ref_m.median,
                "ratio": pair["ratio"],
                "ratio_rounds": pair["rounds"],
                "ratio_spread": [pair["low"], pair["high"]],
                "spread": pair["spread"],
                "ours_img_s_rounds": ours_m.img_s,
                "reference_img_s_rounds": ref_m.img_s,
                "loss_step0": {"ours": ours_m.loss_step0, reference: ref_m.loss_step0},
                "achieved_train_flop_s": ours_m.median * flops_img,
                **info,
            }
            if reference == "timm":
                diff = abs(ours_m.loss_step0 - ref_m.loss_step0)
                model_result["loss_step0_abs_diff"] = diff
                model_result["loss_match"] = diff <= LOSS_TOLERANCE * max(1.0, abs(ref_m.loss_step0))
                what = "ours vs timm VisionTransformer (same weights)"
                target = TARGETS["model"]
                self.notes.append(
                    f"model: weights identical {info.get('weights_identical')}; step-0 loss ours {ours_m.loss_step0:.7f} "
                    f"vs timm {ref_m.loss_step0:.7f} (|Δ| {diff:.1e}; match {model_result['loss_match']})"
                )
            else:
                what = "ours vs our pre/cls/1d/patch (timm lacks it)"
                target = None
                self.notes.append(f"model: no timm comparison: {info['timm_unavailable']}; compared with our default model instead")
            self.rows.append(Row("model", what, ours_m.median, ref_m.median, pair["ratio"], target, pair["low"], pair["high"]))
            self.results["model"] = model_result
            self._anchor_row(measured.get("timm") if reference == "timm" else None)

        if components or skipped:
            base_m = measured[alias["default"]]
            comp: Dict[str, Any] = {"default_img_s": base_m.median, "default_img_s_rounds": base_m.img_s, "variants": {}, "skipped": skipped}
            for key, value in components:
                name = f"model.{key}={value}"
                if name in skipped:
                    continue
                m = measured[alias[name]]
                pair = paired_ratio(m, base_m)
                core = (key, value) in CORE_COMPONENTS
                comp["variants"][name] = {
                    "img_s": m.median, "img_s_rounds": m.img_s, "ratio": pair["ratio"], "ratio_rounds": pair["rounds"],
                    "ratio_spread": [pair["low"], pair["high"]], "spread": pair["spread"],
                    "cost": 1 / pair["ratio"] - 1 if pair["ratio"] else None,
                    "target": TARGETS["components"] if core else None,
                }
                self.rows.append(
                    Row("components", f"{name} vs pre/cls/1d/patch", m.median, base_m.median, pair["ratio"],
                        TARGETS["components"] if core else None, pair["low"], pair["high"])
                )
            for name, reason in skipped.items():
                self.notes.append(f"components: {name} not measured: {reason}")
            extras = [f"model.{k}={v}" for k, v in EXTRA_COMPONENTS if (k, v) not in self.components]
            if extras and components:
                self.notes.append(
                    f"components: not measured here: {', '.join(extras)} (set {ENV_COMPONENTS}=all; the default on a GPU)"
                )
            self.results["components"] = comp

    def _anchor_row(self, timm_m: Optional[Measured]) -> None:
        """The timm model against this project's quiet-machine CPU reference, when the shape matches."""
        if timm_m is None or self.device.type != "cpu" or self.batch != 128 or self.precision.name not in ("32-true", "32"):
            return
        spec = self.spec
        for shape, img_s in CPU_ANCHORS:
            if all(getattr(spec, k) == v for k, v in shape.items()):
                ratio = timm_m.median / img_s
                self.rows.append(Row("model", "timm vs quiet-CPU anchor (paper_reference.md)", timm_m.median, img_s, ratio))
                self.results.setdefault("model", {})["cpu_anchor"] = {"shape": shape, "img_s": img_s, "timm_ratio": ratio}
                return

    # ------------------------------------------------------------------------------------ framework
    def section_framework(self) -> None:
        """One Lightning ``Trainer.fit`` of ``warmup + rounds × steps`` batches, with a plain PyTorch
        loop stepping in lockstep from a callback: after each Lightning step the plain loop takes its
        own step on its own copy of the module. A Lightning step's time is the interval between two
        visits of the callback (everything Lightning does per batch: fetch, hooks, training_step,
        backward, clipping, optimizer, scheduler, logging, callbacks); a plain step's time is the
        plain loop's share of the visit. Trainer setup and teardown are outside every interval."""
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.loggers import CSVLogger

        from vit_ablate.training.callbacks import DivergenceCallback, EpochRecorder, EpochSeeding
        from vit_ablate.training.module import SCHEDULES, ViTModule
        from vit_ablate.training.trainer import build_trainer

        cfg = self.cfg
        device = self.device
        warmup = self.warmup
        total = warmup + self.rounds * self.steps
        torch.manual_seed(self.seed)
        lit = ViTModule(cfg)
        plain = ViTModule(cfg)
        plain.load_state_dict(lit.state_dict())
        images, labels = self._inputs(self.spec, self.batch)
        precision = self.precision
        plain.to(device, precision.param_dtype).train()
        plain_images = images.to(precision.param_dtype)

        optim = cfg.optim
        sched_warmup = optim.warmup_steps
        if sched_warmup == 0 and optim.warmup_epochs > 0:  # as configure_optimizers: one epoch of `total` steps
            sched_warmup = int(math.ceil(optim.warmup_epochs * total))
        sched_warmup = min(sched_warmup, total)
        clip = cfg.optim.grad_clip
        smoothing = cfg.augment.label_smoothing

        class PlainLoop:
            """The same work as ViTModule.training_step + Lightning's optimisation, written out."""

            def __init__(self):
                self.optimizer = make_optimizer(plain.model, cfg)
                self.scheduler = SCHEDULES.get(optim.schedule)(
                    self.optimizer, max(1, total - sched_warmup), sched_warmup, optim.min_lr
                )
                self.scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None
                self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
                self.batches = iter(_FixedBatches(plain_images, labels, total))
                self.updates = 0

            def step(self) -> None:
                x, y = next(self.batches)
                optimizer = self.optimizer
                with precision.autocast(device):
                    if plain.mixup is not None:
                        x, targets = plain.mixup(x, y)
                        loss = plain.soft_loss(plain(x), targets)
                    else:
                        loss = F.cross_entropy(plain(x), y, label_smoothing=smoothing)
                if self.scaler is not None:
                    self.scaler.scale(loss).backward()
                    if clip:
                        self.scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(self.params, clip)
                    self.scaler.step(optimizer)
                    self.scaler.update()
                else:
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(self.params, clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.updates += 1
                self.scheduler.step_update(num_updates=self.updates)
                if plain.ema is not None:
                    plain.ema.update(plain.model, step=self.updates)

        with _quiet_lightning():
            plain_loop = PlainLoop()
        clock = Clock(device)

        class Lockstep(Callback):
            def __init__(self):
                self.exit_mark = None
                self.lightning: List[Tuple[Any, Any]] = []
                self.plain: List[Tuple[Any, Any]] = []

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                enter = clock.mark()
                with torch.enable_grad():
                    plain_loop.step()
                leave = clock.mark()
                if batch_idx >= warmup:
                    self.lightning.append((self.exit_mark, enter))
                    self.plain.append((enter, leave))
                self.exit_mark = leave

        lockstep = Lockstep()
        accelerator = "cuda" if device.type == "cuda" else "cpu"
        devices = [device.index or 0] if device.type == "cuda" else 1
        self.log(f"framework: Lightning Trainer.fit of {warmup} + {self.rounds}×{self.steps} steps, a plain loop in lockstep")
        with tempfile.TemporaryDirectory(prefix="vit-ablate-bench-") as tmp, _quiet_lightning():
            loggers: List[Any] = []
            if cfg.logging.csv:
                loggers.append(CSVLogger(save_dir=tmp, name="logs", version=""))
            if cfg.logging.tensorboard:
                try:
                    from lightning.pytorch.loggers import TensorBoardLogger

                    loggers.append(TensorBoardLogger(save_dir=tmp, name="tensorboard", version=""))
                except Exception:  # tensorboard not installed
                    pass
            trainer = build_trainer(
                cfg, tmp,
                # as run.py, less ModelCheckpoint/RankRecord (epoch-end / first-batch only). EpochRecorder
                # is a Checkpoint, so Lightning adds no default ModelCheckpoint. Lockstep comes last.
                [EpochSeeding(cfg.seed), DivergenceCallback(), EpochRecorder(rundir.RunDir(tmp).metrics), lockstep],
                loggers,
                max_epochs=1,
                max_steps=total,
                accelerator=accelerator,
                devices=devices,
                num_nodes=1,
                gradient_clip_val=clip,
                accumulate_grad_batches=1,
                limit_train_batches=1.0,
                limit_val_batches=0,
                check_val_every_n_epoch=1,
            )
            trainer.fit(lit, train_dataloaders=_FixedBatches(images, labels, total))
        synchronize(device)
        measured_steps = self.rounds * self.steps
        if len(lockstep.lightning) != measured_steps:
            raise RuntimeError(f"Lightning ran {trainer.global_step} of {total} steps; expected {measured_steps} timed steps")
        runs = {"lightning": Measured("lightning"), "plain": Measured("plain")}
        for name, marks in (("lightning", lockstep.lightning), ("plain", lockstep.plain)):
            runs[name].turns = [clock.seconds(a, b) for a, b in marks]
            for r in range(self.rounds):
                seconds = sum(runs[name].turns[r * self.steps : (r + 1) * self.steps])
                runs[name].seconds.append(seconds)
                runs[name].img_s.append(self.steps * self.batch / seconds)
        self.log(
            "framework: Lightning " + ", ".join(f"{x:.1f}" for x in runs["lightning"].img_s)
            + " | plain " + ", ".join(f"{x:.1f}" for x in runs["plain"].img_s) + " img/s per round"
        )
        pair = paired_ratio(runs["lightning"], runs["plain"])
        lm, pm = runs["lightning"], runs["plain"]
        self.results["framework"] = {
            "lightning_img_s": lm.median, "plain_img_s": pm.median, "ratio": pair["ratio"], "ratio_rounds": pair["rounds"],
            "ratio_spread": [pair["low"], pair["high"]], "spread": pair["spread"],
            "tax": 1 / pair["ratio"] - 1 if pair["ratio"] else None,
            "lightning_img_s_rounds": lm.img_s, "plain_img_s_rounds": pm.img_s,
            "lightning_seconds_rounds": lm.seconds, "plain_seconds_rounds": pm.seconds,
            "lightning_step_seconds": lm.turns, "plain_step_seconds": pm.turns,
            "method": "one Trainer.fit; a plain loop steps in lockstep from a callback after every Lightning step",
            "warmup_steps": warmup, "grad_clip": clip, "log_every_n_steps": int(cfg.trainer.log_every_n_steps),
            "loggers": [n for n, on in (("csv", cfg.logging.csv), ("tensorboard", cfg.logging.tensorboard)) if on],
            "callbacks": ["EpochSeeding", "DivergenceCallback", "EpochRecorder"],
            "progress_bar": False,
        }
        if cfg.logging.wandb:
            self.notes.append("framework: W&B logging is left out of the benchmark (it would create a W&B run)")
        self.rows.append(
            Row("framework", "Lightning Trainer.fit vs plain PyTorch loop", lm.median, pm.median, pair["ratio"],
                TARGETS["framework"], pair["low"], pair["high"])
        )
