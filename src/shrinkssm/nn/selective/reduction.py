"""The selective layer's reductions: per channel (balanced truncation of each channel's surrogate,
applied to its continuous-time generator) and shared (one subset of state indices for the layer).

``docs/design.md`` §7.3 states both. The balancing is :mod:`shrinkssm.lti.balancing` (the same
routine, factors and guards as the LRU's reduction), here in the continuous-time domain: the
transforms computed from the discrete surrogate are applied to the generator ``G`` and the
stability clamp keeps ``Re(alpha) <= -ALPHA_FLOOR``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from shrinkssm._checks import check_choice
from shrinkssm.lti import OUTPUTS, SELECTIONS
from shrinkssm.lti.balancing import (
    REAL_PART_MARGIN,
    SquareRoot,
    balance_batch,
    coordinate_energy,
    truncate,
)
from shrinkssm.nn.selective.surrogate import ChannelRealization, balance_channels
from shrinkssm.nn.shrinkable import LayerReduction, RankRule, ReductionPlan

__all__ = ["ALPHA_FLOOR", "REDUCTIONS", "METHODS", "ChannelStates", "ReducedState", "SelectiveReducer",
           "SelectivePlanDetail", "balance_channel", "state_scores"]

REDUCTIONS = ("per_channel", "shared")
"""Values of ``reduction=``: the faithful per-channel balanced truncation, or one shared subset."""

ALPHA_FLOOR = REAL_PART_MARGIN
"""Largest real part a reduced continuous-time eigenvalue may have (its stability margin)."""

METHODS = ("balanced", "random")
"""The methods of :data:`shrinkssm.lti.METHODS` a selective layer has: ``balanced`` (its
``reduction``) and ``random`` (a random shared subset, the ablation)."""
_F64 = torch.float64


def _arrays(*values) -> list[np.ndarray]:
    """Array-likes -> float64 NumPy arrays (for :mod:`shrinkssm.lti.balancing`)."""
    return [np.asarray(torch.as_tensor(v).detach().cpu().to(_F64).numpy()) for v in values]


def state_scores(A_bar, Sb, Sc) -> Tensor:
    """Hankel energy of a real surrogate attributed to its state coordinates.

    ``s[n] = sum_k sigma_k |T[n, k] T^-[k, n]|`` over the balanced directions with nonzero
    ``sigma`` (``T`` and ``T^-`` the full balancing transforms,
    :func:`shrinkssm.lti.balancing.coordinate_energy`). A coordinate that the input cannot reach or
    the output cannot see scores 0; for decoupled coordinates ``s[n]`` is that coordinate's own HSV.

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
    A, B, C = _arrays(A_bar, Sb, Sc)
    return torch.from_numpy(coordinate_energy(balance_batch(A[None], B[None], C[None])[0]))


@dataclass(frozen=True)
class ChannelStates:
    """New states of one channel in realization coordinates: x ~ L_out zeta, zeta = L_in x."""

    alpha: Tensor      # (r,) complex128 continuous-time eigenvalues (pairs: both members)
    L_in: Tensor       # (r, n) complex128
    L_out: Tensor      # (n, r) complex128
    hsv: Tensor        # (n,) float64
    notes: tuple[str, ...]
    kept: tuple[int, ...] = ()   # balanced directions kept (empty for a zero map)


def balance_channel(A_bar, Sb, Sc, G, rank: int, selection: str = "largest", max_cond: float = 1e8,
                    balance: SquareRoot | None = None) -> ChannelStates:
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
        lowered by one and the step repeated, at most ``MAX_COND_DROPS`` times (then ``ValueError``).
    balance : SquareRoot, optional
        The surrogate's balancing, if already computed.

    Returns
    -------
    ChannelStates
        ``alpha = eig(T^- G T)`` (real parts at most ``-ALPHA_FLOOR``), ``L_in = W^-1 T^-``,
        ``L_out = T W`` (complex128 tensors); a channel whose surrogate map is zero keeps one state
        at the slowest eigenvalue of ``G`` with zero maps.
    """
    A, S_b, S_c, G_ = _arrays(A_bar, Sb, Sc, G)
    bal = balance if balance is not None else balance_batch(A[None], S_b[None], S_c[None])[0]
    eye = np.eye(G_.shape[0])
    tr = truncate(bal, G_, eye, eye, int(rank), real=True, fold_pairs=False, domain="continuous",
                  max_cond=max_cond, selection=selection)
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, dtype=np.complex128))  # noqa: E731
    return ChannelStates(t(tr.lam), t(tr.B), t(tr.C), torch.from_numpy(bal.hsv.copy()), tr.notes,
                         tuple(int(i) for i in tr.kept))


@dataclass(frozen=True)
class ReducedState:
    """One state of a per-channel reduced layer: its channel, continuous-time eigenvalue and the rows
    that map ``B(x)`` to its input and ``C(x)`` to its output coefficient (``(N_bc,)``; real for a
    real state, complex with the output doubled for the ``Im > 0`` member of a conjugate pair)."""

    channel: int
    alpha: complex
    b: Tensor
    c: Tensor


@dataclass
class SelectivePlanDetail:
    """The selective layer's part of a :class:`~shrinkssm.nn.shrinkable.ReductionPlan`
    (``plan.detail``): which reduction, the shared-subset scores, and the per-channel
    realizations and balancings the plan computed (reused when it is applied at once)."""

    kind: str                        # "per_channel" or "shared"
    scores: Tensor | None = None     # (N,) float64 per-index scores of a shared plan
    cache: tuple | None = field(default=None, repr=False)   # (realizations, balancings), per channel


# ------------------------------------------------------------------------------------------------
# The reductions (a mixin of SelectiveSSM)
# ------------------------------------------------------------------------------------------------


class SelectiveReducer:
    """Mixin of :class:`~shrinkssm.nn.selective.SelectiveSSM`: planning and applying its reductions
    (the compressor's protocol: ``plan_reduction`` / ``reduce_``)."""

    def _kind(self, method: str) -> str:
        if method not in METHODS:
            raise ValueError(f"method {method!r} is not available for selective layers; valid: "
                             f"{', '.join(METHODS)} (balanced means the layer's reduction="
                             f"{self.reduction!r})")
        kind = "shared" if method == "random" else self.reduction
        if kind == "shared" and self.is_balanced_form:
            raise ValueError("a shared-subset reduction needs the diagonal form; this layer was reduced "
                             "per channel")
        if kind == "shared" and (self.n_real or self.n_complex):
            raise ValueError("a shared-subset reduction needs a layer without reduced states")
        return kind

    def plan_reduction(self, rank_rule: RankRule, *, method: str = "balanced",
                       output: str = "complex") -> ReductionPlan:
        """Measure the layer's surrogate and propose ranks (nothing changes).

        Parameters
        ----------
        rank_rule : callable ``(hsv: (n,) float64 descending, size: int) -> int``
            The compressor's rule (energy rule with ``tau``, a fixed fraction, ...), applied to each
            channel's HSVs with ``size`` its real order (``"per_channel"``) or to the sorted state
            scores with ``size = N`` (``"shared"``).
        method : {"balanced", "random"}
            "balanced": the layer's ``reduction``; "random": a random shared subset of the size the
            scores ask for (ablation).
        output : {"complex", "real"}
            Accepted for the compressor's interface; the surrogate is real, so both give the same HSVs.

        Returns
        -------
        ReductionPlan
            ``hsv`` concatenates every channel's surrogate HSVs (descending); ``ranks`` is one real
            order per channel (weight 1 each) or one shared count (weight ``E``); ``detail`` a
            :class:`SelectivePlanDetail`. Skipped while there are no surrogate statistics. Apply a
            plan at once (before the layer trains on): it reuses the balancings it computed.
        """
        check_choice("output", output, OUTPUTS)
        kind = self._kind(method)
        E = self.d_inner
        old_size = self.state_size
        if not self.has_surrogate():
            return ReductionPlan.not_measured(self, method, output, E, "no surrogate statistics yet")
        reals = self._realizations()
        bals = balance_channels(reals)
        hsv_all = torch.from_numpy(np.sort(np.concatenate([b.hsv for b in bals]))[::-1].copy())
        if kind == "per_channel":
            ranks = []
            for r, bal in zip(reals, bals):
                ranks.append(int(max(1, min(r.order, rank_rule(torch.from_numpy(bal.hsv.copy()), r.order)))))
            kept = [float(b.hsv[:k].sum() / b.hsv.sum()) if b.hsv.sum() > 0 else 1.0
                    for b, k in zip(bals, ranks)]
            return ReductionPlan(id(self), method, output, hsv_all, ranks, [1] * E, old_size, E,
                                 kept_energy=sum(kept) / len(kept),
                                 detail=SelectivePlanDetail(kind, cache=(reals, bals)))
        scores = self._shared_scores(bals)
        order = torch.argsort(scores, descending=True)
        N = self.n_diag
        k = int(max(1, min(N, rank_rule(scores[order], N))))
        kept = float(scores[order[:k]].sum() / scores.sum()) if scores.sum() > 0 else 1.0
        return ReductionPlan(id(self), method, output, hsv_all, [k], [E], old_size, E,
                             kept_energy=kept, detail=SelectivePlanDetail(kind, scores=scores))

    @staticmethod
    def _shared_scores(bals: list[SquareRoot]) -> Tensor:
        """(N,) float64: per-index scores, each channel's normalised to sum 1, averaged over channels."""
        per_channel = []
        for bal in bals:
            s = torch.from_numpy(coordinate_energy(bal))
            total = s.sum()
            per_channel.append(s / total if total > 0 else s)
        return torch.stack(per_channel).mean(0)

    def reduce_(self, rank: int | Sequence[int] | ReductionPlan, method: str = "balanced",
                output: str = "complex", **options) -> LayerReduction:
        """Replace the layer, in place, by its reduction to explicit ranks (only shrinks).

        Parameters
        ----------
        rank : int, sequence of E ints, or ReductionPlan
            ``"per_channel"``: a kept real order per channel (an int means the same for every
            channel); ``"shared"`` / ``"random"``: the number of state indices kept. A plan from
            :meth:`plan_reduction` is applied as :meth:`apply_reduction_` does.
        method : {"balanced", "random"}
        output : {"complex", "real"}
            As in :meth:`plan_reduction`.
        **options
            As in :meth:`apply_reduction_`.

        Returns
        -------
        LayerReduction
        """
        if isinstance(rank, ReductionPlan):
            if rank.method != method:
                raise ValueError("the plan was made for another layer or method")
            return self.apply_reduction_(rank, **options)
        self._check_options(options)
        wanted = self._explicit_ranks(rank, self._kind(method))
        queue = [wanted] if isinstance(wanted, int) else list(wanted)
        plan = self.plan_reduction(lambda hsv, n: queue.pop(0), method=method, output=output)
        if plan.skipped:
            raise ValueError(f"cannot reduce: {plan.skipped}")
        return self.apply_reduction_(plan, **options)

    @staticmethod
    def _check_options(options: dict) -> None:
        unknown = set(options) - {"selection", "generator", "max_cond"}
        if unknown:
            raise ValueError(f"unknown options {sorted(unknown)}; valid: generator, max_cond, selection")
        check_choice("selection", options.get("selection", "largest"), SELECTIONS)

    def apply_reduction_(self, plan: ReductionPlan, **options) -> LayerReduction:
        """Apply a plan of :meth:`plan_reduction`, in place (only shrinks).

        Parameters
        ----------
        plan : ReductionPlan
            Made by this layer's :meth:`plan_reduction` (its ranks may have been changed since,
            e.g. by the compressor's ``agree`` hook).
        **options
            ``selection="smallest"`` keeps the least important directions / indices (ablation);
            ``generator`` seeds ``"random"``; ``max_cond`` (default 1e8) as in :func:`balance_channel`.

        Returns
        -------
        LayerReduction
            ``error_bound`` is None: ``2 * sum(discarded sigma)`` bounds only the surrogate's
            change, not the selective layer's; the largest per-channel surrogate bound is in
            ``notes``. ``ranks``: every channel's order after the reduction.

        Notes
        -----
        New ``nn.Parameter`` objects replace the changed ones (tags carried over); ``(old, new)``
        pairs are left in ``last_replaced``. Every new value is computed and checked before the
        first parameter is replaced, so a failure leaves the layer as it was.
        """
        t0 = time.perf_counter()
        self._check_options(options)
        selection = options.get("selection", "largest")
        if plan.layer_id != id(self) or not isinstance(plan.detail, SelectivePlanDetail):
            raise ValueError("the plan was made for another layer or method")
        if plan.skipped:
            raise ValueError(f"cannot apply a skipped plan ({plan.skipped})")
        self.last_replaced = {}
        old_d, old_size = self.d_state, self.state_size
        if plan.detail.kind == "shared":
            notes = self._reduce_shared(int(plan.ranks[0]), plan, plan.method, selection,
                                        options.get("generator"))
        else:
            notes = self._reduce_per_channel(list(plan.ranks), selection, float(options.get("max_cond", 1e8)),
                                             plan.detail.cache)
        return LayerReduction(old_d, self.d_state, plan.method, plan.output, plan.hsv, None,
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
    def _reduce_shared(self, k: int, plan: ReductionPlan, method: str, selection: str,
                       generator: torch.Generator | None) -> tuple[str, ...]:
        N = self.n_diag
        if k >= N:
            return ("no-op: the kept count is not below the current N",)
        if method == "random":
            keep = torch.randperm(N, generator=generator)[:k]
        else:
            order = torch.argsort(plan.detail.scores, descending=selection == "largest", stable=True)
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
            bals = balance_channels(reals)
        orders = [r.order for r in reals]
        if all(r >= n for r, n in zip(ranks, orders)):
            return ("no-op: no channel's rank is below its order",)
        notes, bounds = [], []
        re_rows: list[ReducedState] = []
        cx_rows: list[ReducedState] = []
        for c, (real, bal, r, n) in enumerate(zip(reals, bals, ranks, orders)):
            if r >= n:
                states = self._identity_states(real)
            else:
                try:
                    st = balance_channel(real.A_bar, real.Sb, real.Sc, real.G, r, selection, max_cond, balance=bal)
                except ValueError as err:
                    raise ValueError(f"channel {c}: {err}") from None
                notes.extend(f"channel {c}: {note}" for note in st.notes)
                cplx = torch.complex128
                states = (st.alpha, st.L_in @ real.MB.to(cplx), st.L_out.T @ real.MC.to(cplx))
                bounds.append(2.0 * float(st.hsv.sum() - st.hsv[list(st.kept)].sum()))
            self._split_states(c, *states, re_rows, cx_rows)
        if bounds:
            notes.append(f"largest surrogate error bound over reduced channels: {max(bounds):.3g}")
        self._load_states(re_rows, cx_rows)
        return tuple(notes)

    @staticmethod
    def _identity_states(real: ChannelRealization) -> tuple[Tensor, Tensor, Tensor]:
        """A channel kept as it is, as (alpha, MB, MC) of its states (complex rows; pairs expanded)."""
        G, MB, MC = real.G, real.MB.to(torch.complex128), real.MC.to(torch.complex128)
        alphas, mb, mc = [], [], []
        i = 0
        for kind, _ in real.kinds:
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
    def _split_states(c: int, alpha: Tensor, MB: Tensor, MC: Tensor, re_rows: list[ReducedState],
                      cx_rows: list[ReducedState]) -> None:
        """Real eigenvalues become real states; of a conjugate pair the member with Im > 0 becomes one
        complex state whose output row is doubled (y = Re(C h))."""
        for j in range(alpha.shape[0]):
            im = float(alpha[j].imag)
            if im == 0.0:
                re_rows.append(ReducedState(c, complex(alpha[j]), MB[j].real, MC[j].real))
            elif im > 0.0:
                cx_rows.append(ReducedState(c, complex(alpha[j]), MB[j], 2.0 * MC[j]))

    def _load_states(self, re_rows: list[ReducedState], cx_rows: list[ReducedState]) -> None:
        """Write the new states into new parameters (checked first: nothing changes on failure)."""
        K = self.n_bc
        n1, n2 = len(re_rows), len(cx_rows)
        rows = lambda items, n: torch.stack(items) if n else torch.zeros(0, K, dtype=_F64)  # noqa: E731
        re_alpha = torch.tensor([r.alpha.real for r in re_rows], dtype=_F64)
        cx_alpha = torch.tensor([r.alpha for r in cx_rows], dtype=torch.complex128)
        cx_B = rows([r.b for r in cx_rows], n2).to(torch.complex128)
        cx_C = rows([r.c for r in cx_rows], n2).to(torch.complex128)
        new = {
            "A_log": torch.zeros(self.d_inner, 0, dtype=_F64),
            "re_alpha_log": torch.log(-re_alpha),
            "re_B": rows([r.b for r in re_rows], n1).to(_F64).reshape(n1, K),
            "re_C": rows([r.c for r in re_rows], n1).to(_F64).reshape(n1, K),
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
        self.re_chan = torch.tensor([r.channel for r in re_rows], dtype=torch.int64, device=dev)
        self.cx_chan = torch.tensor([r.channel for r in cx_rows], dtype=torch.int64, device=dev)
        self.sur_a = self.sur_a.new_zeros(self.d_inner, 0)
        self.sur_a_re = self.sur_a_re.new_zeros(n1)
        self.sur_a_cx = self.sur_a_cx.new_zeros(n2, 2)
        self.sur_steps_states.zero_()
        self._clear_layouts()
