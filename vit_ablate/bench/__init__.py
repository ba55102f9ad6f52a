"""``vit-ablate bench``: training throughput against timm, a plain PyTorch loop, the data pipeline and the GPU peak.

    vit-ablate bench [EXPERIMENT.yaml ...] [key=value ...] [--steps N] [--rounds N] [--json FILE] [--only SECTION ...] [--ddp N]

Sections, in this order, each a function of the ``Bench`` (``context.py``) that adds its rows:
model       ours vs timm's VisionTransformer with the same weights (``models.py``)
components  each ablation component's img/s cost vs the default components (``models.py``)
framework   Lightning's Trainer vs a plain loop doing the same work: the framework tax (``framework.py``)
data        the training loader alone vs what the model consumes (``data.py``)
startup     a fresh process's seconds to its first training batch (``startup.py``)
gpu         (CUDA only) bf16, torch.compile, CUDA graphs, the SDPA kernel, MFU (``gpu.py``)
ddp         (``ddp=N``, CUDA only) DDP weak-scaling efficiency on N devices (``gpu.py``)

The table gives img/s, a reference img/s, their ratio and its spread; the JSON (``json_path``) holds
every number and the environment, rewritten after each section so that a killed run keeps what it
finished. No machine's figures or pass marks are in the package: see ``TARGETS_FILE``.
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from typing import Any, Dict, Optional, Sequence

import torch

from vit_ablate.bench.context import TARGETS_FILE, Bench, guarded, make_bench
from vit_ablate.bench.data import section_data
from vit_ablate.bench.flops import count_model_flops, device_peak_flops
from vit_ablate.bench.framework import section_framework
from vit_ablate.bench.gpu import section_ddp, section_gpu
from vit_ablate.bench.models import section_components, section_model
from vit_ablate.bench.startup import section_startup
from vit_ablate.config import ConfigError, compile_mode, config_digest, to_container

__all__ = ["run_bench", "benchmark", "count_model_flops", "device_peak_flops", "SECTIONS"]

SECTIONS = {"model": section_model, "components": section_components, "framework": section_framework,
            "data": section_data, "startup": section_startup, "gpu": section_gpu}


def run_bench(cfg, steps: Optional[int] = None, json_path: Optional[str] = None, ddp: int = 0,
              sections: Optional[Sequence[str]] = None, **options: Any) -> str:
    """The CLI entry: measure, write ``json_path`` atomically when given, return the table."""
    return benchmark(cfg, steps=steps, sections=sections, ddp=ddp, json_path=json_path, **options).table()


def benchmark(cfg, *, sections: Optional[Sequence[str]] = None, ddp: int = 0, json_path: Optional[str] = None,
              **options: Any) -> Bench:
    """Measure the chosen sections (None: all that apply); ``options`` go to ``context.make_bench``
    (steps, rounds, warmup, components, device, progress, feed, gpu_compile, gpu_on_cpu, peak_tflops,
    mfu_reference, mfu_batch). Returns the ``Bench``: ``.results`` is the JSON, ``.table()`` the text."""
    unknown = [s for s in sections or () if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"bench --only {' '.join(unknown)}: unknown section(s); choose from {', '.join(SECTIONS)}")
    bench = make_bench(cfg, **options)
    chosen = [s for s in SECTIONS if (s in sections if sections else s != "gpu" or bench.device.type == "cuda")]
    started = time.perf_counter()
    bench.results.update(environment=_environment(bench), config=to_container(cfg), settings=_settings(bench, chosen, ddp))
    _opening_notes(bench)
    plan = [(name, SECTIONS[name]) for name in chosen] + ([("ddp", lambda b: section_ddp(b, int(ddp)))] if ddp else [])
    for number, (name, section) in enumerate(plan, 1):
        bench.log(f"{name} section ({number}/{len(plan)}) ...")
        before = len(bench.rows)
        guarded(bench, name, f"the {name} section", lambda: section(bench))
        for row in bench.rows[before:]:
            bench.log(f"{name}: {row.summary()}")
        _write(bench, started, json_path, complete=False)
    _write(bench, started, json_path, complete=True)
    return bench


def _settings(bench: Bench, chosen: Sequence[str], ddp: int) -> Dict[str, Any]:
    return {
        "sections": list(chosen), "ddp": int(ddp), "steps": bench.steps, "rounds": bench.rounds, "warmup": bench.warmup,
        "batch": bench.batch, "global_batch": int(bench.cfg.data.batch_size), "precision": bench.precision.name,
        "compile": compile_mode(bench.cfg.trainer.compile), "device": str(bench.device),
        "components": [f"model.{k}={v}" for k, v in bench.components],
        "flops_per_image": {"forward": count_model_flops(bench.model_cfg), "training": count_model_flops(bench.model_cfg, training=True)},
        "method": "after warmup, rounds in which the candidates alternate step by step (A B C, C B A, ...); framework: "
                  "a plain loop steps in lockstep inside one Trainer.fit; img/s = median over rounds; ratio = median of "
                  "the paired per-step ratios, spread = their quartiles (data, gpu: per round)",
    }


def _opening_notes(bench: Bench) -> None:
    """Where and how it was measured, how to read a ratio, where the targets are, and whether the machine was busy."""
    env, flops = bench.results["environment"], bench.results["settings"]["flops_per_image"]
    load = env["load_average_start"]
    bench.notes += [
        f"{env['device_name']} ({bench.device}), {env['torch_threads']} torch thread(s), batch {bench.batch}, "
        f"{bench.precision.name}, {bench.rounds} rounds × {bench.steps} steps after {bench.warmup} warmup step(s)"
        + (f"; load average {load[0]:.1f} on {env['cpu_affinity']} CPU(s)" if load else ""),
        "ratio: median of the paired per-step ratios (the candidates alternate step by step); spread: their quartiles",
        f"FLOPs per image (torch FlopCounterMode): forward {flops['forward'] / 1e9:.3f} G, training {flops['training'] / 1e9:.3f} G",
        f"the project's targets and a reference machine's figures: {TARGETS_FILE}",
    ]
    if load and bench.device.type == "cpu" and load[0] > 0.5 * env["cpu_affinity"] + 0.5:
        bench.notes.append("the machine was busy while measuring: absolute img/s are low and noisy; ratios are paired per step")


def _load_average() -> Optional[list]:
    return [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None


def _environment(bench: Bench) -> Dict[str, Any]:
    import lightning
    import timm

    import vit_ablate
    from vit_ablate.training.run import git_revision

    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), platform.processor())
    except OSError:  # not Linux
        cpu = platform.processor()
    cuda = bench.device.type == "cuda"
    return {
        "torch": torch.__version__, "timm": timm.__version__, "lightning": lightning.__version__,
        "python": platform.python_version(), "vit_ablate": vit_ablate.__version__, "git_rev": git_revision(),
        "platform": platform.platform(), "device": str(bench.device),
        "device_name": torch.cuda.get_device_name(bench.device) if cuda else cpu, "cpu_name": cpu,
        "cpu_count": os.cpu_count(), "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": _load_average(), "command_line": shlex.join(sys.argv), "config_digest": config_digest(bench.cfg),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **({"cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "device_count": torch.cuda.device_count(),
            "float32_matmul_precision": torch.get_float32_matmul_precision()} if cuda else {}),
    }


def _write(bench: Bench, started: float, json_path: Optional[str], complete: bool) -> None:
    from vit_ablate.io import atomic_write_json

    bench.results["environment"]["load_average_end"] = _load_average()
    bench.results.update(elapsed_s=round(time.perf_counter() - started, 1), rows=[asdict(row) for row in bench.rows],
                         notes=list(bench.notes), complete=complete)
    if json_path:
        atomic_write_json(json_path, bench.results)
