#!/usr/bin/env bash
# The record of how defaults_1epoch.csv was made (2026-12-07): one CIFAR-10 epoch of the race model
# (run.sh's recipe), timm's train.py against `vit-ablate train` as of git 77fbb7c (TREE, a worktree of that
# commit), then ours with one default changed at a time, seeds 1–4, one run at a time beside other work on
# the 2-core CPU (wall times are not comparable). ours_headtrunc ran with a local patch of that tree's
# model/heads.py: with PILOT_HEAD_TRUNC set, a non-zero head starts from trunc_normal(std=0.02), timm's.
# Resumable: a finished (arm, seed) is skipped. Writes $OUT/pilots.csv: arm,epochs,seed,wall_s,test_top1
set -uo pipefail
TREE=${TREE:-$HOME/pilot_tree}; export PYTHONPATH=$TREE
CIFAR=${CIFAR:-$HOME/data/cifar10}; OUT=${OUT:-$HOME/pilots/out}; CSV=$OUT/pilots.csv
EPOCHS=${EPOCHS:-1}; SEEDS=${SEEDS:-"1 2 3 4"}; ARMS=${ARMS:-"timm ours ours_headinit ours_const ours_ls ours_noclip ours_timmlike"}
mkdir -p "$OUT"; [ -f "$CSV" ] || echo "arm,epochs,seed,wall_s,test_top1" > "$CSV"
done_already() { grep -q "^$1,$EPOCHS,$2," "$CSV"; }
ours_extra() {
  case $1 in
    ours) echo "";;
    ours_headinit) echo "model.head_zero_init=false";;
    ours_const) echo "optim.schedule=constant";;
    ours_ls) echo "augment.label_smoothing=0.1";;
    ours_noclip) echo "optim.grad_clip=0";;
    ours_timmlike) echo "model.head_zero_init=false augment.label_smoothing=0.1 optim.grad_clip=0";;
    ours_headtrunc) echo "model.head_zero_init=false";;
    *) echo "${!1:-}";;
  esac
}
for seed in $SEEDS; do for arm in $ARMS; do
  done_already "$arm" "$seed" && continue
  dir=$OUT/$arm-e$EPOCHS-s$seed; start=$(date +%s.%N)
  if [ "$arm" = timm ]; then
    rm -rf "$dir"; mkdir -p "$dir"
    python "${TIMM_TRAIN:?set TIMM_TRAIN to the train.py of timm}" --data-dir "$CIFAR" --train-split train --val-split test \
      --model vit_tiny_patch16_224 --model-kwargs img_size=32 patch_size=8 embed_dim=128 depth=4 num_heads=4 mlp_ratio=4.0 \
      --img-size 32 --crop-pct 1.0 --num-classes 10 -b 128 --opt adamw --lr 1e-3 --weight-decay 0.05 \
      --warmup-epochs 0 --epochs $EPOCHS --device cpu -j 2 --seed "$seed" --output "$dir" --experiment run > "$dir/train.log" 2>&1 || { echo "timm failed $seed"; continue; }
    top1=$(tail -n 1 "$dir/run/summary.csv" | cut -d, -f4)
  else
    (cd $TREE && PILOT_HEAD_TRUNC=$([ $arm = ours_headtrunc ] && echo 1) python -m vit_ablate train data.name=imagefolder data.root="$CIFAR" \
      model.variant=Ti/8 model.dim=128 model.depth=4 model.heads=4 model.mlp_dim=512 model.num_classes=10 model.img_size=32 \
      data.batch_size=128 optim.lr=1e-3 optim.weight_decay=0.05 optim.warmup_epochs=0 optim.warmup_steps=0 \
      augment.random_resized_crop=true augment.hflip=true \
      trainer.max_epochs=$EPOCHS trainer.precision=32-true trainer.progress_bar=false seed="$seed" \
      output_dir="$OUT" name="$arm-e$EPOCHS-s$seed" $(ours_extra $arm) > "$OUT/$arm-e$EPOCHS-s$seed.log" 2>&1) || { echo "ours failed $arm $seed"; continue; }
    top1=$(python -c "import json,sys; print(100*json.load(open(sys.argv[1]))['test']['test/acc1'])" "$dir/result.json")
  fi
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  echo "$arm,$EPOCHS,$seed,$wall,$top1" | tee -a "$CSV"
done; done
