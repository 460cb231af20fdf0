"""What keeping freed memory (``shrinkssm.train.allocator.keep_freed_memory``) does to a training step.

One training step (forward, backward, AdamW) of the sMNIST model (1 block, d_model 8, batch 50,
length 784) at several state sizes, in fresh processes with glibc's default allocator settings and
with ``keep_freed_memory()``: the two kinds of process alternate (``--rounds`` each) so that
machine noise hits both alike, and each reports the median of its steps. Printed: milliseconds
per step (median over rounds) and the ratio default / tuned.

    python benchmarks/allocator.py                  # 1 and 2 threads, N = 256, 64, 13
    python benchmarks/allocator.py --threads 2 --rounds 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

import _common  # benchmarks/_common.py

WORKER = r"""
import json, statistics, sys, time
tuned, threads, sizes, steps = sys.argv[1] == "tuned", int(sys.argv[2]), json.loads(sys.argv[3]), int(sys.argv[4])
import torch, torch.nn.functional as F
if tuned:
    from shrinkssm.train.allocator import keep_freed_memory
    assert keep_freed_memory(), "mallopt is not available here"
from shrinkssm.nn import ModelConfig, SSMModel
torch.set_num_threads(threads)
torch.manual_seed(0)
x, y = torch.rand(50, 784, 1), torch.randint(0, 10, (50,))
out = {}
for n in sizes:
    model = SSMModel(ModelConfig(d_state=n), d_input=1, d_output=10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 3):
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        if i >= 3:
            times.append(time.perf_counter() - t0)
    out[n] = statistics.median(times)
print(json.dumps(out))
"""


def measure(kind: str, threads: int, sizes: list[int], steps: int) -> dict[int, float]:
    result = subprocess.run([sys.executable, "-c", WORKER, kind, str(threads), json.dumps(sizes), str(steps)],
                            capture_output=True, text=True, check=True)
    return {int(k): v for k, v in json.loads(result.stdout).items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 64, 13])
    parser.add_argument("--rounds", type=int, default=3, help="processes of each kind, alternating")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per size and process")
    args = parser.parse_args()
    _common.print_header("device (this process; the workers are fresh processes of the same machine):")
    for threads in args.threads:
        samples: dict[str, dict[int, list[float]]] = {k: {n: [] for n in args.sizes} for k in ("default", "tuned")}
        for _ in range(args.rounds):
            for kind in ("default", "tuned"):
                for n, t in measure(kind, threads, args.sizes, args.steps).items():
                    samples[kind][n].append(t)
        print(f"\n{threads} thread(s): ms per training step, median of {args.rounds} processes each")
        print(f"{'N':>6} {'default':>9} {'tuned':>9} {'default/tuned':>14}")
        for n in args.sizes:
            d, t = (statistics.median(samples[k][n]) for k in ("default", "tuned"))
            print(f"{n:>6} {1000 * d:>9.2f} {1000 * t:>9.2f} {d / t:>13.2f}x")


if __name__ == "__main__":
    main()
