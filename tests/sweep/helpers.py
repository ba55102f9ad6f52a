"""Sweep files written into tmp_path, the fake program, and reading a sweep directory back."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import yaml

from vit_ablate.sweep import read_sweep

REPO = Path(__file__).resolve().parents[2]
FAKE = Path(__file__).resolve().parent / "fake_train.py"
SWEEPS = sorted((REPO / "sweeps").glob("*.yaml"))


def write_sweep(path: Path, parameters: Mapping[str, Any], command: Optional[List[str]] = None,
                method: str = "grid", header: str = "", **extra: Any) -> Path:
    config: Dict[str, Any] = {
        "command": command or ["vit-ablate", "train", "experiments/quickstart.yaml", "trainer.progress_bar=false",
                               "${args_no_hyphens}"],
        "method": method,
        "metric": {"name": "val/acc1", "goal": "maximize"},
        "parameters": dict(parameters),
        **extra,
    }
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def fake_command(*fixed: str) -> List[str]:
    return [sys.executable, str(FAKE), *fixed, "${args_no_hyphens}"]


def manifest(sweep_dir: Path) -> Dict[str, Any]:
    """sweep.json as written: the proposals and the sweep's own records, no run statuses."""
    return json.loads((sweep_dir / "sweep.json").read_text())


def statuses(sweep_dir: Path) -> Dict[str, str]:
    return {r["name"]: r["status"] for r in read_sweep(sweep_dir)}


def fingerprint(run_dir: Path) -> Dict[str, Any]:
    """mtime and sha256 of result.json, metrics.csv and every checkpoint."""
    files = [run_dir / "result.json", run_dir / "metrics.csv", *sorted((run_dir / "checkpoints").glob("*.ckpt"))]
    return {
        str(f.relative_to(run_dir)): (f.stat().st_mtime_ns, hashlib.sha256(f.read_bytes()).hexdigest())
        for f in files
        if f.exists()
    }
