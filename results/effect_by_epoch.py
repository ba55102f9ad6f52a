"""The paired effect of a two-arm comparison after every epoch, from its runs' metrics.csv: the curve behind a
budget check (results/README.md). Descriptive: the verdict is the report's, at the last epoch.

    python results/effect_by_epoch.py runs_x2/protocol_cpu_hybrid_sequential model.stem hybrid patch [val/acc1] [key=value ...]
    python results/effect_by_epoch.py runs_x2/protocol_cpu_pooling_lr_sequential model.pool cls gap val/acc1 by=optim.lr=0.01,0.0003

(the key=value items keep only the runs with those settings, e.g. one warmup of a crossed design) prints a markdown table: per epoch, each arm's mean over seeds and A − B paired by seed with its 95% t interval.
With by=KEY=X,Y the effect is the interaction, (A − B where KEY=X) − (A − B where KEY=Y), paired by seed, and
the arms are A and B at X (the first columns) and at Y.
"""
import sys

import pandas as pd
from scipy import stats

from vit_ablate import rundir

sweep, key, a, b = sys.argv[1:5]
metric = sys.argv[5] if len(sys.argv) > 5 else "val/acc1"
where = dict(item.split("=", 1) for item in sys.argv[6:])
by_key, _, levels = where.pop("by", "").partition("=")
levels = levels.split(",") if by_key else [None]
scale, digits = (100, 2) if "acc" in metric else (1, 3)  # accuracies in points, losses as they are
rows = []
_, runs = rundir.read_sweep(sweep)  # the one reader of run folders: flattened config.yaml, metrics.csv rows
for run in runs:
    if any(str(run["config"].get(k)) != v for k, v in where.items()):
        continue
    level = str(run["config"].get(by_key)) if by_key else None
    for row in run["history"]:
        if row.get(metric) not in (None, ""):
            rows.append({"seed": run["config"]["seed"], "arm": (str(run["config"][key]), level), "epoch": int(float(row["epoch"])) + 1,
                         "value": float(row[metric]) * scale})
table = pd.DataFrame(rows).pivot_table(index=["epoch", "seed"], columns="arm", values="value")
arms = [(arm, level) for level in levels for arm in (a, b)]
names = [f"{arm} @ {level}" if level else arm for arm, level in arms]
effect = f"({a} − {b}) @ {levels[0]} − @ {levels[1]}" if by_key else f"{a} − {b}"
print(f"| epoch | {' | '.join(names)} | {effect} [95% t CI] | seeds |\n|---|{'---|' * len(arms)}---|---|")
for epoch, group in table.groupby(level=0):
    group = group[arms].dropna()
    diff = group[arms[0]] - group[arms[1]]
    if by_key:
        diff -= group[arms[2]] - group[arms[3]]
    low, high = stats.t.interval(0.95, len(diff) - 1, loc=diff.mean(), scale=stats.sem(diff))
    means = " | ".join(f"{group[arm].mean():.{digits}f}" for arm in arms)
    print(f"| {epoch} | {means} | {diff.mean():+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] | {len(diff)} |")
