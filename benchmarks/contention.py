"""Do 2 threads hold up when the other core is busy? A training step on 1 and on 2 threads, on an
idle machine and with every other core kept busy.

What is timed: one training step of the sMNIST model (``SSMModel(ModelConfig(d_state=N),
d_input=1, d_output=10)``, batch 50, length 784: forward, cross-entropy, backward, AdamW with the
trainer's parameter groups), with ``torch.set_num_threads(1)`` and ``(2)`` alternating step by
step. The conditions alternate in blocks: *idle* (nothing of ours running beside the step) and
*loaded* (``--hogs`` plain CPU-bound processes, a Python busy loop like ``while True: pass``,
started for the block and killed after it; by default one per core beyond the first). Every block starts with one
untimed step per thread count. Reported: the median step time per condition and thread count,
the ratio time(2 threads) / time(1 thread) per condition (median over all steps, and the worst
block), and the target of the speed issue: under load, 2 threads never more than 10% slower than
1 (ratio <= 1.10).

"Idle" only means that this script adds no load: on a shared machine other processes may be
running; the load average is printed before and after.

Usage::

    python benchmarks/contention.py                    # N = 256, 5 blocks of 10 steps each
    python benchmarks/contention.py --isa avx2         # on the avx2 path (torch / MKL restricted too)
    python benchmarks/contention.py --sizes 256 13 --blocks 8
    python benchmarks/contention.py --omp-wait-policy passive   # threads sleep instead of spinning
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time

import torch

import _common  # benchmarks/_common.py

# A plain CPU-bound loop that also ends by itself if this script dies without killing it (it checks
# every few tens of milliseconds whether its parent is still the one that started it).
HOG = "import os\nparent = os.getppid()\nwhile os.getppid() == parent:\n    for _ in range(1_000_000):\n        pass\n"


def start_hogs(n: int) -> list[subprocess.Popen]:
    hogs = [subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.DEVNULL) for _ in range(n)]
    time.sleep(0.3)  # let them start spinning before the first timed step
    return hogs


def stop_hogs(hogs: list[subprocess.Popen]) -> None:
    for p in hogs:
        if p.poll() is None:
            p.kill()
    for p in hogs:
        p.wait()


def run_block(steps: dict, rounds: int) -> dict:
    """{(n, threads): [seconds, ...]}: one untimed step each, then ``rounds`` rounds alternating
    the thread counts (and sizes) step by step."""
    out = {key: [] for key in steps}
    for (n, threads), step in steps.items():
        _common.set_threads(threads)
        step()
    for _ in range(rounds):
        for key, step in steps.items():
            _common.set_threads(key[1])
            t0 = time.perf_counter()
            step()
            out[key].append(time.perf_counter() - t0)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256], help="state sizes N")
    parser.add_argument("--blocks", type=int, default=5, help="blocks per condition (idle / loaded alternate)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per thread count and block")
    parser.add_argument("--hogs", type=int, default=max(1, (os.cpu_count() or 2) - 1),
                        help="busy processes in the loaded condition (default: cores - 1)")
    parser.add_argument("--isa", default=None, help="native path to force (re-runs this script in a new process)")
    parser.add_argument("--kernels-only", action="store_true",
                        help="with --isa: restrict only our kernels, not torch's / MKL's dispatch")
    parser.add_argument("--omp-wait-policy", choices=["active", "passive"], default=None,
                        help="OMP_WAIT_POLICY of the timed process (default: the OpenMP runtime's own)")
    args = parser.parse_args(argv)
    env = {}
    if args.isa is not None:
        valid = _common.native_isas()
        if args.isa not in valid:
            raise SystemExit(f"contention.py: --isa {args.isa}: not a native path of this CPU; "
                             f"valid: {', '.join(valid) or 'none (native kernels not available)'}")
        env.update(_common.isa_env(args.isa, not args.kernels_only))
    if args.omp_wait_policy:
        env["OMP_WAIT_POLICY"] = args.omp_wait_policy.upper()
    _common.reexec_with_env(env)   # these are read at start-up: a new process if they are not set
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the busy processes are killed
    _common.init_native_isa()
    _common.print_header("device:")
    print(f"  OMP_WAIT_POLICY: {os.environ.get('OMP_WAIT_POLICY', 'unset (runtime default)')}")
    print(f"  sMNIST training step, N in {args.sizes}; {args.blocks} blocks per condition, {args.steps} "
          f"steps per thread count and block; loaded = {args.hogs} busy process(es)")

    x, y = _common.smnist_batch()
    steps = {}
    for n in args.sizes:
        model, opt = _common.smnist_model(n)
        step = _common.train_step_fn(model, opt, x, y)
        for threads in (1, 2):
            steps[(n, threads)] = step
    samples = {cond: {key: [] for key in steps} for cond in ("idle", "loaded")}
    block_ratios = {cond: {n: [] for n in args.sizes} for cond in ("idle", "loaded")}
    cpu_share = {cond: [] for cond in ("idle", "loaded")}  # this process's CPU seconds per wall second
    for b in range(args.blocks):
        for cond in ("idle", "loaded"):
            hogs = start_hogs(args.hogs) if cond == "loaded" else []
            try:
                t0, c0 = time.perf_counter(), time.process_time()
                got = run_block(steps, args.steps)
                cpu_share[cond].append((time.process_time() - c0) / (time.perf_counter() - t0))
            finally:
                stop_hogs(hogs)
            for key, s in got.items():
                samples[cond][key] += s
            for n in args.sizes:
                block_ratios[cond][n].append(statistics.median(got[(n, 2)]) / statistics.median(got[(n, 1)]))
        print(f"  block {b + 1}/{args.blocks} done", flush=True)

    print(f"\n{'N':>5s} {'condition':>9s} {'1 thread ms':>12s} {'2 threads ms':>13s} {'time(2)/time(1)':>16s} "
          f"{'worst block':>12s}  target (loaded: <= 1.10)")
    for n in args.sizes:
        for cond in ("idle", "loaded"):
            t1 = statistics.median(samples[cond][(n, 1)])
            t2 = statistics.median(samples[cond][(n, 2)])
            worst = max(block_ratios[cond][n])
            verdict = ("met" if t2 / t1 <= 1.10 and worst <= 1.10 else "MISSED") if cond == "loaded" else ""
            print(f"{n:>5d} {cond:>9s} {1e3 * t1:>12.1f} {1e3 * t2:>13.1f} {t2 / t1:>16.2f} {worst:>12.2f}  {verdict}")
    print(f"\nthis process's CPU seconds per wall-clock second (both thread counts together): "
          f"idle {statistics.mean(cpu_share['idle']):.2f}, loaded {statistics.mean(cpu_share['loaded']):.2f} "
          "(spinning OpenMP threads count too)")
    print(f"load average (1 min) at the end: {_common.load_average():.2f}")


if __name__ == "__main__":
    main()
