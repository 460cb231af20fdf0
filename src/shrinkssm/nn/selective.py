"""A selective (Mamba-1 style) SSM layer, its mean LTI surrogate, and its in-training reduction.

The layer (Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces", 2023;
the structure of ``mamba_simple.Mamba``), on ``u: (B, L, H)`` with ``E = expand * H`` channels::

    x, z   = in_proj(u)                       (B, L, E) each; z is the gate
    x      = silu(causal depthwise conv(x))   kernel d_conv
    dt, B(x), C(x) = x_proj(x)                dt: (B, L, dt_rank); B(x), C(x): (B, L, N), shared by channels
    delta  = softplus(dt_proj(dt))            (B, L, E), the input-dependent step size
    h[t]   = exp(delta[t] A) h[t-1] + delta[t] B[t] x[t]     per channel, A = -exp(A_log) (E, N) real
    y[t]   = C[t] . h[t] + D x[t]
    out    = out_proj(y * silu(z))

i.e. the zero-order-hold transition of a diagonal continuous-time ``A`` with Mamba-1's simplified
input term ``delta B`` (``selective_scan_ref``). The scan is
:func:`shrinkssm.ops.selective_scan.selective_scan`
(a fused CPU kernel with a sequential reference).

The LTI surrogate (``docs/design.md`` §7)
-----------------------------------------
A selective layer has no single LTI system. Per channel ``c`` the paper averages the discretised
matrices over inputs drawn from the data: ``A_bar = E[exp(delta A)]``, ``b_bar = E[delta B(x)]``,
``c_bar = E[C(x)]``, a SISO discrete-time system (conventions of :mod:`shrinkssm.lti`) whose
Gramians and Hankel singular values rank the channel's states. Two choices (``surrogate=``):

``"mean"`` (the paper's literal construction)
    Gramians of ``(A_bar, b_bar, c_bar)``: ``P = A_bar P A_bar^T + b_bar b_bar^T`` and
    ``Q = A_bar^T Q A_bar + c_bar^T c_bar``.
``"second_moment"`` (default)
    The same mean transition, with the input and output *energies* averaged instead of the
    vectors: ``P = A_bar P A_bar^T + E[b b^T]``, ``Q = A_bar^T Q A_bar + E[c^T c]`` with
    ``b = delta B(x)`` and ``c = C(x)``. These are the Gramians of the LTI system ``(A_bar, F, G)``
    with ``F F^T = E[b b^T]`` and ``G^T G = E[c^T c]``; for constant ``B``, ``C`` both choices
    coincide. Why it is the default: ``B(x)`` and ``C(x)`` are linear in ``x`` and fluctuate
    around small means, so ``b_bar b_bar^T`` sees only a sliver of the energy that passes through
    the states; measured on sklearn digits with a freshly initialised layer (``N = 16``), reducing
    one channel to 4 / 8 / 12 states changed its output by a median 40% / 72% / 22% with the mean
    surrogate and 6% / 1.4% / 0.25% with the second-moment one.

The layer accumulates the statistics itself, in buffers (so they go into ``state_dict`` and
checkpoints): every training-mode forward updates an exponential moving average over batches
(``surrogate_momentum``, 0.1 as for batch norm; None for a plain average), over valid (unmasked)
positions only; the second moments use at most :data:`MOMENT_POSITIONS` positions per batch.
:func:`calibrate_surrogates` instead re-estimates them as a plain average over batches you choose,
in eval mode. In data-parallel training, DDP's default ``broadcast_buffers`` copies rank 0's
statistics to every process at the start of each forward, but each process then folds in its own
batch: broadcast the ``sur_*`` buffers from rank 0 right before a reduction, so that every process
computes the same balancing transforms (the compressor's ``agree`` hook only equalises the ranks).

Two reductions, both driven by :class:`shrinkssm.compress.Compressor` (``plan_reduction`` /
``reduce_``), chosen by ``reduction=``:

``"per_channel"`` (faithful to the paper)
    Per channel: Gramians of the surrogate, balancing transform ``T`` (``n x r``) and ``T^-``
    (square-root method), a rank ``r_c`` from the compressor's rule (e.g. the energy rule with
    ``tau``). The reduced channel keeps the *selective* mechanism: its continuous-time generator
    is the projected ``A_r = T^- A T``, re-diagonalised (``A_r = W diag(alpha) W^-1``; conjugate
    pairs become one complex state), discretised at run time with the input-dependent step:
    ``exp(delta[t] alpha)`` (ZOH of the reduced system). The balancing transforms act on the
    input-dependent projections at run time: state ``j`` reads ``(W^-1 T^- B(x))_j`` and writes
    ``(C(x) T W)_j`` (as ``(B, L, N) @ (N, R)`` GEMMs), and the scan runs over the kept states only,
    channels grouped in buckets padded to the largest rank of the bucket, so compute falls with the
    kept ranks (but see "What it costs" below). After a reduction the new states' decay
    statistics start afresh; the means of ``delta B`` and ``C`` carry over (the basis of ``B(x)``,
    ``C(x)`` is unchanged).
``"shared"`` (structure preserving)
    Keep one subset of state indices for the whole layer: ``A_log[:, S]`` and the rows of
    ``x_proj`` that produce ``B(x)[S]`` and ``C(x)[S]``. ``B(x)``, ``C(x)`` stay shared across
    channels and the scan stays the plain diagonal one at the smaller ``N``. Each index ``n`` is
    scored by the surrogate's Hankel energy attributed to it: per channel
    ``s[c, n] = sum_k sigma_k |T[n, k] T^-[k, n]|`` (full balancing transform), normalised to sum
    to 1 per channel and averaged over channels; the compressor's rule picks how many to keep.

Approximations (say them when quoting results)
----------------------------------------------
* The surrogate replaces the input-dependent transition by its mean and ``B(x)``, ``C(x)`` by
  their means (``"mean"``: a state whose ``delta B`` averages to ~0 scores ~0 even if it
  fluctuates strongly) or their second moments (correlations between the transition and
  ``B``, ``C`` over time are ignored).
* The faithful reduction computes ``T`` from the *discrete* surrogate and applies it to the
  *continuous* generator ``A`` (the run-time transition is ``exp(delta T^- A T)``, re-diagonalised,
  where the balanced truncation of the surrogate would have ``T^- A_bar T``). Because ``A`` and
  ``A_bar`` are both diagonal in the original basis, a channel kept at full rank is reproduced
  exactly (a similarity transform). A truncated ``T`` commutes with the exponential only to first
  order in the step (``exp(d T^- A T) = T^- exp(d A) T + O(d^2)``), so even with a constant step
  the reduced transition differs from the surrogate's balanced truncation by ``O(d^2)``; this is
  what keeps the reduced layer selective. The effect on outputs is measured on real data in
  ``tests/compress/test_selective_compression.py``.
* ``T^- A T`` is not guaranteed stable; eigenvalues with real part above ``-ALPHA_FLOOR`` are
  moved to ``-ALPHA_FLOOR`` (a note says so). Near-defective reduced generators (``cond(W) >
  max_cond``) lower the rank by one, as in :mod:`shrinkssm.lti.reduction`.
* A faithful reduction replaces ``(E, N)`` decay parameters by per-state maps ``(R, N)``: the state
  shrinks, the parameter count does not.

What it costs
-------------
``benchmarks/selective.py`` (batch 32, length 784, d_model 32, E = 64, float32, one thread; time
relative to the full N = 64 layer in the same run). The unreduced scan broadcasts the shared
``B(x)``, ``C(x)`` to all channels, so it pays ~1 unit per state and step. A per-channel reduced
layer must first transform them for every kept state
(``R x N`` GEMMs per position, plus ``(B, L, R)`` tensors in memory), which costs more than the
scan itself: its time falls with the kept ranks (forward 0.92 / 1.49 / 2.47 at r = 4 / 8 / 16 per
channel from N = 64) but stays above the full N = 64 layer (1.0) except at r ~ 4, while an
unreduced (or shared-subset) layer at N = 16 takes 0.52 (forward and backward 0.53). On this CPU the
faithful reduction therefore shrinks the recurrent state (memory per sequence in generation) more
than it saves training time; the shared subset is the variant that makes training faster.

Measured on a real task
-----------------------
``experiments/selective_study.py`` (results in ``experiments/selective_study.txt``): MNIST-5k
pooled to 14 x 14 (length 196), 2 blocks, d_model 32, 1,000 steps, one thread. Test accuracy, mean
over seeds 0-2 (seed 0 alone for the two costly runs), and training time relative to N = 64
uncompressed in the same run (seed 0):

=============================  ===========  ======  ==========================
run                            state / ch   test    time
=============================  ===========  ======  ==========================
N = 16 trained directly        16           0.843   0.46
N = 64 uncompressed            64           0.856   1.00
64 -> 16, shared subset        16           0.869   0.55
64 -> 16, per channel          16           0.892   2.50 (transforms, above)
64, tau = 0.05 per channel     ~2 (ragged)  0.866   0.81
=============================  ===========  ======  ==========================

Reducing from a larger start beat training at N = 16 directly on every seed (shared subset: +3.4,
+3.6, +0.6 points), at about the direct run's cost (0.55 vs 0.46, the first 20% being spent at
N = 64). Caveats: one small task, 500 test images (one standard error ~1.5 points), and the
per-channel run carries 12x the parameters of the others (its transform maps).

Sizes: ``d_state`` is the mean number of real states per channel, rounded up (``N`` for an
unreduced layer); :meth:`SelectiveSSM.channel_orders` gives every channel's order and
:attr:`SelectiveSSM.state_size` their sum (what the scan pays for; a complex state counts 2).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkssm import lti
from shrinkssm.ops.selective_scan import BACKENDS, ScanLayout, lanes_for, selective_scan

__all__ = [
    "ALPHA_FLOOR",
    "REDUCTIONS",
    "SURROGATES",
    "SelectiveSSM",
    "SelectiveReduction",
    "SelectiveReductionPlan",
    "calibrate_surrogates",
    "balance_channel",
    "state_scores",
]

REDUCTIONS = ("per_channel", "shared")
"""Values of ``reduction=``: the faithful per-channel balanced truncation, or one shared subset."""

SURROGATES = ("second_moment", "mean")
"""Values of ``surrogate=``: Gramians from the second moments of the input/output terms (default)
or from their means (the paper's literal construction); module docstring."""

MOMENT_POSITIONS = 2048
"""Positions per batch (at most; an evenly spaced subset) used for the second moments, whose cost
grows with E * N^2."""

ALPHA_FLOOR = 1e-4
"""Largest real part a reduced continuous-time eigenvalue may have (its stability margin)."""

_METHODS = ("balanced", "random")


# ------------------------------------------------------------------------------------------------
# Numerical helpers: float64 torch (so that they follow torch.set_num_threads; numpy's OpenBLAS
# threads fight torch's on a busy machine), batched over leading dimensions where shapes allow
# ------------------------------------------------------------------------------------------------

_F64 = torch.float64


def _t(value) -> Tensor:
    """Array-like -> float64 (or complex128) CPU tensor."""
    t = torch.as_tensor(value)
    return t.to(torch.complex128 if t.is_complex() else _F64).cpu()


def _is_diagonal(A: Tensor) -> bool:
    return not bool((A - torch.diag_embed(torch.diagonal(A, dim1=-2, dim2=-1))).any())


def _gramians(A_bar: Tensor, Sb: Tensor, Sc: Tensor) -> tuple[Tensor, Tensor]:
    """P = A P A^T + Sb and Q = A^T Q A + Sc for real, stable A: (..., n, n).

    ``Sb = b b^T`` and ``Sc = c^T c`` give the Gramians of the SISO system (A, b, c); the
    second-moment surrogate passes ``E[b b^T]`` and ``E[c^T c]`` instead. Closed form
    ``S_ij / (1 - a_i a_j)`` for diagonal A; otherwise through the eigendecomposition
    ``A = V diag(lam) V^-1`` (the surrogates' A is block diagonal with 1x1 and rotation-scaling 2x2
    blocks, so V is well conditioned): ``P = V (V^-1 Sb V^-H / (1 - lam_i conj(lam_j))) V^H``.
    """
    if _is_diagonal(A_bar):
        a = torch.diagonal(A_bar, dim1=-2, dim2=-1)
        den = 1.0 - a.unsqueeze(-1) * a.unsqueeze(-2)
        P, Q = Sb / den, Sc / den
    else:
        lam, V = torch.linalg.eig(A_bar)
        Vi = torch.linalg.inv(V)
        den = 1.0 - lam.unsqueeze(-1) * lam.conj().unsqueeze(-2)
        P = (V @ ((Vi @ Sb.to(V.dtype) @ Vi.mH) / den) @ V.mH).real
        # Q = A^T Q A + Sc with A^T = Vi^H diag(conj lam) V^H
        Q = (Vi.mH @ ((V.mH @ Sc.to(V.dtype) @ V) / den.conj()) @ Vi).real
    return 0.5 * (P + P.mT), 0.5 * (Q + Q.mT)


def _factor(M: Tensor) -> Tensor:
    """L with L L^T = M for symmetric positive semi-definite M (eigenvalues clipped at 0)."""
    w, V = torch.linalg.eigh(M)
    return V * torch.sqrt(w.clamp_min(0.0)).unsqueeze(-2)


@dataclass(frozen=True)
class _Balance:
    """Square-root balancing of one real system (unbatched tensors)."""

    hsv: Tensor        # (n,) descending
    Lc: Tensor
    Lo: Tensor
    U: Tensor
    Vh: Tensor

    @property
    def n_nonzero(self) -> int:
        s = self.hsv
        if s.numel() == 0 or s[0] <= 0:
            return 0
        return int((s > s.numel() * torch.finfo(_F64).eps * s[0]).sum())

    def transforms(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """T (n, k) and T^- (k, n) of the balanced directions ``idx`` (T^- T = I)."""
        scale = 1.0 / torch.sqrt(self.hsv[idx])
        T = (self.Lc @ self.Vh[idx].T) * scale.unsqueeze(0)
        Tm = scale.unsqueeze(1) * (self.U[:, idx].T @ self.Lo.T)
        return T, Tm


def _balance_batch(A_bar: Tensor, Sb: Tensor, Sc: Tensor) -> list[_Balance]:
    """Balance (..., n, n) systems at once; one :class:`_Balance` per system, flattened."""
    P, Q = _gramians(A_bar, Sb, Sc)
    Lc, Lo = _factor(P), _factor(Q)
    U, s, Vh = torch.linalg.svd(Lo.mT @ Lc)
    n = A_bar.shape[-1]
    flat = lambda t, *shape: t.reshape(-1, *shape)  # noqa: E731
    return [_Balance(*parts) for parts in zip(flat(s, n), flat(Lc, n, n), flat(Lo, n, n), flat(U, n, n),
                                              flat(Vh, n, n))]


def _balance(A_bar: Tensor, Sb: Tensor, Sc: Tensor) -> _Balance:
    return _balance_batch(A_bar, Sb, Sc)[0]


def _scores(bal: _Balance) -> Tensor:
    k = bal.n_nonzero
    if k == 0:
        return torch.zeros(bal.hsv.shape[0], dtype=_F64)
    T, Tm = bal.transforms(torch.arange(k))
    return (T * Tm.T).abs() @ bal.hsv[:k]


def state_scores(A_bar, Sb, Sc) -> Tensor:
    """Hankel energy of a real surrogate attributed to its state coordinates.

    ``s[n] = sum_k sigma_k |T[n, k] T^-[k, n]|`` over the balanced directions with nonzero
    ``sigma`` (``T`` and ``T^-`` the full balancing transforms). A coordinate that the input cannot
    reach or the output cannot see scores 0; for decoupled coordinates ``s[n]`` is that
    coordinate's own HSV.

    Parameters
    ----------
    A_bar : (n, n) real
        Mean transition.
    Sb, Sc : (n, n) real
        Input and output energy: ``b b^T`` and ``c^T c`` (mean surrogate) or their expectations
        (second-moment surrogate).

    Returns
    -------
    (n,) float64 tensor, >= 0
    """
    return _scores(_balance(_t(A_bar), _t(Sb), _t(Sc)))


@dataclass(frozen=True)
class _ChannelStates:
    """New states of one channel in realization coordinates: x ~ L_out zeta, zeta = L_in x."""

    alpha: Tensor      # (r,) complex128 continuous-time eigenvalues (pairs: both members)
    L_in: Tensor       # (r, n) complex128
    L_out: Tensor      # (n, r) complex128
    hsv: Tensor        # (n,) float64
    notes: tuple[str, ...]


def balance_channel(A_bar, Sb, Sc, G, rank: int, selection: str = "largest", max_cond: float = 1e8,
                    balance: _Balance | None = None) -> _ChannelStates:
    """Balanced truncation of one channel's surrogate, applied to its continuous-time generator.

    Parameters
    ----------
    A_bar : (n, n) real
        Mean discrete transition (the surrogate's state matrix); stable.
    Sb, Sc : (n, n) real
        Input and output energy of the surrogate (``b b^T``, ``c^T c`` or their expectations).
    G : (n, n) real
        The channel's continuous-time generator in the same coordinates (``A_bar = E[exp(delta G)]``).
    rank : int
        Kept real order, ``1 <= rank``; capped at the number of nonzero HSVs.
    selection : {"largest", "smallest"}
        Keep the most important balanced directions (default) or, as an ablation, the least.
    max_cond : float
        Largest condition number of the eigenvector matrix of ``T^- G T``; above it the rank is
        lowered by one and the step repeated.
    balance : optional
        The surrogate's balancing, if already computed.

    Returns
    -------
    _ChannelStates
        ``alpha = eig(T^- G T)`` (real parts at most ``-ALPHA_FLOOR``), ``L_in = W^-1 T^-``,
        ``L_out = T W`` (complex128 tensors); a channel whose surrogate map is zero keeps one state
        of ``G`` with zero maps.
    """
    G = _t(G)
    n = G.shape[0]
    notes = []
    bal = balance if balance is not None else _balance(_t(A_bar), _t(Sb), _t(Sc))
    k = bal.n_nonzero
    if k == 0:
        lam = torch.linalg.eigvals(G)
        slowest = min(float(lam.real.max()), -ALPHA_FLOOR)
        notes.append("surrogate map is zero: one state kept with zero input and output maps")
        zero = torch.zeros(1, n, dtype=torch.complex128)
        return _ChannelStates(torch.tensor([slowest + 0j]), zero, zero.T.clone(), bal.hsv, tuple(notes))
    r = min(rank, k)
    if r < rank:
        notes.append(f"rank {rank} capped at {k} nonzero HSVs")
    while True:
        idx = torch.arange(r) if selection == "largest" else torch.arange(k - r, k)
        T, Tm = bal.transforms(idx)
        alpha, Wv = torch.linalg.eig(Tm @ G @ T)
        unit = Wv / torch.linalg.vector_norm(Wv, dim=0, keepdim=True)
        cond = float(torch.linalg.cond(unit)) if r > 1 else 1.0
        if cond <= max_cond or r == 1:
            break
        notes.append(f"near-defective reduced generator (cond {cond:.1e}): rank {r} -> {r - 1}")
        r -= 1
    unstable = alpha.real > -ALPHA_FLOOR
    if bool(unstable.any()):
        notes.append(f"{int(unstable.sum())} reduced eigenvalue(s) with real part > -{ALPHA_FLOOR:g} "
                     "moved to the floor")
        floored = torch.complex(torch.full_like(alpha.real, -ALPHA_FLOOR), alpha.imag)
        alpha = torch.where(unstable, floored, alpha)
    L_in = torch.linalg.solve(Wv, Tm.to(Wv.dtype))
    L_out = T.to(Wv.dtype) @ Wv
    for name, v in (("alpha", alpha), ("L_in", L_in), ("L_out", L_out)):
        if not bool(torch.isfinite(v).all()):
            raise ValueError(f"balancing produced non-finite {name}; the layer is left unchanged")
    return _ChannelStates(alpha, L_in, L_out, bal.hsv, tuple(notes))


# ------------------------------------------------------------------------------------------------
# Plans and reports
# ------------------------------------------------------------------------------------------------


@dataclass
class SelectiveReductionPlan:
    """What :meth:`SelectiveSSM.plan_reduction` proposes (the compressor's gate reads it).

    ``hsv`` concatenates every channel's surrogate HSVs (descending, float64; for the record);
    ``old``/``target`` are in ``d_state`` units (mean real states per channel, rounded up);
    ``old_size``/``target_size`` count all real states of the layer (what the gate compares);
    ``ranks`` is a per-channel list (``"per_channel"``) or one shared count (``"shared"``).
    ``skipped`` says why nothing can be planned (e.g. no surrogate statistics yet). Apply a plan at
    once (before the layer trains on): ``reduce_`` reuses the balancing it computed.
    """

    method: str
    kind: str
    hsv: Tensor
    old: int
    target: int
    old_size: int
    target_size: int
    ranks: list[int] | int
    skipped: str | None = None
    scores: Tensor | None = None
    kept_energy: float | None = None
    layer_id: int = 0
    n_channels: int = 1
    cache: tuple | None = field(default=None, repr=False)   # (realizations, balancings), per channel

    def agree_(self, agree: Callable[[list[int]], list[int]]) -> None:
        """Pass the ranks through the compressor's ``agree`` hook (data-parallel training: every
        process takes rank 0's), keeping ``target`` and ``target_size`` consistent."""
        if isinstance(self.ranks, int):
            self.ranks = int(agree([self.ranks])[0])
            self.target_size = self.n_channels * self.ranks
        else:
            self.ranks = [int(r) for r in agree(list(self.ranks))]
            self.target_size = sum(self.ranks)
        self.target = math.ceil(self.target_size / self.n_channels)


@dataclass(frozen=True)
class SelectiveReduction:
    """What :meth:`SelectiveSSM.reduce_` did (fields read by the compressor as for the LRU).

    ``error_bound`` is None: ``2 * sum(discarded sigma)`` bounds only the surrogate's change, not
    the selective layer's; the largest per-channel surrogate bound is in ``notes``.
    """

    old_d_state: int
    new_d_state: int
    method: str
    output: str
    hsv: Tensor
    error_bound: float | None
    kept_energy: float
    seconds: float
    notes: tuple[str, ...] = ()
    old_size: int = 0
    new_size: int = 0
    ranks: tuple[int, ...] = field(default=())

    @property
    def changed(self) -> bool:
        return self.new_size < self.old_size


# ------------------------------------------------------------------------------------------------
# The layer
# ------------------------------------------------------------------------------------------------


class SelectiveSSM(nn.Module):
    """Mamba-1 style selective SSM block (see the module docstring for the equations).

    Parameters
    ----------
    d_model : int
        Width H of the input and output.
    d_state : int
        States N per channel (the width of ``B(x)`` and ``C(x)``).
    expand : int
        ``E = expand * d_model`` channels.
    d_conv : int
        Kernel size of the causal depthwise convolution.
    dt_rank : int, optional
        Rank of the step-size projection; default ``ceil(d_model / 16)`` as in Mamba.
    dt_min, dt_max : float
        ``softplus(dt_proj.bias)`` is drawn log-uniformly in ``[dt_min, dt_max]``.
    dt_init_floor : float
        Smallest initial step.
    reduction : {"per_channel", "shared"}
        What ``reduce_(method="balanced")`` does; module docstring.
    surrogate : {"second_moment", "mean"}
        Which Gramians rank the states; module docstring.
    surrogate_momentum : float or None
        Weight of a new batch in the surrogate's moving averages; None for a plain average.
    scan : {"auto", "native", "ref"}
        Backend of :func:`~shrinkssm.ops.selective_scan.selective_scan`.

    Shapes: ``forward(u: (B, L, H), mask: (B, L) bool) -> (B, L, H)``;
    ``step(u_k: (B, H), state) -> ((B, H), state)`` with ``state`` from :meth:`initial_state`.

    Notes
    -----
    Parameter names never change, only shapes: the reduced-form parameters (``re_*``, ``cx_*``)
    exist from the start with zero states, and ``A_log`` keeps its name with zero columns after a
    per-channel reduction. Optimizers therefore keep their parameter order across reductions and
    resumes; :meth:`reduce_` leaves ``(old, new)`` pairs in ``last_replaced`` for
    :func:`shrinkssm.compress.swap_parameters`. ``A_log`` and the reduced eigenvalue parameters are
    tagged ``_no_weight_decay`` (as in Mamba), as is ``D``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        *,
        expand: int = 2,
        d_conv: int = 4,
        dt_rank: int | None = None,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
        reduction: str = "per_channel",
        surrogate: str = "second_moment",
        surrogate_momentum: float | None = 0.1,
        scan: str = "auto",
    ) -> None:
        super().__init__()
        if d_model < 1 or d_state < 1 or expand < 1 or d_conv < 1:
            raise ValueError(f"d_model, d_state, expand and d_conv must be >= 1, got {d_model}, {d_state}, "
                             f"{expand}, {d_conv}")
        if not 0.0 < dt_min < dt_max:
            raise ValueError(f"need 0 < dt_min < dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown reduction {reduction!r}; valid: {', '.join(REDUCTIONS)}")
        if surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {surrogate!r}; valid: {', '.join(SURROGATES)}")
        if surrogate_momentum is not None and not 0.0 < surrogate_momentum <= 1.0:
            raise ValueError(f"surrogate_momentum must lie in (0, 1] or be None, got {surrogate_momentum}")
        if scan not in BACKENDS:
            raise ValueError(f"unknown selective-scan backend {scan!r}; valid: {', '.join(BACKENDS)}")
        self.d_model, self.expand, self.d_conv = d_model, expand, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank is None else int(dt_rank)
        if self.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1, got {dt_rank}")
        self.dt_min, self.dt_max, self.dt_init_floor = dt_min, dt_max, dt_init_floor
        self.reduction, self.surrogate, self.scan = reduction, surrogate, scan
        self.surrogate_momentum = surrogate_momentum
        self.track_surrogate = True
        self._calibrating = False
        self.last_replaced: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self._layout_cache: dict = {}
        E = self.d_inner
        self.in_proj = nn.Linear(d_model, 2 * E, bias=False)
        self.conv = nn.Conv1d(E, E, d_conv, groups=E, padding=d_conv - 1, bias=True)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=False)
        self._allocate(n_bc=d_state, n_diag=d_state, n_real=0, n_complex=0)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------
    # parameters and buffers
    # ----------------------------------------------------------------------------------------
    def _allocate(self, n_bc: int, n_diag: int, n_real: int, n_complex: int) -> None:
        """(Re)create every shape-changing parameter and buffer with zeros (see :meth:`apply_layout_`)."""
        E = self.d_inner
        current = self._parameters.get("x_proj_weight")
        like = dict(dtype=current.dtype, device=current.device) if current is not None else \
            dict(dtype=self.in_proj.weight.dtype, device=self.in_proj.weight.device)
        z = lambda *shape: torch.zeros(*shape, **like)  # noqa: E731
        nwd = dict(_no_weight_decay=True)
        self._set_param("x_proj_weight", z(self.dt_rank + 2 * n_bc, E))
        self._set_param("A_log", z(E, n_diag), **nwd)
        if "D" not in self._parameters:
            self._set_param("D", z(E), **nwd)
        self._set_param("re_alpha_log", z(n_real), **nwd)
        self._set_param("re_B", z(n_real, n_bc))
        self._set_param("re_C", z(n_real, n_bc))
        self._set_param("cx_alpha_log", z(n_complex), **nwd)
        self._set_param("cx_alpha_im", z(n_complex), **nwd)
        for name in ("cx_B_re", "cx_B_im", "cx_C_re", "cx_C_im"):
            self._set_param(name, z(n_complex, n_bc))
        dev = like["device"]
        self.register_buffer("re_chan", torch.zeros(n_real, dtype=torch.int64, device=dev))
        self.register_buffer("cx_chan", torch.zeros(n_complex, dtype=torch.int64, device=dev))
        # the surrogate's running means (see the module docstring)
        self.register_buffer("sur_a", z(E, n_diag))               # E[exp(delta A)], diagonal states
        self.register_buffer("sur_a_re", z(n_real))               # E[exp(delta alpha)], real states
        self.register_buffer("sur_a_cx", z(n_complex, 2))         # E[exp(delta alpha)], re | im
        self.register_buffer("sur_dtB", z(E, n_bc))               # E[delta_c B_n]
        self.register_buffer("sur_C", z(n_bc))                    # E[C_n]
        self.register_buffer("sur_BB", z(E, n_bc, n_bc))          # E[delta_c^2 B_n B_m]
        self.register_buffer("sur_CC", z(n_bc, n_bc))             # E[C_n C_m]
        if "sur_steps" not in self._buffers:
            self.register_buffer("sur_steps", torch.zeros((), dtype=torch.int64, device=dev))
        self.register_buffer("sur_steps_states", torch.zeros((), dtype=torch.int64, device=dev))
        self._clear_layouts()

    def _set_param(self, name: str, value: Tensor, **tags) -> nn.Parameter:
        old = self._parameters.get(name)
        param = nn.Parameter(value.detach().clone(), requires_grad=True)
        for key, val in tags.items():
            setattr(param, key, val)
        if old is not None:
            for key, val in vars(old).items():
                if key.startswith("_") and not hasattr(param, key):
                    setattr(param, key, val)
            self.last_replaced[name] = (old, param)
        setattr(self, name, param)
        return param

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Mamba's initialisation: S4D-real ``A`` (``A_log = log(1..N)``), ``D = 1``, step sizes
        log-uniform in ``[dt_min, dt_max]`` through ``dt_proj.bias``, ``dt_proj.weight`` uniform
        with scale ``dt_rank^-1/2``, ``x_proj`` like ``nn.Linear``. Only for an unreduced layer."""
        if self.n_real or self.n_complex:
            raise ValueError("reset_parameters is for an unreduced layer")
        E, N = self.d_inner, self.n_diag
        self.A_log.copy_(torch.log(torch.arange(1, N + 1, dtype=torch.float64)).repeat(E, 1))
        self.D.fill_(1.0)
        bound = 1.0 / math.sqrt(E)
        self.x_proj_weight.uniform_(-bound, bound)
        nn.init.uniform_(self.dt_proj.weight, -self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        log_min, log_max = math.log(self.dt_min), math.log(self.dt_max)
        dt = torch.exp(torch.rand(E) * (log_max - log_min) + log_min)
        dt = dt.clamp_min(self.dt_init_floor)
        # inverse of softplus, so that softplus(dt_proj.bias) = dt
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.dt_proj.bias._no_weight_decay = True
        self.reset_surrogate_()

    @torch.no_grad()
    def reset_surrogate_(self) -> None:
        """Forget the surrogate's statistics (the next tracked batch starts them afresh)."""
        for name in ("sur_a", "sur_a_re", "sur_a_cx", "sur_dtB", "sur_C", "sur_BB", "sur_CC"):
            getattr(self, name).zero_()
        self.sur_steps.zero_()
        self.sur_steps_states.zero_()

    # -- sizes ---------------------------------------------------------------------------------
    @property
    def n_bc(self) -> int:
        """Width of ``B(x)`` and ``C(x)``."""
        return (self.x_proj_weight.shape[0] - self.dt_rank) // 2

    @property
    def n_diag(self) -> int:
        """States per channel in the diagonal (unreduced or shared-reduced) form; 0 after a
        per-channel reduction."""
        return int(self.A_log.shape[1])

    @property
    def n_real(self) -> int:
        return int(self.re_alpha_log.shape[0])

    @property
    def n_complex(self) -> int:
        return int(self.cx_alpha_log.shape[0])

    @property
    def is_balanced_form(self) -> bool:
        """True after a per-channel reduction (states in the transformed form)."""
        return self.n_diag == 0

    def channel_orders(self) -> Tensor:
        """(E,) int64: real states of every channel (a complex state counts 2)."""
        E = self.d_inner
        orders = torch.full((E,), self.n_diag, dtype=torch.int64)
        orders += torch.bincount(self.re_chan.cpu(), minlength=E)
        orders += 2 * torch.bincount(self.cx_chan.cpu(), minlength=E)
        return orders

    @property
    def state_size(self) -> int:
        """All real states of the layer (what the scan pays for)."""
        return self.d_inner * self.n_diag + self.n_real + 2 * self.n_complex

    @property
    def d_state(self) -> int:
        """Mean real states per channel, rounded up (``N`` for an unreduced layer)."""
        return math.ceil(self.state_size / self.d_inner)

    def layout(self) -> dict:
        """Shapes that differ from the construction arguments (for checkpoints)."""
        return {"n_bc": self.n_bc, "n_diag": self.n_diag, "n_real": self.n_real, "n_complex": self.n_complex}

    def apply_layout_(self, layout: dict) -> None:
        """Reshape every shape-changing parameter and buffer (zero placeholders) to a :meth:`layout`,
        before ``load_state_dict`` of a checkpoint. To *reduce* a trained layer use :meth:`reduce_`."""
        keys = {"n_bc", "n_diag", "n_real", "n_complex"}
        if set(layout) != keys:
            raise ValueError(f"a selective layout has the keys {sorted(keys)}, got {sorted(layout)}")
        n_bc, n_diag, n_real, n_complex = (int(layout[k]) for k in ("n_bc", "n_diag", "n_real", "n_complex"))
        if n_bc < 1 or n_diag not in (0, n_bc) or min(n_real, n_complex) < 0 or \
                n_diag + n_real + n_complex == 0:
            raise ValueError(f"inconsistent selective layout {layout}")
        self.last_replaced = {}
        self._allocate(n_bc, n_diag, n_real, n_complex)
        self.last_replaced.clear()

    def extra_repr(self) -> str:
        form = "balanced" if self.is_balanced_form else f"N={self.n_diag}"
        return (f"d_model={self.d_model}, d_inner={self.d_inner}, {form}, d_state={self.d_state}, "
                f"reduction={self.reduction!r}, scan={self.scan!r}")

    # ----------------------------------------------------------------------------------------
    # scan layouts
    # ----------------------------------------------------------------------------------------
    def _clear_layouts(self) -> None:
        """Forget the cached layouts; build the diagonal ones (both precisions) now, so that code
        traced by ``torch.compile`` finds them (building a layout reads tensor data)."""
        self._layout_cache = {}
        for dtype in (torch.float32, torch.float64) if self.n_diag else ():
            self._layout("diag", dtype)

    def _layout(self, kind: str, dtype: torch.dtype) -> tuple[ScanLayout, Tensor | None]:
        """The bucket layout of one kind of states ("diag", "re", "cx"), cached by content."""
        lanes = lanes_for(dtype)
        if kind == "diag":
            key = ("diag", lanes, self.n_diag)
        else:
            chan = (self.re_chan if kind == "re" else self.cx_chan).cpu()
            key = (kind, lanes, chan.numpy().tobytes())
        hit = self._layout_cache.get(key)
        if hit is None:
            if kind == "diag":
                hit = (ScanLayout.shared(self.d_inner, self.n_diag, lanes), None)
            else:
                layout, pos = ScanLayout.ragged(chan, self.d_inner, lanes)
                hit = (layout, pos)
            self._layout_cache[key] = hit
        layout, pos = hit
        return layout, None if pos is None else pos.to(self.D.device)

    # ----------------------------------------------------------------------------------------
    # forward
    # ----------------------------------------------------------------------------------------
    def _check_input(self, u: Tensor, mask: Tensor | None) -> None:
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"expected input of shape (B, L, {self.d_model}), got {tuple(u.shape)}")
        if mask is not None and (mask.shape != u.shape[:2] or mask.dtype != torch.bool):
            raise ValueError(f"mask must be (B, L) = {tuple(u.shape[:2])} bool, got {tuple(mask.shape)} "
                             f"{mask.dtype}")

    def _branch(self, u: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Everything before the scan: x, z, delta: (B, L, E); B(x), C(x): (B, L, N_bc)."""
        L = u.shape[1]
        m = None if mask is None else mask.unsqueeze(-1).to(u.dtype)         # (B, L, 1)
        if m is not None:
            u = u * m
        x, z = self.in_proj(u).chunk(2, dim=-1)                               # (B, L, E) each
        x = self.conv(x.transpose(1, 2))[..., :L].transpose(1, 2)           # causal, (B, L, E)
        x = F.silu(x)
        if m is not None:
            x = x * m
        dt, Bx, Cx = (x @ self.x_proj_weight.T).split([self.dt_rank, self.n_bc, self.n_bc], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                                  # (B, L, E)
        if m is not None:
            delta = delta * m   # zero step: padding leaves the state unchanged
        return x, z, delta, Bx, Cx

    def _ssm(self, x: Tensor, delta: Tensor, Bx: Tensor, Cx: Tensor, mask: Tensor | None = None,
             track: bool = False) -> Tensor:
        """The scan over every kind of state: (B, L, E) without the skip term; updates the surrogate
        statistics when ``track``."""
        y = x.new_zeros(x.shape)
        decays = {}
        if self.n_diag:
            layout, _ = self._layout("diag", x.dtype)
            alpha = layout.pack_shared(-torch.exp(self.A_log))
            out = selective_scan(x, delta, alpha, Bx, Cx, layout, self.scan, return_decay=track)
            y_d, decays["diag"] = out if track else (out, None)
            y = y + y_d
        if self.n_real:
            layout, pos = self._layout("re", x.dtype)
            alpha = layout.pack(-torch.exp(self.re_alpha_log), pos)
            Bs = Bx @ layout.pack(self.re_B, pos).T                              # (B, L, S)
            Cs = Cx @ layout.pack(self.re_C, pos).T
            out = selective_scan(x, delta, alpha, Bs, Cs, layout, self.scan, return_decay=track)
            y_r, dec = out if track else (out, None)
            decays["re"] = None if dec is None else dec[pos]
            y = y + y_r
        if self.n_complex:
            layout, pos = self._layout("cx", x.dtype)
            alpha = layout.pack(torch.complex(-torch.exp(self.cx_alpha_log), self.cx_alpha_im), pos)
            MB = layout.pack(torch.complex(self.cx_B_re, self.cx_B_im), pos)     # (S, N_bc)
            MC = layout.pack(torch.complex(self.cx_C_re, self.cx_C_im), pos)
            Bs = torch.complex(Bx @ MB.real.T, Bx @ MB.imag.T)                   # (B, L, S)
            Cs = torch.complex(Cx @ MC.real.T, Cx @ MC.imag.T)
            out = selective_scan(x, delta, alpha, Bs, Cs, layout, self.scan, return_decay=track)
            y_c, dec = out if track else (out, None)
            decays["cx"] = None if dec is None else dec[pos]
            y = y + y_c
        if track:
            self._track(delta, Bx, Cx, mask, decays)
        return y

    @torch.no_grad()
    def _track(self, delta: Tensor, Bx: Tensor, Cx: Tensor, mask: Tensor | None, decays: dict) -> None:
        """Fold this batch's means into the surrogate statistics (valid positions only)."""
        n_all = delta.shape[0] * delta.shape[1]
        n_valid = n_all if mask is None else int(mask.sum())
        if n_valid == 0:
            return
        n_pad = n_all - n_valid  # padded positions have delta = 0, so exp(delta alpha) = 1 there
        delta, Bx, Cx = delta.detach(), Bx.detach(), Cx.detach()
        dtB = torch.einsum("ble,bln->en", delta, Bx) / n_valid
        Cm = (Cx if mask is None else Cx * mask.unsqueeze(-1)).sum((0, 1)) / n_valid
        BB, CC = self._second_moments(delta, Bx, Cx, mask)
        basis = [(self.sur_dtB, dtB), (self.sur_C, Cm), (self.sur_BB, BB), (self.sur_CC, CC)]
        if "diag" in decays:
            layout, _ = self._layout("diag", delta.dtype)
            G, W, N = layout.n_buckets, layout.lanes, self.n_diag
            dec = decays["diag"].reshape(G, N, W).transpose(1, 2).reshape(G * W, N)[: self.d_inner]
            basis.append((self.sur_a, (dec - n_pad) / n_valid))
        self._fold(basis, self.sur_steps)
        states = []
        if "re" in decays:
            states.append((self.sur_a_re, (decays["re"] - n_pad) / n_valid))
        if "cx" in decays:
            dec = decays["cx"]
            mean = torch.stack([(dec.real - n_pad) / n_valid, dec.imag / n_valid], -1)
            states.append((self.sur_a_cx, mean))
        if states:
            self._fold(states, self.sur_steps_states)

    def _second_moments(self, delta: Tensor, Bx: Tensor, Cx: Tensor, mask: Tensor | None
                        ) -> tuple[Tensor, Tensor]:
        """E[delta_c^2 B B^T]: (E, N, N) and E[C C^T]: (N, N) over at most MOMENT_POSITIONS valid
        positions (evenly spaced, the offset moving with every batch)."""
        E, N = delta.shape[-1], Bx.shape[-1]
        d, b, c = delta.reshape(-1, E), Bx.reshape(-1, N), Cx.reshape(-1, N)
        if mask is None:
            idx = torch.arange(d.shape[0], device=d.device)
        else:
            idx = mask.reshape(-1).nonzero().squeeze(1)
        if idx.numel() > MOMENT_POSITIONS:
            stride = math.ceil(idx.numel() / MOMENT_POSITIONS)
            idx = idx[int(self.sur_steps) % stride::stride]
        d2, b, c = d[idx] ** 2, b[idx], c[idx]                                # (P, E), (P, N)
        BB = (d2.T @ (b.unsqueeze(2) * b.unsqueeze(1)).reshape(-1, N * N)).reshape(E, N, N)
        return BB / idx.numel(), c.T @ c / idx.numel()

    def _fold(self, pairs: list[tuple[Tensor, Tensor]], steps: Tensor) -> None:
        k = int(steps)
        m = self.surrogate_momentum
        w = 1.0 / (k + 1) if (m is None or self._calibrating) else (1.0 if k == 0 else m)
        for buf, value in pairs:
            buf.lerp_(value.to(buf.dtype), w)
        steps += 1

    def forward(self, u: Tensor, mask: Tensor | None = None) -> Tensor:
        """Run the block over whole sequences.

        Parameters
        ----------
        u : (B, L, H) float32 or float64
        mask : (B, L) bool, optional
            True at valid positions. Padded positions get a zero input and a zero step, so the
            state passes through them unchanged; the surrogate statistics skip them.

        Returns
        -------
        (B, L, H), dtype of ``u``
        """
        self._check_input(u, mask)
        x, z, delta, Bx, Cx = self._branch(u, mask)
        track = self._calibrating or (self.training and self.track_surrogate)
        y = self._ssm(x, delta, Bx, Cx, mask, track)
        y = (y + x * self.D) * F.silu(z)
        return self.out_proj(y)

    # ----------------------------------------------------------------------------------------
    # recurrent mode
    # ----------------------------------------------------------------------------------------
    def initial_state(self, batch_size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Zero state: conv window ``(B, E, d_conv - 1)``, diagonal states ``(B, E, N)``, real
        reduced states ``(B, R_re)`` and complex reduced states ``(B, R_cx)`` complex."""
        like = dict(dtype=self.D.dtype, device=self.D.device)
        cdtype = {torch.float32: torch.complex64, torch.float64: torch.complex128}[self.D.dtype]
        return (torch.zeros(batch_size, self.d_inner, self.d_conv - 1, **like),
                torch.zeros(batch_size, self.d_inner, self.n_diag, **like),
                torch.zeros(batch_size, self.n_real, **like),
                torch.zeros(batch_size, self.n_complex, dtype=cdtype, device=self.D.device))

    def step(self, u_k: Tensor, state: tuple | None = None) -> tuple[Tensor, tuple]:
        """One position: ``u_k: (B, H)`` -> ``(y_k: (B, H), new state)`` (state from
        :meth:`initial_state`, or None for zeros). Equals :meth:`forward` position by position."""
        if u_k.ndim != 2 or u_k.shape[-1] != self.d_model:
            raise ValueError(f"expected u_k of shape (B, {self.d_model}), got {tuple(u_k.shape)}")
        conv_state, hd, hr, hc = self.initial_state(u_k.shape[0]) if state is None else state
        x, z = self.in_proj(u_k).chunk(2, dim=-1)                             # (B, E)
        window = torch.cat([conv_state, x.unsqueeze(-1)], dim=-1)             # (B, E, d_conv)
        x = F.silu((window * self.conv.weight[:, 0, :]).sum(-1) + self.conv.bias)
        dt, Bx, Cx = (x @ self.x_proj_weight.T).split([self.dt_rank, self.n_bc, self.n_bc], dim=-1)
        delta = F.softplus(self.dt_proj(dt))                                  # (B, E)
        y = x * self.D
        if self.n_diag:
            a = torch.exp(delta.unsqueeze(-1) * -torch.exp(self.A_log))      # (B, E, N)
            hd = a * hd + (delta * x).unsqueeze(-1) * Bx.unsqueeze(1)
            y = y + (hd * Cx.unsqueeze(1)).sum(-1)
        if self.n_real:
            e = delta[:, self.re_chan]                                        # (B, R_re)
            a = torch.exp(e * -torch.exp(self.re_alpha_log))
            hr = a * hr + e * x[:, self.re_chan] * (Bx @ self.re_B.T)
            y = y.index_add(1, self.re_chan, (Cx @ self.re_C.T) * hr)
        if self.n_complex:
            e = delta[:, self.cx_chan]
            alpha = torch.complex(-torch.exp(self.cx_alpha_log), self.cx_alpha_im)
            b = torch.complex(Bx @ self.cx_B_re.T, Bx @ self.cx_B_im.T)
            c = torch.complex(Cx @ self.cx_C_re.T, Cx @ self.cx_C_im.T)
            hc = torch.exp(e * alpha) * hc + e * x[:, self.cx_chan] * b
            y = y.index_add(1, self.cx_chan, (c * hc).real)
        out = self.out_proj(y * F.silu(z))
        return out, (window[..., 1:], hd, hr, hc)

    # ----------------------------------------------------------------------------------------
    # the surrogate
    # ----------------------------------------------------------------------------------------
    def has_surrogate(self) -> bool:
        """True when every statistic the surrogate needs has seen at least one batch."""
        if int(self.sur_steps) == 0:
            return False
        return not (self.n_real or self.n_complex) or int(self.sur_steps_states) > 0

    def _realizations(self) -> list[dict]:
        """Per channel, the real realization of its states and of its surrogate (float64 tensors).

        Keys: ``A_bar`` (n, n) mean transition, ``b``, ``c`` (n,) mean input/output terms,
        ``Sb``, ``Sc`` (n, n) the input/output energy of the chosen surrogate, ``G`` (n, n) the
        continuous generator, ``MB``, ``MC`` (n, N_bc) maps from ``B(x)``, ``C(x)`` to the states'
        input and output coefficients, ``kinds`` a list of ("diag", n) / ("re", j) / ("cx", j)
        giving the source of each state (a complex state fills two rows: real and imaginary part).
        """
        if not self.has_surrogate():
            raise ValueError("the layer has no surrogate statistics yet: run training-mode forward "
                             "passes (or calibrate_surrogates) first")
        f = lambda t: t.detach().to(device="cpu", dtype=_F64)  # noqa: E731
        E, K = self.d_inner, self.n_bc
        dtB, Cm, BB, CC = f(self.sur_dtB), f(self.sur_C), f(self.sur_BB), f(self.sur_CC)
        A, sur_a = -torch.exp(f(self.A_log)), f(self.sur_a)
        re_chan, cx_chan = self.re_chan.cpu(), self.cx_chan.cpu()
        re_alpha, sur_re = -torch.exp(f(self.re_alpha_log)), f(self.sur_a_re)
        re_B, re_C = f(self.re_B), f(self.re_C)
        cx_s, cx_w = -torch.exp(f(self.cx_alpha_log)), f(self.cx_alpha_im)
        cx_Br, cx_Bi, cx_Cr, cx_Ci = f(self.cx_B_re), f(self.cx_B_im), f(self.cx_C_re), f(self.cx_C_im)
        sur_cx = f(self.sur_a_cx)
        eye = torch.eye(K, dtype=_F64)
        out = []
        for c in range(E):
            a_bar, g, MB, MC, kinds = [], [], [], [], []
            for n in range(self.n_diag):
                a_bar.append(sur_a[c, n].reshape(1, 1))
                g.append(A[c, n].reshape(1, 1))
                MB.append(eye[n:n + 1]), MC.append(eye[n:n + 1]), kinds.append(("diag", n))
            for j in (re_chan == c).nonzero().flatten().tolist():
                a_bar.append(sur_re[j].reshape(1, 1))
                g.append(re_alpha[j].reshape(1, 1))
                MB.append(re_B[j:j + 1]), MC.append(re_C[j:j + 1]), kinds.append(("re", j))
            for j in (cx_chan == c).nonzero().flatten().tolist():
                ar, ai = sur_cx[j]
                s, w = cx_s[j], cx_w[j]
                a_bar.append(torch.stack([torch.stack([ar, -ai]), torch.stack([ai, ar])]))
                g.append(torch.stack([torch.stack([s, -w]), torch.stack([w, s])]))
                MB.append(torch.stack([cx_Br[j], cx_Bi[j]]))
                MC.append(torch.stack([cx_Cr[j], -cx_Ci[j]]))
                kinds.append(("cx", j))
            MBc, MCc = torch.cat(MB), torch.cat(MC)
            b, cc = MBc @ dtB[c], MCc @ Cm
            if self.surrogate == "mean":
                Sb, Sc = torch.outer(b, b), torch.outer(cc, cc)
            else:
                Sb, Sc = MBc @ BB[c] @ MBc.T, MCc @ CC @ MCc.T
            out.append(dict(A_bar=torch.block_diag(*a_bar), b=b, c=cc, Sb=0.5 * (Sb + Sb.T),
                            Sc=0.5 * (Sc + Sc.T), G=torch.block_diag(*g), MB=MBc, MC=MCc, kinds=kinds))
        return out

    @staticmethod
    def _balances(reals: list[dict]) -> list[_Balance]:
        """Balance every channel's surrogate, batching channels of equal order."""
        out: list[_Balance | None] = [None] * len(reals)
        groups: dict[int, list[int]] = {}
        for c, r in enumerate(reals):
            groups.setdefault(r["A_bar"].shape[0], []).append(c)
        for idx in groups.values():
            stack = lambda key: torch.stack([reals[c][key] for c in idx])  # noqa: E731
            for c, bal in zip(idx, _balance_batch(stack("A_bar"), stack("Sb"), stack("Sc"))):
                out[c] = bal
        return out

    def surrogate_systems(self) -> list[lti.DenseSystem]:
        """Per channel, the LTI surrogate as a real-valued :class:`shrinkssm.lti.DenseSystem` (float64)
        whose Gramians are the ones this layer balances.

        ``surrogate="mean"``: ``x[k] = A_bar x[k-1] + b_bar u[k]``, ``y[k] = c_bar x[k]`` (SISO).
        ``surrogate="second_moment"``: the same ``A_bar`` with input matrix ``F`` and output matrix
        ``G`` (n x n) such that ``F F^T = E[b b^T]`` and ``G^T G = E[c^T c]``.
        """
        systems = []
        for r in self._realizations():
            if self.surrogate == "mean":
                B, C, D = r["b"][:, None], r["c"][None, :], torch.zeros(1, dtype=_F64)
            else:
                B, C, D = _factor(r["Sb"]), _factor(r["Sc"]).T, torch.zeros(r["A_bar"].shape[0], dtype=_F64)
            systems.append(lti.DenseSystem(r["A_bar"], B.contiguous(), C.contiguous(), D))
        return systems

    def hankel_singular_values(self) -> list[Tensor]:
        """Per channel, the surrogate's HSVs: (n_c,) float64, descending."""
        return [bal.hsv.clone() for bal in self._balances(self._realizations())]

    # ----------------------------------------------------------------------------------------
    # planning and reducing (the compressor's protocol)
    # ----------------------------------------------------------------------------------------
    def _kind(self, method: str) -> str:
        if method not in _METHODS:
            raise ValueError(f"method {method!r} is not available for selective layers; valid: "
                             f"{', '.join(_METHODS)} (balanced means the layer's reduction="
                             f"{self.reduction!r})")
        kind = "shared" if method == "random" else self.reduction
        if kind == "shared" and self.is_balanced_form:
            raise ValueError("a shared-subset reduction needs the diagonal form; this layer was reduced "
                             "per channel")
        if kind == "shared" and (self.n_real or self.n_complex):
            raise ValueError("a shared-subset reduction needs a layer without reduced states")
        return kind

    def plan_reduction(self, rank_rule: Callable[[Tensor, int], int], *, method: str = "balanced",
                       output: str = "complex") -> SelectiveReductionPlan:
        """Measure the layer's surrogate and propose ranks (nothing changes).

        Parameters
        ----------
        rank_rule : callable ``(hsv: (n,) float64 descending, size: int) -> int``
            The compressor's rule (energy rule with ``tau``, a fixed fraction, ...), applied to each
            channel's HSVs (``"per_channel"``) or to the sorted state scores (``"shared"``).
        method : {"balanced", "random"}
            "balanced": the layer's ``reduction``; "random": a random shared subset of the size the
            scores ask for (ablation).
        output : {"complex", "real"}
            Accepted for the compressor's interface; the surrogate is real, so both give the same HSVs.

        Returns
        -------
        SelectiveReductionPlan
        """
        if output not in ("complex", "real"):
            raise ValueError(f"unknown output {output!r}; valid: complex, real")
        kind = self._kind(method)
        E = self.d_inner
        old_size = self.state_size
        empty = torch.zeros(0, dtype=torch.float64)
        if not self.has_surrogate():
            return SelectiveReductionPlan(method, kind, empty, self.d_state, self.d_state, old_size, old_size,
                                          [], skipped="no surrogate statistics yet", layer_id=id(self),
                                          n_channels=E)
        reals = self._realizations()
        bals = self._balances(reals)
        hsv_all = torch.cat([b.hsv for b in bals]).sort(descending=True).values
        cache = (reals, bals)
        if kind == "per_channel":
            ranks = []
            for r, bal in zip(reals, bals):
                n = r["A_bar"].shape[0]
                ranks.append(int(max(1, min(n, rank_rule(bal.hsv.clone(), n)))))
            target_size = sum(ranks)
            kept = [float(b.hsv[:k].sum() / b.hsv.sum()) if b.hsv.sum() > 0 else 1.0
                    for b, k in zip(bals, ranks)]
            return SelectiveReductionPlan(method, kind, hsv_all, self.d_state, math.ceil(target_size / E),
                                          old_size, target_size, ranks, kept_energy=sum(kept) / len(kept),
                                          layer_id=id(self), n_channels=E, cache=cache)
        scores = self._shared_scores(bals)
        order = torch.argsort(scores, descending=True)
        N = self.n_diag
        k = int(max(1, min(N, rank_rule(scores[order], N))))
        kept = float(scores[order[:k]].sum() / scores.sum()) if scores.sum() > 0 else 1.0
        return SelectiveReductionPlan(method, kind, hsv_all, self.d_state, k, old_size, E * k, k,
                                      scores=scores, kept_energy=kept, layer_id=id(self), n_channels=E)

    @staticmethod
    def _shared_scores(bals: list[_Balance]) -> Tensor:
        """(N,) float64: per-index scores, each channel's normalised to sum 1, averaged over channels."""
        per_channel = []
        for bal in bals:
            s = _scores(bal)
            total = s.sum()
            per_channel.append(s / total if total > 0 else s)
        return torch.stack(per_channel).mean(0)

    def reduce_(self, rank: int | Sequence[int] | SelectiveReductionPlan, method: str = "balanced",
                output: str = "complex", **options) -> SelectiveReduction:
        """Replace the layer, in place, by its reduction (only shrinks).

        Parameters
        ----------
        rank : int, sequence of E ints, or SelectiveReductionPlan
            ``"per_channel"``: a kept real order per channel (an int means the same for every
            channel); ``"shared"`` / ``"random"``: the number of state indices kept. A plan from
            :meth:`plan_reduction` carries its own ranks.
        method : {"balanced", "random"}
        output : {"complex", "real"}
            As in :meth:`plan_reduction`.
        **options
            ``selection="smallest"`` keeps the least important directions / indices (ablation);
            ``generator`` seeds ``"random"``; ``max_cond`` (default 1e8) as in :func:`balance_channel`.

        Returns
        -------
        SelectiveReduction

        Notes
        -----
        New ``nn.Parameter`` objects replace the changed ones (tags carried over); ``(old, new)``
        pairs are left in ``last_replaced``. Every new value is computed and checked before the
        first parameter is replaced, so a failure leaves the layer as it was.
        """
        t0 = time.perf_counter()
        unknown = set(options) - {"selection", "generator", "max_cond"}
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; valid: generator, max_cond, selection")
        selection = options.get("selection", "largest")
        if selection not in ("largest", "smallest"):
            raise ValueError(f"unknown selection {selection!r}; valid: largest, smallest")
        self.last_replaced = {}
        if isinstance(rank, SelectiveReductionPlan):
            plan = rank
            if plan.layer_id != id(self) or plan.method != method:
                raise ValueError("the plan was made for another layer or method")
            if plan.skipped:
                raise ValueError(f"cannot apply a skipped plan ({plan.skipped})")
        else:
            wanted = self._explicit_ranks(rank, self._kind(method))
            queue = [wanted] if isinstance(wanted, int) else list(wanted)
            plan = self.plan_reduction(lambda hsv, n: queue.pop(0), method=method, output=output)
            if plan.skipped:
                raise ValueError(f"cannot reduce: {plan.skipped}")
        old_d, old_size = self.d_state, self.state_size
        notes: tuple[str, ...] = ()
        if plan.kind == "shared":
            notes = self._reduce_shared(int(plan.ranks), plan, method, selection, options.get("generator"))
        else:
            notes = self._reduce_per_channel(list(plan.ranks), selection, float(options.get("max_cond", 1e8)),
                                             plan.cache)
        return SelectiveReduction(old_d, self.d_state, method, output, plan.hsv, None,
                                  float(plan.kept_energy if plan.kept_energy is not None else 1.0),
                                  time.perf_counter() - t0, notes, old_size, self.state_size,
                                  tuple(self.channel_orders().tolist()))

    def _explicit_ranks(self, rank, kind: str) -> list[int] | int:
        if kind == "shared":
            if not isinstance(rank, int) or rank < 1:
                raise ValueError(f"a shared reduction takes one int >= 1, got {rank!r}")
            return rank
        orders = self.channel_orders().tolist()
        ranks = [rank] * self.d_inner if isinstance(rank, int) else [int(r) for r in rank]
        if len(ranks) != self.d_inner or min(ranks) < 1:
            raise ValueError(f"need {self.d_inner} per-channel ranks >= 1, got {rank!r}")
        return [min(r, n) for r, n in zip(ranks, orders)]

    # -- the two reductions ----------------------------------------------------------------------
    def _reduce_shared(self, k: int, plan: SelectiveReductionPlan, method: str, selection: str,
                       generator: torch.Generator | None) -> tuple[str, ...]:
        N = self.n_diag
        if k >= N:
            return ("no-op: the kept count is not below the current N",)
        if method == "random":
            keep = torch.randperm(N, generator=generator)[:k]
        else:
            order = torch.argsort(plan.scores, descending=selection == "largest", stable=True)
            keep = order[:k]
        keep = keep.sort().values
        dev = self.D.device
        keep_d = keep.to(dev)
        rows = torch.cat([torch.arange(self.dt_rank), self.dt_rank + keep, self.dt_rank + N + keep]).to(dev)
        new = {"x_proj_weight": self.x_proj_weight.detach()[rows], "A_log": self.A_log.detach()[:, keep_d],
               "re_B": self.re_B.detach()[:, keep_d], "re_C": self.re_C.detach()[:, keep_d]}
        for name in ("cx_B_re", "cx_B_im", "cx_C_re", "cx_C_im"):
            new[name] = getattr(self, name).detach()[:, keep_d]
        sur = {"sur_a": self.sur_a[:, keep_d].clone(), "sur_dtB": self.sur_dtB[:, keep_d].clone(),
               "sur_C": self.sur_C[keep_d].clone(), "sur_BB": self.sur_BB[:, keep_d][:, :, keep_d].clone(),
               "sur_CC": self.sur_CC[keep_d][:, keep_d].clone()}
        for name, value in new.items():
            self._set_param(name, value, **({"_no_weight_decay": True} if name == "A_log" else {}))
        for name, value in sur.items():
            setattr(self, name, value)
        self._clear_layouts()
        return (f"kept state indices {keep.tolist()}",)

    def _reduce_per_channel(self, ranks: list[int], selection: str, max_cond: float,
                            cache: tuple | None = None) -> tuple[str, ...]:
        reals, bals = cache if cache is not None else (None, None)
        if reals is None:
            reals = self._realizations()
            bals = self._balances(reals)
        orders = [r["A_bar"].shape[0] for r in reals]
        if all(r >= n for r, n in zip(ranks, orders)):
            return ("no-op: no channel's rank is below its order",)
        notes, bounds = [], []
        re_rows, cx_rows = [], []     # (channel, alpha, MB row, MC row)
        for c, (real, bal, r, n) in enumerate(zip(reals, bals, ranks, orders)):
            if r >= n:
                states = self._identity_states(real)
            else:
                st = balance_channel(real["A_bar"], real["Sb"], real["Sc"], real["G"], r, selection, max_cond,
                                     balance=bal)
                notes.extend(f"channel {c}: {note}" for note in st.notes)
                cplx = torch.complex128
                states = (st.alpha, st.L_in @ real["MB"].to(cplx), st.L_out.T @ real["MC"].to(cplx))
                bounds.append(2.0 * float(st.hsv[st.alpha.shape[0]:].sum()))
            self._split_states(c, *states, re_rows, cx_rows)
        if bounds:
            notes.append(f"largest surrogate error bound over reduced channels: {max(bounds):.3g}")
        self._load_states(re_rows, cx_rows)
        return tuple(notes)

    @staticmethod
    def _identity_states(real: dict) -> tuple[Tensor, Tensor, Tensor]:
        """A channel kept as it is, as (alpha, MB, MC) of its states (complex rows; pairs expanded)."""
        G, MB, MC = real["G"], real["MB"].to(torch.complex128), real["MC"].to(torch.complex128)
        alphas, mb, mc = [], [], []
        i = 0
        for kind, _ in real["kinds"]:
            if kind in ("diag", "re"):
                alphas.append(complex(G[i, i]))
                mb.append(MB[i]), mc.append(MC[i])
                i += 1
                continue
            # rows (hr, hi): B row = Re + i Im of the state's row, C rows = (Re, -Im) of its row
            s, w = float(G[i, i]), float(G[i + 1, i])
            if w == 0.0:  # a real eigenvalue stored as a complex state: two real states
                alphas += [complex(s), complex(s)]
                mb += [MB[i], MB[i + 1]]
                mc += [MC[i], MC[i + 1]]
            else:
                b = MB[i] + 1j * MB[i + 1]
                cc = (MC[i] - 1j * MC[i + 1]) / 2.0
                alphas += [complex(s, w), complex(s, -w)]
                mb += [b, b.conj()]
                mc += [cc, cc.conj()]
            i += 2
        return torch.tensor(alphas, dtype=torch.complex128), torch.stack(mb), torch.stack(mc)

    @staticmethod
    def _split_states(c: int, alpha: Tensor, MB: Tensor, MC: Tensor, re_rows: list, cx_rows: list) -> None:
        """Real eigenvalues become real states; of a conjugate pair the member with Im > 0 becomes one
        complex state whose output row is doubled (y = Re(C h))."""
        for j in range(alpha.shape[0]):
            im = float(alpha[j].imag)
            if im == 0.0:
                re_rows.append((c, complex(alpha[j]), MB[j].real, MC[j].real))
            elif im > 0.0:
                cx_rows.append((c, complex(alpha[j]), MB[j], 2.0 * MC[j]))

    def _load_states(self, re_rows: list, cx_rows: list) -> None:
        """Write the new states into new parameters (checked first: nothing changes on failure)."""
        K = self.n_bc
        n1, n2 = len(re_rows), len(cx_rows)
        rows = lambda items, n: torch.stack(items) if n else torch.zeros(0, K, dtype=_F64)  # noqa: E731
        re_alpha = torch.tensor([r[1].real for r in re_rows], dtype=_F64)
        cx_alpha = torch.tensor([r[1] for r in cx_rows], dtype=torch.complex128)
        cx_B = rows([r[2] for r in cx_rows], n2).to(torch.complex128)
        cx_C = rows([r[3] for r in cx_rows], n2).to(torch.complex128)
        new = {
            "A_log": torch.zeros(self.d_inner, 0, dtype=_F64),
            "re_alpha_log": torch.log(-re_alpha),
            "re_B": rows([r[2] for r in re_rows], n1).to(_F64).reshape(n1, K),
            "re_C": rows([r[3] for r in re_rows], n1).to(_F64).reshape(n1, K),
            "cx_alpha_log": torch.log(-cx_alpha.real),
            "cx_alpha_im": cx_alpha.imag,
            "cx_B_re": cx_B.real, "cx_B_im": cx_B.imag, "cx_C_re": cx_C.real, "cx_C_im": cx_C.imag,
        }
        for name, value in new.items():
            if not bool(torch.isfinite(value).all()):
                raise ValueError(f"reduction produced non-finite values for {name}; "
                                 "the layer is left unchanged")
        like = dict(dtype=self.D.dtype, device=self.D.device)
        for name, value in new.items():
            decay_free = name in ("A_log", "re_alpha_log", "cx_alpha_log", "cx_alpha_im")
            tags = {"_no_weight_decay": True} if decay_free else {}
            self._set_param(name, value.contiguous().to(**like), **tags)
        dev = self.D.device
        self.re_chan = torch.tensor([r[0] for r in re_rows], dtype=torch.int64, device=dev)
        self.cx_chan = torch.tensor([r[0] for r in cx_rows], dtype=torch.int64, device=dev)
        self.sur_a = self.sur_a.new_zeros(self.d_inner, 0)
        self.sur_a_re = self.sur_a_re.new_zeros(n1)
        self.sur_a_cx = self.sur_a_cx.new_zeros(n2, 2)
        self.sur_steps_states.zero_()
        self._clear_layouts()


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


@torch.no_grad()
def calibrate_surrogates(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every selective layer's surrogate as a plain average over ``batches``.

    The model runs in eval mode (batch-norm statistics and dropout untouched) and its mode is
    restored afterwards. Each batch is an input tensor or an ``(x, mask)`` pair for
    ``model(x, mask)``.

    Returns
    -------
    int
        The number of batches seen.
    """
    layers = [m for m in model.modules() if isinstance(m, SelectiveSSM)]
    if not layers:
        raise ValueError("the model has no SelectiveSSM layers")
    was_training = model.training
    model.eval()
    for layer in layers:
        layer.reset_surrogate_()
        layer._calibrating = True
    count = 0
    try:
        for batch in batches:
            x, mask = batch if isinstance(batch, (tuple, list)) else (batch, None)
            model(x) if mask is None else model(x, mask)
            count += 1
    finally:
        for layer in layers:
            layer._calibrating = False
        model.train(was_training)
    return count
