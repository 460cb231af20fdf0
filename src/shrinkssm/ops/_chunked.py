"""Two-level chunked scan in plain torch: the device-agnostic (GPU-friendly) backend.

The sequence of length L is cut into C chunks of T steps (T ~ sqrt(L)). Then:

1. a *local* scan inside every chunk from a zero state, sequential over the T steps but
   vectorised over batch x chunks x states;
2. a *carry* scan over the C chunk ends, sequential over C steps, vectorised over batch x states:
   ``carry[c] = lam**T * carry[c-1] + local[c, T-1]`` (``carry[0] = h0``);
3. a broadcast fix-up ``h[c, t] = local[c, t] + lam**(t+1) * carry[c]``.

So the depth is T + C ~ 2 sqrt(L) tensor operations instead of L, and the work about twice that of
the sequential scan. Numerically it is as safe as the sequential loop: only the powers
``lam**1 .. lam**T`` appear (computed by a cumulative product, no logarithms and no division by
``lam``), so ``|lam|`` close to 1, long sequences and zero inputs give finite values and gradients.
Autograd differentiates it; the per-step loops go over ``unbind`` (indexing ``x[:, t]`` in a loop
makes every step's backward fill a full-size gradient).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["default_chunk", "scan_chunked"]


def default_chunk(L: int) -> int:
    """Chunk length T for a sequence of length L: ceil(sqrt(L)), which minimises T + L/T."""
    return max(1, math.isqrt(L - 1) + 1) if L > 1 else 1


def _sequential(lam: Tensor, steps: tuple[Tensor, ...], x: Tensor | None) -> list[Tensor]:
    """States of ``x = lam * x + s`` over ``steps`` (from ``x``; None means zero)."""
    out = []
    for s in steps:
        x = s if x is None else lam * x + s
        out.append(x)
    return out


def scan_chunked(lam: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int | None = None) -> Tensor:
    """Scan ``h[:, k] = lam * h[:, k-1] + b[:, k]`` by the two-level chunked method.

    Parameters
    ----------
    lam : (N,) complex
    b : (B, L, N) complex
    h0 : (B, N) complex or None
        State before the first step (zeros if None).
    chunk : int, optional
        Chunk length T (default :func:`default_chunk`).

    Returns
    -------
    h : (B, L, N) complex
    """
    nb, L, N = b.shape
    T = int(chunk) if chunk else default_chunk(L)
    n_chunks = math.ceil(L / T)
    pad = n_chunks * T - L
    if pad:
        b = torch.cat([b, b.new_zeros(nb, pad, N)], dim=1)  # zeros at the end change no earlier state
    bc = b.reshape(nb, n_chunks, T, N)  # (B, C, T, N), a view
    # 1. local scans; every step is a (B, C, N) slice whose rows of N states are contiguous
    local = torch.stack(_sequential(lam, bc.unbind(2), None), dim=2)  # (B, C, T, N)
    # 2. carries: the state entering every chunk
    powers = torch.cumprod(lam.expand(T, N), dim=0)  # (T, N): lam**1 .. lam**T
    ends = local[:, :, -1].unbind(1)  # C tensors (B, N)
    carry = [h0] + _sequential(powers[-1], ends[:-1], h0)  # C entries, the first may be None
    if carry[0] is None:
        carry[0] = torch.zeros_like(ends[0])
    carry = torch.stack(carry, dim=1)  # (B, C, N)
    # 3. fix-up
    h = torch.addcmul(local, powers, carry[:, :, None, :])  # (B, C, T, N)
    h = h.reshape(nb, n_chunks * T, N)  # (B, C*T, N)
    return h[:, :L] if pad else h
