"""The fused LRU kernel alone, forward and backward, per native path and state size.

At the sMNIST shape (batch 50, length 784, 8 input and output channels), one thread, float32:
the native kernel's forward and its backward (the recomputation from checkpoints, the adjoint
pass and every gradient), called directly on the real arrays it takes, for each state size N and
each native path this CPU supports (``base``, ``avx2``, ``avx512``; only the kernels' path is
switched here, torch's is not), medians of round-robin rounds of thread CPU time. The reference
timed in the same run is the whole layer's recurrence through ``backend="ref"`` (torch
operations), forward + backward, at the same N.

Small N (as after compression) is where the kernels' fixed cost per step shows: states that fill
one or two vectors of the path run a code with the state in registers (``lru_fwd_small`` and
``lru_bwd_small`` in ``src/shrinkssm/ops/_native/kernels.h``), wider states the generic code.

    python benchmarks/lru_kernel.py                       # N = 13, 16, 32, 64, 256; about a minute
    python benchmarks/lru_kernel.py --sizes 13 --rounds 40
"""

from __future__ import annotations

import argparse
import time

import torch

import _common
from shrinkssm.ops import _native_backend, lru_recurrence
from shrinkssm.ops._native_backend import CHECKPOINT_CHUNK

BATCH, LENGTH, CHANNELS = 50, 784, 8


def arrays(n: int, seed: int = 0):
    """Inputs of the kernel for N = n states (padded to the float32 lanes) and of the reference."""
    g = torch.Generator().manual_seed(seed)
    np_ = n + (-n % _native_backend._lanes(torch.float32))
    r = 0.9 + 0.099 * torch.rand(n, generator=g)
    phase = 6.28 * torch.rand(n, generator=g)
    lam = torch.polar(r, phase)                                               # (N,) complex64
    B = torch.randn(n, CHANNELS, generator=g, dtype=torch.complex64) / CHANNELS**0.5
    C = torch.randn(CHANNELS, n, generator=g, dtype=torch.complex64) / n**0.5
    u = torch.randn(BATCH, LENGTH, CHANNELS, generator=g)
    pad = np_ - n
    lr, li = (torch.nn.functional.pad(t, (0, pad)).contiguous() for t in (lam.real, lam.imag))
    Br, Bi = (torch.nn.functional.pad(t, (0, pad)).contiguous() for t in (B.T.real, B.T.imag))
    Cr, Ci = (torch.nn.functional.pad(t, (0, pad)).contiguous() for t in (C.real, C.imag))
    return u, (lr, li, Br, Bi, Cr, Ci), (lam, B, C), np_


def measure(n: int, paths: list[str], rounds: int) -> dict:
    u, real, cplx, np_ = arrays(n)
    y, _, _, ckr, cki = _native_backend._lru_forward_impl(u, *real, None, None, CHECKPOINT_CHUNK, True)
    gy = torch.randn_like(y)
    fns = {}
    for path in paths:
        def fwd(path=path):
            _native_backend._ext.set_isa(path)      # the path of this call (microseconds)
            _native_backend._lru_forward_impl(u, *real, None, None, CHECKPOINT_CHUNK, True)

        def bwd(path=path):
            _native_backend._ext.set_isa(path)
            _native_backend._lru_backward_impl(gy, None, None, u, *real, ckr, cki, CHECKPOINT_CHUNK, False)
        fns[(path, "fwd")], fns[(path, "bwd")] = fwd, bwd
    lam, B, C = (t.detach().clone().requires_grad_() for t in cplx)
    x = u.detach().clone().requires_grad_()

    def ref():
        out = lru_recurrence(x, lam, B, C, backend="ref")
        torch.autograd.grad(out, (x, lam, B, C), gy)
    fns[("ref", "fwd+bwd")] = ref
    t = _common.time_round_robin(fns, rounds, burn_in=2, clock=time.thread_time)
    return {"np": np_, **{k: 1e3 * v for k, v in t.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[13, 16, 32, 64, 256])
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    if not _native_backend.native_available():
        raise SystemExit(f"lru_kernel: the native extension is not loaded ({_native_backend.native_load_error()})")
    _common.set_threads(1)
    paths = _common.native_isas()
    before = _common.native_isa()
    print(f"{_common.cpu_model()}; torch {torch.__version__}, 1 thread, float32; batch {BATCH}, length "
          f"{LENGTH}, {CHANNELS} channels; thread CPU time, medians of {args.rounds} round-robin rounds")
    head = f"{'N':>4} {'Np':>4} {'path':>7} {'forward ms':>11} {'backward ms':>12} {'f+b ms':>8} " \
           f"{'ns/step f+b':>12} {'ref f+b ms':>11} {'ref / native':>13}"
    print(head)
    try:
        for n in args.sizes:
            res = measure(n, paths, args.rounds)
            ref = res[("ref", "fwd+bwd")]
            for path in paths:
                f, b = res[(path, "fwd")], res[(path, "bwd")]
                print(f"{n:>4} {res['np']:>4} {path:>7} {f:>11.3f} {b:>12.3f} {f + b:>8.3f} "
                      f"{1e6 * (f + b) / (BATCH * LENGTH):>12.1f} {ref:>11.2f} {ref / (f + b):>12.1f}x")
    finally:
        if before:
            _common.set_native_isa(before)
    print(f"load average (1 min) at the end: {_common.load_average():.2f}")


if __name__ == "__main__":
    main()
