#!/usr/bin/env bash
# Reduced-scale real CIFAR-10 results (CPU): full-class and random forgetting, 3 seeds, all methods.
# Usage: results/cifar10-cpu/run.sh DATA_ROOT
#   DATA_ROOT is CIFAR-10 as an ImageFolder tree of JPEGs: DATA_ROOT/{train,test}/<class>/*.jpg
# Run from the repository root. One torch thread: the machine these results come from had two
# cores shared with other jobs, where two threads ran slower than one.
set -euo pipefail
DATA_ROOT=${1:?usage: $0 DATA_ROOT}
PY=${PY:-.venv/bin/python}
OUT=results/cifar10-cpu
for cfg in configs/cifar10_jpeg_cpu_full_class.yaml configs/cifar10_jpeg_cpu_random.yaml; do
  $PY -m lfssd_tutorial train  --config $cfg --data-root "$DATA_ROOT" --out $OUT --threads 1 --no-progress
  $PY -m lfssd_tutorial forget --config $cfg --data-root "$DATA_ROOT" --out $OUT --threads 1 --no-progress
done
$PY -m lfssd_tutorial report $OUT
$PY -m lfssd_tutorial sweep --config configs/cifar10_jpeg_cpu_full_class.yaml --data-root "$DATA_ROOT" --out $OUT \
  --threads 1 --no-progress --method lfssd --alphas 1.5 2 2.5 3 5 10 --lambdas 0.5 1 2 --seed 0
$PY -m lfssd_tutorial sweep --config configs/cifar10_jpeg_cpu_full_class.yaml --data-root "$DATA_ROOT" --out $OUT \
  --threads 1 --no-progress --method ssd --alphas 2 3 5 7 10 --lambdas 0.5 1 2 --seed 0
