"""What the custom-operator wrapping of the native kernels costs in eager mode.

The fused LRU kernels run as ``torch.ops.shrinkssm.lru_forward`` / ``lru_backward`` (registered with
``torch.library.custom_op``, see ``shrinkssm/ops/_native_backend.py``). The reference, timed in the
same run, calls the very same C entry points through a plain ``torch.autograd.Function`` (how the
library called them before the operators existed). In eager mode the library calls the operators'
implementations without the dispatcher (``shrinkssm/ops/_op_dispatch.py``); a third candidate,
``dispatcher``, forces every call through it (what ``torch.compile`` graphs and other callers of
``torch.ops.shrinkssm.*`` pay). Both run the whole LRU layer (``shrinkssm.nn.LRU``,
``scan="native"``) forward + backward (gradients of the input and every parameter), float32, one
thread by default, in interleaved rounds (one call of each per round, after a burn-in); the median
and the minimum over rounds are printed with the ratio reference / operator (> 1: the operator path is
faster). Shapes:

* ``smnist``: batch 50, length 784, d_model 8, N 256 (the sMNIST layer)
* ``smnist13``: the same at N 13 (a compressed layer)
* ``tiny``:   batch 1, length 8, d_model 2, N 16 (almost nothing but dispatch: the per-call overhead)

Usage::

    python benchmarks/custom_ops.py                 # the path in use (the best this CPU runs)
    python benchmarks/custom_ops.py --isa avx2      # force an instruction-set path
    python benchmarks/custom_ops.py --clock cpu     # CPU time of this thread: robust when the cores are busy
    python benchmarks/custom_ops.py --rounds 60 --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from shrinkssm import ops
from shrinkssm.nn import LRU
from shrinkssm.ops import _native_backend as nb
from shrinkssm.ops import _op_dispatch

SHAPES = {"smnist": (50, 784, 8, 256), "smnist13": (50, 784, 8, 13), "tiny": (1, 8, 2, 16)}  # B, L, H, N


class _FunctionLRU(torch.autograd.Function):
    """The fused kernels through a plain autograd.Function (the reference)."""

    @staticmethod
    def forward(ctx, u, lr, li, Br, Bi, Cr, Ci, chunk):
        nb_, L, Hi = u.shape
        Ho, Np = Cr.shape
        n_chunks = (L + chunk - 1) // chunk
        y, hlr, hli = u.new_empty(nb_, L, Ho), u.new_empty(nb_, Np), u.new_empty(nb_, Np)
        ckr, cki = u.new_empty(nb_, n_chunks, Np), u.new_empty(nb_, n_chunks, Np)
        p = nb._ptr
        nb._ext.lru_forward(0, torch.get_num_threads(), nb_, L, Hi, Ho, Np, chunk, p(u), p(lr), p(li), p(Br),
                            p(Bi), p(Cr), p(Ci), 0, 0, p(y), p(hlr), p(hli), p(ckr), p(cki))
        ctx.chunk = chunk
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(u, lr, li, Br, Bi, Cr, Ci, ckr, cki)
        return y, hlr, hli

    @staticmethod
    def backward(ctx, gy, ghlr, ghli):
        u, lr, li, Br, Bi, Cr, Ci, ckr, cki = ctx.saved_tensors
        nb_, L, Hi = u.shape
        Ho, Np = Cr.shape
        gy = nb._flat(gy)
        out = [torch.empty_like(t) for t in (u, Br, Bi, Cr, Ci, lr, li)]
        p = nb._ptr
        nb._ext.lru_backward(0, torch.get_num_threads(), nb_, L, Hi, Ho, Np, ctx.chunk, p(u), p(lr), p(li),
                             p(Br), p(Bi), p(Cr), p(Ci), p(ckr), p(cki), p(gy), 0, 0, *(p(t) for t in out), 0, 0)
        gu, gBr, gBi, gCr, gCi, glr, gli = out
        return gu, glr, gli, gBr, gBi, gCr, gCi, None


def function_lru_fused(u, lam, B, C, h0, chunk=None):
    """Drop-in for ``nb.lru_fused`` (no initial state; float32) through :class:`_FunctionLRU`."""
    assert h0 is None and u.dtype == torch.float32
    N = lam.shape[0]
    pad = -N % nb._lanes(u.dtype)
    lr, li = nb._split_padded(lam, pad)
    Br, Bi = nb._split_padded(B.transpose(0, 1), pad)
    Cr, Ci = nb._split_padded(C, pad)
    y, hlr, hli = _FunctionLRU.apply(nb._flat(u), lr, li, Br, Bi, Cr, Ci, chunk or nb.CHECKPOINT_CHUNK)
    return y, torch.complex(hlr[:, :N], hli[:, :N])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--isa", choices=ops.native_isas() or None, help="instruction-set path to force")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: this thread's CPU time (robust on a busy machine; needs --threads 1)")
    args = ap.parse_args()
    if not ops.native_available():
        raise SystemExit("the native extension is not built: nothing to compare")
    torch.set_num_threads(args.threads)
    if args.clock == "cpu" and args.threads != 1:
        raise SystemExit("--clock cpu measures the calling thread only: use it with --threads 1")
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    if args.isa:
        ops.set_native_isa(args.isa)
    operator_fused = nb.lru_fused
    print(f"CPU: {cpu_name()}; native path {ops.native_isa()} (of {', '.join(ops.native_isas())}); "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s); load average "
          f"{os.getloadavg()[0]:.2f}; {args.clock} clock, {args.rounds} rounds")
    print(f"{'shape':9s} {'operator ms':>20s} {'Function ms':>20s} {'dispatcher ms':>20s} "
          f"{'Function / operator':>22s} {'Function / dispatcher':>22s}")
    for name, (b, L, H, N) in SHAPES.items():
        torch.manual_seed(0)
        layer = LRU(H, N, scan="native")
        u = torch.randn(b, L, H, requires_grad=True)
        candidates = {"operator": operator_fused, "function": function_lru_fused, "dispatcher": operator_fused}
        direct = _op_dispatch.direct
        times = {k: [] for k in candidates}
        calls = 20 if name == "tiny" else 1  # time many calls of the tiny shape together
        try:
            for r in range(args.rounds + 3):
                for key, fused in candidates.items():
                    nb.lru_fused = fused
                    _op_dispatch.direct = (lambda args: False) if key == "dispatcher" else direct
                    start = clock()
                    for _ in range(calls):
                        layer(u).sum().backward()
                    if r >= 3:  # burn-in
                        times[key].append((clock() - start) / calls)
        finally:
            nb.lru_fused = operator_fused
            _op_dispatch.direct = direct
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        low = {k: min(v) * 1e3 for k, v in times.items()}
        cell = lambda k: f"{med[k]:.3f} (min {low[k]:.3f})"  # noqa: E731
        ratio = lambda k: f"{med['function'] / med[k]:.3f} (min {low['function'] / low[k]:.3f})"  # noqa: E731
        print(f"{name:9s} {cell('operator'):>20s} {cell('function'):>20s} {cell('dispatcher'):>20s} "
              f"{ratio('operator'):>22s} {ratio('dispatcher'):>22s}")


if __name__ == "__main__":
    main()
