"""Chunked scan of a linear recurrence with a time-varying decay, in plain torch (any device).

The recurrence (per batch row and state; ``h[-1] = 0``)::

    h[:, t] = a[:, t] * h[:, t-1] + b[:, t]          a, b: (B, L, S), real or complex

is the selective scan's once its decays ``a = exp(delta alpha)`` and inputs ``b = delta u B`` are
expanded to every state (:mod:`shrinkssm.ops.selective_scan`). The length ``L`` is cut into
``n = ceil(L / T)`` chunks of ``T`` steps (``T = ceil(sqrt(L))`` by default; a last, short chunk is
padded with ``a = 1``, ``b = 0`` at the end, which changes no earlier state). Then:

1. *local* states: the recurrence inside every chunk from a zero state, sequential over the ``T``
   steps, each step one multiply-add over every chunk at once, ``(B, n, S)``;
2. in the same loop, the decay of every prefix of a chunk, ``P[c, t] = a[c, 0] * ... * a[c, t]``,
   one multiplication a step (not ``torch.cumprod``: its backward divides by the input, which gives
   inf and nan for subnormal complex decays);
3. a *carry* over the chunk ends, sequential over the ``n`` chunks, each step over ``(B, S)``:
   ``carry[c] = P[c-1, T-1] * carry[c-1] + local[c-1, T-1]`` (``carry[0] = 0``), the state entering
   chunk ``c``;
4. the fix-up ``h[c, t] = local[c, t] + P[c, t] * carry[c]``, one broadcast over everything.

So the Python-level depth is ``T + n ~ 2 sqrt(L)`` tensor operations instead of ``L``, and the work
about twice the sequential scan's. Numerics: only products of the given decays appear (no
logarithms, no division, no ``exp(-cumsum)``), so strong decays (``a`` tiny or exactly 0 after
underflow) and ``|a|`` near 1 over long sequences give the finite values and gradients of the
sequential loop. Autograd differentiates it; the loops go over ``unbind`` (indexing ``x[:, t]`` in a
loop would make every step's backward fill a full-size gradient).

Memory (with autograd): five tensors of ``(B, n T, S)`` in the states' dtype beside the inputs
(the local states and the prefix decays, each as produced step by step and stacked, and the
result; ``n T < L + T``), copies of ``a`` and ``b`` when ``T`` does not divide ``L``, and
``(B, n, S)`` for the carries. Nothing of size ``L * L`` or ``T * T`` per state.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["default_chunk", "varying_scan_chunked"]


def default_chunk(L: int) -> int:
    """Chunk length T for a sequence of length L: ceil(sqrt(L)), which minimises T + L / T."""
    return math.isqrt(L - 1) + 1 if L > 1 else 1


def varying_scan_chunked(a: Tensor, b: Tensor, chunk: int | None = None) -> Tensor:
    """States of ``h[:, t] = a[:, t] * h[:, t-1] + b[:, t]`` (``h[:, -1] = 0``), chunked (module docstring).

    Parameters
    ----------
    a : (B, L, S) real or complex
        Decay of every step and state.
    b : (B, L, S), dtype of ``a``
        Input of every step and state.
    chunk : int, optional
        Chunk length T >= 1 (default :func:`default_chunk`); need not divide L.

    Returns
    -------
    h : (B, L, S), dtype of ``a``
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"a and b must have one shape (B, L, S), got {tuple(a.shape)} and {tuple(b.shape)}")
    nb, L, S = b.shape
    T = default_chunk(L) if chunk is None else int(chunk)
    if T < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    T = min(T, L)
    n = math.ceil(L / T)
    pad = n * T - L
    if pad:  # trailing steps with a = 1, b = 0: no earlier state changes
        a = torch.cat([a, a.new_ones(nb, pad, S)], dim=1)
        b = torch.cat([b, b.new_zeros(nb, pad, S)], dim=1)
    ac = a.reshape(nb, n, T, S)                                       # (B, n, T, S), views
    bc = b.reshape(nb, n, T, S)
    # 1. local states from zero inside every chunk, and 2. the prefix decays, over T steps of
    # (B, n, S). The states start from an explicit zero so that a is in the graph even for L = 1
    # (a zero gradient, not None). The decays are multiplied here rather than by torch.cumprod,
    # whose backward divides by its input: inf and nan for subnormal complex decays.
    steps, prods, x, p = [], [], b.new_zeros(nb, n, S), None
    for a_t, b_t in zip(ac.unbind(2), bc.unbind(2)):
        x = torch.addcmul(b_t, a_t, x)
        p = a_t if p is None else a_t * p
        steps.append(x)
        prods.append(p)
    local = torch.stack(steps, dim=2)                                 # (B, n, T, S)
    P = torch.stack(prods, dim=2)                                     # (B, n, T, S)
    if n == 1:
        return local.reshape(nb, T, S)[:, :L]
    # 3. carries: the state entering every chunk, n - 1 steps over (B, S)
    carries, c = [torch.zeros_like(local[:, 0, 0])], None
    for p_end, l_end in zip(P[:, :-1, -1].unbind(1), local[:, :-1, -1].unbind(1)):
        c = l_end if c is None else torch.addcmul(l_end, p_end, c)
        carries.append(c)
    carry = torch.stack(carries, dim=1)                               # (B, n, S)
    # 4. fix-up
    h = torch.addcmul(local, P, carry[:, :, None, :])                 # (B, n, T, S)
    return h.reshape(nb, n * T, S)[:, :L]
