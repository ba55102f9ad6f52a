"""One training step of a ViT on one GPU (AdamW, gradient clipping, bf16-mixed): img/s and MFU of
eager, torch.compile'd and whole-step-graphed variants, the full traceback of any that fails, and
optionally a profile of where one variant's GPU time goes.

    python3 results/bench/gpu_whole_step/vit_b16_probe.py [--batch 256] [--steps 10] [--only VARIANTS]

VARIANTS is a comma-separated list of ``[MODEL:]TOKENS[@BATCH]``. MODEL is one of MODELS below
(default b16: ViT-B/16 at 224, the model the MFU target is stated for). TOKENS joined by ``+``:
  eager | compile | graph (the whole step as one CUDA graph, training/whole_step.py)
  fused      AdamW's fused kernel
  ro         torch.compile mode="reduce-overhead" (CUDA-graph trees; forward and backward only)
  autotune   torch.compile mode="max-autotune-no-cudagraphs" (Inductor benchmarks GEMM kernels)
  cudnn      SDPA restricted to cuDNN's attention kernel; flash: to FlashAttention-2
  static     torch.compile(dynamic=False): no recompilation with symbolic shapes
  conv       the patch embedding as the stride-P conv (timm's), not the reshape and matmul of stems.py
  gather     the relative position table read by indexing (table[index]), not index_select
  explicit   attention as softmax(q·kᵀ·scale + bias)·v in separate operations (the CPU's path for a
             learned bias, and the one that records maps), not SDPA
  keep       no torch._dynamo.reset() after this variant (the next compiles on top of its state)
  profile    after timing, 3 more steps under torch.profiler: GPU time by kernel category (GEMM,
             attention, Triton-fused, optimizer/clip, other) and the 25 heaviest kernels
e.g. ``b16:compile+fused@512,ti4rel:compile+graph@128``.

Each variant gets a fresh model with the same seed; 3 warm-up steps, then ``steps`` timed with CUDA
events. MFU = img/s × training FLOPs per image (vit_ablate.bench.flops) ÷ the device's bf16 peak.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import time
import traceback
from collections import defaultdict

import torch
import torch.nn.functional as F

from vit_ablate.bench.flops import count_model_flops, device_peak_flops
from vit_ablate.bench.timing import timed
from vit_ablate.model import build_model, resolve_spec
from vit_ablate.training.whole_step import WholeTrainStep

VARIANTS = ("eager", "compile", "graph", "compile+graph")
_TI4 = {"variant": "Ti/4", "img_size": 32, "num_classes": 10, "drop_path": 0.1}  # experiments/cifar10_vit_ti4.yaml
MODELS = {
    "b16": {"variant": "B/16", "img_size": 224, "num_classes": 1000},
    "ti4": _TI4,
    "ti4rel": {**_TI4, "pos_embed": "relative"},
    "tiny": {"variant": "Ti/16", "img_size": 32, "num_classes": 10},  # --dry-run's model on the CPU
}
TOKENS = {"eager", "compile", "graph", "fused", "ro", "autotune", "cudnn", "flash", "static", "conv", "gather", "explicit", "keep", "profile"}


def split(variant: str):
    """``[MODEL:]TOKENS[@BATCH]`` → (model or "", set of tokens, batch or "")."""
    model, _, rest = variant.rpartition(":")
    rest, _, at = rest.partition("@")
    return model, set(rest.split("+")), at


def parse(variant: str, batch: int):
    model, tokens, at = split(variant)
    unknown = tokens - TOKENS
    if unknown or (model and model not in MODELS):
        raise ValueError(f"{variant!r}: unknown {sorted(unknown) or model!r}; tokens {sorted(TOKENS)}, models {sorted(MODELS)}")
    return model or "b16", tokens, int(at) if at else batch


@contextlib.contextmanager
def attention_backend(tokens):
    if not ({"cudnn", "flash"} & tokens):
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION if "cudnn" in tokens else SDPBackend.FLASH_ATTENTION]):
        yield


@contextlib.contextmanager
def earlier_forms(tokens):
    """The forms stems.py and pos_embed.py used before, for an A/B in one process."""
    from vit_ablate.model.pos_embed import RelativeLogits
    from vit_ablate.model.stems import PatchStem

    saved = PatchStem.forward, RelativeLogits.forward
    if "conv" in tokens:
        PatchStem.forward = lambda self, images: self.proj(images).flatten(2).transpose(1, 2)
    if "gather" in tokens:
        RelativeLogits.forward = lambda self, q, k, scale: (q, k, torch.einsum("bhid,ijd->bhij", q * scale, self.table[self.index].to(q.dtype)))
    try:
        yield
    finally:
        PatchStem.forward, RelativeLogits.forward = saved


def build(model_name, tokens, batch, device):
    torch.manual_seed(0)
    model_cfg = MODELS[model_name]
    model = build_model(dict(model_cfg)).to(device).train()
    spec = resolve_spec(dict(model_cfg))
    if "explicit" in tokens:
        from vit_ablate.model.attention import Attention

        for module in model.modules():
            if isinstance(module, Attention):
                module.record_attention = True  # its explicit path; the maps it keeps are a small extra
    if "compile" in tokens:
        mode = "reduce-overhead" if "ro" in tokens else "max-autotune-no-cudagraphs" if "autotune" in tokens else None
        forward = torch.compile(model, mode=mode, dynamic=False if "static" in tokens else None)
    else:
        forward = model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True if "fused" in tokens else None)
    whole = WholeTrainStep(forward, model, F.cross_entropy, optimizer, grad_clip=1.0)
    images = torch.randn(batch, 3, spec.img_size, spec.img_size, device=device)
    labels = torch.randint(0, spec.num_classes, (batch,), device=device)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            if "graph" in tokens:
                return whole(images, labels)
            return whole._eager(images, labels)

    return spec, step


def measure(variant: str, batch: int, steps: int, peak: float, device: torch.device) -> None:
    model_name, tokens, batch = parse(variant, batch)
    cuda = device.type == "cuda"
    with attention_backend(tokens), earlier_forms(tokens):
        spec, step = build(model_name, tokens, batch, device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(3):
            step()
        if cuda:
            torch.cuda.synchronize()
        warm = time.perf_counter() - started
        losses = []
        seconds = timed(device, lambda: losses.append(step()), steps)
        loss = losses[-1]
        if "profile" in tokens:
            print_profile(variant, step, device)
    img_s = steps * batch / seconds
    flops = count_model_flops(MODELS[model_name], training=True)
    print(f"{variant:24s} batch {batch}: {img_s:8.1f} img/s, {seconds / steps * 1e3:7.2f} ms/step, "
          f"MFU {img_s * flops / peak:.1%}, warm-up {warm:.1f} s, peak memory "
          f"{torch.cuda.max_memory_allocated() / 2**30 if cuda else float('nan'):.1f} GiB, loss {float(loss):.4f}", flush=True)


def category(name: str) -> str:
    low = name.lower()
    if any(s in low for s in ("flash", "fmha", "attention", "cudnn", "sdpa")):
        return "attention"
    if any(s in low for s in ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90_", "sm80_")):
        return "GEMM"
    if any(s in low for s in ("adam", "multi_tensor", "foreach", "norm_kernel")):
        return "optimizer/clip"
    if "triton" in low:
        return "Triton-fused"
    return "other"


def print_profile(variant: str, step, device: torch.device, steps: int = 3) -> None:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize() if device.type == "cuda" else None
    kernels = [e for e in prof.key_averages() if getattr(e, "device_type", None) is not None and str(e.device_type).endswith("CUDA")]
    if not kernels:  # a CPU dry run: no device kernels
        print(f"profile {variant}: no CUDA kernels recorded", flush=True)
        return
    total = sum(e.self_device_time_total for e in kernels)
    by_cat = defaultdict(float)
    for e in kernels:
        by_cat[category(e.key)] += e.self_device_time_total
    print(f"profile {variant}: {total / steps / 1e3:.2f} ms of GPU kernels per step", flush=True)
    for cat, us in sorted(by_cat.items(), key=lambda kv: -kv[1]):
        print(f"  {cat:16s} {us / steps / 1e3:8.2f} ms/step  {us / total:6.1%}")
    for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:25]:
        print(f"  {e.self_device_time_total / steps / 1e3:8.3f} ms  x{e.count // steps:<4d} [{category(e.key)}] {e.key[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--only", default=",".join(VARIANTS))
    parser.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU: checks this script, measures nothing")
    args = parser.parse_args()
    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.dry_run:
        MODELS["b16"] = MODELS["ti4"] = MODELS["tiny"]
        MODELS["ti4rel"] = {**MODELS["tiny"], "pos_embed": "relative"}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak, source = device_peak_flops(name, 1.0 if args.dry_run else None)
    print(f"{name}; peak {peak / 1e12:.0f} TFLOP/s ({source}); b16: {count_model_flops(MODELS['b16'], training=True) / 1e9:.1f} GFLOP per training image; "
          f"torch {torch.__version__}", flush=True)
    for variant in args.only.split(","):
        try:
            measure(variant, args.batch, args.steps, peak, device)
        except Exception:  # the point of the probe: what fails, and where
            print(f"{variant}: FAILED\n{traceback.format_exc()[-6000:]}", flush=True)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if "keep" not in split(variant)[1]:
            torch._dynamo.reset()


if __name__ == "__main__":
    main()
