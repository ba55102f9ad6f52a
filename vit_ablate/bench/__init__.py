"""``vit-ablate bench``: throughput against timm, a plain PyTorch loop, the data pipeline and the GPU peak.

    vit-ablate bench [EXPERIMENT.yaml ...] [key=value ...] [--steps N] [--json FILE] [--only SECTION ...] [--ddp N]

``run_bench(cfg, ...)`` measures the configured model and batch and returns a printable table
(section, what, img/s, reference img/s, ratio, spread, target, met?); ``--json`` writes
every number plus the environment (rewritten after each section, so a killed run keeps
what it finished). Sections (``core.py`` describes each and runs them): model, components
(``pool.py``), framework (``framework.py``), data (``data.py``), gpu (CUDA only) and ``ddp=N`` (``gpu.py``).
Each is a function of the settings (``context.BenchContext``) and the report it adds to
(``context.BenchReport``). Misses are printed as misses.

Knobs without a CLI flag (environment variables): ``VIT_ABLATE_BENCH_ROUNDS`` (default 3),
``VIT_ABLATE_BENCH_WARMUP`` (default 2), ``VIT_ABLATE_BENCH_COMPONENTS`` ("core": the four with targets,
the CPU default; "all": also rope2d, sincos2d, map, conv stem, the GPU default; or a comma list of
``key=value``), ``VIT_ABLATE_BENCH_PEAK_TFLOPS`` (the device's dense bf16 peak, for MFU).

``vit_flops(spec, batch=1, training=False)`` is the analytic FLOP count (``flops.py``).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from vit_ablate.bench.core import SECTIONS, TARGETS
from vit_ablate.bench.flops import count_flops, count_model_flops, device_peak_flops, vit_flops, vit_flops_breakdown
from vit_ablate.bench.table import Row, format_table

__all__ = [
    "run_bench",
    "benchmark",
    "vit_flops",
    "vit_flops_breakdown",
    "count_flops",
    "count_model_flops",
    "device_peak_flops",
    "Row",
    "format_table",
    "SECTIONS",
    "TARGETS",
]


def benchmark(
    cfg,
    *,
    steps: int = 20,
    sections: Optional[Sequence[str]] = None,
    ddp: int = 0,
    json_path: Optional[str] = None,
    **options: Any,
):
    """Run the benchmark; returns the ``BenchReport`` (``.results`` is the JSON content, ``.rows`` the
    table's rows, ``.table()`` the text).

    ``options`` go to ``make_context``: rounds, warmup, components, peak_tflops, device, progress,
    mfu_reference, mfu_batch, gpu_compile, gpu_on_cpu, feed (the data section's
    loader-fed training row; default on a GPU only).
    """
    from vit_ablate.bench.core import make_context, run_sections

    ctx = make_context(cfg, steps=steps, **options)
    return run_sections(ctx, sections, ddp=ddp, json_path=json_path)  # written after every section, atomically


def run_bench(
    cfg,
    steps: int = 20,
    json_path: Optional[str] = None,
    ddp: int = 0,
    sections: Optional[Sequence[str]] = None,
    **options: Any,
) -> str:
    """The CLI entry: measure, write ``json_path`` atomically when given, return the table."""
    return benchmark(cfg, steps=steps, sections=sections, ddp=ddp, json_path=json_path, **options).table()
