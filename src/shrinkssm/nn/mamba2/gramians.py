"""Data-driven Gramians of a Mamba-2 layer's groups: running statistics gathered in training.

A Mamba-2 head ``h`` of group ``g`` is the time-varying system (``docs/design.md`` §7.4)::

    h[t] = a_h[t] h[t-1] + B_g[t] (dt_h[t] x_h[t])^T        h: (N, P), a_h[t] = exp(dt_h[t] A_h) scalar
    y[t] = h[t]^T C_g[t]                                     (P,)

with ``B_g``, ``C_g`` shared by the heads of the group. It has no single pair of Gramians. Per
group this module keeps running averages (buffers ``gram_P``, ``gram_Q``: (G, M, M), ``M`` the
largest group order, group ``g`` in the leading ``r_g x r_g`` block) of the **time-averaged
finite-horizon Gramians** over the heads of the group and the valid positions of a batch::

    P_g = 1/(|g| n) sum_{h in g} sum_{b, t} sum_{s <= t} w_h(t, s)^2 ||dt_h[s] x_h[s]||^2 B_g[s] B_g[s]^T
    Q_g = 1/(|g| n) sum_{h in g} sum_{b, t} sum_{s >= t} w_h(s, t)^2 C_g[s] C_g[s]^T
    w_h(t, s) = a_h[s+1] ... a_h[t]          (1 for t = s)

``n`` the number of valid positions, every sum over valid positions of the same sequence only.
``P_g`` is the average over positions ``t`` of the state covariance ``E[h[t] h[t]^T]`` (summed
over the head's ``P`` channels) that the layer would have if its inputs ``x`` kept their
magnitudes but were uncorrelated in time; ``Q_g`` the average over ``t`` of the observability
Gramian of the horizon ``t .. L-1``, the decay-weighted second moment of ``C``. Exchanging the
sums turns both into one weighted second moment per group::

    P_g = 1/n sum_{b, s} kP_g(s) B_g[s] B_g[s]^T     kP_g(s) = mean_{h in g} ||dt_h x_h[s]||^2 sum_{t >= s} w_h(t, s)^2
    Q_g = 1/n sum_{b, s} kQ_g(s) C_g[s] C_g[s]^T     kQ_g(s) = mean_{h in g} sum_{t <= s} w_h(s, t)^2

The scalar weights come from cumulative sums of the log-decays and ``logcumsumexp`` (float64,
every exponent taken of a difference of log-decays: nothing overflows); the second moments are
taken over at most :data:`GRAMIAN_POSITIONS` evenly spaced valid positions per batch (an offset
moving with every batch), as the selective layer's surrogate does.

**Approximation** (to quote with results): a constant change of state basis per group is balanced
against time-averaged Gramians; the inputs' correlations over time are ignored (``P``), the
heads of a group are averaged, and the convolution, the gate, the norm and the projections are
outside the system. ``2 sum(discarded sigma)`` is therefore a figure of the averaged system, not
a bound on the layer's change.

After an exact reduction (``T^-`` applied to ``B``, ``T^T`` to ``C``) the statistics are those of
the reduced coordinates: ``P' = T^- P T^-^T`` and ``Q' = T^T Q T`` hold exactly, and the running
averages are transformed so (the next plan starts from them).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from shrinkssm.nn.calibration import GatheredStatistics

__all__ = ["GRAMIAN_POSITIONS", "GramianStatistics", "gramian_weights"]

GRAMIAN_POSITIONS = 1024
"""Positions per batch (at most; an evenly spaced subset) used for the second moments, whose cost
grows with ``G * M^2``."""

_F64 = torch.float64


def gramian_weights(x: Tensor, dt: Tensor, A: Tensor, valid: Tensor, rep: int) -> tuple[Tensor, Tensor]:
    """The scalar weights ``kP_g(s)``, ``kQ_g(s)`` of the module docstring.

    Parameters
    ----------
    x : (b, L, H, P)
        The scan's input (after the convolution and SiLU).
    dt : (b, L, H)
        Step sizes (>= 0; zero at padded positions).
    A : (H,)
        Decay rates (<= 0).
    valid : (b, L) bool
        Valid positions.
    rep : int
        Heads per group (``H // G``); head ``h`` belongs to group ``h // rep``.

    Returns
    -------
    kP, kQ : (b, L, G) float64, zero at padded positions.
    """
    b, L, H = dt.shape
    dt64 = dt.detach().to(_F64)
    logd = dt64 * A.detach().to(_F64)                                       # (b, L, H), <= 0
    cs = torch.cumsum(logd, dim=1)
    neg = torch.tensor(float("-inf"), dtype=_F64, device=dt.device)
    v = valid.unsqueeze(-1)
    # sum_{t <= s, valid} exp(2 (cs_s - cs_t))
    log_q = 2.0 * cs + torch.logcumsumexp(torch.where(v, -2.0 * cs, neg), dim=1)
    # sum_{t >= s, valid} exp(2 (cs_t - cs_s))
    rev = torch.flip(torch.logcumsumexp(torch.flip(torch.where(v, 2.0 * cs, neg), [1]), dim=1), [1])
    log_p = rev - 2.0 * cs
    energy = dt64.pow(2) * x.detach().to(_F64).pow(2).sum(-1)               # ||dt x||^2, (b, L, H)
    kP = torch.where(v, energy * torch.exp(log_p), 0.0)
    kQ = torch.where(v, torch.exp(log_q), 0.0)
    G = H // rep
    return kP.reshape(b, L, G, rep).mean(-1), kQ.reshape(b, L, G, rep).mean(-1)


class GramianStatistics(GatheredStatistics):
    """Mixin of :class:`~shrinkssm.nn.mamba2.Mamba2SSM`: the groups' running Gramians (module
    docstring). The layer owns the buffers ``gram_P``, ``gram_Q`` (G, M, M) and ``gram_steps``
    (int64 scalar), and the attributes ``gramian_momentum`` (float in (0, 1] or None for a plain
    average) and ``track_gramians`` (bool). Its forward gathers in training mode while
    ``track_gramians``, and in either mode inside :meth:`calibrating` (a plain average then;
    :func:`shrinkssm.nn.calibrate`)."""

    STATISTICS_BUFFERS = ("gram_P", "gram_Q", "gram_steps")

    @torch.no_grad()
    def reset_gramians_(self) -> None:
        """Forget the statistics (the next tracked batch starts them afresh)."""
        self.gram_P.zero_()
        self.gram_Q.zero_()
        self.gram_steps.zero_()

    def has_gramians(self) -> bool:
        """True when the statistics have seen at least one batch."""
        return int(self.gram_steps) > 0

    def reset_statistics_(self) -> None:
        """:meth:`reset_gramians_` (the name :class:`~shrinkssm.nn.calibration.GatheredStatistics`
        calls)."""
        self.reset_gramians_()

    def has_statistics(self) -> bool:
        """:meth:`has_gramians`."""
        return self.has_gramians()

    @torch.no_grad()
    def batch_gramians(self, x: Tensor, dt: Tensor, A: Tensor, Bs: list[Tensor], Cs: list[Tensor],
                       mask: Tensor | None) -> tuple[list[Tensor], list[Tensor]] | None:
        """This batch's ``P_g``, ``Q_g`` (module docstring) in the coordinates of the scan.

        ``x (b, L, H, P)``, ``dt (b, L, H)``, ``A (H,)``; ``Bs``, ``Cs``: per group ``(b, L, r_g)``
        (what the scan reads); ``mask (b, L)`` bool or None. Returns per group ``(r_g, r_g)``
        float64 matrices, or None when the batch has no valid position.
        """
        b, L = dt.shape[:2]
        valid = torch.ones(b, L, dtype=torch.bool, device=dt.device) if mask is None else mask
        idx = valid.reshape(-1).nonzero().squeeze(1)
        if idx.numel() == 0:
            return None
        rep = self.nheads // self.ngroups
        kP, kQ = gramian_weights(x, dt, A, valid, rep)                      # (b, L, G)
        if idx.numel() > GRAMIAN_POSITIONS:
            stride = math.ceil(idx.numel() / GRAMIAN_POSITIONS)
            idx = idx[int(self.gram_steps) % stride::stride]
        n = idx.numel()
        kP, kQ = kP.reshape(b * L, -1)[idx], kQ.reshape(b * L, -1)[idx]
        Ps, Qs = [], []
        for g, (Bg, Cg) in enumerate(zip(Bs, Cs)):
            Bf = Bg.detach().reshape(b * L, -1)[idx].to(_F64)
            Cf = Cg.detach().reshape(b * L, -1)[idx].to(_F64)
            Ps.append((Bf * kP[:, g:g + 1]).T @ Bf / n)
            Qs.append((Cf * kQ[:, g:g + 1]).T @ Cf / n)
        return Ps, Qs

    @torch.no_grad()
    def _track_gramians(self, x: Tensor, dt: Tensor, A: Tensor, Bs: list[Tensor], Cs: list[Tensor],
                        mask: Tensor | None) -> None:
        """Fold this batch's Gramians into the running averages (momentum, or a plain average:
        ``gramian_momentum`` None, or while calibrating)."""
        got = self.batch_gramians(x, dt, A, Bs, Cs, mask)
        if got is None:
            return
        Ps, Qs = got
        k = int(self.gram_steps)
        m = self.gramian_momentum
        w = 1.0 / (k + 1) if (m is None or self._calibrating) else (1.0 if k == 0 else m)
        for g, (P, Q) in enumerate(zip(Ps, Qs)):
            r = P.shape[0]
            self.gram_P[g, :r, :r].lerp_(P.to(self.gram_P.dtype), w)
            self.gram_Q[g, :r, :r].lerp_(Q.to(self.gram_Q.dtype), w)
        self.gram_steps += 1

    def group_gramians(self) -> list[tuple[Tensor, Tensor]]:
        """Per group, the running ``(P_g, Q_g)``: ``(r_g, r_g)`` float64 CPU tensors, symmetrised."""
        if not self.has_gramians():
            raise ValueError("the mamba2 layer has no Gramian statistics yet: calibrate it "
                             "(shrinkssm.nn.calibrate) or run training-mode forward passes first")
        out = []
        for g, r in enumerate(self.group_ranks):
            P = self.gram_P[g, :r, :r].detach().to("cpu", _F64)
            Q = self.gram_Q[g, :r, :r].detach().to("cpu", _F64)
            out.append((0.5 * (P + P.T), 0.5 * (Q + Q.T)))
        return out
