#!/usr/bin/env bash
# One CIFAR-10 epoch of the same ViT trained by timm's train.py and by `vit-ablate train`, side by side,
# alternating, ROUNDS times each: wall time end to end (process start to exit) and test top-1.
#
# Model (both): patch 8 on 32×32 (a 4×4 grid), D 128, depth 4, 4 heads, MLP 512, class token, 10 classes.
# Budget (both): one epoch of the 50,000 training images, batch 128, AdamW lr 1e-3, wd 0.05, no warmup,
# fp32 on the CPU; evaluation on the 10,000 test images. Each trainer keeps its own defaults otherwise
# (timm: Inception crop + flip + colour jitter, label smoothing 0.1, cosine stepped per epoch, so lr 1e-3
# for the whole single epoch; ours: see vit_ablate/config.py), which is what a user of either gets.
#
#   TIMM_TRAIN=/path/to/pytorch-image-models/train.py results/bench/timm_epoch/run.sh
#
# Environment: TIMM_TRAIN (required; train.py of the timm repository, run with this venv's timm),
# CIFAR_ROOT (train/ and test/ class folders; default /root/data/cifar10), OUT (default runs/timm_epoch),
# ROUNDS (2), OURS_EXTRA (extra key=value overrides for ours, e.g. model.head_zero_init=false).
# Writes $OUT/epochs.csv: trainer,round,wall_s,test_top1. Time it only on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
: "${TIMM_TRAIN:?set TIMM_TRAIN to the train.py of a pytorch-image-models checkout}"
CIFAR_ROOT=${CIFAR_ROOT:-/root/data/cifar10}
OUT=${OUT:-runs/timm_epoch}
ROUNDS=${ROUNDS:-2}
mkdir -p "$OUT"
CSV=$OUT/epochs.csv
[ -f "$CSV" ] || echo "trainer,round,wall_s,test_top1" > "$CSV"

timm_run() {  # timm_run ROUND
  local dir=$OUT/timm-$1
  rm -rf "$dir"; mkdir -p "$dir"
  local start=$(date +%s.%N)
  python "$TIMM_TRAIN" --data-dir "$CIFAR_ROOT" --train-split train --val-split test \
    --model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=8 embed_dim=128 depth=4 num_heads=4 mlp_ratio=4.0 \
    --img-size 32 --crop-pct 1.0 --num-classes 10 -b 128 --opt adamw --lr 1e-3 --weight-decay 0.05 \
    --warmup-epochs 0 --epochs 1 --device cpu -j 2 --seed "$1" --output "$dir" --experiment run \
    > "$dir/train.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  local top1=$(tail -n 1 "$dir/run/summary.csv" | cut -d, -f4)  # epoch,train_loss,eval_loss,eval_top1,...
  echo "timm,$1,$wall,$top1" | tee -a "$CSV"
}

ours_run() {  # ours_run ROUND
  local dir=$OUT/ours-$1
  rm -rf "$dir"
  local start=$(date +%s.%N)
  vit-ablate train experiments/quickstart.yaml data.name=imagefolder data.root="$CIFAR_ROOT" \
    model.variant=Ti/8 model.dim=128 model.depth=4 model.heads=4 model.mlp_dim=512 model.img_size=32 model.num_classes=10 \
    data.batch_size=128 optim.lr=1e-3 optim.weight_decay=0.05 optim.warmup_epochs=0 optim.warmup_steps=0 \
    trainer.max_epochs=1 trainer.precision=32-true trainer.progress_bar=false seed="$1" \
    output_dir="$OUT" name="ours-$1" ${OURS_EXTRA:-} > "$OUT/ours-$1.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  local top1=$(python -c "import json,sys; print(100*json.load(open(sys.argv[1]))['test']['test/acc1'])" "$dir/result.json")
  echo "ours,$1,$wall,$top1" | tee -a "$CSV"
}

for round in $(seq 1 "$ROUNDS"); do  # alternate, so that a drift of the machine hits both alike
  if [ $((round % 2)) = 1 ]; then timm_run "$round"; ours_run "$round"; else ours_run "$round"; timm_run "$round"; fi
done
