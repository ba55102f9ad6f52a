"""Where a benchmark ran: versions, device, CPU, threads, load, command line, config digest."""

from __future__ import annotations

import datetime as _dt
import os
import platform
import shlex
import sys
from typing import Any, Dict, Optional

import torch

__all__ = ["environment", "device_name", "load_average"]


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return _cpu_name()


def load_average() -> Optional[list]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def environment(cfg, device: torch.device) -> Dict[str, Any]:
    import lightning
    import timm

    import vit_ablate
    from vit_ablate.config import config_digest

    try:
        from vit_ablate.training.run import git_revision

        git = git_revision()
    except Exception:  # pragma: no cover - git missing is not an error
        git = None
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        affinity = os.cpu_count()
    info: Dict[str, Any] = {
        "torch": torch.__version__,
        "timm": timm.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "vit_ablate": vit_ablate.__version__,
        "git_rev": git,
        "platform": platform.platform(),
        "device": str(device),
        "device_name": device_name(device),
        "cpu_name": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": affinity,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": load_average(),
        "command_line": shlex.join(sys.argv),
        "config_digest": config_digest(cfg),
        "started_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            device_count=torch.cuda.device_count(),
            device_memory_gib=round(props.total_memory / 2**30, 1),
            float32_matmul_precision=torch.get_float32_matmul_precision(),
        )
    return info
