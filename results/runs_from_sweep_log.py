"""One-off: the runs.csv of a committed result, rebuilt from its sweep.log (the run directories are gone).

    python results/runs_from_sweep_log.py results/cpu_pooling_lr/sweep.log val/acc1
    python results/runs_from_sweep_log.py results/gpu_pos_embed_short/sweep.log test/acc1

The last table the sweep printed (name, swept keys, seed, status, the metric, wall) holds each run's
final value to 4 decimals, which is exact here: accuracies on 2,000 (CPU) or 10,000 (GPU) images are
multiples of 1/2,000 and 1/10,000. The second argument is the metric's true name: the GPU sweeps ran
with data.val_split=0, so what the sweep printed as val/acc1 is the test split's top-1 accuracy.
From runs.csv, `vit-ablate report results/<x>/runs.csv sweeps/<file>.yaml --metric <name>` regenerates
report.md and report.csv.
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from vit_ablate.io import atomic_write_text


def last_table(text: str):
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("name ") and "status" in line]
    if not starts:
        raise SystemExit("no run table in the log")
    header = lines[starts[-1]].split()
    rows = []
    for line in lines[starts[-1] + 2:]:
        if not line.strip():
            break
        rows.append(dict(zip(header, line.split())))
    return header, rows


def main(log: str, metric: str) -> Path:
    header, rows = last_table(Path(log).read_text())
    logged = header[header.index("status") + 1]  # the column the sweep printed (always "val/acc1")
    keys = header[1:header.index("seed")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["run", *keys, "seed", "status", metric, "reason"])
    for row in rows:
        writer.writerow([row["name"], *(row[k] for k in keys), row["seed"], row["status"], row[logged],
                         "" if row["status"] == "completed" else row["status"]])
    return atomic_write_text(Path(log).with_name("runs.csv"), buffer.getvalue())


if __name__ == "__main__":
    print(main(sys.argv[1], sys.argv[2]))
