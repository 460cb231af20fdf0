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

The three implementations
-------------------------
:func:`ssd_scan_ref` loops over time (``unbind``), differentiated by autograd: the ground truth.

``backend="native"`` runs the compiled CPU kernel (:mod:`shrinkssm.ops._ssd_native`): the same
recurrence step by step, one exp per head and step, its backward written out (states
recomputed from checkpoints, the adjoint run backwards). Its cost per step is ``O(P N)`` per
head, so it falls in proportion with the state size ``N``; the chunked form's within-chunk part
does not depend on ``N``. ``"auto"`` is "native" on a CPU where the extension is built and a
head's state (``P x N``) is at most 16 KiB, where the kernel was measured faster, and "chunked"
everywhere else (:func:`resolve_ssd_backend`).

:func:`ssd_scan_chunked` is the SSD form (Dao & Gu 2024, "Transformers are SSMs"): the sequence is
cut into chunks of ``Q = chunk_size`` steps;

1. within a chunk, the output is quadratic ("attention-like"):
   ``y_diag[i] = sum_{j <= i} (C[i] . B[j]) exp(s[i] - s[j]) dt[j] x[j]`` with ``s`` the cumulative
   sum of the log-decays ``dt * A`` inside the chunk;
2. each chunk's own contribution to the state at its end is
   ``sum_j exp(s[Q-1] - s[j]) (dt[j] x[j]) B[j]^T``;
3. between chunks, the states at the chunk boundaries follow the linear recurrence
   ``S_end[c] = exp(s_c[Q-1]) S_end[c-1] + (chunk c's contribution)``; with ``K = n_chunks + 1``
   boundaries (the initial state first) it is solved as one batched product with the ``(K, K)``
   lower-triangular matrix of decays between boundaries, or, beyond
   :data:`DENSE_BOUNDARY_MAX` boundaries, by a log-depth parallel prefix scan
   (``ceil(log2(K))`` vectorised doubling steps): no Python loop over time or over chunks;
4. ``y_off[i] = exp(s[i]) S_end[c-1] C[i]`` carries the state entering the chunk.

Part 1 is a :class:`torch.autograd.Function` with its backward written out (the decays and the
masked kernel kept from the forward, the log-decays' gradient from one product); the other parts
are differentiated by autograd. ``chunk_size="auto"`` (the default) picks ``Q`` from the state
width, the head width and the length (:func:`auto_chunk_size`).

Numerical stability: the log-decays ``dt * A`` are non-positive; their cumulative sums are taken
inside a chunk only, every exponent is a difference ``s[i] - s[j]`` with ``i >= j`` (a sum of
non-positive terms) clamped to ``<= 0`` (against rounding; above the diagonal, where the
difference is positive, the clamp gives ``exp(0)`` and the kernel ``C B^T`` is zeroed instead),
and the decays between chunks are sums of log-decays in the solve between chunks (each entry of the ``(K, K)`` matrix a masked cumulative sum over its own
segment; in the prefix scan, sums over windows). ``exp`` is therefore only ever taken of non-positive numbers: nothing overflows,
however long the sequence or strong the decay.

Cost per head: ``O(L Q (N / R + P))`` for the quadratic parts (``R = H / G`` heads share the
``C B^T`` of their group) and ``O(L P N)`` for the chunk states and their read-out; the solve
between chunks adds ``O((L / Q)^2 P N)`` as the dense product (``O((L / Q) log(L / Q) P N)`` as
the prefix scan). Everything is plain
PyTorch (batched ``einsum``), so it runs on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

from shrinkssm.ops import _native_backend
from shrinkssm.ops._ssd_native import native_preferred, ssd_scan_native

__all__ = ["SSD_BACKENDS", "DEFAULT_CHUNK_SIZE", "auto_chunk_size", "resolve_chunk_size", "resolve_ssd_backend",
           "ssd_scan", "ssd_scan_ref", "ssd_scan_chunked"]

SSD_BACKENDS = ("auto", "chunked", "native", "ref")
"""Valid values of ``backend=`` of :func:`ssd_scan` (:func:`resolve_ssd_backend` says what "auto" is)."""

DEFAULT_CHUNK_SIZE = 64
"""The chunk length ``Q`` that ``chunk_size="auto"`` means off the CPU (the default before "auto")."""


AUTO_CHUNK_MIN, AUTO_CHUNK_MAX = 16, 256
"""The range of chunk lengths ``chunk_size="auto"`` picks from on a CPU."""


def auto_chunk_size(L: int, H: int, P: int, G: int, N: int, device_type: str = "cpu") -> int:
    """The chunk length ``Q`` that ``chunk_size="auto"`` picks (``L`` steps, ``H`` heads of
    width ``P``, ``G`` groups of ``N`` states; the result lies in ``[1, max(L, 1)]``).

    On a CPU: ``Q0 = 32 * sqrt(max(1, P N / 2048)) * max(1, L / 784)^(1/3)``, clipped to
    ``[AUTO_CHUNK_MIN, AUTO_CHUNK_MAX]``, then evened out to ``ceil(L / ceil(L / Q0))`` so that
    padding the last chunk wastes less than one chunk in ``ceil(L / Q0)``. Why: per step and
    head, the within-chunk part costs about ``Q`` (elementwise work on the ``(Q, Q)`` decays and
    products with ``P`` and ``N / (H / G)`` columns), the chunk states ``P N / Q`` (per-chunk
    passes over them) and the dense solve between chunks ``L P N / Q^2``; the rule is a fit of the
    fastest ``Q`` of forward + backward measured on one thread (``benchmarks/mamba2_cost.py
    --scan-only``; P = 8 ... 64, N = 32 ... 256, L = 784): 32 at ``P N <= 2048``, growing as
    ``sqrt(P N)`` beyond, to 96 at ``P N = 16384``; longer sequences (L = 2048, 4096) favour
    longer chunks, as the dense solve's ``L / Q^2`` says, shorter ones (L = 256) not shorter
    chunks, as the chunk states' ``1 / Q`` says. On other devices, where the parts are not
    timed here, it is :data:`DEFAULT_CHUNK_SIZE` (capped at ``L``).
    """
    if L <= 1:
        return 1
    if device_type != "cpu":
        return min(DEFAULT_CHUNK_SIZE, L)
    q0 = 32.0 * max(1.0, P * N / 2048.0) ** 0.5 * max(1.0, L / 784.0) ** (1.0 / 3.0)
    q0 = min(max(q0, AUTO_CHUNK_MIN), AUTO_CHUNK_MAX)
    nc = -(-L // min(L, round(q0)))
    return -(-L // nc)


def resolve_chunk_size(chunk_size: int | str, L: int, H: int, P: int, G: int, N: int,
                       device_type: str = "cpu") -> int:
    """The chunk length ``Q`` that ``chunk_size`` means: itself if a positive integer, capped at
    ``max(L, 1)``; :func:`auto_chunk_size` for ``"auto"``. Anything else raises ``ValueError``."""
    if isinstance(chunk_size, str) and chunk_size == "auto":
        return auto_chunk_size(L, H, P, G, N, device_type)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
    return min(chunk_size, max(L, 1))


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
    """Inclusive scan of ``S[k] = exp(log_decay[k]) S[k-1] + states[k]`` along dim 2 (``S[-1] = 0``).

    ``log_decay: (b, H, K)`` non-positive, ``states: (b, H, K, F)``. Hillis-Steele doubling:
    after the step with offset ``d`` every entry holds the sum over its last ``2d`` items; the
    decays travel as sums of log-decays (``exp`` of non-positive numbers only).
    """
    K = states.shape[2]
    d = 1
    while d < K:
        shifted_s = torch.cat([torch.zeros_like(states[:, :, :d]), states[:, :, :-d]], dim=2)
        shifted_l = torch.cat([torch.zeros_like(log_decay[:, :, :d]), log_decay[:, :, :-d]], dim=2)
        states = states + torch.exp(log_decay)[..., None] * shifted_s
        # items before the start carry no state; their log-decay (0) is never used again
        log_decay = log_decay + shifted_l
        d *= 2
    return states


class _WithinChunk(torch.autograd.Function):
    """``y = (tril(CB) * exp(min(s_i - s_j, 0))) @ xd`` per (batch, chunk, group, head in group).

    Shapes: ``CB (b, c, G, Q, Q)`` (``C_i . B_j``), ``s (b, c, G, R, Q)`` (cumulative log-decays
    inside each chunk, non-increasing), ``xd (b, c, G, R, Q, P)``; returns ``(b, c, G, R, Q, P)``.
    The backward is written out: the decay ``L`` and the masked kernel ``M = tril(CB) L`` are kept
    from the forward, and ``dL * L = dM * M`` gives the log-decays' gradient in one product.
    """

    @staticmethod
    def forward(ctx, CB: Tensor, s: Tensor, xd: Tensor) -> Tensor:
        Ld = (s.unsqueeze(-1) - s.unsqueeze(-2)).clamp_max_(0.0).exp_()    # (b, c, G, R, Qi, Qj)
        CBt = CB.tril()
        M = Ld * CBt.unsqueeze(3)
        ctx.save_for_backward(Ld, M, CBt, xd)
        return M @ xd

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: Tensor):
        Ld, M, CBt, xd = ctx.saved_tensors
        dxd = M.transpose(-1, -2) @ dy if ctx.needs_input_grad[2] else None
        T = (dy @ xd.transpose(-1, -2)).mul_(Ld)                           # dM * L
        dCB = T.sum(3).tril_() if ctx.needs_input_grad[0] else None
        ds = None
        if ctx.needs_input_grad[1]:
            T.mul_(CBt.unsqueeze(3))                                         # d seg = dM * M
            ds = T.sum(-1) - T.sum(-2)
        return dCB, ds, dxd


def _stable_segsum(l: Tensor) -> Tensor:
    """``out[..., k, j] = sum_{j < m <= k} l[..., m]`` for ``k >= j`` and ``-inf`` above the diagonal.

    ``l: (..., K)`` non-positive; returns ``(..., K, K)``. Each entry is summed over its own segment
    (a masked cumulative sum, not a difference of two running sums), so it stays exact to rounding
    of its own terms however large the sums before it."""
    K = l.shape[-1]
    ones = torch.ones(K, K, dtype=torch.bool, device=l.device)
    X = l.unsqueeze(-1).expand(*l.shape, K).masked_fill(~ones.tril(-1), 0.0)  # X[m, j] = l[m], m > j
    return torch.cumsum(X, dim=-2).masked_fill(~ones.tril(), float("-inf"))


def _chunk_boundaries(log_chunk: Tensor, states: Tensor) -> Tensor:
    """Inclusive ``S[k] = exp(log_chunk[k]) S[k-1] + states[k]`` along dim 2 (``S[-1] = 0``) as one
    batched product with the (K, K) matrix of decays between chunks.

    ``log_chunk: (b, H, K)`` non-positive, ``states: (b, H, K, F)``; returns ``(b, H, K, F)``.
    Costs ``K^2 F`` per (batch, head) in one matrix product (the prefix scan costs ``K log K F``
    in elementwise passes): the cheaper one while ``K`` is at most a few hundred."""
    return torch.exp(_stable_segsum(log_chunk)) @ states


DENSE_BOUNDARY_MAX = 256
"""Largest number of chunk boundaries solved by the dense (K, K) product; more use the prefix scan."""


def ssd_scan_chunked(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
                     initial_state: Tensor | None = None, return_final_state: bool = False,
                     chunk_size: int | str = "auto") -> Tensor | tuple[Tensor, Tensor]:
    """The SSD recurrence in chunked form (module docstring): quadratic within chunks of
    ``chunk_size`` steps, one product with the matrix of decays between chunks (or a log-depth
    prefix scan when there are more than :data:`DENSE_BOUNDARY_MAX` of them).

    Same arguments and results as :func:`ssd_scan_ref`; ``chunk_size`` is a positive integer or
    ``"auto"`` (:func:`auto_chunk_size`); it need not divide ``L`` (the last chunk is padded with
    zero steps, which leave the state unchanged).
    """
    b, L, H, P, G, N = _check(x, dt, A, B, C, initial_state)
    Q = resolve_chunk_size(chunk_size, L, H, P, G, N, x.device.type)
    if L == 0:
        S = x.new_zeros(b, H, P, N) if initial_state is None else initial_state
        y = x.new_zeros(b, 0, H, P)
        return (y, S) if return_final_state else y
    R = H // G
    nc = -(-L // Q)
    pad = nc * Q - L
    if pad:
        x, dt, B, C = (torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, pad))
                       for t in (x, dt, B, C))
    # chunked views, heads split as (G, R) so that B and C are never repeated per head; the step
    # index of a chunk moves next to the last axis, where the matrix products want it
    xd = (x * dt[..., None]).view(b, nc, Q, G, R, P).permute(0, 1, 3, 4, 2, 5).contiguous()
    #    xd: (b, c, G, R, Q, P), copied once here rather than by every product using it
    Bc = B.view(b, nc, Q, G, N).transpose(2, 3)                             # (b, c, G, Q, N)
    Cc = C.view(b, nc, Q, G, N).transpose(2, 3)
    s = torch.cumsum((dt * A).view(b, nc, Q, G, R), dim=2)                  # <= 0, within chunks
    s = s.permute(0, 1, 3, 4, 2).contiguous()     # (b, c, G, R, Q); contiguous, or (Q, Q) products
    #                                               built from it inherit a layout bmm must copy
    s_end = s[..., -1]                                                      # (b, c, G, R)

    # 1. within chunks: y_diag[i] = sum_{j<=i} (C_i . B_j) exp(s_i - s_j) xd_j
    y = _WithinChunk.apply(Cc @ Bc.transpose(-1, -2), s, xd)                # (b, c, G, R, Q, P)

    # 2. each chunk's contribution to the state at its end: sum_j exp(s_end - s_j) xd_j B_j^T
    w = torch.exp((s_end.unsqueeze(-1) - s).clamp_max(0.0))                 # (b, c, G, R, Q)
    xw = (xd * w.unsqueeze(-1)).transpose(-1, -2).reshape(b, nc, G, R * P, Q)
    states = (xw @ Bc).view(b, nc, H, P * N).transpose(1, 2)                # (b, H, c, P N)

    # 3. between chunks: S_end[c] = exp(s_end[c]) S_end[c-1] + states[c], S_end[-1] = initial
    #    state (an extra first item of decay 0)
    S0 = x.new_zeros(b, H, P * N) if initial_state is None else initial_state.reshape(b, H, P * N)
    states = torch.cat([S0.unsqueeze(2), states], dim=2)                    # (b, H, c + 1, P N)
    log_chunk = torch.cat([s_end.new_zeros(b, H, 1), s_end.reshape(b, nc, H).transpose(1, 2)], 2)
    solve = _chunk_boundaries if nc + 1 <= DENSE_BOUNDARY_MAX else _prefix_scan
    ends = solve(log_chunk, states)                                         # (b, H, c + 1, P N)
    final = ends[:, :, -1].reshape(b, H, P, N)

    # 4. the state entering each chunk, read out: y_off[i] = exp(s_i) S_in C_i
    entering = ends[:, :, :-1].reshape(b, G, R, nc, P, N).permute(0, 3, 1, 2, 4, 5)
    y_off = Cc @ entering.reshape(b, nc, G, R * P, N).transpose(-1, -2)     # (b, c, G, Q, R P)
    y_off = y_off.view(b, nc, G, Q, R, P) * torch.exp(s).permute(0, 1, 2, 4, 3).unsqueeze(-1)
    y = y.permute(0, 1, 4, 2, 3, 5) + y_off.permute(0, 1, 3, 2, 4, 5)       # (b, c, Q, G, R, P)
    y = y.reshape(b, nc * Q, H, P)[:, :L]
    return (y, final) if return_final_state else y


def resolve_ssd_backend(backend: str, device: torch.device, P: int = 1, N: int = 1,
                        dtype: torch.dtype = torch.float32) -> str:
    """The implementation ``backend`` means on ``device`` for heads of width ``P`` with ``N``
    states: "auto" is "native" on a CPU where the compiled extension loaded and a head's state is
    small enough for the kernel to be the faster one (:func:`shrinkssm.ops._ssd_native.native_preferred`:
    ``P x N`` up to 16 KiB), "chunked" otherwise; any other valid name is itself.

    Raises ``ValueError`` for an unknown name or "native" off the CPU, ``RuntimeError`` for
    "native" without the extension (the message says how to build it)."""
    if backend not in SSD_BACKENDS:
        raise ValueError(f"unknown SSD-scan backend {backend!r}; valid: {', '.join(SSD_BACKENDS)}")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "auto":
        use = on_cpu and _native_backend.native_available() and native_preferred(P, N, dtype)
        return "native" if use else "chunked"
    if backend == "native":
        if not on_cpu:
            raise ValueError(f"the native SSD scan runs on the CPU only, the tensors are on {device}; "
                             "use backend='auto' or 'chunked'")
        _native_backend._require()
    return backend


def ssd_scan(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor,
             initial_state: Tensor | None = None, return_final_state: bool = False, *,
             chunk_size: int | str = "auto", backend: str = "auto"
             ) -> Tensor | tuple[Tensor, Tensor]:
    """The SSD scan (module docstring) by ``backend``: "auto", "chunked", "native" or "ref"
    (:func:`resolve_ssd_backend`). ``chunk_size`` is the chunk length of the chunked form (the
    other backends ignore it, but it is validated)."""
    chosen = resolve_ssd_backend(backend, x.device, x.shape[-1] if x.ndim == 4 else 1,
                                 B.shape[-1] if B.ndim == 4 else 1, x.dtype)
    if chosen == "ref":
        return ssd_scan_ref(x, dt, A, B, C, initial_state, return_final_state)
    if chosen == "native":
        resolve_chunk_size(chunk_size, 1, 1, 1, 1, 1)                      # raises if invalid
        b, L, H, P, G, N = _check(x, dt, A, B, C, initial_state)
        if min(b, L, H, P, N) > 0:
            return ssd_scan_native(x, dt, A, B, C, initial_state, return_final_state)
    return ssd_scan_chunked(x, dt, A, B, C, initial_state, return_final_state, chunk_size=chunk_size)
