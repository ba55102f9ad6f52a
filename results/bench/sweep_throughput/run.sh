#!/usr/bin/env bash
# A CPU comparison's throughput (runs finished per hour) under the sweep runner's settings: the first
# COUNT runs of sweeps/protocol/cpu_norm.yaml (post- vs pre-LN, ~1 minute each), once per setting,
# each in a fresh output folder, nothing else running:
#   w1      --workers 1                       (one run at a time with every core)
#   w2      --workers 2                       (the runner gives each run cores/workers threads: 1)
#   w2-t2   --workers 2, OMP_NUM_THREADS=2    (two runs, each with every core: oversubscribed)
#
#   OUT=/root/sweep_throughput COUNT=4 results/bench/sweep_throughput/run.sh
#   OUT=/root/sweep_throughput2 SETTINGS="w2 w1" results/bench/sweep_throughput/run.sh   # a second round, reversed
# Writes $OUT/throughput.csv (setting, runs, wall_s, runs_per_hour) and each sweep's summary.
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/root/sweep_throughput}
COUNT=${COUNT:-4}
SWEEP=${SWEEP:-sweeps/protocol/cpu_norm.yaml}
mkdir -p "$OUT"
echo "setting,runs,wall_s,runs_per_hour" > "$OUT/throughput.csv"
measure() {  # setting, workers, OMP_NUM_THREADS for every run ("" = the runner's choice)
  local setting=$1 workers=$2 threads=$3 start end
  rm -rf "${OUT:?}/$setting"
  start=$(date +%s.%N)
  if [ -n "$threads" ]; then export OMP_NUM_THREADS=$threads; else unset OMP_NUM_THREADS; fi
  vit-ablate sweep "$SWEEP" --workers "$workers" --count "$COUNT" --output-dir "$OUT/$setting" > "$OUT/$setting.summary.txt" 2>&1 \
    || { echo "$setting: the sweep failed, see $OUT/$setting.summary.txt" >&2; exit 1; }
  end=$(date +%s.%N)
  python3 -c "w = $end - $start; print(f'$setting,$COUNT,{w:.1f},{$COUNT * 3600 / w:.1f}')" | tee -a "$OUT/throughput.csv"
}
for setting in ${SETTINGS:-w1 w2 w2-t2}; do
  case $setting in
    w1) measure w1 1 "" ;;
    w2) measure w2 2 "" ;;
    w2-t2) measure w2-t2 2 2 ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac
done
