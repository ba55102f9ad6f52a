"""The benchmark sections (issue 6, "Speed measured against the references").

model       our model vs timm's VisionTransformer of the same shape with the same weights
            (forward + backward + optimizer step, same optimizer, same inputs, interleaved)
components  each ablation component's cost: img/s ratio vs our default pre/cls/1d/patch model
framework   a training step through ViTModule + Lightning's Trainer vs a plain PyTorch loop doing the
            same work (optimizer, schedule, grad clipping, loss): the "framework tax"
data        the configured data module's training loader alone vs what the model consumes
gpu         (CUDA only) bf16 autocast, torch.compile, the fused SDPA kernels, peak memory, MFU
ddp         (``ddp=N``, CUDA only) DDP scaling efficiency on N devices

Every number of every section ends up in ``Bench.results`` (the JSON file); ``Bench.rows`` is the table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import socket
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from vit_ablate.bench.env import device_name, environment, load_average
from vit_ablate.bench.flops import count_model_flops, device_peak_flops, vit_flops, vit_flops_breakdown
from vit_ablate.bench.table import Row, format_table
from vit_ablate.bench.timing import (
    Measured,
    StepTimer,
    interleaved,
    make_optimizer,
    make_train_step,
    paired_ratio,
    precision_of,
    synchronize,
)
from vit_ablate.config import ConfigError, to_container

__all__ = [
    "SECTIONS",
    "TARGETS",
    "CORE_COMPONENTS",
    "EXTRA_COMPONENTS",
    "DEFAULT_COMPONENTS",
    "CPU_ANCHORS",
    "Bench",
]

SECTIONS = ("model", "components", "framework", "data", "gpu")

# The targets: a row is met when its ratio is at least this.
TARGETS = {
    "model": 1.00,  # ours / timm
    "components": 0.90,  # variant / default: each component costs at most 10 %
    "framework": 0.97,  # Lightning / plain loop: at most a 3 % tax per step
    "data": 10.0,  # loader img/s / model img/s
    "gpu_mfu": 0.45,  # ViT-B/16 bf16 model FLOPs utilisation
}

# The paper-default model of the same size, which component costs are measured against.
DEFAULT_COMPONENTS = {"norm": "pre", "pool": "cls", "pos_embed": "1d", "pos_embed_at": "input", "stem": "patch", "head": "linear"}
CORE_COMPONENTS: Tuple[Tuple[str, str], ...] = (("pos_embed", "relative"), ("pos_embed", "2d"), ("pool", "gap"), ("norm", "post"))
EXTRA_COMPONENTS: Tuple[Tuple[str, str], ...] = (("pos_embed", "rope2d"), ("pos_embed", "sincos2d"), ("pool", "map"), ("stem", "conv"))

# shared/paper_reference.md: this project's own CPU reference (2-core machine, timm VisionTransformer,
# batch 128, AdamW, fp32), measured on a quiet machine. Matched on (img, patch, dim, depth).
CPU_ANCHORS: Tuple[Tuple[Dict[str, int], float], ...] = (
    ({"img_size": 32, "patch_size": 4, "dim": 192, "depth": 12}, 49.0),
    ({"img_size": 32, "patch_size": 4, "dim": 192, "depth": 6}, 105.0),
    ({"img_size": 32, "patch_size": 8, "dim": 128, "depth": 4}, 1071.0),
)

MFU_REFERENCE = {"variant": "B/16", "img_size": 224, "num_classes": 1000}  # the MFU target model
ENV_ROUNDS = "VIT_ABLATE_BENCH_ROUNDS"
ENV_WARMUP = "VIT_ABLATE_BENCH_WARMUP"
ENV_COMPONENTS = "VIT_ABLATE_BENCH_COMPONENTS"
LOSS_TOLERANCE = 1e-6
STANDIN_BYTES = 256 * 2**20  # memory budget of a stand-in training split


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def _quiet_lightning():
    """Lightning's banner lines and per-run hints are not benchmark output."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning")
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


class Bench:
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
    ):
        if int(steps) < 1:
            raise ConfigError(f"--steps={steps} must be at least 1")
        self.cfg = cfg
        self.steps = int(steps)
        self.rounds = int(rounds or _env_int(ENV_ROUNDS) or 3)
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

    def _prepare(self, model: nn.Module, images, labels, precision=None, compile_model: Optional[bool] = None):
        precision = precision or self.precision
        model = model.to(self.device, precision.param_dtype).train()
        forward = torch.compile(model) if (self.cfg.trainer.compile if compile_model is None else compile_model) else model
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
    def run(self, sections: Optional[Sequence[str]] = None, ddp: int = 0) -> Dict[str, Any]:
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
            "compile": bool(self.cfg.trainer.compile),
            "device": str(self.device),
            "components": [f"model.{k}={v}" for k, v in self.components],
            "targets": dict(TARGETS),
            "method": "interleaved rounds in alternating order after warmup; img/s = median over rounds; "
            "ratio = median of per-round paired ratios",
        }
        self.results["flops"] = self._flops()
        env = self.results["environment"]
        load = env.get("load_average_start")
        self.notes.append(
            f"{env['device_name']} ({self.device}), {env['torch_threads']} torch thread(s), batch {self.batch}, "
            f"{self.precision.name}, {self.rounds} rounds × {self.steps} steps after {self.warmup} warmup step(s)"
            + (f"; load average {load[0]:.1f} on {env['cpu_affinity']} CPU(s)" if load else "")
        )
        if load and self.device.type == "cpu" and load[0] > 0.5 * (env.get("cpu_affinity") or 1) + 0.5:
            self.notes.append("the machine was busy while measuring: absolute img/s are low and noisy; ratios are paired per round")

        pool_needed = any(s in chosen for s in ("model", "components", "data"))
        if pool_needed:
            self._guard("model", "model and component pool", lambda: self.section_pool(
                timm_compare="model" in chosen, components=self.components if "components" in chosen else []
            ))
        if "framework" in chosen:
            self._guard("framework", "Lightning vs plain loop", self.section_framework)
        if "data" in chosen:
            self._guard("data", "data pipeline", self.section_data)
        if "gpu" in chosen:
            self._guard("gpu", "bf16 / compile / SDPA / MFU", self.section_gpu)
        if ddp:
            self._guard("ddp", f"DDP on {ddp} devices", lambda: self.section_ddp(int(ddp)))

        self.results["environment"]["load_average_end"] = load_average()
        self.results["elapsed_s"] = round(time.perf_counter() - started, 1)
        self.results["rows"] = [row.as_dict() for row in self.rows]
        self.results["notes"] = list(self.notes)
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
        import lightning as L
        from lightning.pytorch.callbacks import Callback
        from lightning.pytorch.loggers import CSVLogger

        from vit_ablate.training.callbacks import DivergenceCallback, EpochRecorder, EpochSeeding
        from vit_ablate.training.module import SCHEDULES, ViTModule

        cfg = self.cfg
        device = self.device
        warmup = max(self.warmup, 2)
        total = warmup + self.steps
        torch.manual_seed(self.seed)
        lit = ViTModule(cfg)
        plain = ViTModule(cfg)
        plain.load_state_dict(lit.state_dict())
        images, labels = self._inputs(self.spec, self.batch)
        loader = _FixedBatches(images, labels, total)
        precision = self.precision
        plain.to(device, precision.param_dtype).train()
        plain_images = images.to(precision.param_dtype)

        class StepWindow(Callback):
            """Wall time from the end of batch ``warmup - 1`` to the end of batch ``warmup + steps - 1``."""

            def __init__(self):
                self.t0 = self.t1 = None

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if batch_idx == warmup - 1:
                    synchronize(device)
                    self.t0 = time.perf_counter()
                elif batch_idx == total - 1:
                    synchronize(device)
                    self.t1 = time.perf_counter()

        accelerator = "cuda" if device.type == "cuda" else "cpu"
        devices = [device.index or 0] if device.type == "cuda" else 1

        def lightning_round() -> float:
            window = StepWindow()
            with tempfile.TemporaryDirectory(prefix="vit-ablate-bench-") as tmp, _quiet_lightning():
                loggers = []
                if cfg.logging.csv:
                    loggers.append(CSVLogger(save_dir=tmp, name="logs", version=""))
                if cfg.logging.tensorboard:
                    try:
                        from lightning.pytorch.loggers import TensorBoardLogger

                        loggers.append(TensorBoardLogger(save_dir=tmp, name="tensorboard", version=""))
                    except Exception:  # tensorboard not installed: the run would fail the same way
                        pass
                trainer = L.Trainer(
                    default_root_dir=tmp,
                    max_epochs=1,
                    max_steps=total,
                    accelerator=accelerator,
                    devices=devices,
                    precision=cfg.trainer.precision,
                    gradient_clip_val=cfg.optim.grad_clip,
                    gradient_clip_algorithm="norm",
                    accumulate_grad_batches=1,
                    deterministic=cfg.trainer.deterministic,
                    limit_val_batches=0,
                    log_every_n_steps=cfg.trainer.log_every_n_steps,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    num_sanity_val_steps=0,
                    use_distributed_sampler=False,
                    logger=loggers or False,
                    # EpochRecorder is a Checkpoint, so Lightning adds no ModelCheckpoint (which only acts at
                    # epoch ends, outside the timed window, in real runs)
                    callbacks=[EpochSeeding(cfg.seed), DivergenceCallback(), EpochRecorder(Path(tmp) / "metrics.csv"), window],
                )
                trainer.fit(lit, train_dataloaders=loader)
            if window.t0 is None or window.t1 is None:
                raise RuntimeError(f"Lightning ran {trainer.global_step} of {total} steps; the timing window was not reached")
            return window.t1 - window.t0

        optim = cfg.optim
        sched_warmup = optim.warmup_steps
        if sched_warmup == 0 and optim.warmup_epochs > 0:
            sched_warmup = int(math.ceil(optim.warmup_epochs * total))
        sched_warmup = min(sched_warmup, total)
        clip = cfg.optim.grad_clip
        smoothing = cfg.augment.label_smoothing

        def plain_round() -> float:
            optimizer = make_optimizer(plain.model, cfg)
            scheduler = SCHEDULES.get(optim.schedule)(optimizer, max(1, total - sched_warmup), sched_warmup, optim.min_lr)
            scaler = torch.amp.GradScaler(device.type) if precision.grad_scaler else None
            params = [p for group in optimizer.param_groups for p in group["params"]]
            t0 = None
            for i, (x, y) in enumerate(loader):
                if i == warmup:
                    synchronize(device)
                    t0 = time.perf_counter()
                x = x.to(precision.param_dtype) if x.dtype != precision.param_dtype else x
                with precision.autocast(device):
                    if plain.mixup is not None:
                        x, targets = plain.mixup(x, y)
                        loss = plain.soft_loss(plain(x), targets)
                    else:
                        loss = F.cross_entropy(plain(x), y, label_smoothing=smoothing)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    if clip:
                        scaler.unscale_(optimizer)
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    if clip:
                        torch.nn.utils.clip_grad_norm_(params, clip)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step_update(num_updates=i + 1)
                if plain.ema is not None:
                    plain.ema.update(plain.model, step=i + 1)
            synchronize(device)
            return time.perf_counter() - t0

        runs = {"lightning": Measured("lightning"), "plain": Measured("plain")}
        rounds = {"lightning": lightning_round, "plain": plain_round}
        self.log(f"framework: {self.rounds} rounds of {warmup} + {self.steps} steps, Lightning Trainer vs plain loop")
        for r in range(self.rounds):
            order = ["lightning", "plain"] if r % 2 == 0 else ["plain", "lightning"]
            for name in order:
                seconds = rounds[name]()
                runs[name].seconds.append(seconds)
                runs[name].img_s.append(self.steps * self.batch / seconds)
            self.log(f"framework round {r + 1}/{self.rounds}: Lightning {runs['lightning'].img_s[-1]:.1f}, plain {runs['plain'].img_s[-1]:.1f} img/s")
        pair = paired_ratio(runs["lightning"], runs["plain"])
        lm, pm = runs["lightning"], runs["plain"]
        self.results["framework"] = {
            "lightning_img_s": lm.median, "plain_img_s": pm.median, "ratio": pair["ratio"], "ratio_rounds": pair["rounds"],
            "tax": 1 / pair["ratio"] - 1 if pair["ratio"] else None,
            "lightning_img_s_rounds": lm.img_s, "plain_img_s_rounds": pm.img_s,
            "lightning_seconds_rounds": lm.seconds, "plain_seconds_rounds": pm.seconds,
            "warmup_steps": warmup, "grad_clip": clip, "log_every_n_steps": int(cfg.trainer.log_every_n_steps),
            "loggers": [n for n, on in (("csv", cfg.logging.csv), ("tensorboard", cfg.logging.tensorboard)) if on],
            "callbacks": ["EpochSeeding", "DivergenceCallback", "EpochRecorder"],
        }
        if cfg.logging.wandb:
            self.notes.append("framework: W&B logging is left out of the benchmark (it would create a W&B run)")
        self.rows.append(
            Row("framework", "Lightning Trainer.fit vs plain PyTorch loop", lm.median, pm.median, pair["ratio"],
                TARGETS["framework"], pair["low"], pair["high"])
        )

    # ------------------------------------------------------------------------------------ data
    def _attach(self, datamodule) -> None:
        """What a data module reads from its trainer (world size, rank, device), without a Trainer."""
        datamodule.trainer = SimpleNamespace(
            world_size=1, global_rank=0, strategy=SimpleNamespace(root_device=self.device)
        )
        datamodule.per_device_batch_size = self.batch

    def _loader(self, cfg: DictConfig):
        """(label, loader, stand-in reason or None) for ``cfg.data``: the real training loader, or a
        stand-in of the same shape when the dataset cannot be loaded (e.g. CIFAR not on disk)."""
        from vit_ablate.data import build_datamodule

        datamodule = None
        try:
            datamodule = build_datamodule(cfg)
            self._attach(datamodule)
            return cfg.data.name, datamodule.train_dataloader(), None
        except (FileNotFoundError, OSError, RuntimeError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        standin = _standin(cfg, datamodule, self.spec, self.batch, self.steps)
        self._attach(standin)
        return f"{cfg.data.name} (stand-in)", standin.train_dataloader(), reason

    def _time_loader(self, loader) -> Measured:
        batches = max(self.steps, 20)
        available = len(loader) - 1
        if available < 1:
            raise RuntimeError(f"the training loader yields only {len(loader)} batch(es) of {self.batch}")
        batches = min(batches, available)
        measured = Measured("data")
        for _ in range(self.rounds):
            iterator = iter(loader)
            next(iterator)  # first batch: worker start-up, device copies
            count = images_seen = 0
            with StepTimer(self.device) as timer:
                for images, labels in iterator:
                    images = images.to(self.device, non_blocking=True)
                    labels = labels.to(self.device, non_blocking=True)
                    images_seen += images.shape[0]
                    count += 1
                    if count >= batches:
                        break
            del iterator
            measured.seconds.append(timer.seconds)
            measured.img_s.append(images_seen / timer.seconds)
        return measured

    def section_data(self) -> None:
        consumption = self.model_img_s
        cfgs = [self.cfg]
        img = self.spec.img_size
        if self.cfg.data.name != "synthetic" and img % 4 == 0 and img // 4 >= 2:
            bytes_per_image = 3 * img * img
            synthetic = OmegaConf.merge(
                self.cfg,
                {"data": {"name": "synthetic", "img_size": None, "synthetic": {
                    "cell": img // 4, "grid": 4,
                    "num_train": int(min(self.cfg.data.synthetic.num_train, max(4 * self.batch, STANDIN_BYTES // bytes_per_image))),
                    "num_val": 8, "num_test": 8}}},
            )
            cfgs.append(synthetic)
        out: Dict[str, Any] = {"model_img_s": consumption, "pipelines": {}}
        for cfg in cfgs:
            label, loader, reason = self._loader(cfg)
            if reason:
                self.notes.append(
                    f"data: {cfg.data.name} could not be loaded ({reason}); measured a STAND-IN: random uint8 images "
                    f"of the same shape through the same {type(loader).__name__} path and augmentation"
                )
            self.log(f"data: timing {label} ({type(loader).__name__})")
            measured = self._time_loader(loader)
            ratio = measured.median / consumption if consumption else None
            out["pipelines"][label] = {
                "img_s": measured.median, "img_s_rounds": measured.img_s, "loader": type(loader).__name__,
                "stand_in": reason is not None, "stand_in_reason": reason, "ratio_to_model": ratio,
                "augment": {k: v for k, v in to_container(cfg)["augment"].items()},
            }
            what = f"{label} train loader (incl. augmentation) vs model"
            self.rows.append(Row("data", what, measured.median, consumption, ratio, TARGETS["data"]))
        self.results["data"] = out

    # ------------------------------------------------------------------------------------ gpu
    def _gpu_measure(self, model_cfg: Dict[str, Any], batch: int, precision_name: str, compile_model: bool) -> Dict[str, Any]:
        """img/s, peak memory and MFU of one configuration, measured on its own (sequentially: a GPU
        is not shared, and peak memory must be the configuration's own)."""
        from vit_ablate.model import resolve_spec

        device = self.device
        spec = resolve_spec(model_cfg)
        precision = precision_of(precision_name)
        cuda = device.type == "cuda"
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            before = torch.cuda.memory_allocated(device)
        images, labels = self._inputs(spec, batch, precision.param_dtype)
        model = self._build(model_cfg)
        step = self._prepare(model, images, labels, precision=precision, compile_model=compile_model)
        with StepTimer(device) as first:
            loss0 = float(step())
        for _ in range(max(self.warmup, 3 if compile_model else 1) - 1):
            step()
        measured = Measured(precision_name)
        for _ in range(self.rounds):
            with StepTimer(device) as timer:
                for _ in range(self.steps):
                    step()
            measured.seconds.append(timer.seconds)
            measured.img_s.append(self.steps * batch / timer.seconds)
        peak_bytes = torch.cuda.max_memory_allocated(device) - before if cuda else None
        del step, model
        if cuda:
            torch.cuda.empty_cache()
        flops_img = vit_flops(spec, training=True)
        peak_flops = self._peak()[0]
        return {
            "img_s": measured.median, "img_s_rounds": measured.img_s, "batch": batch, "precision": precision_name,
            "compile": compile_model, "first_step_s": first.seconds, "loss_step0": loss0,
            "peak_memory_bytes": peak_bytes, "peak_memory_gib": peak_bytes / 2**30 if peak_bytes is not None else None,
            "train_flops_per_image": flops_img, "achieved_flop_s": measured.median * flops_img,
            "mfu": measured.median * flops_img / peak_flops if peak_flops else None,
        }

    def _peak(self) -> Tuple[Optional[float], str]:
        name = device_name(self.device) if self.device.type == "cuda" else None
        return device_peak_flops(name, self.peak_tflops)

    def section_gpu(self) -> None:
        if self.device.type != "cuda" and not self.gpu_on_cpu:
            self.rows.append(Row("gpu", "bf16 / torch.compile / SDPA / MFU", skipped="no CUDA device: this section runs on a GPU only"))
            self.results["gpu"] = {"skipped": "no CUDA device"}
            return
        peak, source = self._peak()
        out: Dict[str, Any] = {"device_name": device_name(self.device), "peak_flops": peak, "peak_source": source, "configs": {}}
        self.results["gpu"] = out
        if peak is None:
            self.notes.append(f"gpu: no peak FLOP/s known for {out['device_name']!r}; set VIT_ABLATE_BENCH_PEAK_TFLOPS for MFU")
        configs = [("fp32 eager", "32-true", False), ("bf16-mixed eager", "bf16-mixed", False)]
        if self.gpu_compile:
            configs.append(("bf16-mixed + torch.compile", "bf16-mixed", True))
        fp32 = None
        for label, precision_name, compile_model in configs:
            self.log(f"gpu: {label}")
            try:
                result = self._gpu_measure(self.model_cfg, self.batch, precision_name, compile_model)
            except Exception as exc:  # e.g. a compiler failure: reported on its row
                message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                out["configs"][label] = {"error": message}
                self.rows.append(Row("gpu", label, error=message))
                continue
            out["configs"][label] = result
            if fp32 is None:
                fp32 = result["img_s"]
            extra = []
            if result["mfu"] is not None:
                extra.append(f"MFU {result['mfu']:.1%}")
            if result["peak_memory_gib"] is not None:
                extra.append(f"peak {result['peak_memory_gib']:.2f} GiB")
            what = f"{label}" + (f" ({', '.join(extra)})" if extra else "")
            if label == "fp32 eager":
                self.rows.append(Row("gpu", what, result["img_s"]))
            else:
                self.rows.append(Row("gpu", what + " vs fp32 eager", result["img_s"], fp32, result["img_s"] / fp32 if fp32 else None))
        self._guard("gpu", "SDPA kernels", lambda: self._sdpa_report(out))
        self._guard("gpu", "ViT-B/16 MFU", lambda: self._mfu_reference(out))

    def _sdpa_report(self, out: Dict[str, Any]) -> None:
        """Which SDPA kernels the configured model can run (each backend alone), and which one it uses."""
        from torch.nn.attention import SDPBackend, sdpa_kernel

        precision = precision_of("bf16-mixed")  # the fused kernels need half precision
        images, labels = self._inputs(self.spec, self.batch)
        model = self._build(self.model_cfg).to(self.device).train()
        optimizer = make_optimizer(model, self.cfg)
        step = make_train_step(model, optimizer, images, labels, precision, self.device)
        backends = {
            "flash": SDPBackend.FLASH_ATTENTION,
            "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
            "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
            "math": SDPBackend.MATH,
        }
        report: Dict[str, Any] = {}
        for name, backend in backends.items():
            if backend is None:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    with sdpa_kernel([backend]):
                        step()
                    synchronize(self.device)
                    report[name] = {"ok": True}
                except RuntimeError as exc:
                    reasons = [str(w.message).splitlines()[0][:200] for w in caught]
                    report[name] = {"ok": False, "error": str(exc).splitlines()[0][:200], "reasons": reasons[:4]}
                finally:
                    optimizer.zero_grad(set_to_none=True)
        used = sdpa_kernels_used(step, self.device)
        out["sdpa"] = {"backends": report, "default_uses": used}
        flash = report.get("flash", {}).get("ok")
        efficient = report.get("mem_efficient", {}).get("ok")
        what = (
            f"SDPA bf16: default → {', '.join(used) or '?'}; flash {'ok' if flash else 'NO'}, "
            f"mem-efficient {'ok' if efficient else 'NO'}"
        )
        self.rows.append(Row("gpu", what))
        del step, model, optimizer

    def _mfu_reference(self, out: Dict[str, Any]) -> None:
        """MFU of the issue's reference model (ViT-B/16 at 224), bf16 and compiled when compile works."""
        from vit_ablate.model import resolve_spec

        model_cfg = dict(self.mfu_reference)  # the paper-default model, nothing of the configured run
        spec = resolve_spec(model_cfg)
        compiled_ok = self.gpu_compile and "error" not in out["configs"].get("bf16-mixed + torch.compile", {"error": 1})
        label = f"ViT-{spec.variant}@{spec.img_size} bf16-mixed{' + compile' if compiled_ok else ''}"
        batch = self.mfu_batch or 256
        result = None
        while batch >= 1:
            self.log(f"gpu: {label} at batch {batch}")
            try:
                result = self._gpu_measure(model_cfg, batch, "bf16-mixed", compiled_ok)
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                batch //= 2
        if result is None:
            raise RuntimeError(f"{label}: out of memory even at batch 1")
        out["mfu_reference"] = {"model": label, **result}
        peak = out["peak_flops"]
        ideal = peak / result["train_flops_per_image"] if peak else None
        extra = f", peak {result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else ""
        self.rows.append(
            Row("gpu", f"{label} batch {batch}: MFU = img/s ÷ img/s at peak{extra}", result["img_s"], ideal,
                result["mfu"], TARGETS["gpu_mfu"])
        )

    # ------------------------------------------------------------------------------------ ddp
    def section_ddp(self, world: int) -> None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        what = f"DDP {world} GPUs vs {world} × 1 GPU (weak scaling)"
        if self.device.type != "cuda" or count < world:
            reason = f"{world} CUDA devices requested, {count} available"
            self.rows.append(Row("ddp", what, skipped=reason))
            self.results["ddp"] = {"skipped": reason, "requested": world, "available": count}
            return
        one = self._spawn_ddp(1)
        many = self._spawn_ddp(world)
        ideal = world * one["img_s"]
        efficiency = many["img_s"] / ideal
        self.results["ddp"] = {"world_size": world, "single": one, "multi": many, "efficiency": efficiency,
                               "per_device_batch": self.batch, "ddp_config": to_container(self.cfg)["trainer"]["ddp"]}
        self.rows.append(Row("ddp", f"{what}, batch {self.batch}/GPU", many["img_s"], ideal, efficiency))

    def _spawn_ddp(self, world: int) -> Dict[str, Any]:
        import torch.multiprocessing as mp

        with tempfile.TemporaryDirectory(prefix="vit-ablate-ddp-") as tmp:
            out = os.path.join(tmp, "result.json")
            self.log(f"ddp: {world} process(es)")
            mp.start_processes(
                _ddp_worker,
                args=(world, _free_port(), to_container(self.cfg), self.steps, self.warmup, self.rounds, self.batch, out),
                nprocs=world,
                join=True,
                start_method="spawn",
            )
            with open(out) as handle:
                return json.load(handle)


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: Dict[str, Any], steps: int, warmup: int, rounds: int,
                batch: int, out_path: str) -> None:
    """One DDP rank: the configured model under DistributedDataParallel (the run's DDP knobs), a fixed
    per-device batch, ``rounds`` timed blocks of ``steps`` steps; rank 0 writes the slowest rank's time."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vit_ablate.config import from_container
    from vit_ablate.model import build_model

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = from_container(cfg_dict)
        precision = precision_of(cfg.trainer.precision)
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model).to(device, precision.param_dtype).train()
        optimizer = make_optimizer(model, cfg)
        knobs = cfg.trainer.ddp
        wrapped = DistributedDataParallel(
            model, device_ids=[rank], gradient_as_bucket_view=knobs.gradient_as_bucket_view,
            bucket_cap_mb=knobs.bucket_cap_mb, static_graph=knobs.static_graph,
            find_unused_parameters=knobs.find_unused_parameters,
        ) if world > 1 else model
        generator = torch.Generator().manual_seed(int(cfg.seed) + rank)
        spec = model.spec
        images = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator).to(device, precision.param_dtype)
        labels = torch.randint(0, spec.num_classes, (batch,), generator=generator).to(device)
        step = make_train_step(wrapped, optimizer, images, labels, precision, device)
        for _ in range(warmup):
            step()
        seconds = []
        for _ in range(rounds):
            torch.cuda.synchronize(device)
            if world > 1:
                dist.barrier()
            with StepTimer(device) as timer:
                for _ in range(steps):
                    step()
            slowest = torch.tensor([timer.seconds], device=device)
            if world > 1:
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            seconds.append(float(slowest))
        if rank == 0:
            img_s = [world * batch * steps / s for s in seconds]
            with open(out_path, "w") as handle:
                json.dump({"world_size": world, "img_s": statistics.median(img_s), "img_s_rounds": img_s,
                           "seconds_rounds": seconds, "per_device_batch": batch}, handle)
    finally:
        dist.destroy_process_group()


def sdpa_kernels_used(fn: Callable[[], Any], device: torch.device) -> List[str]:
    """The SDPA implementations one call of ``fn`` dispatches to, read from the aten ops it runs
    (the mechanism FlopCounterMode uses): flash, mem_efficient, cudnn, cpu_fused (the CPU flash
    kernel), or math when no fused attention op ran."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: List[str] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if "attention" in name and name not in seen:
                seen.append(name)
            return func(*args, **(kwargs or {}))

    with Recorder():
        fn()
    synchronize(device)
    kinds: List[str] = []
    for name in seen:
        if "backward" in name:
            continue
        if name.endswith("_for_cpu"):
            kind = "cpu_fused"
        elif "flash" in name:
            kind = "flash"
        elif "efficient" in name:
            kind = "mem_efficient"
        elif "cudnn" in name:
            kind = "cudnn"
        elif "math" in name:
            kind = "math"
        else:
            continue
        if kind not in kinds:
            kinds.append(kind)
    # the math path is composite: it reaches dispatch as bmm/softmax, not as an attention op
    return kinds or ["math"]


def _standin(cfg: DictConfig, datamodule, spec, batch: int, steps: int):
    """A data module of the same shape as ``cfg.data`` (classes, stored image size, output size,
    normalisation, augmentation, loader path) whose splits are random uint8 images."""
    from vit_ablate.data.base import ImageDataModule, Split
    from vit_ablate.data.device_loader import derive_seed

    like = datamodule
    num_classes = getattr(like, "num_classes", None) or spec.num_classes
    img_size = getattr(like, "img_size", None) or spec.img_size
    native = getattr(like, "native_size", None) or img_size
    in_chans = getattr(like, "in_chans", None) or spec.in_chans
    mean = tuple(getattr(like, "mean", None) or (0.5,) * in_chans)
    std = tuple(getattr(like, "std", None) or (0.5,) * in_chans)
    per_image = in_chans * native * native
    num_train = int(min(50_000, max(batch * (max(steps, 20) + 2), STANDIN_BYTES // per_image)))
    if cfg.data.train_subset:
        num_train = max(min(num_train, int(cfg.data.train_subset)), 2 * batch)
    seed = int(cfg.seed)

    class StandInData(ImageDataModule):
        def _load_split(self, name: str) -> Split:
            generator = torch.Generator().manual_seed(derive_seed("bench-stand-in", seed, name))
            n = num_train if name == "train" else min(num_train, 1024)
            images = torch.randint(0, 256, (n, in_chans, native, native), dtype=torch.uint8, generator=generator)
            labels = torch.randint(0, num_classes, (n,), generator=generator)
            return Split(labels, images=images)

    module = StandInData(cfg)
    module.num_classes, module.img_size, module.native_size, module.in_chans = num_classes, img_size, native, in_chans
    module.mean, module.std = mean, std
    return module
