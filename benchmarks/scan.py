"""Benchmark of the LRU recurrence (the hot path): every backend against references timed in the
same run.

What is timed: the LRU layer ``shrinkssm.nn.LRU`` with each ``scan=`` backend (or, if the layer
is not importable, ``lru_recurrence`` plus the elementwise ``D * u`` term, which is what the layer
computes), forward (no grad) and forward + backward (gradients of the input and all parameters),
float32, at

* ``smnist``: batch 50, length 784, d_model 8,   N 256   (sequential MNIST, 1 block)
* ``wide``:   batch 32, length 1024, d_model 128, N 256

References, measured in the same run and reported as ratios (reference time / backend time):

1. ``xloop``: the plainest layer, a per-step PyTorch loop over ``x.unbind(1)`` that projects each
   input into the state and each state to the output one position at a time (the issue's
   reference); target >= 10x. ``loop`` is a stricter reference: the layer with ``scan="ref"``,
   whose projections are single large GEMMs and only the recurrence loops over ``Bu.unbind(1)``.
2. ``jax``: the same layer in JAX with a jitted ``jax.lax.associative_scan`` (the published LRU
   code's method), if jax is importable (``pip install jax``); target >= 3x.
3. cost linear in N: forward + backward at N = 32 must take <= 1/5 of the time at N = 256.

The cores are shared, so the light torch candidates are timed round-robin (one call each per
round, after a burn-in) and the median over rounds is reported; ``loop`` and ``chunked`` (which
allocate and free (B, L, N) tensors and, in rotation, slowed the next native call) and JAX are
timed in blocks of their own right after (JAX's worker threads and torch's OpenMP threads both
spin for a while after their work, so interleaving the two runtimes would make each slow the
other down). The load average is printed: other processes on the two cores distort every
figure. The run also measures this machine's GEMM throughput and memory bandwidth and puts the
sMNIST forward against the resulting estimate.

Usage::

    python benchmarks/scan.py                 # both shapes, N scaling, roofline
    python benchmarks/scan.py --crossover     # also the sweeps behind the "auto" rule
    python benchmarks/scan.py --quick         # fewer rounds
    python benchmarks/scan.py --threads 1 --clock cpu   # robust on a busy machine: 1 thread, CPU time
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable

import torch

from shrinkssm import ops
from shrinkssm.ops import lru_recurrence

import _common  # benchmarks/_common.py

try:
    from shrinkssm.nn import LRU
except ImportError:  # the layer is written by another part of the project; time the op instead
    LRU = None

SHAPES = {  # name: (batch, length, d_model, d_state)
    "smnist": (50, 784, 8, 256),
    "wide": (32, 1024, 128, 256),
}
BACKENDS = ["native", "chunked", "auto"]
HEAVY = {"loop", "chunked"}  # materialise (B, L, N) complex tensors; timed apart (see run_shape)
CLOCK = time.perf_counter  # --clock cpu: time.process_time (CPU time of the whole process)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------


def time_round_robin(fns: dict[str, Callable[[], object]], rounds: int, burn_in: int = 2) -> dict[str, float]:
    """Median seconds of each function, timed one call each per round (on the --clock)."""
    return _common.time_round_robin(fns, rounds, burn_in, clock=CLOCK)


# ------------------------------------------------------------------------------------------------
# The torch layer (or the op plus the skip term)
# ------------------------------------------------------------------------------------------------


class _OpLayer(torch.nn.Module):
    """Stand-in for shrinkssm.nn.LRU when it is not importable: same parameters and maths."""

    def __init__(self, d_model: int, d_state: int, scan: str = "auto"):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        r = torch.sqrt(torch.rand(d_state, generator=g) * (0.999**2 - 0.9**2) + 0.9**2)
        self.nu_log = torch.nn.Parameter(torch.log(-torch.log(r)))
        self.theta_log = torch.nn.Parameter(torch.log(torch.rand(d_state, generator=g) * 2 * math.pi))
        self.gamma_log = torch.nn.Parameter(0.5 * torch.log1p(-(r**2)))
        self.B_re = torch.nn.Parameter(torch.randn(d_state, d_model, generator=g) / math.sqrt(2 * d_model))
        self.B_im = torch.nn.Parameter(torch.randn(d_state, d_model, generator=g) / math.sqrt(2 * d_model))
        self.C_re = torch.nn.Parameter(torch.randn(d_model, d_state, generator=g) / math.sqrt(d_state))
        self.C_im = torch.nn.Parameter(torch.randn(d_model, d_state, generator=g) / math.sqrt(d_state))
        self.D = torch.nn.Parameter(torch.randn(d_model, generator=g))
        self.scan = scan

    def forward(self, u):
        lam = torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))
        B = torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]
        C = torch.complex(self.C_re, self.C_im)
        return lru_recurrence(u, lam, B, C, backend=self.scan) + self.D * u


def make_layer(d_model: int, d_state: int) -> torch.nn.Module:
    if LRU is not None:
        torch.manual_seed(0)
        return LRU(d_model, d_state)
    return _OpLayer(d_model, d_state)


def layer_param_arrays(layer: torch.nn.Module) -> dict[str, torch.Tensor]:
    names = ["nu_log", "theta_log", "gamma_log", "B_re", "B_im", "C_re", "C_im", "D"]
    return {n: getattr(layer, n).detach().clone() for n in names}


def torch_fns(layer, backend: str, u: torch.Tensor, gy: torch.Tensor):
    """(forward, forward+backward) closures of the layer with the given scan backend."""

    def fwd():
        layer.scan = backend
        with torch.no_grad():
            return layer(u)

    def fwd_bwd():
        layer.scan = backend
        x = u.detach().requires_grad_()
        layer(x).backward(gy)
        layer.zero_grad(set_to_none=True)

    return fwd, fwd_bwd


def xloop_fns(layer, u: torch.Tensor, gy: torch.Tensor):
    """(forward, forward+backward) of the plainest layer: a per-step loop over ``x.unbind(1)``,
    projecting every input into the state and every state to the output one position at a time."""

    def run(x: torch.Tensor) -> torch.Tensor:
        lam = layer.eigenvalues()
        b_t, c_t = layer.input_matrix().T, layer.output_matrix().T      # (H, N), (N, H) complex
        h = torch.zeros(x.shape[0], lam.shape[0], dtype=lam.dtype)
        ys = []
        for u_k in x.unbind(1):
            h = lam * h + u_k.to(b_t.dtype) @ b_t
            ys.append((h @ c_t).real + layer.D * u_k)
        return torch.stack(ys, 1)

    def fwd():
        with torch.no_grad():
            return run(u)

    def fwd_bwd():
        x = u.detach().requires_grad_()
        run(x).backward(gy)
        layer.zero_grad(set_to_none=True)

    return fwd, fwd_bwd


# ------------------------------------------------------------------------------------------------
# JAX reference: the published method (jitted associative scan), same parameters
# ------------------------------------------------------------------------------------------------


def jax_fns(params: dict[str, torch.Tensor], u: torch.Tensor, gy: torch.Tensor):
    """(forward, forward+backward) closures in JAX, or None if jax is not importable."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    p = {k: jnp.asarray(v.numpy()) for k, v in params.items()}
    x = jnp.asarray(u.numpy())
    g = jnp.asarray(gy.numpy())

    def combine(left, right):  # (a_i, b_i) o (a_j, b_j) = (a_j a_i, a_j b_i + b_j)
        a_i, b_i = left
        a_j, b_j = right
        return a_j * a_i, a_j * b_i + b_j

    def one_sequence(q, seq):  # seq: (L, H)
        lam = jnp.exp(-jnp.exp(q["nu_log"]) + 1j * jnp.exp(q["theta_log"]))
        B = (q["B_re"] + 1j * q["B_im"]) * jnp.exp(q["gamma_log"])[:, None]
        C = q["C_re"] + 1j * q["C_im"]
        Bu = seq @ B.T  # (L, N)
        lam_seq = jnp.broadcast_to(lam, Bu.shape)
        _, h = jax.lax.associative_scan(combine, (lam_seq, Bu))
        return (h @ C.T).real + q["D"] * seq

    batched = jax.vmap(one_sequence, in_axes=(None, 0))
    fwd_jit = jax.jit(batched)
    grad_jit = jax.jit(jax.grad(lambda q, s, w: jnp.sum(batched(q, s) * w), argnums=(0, 1)))

    def fwd():
        return fwd_jit(p, x).block_until_ready()

    def fwd_bwd():
        return jax.block_until_ready(grad_jit(p, x, g))

    # check it computes the same map as the torch layer before timing it
    return fwd, fwd_bwd, lambda: torch.from_numpy(jax.device_get(fwd_jit(p, x)).copy())


# ------------------------------------------------------------------------------------------------
# Machine limits: GEMM throughput and memory bandwidth, measured now
# ------------------------------------------------------------------------------------------------


def machine_limits(rounds: int) -> tuple[float, float]:
    """(GEMM GFLOP/s float32, copy bandwidth GB/s counting read + write)."""
    a = torch.randn(1024, 1024)
    b = torch.randn(1024, 1024)
    src = torch.randn(64 * 2**20)  # 256 MB
    dst = torch.empty_like(src)
    t = time_round_robin({"mm": lambda: a @ b, "copy": lambda: dst.copy_(src)}, rounds)
    return 2 * 1024**3 / t["mm"] / 1e9, 2 * src.numel() * 4 / t["copy"] / 1e9


# ------------------------------------------------------------------------------------------------
# Runs
# ------------------------------------------------------------------------------------------------


def run_shape(name: str, rounds: int) -> dict:
    """Time every torch candidate at one shape; returns the timings and what JAX needs later."""
    batch, length, d_model, d_state = SHAPES[name]
    print(f"   timing {name} ...", flush=True)
    layer = make_layer(d_model, d_state)
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, length, d_model, generator=g)
    gy = torch.randn(batch, length, d_model, generator=g)
    layer.scan = "ref"
    with torch.no_grad():
        y_ref = layer(u)
    cands = {"xloop": xloop_fns(layer, u, gy), "loop": torch_fns(layer, "ref", u, gy)}
    with torch.no_grad():
        err = ((cands["xloop"][0]() - y_ref).abs().max() / y_ref.abs().max()).item()
    assert err < 1e-4, f"the per-step loop disagrees with the layer: relative error {err:.2e}"
    for be in BACKENDS:
        if be == "native" and not ops.native_available():
            continue
        cands[be] = torch_fns(layer, be, u, gy)
        layer.scan = be
        with torch.no_grad():
            err = ((layer(u) - y_ref).abs().max() / y_ref.abs().max()).item()
        assert err < 1e-4, f"{be} disagrees with the loop: relative error {err:.2e}"
    # Backends that materialise (B, L, N) tensors are timed in blocks of their own: in rotation
    # they slowed the native kernel's next call about 3x on 2 threads (4 ms -> 12 ms), which
    # would flatter every ratio against them.
    light = {k: v for k, v in cands.items() if k not in HEAVY}
    fwd = time_round_robin({k: v[0] for k, v in light.items()}, rounds)
    fb = time_round_robin({k: v[1] for k, v in light.items()}, max(3, rounds // 2))
    for k in cands.keys() & HEAVY:
        fwd[k] = time_round_robin({k: cands[k][0]}, rounds)[k]
        fb[k] = time_round_robin({k: cands[k][1]}, max(3, rounds // 2))[k]
    order = ["xloop", "loop"] + [b for b in BACKENDS if b in cands]
    return {"fwd": {k: fwd[k] for k in order}, "fwd_bwd": {k: fb[k] for k in order},
            "params": layer_param_arrays(layer), "u": u, "gy": gy, "y_ref": y_ref}


def run_shape_jax(result: dict, rounds: int) -> None:
    """Add the JAX reference's timings to a :func:`run_shape` result (after all torch timing:
    once JAX's runtime is up, its threads slowed torch's 2-thread kernels about 3x)."""
    jf = jax_fns(result["params"], result["u"], result["gy"])
    if jf is None:
        print("   (jax not importable: skipping the JAX reference; `pip install jax`)")
        return
    y_ref = result["y_ref"]
    err = ((jf[2]() - y_ref).abs().max() / y_ref.abs().max()).item()
    assert err < 1e-3, f"the JAX reference disagrees with the loop: relative error {err:.2e}"
    result["fwd"]["jax"] = time_round_robin({"jax": jf[0]}, rounds)["jax"]
    result["fwd_bwd"]["jax"] = time_round_robin({"jax": jf[1]}, max(3, rounds // 2))["jax"]


def print_shape(name: str, result: dict) -> None:
    batch, length, d_model, d_state = SHAPES[name]
    print(f"\n== {name}: batch {batch}, length {length}, d_model {d_model}, N {d_state} (float32)")
    fwd, fb = result["fwd"], result["fwd_bwd"]
    header = (f"   {'backend':8s} {'fwd ms':>9s} {'fwd+bwd ms':>11s}   {'xloop/x fwd':>11s} {'xloop/x f+b':>11s}"
              f"   {'loop/x fwd':>10s} {'loop/x f+b':>10s}")
    if "jax" in fwd:
        header += f"   {'jax/x fwd':>9s} {'jax/x f+b':>9s}"
    print(header)
    for k in fwd:
        line = (f"   {k:8s} {fwd[k] * 1e3:9.2f} {fb[k] * 1e3:11.2f}   {fwd['xloop'] / fwd[k]:11.1f} "
                f"{fb['xloop'] / fb[k]:11.1f}   {fwd['loop'] / fwd[k]:10.1f} {fb['loop'] / fb[k]:10.1f}")
        if "jax" in fwd:
            line += f"   {fwd['jax'] / fwd[k]:9.2f} {fb['jax'] / fb[k]:9.2f}"
        print(line)


def op_fwd_bwd(u: torch.Tensor, d_state: int, backend: str, gy: torch.Tensor):
    """forward + backward of lru_recurrence alone (no layer, no loss ops)."""
    g = torch.Generator().manual_seed(4)
    r = torch.rand(d_state, generator=g) * 0.099 + 0.9
    lam = torch.polar(r, torch.rand(d_state, generator=g) * 2 * math.pi).requires_grad_()
    B = (torch.randn(d_state, u.shape[-1], generator=g, dtype=torch.complex64) * 0.3).requires_grad_()
    C = (torch.randn(gy.shape[-1], d_state, generator=g, dtype=torch.complex64) * 0.1).requires_grad_()

    def run():
        x = u.detach().requires_grad_()
        lru_recurrence(x, lam, B, C, backend=backend).backward(gy)
        lam.grad = B.grad = C.grad = None

    return run


def run_n_scaling(rounds: int) -> None:
    batch, length, d_model, _ = SHAPES["smnist"]
    print(f"\n== cost against N (batch {batch}, length {length}, d_model {d_model}): forward + backward")
    g = torch.Generator().manual_seed(1)
    u = torch.randn(batch, length, d_model, generator=g)
    gy = torch.randn(batch, length, d_model, generator=g)
    backends = [b for b in BACKENDS if b != "native" or ops.native_available()]
    fns = {}
    for n in (32, 256):
        layer = make_layer(d_model, n)
        for be in backends:
            fns[("layer", be, n)] = torch_fns(layer, be, u, gy)[1]
            fns[("op", be, n)] = op_fwd_bwd(u, n, be, gy)
    t = time_round_robin(fns, rounds)
    for what in ("layer", "op"):
        for be in backends:
            ratio = t[(what, be, 32)] / t[(what, be, 256)]
            verdict = "ok" if ratio <= 0.2 else "above the 1/5 target"
            print(f"   {what:5s} {be:8s} N=32 {t[(what, be, 32)] * 1e3:8.2f} ms   "
                  f"N=256 {t[(what, be, 256)] * 1e3:8.2f} ms   ratio {ratio:.3f} ({verdict})")


def run_roofline(fwd_seconds: float, rounds: int) -> None:
    batch, length, d_model, n = SHAPES["smnist"]
    gemm, bw = machine_limits(rounds)
    flops = batch * length * n * (4 * d_model + 8 + 4 * d_model)  # B u, recurrence, Re(C x)
    states_bytes = batch * length * n * 8  # one (B, L, N) complex64 tensor
    print("\n== sMNIST forward against this machine's limits (measured now)")
    print(f"   GEMM {gemm:.1f} GFLOP/s (1024^3 float32), copy bandwidth {bw:.1f} GB/s (read + write)")
    print(f"   fused kernel: {flops / 1e6:.0f} MFLOP, no (B, L, N) tensor; at GEMM speed "
          f"{flops / gemm / 1e6:.2f} ms; measured {fwd_seconds * 1e3:.2f} ms "
          f"= {flops / fwd_seconds / 1e9:.1f} GFLOP/s ({flops / fwd_seconds / 1e9 / gemm:.0%} of GEMM)")
    traffic = 4 * states_bytes  # write B u, read it, write h, read h for the output projection
    print(f"   a materialising scan moves >= {traffic / 1e6:.0f} MB ((B, L, N) complex64 written and read "
          f"twice): >= {traffic / bw / 1e6:.2f} ms at the measured bandwidth, before any arithmetic")


def run_crossover(rounds: int) -> None:
    """Sweeps behind the auto rule: fused vs GEMM + scan kernel by width; chunked vs loop by L."""
    if ops.native_available():
        import importlib

        scan_mod = importlib.import_module("shrinkssm.ops.scan")
        print(f"\n== native: fused kernel vs torch GEMMs + scan kernel (batch 32, length 1024, N 256), "
              f"fwd+bwd ms; current FUSED_MAX_WIDTH = {scan_mod.FUSED_MAX_WIDTH} (H_in + H_out)")
        g = torch.Generator().manual_seed(2)
        for h in (8, 32, 64, 96, 128):
            layer = make_layer(h, 256)
            u = torch.randn(32, 1024, h, generator=g)
            gy = torch.randn(32, 1024, h, generator=g)
            saved = scan_mod.FUSED_MAX_WIDTH
            fns = {}
            for label, width in (("fused", 10**9), ("gemm+scan", 0)):
                fwd_bwd = torch_fns(layer, "native", u, gy)[1]

                def run(f=fwd_bwd, w=width, saved=saved):
                    scan_mod.FUSED_MAX_WIDTH = w
                    try:
                        f()
                    finally:
                        scan_mod.FUSED_MAX_WIDTH = saved

                fns[label] = run
            t = time_round_robin(fns, rounds)
            best = min(t, key=t.get)
            print(f"   H={h:3d} (H_in+H_out={2 * h:3d}): fused {t['fused'] * 1e3:8.2f}   "
                  f"gemm+scan {t['gemm+scan'] * 1e3:8.2f}   -> {best}")
    print("\n== without the native kernels: chunked vs loop (d_model 8), fwd+bwd ms")
    for batch, length, n in ((16, 64, 64), (16, 256, 64), (16, 1024, 64), (16, 4096, 64), (4, 4096, 256),
                             (50, 784, 256)):
        layer = make_layer(8, n)
        g = torch.Generator().manual_seed(3)
        u = torch.randn(batch, length, 8, generator=g)
        gy = torch.randn(batch, length, 8, generator=g)
        t = time_round_robin({b: torch_fns(layer, b, u, gy)[1] for b in ("ref", "chunked")}, rounds)
        print(f"   B={batch:3d} L={length:5d} N={n:3d} (B*L*N = {batch * length * n / 2**20:5.1f} Mi): "
              f"loop {t['ref'] * 1e3:8.2f}   chunked {t['chunked'] * 1e3:8.2f}   "
              f"-> {'chunked' if t['chunked'] < t['ref'] else 'loop'}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15, help="timed rounds per candidate (median)")
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--no-jax", action="store_true", help="skip the JAX reference")
    parser.add_argument("--crossover", action="store_true", help="also run the auto-rule sweeps")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1: JAX single-threaded too)")
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="wall-clock time, or CPU time of the process (meaningful with --threads 1)")
    args = parser.parse_args(argv)
    rounds = 5 if args.quick else args.rounds
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.threads:
        torch.set_num_threads(args.threads)
        if args.threads == 1:  # before jax is imported
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                       + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

    _common.init_native_isa()
    _common.print_header("device:")
    print(f"   timed: {'shrinkssm.nn.LRU' if LRU is not None else 'lru_recurrence + D*u'}; "
          f"median of {rounds} round-robin rounds; clock: {args.clock}")
    results = {name: run_shape(name, rounds) for name in args.shapes}
    run_n_scaling(max(3, rounds // 2))
    if "smnist" in results and ops.native_available():
        run_roofline(results["smnist"]["fwd"]["native"], rounds)
    if args.crossover:
        run_crossover(max(3, rounds // 2))
    if not args.no_jax:                  # last: JAX's runtime disturbs torch's threads once it is up
        for result in results.values():
            run_shape_jax(result, rounds)
    for name, result in results.items():
        print_shape(name, result)
    print(f"\nload average (1 min) after the run: {_common.load_average():.2f}")


if __name__ == "__main__":
    main()
