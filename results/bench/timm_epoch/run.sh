#!/usr/bin/env bash
# The same ViT trained by timm's train.py and by `vit-ablate train` on CIFAR-10, side by side, alternating
# which goes first: wall time end to end (process start to exit) and test top-1, per seed.
#
# Recipe (both): a ViT with 8×8 patches on 32×32 images (a 4×4 grid), D 128, depth 4, 4 heads, MLP 512,
# class token, 10 classes; the 50,000 training images, batch 128, AdamW lr 1e-3, wd 0.05, no warmup,
# cosine, Inception crop + horizontal flip, fp32 on the CPU, EPOCHS epochs; test on the 10,000 test
# images. Beyond the recipe each trainer keeps its own defaults, which is what a user of either gets
# (timm: colour jitter 0.4, label smoothing 0.1, its head init, cosine stepped per epoch; ours:
# vit_ablate/config.py, cosine stepped per update).
#
#   TIMM_TRAIN=/path/to/pytorch-image-models/train.py results/bench/timm_epoch/run.sh
#
# Environment: TIMM_TRAIN (required; train.py of the timm repository, run with this venv's timm),
# ARCHIVE (CIFAR-10 as JPEG class folders, default ../shared/data/cifar10-jpeg.tar.gz), unpacked afresh
# into $OUT/data before the first round, so the first run of each trainer reads a new folder (ours
# decodes it once and caches the tensor beside it; timm decodes every image every epoch), OUT (default
# runs/timm_epoch), SEEDS (default "1 2 3 4"), EPOCHS (default 1), TRAINERS (default "timm ours"),
# OURS_EXTRA (key=value overrides for ours). Appends to $OUT/epochs.csv: trainer,epochs,seed,wall_s,test_top1.
# Time it only on an otherwise idle machine.
set -euo pipefail
cd "$(dirname "$0")/../../.."
: "${TIMM_TRAIN:?set TIMM_TRAIN to the train.py of a pytorch-image-models checkout}"
ARCHIVE=${ARCHIVE:-../shared/data/cifar10-jpeg.tar.gz}
OUT=$(realpath -m "${OUT:-runs/timm_epoch}")
SEEDS=${SEEDS:-"1 2 3 4"}
EPOCHS=${EPOCHS:-1}
TRAINERS=${TRAINERS:-"timm ours"}
ROOT=$OUT/data/cifar10
mkdir -p "$OUT"
CSV=$OUT/epochs.csv
[ -f "$CSV" ] || echo "trainer,epochs,seed,wall_s,test_top1" > "$CSV"
if [ ! -d "$ROOT/train" ]; then
  echo "[race] unpacking $ARCHIVE into $OUT/data (a fresh folder: no cache of ours yet)"
  mkdir -p "$OUT/data" && tar -xzf "$ARCHIVE" -C "$OUT/data"
fi

timm_run() {  # timm_run SEED
  local dir=$OUT/timm-e$EPOCHS-s$1
  rm -rf "$dir"; mkdir -p "$dir"
  local start=$(date +%s.%N)
  python "$TIMM_TRAIN" --data-dir "$ROOT" --train-split train --val-split test \
    --model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=8 embed_dim=128 depth=4 num_heads=4 mlp_ratio=4.0 \
    --img-size 32 --crop-pct 1.0 --num-classes 10 -b 128 --opt adamw --lr 1e-3 --weight-decay 0.05 \
    --warmup-epochs 0 --epochs "$EPOCHS" --device cpu -j 2 --seed "$1" --output "$dir" --experiment run \
    > "$dir/train.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  local top1=$(tail -n 1 "$dir/run/summary.csv" | cut -d, -f4)  # epoch,train_loss,eval_loss,eval_top1,...
  echo "timm,$EPOCHS,$1,$wall,$top1" | tee -a "$CSV"
}

ours_run() {  # ours_run SEED
  local name=ours-e$EPOCHS-s$1
  rm -rf "${OUT:?}/$name"
  local start=$(date +%s.%N)
  vit-ablate train data.name=imagefolder data.root="$ROOT" \
    model.variant=Ti/8 model.dim=128 model.depth=4 model.heads=4 model.mlp_dim=512 \
    data.batch_size=128 optim.lr=1e-3 optim.weight_decay=0.05 optim.warmup_epochs=0 optim.warmup_steps=0 \
    optim.schedule=cosine augment.random_resized_crop=true augment.hflip=true \
    trainer.max_epochs="$EPOCHS" trainer.precision=32-true trainer.progress_bar=false seed="$1" \
    output_dir="$OUT" name="$name" ${OURS_EXTRA:-} > "$OUT/$name.log" 2>&1
  local wall=$(echo "$(date +%s.%N) - $start" | bc)
  local top1=$(python -c "import json,sys; print(100*json.load(open(sys.argv[1]))['test']['test/acc1'])" "$OUT/$name/result.json")
  echo "ours,$EPOCHS,$1,$wall,$top1" | tee -a "$CSV"
}

round=0
for seed in $SEEDS; do  # alternate who goes first, so that a drift of the machine hits both alike
  round=$((round + 1))
  order=$TRAINERS
  [ $((round % 2)) = 0 ] && order=$(echo "$TRAINERS" | tr ' ' '\n' | tac | tr '\n' ' ')
  for trainer in $order; do "${trainer}_run" "$seed"; done
done
