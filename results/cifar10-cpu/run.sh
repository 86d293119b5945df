#!/usr/bin/env bash
# Reduced-scale real CIFAR-10 results (CPU): full-class and random forgetting, 3 seeds, all methods.
# Usage: results/cifar10-cpu/run.sh DATA_ROOT
#   DATA_ROOT is CIFAR-10 as an ImageFolder tree of JPEGs: DATA_ROOT/{train,test}/<class>/*.jpg
# Run from the repository root. Scale: see configs/cifar10_jpeg_cpu_*.yaml (3,000 training and
# 1,000 test images, ResNet18 width 16, 12 epochs). One process per training seed, one torch
# thread each (the machine has two cores). The processes share one results file;
# every cell is appended under a file lock, and any command can be rerun to resume.
set -euo pipefail
DATA_ROOT=${1:?usage: $0 DATA_ROOT}
PY=${PY:-.venv/bin/python}
OUT=results/cifar10-cpu
FULL=configs/cifar10_jpeg_cpu_full_class.yaml
RAND=configs/cifar10_jpeg_cpu_random.yaml
COMMON=(--data-root "$DATA_ROOT" --out $OUT --threads 1 --no-progress)
one_seed() {
  local seed=$1
  for cfg in $FULL $RAND; do
    $PY -m lfssd_tutorial train  --config $cfg "${COMMON[@]}" --seeds $seed
    $PY -m lfssd_tutorial forget --config $cfg "${COMMON[@]}" --seeds $seed
  done
  if [ "$seed" = 0 ]; then
    $PY -m lfssd_tutorial sweep --config $FULL "${COMMON[@]}" --seed 0 --method lfssd --alphas 1.5 2 3 5 7 10 --lambdas 0.5 1
    $PY -m lfssd_tutorial sweep --config $FULL "${COMMON[@]}" --seed 0 --method ssd --alphas 2 3 5 7 10 --lambdas 0.5 1
  fi
}
for seed in 0 1 2; do
  one_seed $seed > $OUT/seed$seed.log 2>&1 &
done
wait
$PY -m lfssd_tutorial report $OUT
