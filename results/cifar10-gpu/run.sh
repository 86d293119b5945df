#!/usr/bin/env bash
# The papers' CIFAR-10 ResNet18 protocol at full scale, one training seed, on one GPU:
# train the original, retrain for one full-class request (automobile) and for random forgetting
# (83 images), and run every method of configs/cifar10_gpu_resnet18_{full_class,random}.yaml.
# Usage: results/cifar10-gpu/run.sh DATA_ROOT [SEED]
#   DATA_ROOT is CIFAR-10 as an ImageFolder tree of JPEGs: DATA_ROOT/{train,test}/<class>/*.jpg
# Run from the repository root. The checkpoints (and cached per-sample importances) go to WORK
# (default runs/cifar10-gpu); the small files (results, timings, training sidecars, report, logs)
# are copied to OUT (default results/cifar10-gpu/<the card's name>). Rerun to resume: finished
# cells and trained models are kept.
set -euo pipefail
DATA_ROOT=${1:?usage: $0 DATA_ROOT [SEED]}
SEED=${2:-0}
PY=${PY:-python}
FULL=${FULL:-configs/cifar10_gpu_resnet18_full_class.yaml}
RAND=${RAND:-configs/cifar10_gpu_resnet18_random.yaml}
WORK=${WORK:-runs/cifar10-gpu}
CARD=$($PY -c "import torch; print(torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')")
SLUG=$(echo "$CARD" | tr 'A-Z ' 'a-z-' | tr -cd 'a-z0-9.-')
OUT=${OUT:-results/cifar10-gpu/$SLUG}
mkdir -p "$WORK" "$OUT/logs"
LOG="$OUT/logs/seed$SEED.log"
COMMON=(--data-root "$DATA_ROOT" --out "$WORK" --seeds "$SEED" --no-progress)
START=$(date +%s)
step() {  # step NAME ARGS...: one CLI command, its wall time in the log
  local name=$1; shift
  local t0; t0=$(date +%s)
  echo "== $(date -u +%FT%TZ) $name: $*" >> "$LOG"
  $PY -m lfssd_tutorial "$@" "${COMMON[@]}" >> "$LOG" 2>&1
  echo "== $name took $(( $(date +%s) - t0 )) s (total $(( $(date +%s) - START )) s)" >> "$LOG"
}
echo "card: $CARD; seed $SEED; $($PY -c 'import torch; print("torch", torch.__version__)')" >> "$LOG"
step train-full-class train --config "$FULL"
step train-random train --config "$RAND"
step forget-full-class forget --config "$FULL"
step forget-random forget --config "$RAND"
$PY -m lfssd_tutorial report "$WORK" --out "$OUT" >> "$LOG" 2>&1
cp "$WORK/results.jsonl" "$WORK/timings.jsonl" "$OUT/"
mkdir -p "$OUT/trainings"
cp "$WORK"/checkpoints/*.pt.json "$OUT/trainings/"
echo "== done in $(( $(date +%s) - START )) s" >> "$LOG"
tail -n 1 "$LOG"
