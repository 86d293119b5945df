#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one go: the CUDA tests (tests/test_cuda.py, skipped
# on machines without a GPU), the measurements behind the GPU defaults
# (benchmarks/gpu_tuning.py), the benchmark at its GPU sizes, then the dampening against an
# importance pass over 83 images (the papers' smallest forget set) on the ResNet18.
#
#   benchmarks/gpu_checks.sh [OUT_DIR]     (default: results/)
#
# Runs from the repository root with the current environment's python (PYTHON=... to
# choose another); the package is imported from the checkout. Logs go to OUT_DIR too.
# TESTS_TIMEOUT / TUNING_TIMEOUT / BENCH_TIMEOUT / DAMPENING_TIMEOUT (seconds, default 1800
# each) bound the steps; the benchmark writes its results after every model, so a run cut
# short keeps what it measured.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
"$py" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU"; print(torch.__version__, torch.cuda.get_device_name())' || exit 1
status=0
timeout "${TESTS_TIMEOUT:-1800}" "$py" -m pytest -q -p no:cacheprovider -o addopts="-ra" tests/test_cuda.py 2>&1 | tee "$out/gpu-tests.log" || status=1
timeout "${TUNING_TIMEOUT:-1800}" "$py" benchmarks/gpu_tuning.py --chunks 16 64 256 --batches 2 --reps 1 --damp-reps 10 --out "$out" 2>&1 | tee "$out/gpu-tuning.log" || status=1
timeout "${BENCH_TIMEOUT:-1800}" "$py" benchmarks/bench_importance.py --reps 3 --head-reps 9 --min-measurement 0.1 --out "$out" 2>&1 | tee "$out/gpu-bench.log" || status=1
timeout "${DAMPENING_TIMEOUT:-1800}" "$py" benchmarks/bench_importance.py --models resnet18 --only dampening --forget-images 83 --reps 9 --min-measurement 0.1 2>&1 | tee "$out/gpu-dampening.log" || status=1
exit $status
