"""Where the time of one sMNIST training step goes, and how it falls with the state size N.

The published sMNIST model (``SSMModel(ModelConfig(d_state=N), d_input=1, d_output=10)``: 1 block,
d_model 8, batch 50, length 784), one step = forward, cross-entropy backward, optimizer step,
zero_grad, one torch thread. Two configurations, timed round-robin in one run (by default in
rounds of 5 consecutive steps of one model, the last 4 timed, because a training step follows the
previous step of the same model; ``--order interleaved`` times single steps that each follow another
model's step, with its caches cold, which costs the small model more):

* ``now``:    the library as the trainer runs it (fused block tail, the optimizer of
              ``shrinkssm.train.optim.build_optimizer``: fused AdamW);
* ``unfused``: the same model with the block tail as separate torch operations
              (``block.fused_tail = False``: skip term, GELU, GLU and residual as torch ops, the
              batch norm's gradients summed by autograd) and torch's default per-parameter
              AdamW. The reference of the ratios. (The native batch norm, the encoder and the
              LRU's parameter maps are the same in both: to compare with an older version of
              the library, run this script from that version's checkout.)

Printed: the CPU model and native code path, a profiler table of the ``now`` step at the smallest
N (top entries by self CPU time), the median step time per N for both (wall clock and thread CPU
time; on a shared machine the CPU time is the steadier of the two), the ratio step(N_min) /
step(N_max) -- the target is <= 0.2 at 13 / 256 -- and unfused / now per N. ``--widths`` adds the
crossover of the fused block tail against the torch tail over d_model (forward + backward).

    python benchmarks/step_cost.py                          # about 2 minutes on 2 shared cores
    python benchmarks/step_cost.py --repeats 40 --isa avx2  # force a native path
    python benchmarks/step_cost.py --widths 8 16 24 32 --sizes 256 13
    python benchmarks/step_cost.py --sizes 256 13 --order interleaved  # every step after another model's
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
import torch.nn.functional as F

from shrinkssm.nn import ModelConfig, SSMModel
from shrinkssm.ops import _native_backend
from shrinkssm.ops.block import fused_block_available, glu_block, glu_block_ref
from shrinkssm.train.allocator import keep_freed_memory
from shrinkssm.train.config import TrainConfig
from shrinkssm.train.optim import build_optimizer


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def build(n: int, variant: str, lr: float = 1e-3):
    """(model, optimizer) of the sMNIST model with N = n states, ``variant`` "now" or "unfused"."""
    torch.manual_seed(0)
    model = SSMModel(ModelConfig(d_state=n), d_input=1, d_output=10)
    if variant == "now":
        return model, build_optimizer(model, TrainConfig(lr=lr))
    for block in model.blocks:
        block.fused_tail = False
    return model, torch.optim.AdamW(model.parameters(), lr=lr, foreach=False)


def step_fn(model, opt, x, y):
    def step() -> None:
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    return step


def round_robin(fns: dict, repeats: int, run: int = 1) -> dict:
    """Median (wall seconds, thread CPU seconds) per function, called round-robin.

    ``run = 1``: one call per function per round, so that every call follows a call of another
    function (another model's step: its caches are cold). ``run = k > 1``: k consecutive calls per
    function per round, of which the last k - 1 are timed, as steps follow each other in training
    (a step then starts on what the previous step of the same model left in the caches)."""
    for f in fns.values():                                   # burn in
        f(), f()
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(repeats):
        for k, f in fns.items():
            for i in range(run):
                t0, c0 = time.perf_counter(), time.thread_time()
                f()
                if i or run == 1:
                    cpu[k].append(time.thread_time() - c0)
                    wall[k].append(time.perf_counter() - t0)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in fns}


def profile_table(step, rows: int) -> str:
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows,
                                     max_name_column_width=48)


def widths(hs: list[int], repeats: int, batch: int = 50, length: int = 784) -> None:
    print(f"\nFused block tail against the torch tail, forward + backward, batch {batch}, length "
          f"{length} (ms, thread CPU time)")
    print(f"{'H':>4} {'fused':>8} {'torch':>8} {'torch/fused':>12}")
    for h in hs:
        torch.manual_seed(0)
        t = [torch.randn(batch, length, h, requires_grad=True) for _ in range(3)]
        d = torch.randn(h, requires_grad=True)
        w = (torch.randn(2 * h, h) / h**0.5).requires_grad_()
        b = torch.randn(2 * h, requires_grad=True)
        g = torch.randn(batch, length, h)

        def run(f):
            return lambda: f(t[0], t[1], t[2], d, w, b).backward(g)
        res = round_robin({"fused": run(glu_block), "torch": run(glu_block_ref)}, repeats)
        f_ms, r_ms = 1e3 * res["fused"][1], 1e3 * res["torch"][1]
        print(f"{h:>4} {f_ms:>8.3f} {r_ms:>8.3f} {r_ms / f_ms:>11.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 128, 64, 47, 28, 13])
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--rows", type=int, default=20, help="profiler table rows")
    parser.add_argument("--isa", default=None, help="force the native path (base, avx2, avx512)")
    parser.add_argument("--widths", type=int, nargs="*", default=None,
                        help="also time the fused block tail against torch at these d_model")
    parser.add_argument("--no-unfused", action="store_true", help="skip the reference configuration")
    parser.add_argument("--order", choices=("consecutive", "interleaved"), default="consecutive",
                        help="consecutive (default): rounds of 5 steps of one model, the last 4 timed, "
                        "as training runs them; interleaved: one step per model per round, each after "
                        "another model's step (cold caches)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    keep_freed_memory()                                      # as the trainer does by default
    ext = _native_backend._ext
    if args.isa:
        if ext is None:
            raise SystemExit("step_cost: --isa needs the native extension, which is not loaded")
        ext.set_isa(args.isa)
    print(f"{cpu_model()}; torch {torch.__version__}, 1 thread; native path: "
          f"{_native_backend.native_isa() or 'none (not compiled)'}; fused block tail: "
          f"{'native' if fused_block_available() else 'torch fallback'}")

    torch.manual_seed(0)
    x, y = torch.rand(50, 784, 1), torch.randint(0, 10, (50,))
    variants = ["now"] if args.no_unfused else ["now", "unfused"]
    fns = {}
    for n in args.sizes:
        for v in variants:
            fns[(n, v)] = step_fn(*build(n, v), x, y)

    n_min, n_max = min(args.sizes), max(args.sizes)
    print(f"\nProfile of one 'now' step at N={n_min} (5 steps, top {args.rows} by self CPU time):")
    print(profile_table(fns[(n_min, "now")], args.rows))

    run = 5 if args.order == "consecutive" else 1
    res = round_robin(fns, args.repeats, run)
    how = (f"{args.repeats} rounds of {run} consecutive steps per model, the last {run - 1} timed"
           if run > 1 else f"{args.repeats} steps per model, interleaved")
    print(f"Step time (median; {how}), ms: wall clock / thread CPU time")
    head = f"{'N':>5} {'now wall':>9} {'now cpu':>8}"
    if "unfused" in variants:
        head += f" {'unfused wall':>13} {'unfused cpu':>12} {'unfused/now cpu':>16}"
    print(head)
    for n in args.sizes:
        w, c = res[(n, "now")]
        line = f"{n:>5} {1e3 * w:>9.2f} {1e3 * c:>8.2f}"
        if "unfused" in variants:
            bw, bc = res[(n, "unfused")]
            line += f" {1e3 * bw:>13.2f} {1e3 * bc:>12.2f} {bc / c:>15.2f}x"
        print(line)
    for v in variants:
        (w0, c0), (w1, c1) = res[(n_min, v)], res[(n_max, v)]
        print(f"{v:>7}: step(N={n_min}) / step(N={n_max}) = {w0 / w1:.3f} wall, {c0 / c1:.3f} cpu"
              f"   (target <= 0.2 at 13 / 256)")
    if args.widths:
        widths(args.widths, args.repeats)


if __name__ == "__main__":
    main()
