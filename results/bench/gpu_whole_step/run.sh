#!/usr/bin/env bash
# The whole training step as one CUDA graph (trainer.cuda_graph), measured on one GPU in one call:
#   1. the GPU tests of the captured step (tests/training/test_whole_step.py: replay = eager updates);
#   2. CIFAR-10 ViT-Ti/4 epochs (experiments/cifar10_vit_ti4.yaml, bf16, data resident on the GPU):
#      eager, whole-step graph, torch.compile + whole-step graph; metrics.csv of each;
#   3. vit-ablate bench, sections components and gpu, on the same model (JSON);
#   4. ViT-B/16 at 224: eager, torch.compile (traceback when it fails), whole-step graph (MFU).
#
#   OUT=/tmp/out CIFAR_ARCHIVE=.gpu/cifar10-jpeg.tar.gz results/bench/gpu_whole_step/run.sh
#   SECTIONS="tests bench vit_b16" VIT_B16="compile+fused,compile@512" results/bench/gpu_whole_step/run.sh
#   SECTIONS="epochs vit_b16" EPOCHS="compile_graph" VIT_B16="b16:compile+fused+profile ti4:compile+ro+keep,b16:compile"
#
# EPOCHS names the training runs (graph, eager, compile_graph); VIT_B16 is one or more space-separated
# variant lists of vit_b16_probe.py, each run in a fresh process (a failure in one leaves the others).
#
# Needs torch, timm, lightning, torchmetrics and omegaconf (the device machine lacks omegaconf: its
# wheel travels in .whl/). Cost: about 8 minutes of one H100/H200, start-up excluded.
set -uo pipefail
cd "$(dirname "$0")/../../.."
OUT=${OUT:-/tmp/out}
CIFAR_ARCHIVE=${CIFAR_ARCHIVE:-.gpu/cifar10-jpeg.tar.gz}
export PYTHONUNBUFFERED=1 WANDB_MODE=disabled
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
SECTIONS=${SECTIONS:-tests epochs bench vit_b16}
VIT_B16=${VIT_B16:-eager,graph,compile,compile+graph}
mark() { echo "=== $(date +%T) $*"; }
wanted() { [[ " $SECTIONS " == *" $1 "* ]]; }

mark environment
{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  nproc
  python3 -c "import torch, timm, lightning, torchmetrics, omegaconf; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__, 'lightning', lightning.__version__, 'torchmetrics', torchmetrics.__version__, 'omegaconf', omegaconf.__version__)"
  git rev-parse --short HEAD 2>/dev/null; } | tee "$OUT/env.txt"

mark data
mkdir -p /tmp/data && tar -xzf "$CIFAR_ARCHIVE" -C /tmp/data || exit 1

wanted tests && mark tests && timeout 180 python3 -m pytest -q -p no:cacheprovider tests/training/test_whole_step.py 2>&1 | tail -5 | tee "$OUT/tests.log"

train() {  # name, extra overrides...
  local name=$1; shift
  timeout 240 python3 -m vit_ablate train experiments/cifar10_vit_ti4.yaml data.name=imagefolder data.root=/tmp/data/cifar10 \
    evaluate.test=false trainer.progress_bar=false output_dir=/tmp/runs name="$name" "$@" > "/tmp/runs_$name.log" 2>&1
  echo "--- $name (exit $?)"; grep -E "completed|Error|error" "/tmp/runs_$name.log" | tail -3
  cp "/tmp/runs/$name/metrics.csv" "$OUT/epochs_$name.csv" 2>/dev/null && cat "$OUT/epochs_$name.csv"
}
if wanted epochs; then
  mark epochs
  for run in ${EPOCHS:-graph eager compile_graph}; do
    case $run in
      graph) train graph trainer.max_epochs=3 trainer.cuda_graph=true ;;
      eager) train eager trainer.max_epochs=2 ;;
      compile_graph) train compile_graph trainer.max_epochs=3 trainer.cuda_graph=true trainer.compile=true ;;
      *) echo "unknown EPOCHS entry $run"; exit 2 ;;
    esac
  done
  tail -n 30 /tmp/runs_*.log > "$OUT/train_logs.txt"
fi

wanted bench && mark bench && timeout 300 python3 -m vit_ablate bench experiments/cifar10_vit_ti4.yaml data.name=imagefolder data.root=/tmp/data/cifar10 \
  --only ${BENCH_ONLY:-components gpu} --steps 30 --json "$OUT/bench.json" 2>&1 | tail -25

if wanted vit_b16; then
  for list in $VIT_B16; do
    mark "vit_b16 $list"
    timeout ${PROBE_TIMEOUT:-240} python3 results/bench/gpu_whole_step/vit_b16_probe.py --only "$list" 2>&1 | tee -a "$OUT/vit_b16.txt" | tail -60
  done
fi
mark done
