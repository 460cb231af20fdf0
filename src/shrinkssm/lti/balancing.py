"""Square-root balanced truncation on arrays: the one implementation both layer kinds call.

``docs/design.md`` §4 states the mathematics. Everything here works on NumPy arrays in complex128
/ float64 (real systems stay real), batched over leading dimensions where the shapes agree:

1. Gramians from the input and output energies ``Sb`` (``B B^H``) and ``Sc`` (``C^H C``):
   ``P = A P A^H + Sb``, ``Q = A^H Q A + Sc`` (:func:`stein_gramians`; closed form for a
   diagonal ``A``, the eigenbasis of ``A`` otherwise, SciPy's solver when that basis is
   ill-conditioned);
2. ``P = Lc Lc^H``, ``Q = Lo Lo^H`` by Cholesky with complete pivoting (:func:`psd_factor`), and
   ``Lo^H Lc = U diag(sigma) V^H`` (:func:`square_root`);
3. ``T = Lc V_r sigma_r^(-1/2)``, ``T^- = sigma_r^(-1/2) U_r^H Lo^H`` (``T^- T = I``,
   :meth:`SquareRoot.transforms`), applied to a state matrix ``F`` and maps ``B``, ``C``:
   ``F_r = T^- F T``, ``B_r = T^- B``, ``C_r = C T``;
4. back to diagonal form ``F_r = W diag(mu) W^-1``, ``B' = W^-1 B_r``, ``C' = C_r W``
   (:func:`modal_form`; in a real system a conjugate pair becomes one state, its ``C`` doubled).

``F`` is the matrix the transforms are applied to: the state matrix ``A`` itself for the LRU, the
continuous-time generator of a selective channel (whose mean discretisation is ``A``).

Guards (:func:`truncate`, the same for every caller):

* **sigma = 0**: values at or below ``n eps sigma_1`` are never kept; a larger order is capped
  at their count, with a note. If every sigma is zero the result is one silent state (zero maps)
  at the slowest eigenvalue of ``F`` (:func:`silent_state`).
* **ill-conditioned eigenvectors**: ``cond_2(W) > max_cond`` (unit-norm columns) lowers the
  order by one and repeats (the SVD is reused), with a note; after :data:`MAX_COND_DROPS` drops
  a ``ValueError``.
* **stability clamp**: discrete time, ``|mu| > 1 - MODULUS_MARGIN`` moved radially to
  ``1 - MODULUS_MARGIN``; continuous time, ``Re(mu) > -REAL_PART_MARGIN`` moved to
  ``-REAL_PART_MARGIN``; with a note.
* a state budget (``max_states``): in a real system a real eigenvalue costs a whole diagonal
  state, so the order is lowered until the diagonal form has at most that many states.
* anything non-finite at the end raises ``ValueError``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.linalg import lapack

from shrinkssm._checks import check_choice

from ._blas import limited_blas

__all__ = [
    "MODULUS_MARGIN",
    "REAL_PART_MARGIN",
    "MAX_COND_DROPS",
    "SELECTIONS",
    "SquareRoot",
    "Modal",
    "Truncation",
    "stein_gramians",
    "psd_factor",
    "square_root",
    "balance_batch",
    "balance_gramians",
    "modal_form",
    "truncate",
    "balanced_truncation_batch",
    "coordinate_energy",
    "silent_state",
]

MODULUS_MARGIN = 1e-7  # discrete time: reduced eigenvalues are kept at |mu| <= 1 - MODULUS_MARGIN
REAL_PART_MARGIN = 1e-4  # continuous time: reduced eigenvalues are kept at Re(mu) <= -REAL_PART_MARGIN
MAX_COND_DROPS = 8  # ill-conditioned eigenvectors: how many times the order may be lowered
_EIGENBASIS_MAX_COND = 1e3  # stein_gramians: above this cond(V) the Gramians go through SciPy
_DOMAINS = ("discrete", "continuous")
SELECTIONS = ("largest", "smallest")
"""Which balanced directions a truncation keeps: the leading ones, or (ablation) the trailing nonzero ones."""


# ------------------------------------------------------------------------------------ Gramians
def _diagonal(A: np.ndarray) -> np.ndarray | None:
    """The diagonals (..., n) of a batch of matrices if every one is diagonal, else None."""
    d = np.diagonal(A, axis1=-2, axis2=-1)
    off = A - d[..., :, None] * np.eye(A.shape[-1], dtype=A.dtype)
    return d if not np.any(off) else None


def diagonal_gramians(a: np.ndarray, Sb: np.ndarray, Sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Closed form for ``A = diag(a)``: ``P_ij = Sb_ij / (1 - a_i conj(a_j))``,
    ``Q_ij = Sc_ij / (1 - conj(a_i) a_j)`` (the conjugate on the other side in Q); a: (..., n)."""
    P = Sb / (1.0 - a[..., :, None] * a.conj()[..., None, :])
    Q = Sc / (1.0 - a.conj()[..., :, None] * a[..., None, :])
    return P, Q


def _hermitian(X: np.ndarray) -> np.ndarray:
    return 0.5 * (X + np.swapaxes(X, -1, -2).conj())


def stein_gramians(A: np.ndarray, Sb: np.ndarray, Sc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve ``P = A P A^H + Sb`` and ``Q = A^H Q A + Sc`` for a batch of stable ``A``.

    Parameters
    ----------
    A : (..., n, n) real or complex
        Stable (spectral radius < 1; not checked here).
    Sb, Sc : (..., n, n) Hermitian positive semi-definite
        Input energy (``B B^H`` or its expectation) and output energy (``C^H C``).

    Returns
    -------
    P, Q : (..., n, n), Hermitian parts; real when A, Sb and Sc are real.

    Notes
    -----
    A diagonal batch uses :func:`diagonal_gramians`. Otherwise ``A = V diag(l) V^-1`` and
    ``P = V (V^-1 Sb V^-H / (1 - l_i conj(l_j))) V^H``,
    ``Q = V^-H (V^H Sc V / (1 - conj(l_i) l_j)) V^-1`` (rounding grows like ``cond(V)^2 eps``; the
    block-diagonal surrogates of a selective layer have ``cond(V) = 1``); a system whose ``cond(V)``
    exceeds 1e3 goes through ``scipy.linalg.solve_discrete_lyapunov`` instead.
    """
    real = not (np.iscomplexobj(A) or np.iscomplexobj(Sb) or np.iscomplexobj(Sc))
    d = _diagonal(A)
    if d is not None:
        P, Q = diagonal_gramians(d, Sb, Sc)
        return _hermitian(P), _hermitian(Q)
    lam, V = np.linalg.eig(A)
    Vi = np.linalg.inv(V)
    VH, ViH = np.swapaxes(V, -1, -2).conj(), np.swapaxes(Vi, -1, -2).conj()
    P, Q = diagonal_gramians(lam, Vi @ Sb @ ViH, VH @ Sc @ V)
    P, Q = V @ P @ VH, ViH @ Q @ Vi
    if real:
        P, Q = P.real, Q.real
    cond = np.linalg.cond(V).reshape(-1)
    if np.any(~(cond <= _EIGENBASIS_MAX_COND)):
        shape = A.shape
        Af, Sbf, Scf = (x.reshape(-1, shape[-1], shape[-1]) for x in (A, Sb, Sc))
        P, Q = P.reshape(Af.shape).copy(), Q.reshape(Af.shape).copy()
        for i in np.flatnonzero(~(cond <= _EIGENBASIS_MAX_COND)):
            P[i] = scipy.linalg.solve_discrete_lyapunov(Af[i], Sbf[i])
            Q[i] = scipy.linalg.solve_discrete_lyapunov(np.swapaxes(Af[i], -1, -2).conj(), Scf[i])
        P, Q = P.reshape(shape), Q.reshape(shape)
    return _hermitian(P), _hermitian(Q)


# ------------------------------------------------------------------------ square-root factors
def psd_factor(X: np.ndarray) -> np.ndarray:
    """``L`` of shape (n, k) with ``X ~= L L^H``, k the numerical rank of the PSD matrix X.

    Cholesky with complete pivoting (LAPACK ``?pstrf``, default tolerance
    ``n * eps * max(diag X)``): it stops at the numerical rank, so a semidefinite or
    rank-deficient Gramian needs neither clipping nor jitter.
    """
    n = X.shape[0]
    if n == 0 or not np.any(np.diag(X).real > 0):
        return np.zeros((n, 0), dtype=X.dtype)
    pstrf = lapack.zpstrf if np.iscomplexobj(X) else lapack.dpstrf
    c, piv, rank, info = pstrf(X, lower=1)
    if info < 0:  # pragma: no cover - an argument error inside LAPACK would be a bug here
        raise RuntimeError(f"?pstrf failed with info={info}")
    L = np.tril(c)[:, :rank]
    out = np.empty_like(L)
    out[piv - 1] = L  # undo the pivoting: X = Pi L L^H Pi^T
    return out


def nonzero_count(s: np.ndarray, n: int) -> int:
    """HSVs at or below ``n * eps * sigma_1`` are treated as exact zeros (no direction to keep)."""
    if s.size == 0 or s[0] <= 0:
        return 0
    return int(np.count_nonzero(s > n * np.finfo(np.float64).eps * s[0]))


@dataclass
class SquareRoot:
    """Square-root balancing data of one system: factors, ``Lo^H Lc = U diag(s) Vh``, all n HSVs."""

    Lc: np.ndarray  # (n, k_c)
    Lo: np.ndarray  # (n, k_o)
    U: np.ndarray  # (k_o, m)
    s: np.ndarray  # (m,) descending, m = min(k_o, k_c)
    Vh: np.ndarray  # (m, k_c)
    hsv: np.ndarray  # (n,) float64 descending (s padded with zeros, values below the threshold zeroed)
    n_nonzero: int  # number of sigma treated as nonzero (see nonzero_count)

    def transforms(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``T`` (n, k) and ``T^-`` (k, n) of the balanced directions ``idx`` (nonzero sigma only;
        ``T^- T = I``)."""
        scale = 1.0 / np.sqrt(self.s[idx])
        T = (self.Lc @ self.Vh[idx].conj().T) * scale[None, :]
        Tm = scale[:, None] * (self.U[:, idx].conj().T @ self.Lo.conj().T)
        return T, Tm


def square_root(P: np.ndarray, Q: np.ndarray) -> SquareRoot | list[SquareRoot]:
    """Balancing data of ``(P, Q)``: (n, n) -> one :class:`SquareRoot`; (..., n, n) -> a list, one
    per system in C order (the factorisations run per system: their ranks differ)."""
    if P.ndim > 2:
        n = P.shape[-1]
        return [square_root(p, q) for p, q in zip(P.reshape(-1, n, n), Q.reshape(-1, n, n))]
    Lc, Lo = psd_factor(P), psd_factor(Q)
    M = Lo.conj().T @ Lc  # (k_o, k_c)
    if min(M.shape) == 0:
        U = np.zeros((M.shape[0], 0), dtype=M.dtype)
        s = np.zeros(0)
        Vh = np.zeros((0, M.shape[1]), dtype=M.dtype)
    else:
        U, s, Vh = scipy.linalg.svd(M, full_matrices=False, overwrite_a=True, check_finite=False)
    n = P.shape[0]
    k = nonzero_count(s, n)
    hsv = np.zeros(n)
    hsv[:k] = s[:k]  # the rest cannot be told from zero: reported as 0
    return SquareRoot(Lc, Lo, U, s, Vh, hsv, k)


@limited_blas
def balance_batch(A: np.ndarray, Sb: np.ndarray, Sc: np.ndarray) -> list[SquareRoot]:
    """Steps 1-2 for a batch: :func:`square_root` of :func:`stein_gramians` of ``(S, n, n)`` arrays,
    one :class:`SquareRoot` per system."""
    return square_root(*stein_gramians(np.asarray(A), np.asarray(Sb), np.asarray(Sc)))


@limited_blas
def balance_gramians(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[SquareRoot]:
    """Step 2 for Gramians given directly (e.g. estimated from data): :func:`square_root` of each
    ``(P, Q)`` pair, (n_i, n_i) each (sizes may differ), one :class:`SquareRoot` per pair."""
    return [square_root(np.asarray(P), np.asarray(Q)) for P, Q in pairs]


@limited_blas
def coordinate_energy(sr: SquareRoot) -> np.ndarray:
    """Hankel energy attributed to each state coordinate: ``e[i] = sum_k sigma_k |T[i, k] T^-[k, i]|``
    over the nonzero sigma (full balancing transforms); (n,) float64, zero for a coordinate the input
    cannot reach or the output cannot see, the coordinate's own HSV when coordinates are decoupled."""
    k = sr.n_nonzero
    if k == 0:
        return np.zeros(sr.hsv.shape[0])
    T, Tm = sr.transforms(np.arange(k))
    return np.abs(T * Tm.T) @ sr.hsv[:k]


# ------------------------------------------------------------------------- back to diagonal form
@dataclass
class Modal:
    """A diagonal form: ``lam (r,)`` complex, ``B (r, m)``, ``C (p, r)``, ``cond`` of W."""

    lam: np.ndarray
    B: np.ndarray
    C: np.ndarray
    cond: float


def modal_form(A: np.ndarray, B: np.ndarray, C: np.ndarray, real: bool) -> Modal:
    """Diagonalise ``(A, B, C)``: ``A = W diag(mu) W^-1``, ``B' = W^-1 B``, ``C' = C W``.

    For a real realization (``real=True``, output ``C x`` real) each conjugate pair of eigenvalues
    becomes one state (the one with positive imaginary part, C doubled) and each real eigenvalue
    one state with real B and C rows, so that ``Re(C' z)`` is the original output.
    ``cond`` is the 2-norm condition number of W (unit-norm columns); inf when W is singular.
    """
    mu, W = np.linalg.eig(A)
    if real:
        # LAPACK ?geev on a real matrix returns exact conjugate pairs (and exactly real eigenvalues).
        is_real = mu.imag == 0
        keep = is_real | (mu.imag > 0)
    else:
        is_real = np.zeros(mu.shape, dtype=bool)
        keep = np.ones(mu.shape, dtype=bool)
    cond = float(np.linalg.cond(W)) if A.shape[0] > 1 else 1.0
    if not np.isfinite(cond):  # singular W: only the eigenvalue count is meaningful
        return Modal(mu[keep], B[:0], C[:, :0], np.inf)
    Bm = np.linalg.solve(W, B)  # (r, m)
    Cm = C @ W  # (p, r)
    if not real:
        return Modal(mu, Bm, Cm, cond)
    lam = mu[keep]
    Bk = Bm[keep]
    Ck = Cm[:, keep] * np.where(is_real[keep], 1.0, 2.0)[None, :]
    real_k = is_real[keep]
    Bk[real_k] = Bk[real_k].real  # exact in theory; drop rounding residue
    Ck[:, real_k] = Ck[:, real_k].real
    return Modal(lam, Bk, Ck, cond)


def clamp_modulus(lam: np.ndarray, notes: list[str]) -> np.ndarray:
    """Discrete time: eigenvalues with ``|mu| > 1 - MODULUS_MARGIN`` moved radially onto it."""
    limit = 1.0 - MODULUS_MARGIN
    mod = np.abs(lam)
    over = mod > limit
    if over.any():
        lam = lam.copy()
        lam[over] = lam[over] / mod[over] * limit
        notes.append(f"{int(over.sum())} reduced eigenvalue(s) with |mu| >= 1 - {MODULUS_MARGIN:g} "
                     f"(max {mod.max():.12g}) moved radially to |mu| = 1 - {MODULUS_MARGIN:g}")
    return lam


def clamp_real_part(lam: np.ndarray, notes: list[str]) -> np.ndarray:
    """Continuous time: eigenvalues with ``Re(mu) > -REAL_PART_MARGIN`` moved to ``-REAL_PART_MARGIN``."""
    over = lam.real > -REAL_PART_MARGIN
    if over.any():
        top = float(lam.real.max())
        lam = lam.astype(np.complex128)  # a copy (eig returns a real array when every eigenvalue is)
        lam[over] = -REAL_PART_MARGIN + 1j * lam[over].imag
        notes.append(f"{int(over.sum())} reduced eigenvalue(s) with real part > -{REAL_PART_MARGIN:g} "
                     f"(max {top:.3g}) moved to the floor Re = -{REAL_PART_MARGIN:g}")
    return lam


def _clamp(lam: np.ndarray, domain: str, notes: list[str]) -> np.ndarray:
    return clamp_modulus(lam, notes) if domain == "discrete" else clamp_real_part(lam, notes)


def silent_state(eigvals: np.ndarray, domain: str, upper: bool) -> complex:
    """The slowest of ``eigvals`` (discrete: largest modulus; continuous: largest real part), where a
    map with no nonzero HSV keeps one state with zero maps; ``upper``: the member with ``Im >= 0``."""
    eigvals = np.asarray(eigvals, dtype=np.complex128)
    key = np.abs(eigvals) if domain == "discrete" else eigvals.real
    lam = complex(eigvals[int(np.argmax(key))])
    return complex(lam.real, abs(lam.imag)) if upper else lam


# --------------------------------------------------------------------------- order search loop
BuildFn = Callable[[int], tuple[np.ndarray, np.ndarray, np.ndarray, "np.ndarray | None"]]


def search_order(build: BuildFn, order_max: int, max_states: int | None, real: bool, max_cond: float,
                 notes: list[str]) -> tuple[int, Modal, np.ndarray | None]:
    """Largest order <= order_max whose diagonal form has <= max_states states (None: no budget)
    and cond(W) <= max_cond; ``build(order)`` returns the reduced ``(F, B, C, extra)`` of that order.

    Raises ``ValueError`` after :data:`MAX_COND_DROPS` drops for ill-conditioned eigenvectors.
    """
    order, drops = order_max, 0
    while order >= 1:
        F, B, C, extra = build(order)
        modal = modal_form(F, B, C, real)
        n_states = modal.lam.shape[0]
        if max_states is not None and n_states > max_states:  # real eigenvalues cost a whole state each
            order -= max(1, n_states - max_states)
            continue
        if modal.cond > max_cond:
            drops += 1
            notes.append(f"reduced A of order {order} is near-defective (cond(W) = {modal.cond:.3g} > "
                         f"max_cond = {max_cond:.3g}); order lowered by one")
            if drops >= MAX_COND_DROPS:
                raise ValueError(
                    f"the reduced state matrix stayed near-defective (cond(W) > {max_cond:.3g}) after "
                    f"{drops} order reductions from order {order_max}; the diagonal form would be "
                    "numerically meaningless. Try another rank, output or method, or raise max_cond")
            order -= 1
            continue
        return order, modal, extra
    raise AssertionError("unreachable: order 1 always has one state and cond(W) = 1")  # pragma: no cover


def capped_order(want: int, sr: SquareRoot, notes: list[str]) -> int:
    """``want`` capped at the number of nonzero HSVs (directions with sigma = 0 are never kept)."""
    if sr.n_nonzero < want:
        notes.append(f"only {sr.n_nonzero} nonzero Hankel singular value(s) (of {sr.hsv.size}); "
                     f"order capped at {sr.n_nonzero} (directions with sigma = 0 are never kept)")
        return sr.n_nonzero
    return want


# ------------------------------------------------------------------------- balanced truncation
@dataclass
class Truncation:
    """One reduced system in diagonal form.

    ``lam (r,)`` complex eigenvalues of ``T^- F T`` (clamped), ``B (r, m)`` = ``W^-1 T^- B``,
    ``C (p, r)`` = ``C T W`` (complex128; for a real system one state per conjugate pair, C
    doubled, real rows for real eigenvalues), ``order`` the balanced order kept (0: every sigma was
    zero and ``lam`` is one silent state with zero maps), ``kept`` the balanced directions kept,
    ``notes`` what the guards did.
    """

    lam: np.ndarray
    B: np.ndarray
    C: np.ndarray
    order: int
    kept: np.ndarray
    notes: tuple[str, ...]


def _check_finite(*arrays: np.ndarray) -> None:
    if not all(np.isfinite(a).all() for a in arrays):
        raise ValueError("the reduced system has non-finite entries (the reduction is numerically "
                         "ill-posed at this rank); try another rank or method")


@limited_blas
def truncate(sr: SquareRoot, F, B: np.ndarray, C: np.ndarray, order: int, *, real: bool,
             fold_pairs: bool = True, domain: str = "discrete", max_states: int | None = None,
             max_cond: float = 1e8, selection: str = "largest",
             eigvals: np.ndarray | None = None) -> Truncation:
    """Balanced truncation of one system to ``order`` balanced directions, in diagonal form.

    Parameters
    ----------
    sr : SquareRoot
        The balancing of the system (:func:`square_root` of its Gramians).
    F : (n, n) array, or an object with ``F @ X`` for X (n, k)
        The matrix the transforms are applied to: ``T^- F T`` (the state matrix, or a
        continuous-time generator).
    B : (n, m), C : (p, n)
        Input and output maps.
    order : int >= 1
        Balanced directions wanted; capped at the nonzero HSVs, lowered by the guards.
    real : bool
        The system is real (``F``, ``B``, ``C`` real): its eigenvalues come in exact conjugate
        pairs, and the silent state of a zero map is the member with ``Im >= 0``.
    fold_pairs : bool
        For a real system, fold each conjugate pair into one state (:func:`modal_form`); False
        returns both members (``B' = W^-1 T^- B``, ``C' = C T W`` exactly, ``B' F C' = diag(lam)``
        when ``B``, ``C`` are identities).
    domain : {"discrete", "continuous"}
        Which stability clamp applies to the eigenvalues of ``T^- F T``.
    max_states : int, optional
        Budget of diagonal states (a pair counts one); None: the order alone decides.
    max_cond : float
        Largest accepted ``cond(W)``.
    selection : {"largest", "smallest"}
        Keep the leading balanced directions, or (ablation) the trailing nonzero ones.
    eigvals : (n,) complex, optional
        Eigenvalues of ``F`` (for the silent state when every sigma is zero); default
        ``eig(F)`` of a dense ``F``.

    Raises
    ------
    ValueError
        Ill-conditioned eigenvectors after :data:`MAX_COND_DROPS` drops; non-finite results.
    """
    check_choice("domain", domain, _DOMAINS)
    check_choice("selection", selection, SELECTIONS)
    notes: list[str] = []
    order = capped_order(order, sr, notes)
    if order == 0:
        lam = silent_state(np.linalg.eigvals(F) if eigvals is None else eigvals, domain, upper=real)
        lam = _clamp(np.array([lam]), domain, notes)
        notes.append("every Hankel singular value is zero (the map is D alone): one state with "
                     "zero maps at the slowest eigenvalue")
        return Truncation(lam, np.zeros((1, B.shape[1]), complex), np.zeros((C.shape[0], 1), complex), 0,
                          np.arange(0), tuple(notes))
    nz = sr.n_nonzero
    idx = np.arange(order) if selection == "largest" else np.arange(nz - order, nz)
    T, Tm = sr.transforms(idx)
    F_b, B_b, C_b = Tm @ (F @ T), Tm @ B, C @ T

    def build(k: int):
        return F_b[:k, :k], B_b[:k], C_b[:, :k], None

    order, modal, _ = search_order(build, order, max_states, real and fold_pairs, max_cond, notes)
    lam = _clamp(modal.lam, domain, notes)
    _check_finite(lam, modal.B, modal.C)
    return Truncation(np.asarray(lam, complex), np.asarray(modal.B, complex), np.asarray(modal.C, complex),
                      order, idx[:order], tuple(notes))


@limited_blas
def balanced_truncation_batch(A: np.ndarray, Sb: np.ndarray, Sc: np.ndarray, orders: Sequence[int], *,
                              F: np.ndarray | None = None, B: np.ndarray | None = None,
                              C: np.ndarray | None = None, balancing: Sequence[SquareRoot] | None = None,
                              fold_pairs: bool = True, domain: str = "discrete",
                              max_states: Sequence[int | None] | None = None, max_cond: float = 1e8,
                              selection: str = "largest") -> list[Truncation]:
    """Square-root balanced truncation of a batch of systems of equal size n (real or complex).

    Parameters
    ----------
    A : (S, n, n)
        State matrices (stable), from which the Gramians are computed (:func:`stein_gramians`).
    Sb, Sc : (S, n, n)
        Input and output energies (``B B^H``, ``C^H C`` or their expectations).
    orders : S ints >= 1
        Balanced order wanted per system.
    F : (S, n, n), optional
        The matrices the transforms are applied to (default ``A``).
    B : (S, n, m), C : (S, p, n), optional
        Maps carried through the transforms (default the identity: the result's ``B`` and ``C``
        are then ``W^-1 T^-`` and ``T W``).
    balancing : S SquareRoot, optional
        Precomputed :func:`square_root` data of these systems (skips steps 1-2).
    fold_pairs, domain, max_cond, selection
        As in :func:`truncate` (the batch is real when every array is); ``max_states`` one budget
        per system (or None).

    Returns
    -------
    list of S :class:`Truncation`
        Identical to calling :func:`truncate` system by system.
    """
    A = np.asarray(A)
    S, n = A.shape[0], A.shape[-1]
    real = not any(np.iscomplexobj(x) for x in (A, Sb, Sc, F, B, C) if x is not None)
    if balancing is None:
        balancing = balance_batch(A, Sb, Sc)
    if len(balancing) != S or len(orders) != S:
        raise ValueError(f"need one order and one balancing per system ({S}), got {len(orders)} and "
                         f"{len(balancing)}")
    eye = np.eye(n)
    out = []
    for i in range(S):
        budget = None if max_states is None else max_states[i]
        out.append(truncate(balancing[i], A[i] if F is None else F[i], eye if B is None else B[i],
                            eye if C is None else C[i], int(orders[i]), real=real, fold_pairs=fold_pairs,
                            domain=domain, max_states=budget, max_cond=max_cond, selection=selection))
    return out
