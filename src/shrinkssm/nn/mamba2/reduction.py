"""The Mamba-2 layer's reduction under the shrinkable-layer protocol: one balancing per group.

In a Mamba-2 head the transition is a scalar ``a[t]`` times the identity, so for any invertible
``T`` (``N x N``) shared by the heads of a group the change of state basis ``h' = T^-1 h`` is exact
for every input: ``B'[t] = T^-1 B[t]``, ``C'[t] = T^T C[t]`` (``docs/design.md`` §7.4). The
*exact* form applies the truncated transform after the convolution and SiLU that produce ``B`` and
``C``, once per group and token::

    B'_g[t] = T_r^- B_g[t]        C'_g[t] = T_r^T C_g[t]        (r_g,), the scan then over r_g states

with ``T_r`` (N x r_g) and ``T_r^-`` (r_g x N), ``T_r^- T_r = I``, the square-root balancing
transforms (:mod:`shrinkssm.lti.balancing`) of the group's data-driven Gramians
(:mod:`~shrinkssm.nn.mamba2.gramians`). At full rank ``T^- = T^-1`` and the layer is unchanged
(to rounding). The transforms are buffers ``red_in`` (rows ``T_r^-``) and ``red_out`` (rows
``T_r^T``), the groups' rows concatenated, ``(sum r_g, N)``; the projections that make ``B`` and
``C`` keep their width ``N`` and keep training. A second reduction composes with the first
(``T2^- T^-``, ``T2^T T^T``).

Ranks are chosen per group by the compressor's rule on the group's HSVs; ``state_size`` counts
``heads_per_group * P * r_g`` per group.

The *folded* form (the layer's ``reduction="folded"``; :mod:`~shrinkssm.nn.mamba2.folding`) folds
the same maps into the rows of ``in_proj`` that produce ``B`` and ``C`` and into their
convolution channels, and leaves a plain layer whose ``B`` and ``C`` have width ``r``: no buffers,
no extra cost per token, but approximate (the convolution's kernels are re-fitted, the SiLU sits
in between). A plain layer has one width for all groups, so its plan gives every group the
largest of the groups' orders, and the reduction takes the largest order a group actually keeps
(the planned order capped, per group, at its nonzero HSVs: directions with sigma = 0 are never
kept, so no width is spent on them); a group that keeps fewer directions gets zero rows (states
that stay zero), and a note says so.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from shrinkssm._checks import check_choice
from shrinkssm.lti import OUTPUTS, SELECTIONS
from shrinkssm.lti.balancing import SquareRoot, balance_gramians, capped_order
from shrinkssm.nn.mamba2.folding import coordinate_basis, fold_maps
from shrinkssm.nn.shrinkable import LayerReduction, RankRule, ReductionPlan

__all__ = ["METHODS", "REDUCTIONS", "Mamba2PlanDetail", "Mamba2Reducer"]

METHODS = ("balanced",)
"""The methods of :data:`shrinkssm.lti.METHODS` a Mamba-2 layer has."""

REDUCTIONS = ("exact", "folded")
"""The forms of the reduction (the layer's ``reduction``, ``model.mamba2_reduction``): the
transforms as buffers after the convolution (exact), or folded into the weights (approximate)."""

_F64 = torch.float64


@dataclass
class Mamba2PlanDetail:
    """The Mamba-2 layer's part of a :class:`~shrinkssm.nn.shrinkable.ReductionPlan`: the group
    orders the plan was made for and each group's balancing."""

    ranks_before: tuple[int, ...]
    balancings: list[SquareRoot] = field(repr=False)


class Mamba2Reducer:
    """Mixin of :class:`~shrinkssm.nn.mamba2.Mamba2SSM`: ``plan_reduction`` / ``apply_reduction_``
    (module docstring)."""

    def plan_reduction(self, rank_rule: RankRule, *, method: str = "balanced",
                       output: str = "complex") -> ReductionPlan:
        """Balance every group's Gramians and propose one order per group (nothing changes).

        Parameters
        ----------
        rank_rule : callable ``(hsv: (r_g,) float64 descending, size: int) -> int``
            The compressor's rule, applied to each group's HSVs with ``size`` its current order.
        method : {"balanced"}
        output : {"complex", "real"}
            Accepted for the compressor's interface; the system is real, both give the same HSVs.

        Returns
        -------
        ReductionPlan
            ``hsv``: every group's HSVs, concatenated and sorted descending; ``ranks``: one order
            per group, weight ``heads_per_group * P`` each (folded form: every group the largest
            of them); ``per_d_state = E``. Skipped while there are no Gramian statistics.
        """
        check_choice("output", output, OUTPUTS)
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not available for mamba2 layers; valid: "
                             f"{', '.join(METHODS)}")
        E = self.d_inner
        if not self.has_gramians():
            return ReductionPlan.not_measured(self, method, output, E, "no Gramian statistics yet")
        before = tuple(self.group_ranks)
        bals = balance_gramians([(P.numpy(), Q.numpy()) for P, Q in self.group_gramians()])
        ranks, kept = [], []
        for bal, r in zip(bals, before):
            hsv = torch.from_numpy(bal.hsv.copy())
            k = int(max(1, min(r, rank_rule(hsv, r))))
            ranks.append(k)
            total = float(hsv.sum())
            kept.append(float(hsv[:k].sum()) / total if total > 0 else 1.0)
        if self.reduction == "folded":                   # one width for every group
            ranks = [max(ranks)] * len(ranks)
            kept = [float(b.hsv[:ranks[0]].sum()) / float(b.hsv.sum()) if b.hsv.sum() > 0 else 1.0
                    for b in bals]
        hsv_all = torch.from_numpy(np.sort(np.concatenate([b.hsv for b in bals]))[::-1].copy())
        weight = (self.nheads // self.ngroups) * self.headdim
        return ReductionPlan(id(self), method, output, hsv_all, ranks, [weight] * self.ngroups,
                             self.state_size, E, kept_energy=sum(kept) / len(kept),
                             detail=Mamba2PlanDetail(before, bals))

    def apply_reduction_(self, plan: ReductionPlan, **options) -> LayerReduction:
        """Apply a plan of :meth:`plan_reduction`, in place (only shrinks; the layer's form).

        Parameters
        ----------
        plan : ReductionPlan
            Made by this layer's :meth:`plan_reduction` (its ranks may have been changed since,
            e.g. by the compressor's ``agree`` hook).
        **options
            ``selection="smallest"`` keeps the least important balanced directions (ablation);
            ``balance_all=True`` also moves the groups kept at their order into balanced
            coordinates (an exact change of basis when every HSV is nonzero: for tests and
            inspection).

        Returns
        -------
        LayerReduction
            ``error_bound`` is None (the Gramians are averages over a time-varying system, so
            ``2 * sum(discarded sigma)`` bounds nothing of the layer); the largest per-group figure
            is in ``notes``. ``ranks``: every group's order after the reduction.

        Notes
        -----
        Exact form: no parameter is replaced (``last_replaced`` stays empty): the transforms are
        buffers and the projections keep their shapes. Folded form: the groups get one order, the
        largest a group keeps (the largest of ``plan.ranks``, capped per group at its nonzero
        HSVs; a note says so when it is not every group's planned order); ``in_proj`` and ``conv1d`` are
        new modules of width ``r`` (their parameters' ``(old, new)`` pairs in ``last_replaced``),
        the layer has no transforms (``ranks`` None) and ``d_state = r``; the running Gramians
        are moved with the maps as in the exact form (approximately those of the folded layer).
        Every new value is computed and checked before the
        layer changes, so a ``ValueError`` leaves it as it was.
        """
        t0 = time.perf_counter()
        unknown = set(options) - {"selection", "balance_all"}
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; valid: balance_all, selection")
        balance_all = bool(options.get("balance_all", False))
        selection = options.get("selection", "largest")
        check_choice("selection", selection, SELECTIONS)
        if plan.layer_id != id(self) or not isinstance(plan.detail, Mamba2PlanDetail):
            raise ValueError("the plan was made for another layer or method")
        if plan.skipped:
            raise ValueError(f"cannot apply a skipped plan ({plan.skipped})")
        before = tuple(self.group_ranks)
        if plan.detail.ranks_before != before:
            raise ValueError(f"the plan was made for group orders {list(plan.detail.ranks_before)}, "
                             f"the layer now has {list(before)}")
        if len(plan.ranks) != self.ngroups:
            raise ValueError(f"need one rank per group ({self.ngroups}), got {len(plan.ranks)}")
        self.last_replaced = {}
        old_d, old_size = self.d_state, self.state_size
        notes: list[str] = []
        figures: list[float] = []
        folded = self.reduction == "folded"
        if folded:
            k_all = min(max(int(k) for k in plan.ranks), max(before))
            plan_ranks = [k_all] * self.ngroups
        else:
            plan_ranks = [int(k) for k in plan.ranks]
        if not balance_all and all(k >= r for k, r in zip(plan_ranks, before)):
            notes.append("no-op: no group's rank is below its order")
            return self._report(plan, old_d, old_size, notes, t0)
        old_in, old_out = self._transforms()
        maps: list[tuple[np.ndarray, np.ndarray]] = []                     # per group (T^-, T)
        for g, (bal, k, r) in enumerate(zip(plan.detail.balancings, plan_ranks, before)):
            if int(k) >= r and not balance_all:
                Tm, T = np.eye(r), np.eye(r)
            else:
                group_notes: list[str] = []
                order = capped_order(max(1, min(int(k), r)), bal, group_notes)
                notes.extend(f"group {g}: {n}" for n in group_notes)
                if order == 0:
                    notes.append(f"group {g}: every Hankel singular value is zero; one state with "
                                 "zero maps")
                    Tm, T = np.zeros((1, r)), np.zeros((r, 1))
                else:
                    nz = bal.n_nonzero
                    idx = np.arange(order) if selection == "largest" else np.arange(nz - order, nz)
                    T, Tm = bal.transforms(idx)
                    if folded:                   # the same reduced system, in a basis near the states
                        S = coordinate_basis(Tm @ old_in[g])
                        Tm, T = S @ Tm, T @ np.linalg.inv(S)
                    figures.append(2.0 * float(bal.hsv.sum() - bal.hsv[idx].sum()))
            maps.append((Tm, T))
        if folded:
            maps = self._one_width(maps, plan, k_all, notes)
        new_in, new_out, new_P, new_Q, ranks = [], [], [], [], []
        for g, ((Tm, T), r) in enumerate(zip(maps, before)):
            P = self.gram_P[g, :r, :r].detach().to("cpu", _F64).numpy()
            Q = self.gram_Q[g, :r, :r].detach().to("cpu", _F64).numpy()
            new_in.append(Tm @ old_in[g])                                   # (k, N): T^- (previous T^-)
            new_out.append(T.T @ old_out[g])                                # (k, N): T^T (previous T^T)
            new_P.append(Tm @ P @ Tm.T)
            new_Q.append(T.T @ Q @ T)
            ranks.append(Tm.shape[0])
        for name, arrays in (("red_in", new_in), ("red_out", new_out), ("gram_P", new_P), ("gram_Q", new_Q)):
            if not all(np.isfinite(a).all() for a in arrays):
                raise ValueError(f"reduction produced non-finite values for {name}; the layer is "
                                 "left unchanged")
        if figures:
            notes.append(f"largest group figure 2 * sum(discarded sigma) of the averaged Gramians: "
                         f"{max(figures):.3g} (not a bound on the layer's change)")
        if folded:
            notes.append("folded into in_proj and the convolution: approximate (kernels re-fitted, "
                         "the SiLU in between)")
            self._load_folded(new_in, new_out, new_P, new_Q)
        else:
            self._load_reduction(ranks, new_in, new_out, new_P, new_Q)
        return self._report(plan, old_d, old_size, notes, t0)

    @staticmethod
    def _one_width(maps: list[tuple[np.ndarray, np.ndarray]], plan: ReductionPlan, planned: int,
                   notes: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The folded form's one width: the largest order a group keeps (its planned order after
        the cap at its nonzero HSVs), never more; a group that keeps fewer gets zero rows (states
        that stay zero), noted. ``maps``: per group ``(T^- (k_g, r), T (r, k_g))``."""
        width = max(Tm.shape[0] for Tm, _ in maps)
        if len(set(int(k) for k in plan.ranks)) > 1 or width != planned:
            notes.append(f"folded: one width for every group, {width}, the largest order a group "
                         f"keeps (planned {list(plan.ranks)})")
        out = []
        for g, (Tm, T) in enumerate(maps):
            pad = width - Tm.shape[0]
            if pad:
                notes.append(f"group {g}: {Tm.shape[0]} state(s) kept, padded with {pad} zero "
                             f"state(s) to the folded width {width}")
                r = Tm.shape[1]
                Tm, T = np.vstack([Tm, np.zeros((pad, r))]), np.hstack([T, np.zeros((r, pad))])
            out.append((Tm, T))
        return out

    def _report(self, plan: ReductionPlan, old_d: int, old_size: int, notes: list[str], t0: float
                ) -> LayerReduction:
        return LayerReduction(old_d, self.d_state, plan.method, plan.output, plan.hsv, None,
                              float(plan.kept_energy if plan.kept_energy is not None else 1.0),
                              time.perf_counter() - t0, tuple(notes), old_size, self.state_size,
                              tuple(self.group_ranks))

    def _transforms(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per group, the current ``(r_g, N)`` maps from ``B`` to the scan's input and from ``C``
        to its output (float64 NumPy; identities for an unreduced layer)."""
        N = self.n
        if self.ranks is None:
            return [np.eye(N)] * self.ngroups, [np.eye(N)] * self.ngroups
        ins, outs, off = [], [], 0
        for r in self.ranks:
            ins.append(self.red_in[off:off + r].detach().to("cpu", _F64).numpy())
            outs.append(self.red_out[off:off + r].detach().to("cpu", _F64).numpy())
            off += r
        return ins, outs

    @torch.no_grad()
    def _load_folded(self, new_in: list[np.ndarray], new_out: list[np.ndarray],
                     new_P: list[np.ndarray], new_Q: list[np.ndarray]) -> None:
        """Fold every group's maps ``new_in[g]``, ``new_out[g]`` (``(r, N)``, one ``r``; composed
        with any exact transforms the layer had) into ``in_proj`` and ``conv1d``
        (:func:`~shrinkssm.nn.mamba2.folding.fold_maps`), then make the layer a plain one of width
        ``r`` holding those values and the moved statistics."""
        E, G, N, H = self.d_inner, self.ngroups, self.n, self.nheads
        r = new_in[0].shape[0]
        W = self.in_proj.weight.detach().to("cpu", _F64).numpy()
        beta = None if self.in_proj.bias is None else self.in_proj.bias.detach().to("cpu", _F64).numpy()
        w = self.conv1d.weight.detach()[:, 0, :].to("cpu", _F64).numpy()
        cb = None if self.conv1d.bias is None else self.conv1d.bias.detach().to("cpu", _F64).numpy()
        # conv channels: x (E), B (G N), C (G N); in_proj rows: z (E), then the conv channels, dt
        rows, kernels = [W[E:2 * E]], [w[:E]]
        b_rows = [None if beta is None else beta[E:2 * E]]
        c_bias = [None if cb is None else cb[:E]]
        for part, maps in ((0, new_in), (1, new_out)):
            for g in range(G):
                ch = E + part * G * N + g * N + np.arange(N)                  # conv channels
                W2, beta2, w2, b2 = fold_maps(maps[g], W[E + ch], None if beta is None else beta[E + ch],
                                              w[ch], None if cb is None else cb[ch])
                rows.append(W2)
                b_rows.append(beta2)
                kernels.append(w2)
                c_bias.append(b2)
        W_new = np.concatenate([W[:E], *rows, W[E + self.conv_dim:]])
        beta_new = None if beta is None else np.concatenate([beta[:E], *b_rows, beta[E + self.conv_dim:]])
        w_new, cb_new = np.concatenate(kernels), None if cb is None else np.concatenate(c_bias)
        for name, a in (("in_proj", W_new), ("conv1d", w_new)):
            if not np.isfinite(a).all():
                raise ValueError(f"folding produced non-finite values for {name}; the layer is left "
                                 "unchanged")
        self._set_width_(r)
        like = dict(dtype=self.D.dtype, device=self.D.device)
        self.in_proj.weight.copy_(torch.from_numpy(W_new))
        if beta_new is not None:
            self.in_proj.bias.copy_(torch.from_numpy(beta_new))
        self.conv1d.weight.copy_(torch.from_numpy(w_new)[:, None, :])
        if cb_new is not None:
            self.conv1d.bias.copy_(torch.from_numpy(cb_new))
        for g, (P, Q) in enumerate(zip(new_P, new_Q)):
            self.gram_P[g] = torch.from_numpy(0.5 * (P + P.T)).to(**like)
            self.gram_Q[g] = torch.from_numpy(0.5 * (Q + Q.T)).to(**like)

    @torch.no_grad()
    def _load_reduction(self, ranks: list[int], new_in: list[np.ndarray], new_out: list[np.ndarray],
                        new_P: list[np.ndarray], new_Q: list[np.ndarray]) -> None:
        """Write the new transforms and the transformed statistics (shapes from ``ranks``)."""
        like = dict(dtype=self.D.dtype, device=self.D.device)
        self._allocate_reduction(ranks)
        self.red_in.copy_(torch.from_numpy(np.concatenate(new_in)).to(**like))
        self.red_out.copy_(torch.from_numpy(np.concatenate(new_out)).to(**like))
        for g, (P, Q) in enumerate(zip(new_P, new_Q)):
            r = P.shape[0]
            self.gram_P[g, :r, :r] = torch.from_numpy(0.5 * (P + P.T)).to(self.gram_P.dtype)
            self.gram_Q[g, :r, :r] = torch.from_numpy(0.5 * (Q + Q.T)).to(self.gram_Q.dtype)
