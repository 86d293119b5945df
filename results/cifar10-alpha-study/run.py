"""The out-of-sample alpha study (chapter 7) on the well-trained CIFAR-10 models.

Usage, from the repository root: python results/cifar10-alpha-study/run.py DATA_ROOT [a|b|both]

The models are the committed checkpoints of results/cifar10-resnet9-cpu (ResNet-9, all 50,000
training images, 3 training seeds). The requests are full-class forgetting of the first five
CIFAR-10 classes (airplane, automobile, bird, cat, deer) for each seed; SSD and LFSSD each choose
alpha and lambda with calibrate_alpha's frozen rule (lambda in {0.5, 1, 2}, candidates spaced by
sqrt(2)), beside the fixed alphas 1.5 to 10 at lambda = 1. Only the two requests per seed that the
run retrained have retrained models, so the retrained model's Acc(D_f) is taken as 0 for every
request: all six retrained full-class models of that run measure 0.00. The calibration's
candidates are not evaluated one by one (that would cost one pass over the test set each).
Two workers (a, b) with one torch thread each split the 15 requests; every finished request and
method is appended to records.jsonl, and a rerun continues from it.
"""

import sys

import torch

from lfssd_tutorial.alpha_study import run_alpha_study
from lfssd_tutorial.experiments import load_config

HERE = "results/cifar10-alpha-study"
MODELS = "results/cifar10-resnet9-cpu"
CONFIG = "configs/cifar10_cpu_resnet9_full_class.yaml"
TARGETS = ["airplane", "automobile", "bird", "cat", "deer"]
WORKERS = {"a": [(0, TARGETS), (1, TARGETS[:3])], "b": [(2, TARGETS), (1, TARGETS[3:])]}


def main(data_root: str, who: str = "both") -> None:
    torch.set_num_threads(1)
    config = load_config(CONFIG, data={"root": data_root})
    for worker in ("a", "b") if who == "both" else (who,):
        for seed, targets in WORKERS[worker]:
            run_alpha_study(config, seeds=[seed], targets=targets, out_dir=MODELS,
                            records_file=f"{HERE}/records.jsonl", retrained_forget=0.0,
                            evaluate_candidates=False)


if __name__ == "__main__":
    main(*sys.argv[1:])
