"""Fabricated run and sweep directories in the layout of docs/CONTRACTS.md, with known numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Sequence

import yaml

from vit_ablate.report.references import parse_reference_comments

# val/acc1 (final) per group and seed; the report's means are checked against these by hand:
#   1d: 0.80 0.82 0.81 → 81.00 ± 1.00;  2d: 0.81 0.82 0.82 → 81.67 ± 0.58;  none: 0.74 0.75 0.73 → 74.00 ± 1.00
FINAL = {
    "1d": [0.80, 0.82, 0.81],
    "2d": [0.81, 0.82, 0.82],
    "none": [0.74, 0.75, 0.73],
}
SWEEP_FILE = """\
# Position embeddings, paper Appendix D.4 (Table 8)
# reference: model.pos_embed=none value=0.61382 metric=imagenet_5shot source="paper Table 8"
# reference: model.pos_embed=1d value=0.64206 metric=imagenet_5shot source="paper Table 8"
# reference: model.pos_embed=2d value=0.64001 metric=imagenet_5shot source="paper Table 8"
program: vit-ablate
method: grid
parameters:
  model.pos_embed:
    values: [1d, 2d, none]
  seed:
    values: [0, 1, 2]
  trainer.max_epochs:
    value: 5
"""


def write_run(
    run_dir: Path,
    config: Dict,
    status: Optional[str] = "completed",
    final: Optional[float] = None,
    epochs: int = 5,
    error: Optional[str] = None,
    extra: Optional[Dict] = None,
) -> Path:
    """A run directory: config.yaml (nested, as OmegaConf writes it), metrics.csv, result.json."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    rows = ["epoch,step,train/loss,val/loss,val/acc1,val/acc5,lr,time_s"]
    target = final if final is not None else 0.5
    for epoch in range(epochs):
        # A curve that rises to the final value at the last epoch.
        acc = target * (epoch + 1) / epochs if status != "diverged" else 0.1
        cells = [epoch, (epoch + 1) * 64, 2.0 - 0.2 * epoch, 1.9 - 0.2 * epoch, acc, min(1.0, acc + 0.1), 0.001, epoch * 10.0]
        rows.append(",".join(str(c) for c in cells))
    (run_dir / "metrics.csv").write_text("\n".join(rows) + "\n")
    if status is not None:
        result = {"status": status, "error": error, "epochs": epochs, "seed": config.get("seed")}
        if final is not None:
            result["final"] = {"val/acc1": final, "val/acc5": min(1.0, final + 0.1), "val/loss": 1.0 - final}
            result["best"] = {"val/acc1": final, "epoch": epochs - 1}
            result["test"] = {"test/acc1": final - 0.01}
            result["fewshot"] = {"5": final / 2}
        result.update(extra or {})
        (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def run_config(pos_embed: str, seed: int, name: str, **optim) -> Dict:
    return {
        "name": name,
        "output_dir": "runs",
        "seed": seed,
        "model": {"variant": "Ti/16", "pos_embed": pos_embed, "pool": "cls"},
        "optim": {"name": "adamw", "lr": 0.001, **optim},
        "trainer": {"max_epochs": 5},
    }


def make_sweep(root: Path, final: Dict[str, Sequence[float]] = FINAL) -> Path:
    """runs/pos-embed: 3 groups × 3 seeds completed, plus none/seed 3 diverged and 2d/seed 3 pending
    (in the manifest only, no directory)."""
    sweep_dir = root / "pos-embed"
    sweep_dir.mkdir(parents=True)
    (root / "pos_embed.yaml").write_text(SWEEP_FILE)
    entries = []
    index = 0
    for pos_embed, values in final.items():
        for seed, value in enumerate(values):
            name = f"run-{index:03d}"
            write_run(sweep_dir / name, run_config(pos_embed, seed, name), final=value)
            entries.append({"name": name, "params": {"model.pos_embed": pos_embed, "seed": seed},
                            "status": "completed", "dir": name})
            index += 1
    diverged = f"run-{index:03d}"
    write_run(sweep_dir / diverged, run_config("none", 3, diverged), status="diverged",
              error="loss is NaN at step 120", epochs=2)
    entries.append({"name": diverged, "params": {"model.pos_embed": "none", "seed": 3},
                    "status": "diverged", "dir": diverged})
    entries.append({"name": f"run-{index + 1:03d}", "params": {"model.pos_embed": "2d", "seed": 3},
                    "status": "pending", "dir": f"run-{index + 1:03d}"})
    manifest = {
        "sweep": "pos-embed",
        "file": str(root / "pos_embed.yaml"),
        "config": yaml.safe_load(SWEEP_FILE),
        "reference": parse_reference_comments(SWEEP_FILE),
        "runs": entries,
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(manifest, indent=1))
    return sweep_dir
