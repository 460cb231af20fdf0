"""What a Mamba-2 layer's training step costs at d_state N against N/4, and the SSD scan alone.

The configuration where the state dominates (issue 18; the published sMNIST shape): d_model 16,
expand 2 (E = 32), headdim 8 (4 heads), one group, batch 8, length 784, float32, one torch
thread. Timed interleaved (one call of each candidate per round, medians):

* ``layer N``:      ``Mamba2SSM(d_state=N)`` forward + backward of ``out.sum()``, training mode
                    (the Gramian statistics gathered, as in training) and ``track_gramians=False``;
* ``exact N->N/4``: the layer of ``d_state=N`` after the exact reduction to ``N/4`` (``B``, ``C``
                    projected after the convolution; what a compressed run trains);
* ``folded N->N/4``: the same reduction in the folded form (``reduction="folded"``: a plain layer
                    of ``d_state = N/4``, the transforms folded into ``in_proj`` and the conv);
* ``scan N``:       :func:`shrinkssm.ops.ssd_scan.ssd_scan` (chunked) forward + backward alone.

Printed: the CPU, the medians, and the ratios ``step(N/4) / step(N)`` (target <= 0.4) for the
plain layer, the exact- and folded-reduced layers and the scan.

``--scan-only``: the SSD scan alone (forward + backward, thread CPU time, medians of interleaved
rounds) for several head shapes ``--heads HxP,...`` (default 4x8, 4x16, 2x64: the published
shape and wider heads) at ``N`` and ``N/4`` for ``N`` in ``--scan-n`` (default 256, 128), each
at the chunk length 64 (the fixed default before ``"auto"``) and at ``chunk_size="auto"``; the
ratios ``scan(N/4) / scan(N)`` of both.

    python benchmarks/mamba2_cost.py                  # about a minute on 2 shared cores
    python benchmarks/mamba2_cost.py --n 256 --rounds 9 --batch 16
    python benchmarks/mamba2_cost.py --scan-only      # about two minutes
"""

from __future__ import annotations

import argparse
import time

import torch

import _common
from shrinkssm.nn.mamba2 import Mamba2SSM
from shrinkssm.ops.ssd_scan import resolve_chunk_size, ssd_scan


def layer_step(layer: Mamba2SSM, u: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(u).sum().backward()
    return run


def scan_step(b: int, L: int, H: int, P: int, N: int, chunk: int | str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, requires_grad=True)
    dt = (0.05 * torch.rand(b, L, H, generator=g)).requires_grad_()
    A = -torch.rand(H, generator=g).add(0.5).requires_grad_()
    B = torch.randn(b, L, 1, N, generator=g, requires_grad=True)
    C = torch.randn(b, L, 1, N, generator=g, requires_grad=True)

    def run():
        for t in (x, dt, A, B, C):
            t.grad = None
        ssd_scan(x, dt, A, B, C, chunk_size=chunk).sum().backward()
    return run


def reduced_layer(N: int, r: int, d_model: int, headdim: int, chunk: int, u: torch.Tensor,
                  form: str = "exact") -> Mamba2SSM:
    torch.manual_seed(0)
    layer = Mamba2SSM(d_model, N, headdim=headdim, chunk_size=chunk, reduction=form).train()
    with torch.no_grad():
        layer(u)                                                     # Gramian statistics
    layer.apply_reduction_(layer.plan_reduction(lambda hsv, size: r))
    assert layer.group_ranks == [r] and (form == "exact") == (layer.ranks is not None)
    return layer


def chunk_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"--chunk must be a positive integer or 'auto', got {text!r}")
    return value


def heads_arg(text: str) -> list[tuple[int, int]]:
    try:
        shapes = [tuple(int(v) for v in item.split("x")) for item in text.split(",")]
    except ValueError:
        shapes = []
    if not shapes or any(len(s) != 2 or min(s) < 1 for s in shapes):
        raise argparse.ArgumentTypeError(f"--heads must be HxP[,HxP...] (e.g. 4x8,2x64), got {text!r}")
    return shapes


def scan_only(args) -> None:
    """The scan alone, at chunk 64 and "auto", N against N/4, for every head shape."""
    print(f"SSD scan alone: batch {args.batch}, L {args.length}, one group, float32, forward + "
          f"backward, thread CPU time, median of {args.rounds} interleaved rounds")
    print(f"  {'H x P':7s} {'N':>4s}  {'Q':>3s} {'chunk 64':>9s}  {'Q':>3s} {'auto':>9s}")
    ratios = []
    for H, P in args.heads:
        for N in args.scan_n:
            fns, qs = {}, {}
            for n in (N, N // 4):
                for chunk in (64, "auto"):
                    fns[(n, chunk)] = scan_step(args.batch, args.length, H, P, n, chunk)
                    qs[(n, chunk)] = resolve_chunk_size(chunk, args.length, H, P, 1, n)
            t = _common.time_round_robin(fns, args.rounds, burn_in=1, clock=time.thread_time)
            for n in (N, N // 4):
                print(f"  {H:2d} x {P:<3d} {n:4d}  {qs[(n, 64)]:3d} {1e3 * t[(n, 64)]:7.1f}ms  "
                      f"{qs[(n, 'auto')]:3d} {1e3 * t[(n, 'auto')]:7.1f}ms")
            ratios.append((H, P, N, t[(N // 4, 64)] / t[(N, 64)], t[(N // 4, "auto")] / t[(N, "auto")],
                           t[(N, 64)] / t[(N, "auto")], t[(N // 4, 64)] / t[(N // 4, "auto")]))
    print("ratio scan(N/4) / scan(N) (proportional: 0.25); speed-up of auto over chunk 64 at N, N/4")
    for H, P, N, r64, rauto, s_n, s_r in ratios:
        print(f"  {H:2d} x {P:<3d} {N:4d} -> {N // 4:<3d}  chunk 64 {r64:.3f}   auto {rauto:.3f}   "
              f"speed-up {s_n:.2f}x, {s_r:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="d_state N (compared with N / 4)")
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=784)
    ap.add_argument("--chunk", type=chunk_arg, default="auto", help="chunk length or auto")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scan-only", action="store_true", help="time the SSD scan alone (see above)")
    ap.add_argument("--heads", type=heads_arg, default=[(4, 8), (4, 16), (2, 64)],
                    help="--scan-only: head shapes HxP,...")
    ap.add_argument("--scan-n", type=int, nargs="+", default=[256, 128],
                    help="--scan-only: the N compared with N / 4")
    args = ap.parse_args()
    _common.set_threads(1)
    if args.scan_only:
        _common.print_header("Mamba-2 SSD scan alone at d_state N against N/4")
        scan_only(args)
        return
    _common.print_header("Mamba-2 layer: training step at d_state N against N/4")
    N, r = args.n, args.n // 4
    u = torch.randn(args.batch, args.length, args.d_model)
    fns, layers = {}, {}
    for n in (N, r):
        torch.manual_seed(0)
        layers[n] = Mamba2SSM(args.d_model, n, headdim=args.headdim, chunk_size=args.chunk).train()
        fns[f"layer {n}"] = layer_step(layers[n], u)
        quiet = Mamba2SSM(args.d_model, n, headdim=args.headdim, chunk_size=args.chunk).train()
        quiet.track_gramians = False
        fns[f"layer {n}, no Gramians"] = layer_step(quiet, u)
    fns[f"exact {N}->{r}"] = layer_step(reduced_layer(N, r, args.d_model, args.headdim, args.chunk, u), u)
    fns[f"folded {N}->{r}"] = layer_step(
        reduced_layer(N, r, args.d_model, args.headdim, args.chunk, u, "folded"), u)
    H = 2 * args.d_model // args.headdim
    for n in (N, r):
        fns[f"scan {n}"] = scan_step(args.batch, args.length, H, args.headdim, n, args.chunk)
    print(f"d_model {args.d_model}, E {2 * args.d_model}, {H} heads of P = {args.headdim}, one group, "
          f"batch {args.batch}, L {args.length}, chunk {args.chunk}, float32; forward + backward, "
          f"median of {args.rounds} rounds")
    t = _common.time_round_robin(fns, args.rounds, burn_in=1)
    for name, sec in t.items():
        print(f"  {name:28s} {1e3 * sec:9.1f} ms")
    print(f"ratio layer {r} / layer {N}:                 {t[f'layer {r}'] / t[f'layer {N}']:.3f}   (target <= 0.4)")
    print(f"ratio the same without Gramian tracking:    "
          f"{t[f'layer {r}, no Gramians'] / t[f'layer {N}, no Gramians']:.3f}")
    print(f"ratio exact {N}->{r} / layer {N}:            {t[f'exact {N}->{r}'] / t[f'layer {N}']:.3f}")
    print(f"ratio folded {N}->{r} / layer {N}:           {t[f'folded {N}->{r}'] / t[f'layer {N}']:.3f}")
    print(f"ratio scan {r} / scan {N}:                   {t[f'scan {r}'] / t[f'scan {N}']:.3f}")


if __name__ == "__main__":
    main()
