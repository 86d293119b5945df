"""The out-of-sample alpha studies (chapter 7) on the well-trained CIFAR-10 models.

Usage, from the repository root: python results/cifar10-alpha-study/run.py DATA_ROOT STUDY [a|b|both]

The models are the committed checkpoints of results/cifar10-resnet9-cpu (ResNet-9, all 50,000
training images, 3 training seeds). Each request forgets one whole CIFAR-10 class for one seed;
SSD and LFSSD each choose alpha and lambda with calibrate_alpha (lambda in {0.5, 1, 2}, candidates
spaced by sqrt(2), 256 retained training inputs), beside the fixed alphas 1.5 to 10 at
lambda = 1. Two studies (STUDY):

* first-five: airplane, automobile, bird, cat, deer. Its records.jsonl was produced with the
  rule as it was before it set aside the retained inputs the original assigns to the forgotten
  class (package version of commit 570d2b3); with today's package this command measures the
  rule as it is now;
* last-five: dog, frog, horse, ship, truck, with the rule that sets them aside, which was
  revised after the first study and never run on these classes before. Its calibration reads
  1,024 of D_f's training inputs (the importances use all of D_f).

Only the two requests per seed that the run retrained have retrained models, so the retrained
model's Acc(D_f) is taken as 0 for every request: all six retrained full-class models of that
run measure 0.00. The calibration's candidates are not evaluated one by one (that would cost one
pass over the test set each). Two workers (a, b) with one torch thread each split the 15
requests; every finished request and method is appended to the study's records file, and a
rerun continues from it.
"""

import sys

import torch

from lfssd_tutorial.alpha_study import run_alpha_study
from lfssd_tutorial.experiments import load_config

HERE = "results/cifar10-alpha-study"
MODELS = "results/cifar10-resnet9-cpu"
CONFIG = "configs/cifar10_cpu_resnet9_full_class.yaml"
STUDIES = {
    "first-five": {"targets": ["airplane", "automobile", "bird", "cat", "deer"], "records": "records.jsonl",
                   "forget_sample": None},
    "last-five": {"targets": ["dog", "frog", "horse", "ship", "truck"], "records": "records-last-five.jsonl",
                  "forget_sample": 1024},
}


def workers(targets: list[str]) -> dict[str, list[tuple[int, list[str]]]]:
    """The two workers' (seed, targets) shares: seeds 0 and 2 whole, seed 1 split 3 + 2."""
    return {"a": [(0, targets), (1, targets[:3])], "b": [(2, targets), (1, targets[3:])]}


def main(data_root: str, study: str, who: str = "both") -> None:
    torch.set_num_threads(1)
    config = load_config(CONFIG, data={"root": data_root})
    spec = STUDIES[study]
    shares = workers(spec["targets"])
    for worker in ("a", "b") if who == "both" else (who,):
        for seed, targets in shares[worker]:
            run_alpha_study(config, seeds=[seed], targets=targets, out_dir=MODELS,
                            records_file=f"{HERE}/{spec['records']}", retrained_forget=0.0,
                            evaluate_candidates=False, forget_sample=spec["forget_sample"])


if __name__ == "__main__":
    main(*sys.argv[1:])
