"""The ``gpu`` section (CUDA only) and the ``ddp`` section (DDP scaling on N devices).

gpu  fp32 and bf16 eager, the whole step as one CUDA graph and (unless --no-compile) torch.compile,
     each measured on its own (a GPU is not shared, and peak memory must be the configuration's
     own); the SDPA kernel the model's attention dispatches to; the MFU of ViT-B/16 at 224 (img/s ×
     training FLOPs per image from torch's FlopCounterMode ÷ the device's dense bf16 peak).
ddp  weak scaling: N DistributedDataParallel processes at the per-device batch vs N × one process.

On a CPU the gpu section is skipped (``gpu_on_cpu=True`` runs its code path, for the tests).
"""

from __future__ import annotations

import gc
import json
import os
import socket
import statistics
import tempfile
from typing import Any, Callable, Dict, List, Optional

import torch

from vit_ablate.bench.context import Bench, Row, guarded, model_train_step, random_inputs, seeded_model
from vit_ablate.bench.flops import count_model_flops, device_peak_flops
from vit_ablate.bench.timing import Precision, interleaved, make_optimizer, make_train_step, timed
from vit_ablate.config import to_container

__all__ = ["section_gpu", "section_ddp", "sdpa_kernels_used"]

# (label, precision, torch.compile mode, the whole step as one CUDA graph: the remedy when a small
# ViT's step is bound by kernel launches)
EAGER = (("fp32 eager", "32-true", False, False), ("bf16-mixed eager", "bf16-mixed", False, False),
         ("bf16-mixed whole step as one CUDA graph", "bf16-mixed", False, True))
COMPILED = (("bf16-mixed + torch.compile", "bf16-mixed", True, False),
            ("bf16-mixed + torch.compile reduce-overhead", "bf16-mixed", "reduce-overhead", False),
            ("bf16-mixed + torch.compile + whole-step CUDA graph", "bf16-mixed", True, True))


def section_gpu(bench: Bench) -> None:
    if bench.device.type != "cuda" and not bench.gpu_on_cpu:
        bench.rows.append(Row("gpu", "bf16 / torch.compile / SDPA / MFU", note="skipped: no CUDA device"))
        bench.results["gpu"] = {"skipped": "no CUDA device"}
        return
    name = torch.cuda.get_device_name(bench.device) if bench.device.type == "cuda" else None
    peak, source = device_peak_flops(name, bench.peak_tflops)
    out: Dict[str, Any] = {"device_name": name, "peak_flops": peak, "peak_source": source, "configs": {}}
    bench.results["gpu"] = out
    if peak is None:
        bench.notes.append(f"gpu: no peak FLOP/s known for {name!r}; give --peak-tflops for MFU")

    def measure(label: str, precision: str, compile_model: Any, whole_graph: bool) -> None:
        bench.log(f"gpu: {label}")
        result = out["configs"][label] = _measure_alone(bench, bench.model_cfg, bench.batch, precision, compile_model, whole_graph, peak)
        fp32 = out["configs"]["fp32 eager"]["img_s"] if "fp32 eager" in out["configs"] else None
        extra = [f"MFU {result['mfu']:.1%}"] if result["mfu"] is not None else []
        extra += [f"peak {result['peak_memory_gib']:.2f} GiB"] if result["peak_memory_gib"] is not None else []
        what = label + (f" ({', '.join(extra)})" if extra else "") + ("" if label == "fp32 eager" else " vs fp32 eager")
        bench.rows.append(Row("gpu", what, result["img_s"], fp32, result["img_s"] / fp32 if fp32 else None))

    for config in EAGER + (COMPILED if bench.gpu_compile else ()):
        guarded(bench, "gpu", config[0], lambda: measure(*config))
    guarded(bench, "gpu", "SDPA kernel", lambda: _sdpa_row(bench, out))
    guarded(bench, "gpu", "MFU", lambda: _mfu_row(bench, out, peak))


def _measure_alone(bench: Bench, model_cfg: Dict[str, Any], batch: int, precision_name: str, compile_model: Any,
                   whole_graph: bool, peak: Optional[float]) -> Dict[str, Any]:
    """img/s, the first step's seconds (compilation, capture), peak memory and MFU of one configuration."""
    from vit_ablate.model import resolve_spec

    device, precision, cuda = bench.device, Precision(precision_name), bench.device.type == "cuda"
    if compile_model:
        torch._dynamo.reset()  # each configuration compiles on its own, not beside an earlier one's graphs
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    images, labels = random_inputs(bench, resolve_spec(model_cfg), batch, precision.param_dtype)
    step = model_train_step(bench, seeded_model(bench, model_cfg), images, labels, precision, compile_model, whole_graph)
    first = timed(device, step)
    measured = interleaved({precision_name: step}, images_per_step=batch, steps=bench.steps, rounds=bench.rounds,
                           warmup=max(bench.warmup, 2 if compile_model else 1), device=device, seed=bench.seed)[precision_name]
    peak_bytes = torch.cuda.max_memory_allocated(device) - before if cuda else None
    del step
    flops = count_model_flops(model_cfg, training=True)
    return {"img_s": measured.median, "img_s_rounds": measured.img_s, "batch": batch, "precision": precision_name,
            "compile": compile_model, "whole_graph": whole_graph, "first_step_s": first,
            "peak_memory_gib": peak_bytes / 2**30 if cuda else None, "train_flops_per_image": flops,
            "mfu": measured.median * flops / peak if peak else None}


def _sdpa_row(bench: Bench, out: Dict[str, Any]) -> None:
    images, labels = random_inputs(bench, bench.spec, bench.batch)
    model = seeded_model(bench, bench.model_cfg).to(bench.device).train()
    step = make_train_step(model, make_optimizer(model, bench.cfg), lambda: (images, labels), Precision("bf16-mixed"), bench.device)
    out["sdpa_default_uses"] = used = sdpa_kernels_used(step, bench.device)
    bench.rows.append(Row("gpu", f"SDPA kernel under bf16-mixed: {', '.join(used)}"))


def _mfu_row(bench: Bench, out: Dict[str, Any], peak: Optional[float]) -> None:
    """MFU of the reference model (ViT-B/16 at 224), bf16, compiled when compiling worked above; the
    batch is halved until it fits."""
    from vit_ablate.model import resolve_spec

    spec = resolve_spec(bench.mfu_reference)
    compiled = "bf16-mixed + torch.compile" in out["configs"]
    batch = bench.mfu_batch or 256
    while True:
        label = f"ViT-{spec.variant}@{spec.img_size} bf16-mixed" + (" + compile" if compiled else "")
        bench.log(f"gpu: {label} at batch {batch}")
        try:
            result = _measure_alone(bench, bench.mfu_reference, batch, "bf16-mixed", compiled, False, peak)
            break
        except torch.cuda.OutOfMemoryError:
            if batch == 1:
                raise
        except Exception as exc:  # a compiler failure: measure eagerly instead, and say so
            if not compiled:
                raise
            compiled = False
            bench.notes.append(f"gpu: torch.compile failed for the MFU model ({type(exc).__name__}: {exc}); measured eagerly")
            continue
        gc.collect()  # outside the except block, so that the failed attempt's tensors can go
        torch.cuda.empty_cache()
        batch //= 2
    out["mfu_reference"] = {"model": label, **result}
    ideal = peak / result["train_flops_per_image"] if peak else None
    bench.rows.append(Row("gpu", f"{label} batch {batch}: MFU = img/s ÷ img/s at the peak", result["img_s"], ideal, result["mfu"]))


def sdpa_kernels_used(fn: Callable[[], Any], device: torch.device) -> List[str]:
    """The SDPA implementations one call of ``fn`` dispatches to, read from the aten ops it runs:
    flash, mem_efficient, cudnn, cpu_fused (the CPU flash kernel), or math (a composite: it reaches
    dispatch as bmm and softmax, not as an attention op)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: List[str] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(func.overloadpacket.__name__)
            return func(*args, **(kwargs or {}))

    with Recorder():
        timed(device, fn)
    kinds: List[str] = []
    for name in (n for n in seen if "attention" in n and "backward" not in n):
        kind = next((k for part, k in (("_for_cpu", "cpu_fused"), ("flash", "flash"), ("efficient", "mem_efficient"),
                                       ("cudnn", "cudnn"), ("math", "math")) if part in name), None)
        if kind and kind not in kinds:
            kinds.append(kind)
    return kinds or ["math"]


def section_ddp(bench: Bench, world: int) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    what = f"DDP {world} GPUs vs {world} × 1 GPU (weak scaling)"
    if bench.device.type != "cuda" or count < world:
        reason = f"{world} CUDA devices requested, {count} available"
        bench.rows.append(Row("ddp", what, note=f"skipped: {reason}"))
        bench.results["ddp"] = {"skipped": reason}
        return
    one, many = _spawn_ddp(bench, 1), _spawn_ddp(bench, world)
    efficiency = many["img_s"] / (world * one["img_s"])
    bench.results["ddp"] = {"world_size": world, "single": one, "multi": many, "efficiency": efficiency,
                            "per_device_batch": bench.batch, "ddp_config": to_container(bench.cfg)["trainer"]["ddp"]}
    bench.rows.append(Row("ddp", f"{what}, batch {bench.batch}/GPU", many["img_s"], world * one["img_s"], efficiency))


def _spawn_ddp(bench: Bench, world: int) -> Dict[str, Any]:
    import torch.multiprocessing as mp

    with socket.socket() as sock:  # a free port for the process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="vit-ablate-ddp-") as tmp:
        out = os.path.join(tmp, "ddp.json")
        bench.log(f"ddp: {world} process(es)")
        mp.start_processes(_ddp_worker, args=(world, port, to_container(bench.cfg), bench.steps, bench.warmup, bench.rounds,
                                              bench.batch, out), nprocs=world, join=True, start_method="spawn")
        with open(out) as handle:
            return json.load(handle)


def _ddp_worker(rank: int, world: int, port: int, cfg_dict: Dict[str, Any], steps: int, warmup: int, rounds: int,
                batch: int, out_path: str) -> None:
    """One rank: the configured model under DDP (the run's DDP knobs), a fixed per-device batch,
    ``rounds`` timed blocks of ``steps`` steps; rank 0 writes the slowest rank's times."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from vit_ablate.config import from_container
    from vit_ablate.model import build_model

    torch.cuda.set_device(rank)
    device = torch.device("cuda", rank)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = from_container(cfg_dict)
        precision = Precision(str(cfg.trainer.precision))
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model).to(device, precision.param_dtype).train()
        optimizer = make_optimizer(model, cfg)
        wrapped = DistributedDataParallel(model, device_ids=[rank], **cfg.trainer.ddp) if world > 1 else model
        generator = torch.Generator().manual_seed(int(cfg.seed) + rank)
        spec = model.spec
        images = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size, generator=generator).to(device, precision.param_dtype)
        labels = torch.randint(0, spec.num_classes, (batch,), generator=generator).to(device)
        step = make_train_step(wrapped, optimizer, lambda: (images, labels), precision, device)
        for _ in range(warmup):
            step()
        seconds = []
        for _ in range(rounds):
            if world > 1:
                dist.barrier()
            slowest = torch.tensor([timed(device, step, steps)], device=device)
            if world > 1:
                dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
            seconds.append(float(slowest))
        if rank == 0:
            img_s = [world * batch * steps / s for s in seconds]
            with open(out_path, "w") as handle:
                json.dump({"world_size": world, "img_s": statistics.median(img_s), "img_s_rounds": img_s, "seconds_rounds": seconds}, handle)
    finally:
        dist.destroy_process_group()
