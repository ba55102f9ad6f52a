"""A stand-in for ``vit-ablate train`` that starts in milliseconds: the runner's process handling is
tested with it; real training is tested with ``vit-ablate train`` itself.

    python fake_train.py acc=0.5 epochs=5 sleep=0.2 mode=ok|crash|fail [arm=b effect=0.02 fail_seed=3]

It writes ``metrics.csv`` (one row per "epoch", ``val/acc1`` = ``acc``) and ``result.json`` into
``$VIT_ABLATE_RUN_DIR`` (or ``output_dir/sweep-$WANDB_SWEEP_ID/$WANDB_RUN_ID``), resumes from the
epochs already in ``metrics.csv``, and on SIGTERM writes ``status: interrupted`` and exits 130.
``mode=crash`` exits 3 without a result.json; ``mode=fail`` writes ``status: failed``. With ``arm=b``,
``acc`` gains ``effect`` plus a small fixed jitter per seed, and ``fail_seed`` fails that seed's run.
"""

import csv
import json
import os
import signal
import sys
import time

args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
if os.environ.get("VIT_ABLATE_RUN_DIR"):
    run_dir = os.environ["VIT_ABLATE_RUN_DIR"]
else:
    run_dir = os.path.join(args.get("output_dir", "runs"), f"sweep-{os.environ['WANDB_SWEEP_ID']}", os.environ["WANDB_RUN_ID"])
os.makedirs(run_dir, exist_ok=True)
with open(os.path.join(run_dir, "config.yaml"), "w") as handle:  # as training writes its resolved config
    handle.write("".join(f"{key}: {value}\n" for key, value in sorted(args.items())))
acc = float(args.get("acc", 0.5))
if args.get("arm") == "b":  # a per-seed difference: effect + jitter of sd ~0.002
    acc += float(args.get("effect", 0)) + 0.003 * (((int(args.get("seed", 0)) * 37) % 7) - 3) / 3
    if args.get("fail_seed") == args.get("seed"):
        args["mode"] = "fail"
epochs = int(args.get("epochs", 3))
sleep = float(args.get("sleep", 0.05))
mode = args.get("mode", "ok")
metrics = os.path.join(run_dir, "metrics.csv")
result_path = os.path.join(run_dir, "result.json")
print(f"fake_train {sys.argv[1:]} in {run_dir}", flush=True)
done = 0


def write_result(status, error=None):
    tmp = result_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump({"status": status, "error": error, "final": {"val/acc1": acc}, "best": {"val/acc1": acc, "epoch": 0},
                   "epochs": done, "wall_time_s": 0.1, "seed": int(args.get("seed", 0))}, handle)
    os.replace(tmp, result_path)


def on_term(signum, frame):
    write_result("interrupted", "SIGTERM")
    sys.exit(130)


signal.signal(signal.SIGTERM, on_term)
if mode == "crash":
    print("fake_train: simulated crash", file=sys.stderr, flush=True)
    sys.exit(3)
if os.path.exists(metrics):
    with open(metrics) as handle:
        done = sum(1 for _ in csv.DictReader(handle))
else:
    with open(metrics, "w") as handle:
        handle.write("epoch,val/acc1,time_s\n")
while done < epochs:
    time.sleep(sleep)
    with open(metrics, "a") as handle:
        handle.write(f"{done},{acc},{done * sleep}\n")
    done += 1
if mode == "fail":
    write_result("failed", "fake_train: simulated failure")
    sys.exit(1)
write_result("completed")
