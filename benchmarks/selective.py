"""Benchmark of the selective (Mamba-style) SSM layer: time against state size, full and reduced.

What is timed (``shrinkssm.nn.SelectiveSSM``, float32, batch 32, length 784, d_model 32, so
E = 64 channels; the layer's statistics come from two training-mode passes over the same data):

* ``full N``: unreduced layers with N = 4 ... 64 states per channel. A shared-subset reduction
  (``reduction="shared"``) gives exactly such a layer, so these rows are also its cost.
* ``per-channel r``: a layer of N = 64 reduced per channel (balanced truncation of the surrogate)
  to ``r`` real states per channel: every channel the same ``r`` (``"uniform"``), and the ragged
  ranks that ``tau`` gives (``"tau"``; mean rank shown).

For each: the layer's forward (no grad), forward + backward (a training step of the layer), the
scan alone (forward + backward of :func:`shrinkssm.ops.selective_scan.selective_scan` on the
layer's own inputs), and the recurrent ``step()`` for one position (generation). Reported as
absolute milliseconds and as ratios to the full N = 64 layer measured in the same run, next to
the ratio of states; plus the scan backends of the full N = 16 layer against each other: the
native kernel and the chunked plain-torch scan (what ``scan="auto"`` runs off the CPU) against the
sequential reference, forward + backward, on this CPU (``ref/native``, ``ref/chunked``).

Candidates are timed round-robin (one call each per round, after a burn-in) and the median over
rounds is reported; the load average is printed, since other processes on the shared cores
distort every absolute figure (ratios measured in the same run much less).

Usage::

    python benchmarks/selective.py                  # default: 1 thread, 7 rounds
    python benchmarks/selective.py --quick          # 3 rounds, shorter sequences
    python benchmarks/selective.py --threads 2
    python benchmarks/selective.py --backends-only --quick --batch 4   # the backend line alone, seconds
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable

import torch

from shrinkssm.nn.selective import SelectiveSSM
from shrinkssm.ops import native_available

import _common  # benchmarks/_common.py
from _common import time_round_robin

FULL_N = (4, 8, 16, 32, 64)
REDUCED_R = (4, 8, 16, 32)


def with_statistics(layer: SelectiveSSM, u: torch.Tensor) -> SelectiveSSM:
    layer.train()
    with torch.no_grad():
        layer(u)
        layer(u)
    return layer


def candidates(layer: SelectiveSSM, u: torch.Tensor) -> dict[str, Callable[[], object]]:
    """forward, forward + backward, scan forward + backward, one recurrent step."""
    layer.eval()   # no statistics tracking while timing
    params = [p for p in layer.parameters() if p.numel()]
    x_in = u.detach().clone().requires_grad_()
    with torch.no_grad():
        x, _, delta, Bx, Cx = layer._branch(u, None)
    scan_in = [t.detach().clone().requires_grad_() for t in (x, delta, Bx, Cx)]
    state = layer.initial_state(u.shape[0])
    u0 = u[:, 0]

    def fwd():
        with torch.no_grad():
            return layer(u)

    def fwd_bwd():
        y = layer(x_in)
        return torch.autograd.grad(y.square().sum(), [x_in, *params])

    def scan():
        y = layer._ssm(*scan_in)
        return torch.autograd.grad(y.square().sum(), scan_in + params, allow_unused=True)

    def step():
        with torch.no_grad():
            return layer.step(u0, state)

    return {"fwd": fwd, "fwd+bwd": fwd_bwd, "scan f+b": scan, "step": step}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="3 rounds, length 256")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: robust on a shared machine, see the README)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--length", type=int, default=784)
    parser.add_argument("--d-model", type=int, default=32)
    parser.add_argument("--tau", type=float, default=0.02, help="tolerance of the ragged per-channel row")
    parser.add_argument("--backends-only", action="store_true",
                        help="only the scan backends (native, chunked, ref) of the full N=16 layer")
    args = parser.parse_args(argv)
    rounds, length = (3, 256) if args.quick else (args.rounds, args.length)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    _common.init_native_isa()
    _common.print_header("device:")
    print(f"shape: batch {args.batch}, length {length}, d_model {args.d_model} "
          f"(E = {2 * args.d_model} channels), float32; median of {rounds} rounds\n")
    u = torch.randn(args.batch, length, args.d_model)

    if args.backends_only:
        torch.manual_seed(0)
        backend_line(SelectiveSSM(args.d_model, 16), u, rounds)
        print(f"load average at the end: {_common.load_average():.2f}")
        return

    layers: dict[str, SelectiveSSM] = {}
    for N in FULL_N:
        torch.manual_seed(0)
        layers[f"full N={N}"] = SelectiveSSM(args.d_model, N)
    big = with_statistics(copy.deepcopy(layers[f"full N={max(FULL_N)}"]), u)
    for r in REDUCED_R:
        reduced = copy.deepcopy(big)
        reduced.reduce_(r)
        layers[f"per-channel r={r}"] = reduced
    ragged = copy.deepcopy(big)
    from shrinkssm import lti
    ragged.reduce_(ragged.plan_reduction(lambda hsv, n: lti.rank_for_energy(hsv, args.tau)))
    layers[f"per-channel tau={args.tau:g}"] = ragged

    results = {}
    for name, layer in layers.items():
        results[name] = time_round_robin(candidates(layer, u), rounds)

    base = results[f"full N={max(FULL_N)}"]
    base_states = layers[f"full N={max(FULL_N)}"].state_size
    cols = ["fwd", "fwd+bwd", "scan f+b", "step"]
    print(f"{'layer':24s} {'states/ch':>9s} {'states':>7s} {'params':>8s} " +
          " ".join(f"{c + ' ms':>12s}" for c in cols))
    for name, layer in layers.items():
        r = results[name]
        per_channel = layer.state_size / layer.d_inner
        n_params = sum(p.numel() for p in layer.parameters())
        print(f"{name:24s} {per_channel:9.1f} {layer.state_size:7d} {n_params:8d} " +
              " ".join(f"{1e3 * r[c]:12.2f}" for c in cols))
    print(f"\nratios to full N={max(FULL_N)} (time / time of full N={max(FULL_N)}; states likewise)")
    print(f"{'layer':24s} {'states':>7s} " + " ".join(f"{c:>10s}" for c in cols))
    for name, layer in layers.items():
        r = results[name]
        print(f"{name:24s} {layer.state_size / base_states:7.3f} " +
              " ".join(f"{r[c] / base[c]:10.3f}" for c in cols))
    print()
    backend_line(layers["full N=16"], u, max(1, rounds // 2))
    print(f"load average at the end: {_common.load_average():.2f}")


def backend_line(layer: SelectiveSSM, u: torch.Tensor, rounds: int) -> None:
    """Time the scan (forward + backward) of ``layer`` with every backend, round-robin, and print
    each against the sequential reference."""
    scans = {}
    for backend in ("native", "chunked", "ref"):
        if backend == "native" and not native_available():
            continue
        copy_ = copy.deepcopy(layer)
        copy_.scan = backend
        scans[backend] = candidates(copy_, u)["scan f+b"]
    t = time_round_robin(scans, rounds)
    print(f"scan backends (scan f+b, full N=16, batch {u.shape[0]}, length {u.shape[1]}, "
          f"CPU {_common.cpu_model()}): "
          + ", ".join(f"{k} {1e3 * v:.1f} ms" for k, v in t.items()))
    print("  speed-up over ref: " + ", ".join(f"ref/{k} {t['ref'] / t[k]:.1f}x" for k in t if k != "ref"))


if __name__ == "__main__":
    main()
