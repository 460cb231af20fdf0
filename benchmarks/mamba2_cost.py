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
* ``scan N``:       :func:`shrinkssm.ops.ssd_scan.ssd_scan` forward + backward alone.

``--scan`` picks the backend of the layers and of ``scan N`` (default "auto": the native kernel
where a head's state is at most 16 KiB, as here, the chunked form otherwise).

Printed: the CPU, the native path, the medians, and the ratios ``step(N/4) / step(N)`` (target
<= 0.4) for the plain layer, the exact- and folded-reduced layers and the scan.

``--scan-only``: the SSD scan alone (forward + backward, thread CPU time, medians of interleaved
rounds) for several head shapes ``--heads HxP,...`` (default 4x8, 4x16, 2x64: the published
shape and wider heads) at ``N`` and ``N/4`` for ``N`` in ``--scan-n`` (default 256, 128), by the
chunked form (``chunk_size="auto"``) and by the native kernel, and what ``backend="auto"``
picks; the ratios ``scan(N/4) / scan(N)`` of each and the native kernel's speed-up. The native
path is the best this CPU runs; force another with ``SHRINKSSM_NATIVE_ISA=avx2`` (or ``base``).

    python benchmarks/mamba2_cost.py                  # about a minute on 2 shared cores
    python benchmarks/mamba2_cost.py --n 256 --rounds 9 --batch 16 --scan chunked
    python benchmarks/mamba2_cost.py --scan-only      # about two minutes
    SHRINKSSM_NATIVE_ISA=avx2 python benchmarks/mamba2_cost.py --scan-only
"""

from __future__ import annotations

import argparse
import time

import torch

import _common
from shrinkssm.nn.mamba2 import Mamba2SSM
from shrinkssm.ops.ssd_scan import resolve_chunk_size, resolve_ssd_backend, ssd_scan


def layer_step(layer: Mamba2SSM, u: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(u).sum().backward()
    return run


def scan_step(b: int, L: int, H: int, P: int, N: int, chunk: int | str, seed: int = 0, backend: str = "auto"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, H, P, generator=g, requires_grad=True)
    dt = (0.05 * torch.rand(b, L, H, generator=g)).requires_grad_()
    A = -torch.rand(H, generator=g).add(0.5).requires_grad_()
    B = torch.randn(b, L, 1, N, generator=g, requires_grad=True)
    C = torch.randn(b, L, 1, N, generator=g, requires_grad=True)

    def run():
        for t in (x, dt, A, B, C):
            t.grad = None
        ssd_scan(x, dt, A, B, C, chunk_size=chunk, backend=backend).sum().backward()
    return run


def reduced_layer(N: int, r: int, d_model: int, headdim: int, chunk: int, u: torch.Tensor,
                  form: str = "exact", scan: str = "auto") -> Mamba2SSM:
    torch.manual_seed(0)
    layer = Mamba2SSM(d_model, N, headdim=headdim, chunk_size=chunk, reduction=form, scan=scan).train()
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
    """The scan alone by each backend, N against N/4, for every head shape."""
    print(f"SSD scan alone: batch {args.batch}, L {args.length}, one group, float32, forward + "
          f"backward, thread CPU time, median of {args.rounds} interleaved rounds; chunked at "
          f"chunk_size='auto' (Q), native kernel on the {_common.native_isa()} path, auto = what "
          f"backend='auto' resolves to")
    print(f"  {'H x P':7s} {'N':>4s}  {'Q':>3s} {'chunked':>9s} {'native':>9s}  {'auto':>7s}")
    ratios = []
    for H, P in args.heads:
        for N in args.scan_n:
            fns, auto = {}, {}
            for n in (N, N // 4):
                for backend in ("chunked", "native"):
                    fns[(n, backend)] = scan_step(args.batch, args.length, H, P, n, "auto", backend=backend)
                auto[n] = resolve_ssd_backend("auto", torch.device("cpu"), P, n, torch.float32)
            t = _common.time_round_robin(fns, args.rounds, burn_in=1, clock=time.thread_time)
            for n in (N, N // 4):
                t[(n, "auto")] = t[(n, auto[n])]
                q = resolve_chunk_size("auto", args.length, H, P, 1, n)
                print(f"  {H:2d} x {P:<3d} {n:4d}  {q:3d} {1e3 * t[(n, 'chunked')]:7.1f}ms "
                      f"{1e3 * t[(n, 'native')]:7.1f}ms  {auto[n]:>7s}")
            ratios.append((H, P, N, *(t[(N // 4, k)] / t[(N, k)] for k in ("chunked", "native", "auto")),
                           t[(N, "chunked")] / t[(N, "native")], t[(N // 4, "chunked")] / t[(N // 4, "native")]))
    print("ratio scan(N/4) / scan(N) per backend (proportional: 0.25); native's speed-up over chunked at N, N/4")
    for H, P, N, rc, rn, ra, s_n, s_r in ratios:
        print(f"  {H:2d} x {P:<3d} {N:4d} -> {N // 4:<3d}  chunked {rc:.3f}   native {rn:.3f}   auto {ra:.3f}   "
              f"native speed-up {s_n:.2f}x, {s_r:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="d_state N (compared with N / 4)")
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=784)
    ap.add_argument("--chunk", type=chunk_arg, default="auto", help="chunk length or auto")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--scan", choices=["auto", "chunked", "native"], default="auto",
                    help="backend of the layers' SSD scan and of 'scan N' (default auto)")
    ap.add_argument("--scan-only", action="store_true", help="time the SSD scan alone (see above)")
    ap.add_argument("--heads", type=heads_arg, default=[(4, 8), (4, 16), (2, 64)],
                    help="--scan-only: head shapes HxP,...")
    ap.add_argument("--scan-n", type=int, nargs="+", default=[256, 128],
                    help="--scan-only: the N compared with N / 4")
    args = ap.parse_args()
    _common.init_native_isa()
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
        layers[n] = Mamba2SSM(args.d_model, n, headdim=args.headdim, chunk_size=args.chunk, scan=args.scan).train()
        fns[f"layer {n}"] = layer_step(layers[n], u)
        quiet = Mamba2SSM(args.d_model, n, headdim=args.headdim, chunk_size=args.chunk, scan=args.scan).train()
        quiet.track_gramians = False
        fns[f"layer {n}, no Gramians"] = layer_step(quiet, u)
    fns[f"exact {N}->{r}"] = layer_step(reduced_layer(N, r, args.d_model, args.headdim, args.chunk, u,
                                                      scan=args.scan), u)
    fns[f"folded {N}->{r}"] = layer_step(
        reduced_layer(N, r, args.d_model, args.headdim, args.chunk, u, "folded", scan=args.scan), u)
    H = 2 * args.d_model // args.headdim
    for n in (N, r):
        fns[f"scan {n}"] = scan_step(args.batch, args.length, H, args.headdim, n, args.chunk, backend=args.scan)
    print(f"d_model {args.d_model}, E {2 * args.d_model}, {H} heads of P = {args.headdim}, one group, "
          f"batch {args.batch}, L {args.length}, scan {args.scan} (native path {_common.native_isa()}), "
          f"chunk {args.chunk}, float32; forward + backward, median of {args.rounds} rounds")
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
