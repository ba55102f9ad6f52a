"""The ``startup`` section: how long a run takes before its first training step, by stage.

A fresh interpreter (as every run of a sweep is) imports the training stack, resolves the config,
builds the data module (the decoded-image cache of an image folder, or the synthetic images), and
draws the first training batch. Measured twice, each in its own process: the first start may fill
the data cache, the second is what every later run of a sweep pays.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any, Dict, List

from vit_ablate.bench.context import Bench, Row
from vit_ablate.config import to_container

__all__ = ["section_startup", "measure_startup", "STAGES"]

STAGES = ("imports", "config", "data", "first_batch")

# Runs in the child: seconds since its first line at the end of each stage, as one JSON line on stdout.
_CHILD = r"""
import json, sys, time
started = time.perf_counter()
marks = {}
import vit_ablate.training.run  # torch, Lightning, timm: what `vit-ablate train` imports
marks["imports"] = time.perf_counter()
from vit_ablate.config import from_container
from vit_ablate.data import build_datamodule
cfg = from_container(json.loads(sys.argv[1]))
marks["config"] = time.perf_counter()
datamodule = build_datamodule(cfg)
datamodule.prepare_data()
datamodule.setup("fit")
loader = datamodule.train_dataloader()
marks["data"] = time.perf_counter()
next(iter(loader))
marks["first_batch"] = time.perf_counter()
print(json.dumps({name: at - started for name, at in marks.items()}))
"""


def measure_startup(cfg_container: Dict[str, Any], runs: int = 2, timeout: float = 600.0) -> List[Dict[str, float]]:
    """One dict per fresh process: the seconds at which each stage ended, and ``process_s``, the wall
    time of the whole process as the parent saw it."""
    results = []
    for _ in range(runs):
        started = time.perf_counter()
        child = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(cfg_container)], capture_output=True, text=True,
                               timeout=timeout)
        if child.returncode != 0:
            raise RuntimeError(f"the start-up child failed: {(child.stderr.strip().splitlines() or [child.returncode])[-1]}")
        results.append({**json.loads(child.stdout.strip().splitlines()[-1]), "process_s": time.perf_counter() - started})
    return results


def section_startup(bench: Bench) -> None:
    bench.log("startup: two fresh processes to the first training batch")
    starts = measure_startup(to_container(bench.cfg))
    bench.results["startup"] = {"starts": starts, "stages": list(STAGES)}
    for label, marks in zip(("first start", "later start"), starts):
        bench.rows.append(Row("startup", f"{label}: {marks['first_batch']:.1f} s to the first batch, the process {marks['process_s']:.1f} s"))
    stages = [f"{stage} {marks[stage] - (marks[before] if before else 0.0):.1f}" for before, stage in zip((None,) + STAGES, STAGES)]
    bench.notes.append(f"startup: the later start's stages: {', '.join(stages)} s")
