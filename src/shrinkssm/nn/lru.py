"""The Linear Recurrent Unit (LRU) layer, and how it replaces itself by a smaller one.

Follows Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences" (2023), with
the parametrisation of ``docs/design.md`` §2::

    x[k] = diag(lam) x[k-1] + (gamma * B) u[k]        lam_j = exp(-exp(nu_log_j) + i exp(theta_log_j))
    y[k] = Re(C x[k]) + D u[k]                        gamma_j = exp(gamma_log_j) (~ sqrt(1 - |lam_j|^2))

The system-theory conventions (which side the conjugate sits on, what "rank" counts) are those of
:mod:`shrinkssm.lti`. :meth:`LRU.system` is the bridge to that package: it returns the exact map the
forward pass computes, and :meth:`LRU.reduce_` writes a reduced system back into the layer.

Sizes: ``d_state`` counts complex states (``N``); ``state_size = 2 N``, the real numbers the scan
carries per sequence and step (the unit every layer kind shares). The layer implements the
shrinkable-layer protocol of :mod:`shrinkssm.nn.shrinkable` (plan, apply, report, layout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from shrinkssm import lti
from shrinkssm._checks import check_choice
from shrinkssm.nn.shrinkable import LayerReduction, ReductionPlan, RankRule, set_param
from shrinkssm.ops import _native_backend, lru_recurrence
from shrinkssm.ops.scan import FUSED_MAX_WIDTH, resolve_backend

__all__ = ["LRU", "SSM_LR_GROUP"]

SSM_LR_GROUP = "ssm"
"""Value of ``param._lr_group`` for the recurrent parameters (nu, theta, gamma, B): the published
optimizer gives them a smaller learning rate and no weight decay."""

_MIN_PHASE = 1e-6
"""Smallest phase written back by :meth:`LRU.reduce_`. The LRU stores ``theta_log = log(theta)``,
so a reduced eigenvalue on the positive real axis (theta = 0) is given this phase instead; the
change of lam is below 1e-6 * |lam|, far under the reduction's own error bound."""


class LRU(nn.Module):
    """Linear Recurrent Unit over real sequences; a :class:`~shrinkssm.nn.shrinkable.ShrinkableLayer`.

    Parameters
    ----------
    d_model : int
        Width H of the input and output.
    d_state : int
        Number N of complex states (``state_size = 2 N`` real numbers per step).
    r_min, r_max : float
        ``|lam|`` is drawn so that eigenvalues are uniform on the ring ``r_min <= |lam| <= r_max``.
    max_phase : float
        Phases are drawn uniformly from ``[0, max_phase]`` (2*pi; pi/10 for very long tasks).
    train_gamma : bool
        Train the input normalisation ``gamma`` (``gamma_log`` is a Parameter) or keep it fixed at
        ``sqrt(1 - |lam|^2)`` of the initialisation (a buffer).
    scan : str
        Backend of :func:`shrinkssm.ops.lru_recurrence`: "auto", "native", "chunked" or "ref".

    Shapes: ``forward(u: (B, L, H) real) -> (B, L, H) real``; ``step(u_k: (B, H), state: (B, N)
    complex) -> ((B, H), (B, N))``.

    Parameters carry two tags read by optimizer builders: ``_no_weight_decay`` and ``_lr_group``
    (``"ssm"`` for nu_log, theta_log, gamma_log and B; absent for C and D).

    Notes
    -----
    :meth:`reduce_` replaces the parameters by *new* ``nn.Parameter`` objects of smaller shape. An
    optimizer built before the reduction still holds the old ones: call
    :func:`shrinkssm.compress.swap_parameters` (or rebuild the optimizer) with the mapping that
    :meth:`reduce_` leaves in ``layer.last_replaced``. The :class:`shrinkssm.compress.Compressor`
    does this for you.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        *,
        r_min: float = 0.9,
        r_max: float = 0.999,
        max_phase: float = 2 * math.pi,
        train_gamma: bool = True,
        dense_skip: bool = False,
        scan: str = "auto",
    ) -> None:
        super().__init__()
        if d_model < 1 or d_state < 1:
            raise ValueError(f"d_model and d_state must be >= 1, got {d_model} and {d_state}")
        if not 0.0 <= r_min < r_max < 1.0:
            raise ValueError(f"need 0 <= r_min < r_max < 1, got r_min={r_min}, r_max={r_max}")
        if not 0.0 < max_phase <= 2 * math.pi:
            raise ValueError(f"max_phase must lie in (0, 2*pi], got {max_phase}")
        self.d_model = d_model
        self.d_state = d_state
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.train_gamma = train_gamma
        self.scan = scan
        self.last_replaced: dict[str, tuple[nn.Parameter, nn.Parameter]] = {}
        self._allocate(d_state, dense_skip)
        self.reset_parameters()

    # ----------------------------------------------------------------------------------------
    # parameters
    # ----------------------------------------------------------------------------------------
    def _allocate(self, n: int, dense_skip: bool) -> None:
        """Create parameters for ``n`` states (zeros, in the layer's current dtype and device);
        see :meth:`resize_`."""
        h = self.d_model
        current = self._parameters.get("nu_log")
        like = dict(dtype=current.dtype, device=current.device) if current is not None else {}
        empty = lambda *shape: torch.zeros(*shape, **like)  # noqa: E731
        ssm = dict(_lr_group=SSM_LR_GROUP, _no_weight_decay=True)
        self._set_param("nu_log", empty(n), **ssm)
        self._set_param("theta_log", empty(n), **ssm)
        if self.train_gamma:
            self._set_param("gamma_log", empty(n), **ssm)
        else:
            self.register_buffer("gamma_log", empty(n))
        self._set_param("B_re", empty(n, h), **ssm)
        self._set_param("B_im", empty(n, h), **ssm)
        self._set_param("C_re", empty(h, n))
        self._set_param("C_im", empty(h, n))
        self._set_param("D", empty(h, h) if dense_skip else empty(h))
        self.d_state = n

    def _set_param(self, name: str, value: Tensor, **tags) -> nn.Parameter:
        return set_param(self, name, value, **tags)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as in the LRU paper: eigenvalues uniform on the ring, B ~ N(0, 1/(2H)),
        C ~ N(0, 1/N), D ~ N(0, 1)."""
        n, h = self.d_state, self.d_model
        u1, u2 = torch.rand(n), torch.rand(n)
        # |lam|^2 uniform on [r_min^2, r_max^2] makes lam uniform in area on the ring.
        nu = -0.5 * torch.log(u1 * (self.r_max**2 - self.r_min**2) + self.r_min**2)
        theta = (self.max_phase * u2).clamp_min(_MIN_PHASE)
        self.nu_log.copy_(torch.log(nu))
        self.theta_log.copy_(torch.log(theta))
        self.gamma_log.copy_(0.5 * torch.log1p(-torch.exp(-2 * nu)))  # log sqrt(1 - |lam|^2)
        self.B_re.normal_(0.0, 1.0 / math.sqrt(2 * h))
        self.B_im.normal_(0.0, 1.0 / math.sqrt(2 * h))
        self.C_re.normal_(0.0, 1.0 / math.sqrt(n))
        self.C_im.normal_(0.0, 1.0 / math.sqrt(n))
        if self.D.ndim == 1:
            self.D.normal_()
        else:
            self.D.copy_(torch.diag(torch.randn(h)))

    @property
    def dense_skip(self) -> bool:
        """True once the skip term is a full (H, H) matrix (after singular perturbation)."""
        return self.D.ndim == 2

    def resize_(self, d_state: int, dense_skip: bool = False) -> None:
        """Reallocate the parameters for ``d_state`` states (values are placeholders).

        Used to rebuild a reduced layer before ``load_state_dict`` of a checkpoint; to *reduce*
        a trained layer use :meth:`reduce_`.
        """
        self._allocate(d_state, dense_skip)
        self.last_replaced.clear()

    D_STATE_UNIT = "complex states"

    @property
    def state_size(self) -> int:
        """Real numbers of recurrent state per sequence and step: ``2 * d_state`` (a complex
        state is two)."""
        return 2 * self.d_state

    def layout(self) -> dict:
        """Shapes that differ from construction (for checkpoints): ``{"d_state", "dense_skip"}``."""
        return {"d_state": int(self.d_state), "dense_skip": bool(self.dense_skip)}

    def apply_layout_(self, layout: dict) -> None:
        """Reallocate for a :meth:`layout` (placeholder values) before ``load_state_dict``."""
        if set(layout) != {"d_state", "dense_skip"}:
            raise ValueError(f"an LRU layout has the keys ['d_state', 'dense_skip'], got {sorted(layout)}")
        if int(layout["d_state"]) < 1:
            raise ValueError(f"an LRU layout needs d_state >= 1, got {layout['d_state']}")
        if layout != self.layout():
            self.resize_(int(layout["d_state"]), bool(layout["dense_skip"]))

    def extra_repr(self) -> str:
        skip = ", dense_skip=True" if self.dense_skip else ""
        return f"d_model={self.d_model}, d_state={self.d_state}{skip}, scan={self.scan!r}"

    # ----------------------------------------------------------------------------------------
    # the map
    # ----------------------------------------------------------------------------------------
    def eigenvalues(self) -> Tensor:
        """lam: (N,) complex, ``exp(-exp(nu_log) + i exp(theta_log))``."""
        return torch.exp(torch.complex(-torch.exp(self.nu_log), torch.exp(self.theta_log)))

    def input_matrix(self) -> Tensor:
        """gamma * B: (N, H) complex, the normalised input matrix the recurrence uses."""
        return torch.complex(self.B_re, self.B_im) * torch.exp(self.gamma_log)[:, None]

    def output_matrix(self) -> Tensor:
        """C: (H, N) complex."""
        return torch.complex(self.C_re, self.C_im)

    def _skip(self, u: Tensor) -> Tensor:
        return u @ self.D.T if self.dense_skip else u * self.D

    def forward(
        self,
        u: Tensor,
        mask: Tensor | None = None,
        state: Tensor | None = None,
        return_state: bool = False,
        *,
        skip: bool = True,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Run the layer over whole sequences.

        Parameters
        ----------
        u : (B, L, H) real
        mask : (B, L) bool, optional
            True at valid positions. Padded inputs are zeroed, so they never enter the state: with
            left or right padding the valid outputs are exactly those of the unpadded sequence.
            (Across padding *inside* a sequence the state still decays by lam per position.)
        state : (B, N) complex, optional
            State before the first position (zeros if None).
        return_state : bool
            Also return the state after the last position, (B, N) complex.
        skip : bool
            Add the skip term ``D u``. A block that fuses the skip term into its own elementwise
            work (:func:`shrinkssm.ops.block.glu_block`) passes False and adds it there.

        Returns
        -------
        y : (B, L, H) real, and the final state if ``return_state``.
        """
        if u.ndim != 3 or u.shape[-1] != self.d_model:
            raise ValueError(f"LRU expects u of shape (B, L, {self.d_model}), got {tuple(u.shape)}")
        if mask is not None:
            u = u * mask.unsqueeze(-1).to(u.dtype)
        if state is None and not return_state and self._use_real_kernel(u):
            y, h_last = self._forward_real(u), None
        else:
            out = lru_recurrence(
                u, self.eigenvalues(), self.input_matrix(), self.output_matrix(),
                h0=state, backend=self.scan, return_state=return_state,
            )
            y, h_last = out if return_state else (out, None)
        if skip:  # y + D u in one pass (elementwise D) instead of a product and a sum
            y = y + u @ self.D.T if self.dense_skip else torch.addcmul(y, u, self.D)
        return (y, h_last) if return_state else y

    def _use_real_kernel(self, u: Tensor) -> bool:
        """True when the forward can hand the fused native kernel its real arrays directly: what
        :func:`shrinkssm.ops.lru_recurrence` would run (native backend, fused width), without a
        state in or out, parameters and input in one real dtype on the CPU."""
        return (u.device.type == "cpu" and u.dtype in (torch.float32, torch.float64)
                and u.dtype == self.nu_log.dtype and self.nu_log.device.type == "cpu"
                and 2 * self.d_model <= FUSED_MAX_WIDTH
                and resolve_backend(self.scan, u.device, u.shape[0] * u.shape[1] * self.d_state) == "native")

    def _kernel_arrays(self) -> tuple[Tensor, ...]:
        """The map of :meth:`eigenvalues`, :meth:`input_matrix` and :meth:`output_matrix` as the
        real arrays the fused kernel takes, zero-padded to its lanes ``Np``: ``Re lam, Im lam:
        (Np,)``, ``Re (gamma B)^T, Im (gamma B)^T: (H, Np)``, ``Re C, Im C: (H, Np)``. In eager
        mode on the CPU one C call each way (:class:`_KernelArrays`) instead of about twenty
        small autograd operations, whose fixed cost per step a small state cannot shrink; real
        torch arithmetic otherwise (``torch.compile`` traces that)."""
        pad = -self.d_state % _native_backend._lanes(self.nu_log.dtype)
        params = (self.nu_log, self.theta_log, self.gamma_log, self.B_re, self.B_im, self.C_re, self.C_im)
        if _native_backend.lru_params_available(params):
            return _KernelArrays.apply(*params, pad)
        r, phase = torch.exp(-torch.exp(self.nu_log)), torch.exp(self.theta_log)
        lam = F.pad(torch.stack((r * torch.cos(phase), r * torch.sin(phase))), (0, pad))   # (2, Np)
        gamma = torch.exp(self.gamma_log)                                                   # (N,)
        b = F.pad(torch.stack((self.B_re.T, self.B_im.T)) * gamma, (0, pad))                # (2, H, Np)
        c = F.pad(torch.stack((self.C_re, self.C_im)), (0, pad))                            # (2, H, Np)
        return (*lam.unbind(0), *b.unbind(0), *c.unbind(0))

    def _forward_real(self, u: Tensor) -> Tensor:
        """``Re(C x[k])`` for all k by the fused native kernel on :meth:`_kernel_arrays`:
        the value of ``lru_recurrence(u, lam, gamma B, C, backend="native")``."""
        return _native_backend.lru_fused_real(u, *self._kernel_arrays())

    def initial_state(self, batch_size: int) -> Tensor:
        """Zero state, (batch_size, N) complex, on the layer's device."""
        return torch.zeros(batch_size, self.d_state, dtype=self.eigenvalues().dtype,
                           device=self.nu_log.device)

    def step(self, u_k: Tensor, state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """One position of the recurrence: ``(u_k: (B, H), state: (B, N)) -> (y_k: (B, H), state)``.

        Running it over a sequence gives the same outputs as :meth:`forward`.
        """
        if state is None:
            state = self.initial_state(u_k.shape[0])
        lam, b_t, c_t = self._step_matrices()
        state = lam * state + u_k.to(b_t.dtype) @ b_t                       # (B, N)
        y_k = (state @ c_t).real + self._skip(u_k)                           # (B, H)
        return y_k, state

    def _key_tensors(self) -> tuple[Tensor, ...]:
        return (self.nu_log, self.theta_log, self.gamma_log, self.B_re, self.B_im, self.C_re,
                self.C_im, self.D)

    def _parameter_key(self) -> tuple:
        """Identity and in-place version of every parameter: changes whenever any of them is
        replaced or changed by an ordinary in-place operation (not by fused optimizer kernels,
        which leave the version alone; :meth:`system` compares values as well)."""
        return tuple((id(t), t.data_ptr(), t._version) for t in self._key_tensors())

    def _step_matrices(self) -> tuple[Tensor, Tensor, Tensor]:
        """lam (N,), (gamma B)^T (H, N) and C^T (N, H) for :meth:`step`; when no gradient is being
        recorded (generation) they are computed once and reused while the parameters stay put."""
        if torch.is_grad_enabled():
            return self.eigenvalues(), self.input_matrix().T, self.output_matrix().T
        key = self._parameter_key()
        cached = getattr(self, "_step_cache", None)
        if cached is None or cached[0] != key:
            cached = (key, (self.eigenvalues(), self.input_matrix().T.contiguous(),
                            self.output_matrix().T.contiguous()))
            self._step_cache = cached
        return cached[1]

    # ----------------------------------------------------------------------------------------
    # the bridge to shrinkssm.lti
    # ----------------------------------------------------------------------------------------
    @torch.no_grad()
    def system(self) -> lti.DiagonalSystem:
        """The layer as a detached :class:`shrinkssm.lti.DiagonalSystem` (the map of
        :meth:`forward`): ``lam (N,)``, ``B = gamma * B (N, H)``, ``C (H, N)``, ``D (H,) or (H, H)``.

        Computed in complex128 / float64 from the stored parameters, whatever their dtype:
        ``exp(-exp(nu_log))`` rounds to 1 in float32 once ``nu_log < -16`` (a marginally stable
        forward pass), while the parameters describe a strictly stable system, which float64
        resolves down to ``nu_log = -36``. Stability and HSVs are decided on this system.

        While the parameters are unchanged the same object is returned, so that ``lti``'s cached
        factorisations serve both the HSVs a compressor measures and the reduction that follows.
        """
        key = self._parameter_key()
        cached = getattr(self, "_system_cache", None)
        # torch's fused AdamW updates parameters in place without bumping their version counter,
        # so the key alone would hand out the system of an earlier step: the values are compared too
        if cached is not None and cached[0] == key and all(
                torch.equal(p.detach(), v) for p, v in zip(self._key_tensors(), cached[2])):
            return cached[1]
        f64 = lambda t: t.detach().to(torch.float64)  # noqa: E731
        lam = torch.exp(torch.complex(-torch.exp(f64(self.nu_log)), torch.exp(f64(self.theta_log))))
        b = torch.complex(f64(self.B_re), f64(self.B_im)) * torch.exp(f64(self.gamma_log))[:, None]
        sys = lti.DiagonalSystem(lam, b, torch.complex(f64(self.C_re), f64(self.C_im)), f64(self.D))
        self._system_cache = (key, sys, tuple(p.detach().clone() for p in self._key_tensors()))
        return sys

    @torch.no_grad()
    def plan_reduction(self, rank_rule: RankRule, *, method: str = "balanced",
                       output: str = "complex") -> ReductionPlan:
        """Measure the layer's HSVs and propose a rank (nothing changes).

        Parameters
        ----------
        rank_rule : callable
            ``rank_rule(hsv, size, size_of=None) -> int`` (:mod:`shrinkssm.nn.shrinkable`), applied
            to the HSVs of :meth:`system` in the view ``output`` with ``size = d_state``. In the
            ``"real"`` view the HSVs belong to real orders: ``size_of(k)`` is the number of LRU
            states that order ``k`` needs (balanced truncation: the count of its diagonal form,
            :func:`shrinkssm.lti.balanced_states`, since a real reduced eigenvalue costs a whole
            state; the other methods keep whole modes, ``ceil(k / 2)``).
        method : one of :data:`shrinkssm.lti.METHODS`
        output : one of :data:`shrinkssm.lti.OUTPUTS`

        Returns
        -------
        ReductionPlan
            One rank (complex states, weight 2 real numbers each). A system that cannot be
            measured (not stable even in float64, not finite) gives a skipped plan with a warning.
        """
        check_choice("method", method, lti.METHODS)
        check_choice("output", output, lti.OUTPUTS)
        try:
            sys = self.system()
            hsv = lti.hankel_singular_values(sys, output=output).double().cpu()
        except ValueError as exc:      # not stable (|lam| = 1 even in float64) or not finite
            return ReductionPlan.not_measured(self, method, output, 2,
                                              f"not measured, layer kept as it was: {exc}", warn=True)
        orders: dict[int, int] = {}    # LRU states -> the real order the rule asked them for
        size_of = None
        if output == "real":
            def size_of(order: int) -> int:
                states = (lti.balanced_states(sys, order) if method == "balanced"
                          else math.ceil(order / 2))
                orders.setdefault(states, order)
                return states
        rank = int(rank_rule(hsv, self.d_state) if size_of is None else rank_rule(hsv, self.d_state, size_of))
        return ReductionPlan(id(self), method, output, hsv, [rank], [2], self.state_size, 2,
                             detail={"order": orders.get(rank)})

    @torch.no_grad()
    def apply_reduction_(self, plan: ReductionPlan, **options) -> LayerReduction:
        """Apply a plan of :meth:`plan_reduction` (its one rank, method and output): as
        :meth:`reduce_`. A balanced plan in the ``"real"`` view keeps exactly the real order the
        rank rule chose (fewer if a guard acts; the report's notes say so)."""
        if plan.layer_id != id(self):
            raise ValueError("the plan was made for another layer")
        if plan.skipped is not None:
            raise ValueError(f"cannot apply a skipped plan ({plan.skipped})")
        order = (plan.detail or {}).get("order")
        if (order is not None and plan.method == "balanced" and plan.output == "real"
                and options.get("selection", "largest") == "largest"):
            options = {**options, "order": order}
        return self.reduce_(plan.ranks[0], plan.method, plan.output, **options)

    @torch.no_grad()
    def reduce_(
        self,
        rank: int,
        method: str = "balanced",
        output: str = "complex",
        **options,
    ) -> LayerReduction:
        """Replace the layer, in place, by a reduced system with ``rank`` states.

        Parameters
        ----------
        rank : int
            New number of complex states; must be >= 1. A rank >= ``d_state`` leaves the layer
            unchanged (the report says so) -- this method only shrinks.
        method : str
            "balanced" (balanced truncation), "singular_perturbation" (DC-gain matching; the skip
            term becomes a dense (H, H) matrix), "modal" or "random"; see
            :func:`shrinkssm.lti.reduce_system`.
        output : str
            "complex" (the paper: HSVs of u -> C x) or "real" (exact HSVs of u -> Re(C x)).
        **options
            Passed to the reduction (e.g. ``selection="smallest"``, ``score="hinf"``).

        Returns
        -------
        LayerReduction
            Sizes before and after, all HSVs, the error bound, the time taken.

        Notes
        -----
        New ``nn.Parameter`` objects replace the old ones (tags carried over); the pairs
        ``(old, new)`` are left in ``self.last_replaced`` for optimizer surgery.
        """
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.last_replaced = {}
        old = self.d_state
        reduced, info = lti.reduce_system(self.system(), rank, method=method, output=output,
                                          **options)
        notes = tuple(info.notes)
        on_circle = int((self.eigenvalues().detach().abs() >= 1).sum())
        if on_circle:
            notes += (f"{on_circle} eigenvalue(s) at |lam| >= 1 in the {self.nu_log.dtype} "
                      "forward pass (stable in float64, from nu_log); reduced in float64",)
        if reduced.n_states < old:
            notes += self._load_system(reduced)
        return LayerReduction(
            old_d_state=old, new_d_state=self.d_state, method=method, output=output,
            hsv=info.hsv, error_bound=info.error_bound, kept_energy=info.kept_energy,
            seconds=info.seconds, notes=notes, old_size=2 * old, new_size=self.state_size,
            ranks=(self.d_state,),
        )

    def _load_system(self, sys: lti.DiagonalSystem) -> tuple[str, ...]:
        """Write a diagonal system into new parameters; returns notes on any guard that acted.

        Every new value is computed and checked before the first parameter is replaced, so a
        failure leaves the layer as it was.
        """
        notes = []
        lam = sys.lam.to(torch.complex128)
        modulus = lam.abs()
        if not bool(((modulus > 0) & (modulus < 1)).all()):
            raise ValueError("reduced system is not strictly stable or has a zero eigenvalue; "
                             "the LRU parametrisation cannot represent it")
        phase = torch.remainder(lam.angle(), 2 * math.pi)
        n_flat = int((phase < _MIN_PHASE).sum())
        if n_flat:
            notes.append(f"{n_flat} eigenvalue(s) on the positive real axis given phase "
                         f"{_MIN_PHASE:g} (theta_log must be finite)")
        gamma = torch.sqrt(1 - modulus**2)
        b = sys.B.to(torch.complex128) / gamma[:, None]
        c = sys.C.to(torch.complex128)
        d = sys.D.to(torch.float64)
        if self.dense_skip and d.ndim == 1:
            d = torch.diag(d)
        new = {
            "nu_log": torch.log(-torch.log(modulus)),
            "theta_log": torch.log(phase.clamp_min(_MIN_PHASE)),
            "gamma_log": torch.log(gamma),
            "B_re": b.real, "B_im": b.imag, "C_re": c.real, "C_im": c.imag, "D": d,
        }
        for name, value in new.items():
            if not torch.isfinite(value).all():
                raise ValueError(f"reduction produced non-finite values for {name}; "
                                 "the layer is left unchanged")
        device, dtype = self.nu_log.device, self.nu_log.dtype
        for name, value in new.items():
            value = value.to(device=device, dtype=dtype)
            if name == "gamma_log" and not self.train_gamma:
                self.gamma_log = value
            else:
                tags = {} if name in ("C_re", "C_im", "D") else \
                    dict(_lr_group=SSM_LR_GROUP, _no_weight_decay=True)
                self._set_param(name, value, **tags)
        self.d_state = int(lam.shape[0])
        return tuple(notes)


class _KernelArrays(torch.autograd.Function):
    """:meth:`LRU._kernel_arrays` by the C kernel, forward and backward
    (:func:`shrinkssm.ops._native_backend.lru_param_arrays`, source ``_native/lru_params.c``).

    Forward, for N states padded by ``pad`` zeros (``r = exp(-exp(nu_log))``, ``phi =
    exp(theta_log)``, ``g = exp(gamma_log)``)::

        lr, li = r cos(phi), r sin(phi)                         (Np,)
        Br, Bi = (g * B_re)^T, (g * B_im)^T                     (H_in, Np)
        Cr, Ci = C_re, C_im                                     (H_out, Np)

    Backward (real parameters, so each gradient is the real chain rule of the map)::

        d nu_log    = -exp(nu_log) (glr lr + gli li)
        d theta_log = phi (gli lr - glr li)
        d B_re      = g * gBr^T,   d gamma_log = g * sum_h (gBr^T B_re + gBi^T B_im)

    The tests compare it with gradcheck and with autograd through the map written in complex
    torch operations.
    """

    @staticmethod
    def forward(ctx, nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, pad):
        ctx.h_out = C_re.shape[0]
        ctx.save_for_backward(nu_log, theta_log, gamma_log, B_re, B_im)
        return _native_backend.lru_param_arrays(nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im, pad)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads):
        return (*_native_backend.lru_param_arrays_backward(*ctx.saved_tensors, grads, ctx.h_out), None)
