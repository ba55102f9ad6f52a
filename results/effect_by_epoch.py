"""The paired effect of a two-arm comparison after every epoch, from its runs' metrics.csv: the curve behind a
budget check (results/README.md). Descriptive: the verdict is the report's, at the last epoch.

    python results/effect_by_epoch.py runs_x2/protocol_cpu_hybrid_sequential model.stem hybrid patch [val/acc1] [key=value ...]

(the key=value items keep only the runs with those settings, e.g. one warmup of a crossed design) prints a markdown table: per epoch, each arm's mean over seeds and A − B paired by seed with its 95% t interval.
"""
import sys

import pandas as pd
from scipy import stats

from vit_ablate import rundir

sweep, key, a, b = sys.argv[1:5]
metric = sys.argv[5] if len(sys.argv) > 5 else "val/acc1"
where = dict(item.split("=", 1) for item in sys.argv[6:])
scale, digits = (100, 2) if "acc" in metric else (1, 3)  # accuracies in points, losses as they are
rows = []
_, runs = rundir.read_sweep(sweep)  # the one reader of run folders: flattened config.yaml, metrics.csv rows
for run in runs:
    if any(str(run["config"].get(k)) != v for k, v in where.items()):
        continue
    for row in run["history"]:
        if row.get(metric) not in (None, ""):
            rows.append({"seed": run["config"]["seed"], "arm": str(run["config"][key]), "epoch": int(float(row["epoch"])) + 1,
                         "value": float(row[metric]) * scale})
table = pd.DataFrame(rows).pivot_table(index=["epoch", "seed"], columns="arm", values="value")
print(f"| epoch | {a} | {b} | {a} − {b} [95% t CI] | seeds |\n|---|---|---|---|---|")
for epoch, group in table.groupby(level=0):
    group = group.dropna()
    diff = group[a] - group[b]
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    print(f"| {epoch} | {group[a].mean():.{digits}f} | {group[b].mean():.{digits}f} | {diff.mean():+.{digits}f} "
          f"[{low:+.{digits}f}, {high:+.{digits}f}] | {len(diff)} |")
