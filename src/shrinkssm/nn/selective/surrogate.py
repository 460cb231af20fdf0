"""The selective layer's LTI surrogate: running statistics, per-channel realizations, balancing.

A selective layer has no single LTI system. Per channel ``c`` it keeps running averages (buffers
``sur_*``, in ``state_dict`` and checkpoints) of ``A_bar = E[exp(delta A)]``, ``b_bar = E[delta B(x)]``,
``c_bar = E[C(x)]`` and the second moments ``E[delta_c^2 B B^T]``, ``E[C C^T]``; from them a
discrete-time real system per channel whose Gramians rank the channel's states (``docs/design.md``
§7.1; ``surrogate="mean"`` or ``"second_moment"``). Every training-mode forward folds its batch in
(an exponential moving average over batches with ``surrogate_momentum``, or a plain average);
:func:`shrinkssm.nn.calibrate` (or :func:`calibrate_surrogates`, the same for a model's selective
layers) re-estimates them over batches you choose. The balancing itself is
:mod:`shrinkssm.lti.balancing`.

In data-parallel training, DDP's default ``broadcast_buffers`` copies rank 0's statistics to every
process at the start of each forward, but each process then folds in its own batch: broadcast the
``sur_*`` buffers from rank 0 right before a reduction, so that every process computes the same
balancing transforms.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
from torch import Tensor, nn

from shrinkssm import lti
from shrinkssm.lti.balancing import SquareRoot, balance_batch, psd_factor
from shrinkssm.nn.calibration import GatheredStatistics, calibrate

__all__ = ["SURROGATES", "MOMENT_POSITIONS", "ChannelRealization", "SurrogateStatistics", "balance_channels",
           "calibrate_surrogates"]

SURROGATES = ("second_moment", "mean")
"""Values of ``surrogate=``: Gramians from the second moments of the input/output terms (default)
or from their means (the paper's literal construction); ``docs/design.md`` §7.1."""

MOMENT_POSITIONS = 2048
"""Positions per batch (at most; an evenly spaced subset) used for the second moments, whose cost
grows with E * N^2."""

_F64 = torch.float64


@dataclass(frozen=True)
class ChannelRealization:
    """One channel's states and surrogate as a real realization of order n (float64 CPU tensors).

    Attributes
    ----------
    A_bar : (n, n)
        Mean discrete transition (1x1 blocks for real states, 2x2 rotation-scaling blocks for
        complex ones).
    b, c : (n,)
        Mean input term ``E[delta_c B(x)]`` and output term ``E[C(x)]`` in the states' coordinates.
    Sb, Sc : (n, n)
        Input and output energy of the chosen surrogate (``b b^T``, ``c c^T`` or the second moments).
    G : (n, n)
        Continuous-time generator (``A_bar = E[exp(delta G)]``), same block structure.
    MB, MC : (n, N_bc)
        Maps from ``B(x)``, ``C(x)`` to the states' input and output coefficients.
    kinds : tuple of (str, int)
        Source of each state: ``("diag", n)``, ``("re", j)`` or ``("cx", j)`` (a complex state fills
        two rows: real and imaginary part).
    """

    A_bar: Tensor
    b: Tensor
    c: Tensor
    Sb: Tensor
    Sc: Tensor
    G: Tensor
    MB: Tensor
    MC: Tensor
    kinds: tuple[tuple[str, int], ...]

    @property
    def order(self) -> int:
        return int(self.A_bar.shape[0])


def balance_channels(reals: list[ChannelRealization]) -> list[SquareRoot]:
    """Square-root balancing of every channel's surrogate (:mod:`shrinkssm.lti.balancing`), the
    Gramians computed at once for channels of equal order."""
    out: list[SquareRoot | None] = [None] * len(reals)
    groups: dict[int, list[int]] = {}
    for c, r in enumerate(reals):
        groups.setdefault(r.order, []).append(c)
    for idx in groups.values():
        stack = lambda key: np.stack([getattr(reals[c], key).numpy() for c in idx])  # noqa: E731
        for c, bal in zip(idx, balance_batch(stack("A_bar"), stack("Sb"), stack("Sc"))):
            out[c] = bal
    return out


def _square_factor(S: Tensor) -> Tensor:
    """(n, n) float64 ``F`` with ``F F^T = S`` (pivoted Cholesky, zero columns beyond the rank)."""
    L = psd_factor(S.numpy())
    return torch.from_numpy(np.pad(L, ((0, 0), (0, S.shape[0] - L.shape[1]))))


class SurrogateStatistics(GatheredStatistics):
    """Mixin of :class:`~shrinkssm.nn.selective.SelectiveSSM`: the surrogate's statistics and
    realizations (the layer's ``sur_*`` buffers, allocated by the layer). Its forward gathers in
    training mode while ``track_surrogate``, and in either mode inside :meth:`calibrating` (a
    plain average then; :func:`shrinkssm.nn.calibrate`)."""

    STATISTICS_BUFFERS = ("sur_a", "sur_a_re", "sur_a_cx", "sur_dtB", "sur_C", "sur_BB", "sur_CC",
                          "sur_steps", "sur_steps_states")

    @torch.no_grad()
    def reset_surrogate_(self) -> None:
        """Forget the surrogate's statistics (the next tracked batch starts them afresh)."""
        for name in self.STATISTICS_BUFFERS:
            getattr(self, name).zero_()

    def reset_statistics_(self) -> None:
        """:meth:`reset_surrogate_` (the name :class:`~shrinkssm.nn.calibration.GatheredStatistics`
        calls)."""
        self.reset_surrogate_()

    def has_statistics(self) -> bool:
        """:meth:`has_surrogate`."""
        return self.has_surrogate()

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


    def has_surrogate(self) -> bool:
        """True when every statistic the surrogate needs has seen at least one batch."""
        if int(self.sur_steps) == 0:
            return False
        return not (self.n_real or self.n_complex) or int(self.sur_steps_states) > 0

    def _realizations(self) -> list[ChannelRealization]:
        """Per channel, the real realization of its states and of its surrogate (float64 tensors on
        the CPU), see :class:`ChannelRealization`."""
        if not self.has_surrogate():
            raise ValueError("the layer has no surrogate statistics yet: run training-mode forward "
                             "passes (or shrinkssm.nn.calibrate) first")
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
            out.append(ChannelRealization(torch.block_diag(*a_bar), b, cc, 0.5 * (Sb + Sb.T),
                                          0.5 * (Sc + Sc.T), torch.block_diag(*g), MBc, MCc, tuple(kinds)))
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
            n = r.A_bar.shape[0]
            if self.surrogate == "mean":
                B, C, D = r.b[:, None], r.c[None, :], torch.zeros(1, dtype=_F64)
            else:
                B, C, D = _square_factor(r.Sb), _square_factor(r.Sc).T, torch.zeros(n, dtype=_F64)
            systems.append(lti.DenseSystem(r.A_bar, B.contiguous(), C.contiguous(), D))
        return systems

    def hankel_singular_values(self) -> list[Tensor]:
        """Per channel, the surrogate's HSVs: (n_c,) float64, descending."""
        return [torch.from_numpy(bal.hsv.copy()) for bal in balance_channels(self._realizations())]


# ------------------------------------------------------------------------------------------------
# Calibration
# ------------------------------------------------------------------------------------------------


def calibrate_surrogates(model: nn.Module, batches: Iterable) -> int:
    """Re-estimate every selective layer's surrogate as a plain average over ``batches``:
    :func:`shrinkssm.nn.calibrate` (which also gathers any other layer's statistics in ``model``).

    The model runs in eval mode (batch-norm statistics and dropout untouched) and each module's
    mode is restored afterwards. Each batch is an input tensor or an ``(x, mask)`` pair for
    ``model(x, mask)``.

    Returns
    -------
    int
        The number of batches seen.
    """
    if not any(isinstance(m, SurrogateStatistics) for m in model.modules()):
        raise ValueError("the model has no SelectiveSSM layers")
    return calibrate(model, batches)
