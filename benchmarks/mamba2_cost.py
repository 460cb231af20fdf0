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

    python benchmarks/mamba2_cost.py                  # about a minute on 2 shared cores
    python benchmarks/mamba2_cost.py --n 256 --rounds 9 --batch 16
"""

from __future__ import annotations

import argparse

import torch

import _common
from shrinkssm.nn.mamba2 import Mamba2SSM
from shrinkssm.ops.ssd_scan import ssd_scan


def layer_step(layer: Mamba2SSM, u: torch.Tensor):
    def run():
        layer.zero_grad(set_to_none=True)
        layer(u).sum().backward()
    return run


def scan_step(b: int, L: int, H: int, P: int, N: int, chunk: int, seed: int = 0):
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256, help="d_state N (compared with N / 4)")
    ap.add_argument("--d-model", type=int, default=16)
    ap.add_argument("--headdim", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=784)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    _common.set_threads(1)
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
