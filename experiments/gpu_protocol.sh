#!/usr/bin/env bash
# GPU protocol: the ViT paper's four Appendix-D comparisons (position embeddings D.4, class token vs GAP
# × lr D.3, hybrid vs patch stem §4.4, post- vs pre-LN with and without warmup), 8 paired seeds each,
# on one GPU in waves of at most 16 runs packed on it (`vit-ablate sweep --workers 16 --count 16`),
# then one `vit-ablate report` per comparison. Fitted to short GPU calls: one comparison per call, a
# time budget per call, and a run folder small enough to travel to the next machine.
#
#   experiments/gpu_protocol.sh pos_embed        # one comparison (pos_embed, pooling_lr, hybrid, norm; default all)
#   experiments/gpu_protocol.sh --dry-run norm   # the same waves, resumes and report on a CPU in minutes
#
# One device call (the `device` tool: `carry` brings the earlier calls' runs, $OUT takes this call's back):
#   command: BUDGET_S=420 experiments/gpu_protocol.sh pos_embed; cp -r runs/gpu_protocol "$OUT/"
#   carry:   ["runs/gpu_protocol"]          then copy files_at/gpu_protocol back to runs/gpu_protocol here
#
# Resumable, also on another machine: every wave is one `vit-ablate sweep` invocation over the sweep's own
# folder; finished runs are never started again (their checkpoints are deleted once they finish, so the
# folder stays a few MB), interrupted ones resume from their last checkpoint. No wave starts after
# BUDGET_S seconds, and a wave still running then is stopped with SIGTERM (its runs resume in the next
# call). A wave that leaves failed runs is retried once; failures again stop the script (exit 1).
#
# --dry-run: copies of the sweep files with seeds [0, 1], waves of 4 runs, 2 workers, no GPU, each run 2
# steps on 128 CIFAR-10 images with one validation batch and no test pass; its folders (OUT) are separate
# from the real protocol's, so it never mixes with real runs.
#
# Environment: OUT (run folders; default runs/gpu_protocol, dry-run runs/gpu_protocol_dry), REPORTS
# (report folders; default $OUT/reports), BUDGET_S (seconds of this call; default 450), CIFAR_ROOT
# (CIFAR-10 as class folders; default $VIT_ABLATE_DATA/cifar10, VIT_ABLATE_DATA default .data; extracted
# from CIFAR_ARCHIVE, default ../shared/data/cifar10-jpeg.tar.gz, when missing), GPUS (default 0), WAVE
# (runs per wave, default 16), WORKERS (default WAVE), EXTRA (more key=value overrides for every run,
# e.g. "trainer.cuda_graph=true trainer.compile=true").
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
SWEEPS=()
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY_RUN=1 ;;
    pos_embed|pooling_lr|hybrid|norm) SWEEPS+=("gpu_$arg") ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_protocol.sh: unknown argument '$arg' (comparisons: pos_embed pooling_lr hybrid norm; or --dry-run)" >&2; exit 2 ;;
  esac
done
[ ${#SWEEPS[@]} -gt 0 ] || SWEEPS=(gpu_pos_embed gpu_pooling_lr gpu_hybrid gpu_norm)
BUDGET_S=${BUDGET_S:-450}
declare -A METRIC=([gpu_pos_embed]=val/acc1 [gpu_pooling_lr]=val/acc1 [gpu_hybrid]=val/acc1 [gpu_norm]=val/loss)

CIFAR_ROOT=$(realpath -m "${CIFAR_ROOT:-${VIT_ABLATE_DATA:-.data}/cifar10}")  # absolute: data.root is taken as given
CIFAR_ARCHIVE=${CIFAR_ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}
if [ $DRY_RUN = 1 ]; then
  OUT=${OUT:-runs/gpu_protocol_dry}
  REPORTS=${REPORTS:-$OUT/reports}
  WAVE=${WAVE:-4}
  WORKERS=${WORKERS:-2}
  GPUS=${GPUS:-none}
  TINY=(data.train_subset=128 data.batch_size=64 trainer.max_epochs=1 trainer.max_steps=2
        trainer.limit_val_batches=1 evaluate.test=false)
else
  OUT=${OUT:-runs/gpu_protocol}
  REPORTS=${REPORTS:-$OUT/reports}
  WAVE=${WAVE:-16}
  WORKERS=${WORKERS:-$WAVE}
  GPUS=${GPUS:-0}
  TINY=()
fi
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

if [ ! -d "$CIFAR_ROOT/train" ]; then
  if [ "$(basename "$CIFAR_ROOT")" = cifar10 ] && [ -f "$CIFAR_ARCHIVE" ]; then
    echo "[protocol] extracting $CIFAR_ARCHIVE into $(dirname "$CIFAR_ROOT")"
    mkdir -p "$(dirname "$CIFAR_ROOT")"
    tar -xzf "$CIFAR_ARCHIVE" -C "$(dirname "$CIFAR_ROOT")"
  else
    echo "gpu_protocol.sh: CIFAR_ROOT=$CIFAR_ROOT has no train/ folder and CIFAR_ARCHIVE=$CIFAR_ARCHIVE is not a file" >&2
    exit 2
  fi
fi
DATA=(data.name=imagefolder "data.root=$CIFAR_ROOT")

# The sweep file a comparison runs: the committed one, or (dry run) a copy with two seeds.
sweep_file() {
  local name=$1 src=sweeps/protocol/$1.yaml
  if [ $DRY_RUN = 1 ]; then
    mkdir -p "$OUT/sweeps"
    sed 's/values: \[0, 1, 2, 3, 4, 5, 6, 7\]/values: [0, 1]/' "$src" > "$OUT/sweeps/$name.yaml"
    echo "$OUT/sweeps/$name.yaml"
  else
    echo "$src"
  fi
}

# "finished total failed" of a sweep folder, from its runs' statuses and the sweep file's grid.
progress() {
  python - "$1" "$2" <<'EOF'
import sys
from pathlib import Path
from vit_ablate import rundir
from vit_ablate.sweep import engine, read_sweep
spec = engine.load_sweep(sys.argv[1])
sweep_dir = Path(sys.argv[2]) / spec.name
runs = read_sweep(sweep_dir) if (sweep_dir / "sweep.json").is_file() else []
finished = sum(1 for r in runs if r["status"] in rundir.FINAL_STATUSES + (rundir.STOPPED,))
failed = sum(1 for r in runs if r["status"] == rundir.FAILED)
print(finished, engine.grid_size(spec.config), failed)
EOF
}

# Delete the checkpoints of finished runs: what the next call needs of them is result.json and metrics.csv.
prune() {
  python - "$1" "$2" <<'EOF'
import shutil, sys
from pathlib import Path
from vit_ablate import rundir
from vit_ablate.sweep import engine
sweep_dir = Path(sys.argv[2]) / engine.load_sweep(sys.argv[1]).name
for run in rundir.read_sweep(sweep_dir)[1] if (sweep_dir / rundir.SWEEP_MANIFEST).is_file() else []:
    if run["status"] in rundir.FINAL_STATUSES and run.get("path"):
        shutil.rmtree(Path(run["path"]) / rundir.CHECKPOINT_DIR, ignore_errors=True)
EOF
}

sweep_name() { python -c "import sys; from vit_ablate.sweep import engine; print(engine.load_sweep(sys.argv[1]).name)" "$1"; }

started=$(date +%s)
for name in "${SWEEPS[@]}"; do
  file=$(sweep_file "$name")
  retried=0
  while :; do
    read -r finished total failed < <(progress "$file" "$OUT")
    if [ "$finished" -ge "$total" ]; then
      echo "[protocol] $name: $finished/$total runs finished"
      break
    fi
    left=$(( BUDGET_S - ($(date +%s) - started) ))
    if [ $left -le 0 ]; then
      echo "[protocol] $name: $finished/$total finished; the call's budget (BUDGET_S=$BUDGET_S) is spent: run again to go on"
      exit 0
    fi
    echo "[protocol] $name: $finished/$total finished; wave of up to $WAVE runs, $left s left ($(date +%T))"
    wave_start=$(date +%s)
    set +e
    timeout --signal=TERM --kill-after=60 "$left" vit-ablate sweep "$file" --workers "$WORKERS" --count "$WAVE" \
      --gpus "$GPUS" --output-dir "$OUT" "${DATA[@]}" "${TINY[@]}" "${EXTRA_ARGS[@]}"
    rc=$?
    set -e
    echo "[protocol] $name: wave ended after $(( $(date +%s) - wave_start )) s (exit $rc)"
    prune "$file" "$OUT"
    if [ $rc = 124 ] || [ $rc = 130 ]; then
      echo "[protocol] $name: stopped at the budget; its interrupted runs resume in the next call"
      exit 0
    fi
    if [ $rc = 2 ]; then
      exit 2  # a configuration error
    fi
    if [ $rc != 0 ]; then
      if [ $retried = 1 ]; then
        echo "gpu_protocol.sh: runs of $name failed twice: see $OUT/$(sweep_name "$file")/run-*/train.log" >&2
        exit 1
      fi
      retried=1
    fi
  done
  sweep_dir="$OUT/$(sweep_name "$file")"
  report_dir="$REPORTS/protocol_$name"
  vit-ablate report "$sweep_dir" --metric "${METRIC[$name]}" --out "$report_dir"
  echo "[protocol] $name: report in $report_dir"
done
echo "[protocol] ${SWEEPS[*]} finished; $(( $(date +%s) - started )) s in this invocation"
