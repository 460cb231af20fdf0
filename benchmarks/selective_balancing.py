"""Benchmark: the per-channel balancing of a selective layer (``shrinkssm.lti.balancing``).

What a per-channel reduction of one selective layer does before it writes parameters: for each
of E channels, the Gramians of the channel's surrogate (state matrix ``A_bar``, input and output
energies ``Sb``, ``Sc``), pivoted-Cholesky factors, the SVD, and the balanced truncation applied to
the channel's continuous-time generator ``G`` (re-diagonalised, with the guards). Channels look
like a layer's: ``"diagonal"`` (an unreduced layer: ``A_bar = exp(d G)`` with ``G = -(1..n)``) and
``"blocks"`` (a reduced one: half the states in 2x2 rotation-scaling blocks); energies of rank 8.

Candidates, timed round-robin (one call each per round), median over rounds:

* ``batched``: :func:`shrinkssm.lti.balancing.balanced_truncation_batch` (the Gramians of all
  channels at once: closed form for a diagonal ``A_bar``, the eigenbasis otherwise);
* ``per-system`` (the reference): the same steps channel by channel with SciPy's general Stein
  solver (``solve_discrete_lyapunov``) for the Gramians, then the same factors and truncation.

Run:  python benchmarks/selective_balancing.py                  (E = 64, n in {16, 64}, r = n / 4)
      python benchmarks/selective_balancing.py --channels 128 --orders 32 --rounds 9
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
import scipy.linalg
from threadpoolctl import threadpool_info

from shrinkssm.lti import set_blas_threads
from shrinkssm.lti.balancing import balanced_truncation_batch, square_root, truncate


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
        flags = next(line.split(":", 1)[1].split() for line in lines if line.startswith("flags"))
        isa = ", ".join(f for f in ("avx512f", "avx2", "fma") if f in flags) or "no AVX"
        return f"{model} ({isa})"
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def channels(kind: str, E: int, n: int, seed: int = 0):
    """(A_bar, Sb, Sc, G), each (E, n, n) float64, like one selective layer's surrogates."""
    rng = np.random.default_rng(seed)
    As, Sbs, Scs, Gs = [], [], [], []
    for _ in range(E):
        d = rng.uniform(0.01, 0.2)
        if kind == "diagonal":
            G = -np.diag(np.arange(1.0, n + 1))
        else:
            blocks = [np.array([[-s]]) for s in rng.uniform(0.5, n, n // 2)]
            for s, w in zip(rng.uniform(0.5, n, n // 4), rng.uniform(0.1, 5.0, n // 4)):
                blocks.append(np.array([[-s, -w], [w, -s]]))
            G = scipy.linalg.block_diag(*blocks)
        F, H = rng.standard_normal((n, 8)), rng.standard_normal((8, n))
        As.append(scipy.linalg.expm(d * G)), Gs.append(G), Sbs.append(d * d * F @ F.T), Scs.append(H.T @ H)
    return tuple(np.stack(x) for x in (As, Sbs, Scs, Gs))


def per_system(A, Sb, Sc, G, r):
    eye = np.eye(A.shape[-1])
    out = []
    for i in range(A.shape[0]):
        P = scipy.linalg.solve_discrete_lyapunov(A[i], Sb[i])
        Q = scipy.linalg.solve_discrete_lyapunov(A[i].T, Sc[i])
        sr = square_root(0.5 * (P + P.T), 0.5 * (Q + Q.T))
        out.append(truncate(sr, G[i], eye, eye, r, real=True, fold_pairs=False, domain="continuous"))
    return out


def batched(A, Sb, Sc, G, r):
    return balanced_truncation_batch(A, Sb, Sc, [r] * A.shape[0], F=G, fold_pairs=False, domain="continuous")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--channels", type=int, default=64)
    ap.add_argument("--orders", type=int, nargs="+", default=[16, 64])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--blas-threads", type=int, default=1)
    args = ap.parse_args()
    set_blas_threads(args.blas_threads)
    blas = ", ".join(sorted({f"{i['internal_api']} {i.get('version') or ''}".strip()
                             for i in threadpool_info() if i["user_api"] == "blas"})) or "?"
    print(f"CPU: {cpu_name()}; code path: NumPy/SciPy LAPACK ({blas}), {args.blas_threads} BLAS thread(s); "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{'channels':>8} {'n':>4} {'r':>4} {'kind':>9} {'batched ms':>11} {'per-system ms':>14} {'ratio':>7} "
          f"{'max |d lam|':>12}")
    for n in args.orders:
        r = max(1, n // 4)
        for kind in ("diagonal", "blocks"):
            data = channels(kind, args.channels, n)
            fns = {"batched": lambda: batched(*data, r), "per-system": lambda: per_system(*data, r)}
            for fn in fns.values():  # burn-in
                fn()
            samples = {k: [] for k in fns}
            for _ in range(args.rounds):
                for k, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    samples[k].append(time.perf_counter() - t0)
            t = {k: statistics.median(v) for k, v in samples.items()}
            diff = max(float(np.abs(np.sort_complex(a.lam) - np.sort_complex(b.lam)).max())
                       for a, b in zip(batched(*data, r), per_system(*data, r)))
            print(f"{args.channels:>8} {n:>4} {r:>4} {kind:>9} {1e3 * t['batched']:>11.2f} "
                  f"{1e3 * t['per-system']:>14.2f} {t['per-system'] / t['batched']:>6.2f}x {diff:>12.2e}")


if __name__ == "__main__":
    main()
