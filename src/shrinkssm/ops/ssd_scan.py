"""The SSD scan of Mamba-2 layers (scalar decay per head): a sequential reference and the chunked form.

Conventions (legend: b batch, L length, H heads, P head width, G groups, N states; ``H % G == 0``
and head ``h`` belongs to group ``h // (H // G)``, as ``repeat_interleave`` over groups gives).
Every state is real. For every head ``h`` with group ``g``::

    a[t, h]  = exp(dt[t, h] * A[h])                          scalar decay, in (0, 1] when dt >= 0, A <= 0
    S[t, h]  = a[t, h] * S[t-1, h] + (dt[t, h] * x[t, h]) B[t, g]^T        (P, N), S[-1] = initial state
    y[t, h]  = S[t, h] C[t, g]                                               (P,)

This is the recurrence ``h[t] = a[t] h[t-1] + B[t] x[t]^T``, ``y[t] = h[t]^T C[t]`` with the state
stored transposed, ``S = h^T`` of shape ``(P, N)`` (the layout of ``mamba_ssm`` and Hugging Face's
``Mamba2Cache.ssm_states``), and with Mamba-2's discretisation: the input enters as ``dt * x``.
``B`` and ``C`` are shared by the heads of a group. The layer adds the skip term ``D x`` itself.

Arguments (one dtype for all, float32 or float64; real)::

    x  : (b, L, H, P)      dt : (b, L, H), the step sizes (>= 0; the layer's softplus output)
    A  : (H,), <= 0        B, C : (b, L, G, N)
    initial_state : (b, H, P, N) or None (zeros)
    returns y : (b, L, H, P) and, with ``return_final_state``, S[L-1] : (b, H, P, N)

A zero step ``dt[t] = 0`` leaves the state unchanged (``a = 1``, no input): that is how a layer
passes padded positions through, and how the chunked form pads a length that ``chunk_size`` does
not divide.

The two implementations
-----------------------
:func:`ssd_scan_ref` loops over time (``unbind``), differentiated by autograd: the ground truth.

:func:`ssd_scan_chunked` is the SSD form (Dao & Gu 2024, "Transformers are SSMs"): the sequence is
cut into chunks of ``Q = chunk_size`` steps;

1. within a chunk, the output is quadratic ("attention-like"):
   ``y_diag[i] = sum_{j <= i} (C[i] . B[j]) exp(s[i] - s[j]) dt[j] x[j]`` with ``s`` the cumulative
   sum of the log-decays ``dt * A`` inside the chunk;
2. each chunk's own contribution to the state at its end is
   ``sum_j exp(s[Q-1] - s[j]) (dt[j] x[j]) B[j]^T``;
3. between chunks, the states at the chunk boundaries follow the linear recurrence
   ``S_end[c] = exp(s_c[Q-1]) S_end[c-1] + (chunk c's contribution)``; it is solved by a
   log-depth parallel prefix scan over the chunks (``ceil(log2(n_chunks + 1))`` vectorised
   doubling steps, each over every chunk at once: no Python loop over time or over chunks);
4. ``y_off[i] = exp(s[i]) S_end[c-1] C[i]`` carries the state entering the chunk.

Numerical stability: the log-decays ``dt * A`` are non-positive; their cumulative sums are taken
inside a chunk only, every exponent is a difference ``s[i] - s[j]`` with ``i >= j`` (a sum of
non-positive terms) clamped to ``<= 0`` against rounding, entries above the diagonal are masked
to ``-inf`` before ``exp``, and the decays between chunks are accumulated as sums of log-decays in
the prefix scan. ``exp`` is therefore only ever taken of non-positive numbers: nothing overflows,
however long the sequence or strong the decay.

Cost: ``O(L Q (N + P))`` per head for the quadratic parts and ``O(L P N / Q)`` per head for the
chunk states; the prefix scan adds ``O((L / Q) log(L / Q) P N)`` per head. Everything is plain
PyTorch (batched ``einsum``), so it runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SSD_BACKENDS", "DEFAULT_CHUNK_SIZE", "ssd_scan", "ssd_scan_ref", "ssd_scan_chunked"]

SSD_BACKENDS = ("auto", "chunked", "ref")
"""Valid values of ``backend=`` of :func:`ssd_scan` ("auto" is "chunked" on every device)."""

DEFAULT_CHUNK_SIZE = 64
"""Default chunk length ``Q`` of the chunked form."""


def _check(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
           initial_state: Tensor | None) -> tuple[int, int, int, int, int, int]:
    """Validate shapes and dtypes; return (b, L, H, P, G, N)."""
    if x.ndim != 4:
        raise ValueError(f"x must be (batch, L, heads, P), got shape {tuple(x.shape)}")
    b, L, H, P = x.shape
    if B.ndim != 4 or B.shape[:2] != (b, L):
        raise ValueError(f"B must be (batch, L, groups, N) = ({b}, {L}, G, N), got {tuple(B.shape)}")
    G, N = B.shape[2], B.shape[3]
    if C.shape != B.shape:
        raise ValueError(f"C must have the shape of B {tuple(B.shape)}, got {tuple(C.shape)}")
    if G < 1 or H % G:
        raise ValueError(f"the heads ({H}) must be a multiple of the groups ({G})")
    if dt.shape != (b, L, H):
        raise ValueError(f"dt must be (batch, L, heads) = {(b, L, H)}, got {tuple(dt.shape)}")
    if A.shape != (H,):
        raise ValueError(f"A must be (heads,) = ({H},), got {tuple(A.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"the SSD scan runs in float32 or float64, got {x.dtype}")
    for name, t in (("dt", dt), ("A", A), ("B", B), ("C", C)):
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, x has {x.dtype}: pass one dtype")
    if initial_state is not None:
        if initial_state.shape != (b, H, P, N):
            raise ValueError(f"initial_state must be (batch, heads, P, N) = {(b, H, P, N)}, "
                             f"got {tuple(initial_state.shape)}")
        if initial_state.dtype != x.dtype:
            raise ValueError(f"initial_state has dtype {initial_state.dtype}, x has {x.dtype}")
    return b, L, H, P, G, N


def ssd_scan_ref(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                 initial_state: Tensor | None = None, return_final_state: bool = False
                 ) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD recurrence by a plain loop over time (module docstring); the reference.

    Shapes: ``x (b, L, H, P)``, ``dt (b, L, H)``, ``A (H,)``, ``B, C (b, L, G, N)``,
    ``initial_state (b, H, P, N)`` or None. Returns ``y (b, L, H, P)`` [and ``S[L-1] (b, H, P, N)``].
    """
    b, L, H, P, G, N = _check(x, dt, A, B, C, initial_state)
    rep = H // G
    S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
    Bh = B.repeat_interleave(rep, dim=2)                                    # (b, L, H, N)
    Ch = C.repeat_interleave(rep, dim=2)
    ys = []
    for x_t, dt_t, B_t, C_t in zip(x.unbind(1), dt.unbind(1), Bh.unbind(1), Ch.unbind(1)):
        a = torch.exp(dt_t * A)                                             # (b, H)
        S = a[..., None, None] * S + (dt_t[..., None] * x_t)[..., :, None] * B_t[..., None, :]
        ys.append((S * C_t[..., None, :]).sum(-1))                          # (b, H, P)
    y = torch.stack(ys, dim=1) if ys else x.new_zeros(b, 0, H, P)
    return (y, S) if return_final_state else y


def _prefix_scan(log_decay: Tensor, states: Tensor) -> Tensor:
    """Inclusive scan of ``S[k] = exp(log_decay[k]) S[k-1] + states[k]`` along dim 1 (``S[-1] = 0``).

    ``log_decay: (b, K, H)`` non-positive, ``states: (b, K, H, P, N)``. Hillis-Steele doubling:
    after the step with offset ``d`` every entry holds the sum over its last ``2d`` items; the
    decays travel as sums of log-decays (``exp`` of non-positive numbers only).
    """
    K = states.shape[1]
    d = 1
    while d < K:
        shifted_s = torch.cat([torch.zeros_like(states[:, :d]), states[:, :-d]], dim=1)
        shifted_l = torch.cat([torch.zeros_like(log_decay[:, :d]), log_decay[:, :-d]], dim=1)
        states = states + torch.exp(log_decay)[..., None, None] * shifted_s
        # items before the start carry no state; their log-decay (0) is never used again
        log_decay = log_decay + shifted_l
        d *= 2
    return states


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     initial_state: Tensor | None = None, return_final_state: bool = False,
                     chunk_size: int = DEFAULT_CHUNK_SIZE) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD recurrence in chunked form (module docstring): quadratic within chunks of
    ``chunk_size`` steps, a log-depth prefix scan over the chunk states between them.

    Same arguments and results as :func:`ssd_scan_ref`; ``chunk_size`` need not divide ``L`` (the
    last chunk is padded with zero steps, which leave the state unchanged).
    """
    b, L, H, P, G, N = _check(x, dt, A, B, C, initial_state)
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if L == 0:
        S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
        y = x.new_zeros(b, 0, H, P)
        return (y, S) if return_final_state else y
    rep = H // G
    Q = min(chunk_size, L)
    nc = -(-L // Q)
    pad = nc * Q - L
    if pad:
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, pad))
                       for t in (x, dt, B, C))
    # chunked views; heads split as (G, rep) so that B and C are never repeated per head
    xd = (x * dt[..., None]).reshape(b, nc, Q, G, rep, P)                   # dt * x
    Bc = B.reshape(b, nc, Q, G, N)
    Cc = C.reshape(b, nc, Q, G, N)
    logd = (dt * A).reshape(b, nc, Q, G, rep)                               # <= 0
    s = torch.cumsum(logd, dim=2)                                           # within each chunk
    s_end = s[:, :, -1]                                                     # (b, nc, G, rep)

    # 1. within chunks: y_diag[i] = sum_{j<=i} (C_i . B_j) exp(s_i - s_j) xd_j
    seg = s.unsqueeze(3) - s.unsqueeze(2)                                   # (b, nc, Qi, Qj, G, rep)
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    seg = seg.clamp_max(0.0).masked_fill(~causal[:, :, None, None], float("-inf"))
    CB = torch.einsum("bcign,bcjgn->bcijg", Cc, Bc)                         # (b, nc, Qi, Qj, G)
    M = CB.unsqueeze(-1) * torch.exp(seg)                                   # (b, nc, Qi, Qj, G, rep)
    y = torch.einsum("bcijgr,bcjgrp->bcigrp", M, xd)

    # 2. each chunk's contribution to the state at its end
    w = torch.exp((s_end.unsqueeze(2) - s).clamp_max(0.0))                  # (b, nc, Q, G, rep)
    states = torch.einsum("bcjgr,bcjgn,bcjgrp->bcgrpn", w, Bc, xd)          # (b, nc, G, rep, P, N)

    # 3. between chunks: S_end[c] = exp(s_end[c]) S_end[c-1] + states[c], S_end[-1] = initial state
    states = states.reshape(b, nc, H, P, N)
    log_chunk = s_end.reshape(b, nc, H)
    if initial_state is not None:
        states = torch.cat([initial_state.unsqueeze(1), states], dim=1)
        log_chunk = torch.cat([log_chunk.new_zeros(b, 1, H), log_chunk], dim=1)
    ends = _prefix_scan(log_chunk, states)
    if initial_state is not None:
        entering, final = ends[:, :-1], ends[:, -1]
    else:
        entering = torch.cat([ends.new_zeros(b, 1, H, P, N), ends[:, :-1]], dim=1)
        final = ends[:, -1]

    # 4. the state entering each chunk, read out: y_off[i] = exp(s_i) S_in C_i
    entering = entering.reshape(b, nc, G, rep, P, N)
    y = y + torch.einsum("bcign,bcgrpn,bcigr->bcigrp", Cc, entering, torch.exp(s))
    y = y.reshape(b, nc * Q, H, P)[:, :L]
    return (y, final) if return_final_state else y


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             initial_state: Tensor | None = None, return_final_state: bool = False, *,
             chunk_size: int = DEFAULT_CHUNK_SIZE, backend: str = "auto"
             ) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan (module docstring) by ``backend``: "chunked" (and "auto") or "ref"."""
    if backend not in SSD_BACKENDS:
        raise ValueError(f"unknown SSD-scan backend {backend!r}; valid: {', '.join(SSD_BACKENDS)}")
    if backend == "ref":
        return ssd_scan_ref(x, dt, A, B, C, initial_state, return_final_state)
    return ssd_scan_chunked(x, dt, A, B, C, initial_state, return_final_state, chunk_size=chunk_size)
