"""What in-training compression buys in wall-clock time, on the sMNIST configuration.

Two measurements, each reported as a ratio against a reference measured in the same run:

1. **Step time against state size.** One training step (forward, backward, AdamW) of the sMNIST
   model (1 block, d_model 8, batch 50, length 784) at N = 256 and at the sizes compression
   reaches, timed interleaved (round-robin, median of repeats) so that machine noise hits every
   size alike.
2. **Whole runs.** ``shrinkssm``'s own trainer on MNIST-5k for ``--steps`` steps: uncompressed
   (``compress.mode=none``) and compressed with each ``--tol``; total training seconds and their
   ratio, the time per step before and after each reduction point, and what the reductions
   themselves cost against the training time between two reduction points (goal: < 1%).

    python benchmarks/compress_speed.py                 # about 6 minutes on 2 CPU cores
    python benchmarks/compress_speed.py --steps 3000 --tol 0.01 0.02 0.04 --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.train import Trainer, apply_overrides
from shrinkssm.train.allocator import keep_freed_memory
from shrinkssm.train.config import RunConfig
from shrinkssm.train.metrics_log import read_metrics

import _common  # benchmarks/_common.py


PUBLISHED_INTERVAL = 5_000  # steps between reduction points in the paper's sMNIST run (200k steps)


def step_times(dims: list[int], repeats: int, batch: int = 50, length: int = 784) -> dict[int, float]:
    """Median seconds of one training step per state size, timed round-robin."""
    torch.manual_seed(0)
    x, y = torch.rand(batch, length, 1), torch.randint(0, 10, (batch,))
    models = {}
    for n in dims:
        model = SSMModel(ModelConfig(d_state=n), d_input=1, d_output=10)
        models[n] = (model, torch.optim.AdamW(model.parameters(), lr=1e-3))

    def one_step(n: int) -> float:
        model, opt = models[n]
        t0 = time.perf_counter()
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t0

    for n in dims:                                           # burn in
        one_step(n), one_step(n)
    samples: dict[int, list[float]] = {n: [] for n in dims}
    for _ in range(repeats):
        for n in dims:
            samples[n].append(one_step(n))
    return {n: statistics.median(s) for n, s in samples.items()}


def run(overrides: list[str], out: Path) -> tuple[dict, list[dict], dict]:
    cfg = apply_overrides(RunConfig(), overrides + ["train.progress=false"])
    summary = Trainer(cfg, out).fit()
    rows = read_metrics(out / "metrics.jsonl")
    history = json.loads((out / "reductions.json").read_text())
    return summary, rows, history


def phase_step_times(rows: list[dict]) -> list[tuple[str, float]]:
    """Median seconds per step for each stretch of constant state size (from metrics.jsonl)."""
    phases: dict[str, list[float]] = {}
    for r in rows:
        if "steps_per_second" in r:
            key = "+".join(str(d) for d in r["state_dims"])
            phases.setdefault(key, []).append(1.0 / r["steps_per_second"])
    return [(k, statistics.median(v)) for k, v in phases.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--tol", type=float, nargs="+", default=[0.01, 0.04])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128, 64, 47, 28, 13])
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's choice); 1 is the least noisy")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_freed_memory()          # as the trainer does (train.keep_freed_memory), for both parts
    _common.init_native_isa()
    _common.print_header("device:")

    print("\n1. One training step of the sMNIST model (batch 50, length 784, d_model 8)")
    times = step_times(args.sizes, args.repeats)
    ref = times[args.sizes[0]]
    print(f"{'N':>6} {'ms/step':>9} {'N=' + str(args.sizes[0]) + ' / N':>12}")
    for n, t in times.items():
        print(f"{n:>6} {1000 * t:>9.2f} {ref / t:>12.2f}x")

    print(f"\n2. Whole runs on MNIST-5k, {args.steps} steps (4 reduction points in the first 10%)")
    common = [f"train.steps={args.steps}", f"train.eval_every={args.steps}",
              f"train.checkpoint_every={args.steps}"]
    if args.threads:
        common.append(f"train.threads={args.threads}")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        results["baseline"] = run(common + ["compress.mode=none"], Path(tmp) / "baseline")
        for tol in args.tol:
            results[f"tol={tol}"] = run(common + [f"compress.tol={tol}"], Path(tmp) / f"tol{tol}")
    base_seconds = results["baseline"][0]["train_seconds"]
    print(f"{'run':>10} {'final N':>8} {'test acc':>8} {'train s':>8} {'speed-up':>8}")
    for name, (summary, rows, history) in results.items():
        print(f"{name:>10} {'+'.join(map(str, summary['state_dims'])):>8} "
              f"{summary['test_accuracy']:>8.4f} {summary['train_seconds']:>8.1f} "
              f"{base_seconds / summary['train_seconds']:>7.2f}x")
    for name, (summary, rows, history) in results.items():
        if name == "baseline":
            continue
        print(f"\n{name}: median time per step for each state size")
        for dims, seconds in phase_step_times(rows):
            print(f"  N={dims:>8}: {1000 * seconds:7.2f} ms/step")
        points = [e["step"] for e in history["events"]]
        costs = [e["reduction_seconds"] for e in history["events"]]
        evals = [e.get("eval_seconds", 0.0) for e in history["events"]]
        interval = points[0] if points else args.steps
        per_step = summary["train_seconds"] / summary["steps"]
        between = interval * per_step
        print(f"  reduction cost per point (HSVs + truncation + optimizer surgery): "
              f"{', '.join(f'{1000 * c:.0f} ms' for c in costs)}; training between two points "
              f"~{between:.1f} s -> {100 * max(costs, default=0) / between:.2f}% at most")
        print(f"  validation before/after each point (recorded in the history): "
              f"{', '.join(f'{1000 * c:.0f} ms' for c in evals)} "
              f"-> {100 * max(evals, default=0) / between:.2f}% at most")
        worst = max(costs, default=0.0)
        published = PUBLISHED_INTERVAL * ref      # 5,000 steps at the N = 256 step time of part 1
        print(f"  on the published sMNIST schedule (200k steps, a point every {PUBLISHED_INTERVAL:,} "
              f"steps, ~{published:.0f} s apart): {100 * worst / published:.3f}% at most; below 1% "
              f"for any run of >= {worst / (0.01 * ref * 0.1 / 4):,.0f} steps (4 points in the first 10%)")


if __name__ == "__main__":
    main()
