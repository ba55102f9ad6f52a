#!/usr/bin/env bash
# Pre-train at 32 px, fine-tune at 48 px on other classes (paper §3.2, and Table 8's metric: few-shot
# linear accuracy of the pre-trained model on classes it never saw). CIFAR-10 only:
#   A = airplane automobile bird cat deer   (pre-training, 32 px: 4-px patches, an 8×8 token grid)
#   B = dog frog horse ship truck           (fine-tuning, 48 px: the same patches, a 12×12 grid)
# Runs (experiments/cpu_cifar10_p4.yaml's ViT: D 64, depth 4, 4 heads; AdamW 1e-3, paper Table 3 clipping):
#   pre      A at 32 px, PRE_EPOCHS epochs
#   fewshot  the pre-trained model's 1/5/10/25-shot linear accuracy on B (frozen features, 32 px)
#   fine     B at 48 px from init.path=pre's last.ckpt (1-D table resampled 8×8 → 12×12; init.exclude=[head]:
#            a new zero-initialised head)
#   scratch  B at 48 px from a random init, the same budget (FINE_EPOCHS epochs), the same seed
# Cost, measured on the idle 2-core CPU (seed 0, 2026-11-25): 23m26s for the whole script (pre 337 s,
# fine 487 s, scratch 492 s of training runs, the rest few-shot and start-up). Results: results/transfer/README.md.
#
#   results/transfer/run.sh --dry-run     # every step on 64 images, 2 steps each (about a minute)
#   nohup results/transfer/run.sh > runs/transfer.log 2>&1 &
#
# Environment: CIFAR_ROOT (class folders train/ and test/; default /root/data/cifar10, extracted from
# ../shared/data/cifar10-jpeg.tar.gz when missing), OUT (runs; default runs/transfer, dry run
# runs/transfer_dry), SEED (0), PRE_EPOCHS (10), FINE_EPOCHS (5).
set -euo pipefail
cd "$(dirname "$0")/../.."

DRY_RUN=0
case "${1:-}" in
  --dry-run) DRY_RUN=1 ;;
  "") ;;
  *) echo "run.sh: unknown argument '$1' (use --dry-run or nothing)" >&2; exit 2 ;;
esac

CIFAR_ROOT=${CIFAR_ROOT:-/root/data/cifar10}
SEED=${SEED:-0}
PRE_EPOCHS=${PRE_EPOCHS:-10}
FINE_EPOCHS=${FINE_EPOCHS:-5}
if [ $DRY_RUN = 1 ]; then
  OUT=${OUT:-runs/transfer_dry}
  SMALL=(data.train_subset=64 data.val_split=16 data.batch_size=16 trainer.max_steps=2 trainer.limit_val_batches=1
         evaluate.test=false data.num_workers=0)
  FEWSHOT=(evaluate.fewshot_shots=[1] evaluate.fewshot_draws=1)
else
  OUT=${OUT:-runs/transfer}
  SMALL=(data.val_split=1000)
  FEWSHOT=(evaluate.fewshot_shots=[1,5,10,25] evaluate.fewshot_draws=3)
fi

if [ ! -d "$CIFAR_ROOT/train" ]; then
  mkdir -p "$(dirname "$CIFAR_ROOT")"
  tar -xzf ../shared/data/cifar10-jpeg.tar.gz -C "$(dirname "$CIFAR_ROOT")"
fi

# the two class halves as image folders of links (nothing is copied)
SPLITS=$OUT/splits
split() {  # split NAME CLASS...
  local name=$1; shift
  for part in train test; do
    mkdir -p "$SPLITS/$name/$part"
    for cls in "$@"; do ln -sfn "$(realpath "$CIFAR_ROOT/$part/$cls")" "$SPLITS/$name/$part/$cls"; done
  done
}
split A airplane automobile bird cat deer
split B dog frog horse ship truck

BASE=(experiments/cpu_cifar10_p4.yaml data.train_subset=null model.num_classes=5 seed=$SEED output_dir=$OUT)
train() { vit-ablate train "${BASE[@]}" "$@" "${SMALL[@]}"; }

train name=pre data.root="$SPLITS/A" model.img_size=32 trainer.max_epochs=$PRE_EPOCHS
vit-ablate analyze "$OUT/pre/checkpoints/last.ckpt" --data "$SPLITS/B" --images 0 --out "$OUT/fewshot_pre_on_B" \
  data.val_split=0 "${FEWSHOT[@]}"
FINE=(data.root="$SPLITS/B" data.img_size=48 model.img_size=48 trainer.max_epochs=$FINE_EPOCHS)
# the head of classes A means nothing for B: a new zero-initialised one (paper §3.1)
train name=fine "${FINE[@]}" init.path="$OUT/pre/checkpoints/last.ckpt" 'init.exclude=[head]'
train name=scratch "${FINE[@]}"

vit-ablate report "$OUT/fine" "$OUT/scratch" --by init.path --out "$OUT/report"
echo "[transfer] init summary: $OUT/fine/init_summary.json; few-shot: $OUT/fewshot_pre_on_B; report: $OUT/report"
