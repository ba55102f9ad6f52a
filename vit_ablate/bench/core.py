"""The benchmark run: which sections, in what order, and the report they fill.

model       our model vs timm's VisionTransformer of the same shape with the same weights
            (forward + backward + optimizer step, same optimizer, same inputs, interleaved)
components  each ablation component's cost: img/s ratio vs our default pre/cls/1d/patch model
framework   a training step through ViTModule + Lightning's Trainer vs a plain PyTorch loop doing the
            same work (optimizer, schedule, grad clipping, loss), stepping in lockstep: the "framework tax"
data        the configured data module's training loader alone vs what the model consumes
gpu         (CUDA only) bf16 autocast, torch.compile, the fused SDPA kernels, peak memory, MFU
ddp         (``ddp=N``, CUDA only) DDP scaling efficiency on N devices

Each section is a function of the settings (``BenchContext``) and the report (``BenchReport``):
``pool.section_pool`` (model and components, one pool of candidates), ``framework.section_framework``,
``data.section_data``, ``gpu.section_gpu`` and ``gpu.section_ddp``. ``run_sections`` calls them in
that order, each guarded, and writes the JSON after each one. Every number of every section ends up
in ``report.results`` (the JSON file); ``report.rows`` is the table.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from vit_ablate.bench.context import BenchContext, BenchReport, guarded, make_context, parse_components
from vit_ablate.bench.data import section_data
from vit_ablate.bench.env import environment, load_average
from vit_ablate.bench.flops import count_model_flops, vit_flops, vit_flops_breakdown
from vit_ablate.bench.framework import section_framework
from vit_ablate.bench.gpu import sdpa_kernels_used, section_ddp, section_gpu
from vit_ablate.bench.pool import section_pool
from vit_ablate.bench.startup import section_startup
from vit_ablate.bench.settings import (
    CORE_COMPONENTS,
    CPU_ANCHORS,
    DEFAULT_COMPONENTS,
    EXTRA_COMPONENTS,
    SECTIONS,
    TARGETS,
)
from vit_ablate.config import ConfigError, compile_mode, to_container

__all__ = [
    "SECTIONS",
    "TARGETS",
    "CORE_COMPONENTS",
    "EXTRA_COMPONENTS",
    "DEFAULT_COMPONENTS",
    "CPU_ANCHORS",
    "BenchContext",
    "BenchReport",
    "make_context",
    "run_sections",
    "parse_components",
    "sdpa_kernels_used",
]


def run_sections(
    ctx: BenchContext, sections: Optional[Sequence[str]] = None, ddp: int = 0, json_path: Optional[str] = None
) -> BenchReport:
    """Measure the chosen sections (None: all that apply). With ``json_path`` the results are
    written after every section (``"complete": false``) and once more at the end, so a run that is
    killed half-way still leaves the sections it finished."""
    if sections is None:
        chosen = [s for s in SECTIONS if s != "gpu" or ctx.device.type == "cuda"]
    else:
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise ConfigError(f"bench --only {' '.join(unknown)}: unknown section(s); choose from {', '.join(SECTIONS)}")
        chosen = [s for s in SECTIONS if s in sections]
    started = time.perf_counter()
    report = BenchReport()
    report.results["environment"] = environment(ctx.cfg, ctx.device)
    report.results["config"] = to_container(ctx.cfg)
    report.results["settings"] = _settings(ctx, chosen, ddp)
    report.results["flops"] = _flops(ctx, report)
    _opening_notes(ctx, report)

    plan: List[Tuple[str, str, Callable[[], None]]] = []
    if any(s in chosen for s in ("model", "components", "data")):
        # the data section needs the model's img/s, which the pool measures
        plan.append(("model", "model and component pool", lambda: section_pool(
            ctx, report, timm_compare="model" in chosen, components=ctx.components if "components" in chosen else []
        )))
    if "framework" in chosen:
        plan.append(("framework", "Lightning vs plain loop", lambda: section_framework(ctx, report)))
    if "data" in chosen:
        plan.append(("data", "data pipeline", lambda: section_data(ctx, report)))
    if "startup" in chosen:
        plan.append(("startup", "start-up to the first batch", lambda: section_startup(ctx, report)))
    if "gpu" in chosen:
        plan.append(("gpu", "bf16 / compile / SDPA / MFU", lambda: section_gpu(ctx, report)))
    if ddp:
        plan.append(("ddp", f"DDP on {ddp} devices", lambda: section_ddp(ctx, report, int(ddp))))
    for section, what, fn in plan:
        before = len(report.rows)
        guarded(ctx, report, section, what, fn)
        for row in report.rows[before:]:
            ctx.log(f"{row.section}: {row.what}: {row.img_s or 0:.1f} vs {row.ref_img_s or 0:.1f} img/s, "
                    f"ratio {row.ratio if row.ratio is not None else float('nan'):.3f}, {row.verdict}")
        _write(report, started, complete=False, json_path=json_path)
    _write(report, started, complete=True, json_path=json_path)
    return report


def _settings(ctx: BenchContext, chosen: Sequence[str], ddp: int) -> Dict[str, Any]:
    return {
        "sections": list(chosen),
        "ddp": int(ddp),
        "steps": ctx.steps,
        "rounds": ctx.rounds,
        "warmup": ctx.warmup,
        "batch": ctx.batch,
        "global_batch": int(ctx.cfg.data.batch_size),
        "precision": ctx.precision.name,
        "compile": compile_mode(ctx.cfg.trainer.compile),
        "device": str(ctx.device),
        "components": [f"model.{k}={v}" for k, v in ctx.components],
        "targets": dict(TARGETS),
        "method": "after warmup, rounds in which the candidates alternate step by step (A B C, C B A, ...); "
        "framework: a plain loop steps in lockstep inside one Trainer.fit; img/s = median over rounds of "
        "the round throughput; ratio = median of the paired per-step ratios, spread = their quartiles "
        "(data, gpu: per-round)",
    }


def _opening_notes(ctx: BenchContext, report: BenchReport) -> None:
    """Where and how it was measured, how to read a ratio, and a warning when the machine was busy."""
    env = report.results["environment"]
    load = env.get("load_average_start")
    report.notes.append(
        f"{env['device_name']} ({ctx.device}), {env['torch_threads']} torch thread(s), batch {ctx.batch}, "
        f"{ctx.precision.name}, {ctx.rounds} rounds × {ctx.steps} steps after {ctx.warmup} warmup step(s)"
        + (f"; load average {load[0]:.1f} on {env['cpu_affinity']} CPU(s)" if load else "")
    )
    report.notes.append(
        "ratio: median of the paired per-step ratios (candidates alternate step by step); spread: their "
        "quartiles (data, gpu: the per-round range); a miss whose spread reaches the target is 'within noise'"
    )
    if load and ctx.device.type == "cpu" and load[0] > 0.5 * (env.get("cpu_affinity") or 1) + 0.5:
        report.notes.append("the machine was busy while measuring: absolute img/s are low and noisy; ratios are paired per round")


def _write(report: BenchReport, started: float, complete: bool, json_path: Optional[str]) -> None:
    from vit_ablate.io import atomic_write_json

    report.results["environment"]["load_average_end"] = load_average()
    report.results["elapsed_s"] = round(time.perf_counter() - started, 1)
    report.results["rows"] = [row.as_dict() for row in report.rows]
    report.results["notes"] = list(report.notes)
    report.results["complete"] = complete
    if json_path:
        atomic_write_json(json_path, report.results)


def _flops(ctx: BenchContext, report: BenchReport) -> Dict[str, Any]:
    """The configured model's analytic FLOPs per image, cross-checked with torch's FlopCounterMode."""
    from vit_ablate.model import build_model

    forward = vit_flops(ctx.spec)
    out: Dict[str, Any] = {
        "forward_per_image": forward,
        "training_per_image": vit_flops(ctx.spec, training=True),
        "forward_breakdown": vit_flops_breakdown(ctx.spec),
    }
    try:
        with torch.device("meta"):
            meta = build_model(ctx.model_cfg)
        counted = count_model_flops(meta)
        out["flop_counter_forward_per_image"] = counted
        out["flop_counter_relative_error"] = forward / counted - 1 if counted else None
    except Exception as exc:  # a cross-check that cannot run is reported, not fatal
        out["flop_counter_error"] = f"{type(exc).__name__}: {exc}"
    check = out.get("flop_counter_relative_error")
    report.notes.append(
        f"FLOPs/img (matmul, 2·MAC): forward {forward / 1e9:.3f} G analytic"
        + (f" (torch FlopCounterMode {out['flop_counter_forward_per_image'] / 1e9:.3f} G, Δ {check:+.2%})" if check is not None else "")
        + f", training ≈ 3× = {out['training_per_image'] / 1e9:.3f} G"
    )
    return out
