#!/usr/bin/env bash
# GPU protocol: the ViT paper's four Appendix-D comparisons (position embeddings D.4, class token vs GAP
# × lr D.3, hybrid vs patch stem §4.4, post- vs pre-LN with and without warmup), 8 paired seeds each,
# on one GPU in waves of at most 16 runs packed on it (`vit-ablate sweep --workers 16 --count 16`),
# then one `vit-ablate report` per comparison.
#
#   experiments/gpu_protocol.sh              # the protocol: 112 runs in 7 waves, ~21 min on one H100 (estimate)
#   experiments/gpu_protocol.sh --dry-run    # the same waves, resumes and reports on a CPU in minutes
#
# Resumable: every wave is one `vit-ablate sweep` invocation over the sweep's own folder; finished runs
# are never started again, interrupted ones resume from their last checkpoint. Re-running this script
# after a kill (or a lost machine) continues where it stopped. A wave that leaves failed runs is
# retried once; failures again stop the script (exit 1) naming the sweep's folder.
#
# --dry-run: copies of the four sweep files with seeds [0, 1] (the full grid otherwise), waves of 4 runs,
# 2 workers, no GPU, each run 2 steps on 128 CIFAR-10 images with one validation batch and no test pass;
# its folders (OUT) are separate from the real protocol's, so it never mixes with real runs.
#
# Environment: OUT (run folders; default runs/gpu_protocol, dry-run runs/gpu_protocol_dry), REPORTS
# (report folders; default results, dry-run $OUT/reports), CIFAR_ROOT (CIFAR-10 as class folders;
# default $VIT_ABLATE_DATA/cifar10 (VIT_ABLATE_DATA default .data), extracted from CIFAR_ARCHIVE, default ../shared/data/cifar10-jpeg.tar.gz,
# when missing), GPUS (default 0), WAVE (runs per wave, default 16), WORKERS (default WAVE),
# EXTRA (more key=value overrides for every run, e.g. "trainer.compile=reduce-overhead").
set -euo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "gpu_protocol.sh: unknown argument '$1' (use --dry-run or nothing)" >&2; exit 2 ;;
esac

SWEEPS=(gpu_pos_embed gpu_pooling_lr gpu_hybrid gpu_norm)
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
  REPORTS=${REPORTS:-results}
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
    echo "[protocol] $name: $finished/$total finished; wave of up to $WAVE runs ($(date +%T))"
    wave_start=$(date +%s)
    set +e
    vit-ablate sweep "$file" --workers "$WORKERS" --count "$WAVE" --gpus "$GPUS" --output-dir "$OUT" \
      "${DATA[@]}" "${TINY[@]}" "${EXTRA_ARGS[@]}"
    rc=$?
    set -e
    echo "[protocol] $name: wave ended after $(( $(date +%s) - wave_start )) s (exit $rc)"
    if [ $rc = 130 ] || [ $rc = 2 ]; then
      exit $rc  # interrupted (re-run to resume) or a configuration error
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
echo "[protocol] all four comparisons finished; $(( $(date +%s) - started )) s in this invocation"
