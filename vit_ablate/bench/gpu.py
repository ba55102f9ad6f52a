"""The ``gpu`` section (CUDA only: bf16 autocast, torch.compile, fused SDPA kernels, peak memory, MFU)
and the ``ddp`` section (scaling efficiency of DistributedDataParallel on N devices).

Written to run on an H100; on a CPU the gpu section is skipped (``gpu_on_cpu=True`` exercises its
code path in the tests) and the ddp section says how many devices exist.
"""

from __future__ import annotations

import gc
import json
import os
import socket
import statistics
import tempfile
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from vit_ablate.bench.context import BenchContext, BenchReport, guarded, model_train_step, random_inputs, seeded_model
from vit_ablate.bench.env import device_name
from vit_ablate.bench.flops import device_peak_flops, vit_flops
from vit_ablate.bench.settings import TARGETS
from vit_ablate.bench.table import Row
from vit_ablate.bench.timing import Measured, StepTimer, make_optimizer, make_train_step, precision_of, synchronize
from vit_ablate.config import to_container

__all__ = ["section_gpu", "section_ddp", "sdpa_kernels_used"]


# ---------------------------------------------------------------------------------------- gpu
def section_gpu(ctx: BenchContext, report: BenchReport) -> None:
    """fp32 and bf16 eager, then (``gpu_compile``) torch.compile and CUDA graphs, each measured on its
    own; then the SDPA kernels the model can use and the MFU of the target's reference model."""
    if ctx.device.type != "cuda" and not ctx.gpu_on_cpu:
        report.rows.append(Row("gpu", "bf16 / torch.compile / SDPA / MFU", skipped="no CUDA device: this section runs on a GPU only"))
        report.results["gpu"] = {"skipped": "no CUDA device"}
        return
    peak, source = _peak(ctx)
    out: Dict[str, Any] = {"device_name": device_name(ctx.device), "peak_flops": peak, "peak_source": source, "configs": {}}
    report.results["gpu"] = out
    if peak is None:
        report.notes.append(f"gpu: no peak FLOP/s known for {out['device_name']!r}; set VIT_ABLATE_BENCH_PEAK_TFLOPS for MFU")
    # (label, precision, torch.compile mode, whole step as one CUDA graph)
    configs = [("fp32 eager", "32-true", False, False), ("bf16-mixed eager", "bf16-mixed", False, False),
               # CUDA graphs: the remedy when the step is bound by kernel launches (a small ViT)
               ("bf16-mixed whole step as one CUDA graph", "bf16-mixed", False, True)]
    if ctx.gpu_compile:
        configs.append(("bf16-mixed + torch.compile", "bf16-mixed", True, False))
        configs.append(("bf16-mixed + torch.compile reduce-overhead", "bf16-mixed", "reduce-overhead", False))
        configs.append(("bf16-mixed + torch.compile + whole-step CUDA graph", "bf16-mixed", True, True))
    fp32 = None
    for label, precision_name, compile_model, whole_graph in configs:
        ctx.log(f"gpu: {label}")
        try:
            result = _measure_alone(ctx, ctx.model_cfg, ctx.batch, precision_name, compile_model, whole_graph)
        except Exception as exc:  # e.g. a compiler failure: reported on its row
            message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            out["configs"][label] = {"error": message}
            report.rows.append(Row("gpu", label, error=message))
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
            report.rows.append(Row("gpu", what, result["img_s"]))
        else:
            report.rows.append(Row("gpu", what + " vs fp32 eager", result["img_s"], fp32, result["img_s"] / fp32 if fp32 else None))
    guarded(ctx, report, "gpu", "SDPA kernels", lambda: _sdpa_report(ctx, report, out))
    guarded(ctx, report, "gpu", "ViT-B/16 MFU", lambda: _mfu_reference(ctx, report, out))


def _peak(ctx: BenchContext) -> Tuple[Optional[float], str]:
    name = device_name(ctx.device) if ctx.device.type == "cuda" else None
    return device_peak_flops(name, ctx.peak_tflops)


def _measure_alone(ctx: BenchContext, model_cfg: Dict[str, Any], batch: int, precision_name: str, compile_model: Any,
                   whole_graph: bool = False) -> Dict[str, Any]:
    """img/s, peak memory and MFU of one configuration, measured on its own (sequentially: a GPU
    is not shared, and peak memory must be the configuration's own)."""
    from vit_ablate.model import resolve_spec

    device = ctx.device
    spec = resolve_spec(model_cfg)
    precision = precision_of(precision_name)
    cuda = device.type == "cuda"
    if compile_model:
        torch._dynamo.reset()  # each configuration compiles on its own, not beside an earlier one's graphs
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    images, labels = random_inputs(ctx, spec, batch, precision.param_dtype)
    model = seeded_model(ctx, model_cfg)
    step = model_train_step(ctx, model, images, labels, precision=precision, compile_model=compile_model, whole_graph=whole_graph)
    with StepTimer(device) as first:
        loss0 = float(step())
    for _ in range(max(ctx.warmup, 3 if compile_model else 1) - 1):
        step()
    measured = Measured(precision_name)
    for _ in range(ctx.rounds):
        with StepTimer(device) as timer:
            for _ in range(ctx.steps):
                step()
        measured.seconds.append(timer.seconds)
        measured.img_s.append(ctx.steps * batch / timer.seconds)
    peak_bytes = torch.cuda.max_memory_allocated(device) - before if cuda else None
    del step, model
    if cuda:
        torch.cuda.empty_cache()
    flops_img = vit_flops(spec, training=True)
    peak_flops = _peak(ctx)[0]
    return {
        "img_s": measured.median, "img_s_rounds": measured.img_s, "batch": batch, "precision": precision_name,
        "compile": compile_model, "whole_graph": whole_graph, "first_step_s": first.seconds, "loss_step0": loss0,
        "peak_memory_bytes": peak_bytes, "peak_memory_gib": peak_bytes / 2**30 if peak_bytes is not None else None,
        "train_flops_per_image": flops_img, "achieved_flop_s": measured.median * flops_img,
        "mfu": measured.median * flops_img / peak_flops if peak_flops else None,
    }


def _sdpa_report(ctx: BenchContext, report: BenchReport, out: Dict[str, Any]) -> None:
    """Which SDPA kernels the configured model can run (each backend alone), and which one it uses."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    precision = precision_of("bf16-mixed")  # the fused kernels need half precision
    images, labels = random_inputs(ctx, ctx.spec, ctx.batch)
    model = seeded_model(ctx, ctx.model_cfg).to(ctx.device).train()
    optimizer = make_optimizer(model, ctx.cfg)
    step = make_train_step(model, optimizer, images, labels, precision, ctx.device)
    backends = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "mem_efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": getattr(SDPBackend, "CUDNN_ATTENTION", None),
        "math": SDPBackend.MATH,
    }
    backend_report: Dict[str, Any] = {}
    for name, backend in backends.items():
        if backend is None:
            continue
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                with sdpa_kernel([backend]):
                    step()
                synchronize(ctx.device)
                backend_report[name] = {"ok": True}
            except RuntimeError as exc:
                reasons = [str(w.message).splitlines()[0][:200] for w in caught]
                backend_report[name] = {"ok": False, "error": str(exc).splitlines()[0][:200], "reasons": reasons[:4]}
            finally:
                optimizer.zero_grad(set_to_none=True)
    used = sdpa_kernels_used(step, ctx.device)
    out["sdpa"] = {"backends": backend_report, "default_uses": used}
    flash = backend_report.get("flash", {}).get("ok")
    efficient = backend_report.get("mem_efficient", {}).get("ok")
    what = (
        f"SDPA bf16: default → {', '.join(used) or '?'}; flash {'ok' if flash else 'NO'}, "
        f"mem-efficient {'ok' if efficient else 'NO'}"
    )
    report.rows.append(Row("gpu", what))
    del step, model, optimizer


def _mfu_reference(ctx: BenchContext, report: BenchReport, out: Dict[str, Any]) -> None:
    """MFU of the target's reference model (ViT-B/16 at 224), bf16 and compiled when compile works."""
    from vit_ablate.model import resolve_spec

    model_cfg = dict(ctx.mfu_reference)  # the paper-default model, nothing of the configured run
    spec = resolve_spec(model_cfg)
    compiled_ok = ctx.gpu_compile and "error" not in out["configs"].get("bf16-mixed + torch.compile", {"error": 1})
    batch = ctx.mfu_batch or 256
    result = None
    while batch >= 1:
        label = f"ViT-{spec.variant}@{spec.img_size} bf16-mixed{' + compile' if compiled_ok else ''}"
        ctx.log(f"gpu: {label} at batch {batch}")
        try:
            result = _measure_alone(ctx, model_cfg, batch, "bf16-mixed", compiled_ok)
            break
        except torch.cuda.OutOfMemoryError:
            pass
        except Exception as exc:  # a compiler failure: measure eager instead, and say so
            if not compiled_ok:
                raise
            compiled_ok = False
            out["mfu_compile_error"] = "".join(traceback.format_exception(exc))[-6000:]
            report.notes.append(f"gpu: torch.compile failed for the MFU model ({type(exc).__name__}: {exc}); measured eager")
            continue
        # outside the except block, so that the failed attempt's tensors can be released
        gc.collect()
        torch.cuda.empty_cache()
        batch //= 2
    if result is None:
        raise RuntimeError(f"{label}: out of memory even at batch 1")
    out["mfu_reference"] = {"model": label, **result}
    peak = out["peak_flops"]
    ideal = peak / result["train_flops_per_image"] if peak else None
    extra = f", peak {result['peak_memory_gib']:.1f} GiB" if result["peak_memory_gib"] is not None else ""
    report.rows.append(
        Row("gpu", f"{label} batch {batch}: MFU = img/s ÷ img/s at peak{extra}", result["img_s"], ideal,
            result["mfu"], TARGETS["gpu_mfu"])
    )


# ---------------------------------------------------------------------------------------- ddp
def section_ddp(ctx: BenchContext, report: BenchReport, world: int) -> None:
    """Weak scaling: ``world`` DDP processes at the per-device batch vs ``world`` times one process."""
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    what = f"DDP {world} GPUs vs {world} × 1 GPU (weak scaling)"
    if ctx.device.type != "cuda" or count < world:
        reason = f"{world} CUDA devices requested, {count} available"
        report.rows.append(Row("ddp", what, skipped=reason))
        report.results["ddp"] = {"skipped": reason, "requested": world, "available": count}
        return
    one = _spawn_ddp(ctx, 1)
    many = _spawn_ddp(ctx, world)
    ideal = world * one["img_s"]
    efficiency = many["img_s"] / ideal
    report.results["ddp"] = {"world_size": world, "single": one, "multi": many, "efficiency": efficiency,
                             "per_device_batch": ctx.batch, "ddp_config": to_container(ctx.cfg)["trainer"]["ddp"]}
    report.rows.append(Row("ddp", f"{what}, batch {ctx.batch}/GPU", many["img_s"], ideal, efficiency))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _spawn_ddp(ctx: BenchContext, world: int) -> Dict[str, Any]:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="vit-ablate-ddp-") as tmp:
        out = os.path.join(tmp, "ddp_measurements.json")
        ctx.log(f"ddp: {world} process(es)")
        mp.start_processes(
            _ddp_worker,
            args=(world, _free_port(), to_container(ctx.cfg), ctx.steps, ctx.warmup, ctx.rounds, ctx.batch, out),
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
