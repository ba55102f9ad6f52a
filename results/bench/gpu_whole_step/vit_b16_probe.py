"""ViT-B/16 at 224, bf16-mixed, AdamW, batch 256 on one GPU: img/s and MFU of the eager step, the
torch.compile'd step (its full traceback when compilation fails) and the whole step as one CUDA graph.

    python3 results/bench/gpu_whole_step/vit_b16_probe.py [--batch 256] [--steps 10] [--only eager,compile,...]

A variant is eager, compile, graph or compile+graph, optionally with +fused (AdamW's fused kernel)
and @BATCH (another batch size), e.g. compile+fused@512.

Each variant gets a fresh model with the same seed; 3 warm-up steps, then ``steps`` timed with CUDA
events. MFU = img/s × training FLOPs per image (vit_ablate.bench.flops) ÷ the device's bf16 peak.
"""

from __future__ import annotations

import argparse
import gc
import time
import traceback

import torch
import torch.nn.functional as F

from vit_ablate.bench.env import device_name
from vit_ablate.bench.flops import device_peak_flops, vit_flops
from vit_ablate.bench.settings import MFU_REFERENCE
from vit_ablate.bench.timing import StepTimer
from vit_ablate.model import build_model, resolve_spec
from vit_ablate.training.whole_step import WholeTrainStep

VARIANTS = ("eager", "compile", "graph", "compile+graph")


def measure(variant: str, model_cfg: dict, batch: int, steps: int, peak: float, device: torch.device) -> None:
    if "@" in variant:
        variant, batch = variant.split("@")[0], int(variant.split("@")[1])
    torch.manual_seed(0)
    model = build_model(dict(model_cfg)).to(device).train()
    spec = resolve_spec(dict(model_cfg))
    forward = torch.compile(model) if "compile" in variant else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True if "fused" in variant else None)
    whole = WholeTrainStep(forward, model, F.cross_entropy, optimizer, grad_clip=1.0)
    images = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)
    labels = torch.randint(0, spec.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if "graph" in variant:
                return whole(images, labels)
            return whole._eager(images, labels)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(3):
        step()
    if cuda:
        torch.cuda.synchronize()
    warm = time.perf_counter() - started
    with StepTimer(device) as timer:
        for _ in range(steps):
            loss = step()
    img_s = steps * batch / timer.seconds
    flops = vit_flops(spec, training=True)
    print(f"{variant:14s} batch {batch}: {img_s:8.1f} img/s, {timer.seconds / steps * 1e3:7.1f} ms/step, "
          f"MFU {img_s * flops / peak:.1%}, warm-up {warm:.1f} s, peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan'):.1f} GiB, loss {float(loss):.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--dry-run", action="store_true", help="a tiny model on the CPU: checks this script, measures nothing")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    model_cfg = {"variant": "Ti/16", "img_size": 32, "num_classes": 10} if args.dry_run else MFU_REFERENCE
    name = device_name(device)
    peak, source = device_peak_flops(name, 1.0 if args.dry_run else None)
    spec = resolve_spec(dict(model_cfg))
    print(f"{name}; peak {peak / 1e12:.0f} TFLOP/s ({source}); {vit_flops(spec, training=True) / 1e9:.1f} GFLOP per training image; "
          f"torch {torch.__version__}", flush=True)
    for variant in args.only.split(","):
        try:
            measure(variant, model_cfg, args.batch, args.steps, peak, device)
        except Exception:  # the point of the probe: what fails, and where
            print(f"{variant}: FAILED\n{traceback.format_exc()[-6000:]}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()


if __name__ == "__main__":
    main()
