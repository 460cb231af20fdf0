"""Study: what should become of Adam's moments when a layer is replaced by its reduction?

Policies (shrinkssm.compress.swap_parameters): ``reset`` (fresh moments, step count kept),
``slice`` (the published code: keep the first r moments, which after re-diagonalisation belong
to other modes) and ``restart`` (fresh moments, step count 0). Grid: the default sMNIST run on
MNIST-5k at tau = 0.01 and 0.04, three seeds each. Judged on validation accuracy only (the test
split is never used for a choice).

    python experiments/optimizer_state.py            # about 45 minutes on 2 CPU cores
"""

from __future__ import annotations

import statistics

from _grid import run_point

POLICIES = ("reset", "slice", "restart")
TOLS = (0.01, 0.04)
SEEDS = (0, 1, 2)


def main() -> None:
    rows = []
    for tol in TOLS:
        for policy in POLICIES:
            accs, dims = [], []
            for seed in SEEDS:
                s = run_point("optimizer_state", f"tol{tol}-{policy}-seed{seed}",
                              [f"compress.tol={tol}", f"compress.optimizer_state={policy}",
                               f"train.seed={seed}"])
                accs.append(s["val_accuracy"])
                dims.append(s["state_dims"][0])
            rows.append((tol, policy, statistics.mean(accs), statistics.pstdev(accs), dims))
    print(f"{'tol':>5} {'policy':>8} {'val acc mean':>12} {'std':>6}  final N per seed")
    for tol, policy, mean, std, dims in rows:
        print(f"{tol:>5} {policy:>8} {mean:>12.4f} {std:>6.4f}  {dims}")


if __name__ == "__main__":
    main()
