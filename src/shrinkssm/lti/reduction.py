"""Model reduction of diagonal (LRU) systems: balanced truncation and its alternatives.

Every method takes a stable :class:`~shrinkssm.lti.DiagonalSystem` (or
:class:`~shrinkssm.lti.DenseSystem`) and a target ``rank`` (LRU states, conventions in
:mod:`shrinkssm.lti`) and returns ``(DiagonalSystem, ReductionInfo)``: the reduced system comes
back re-diagonalised, ready to be written into a layer.

Balanced truncation follows the square-root method (Laub, Heath, Paige & Ward 1987; Antoulas 2005,
§7.3) in complex128 with conjugate transposes throughout (``docs/design.md`` §4):

1. ``P = Lc Lc^H``, ``Q = Lo Lo^H`` (pivoted Cholesky, :mod:`shrinkssm.lti.gramians`);
2. ``Lo^H Lc = U diag(sigma) V^H``;
3. ``T = Lc V_r sigma_r^(-1/2)``, ``T^- = sigma_r^(-1/2) U_r^H Lo^H`` (``T^- T = I``),
   ``A_r = T^- A T``, ``B_r = T^- B``, ``C_r = C T``, D unchanged;
4. back to LRU form: ``A_r = W diag(mu) W^-1``, ``B' = W^-1 B_r``, ``C' = C_r W``.

Balanced singular perturbation (Liu & Anderson 1989) matches the DC gain instead, modal
truncation keeps whole modes, random truncation is the ablation.

The square-root mathematics and the guards are :mod:`shrinkssm.lti.balancing` (shared with the
selective layer's per-channel reduction); this module applies them to a system. Guards (what
happens in the cases public code gets wrong):

* **sigma = 0** (uncontrollable or unobservable directions, at or below ``n * eps * sigma_1``):
  never kept; a rank above their count is capped to it, with a note. If every sigma is zero (the
  map is ``D`` alone) the result is one state with ``B = 0``, ``C = 0`` at the original's slowest
  eigenvalue.
* **|mu| >= 1 - MODULUS_MARGIN** in the reduced system: moved radially to ``1 - MODULUS_MARGIN``
  (``1 - 1e-7``, still below 1 in float32), with a note. The reduced system of a stable system is
  therefore stable.
* **near-defective reduced A** (``cond(W) > max_cond``, W with unit columns; default 1e4 for
  complex64 and 1e8 for complex128 systems): the diagonal form would amplify rounding by
  ``cond(W)``, so the order is lowered by one and the step repeated
  (cheap: the balancing SVD is reused), with a note each time; after ``MAX_COND_DROPS`` drops a
  ``ValueError`` suggests another rank or method.
* **real reduced eigenvalues** (phase 0 or pi; the LRU stores ``log(phase)``): returned as they
  are, finite, counted in a note; the layer decides.
* anything non-finite at the end raises ``ValueError``; no NaN is ever returned.

``output="real"`` reduces the real 2N form (``docs/design.md`` §5, exact HSVs of ``u -> Re(C x)``) and maps
the result back: a conjugate pair of reduced eigenvalues becomes one LRU state (``C`` doubled),
a real eigenvalue one state. ``rank`` still counts LRU states: the real order starts at
``2 * rank`` and is lowered until the re-diagonalised system has at most ``rank`` states (each
real eigenvalue costs a whole state), see ``ReductionInfo.order``.
"""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from shrinkssm._checks import check_choice, check_positive_int

from ._blas import limited_blas
from .balancing import (
    MAX_COND_DROPS,
    MODULUS_MARGIN,
    SELECTIONS,
    Modal,
    SquareRoot,
    capped_order,
    clamp_modulus,
    modal_form,
    search_order,
    silent_state,
    truncate,
)
from .gramians import (
    OUTPUTS,
    _balancing,
    _D_numpy,
    _from_numpy,
    _Numeric,
    _numeric,
    _square_root,
    _to_numpy,
)
from .systems import DenseSystem, DiagonalSystem, _check_system

__all__ = [
    "ReductionInfo",
    "balanced_truncation",
    "balred",
    "balanced_singular_perturbation",
    "modal_truncation",
    "random_truncation",
    "reduce_system",
    "balanced_states",
    "METHODS",
    "SCORES",
    "MODULUS_MARGIN",
    "MAX_COND_DROPS",
]

SCORES = ("magnitude", "hinf")
"""How :func:`modal_truncation` ranks modes: ``|lam_j|`` or the per-mode H-infinity norm."""

_MAX_COND_BY_DTYPE = {torch.complex64: 1e4, torch.complex128: 1e8}  # default of max_cond=None


@dataclass(frozen=True, eq=False)
class ReductionInfo:
    """What a reduction did.

    Attributes
    ----------
    method : str
        ``"balanced"``, ``"singular_perturbation"``, ``"modal"`` or ``"random"``.
    output : str
        ``"complex"`` or ``"real"`` (which system the HSVs and the bound refer to).
    n_states : int
        N before.
    rank : int
        LRU states after (may be below the requested rank; ``notes`` says why).
    order : int
        Order of the reduced realization in the view ``output``: equals ``rank`` for
        ``"complex"``; the real order kept for ``"real"`` (between ``rank`` and ``2 * rank``).
    hsv : (n,) float64 tensor on the CPU
        All HSVs of the original system in that view (n = N or 2N), descending.
    error_bound : float or None
        Guaranteed bound on the H∞ norm of the error of the real map ``u -> y``:
        ``2 * sum(discarded sigma)`` for balanced truncation (0 for a no-op), plus
        ``2 * ||D_extra||_2`` for singular perturbation (see there); None where no HSV bound
        applies (modal, random; their ``notes`` give a triangle-inequality bound instead).
    kept_energy : float
        Balanced methods: the kept sigma's share of the energy, ``sum(sigma[kept]) / sum(sigma)``.
        Modal and random truncation (whose states are not balanced directions):
        ``sum(HSVs of the reduced system) / sum(sigma)``. 1.0 if every sigma is zero.
    notes : tuple of str
        Anything the caller should know: no-op, capped rank, clamped or real eigenvalues,
        near-defective fallbacks.
    seconds : float
        Wall-clock time of the call.
    kept_states : tuple of int or None
        Indices of the original states that survive unchanged (modal and random truncation;
        sorted ascending, in the order they appear in the result). None for the balancing
        methods, whose states are new combinations.
    """

    method: str
    output: str
    n_states: int
    rank: int
    order: int
    hsv: torch.Tensor
    error_bound: float | None
    kept_energy: float
    notes: tuple[str, ...]
    seconds: float
    kept_states: tuple[int, ...] | None = field(default=None)

    def __repr__(self) -> str:
        bound = "None" if self.error_bound is None else f"{self.error_bound:.3e}"
        return (f"ReductionInfo(method={self.method!r}, output={self.output!r}, {self.n_states} -> "
                f"{self.rank} states (order {self.order}), error_bound={bound}, "
                f"kept_energy={self.kept_energy:.6f}, notes={self.notes!r}, seconds={self.seconds:.3g})")


# ------------------------------------------------------------------------------ argument checks
def _check_rank(rank) -> int:
    return check_positive_int("rank", rank)


def _check_max_cond(max_cond, sys) -> float:
    _check_system(sys)
    if max_cond is None:
        return _MAX_COND_BY_DTYPE[sys.dtype]
    if isinstance(max_cond, bool) or not isinstance(max_cond, (int, float)) or not max_cond >= 1.0:
        raise ValueError(f"max_cond must be a number >= 1 (float('inf') disables the check), got {max_cond!r}")
    return float(max_cond)


# --------------------------------------------------------------------------- back to LRU form
def _eigenvalue_notes(lam: np.ndarray, notes: list[str]) -> None:
    n_real = int(np.count_nonzero(lam.imag == 0))
    if n_real:
        notes.append(f"{n_real} reduced eigenvalue(s) are real (phase 0 or pi); an LRU stores log(phase)")
    n_zero = int(np.count_nonzero(lam == 0))
    if n_zero:
        notes.append(f"{n_zero} reduced eigenvalue(s) are exactly 0")


def _to_system(modal: Modal, D: torch.Tensor, like: DiagonalSystem | DenseSystem,
               notes: list[str], clamp: bool = True) -> DiagonalSystem:
    """A diagonal form as a DiagonalSystem of ``like``'s dtype and device (clamped unless already)."""
    lam = clamp_modulus(modal.lam, notes) if clamp else modal.lam
    _eigenvalue_notes(lam, notes)
    arrays = (lam, modal.B, modal.C)
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("the reduced system has non-finite entries (the reduction is numerically "
                         "ill-posed at this rank); try another rank or method")
    lam_t, B_t, C_t = (_from_numpy(a, like.dtype, like.device) for a in arrays)
    return DiagonalSystem(lam_t, B_t, C_t, D)


# ---------------------------------------------------------------------------- shared plumbing
def _target_order(rank: int, sr: SquareRoot, output: str, notes: list[str]) -> int:
    return capped_order(rank if output == "complex" else 2 * rank, sr, notes)


def _energy(hsv: np.ndarray, kept: np.ndarray) -> float:
    total = float(hsv.sum())
    return 1.0 if total == 0.0 else float(hsv[kept].sum()) / total


def _hsv_tensor(sr: SquareRoot) -> torch.Tensor:
    return torch.from_numpy(sr.hsv.copy())


def _noop(sys, sr: SquareRoot, method: str, output: str, t0: float, max_cond: float,
          dense_D: bool = False) -> tuple[DiagonalSystem, ReductionInfo]:
    """rank >= N: return the system unchanged (a DenseSystem is only diagonalised)."""
    N = sys.n_states
    notes = [f"rank >= n_states = {N}: nothing to reduce"]
    D = sys.D_matrix if dense_D else sys.D
    if isinstance(sys, DiagonalSystem):
        notes.append("system returned unchanged" + (" (D made dense)" if dense_D else ""))
        out = sys if not dense_D else DiagonalSystem(sys.lam, sys.B, sys.C, D)
    else:
        out = _diagonalize_dense(sys, D, max_cond, notes)
    order = N if output == "complex" else 2 * N
    info = ReductionInfo(method, output, N, N, order, _hsv_tensor(sr), 0.0, 1.0, tuple(notes),
                         time.perf_counter() - t0)
    return out, info


def _diagonalize_dense(sys: DenseSystem, D: torch.Tensor, max_cond: float, notes: list[str]) -> DiagonalSystem:
    A, B, C = (_to_numpy(t, True) for t in (sys.A, sys.B, sys.C))
    modal = modal_form(A, B, C, real=False)
    if modal.cond > max_cond:
        raise ValueError(f"the DenseSystem's A is near-defective (cond(W) = {modal.cond:.3g} > max_cond = "
                         f"{max_cond:.3g}) and cannot be diagonalised reliably; ask for a lower rank")
    notes.append("DenseSystem diagonalised (A = W diag(mu) W^-1)")
    return _to_system(modal, D, sys, notes)


class _StateOperator:
    """The working representation's state matrix as an operator: ``op @ X`` without forming A for
    the diagonal kinds; ``eigvals()`` the original eigenvalues (LRU form)."""

    def __init__(self, num: _Numeric, sys) -> None:
        self.num, self.sys = num, sys

    def __matmul__(self, X: np.ndarray) -> np.ndarray:
        return self.num.apply_A(X)

    def eigvals(self) -> np.ndarray:
        sys = self.sys
        return _to_numpy(sys.lam, True) if isinstance(sys, DiagonalSystem) else np.linalg.eigvals(_to_numpy(sys.A, True))


def _balanced_coordinates(num: _Numeric, sr: SquareRoot, idx: np.ndarray):
    """``(A_b, B_b, C_b)`` of the balanced coordinates ``idx`` (ordered): T^- A T, T^- B, C T."""
    T, Tm = sr.transforms(idx)  # idx holds nonzero sigma only
    return Tm @ num.apply_A(T), Tm @ num.B, num.C @ T


# ------------------------------------------------------------------------ balanced truncation
def _balanced_reduced_dense(sys, rank: int, output: str = "complex", selection: str = "largest") -> DenseSystem:
    """The balanced (not re-diagonalised) reduced realization of order ``rank`` (complex view) or
    ``order`` (real view), as a DenseSystem; for tests and inspection."""
    num = _numeric(sys, output, "balanced truncation")
    sr = _square_root(num)
    k = min(rank, sr.n_nonzero)
    idx = np.arange(k) if selection == "largest" else np.arange(sr.n_nonzero - k, sr.n_nonzero)
    A, B, C = _balanced_coordinates(num, sr, idx)
    return DenseSystem(torch.from_numpy(A), torch.from_numpy(B), torch.from_numpy(C),
                       torch.from_numpy(num.D))


@limited_blas
def balanced_truncation(sys: DiagonalSystem | DenseSystem, rank: int, output: str = "complex",
                        selection: str = "largest", *, max_cond: float | None = None,
                        order: int | None = None) -> tuple[DiagonalSystem, ReductionInfo]:
    """Balanced truncation to ``rank`` LRU states, re-diagonalised (square-root method).

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Stable (all |eigenvalues| < 1), N states.
    rank : int >= 1
        LRU states to keep. ``rank >= N`` is a no-op (noted); a rank above the number of
        nonzero HSVs is capped to it (noted).
    output : {"complex", "real"}
        Which system is balanced (conventions: :mod:`shrinkssm.lti`). ``"real"`` balances the
        real 2N form and maps the result back (module docstring).
    selection : {"largest", "smallest"}
        Keep the directions with the largest HSVs (balanced truncation) or, as an ablation, the
        smallest nonzero ones.
    max_cond : float or None, keyword-only
        Largest acceptable condition number of the reduced eigenvector matrix; above it the order
        is lowered (module docstring). None: 1e4 for complex64 systems, 1e8 for complex128 (the
        diagonal form then reproduces the balanced model to about 1e-3 / 1e-8 relative accuracy;
        trained LRU systems give cond(W) of 1 to 100). ``float('inf')`` disables the check.
    order : int or None, keyword-only
        ``output="real"`` only: the real order to start from (default ``2 * rank``); it is lowered
        only as far as the budget of ``rank`` LRU states and the guards demand. With ``rank =
        balanced_states(sys, order)`` the result keeps exactly ``order`` unless a guard acts.

    Returns
    -------
    reduced : DiagonalSystem
        ``rank`` (or fewer) states; same dtype, device and D as ``sys``.
    info : ReductionInfo
        ``error_bound = 2 * sum(discarded sigma)``, the H∞ bound for the real map ``u -> y``
        (for ``output="complex"`` it bounds the complex map, hence the real one).

    Raises
    ------
    ValueError
        Unstable or non-finite system, rank < 1, unknown option, a reduced A that stays
        near-defective (module docstring).

    Notes
    -----
    When the order has to be lowered (near-defective reduced A, or real eigenvalues in the
    ``"real"`` view), the last kept direction (smallest sigma of the selection) goes first.

    Examples
    --------
    >>> lam = torch.tensor([0.9, 0.5j, -0.2], dtype=torch.complex128)
    >>> sys = DiagonalSystem(lam, torch.ones(3, 1), torch.ones(1, 3), torch.zeros(1))
    >>> red, info = balanced_truncation(sys, 2)
    >>> red.n_states, info.error_bound <= 2 * float(info.hsv[2])
    (2, True)
    """
    t0 = time.perf_counter()
    rank = _check_rank(rank)
    check_choice("selection", selection, SELECTIONS)
    max_cond = _check_max_cond(max_cond, sys)
    num, sr = _balancing(sys, output, "balanced_truncation")
    if rank >= sys.n_states:
        return _noop(sys, sr, "balanced", output, t0, max_cond)
    if sr.n_nonzero == 0:
        notes: list[str] = []
        _target_order(rank, sr, output, notes)
        return _zero_system(sys, sr, "balanced", output, t0, notes, sys.D)
    if order is not None:
        order = check_positive_int("order", order)
        if output != "real":
            raise ValueError(f"order (a real order) applies to output='real', not {output!r}")
    start = rank if output == "complex" else (2 * rank if order is None else min(order, 2 * rank))
    tr = truncate(sr, _StateOperator(num, sys), num.B, num.C, start,
                  real=num.real, domain="discrete", max_states=rank, max_cond=max_cond, selection=selection)
    notes = list(tr.notes)
    order, kept = tr.order, tr.kept
    reduced = _to_system(Modal(tr.lam, tr.B, tr.C, 1.0), sys.D, sys, notes, clamp=False)
    discarded = np.ones(sr.hsv.size, dtype=bool)
    discarded[kept] = False
    info = ReductionInfo("balanced", output, sys.n_states, reduced.n_states, order, _hsv_tensor(sr),
                         2.0 * float(sr.hsv[discarded].sum()), _energy(sr.hsv, kept), tuple(notes),
                         time.perf_counter() - t0)
    return reduced, info


@limited_blas
def balanced_states(sys: DiagonalSystem | DenseSystem, order: int, output: str = "real",
                    selection: str = "largest") -> int:
    """LRU states the balanced truncation of ``sys`` to ``order`` balanced directions needs.

    In the ``"complex"`` view that is ``order`` itself. In the ``"real"`` view (``order`` a real
    order) it is the number of states of the diagonal form of the reduced real system: one per
    conjugate pair of its eigenvalues and one per real eigenvalue (``docs/design.md`` §4.3), so
    between ``ceil(order / 2)`` and ``order``. ``order`` is capped at the nonzero HSVs; a map with
    none needs one (silent) state. Uses the balancing cached for ``sys``.
    """
    order = check_positive_int("order", order)
    check_choice("output", output, OUTPUTS)
    check_choice("selection", selection, SELECTIONS)
    if output == "complex":
        return order
    num, sr = _balancing(sys, output, "balanced_states")
    k = min(order, sr.n_nonzero)
    if k == 0:
        return 1
    idx = np.arange(k) if selection == "largest" else np.arange(sr.n_nonzero - k, sr.n_nonzero)
    A_b, _, _ = _balanced_coordinates(num, sr, idx)
    mu = np.linalg.eig(A_b)[0]           # as modal_form: exact pairs and exactly real values
    return int(np.count_nonzero(mu.imag >= 0))


def _zero_system(sys, sr, method, output, t0, notes, D) -> tuple[DiagonalSystem, ReductionInfo]:
    """Every sigma is zero: the map is ``D`` alone. One silent state keeps the layer well-formed."""
    slowest = silent_state(_StateOperator(None, sys).eigvals(), "discrete", upper=False)
    notes.append("every Hankel singular value is zero (the map is D alone): returned one state with "
                 "B = 0 and C = 0 at the slowest original eigenvalue")
    out = DiagonalSystem(_from_numpy(np.array([slowest]), sys.dtype, sys.device),
                         torch.zeros(1, sys.n_inputs, dtype=sys.dtype, device=sys.device),
                         torch.zeros(sys.n_outputs, 1, dtype=sys.dtype, device=sys.device), D)
    order = 1 if output == "complex" or slowest.imag == 0 else 2  # a pair in the real view
    info = ReductionInfo(method, output, sys.n_states, 1, order, _hsv_tensor(sr),
                         0.0, 1.0, tuple(notes), time.perf_counter() - t0)
    return out, info


# -------------------------------------------------------------- balanced singular perturbation
@limited_blas
def balanced_singular_perturbation(sys: DiagonalSystem | DenseSystem, rank: int, output: str = "complex",
                                   *, max_cond: float | None = None
                                   ) -> tuple[DiagonalSystem, ReductionInfo]:
    """Balanced singular perturbation approximation: matches the DC gain exactly (``docs/design.md`` §4.5).

    In balanced coordinates split into kept (1) and discarded (2) directions::

        X  = (I - A22)^-1 [A21, B2]
        A_r = A11 + A12 X_A     B_r = B1 + A12 X_B     C_r = C1 + C2 X_A
        D_r = D + Re(C2 X_B)                           (a dense (H_out, H_in) real matrix)

    then re-diagonalised like :func:`balanced_truncation`. The DC gain
    ``G(1) = Re(C (I - A)^-1 B) + D`` of the real map is reproduced exactly.

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Stable, N states.
    rank : int >= 1
        LRU states to keep; ``rank >= N`` returns the system unchanged except that D is made dense.
    output : {"complex", "real"}
        As in :func:`balanced_truncation`.
    max_cond : float or None, keyword-only
        As in :func:`balanced_truncation`.

    Returns
    -------
    reduced : DiagonalSystem
        With a **dense** ``D: (H_out, H_in)`` real (always, also for a no-op).
    info : ReductionInfo
        ``error_bound = 2 * sum(discarded sigma) + 2 * ||C2 X_B||_2``. The classical bound
        ``2 * sum(discarded sigma)`` belongs to the delayed system of the Gramians; in this
        package's convention ``y[k] = Re(C x[k])`` the direct term ``C2 X_B`` enters as
        ``(z - 1) C2 X_B``, hence the second term.

    Raises
    ------
    ValueError
        As :func:`balanced_truncation`; also when ``I - A22`` is numerically singular.
    """
    t0 = time.perf_counter()
    rank = _check_rank(rank)
    max_cond = _check_max_cond(max_cond, sys)
    num, sr = _balancing(sys, output, "balanced_singular_perturbation")
    if rank >= sys.n_states:
        return _noop(sys, sr, "singular_perturbation", output, t0, max_cond, dense_D=True)
    notes: list[str] = []
    order_max = _target_order(rank, sr, output, notes)
    if order_max == 0:
        return _zero_system(sys, sr, "singular_perturbation", output, t0, notes, sys.D_matrix)
    nz = sr.n_nonzero
    A_b, B_b, C_b = _balanced_coordinates(num, sr, np.arange(nz))
    eye = np.eye(nz, dtype=A_b.dtype)

    def build(k: int):
        if k == nz:
            return A_b, B_b, C_b, np.zeros((C_b.shape[0], B_b.shape[1]), dtype=C_b.dtype)
        I_A22 = eye[k:, k:] - A_b[k:, k:]
        if np.linalg.cond(I_A22) > 1.0 / np.finfo(np.float64).eps:
            raise ValueError("singular perturbation is undefined here: I - A22 of the discarded balanced "
                             "part is numerically singular (an eigenvalue at 1); use balanced truncation")
        X = np.linalg.solve(I_A22, np.concatenate([A_b[k:, :k], B_b[k:]], axis=1))
        X_A, X_B = X[:, :k], X[:, k:]
        A12, C2 = A_b[:k, k:], C_b[:, k:]
        return A_b[:k, :k] + A12 @ X_A, B_b[:k] + A12 @ X_B, C_b[:, :k] + C2 @ X_A, C2 @ X_B

    order, modal, D_extra = search_order(build, order_max, rank, num.real, max_cond, notes)
    D_r = _from_numpy(_D_numpy(sys) + D_extra.real, sys.D.dtype, sys.device)
    reduced = _to_system(modal, D_r, sys, notes)
    kept = np.arange(order)
    bound = 2.0 * float(sr.hsv[order:].sum()) + 2.0 * float(np.linalg.norm(D_extra, 2))
    info = ReductionInfo("singular_perturbation", output, sys.n_states, reduced.n_states, order,
                         _hsv_tensor(sr), bound, _energy(sr.hsv, kept), tuple(notes), time.perf_counter() - t0)
    return reduced, info


# ------------------------------------------------------------------ modal and random truncation
def _modes(sys, max_cond: float, notes: list[str]) -> DiagonalSystem:
    if isinstance(sys, DiagonalSystem):
        return sys
    return _diagonalize_dense(sys, sys.D, max_cond, notes)


def _truncate_modes(sys, modes: DiagonalSystem, keep: torch.Tensor, method: str, output: str,
                    num: _Numeric, sr: SquareRoot, t0: float, notes: list[str]) -> tuple[DiagonalSystem, ReductionInfo]:
    keep = torch.sort(keep).values
    reduced = DiagonalSystem(modes.lam[keep], modes.B[keep], modes.C[:, keep], modes.D)
    dropped = torch.ones(modes.n_states, dtype=torch.bool)
    dropped[keep.cpu()] = False
    per_mode = _mode_hinf(modes)
    notes.append(f"triangle-inequality H-inf bound of the discarded modes: {float(per_mode[dropped].sum()):.6g}")
    red_sr = _square_root(_numeric(reduced, output, method))
    total = float(sr.hsv.sum())
    energy = 1.0 if total == 0.0 else float(red_sr.hsv.sum()) / total
    order = reduced.n_states if output == "complex" else 2 * reduced.n_states
    info = ReductionInfo(method, output, sys.n_states, reduced.n_states, order, _hsv_tensor(sr), None,
                         energy, tuple(notes), time.perf_counter() - t0,
                         kept_states=tuple(int(i) for i in keep.tolist()))
    return reduced, info


def _mode_hinf(sys: DiagonalSystem) -> torch.Tensor:
    """Per-mode H∞ norm ``||C[:, j]|| ||B[j, :]|| / (1 - |lam_j|)``, (N,) float64 on the CPU."""
    lam, B, C = (_to_numpy(t, True) for t in (sys.lam, sys.B, sys.C))
    return torch.from_numpy(np.linalg.norm(C, axis=0) * np.linalg.norm(B, axis=1) / (1.0 - np.abs(lam)))


@limited_blas
def modal_truncation(sys: DiagonalSystem | DenseSystem, rank: int, score: str = "magnitude",
                     selection: str = "largest", output: str = "complex", *,
                     max_cond: float | None = None) -> tuple[DiagonalSystem, ReductionInfo]:
    """Keep ``rank`` whole modes, ranked by a score.

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Stable; a DenseSystem is diagonalised first (``ValueError`` if near-defective).
    rank : int >= 1
    score : {"magnitude", "hinf"}
        ``|lam_j|`` or the per-mode H∞ norm ``||C[:, j]|| ||B[j, :]|| / (1 - |lam_j|)``.
    selection : {"largest", "smallest"}
        Keep the highest or (ablation) the lowest scores. Ties keep the lower index.
    output : {"complex", "real"}
        Only decides which HSVs ``info`` reports.
    max_cond : float or None, keyword-only
        For diagonalising a DenseSystem.

    Returns
    -------
    reduced : DiagonalSystem
        The kept modes, unchanged, in their original order; D unchanged.
    info : ReductionInfo
        ``error_bound = None``; ``kept_states`` lists the kept indices; a note gives the sum of the
        discarded per-mode H∞ norms, a valid (loose) bound on the error.
    """
    t0 = time.perf_counter()
    rank = _check_rank(rank)
    check_choice("score", score, SCORES)
    check_choice("selection", selection, SELECTIONS)
    max_cond = _check_max_cond(max_cond, sys)
    num, sr = _balancing(sys, output, "modal_truncation")
    if rank >= sys.n_states:
        return _noop(sys, sr, "modal", output, t0, max_cond)
    notes: list[str] = []
    modes = _modes(sys, max_cond, notes)
    values = torch.from_numpy(np.abs(_to_numpy(modes.lam, True))) if score == "magnitude" else _mode_hinf(modes)
    # stable sort: among equal scores the lower index wins in both directions
    order = torch.sort(-values if selection == "largest" else values, stable=True).indices
    return _truncate_modes(sys, modes, order[:rank].to(modes.device), "modal", output, num, sr, t0, notes)


@limited_blas
def random_truncation(sys: DiagonalSystem | DenseSystem, rank: int, generator: torch.Generator | None = None,
                      output: str = "complex", *, max_cond: float | None = None
                      ) -> tuple[DiagonalSystem, ReductionInfo]:
    """Keep ``rank`` modes chosen uniformly at random (ablation).

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Stable; a DenseSystem is diagonalised first.
    rank : int >= 1
    generator : torch.Generator on the CPU, optional
        Source of randomness (``torch.randperm``); None uses torch's global generator.
    output : {"complex", "real"}
        Only decides which HSVs ``info`` reports.
    max_cond : float or None, keyword-only
        For diagonalising a DenseSystem.

    Returns
    -------
    As :func:`modal_truncation`.
    """
    t0 = time.perf_counter()
    rank = _check_rank(rank)
    max_cond = _check_max_cond(max_cond, sys)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    num, sr = _balancing(sys, output, "random_truncation")
    if rank >= sys.n_states:
        return _noop(sys, sr, "random", output, t0, max_cond)
    notes: list[str] = []
    modes = _modes(sys, max_cond, notes)
    keep = torch.randperm(modes.n_states, generator=generator)[:rank]
    return _truncate_modes(sys, modes, keep.to(modes.device), "random", output, num, sr, t0, notes)


# --------------------------------------------------------------------------------- dispatcher
_METHODS = {
    "balanced": balanced_truncation,
    "singular_perturbation": balanced_singular_perturbation,
    "modal": modal_truncation,
    "random": random_truncation,
}
METHODS = tuple(_METHODS)
"""The reduction methods of :func:`reduce_system`, by name (the one list the layers, the
compressor and the config schema take theirs from)."""


@limited_blas
def reduce_system(sys: DiagonalSystem | DenseSystem, rank: int, method: str = "balanced",
                  **kwargs) -> tuple[DiagonalSystem, ReductionInfo]:
    """Reduce ``sys`` to ``rank`` LRU states with the named method (what layers call).

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
    rank : int >= 1
    method : {"balanced", "singular_perturbation", "modal", "random"}
    **kwargs
        Passed to :func:`balanced_truncation`, :func:`balanced_singular_perturbation`,
        :func:`modal_truncation` or :func:`random_truncation`; a keyword the method does not take
        raises ``ValueError`` listing the ones it does.

    Returns
    -------
    (DiagonalSystem, ReductionInfo)
    """
    check_choice("method", method, METHODS)
    fn = _METHODS[method]
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("sys", "rank")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise ValueError(f"method {method!r} does not take {unknown}; it takes {allowed}")
    return fn(sys, rank, **kwargs)


balred = balanced_truncation
