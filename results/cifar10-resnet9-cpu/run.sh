#!/usr/bin/env bash
# Well-trained CIFAR-10 models on a 2-core CPU: full-class (automobile, cat) and random (83 samples)
# forgetting, 3 training seeds, every method, and alpha x lambda sweeps for choosing them on the
# validation half of the test set.
# Usage: results/cifar10-resnet9-cpu/run.sh DATA_ROOT [all|train|forget] [a|b|both]
#   DATA_ROOT is CIFAR-10 as an ImageFolder tree of JPEGs: DATA_ROOT/{train,test}/<class>/*.jpg
# Run from the repository root. Scale: configs/cifar10_cpu_resnet9_*.yaml (all 50,000 training
# images, ResNet-9 width 16, 8 epochs). Two workers (a, b) with one torch thread each (the machine
# has two cores) share the trainings and then the cells; each worker's cells need only models it
# trained itself, or (worker b's random-forgetting cells of seed 0) one that worker a trains early.
# The trained models are checkpoints under OUT/checkpoints with JSON sidecars (wall time,
# accuracies), committed as they finish; every finished cell is appended to OUT/results.jsonl under
# a file lock, and any phase can be rerun to resume.
set -euo pipefail
DATA_ROOT=${1:?usage: $0 DATA_ROOT [all|train|forget] [a|b|both]}
PHASE=${2:-all}
WHO=${3:-both}
PY=${PY:-.venv/bin/python}
OUT=${OUT:-results/cifar10-resnet9-cpu}
FULL=configs/cifar10_cpu_resnet9_full_class.yaml
RAND=configs/cifar10_cpu_resnet9_random.yaml
COMMON=(--data-root "$DATA_ROOT" --out $OUT --threads 1 --no-progress)
ALPHAS=(1.5 2 3 5 7 10)
LAMBDAS=(0.5 1)
export OMP_WAIT_POLICY=PASSIVE
run() { echo "== $(date -u +%FT%TZ) $*"; $PY -m lfssd_tutorial "$@" "${COMMON[@]}"; }
sweeps() {  # sweeps GRANULARITY CONFIG SEED TARGET...: SSD and LFSSD alpha x lambda grids
  local granularity=$1 cfg=$2 seed=$3; shift 3
  for target in "$@"; do
    for method in ssd lfssd; do
      run sweep --config "$cfg" --seed "$seed" --target "$target" --method $method --granularity $granularity \
        --alphas "${ALPHAS[@]}" --lambdas "${LAMBDAS[@]}"
    done
  done
}
RANDOM_TARGET=random-n83-s0

train_a() {
  run train --config $FULL --no-retrain --seeds 0 2
  run train --config $FULL --seeds 0
  run train --config $RAND --seeds 0
  run train --config $FULL --seeds 2
}
train_b() {
  run train --config $FULL --seeds 1
  run train --config $RAND --seeds 1
  run train --config $RAND --seeds 2
}
# The forget phase runs the rows in order of cost, so that a partial run has the cells that
# matter most: first the baselines that cost seconds and the batch-granularity dampening rows, then
# the alpha x lambda sweeps, then the per-sample rows (one Imp_D pass per seed and method, kept in
# OUT/checkpoints and shared by both configs), then Finetune and Amnesiac (about 7 and 4 minutes a cell),
# then the alpha x lambda sweeps of the per-sample variants (which read that Imp_D).
CHEAP=(Original Retrain UNSIR 'Bad Teacher' 'SSD (*' 'LFSSD (*' 'SSD-true-Fisher (*')
SAMPLE=('*-sample (*')
COSTLY=(Finetune Amnesiac)
rows() {  # rows CONFIG SEEDS PATTERN...: those rows of the config for those seeds ("0 2")
  local cfg=$1 seeds=$2; shift 2
  run forget --config "$cfg" --seeds $seeds --methods "$@"
}
forget_a() {
  rows $FULL "0 2" "${CHEAP[@]}"
  sweeps batch $FULL 0 automobile cat
  sweeps batch $FULL 2 automobile cat
  rows $FULL "0 2" "${SAMPLE[@]}"
  rows $FULL "0 2" "${COSTLY[@]}"
  sweeps sample $FULL 0 automobile cat
  sweeps sample $FULL 2 automobile cat
}
forget_b() {
  rows $FULL 1 "${CHEAP[@]}"
  rows $RAND "0 1 2" "${CHEAP[@]}"
  sweeps batch $FULL 1 automobile cat
  for seed in 0 1 2; do sweeps batch $RAND $seed $RANDOM_TARGET; done
  rows $FULL 1 "${SAMPLE[@]}"
  rows $RAND "0 1 2" "${SAMPLE[@]}"
  rows $FULL 1 "${COSTLY[@]}"
  rows $RAND "0 1 2" "${COSTLY[@]}"
  sweeps sample $FULL 1 automobile cat
  for seed in 0 1 2; do sweeps sample $RAND $seed $RANDOM_TARGET; done
}
worker() {  # worker a|b: its trainings, then its cells and sweeps
  local w=$1
  if [ "$PHASE" != forget ]; then "train_$w"; fi
  if [ "$PHASE" != train ]; then "forget_$w"; fi
}
mkdir -p $OUT/logs
if [ "$WHO" != b ]; then worker a >> $OUT/logs/worker-a.log 2>&1 & fi
if [ "$WHO" != a ]; then worker b >> $OUT/logs/worker-b.log 2>&1 & fi
wait
if [ "$PHASE" != train ] && [ "$WHO" = both ]; then $PY -m lfssd_tutorial report $OUT; fi
