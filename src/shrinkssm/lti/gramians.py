"""Gramians, Hankel singular values and the energy rule that turns a tolerance into a rank.

For a diagonal system the Gramians have a closed form (``docs/design.md`` §3), O(N² H) work and no solver::

    P_ij = (B B^H)_ij / (1 - lam_i conj(lam_j))        Q_ij = (C^H C)_ij / (1 - conj(lam_i) lam_j)

(the conjugate sits on the *other* side in Q). The real 2N form of ``docs/design.md`` §5 has a closed form
too, assembled from the same blocks (see :func:`gramians`). A dense system goes through a general
Stein solver, :func:`discrete_lyapunov`, which is ``scipy.linalg.solve_discrete_lyapunov``
(bilinear transformation to a continuous Lyapunov equation, then Bartels–Stewart on a Schur form;
O(N³)).

Hankel singular values are computed by the square-root method of :mod:`shrinkssm.lti.balancing` (Laub et al. 1987; Antoulas,
*Approximation of Large-Scale Dynamical Systems*, 2005, §7.3): factor ``P = Lc Lc^H`` and
``Q = Lo Lo^H`` by Cholesky with complete pivoting (LAPACK ``?pstrf``, which stops at the numerical
rank of a semidefinite matrix), then ``sigma = svd(Lo^H Lc)``. In exact arithmetic this equals
``sqrt(eig(P Q))``; numerically it never yields negative or complex values, and a rank-deficient
Gramian simply gives fewer nonzero sigma (the rest are returned as exact zeros). Everything runs
on the CPU in complex128 / float64. Conventions: :mod:`shrinkssm.lti`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch

from shrinkssm._checks import check_choice

from ._blas import limited_blas
from .balancing import SquareRoot, diagonal_gramians, square_root
from .systems import (
    _REAL_OF,
    DenseSystem,
    DiagonalSystem,
    _all_finite,
    _as_tensor,
    _check_system,
)

__all__ = [
    "OUTPUTS",
    "gramians",
    "discrete_lyapunov",
    "dlyap",
    "hankel_singular_values",
    "hsvd",
    "rank_for_energy",
]

OUTPUTS = ("complex", "real")
"""The two views of a diagonal system whose Gramians and HSVs are taken (``docs/design.md`` §3)."""


# ------------------------------------------------------------------ numeric working representation
@dataclass
class _Numeric:
    """A validated, stable system as NumPy arrays in complex128 (or float64 for ``output="real"``).

    ``kind`` is ``"diagonal"`` (A = diag(lam)), ``"real_diagonal"`` (the real 2N form of a diagonal
    system, A never formed) or ``"dense"``. ``n`` is the order of this realization (N or 2N).
    """

    kind: str
    real: bool
    lam: np.ndarray | None  # (N,) complex128 for the two diagonal kinds
    A: np.ndarray | None  # (n, n) for kind == "dense"
    B: np.ndarray  # (n, H_in)
    C: np.ndarray  # (H_out, n)
    D: np.ndarray  # (H_out, H_in) float64

    @property
    def n(self) -> int:
        return self.B.shape[0]

    def apply_A(self, X: np.ndarray) -> np.ndarray:
        """``A @ X`` for X of shape (n, k) without forming A for the diagonal kinds."""
        if self.kind == "diagonal":
            return self.lam[:, None] * X
        if self.kind == "real_diagonal":
            N = self.lam.shape[0]
            lr, li = self.lam.real[:, None], self.lam.imag[:, None]
            X1, X2 = X[:N], X[N:]
            return np.concatenate([lr * X1 - li * X2, li * X1 + lr * X2], axis=0)
        return self.A @ X


_NUMPY_DTYPE = {torch.complex64: np.complex64, torch.complex128: np.complex128,
                torch.float32: np.float32, torch.float64: np.float64}


def _from_numpy(a: np.ndarray, dtype: torch.dtype, device) -> torch.Tensor:
    """NumPy array -> tensor of ``dtype`` on ``device`` (the cast done in NumPy)."""
    return torch.from_numpy(np.ascontiguousarray(a, dtype=_NUMPY_DTYPE[dtype])).to(device)


def _check_output(output: str) -> None:
    check_choice("output", output, OUTPUTS)


def _to_numpy(t: torch.Tensor, complex_: bool) -> np.ndarray:
    """complex128 / float64 NumPy copy-free view where possible (conversions in NumPy, see
    ``systems._all_finite`` for why not in torch)."""
    a = t.detach().to("cpu").resolve_conj().numpy()
    return a.astype(np.complex128 if complex_ else np.float64, copy=False)


def _D_numpy(sys) -> np.ndarray:
    """The skip term as a dense (H_out, H_in) float64 array."""
    D = _to_numpy(sys.D, False)
    return np.diag(D) if D.ndim == 1 else D


def _spectral_radius(sys: DiagonalSystem | DenseSystem) -> float:
    """max |eigenvalue| of the state matrix (O(N) for a diagonal system, one eigvals otherwise)."""
    if isinstance(sys, DiagonalSystem):
        return float(np.abs(_to_numpy(sys.lam, True)).max())
    A = _to_numpy(sys.A, True)
    return float(np.abs(np.linalg.eigvals(A)).max())


def _check_stable(sys, what: str = "this function") -> None:
    rho = _spectral_radius(sys)
    if not rho < 1.0:
        raise ValueError(
            f"{what} needs a stable system (all |eigenvalues| < 1), but the spectral radius is {rho:.17g}"
        )


def _numeric(sys: DiagonalSystem | DenseSystem, output: str, what: str) -> _Numeric:
    """Validate ``sys`` (type, stability) and ``output``; return the working representation."""
    _check_system(sys)
    _check_output(output)
    _check_stable(sys, what)
    D = _D_numpy(sys)
    B = _to_numpy(sys.B, True)
    C = _to_numpy(sys.C, True)
    if isinstance(sys, DiagonalSystem):
        lam = _to_numpy(sys.lam, True)
        if output == "complex":
            return _Numeric("diagonal", False, lam, None, B, C, D)
        Br = np.concatenate([B.real, B.imag], axis=0)
        Cr = np.concatenate([C.real, -C.imag], axis=1)
        return _Numeric("real_diagonal", True, lam, None, Br, Cr, D)
    A = _to_numpy(sys.A, True)
    if output == "complex":
        return _Numeric("dense", False, None, A, B, C, D)
    Ar = np.block([[A.real, -A.imag], [A.imag, A.real]])
    Br = np.concatenate([B.real, B.imag], axis=0)
    Cr = np.concatenate([C.real, -C.imag], axis=1)
    return _Numeric("dense", True, None, Ar, Br, Cr, D)


# ------------------------------------------------------------------------------------ Gramians
def _real_form_block(X1: np.ndarray, X2: np.ndarray) -> np.ndarray:
    """``(1/2) [[Re(X1+X2), Im X2 - Im X1], [Im X1 + Im X2, Re(X1-X2)]]``.

    With ``X1 = E[x x^H]``-type and ``X2 = E[x x^T]``-type blocks of a complex state x, this is the
    corresponding Gramian of the real state ``[Re x; Im x]`` (for both P and Q, see
    :func:`gramians`).
    """
    top = np.concatenate([(X1 + X2).real, X2.imag - X1.imag], axis=1)
    bottom = np.concatenate([X1.imag + X2.imag, (X1 - X2).real], axis=1)
    return 0.5 * np.concatenate([top, bottom], axis=0)


def _hermitian_part(X: np.ndarray) -> np.ndarray:
    return 0.5 * (X + X.conj().T)


def _gramians_numeric(num: _Numeric) -> tuple[np.ndarray, np.ndarray]:
    """(P, Q) of the working representation, Hermitian (symmetric for real), (n, n) each."""
    if num.kind == "diagonal":
        P, Q = diagonal_gramians(num.lam, num.B @ num.B.conj().T, num.C.conj().T @ num.C)
    elif num.kind == "real_diagonal":
        lam = num.lam
        N = lam.shape[0]
        B = num.B[:N] + 1j * num.B[N:]  # the complex B back
        C = num.C[:, :N] - 1j * num.C[:, N:]
        P1 = (B @ B.conj().T) / (1.0 - lam[:, None] * lam.conj()[None, :])
        P2 = (B @ B.T) / (1.0 - lam[:, None] * lam[None, :])
        Q1 = (C.conj().T @ C) / (1.0 - lam.conj()[:, None] * lam[None, :])
        Q2 = (C.conj().T @ C.conj()) / (1.0 - lam.conj()[:, None] * lam.conj()[None, :])
        P, Q = _real_form_block(P1, P2), _real_form_block(Q1, Q2)
    else:
        P = scipy.linalg.solve_discrete_lyapunov(num.A, num.B @ num.B.conj().T)
        Q = scipy.linalg.solve_discrete_lyapunov(num.A.conj().T, num.C.conj().T @ num.C)
    return _hermitian_part(P), _hermitian_part(Q)


@limited_blas
def gramians(sys: DiagonalSystem | DenseSystem, output: str = "complex") -> tuple[torch.Tensor, torch.Tensor]:
    """Controllability and observability Gramians ``(P, Q)``.

    ``P = A P A^H + B B^H`` and ``Q = A^H Q A + C^H C`` (conventions: :mod:`shrinkssm.lti`).

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Must be stable.
    output : {"complex", "real"}
        ``"complex"``: Gramians of ``(A, B, C)`` itself, ``(N, N)`` complex (Hermitian).
        ``"real"``: Gramians of the real 2N form of :func:`~shrinkssm.lti.real_realization`
        (state ``[Re x; Im x]``), ``(2N, 2N)`` real symmetric. These describe the exact real map
        ``u -> Re(C x)``; the conjugate realization's Gramians follow from them by the similarity
        ``[x; conj x] = [[I, iI], [I, -iI]] [Re x; Im x]``.

    Returns
    -------
    P, Q : (N, N) complex or (2N, 2N) real
        In the caller's precision (complex64 -> complex64 / float32), on the caller's device.

    Notes
    -----
    Diagonal systems use the closed forms of the module docstring. For ``output="real"`` with
    ``X1 = B B^H / (1 - lam_i conj(lam_j))`` and ``X2 = B B^T / (1 - lam_i lam_j)``::

        P = 1/2 [[Re(X1 + X2), Im X2 - Im X1], [Im X1 + Im X2, Re(X1 - X2)]]

    and the same expression for Q with ``C^H C / (1 - conj(lam_i) lam_j)`` and
    ``C^H conj(C) / (1 - conj(lam_i) conj(lam_j))``. Dense systems use
    :func:`discrete_lyapunov`.

    Raises
    ------
    ValueError
        Unstable system, unknown ``output``.
    """
    num = _numeric(sys, output, "gramians")
    P, Q = _gramians_numeric(num)
    dtype = _REAL_OF[sys.dtype] if output == "real" else sys.dtype
    return _from_numpy(P, dtype, sys.device), _from_numpy(Q, dtype, sys.device)


@limited_blas
def discrete_lyapunov(A, Q) -> torch.Tensor:
    """Solve the Stein (discrete Lyapunov) equation ``X = A X A^H + Q``.

    Uses ``scipy.linalg.solve_discrete_lyapunov`` (bilinear transformation + Bartels–Stewart on a
    Schur form), O(N³), in complex128 / float64.

    Parameters
    ----------
    A : (N, N) real or complex
        Must be stable (spectral radius < 1); then the solution is unique.
    Q : (N, N) real or complex

    Returns
    -------
    X : (N, N)
        In the promoted dtype of ``A`` and ``Q``, on the device of ``A``.

    Raises
    ------
    ValueError
        Non-square or mismatched shapes, non-finite entries, unstable ``A``.
    """
    A_t, Q_t = _as_tensor(A, "A"), _as_tensor(Q, "Q")
    if A_t.ndim != 2 or A_t.shape[0] != A_t.shape[1] or tuple(Q_t.shape) != tuple(A_t.shape):
        raise ValueError(f"A and Q must be square of the same shape, got {tuple(A_t.shape)} and {tuple(Q_t.shape)}")
    for name, t in (("A", A_t), ("Q", Q_t)):
        if not _all_finite(t):
            raise ValueError(f"{name} contains NaN or inf entries")
    dtype = torch.promote_types(A_t.dtype, Q_t.dtype)
    complex_ = dtype.is_complex
    A_np, Q_np = _to_numpy(A_t, complex_), _to_numpy(Q_t, complex_)
    rho = float(np.abs(np.linalg.eigvals(A_np)).max())
    if not rho < 1.0:
        raise ValueError(f"discrete_lyapunov needs a stable A (spectral radius < 1), got {rho:.17g}")
    X = scipy.linalg.solve_discrete_lyapunov(A_np, Q_np)
    return _from_numpy(X, dtype, A_t.device)


# --------------------------------------------------------------------- square-root factors, HSVs
def _square_root(num: _Numeric) -> SquareRoot:
    """Square-root balancing data of the working representation (:func:`~shrinkssm.lti.balancing.square_root`)."""
    return square_root(*_gramians_numeric(num))


def _state_tensors(sys) -> tuple[torch.Tensor, ...]:
    return (sys.lam if isinstance(sys, DiagonalSystem) else sys.A, sys.B, sys.C)


def _fingerprint(sys) -> tuple:
    """Identity + in-place version of the tensors that determine the HSVs."""
    return tuple((t.data_ptr(), t._version) for t in _state_tensors(sys))


def _balancing(sys: DiagonalSystem | DenseSystem, output: str, what: str) -> tuple[_Numeric, SquareRoot]:
    """Validated working representation and square-root data of ``sys``, cached on the object.

    The common sequence ``hsv = hsvd(sys)``, ``r = rank_for_energy(hsv, tau)``,
    ``balanced_truncation(sys, r)`` then factors and decomposes only once. The cache lives in the
    (frozen) system object, one entry per ``output``, and is keyed on the storage pointer and the
    in-place version counter of ``lam``/``A``, ``B`` and ``C``, so an in-place change of a tensor
    the system shares with a layer invalidates it.
    """
    num = _numeric(sys, output, what)
    key = _fingerprint(sys)
    cache = sys.__dict__.setdefault("_balancing_cache", {})
    hit = cache.get(output)
    if hit is not None and hit[0] == key:
        return num, hit[1]
    sr = _square_root(num)
    cache[output] = (key, sr)
    return num, sr


@limited_blas
def hankel_singular_values(sys: DiagonalSystem | DenseSystem, output: str = "complex") -> torch.Tensor:
    """Hankel singular values, in descending order.

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem
        Must be stable.
    output : {"complex", "real"}
        ``"complex"``: HSVs of ``u -> C x`` (N values, what the CompreSSM paper uses).
        ``"real"``: HSVs of the exact real map ``u -> Re(C x)`` (2N values, the real order).

    Returns
    -------
    hsv : (N,) or (2N,) float64
        Always float64 (whatever the system's precision; rank decisions sum many small values),
        on the system's device. Values the computation cannot tell from zero (at or below
        ``n * eps * sigma_1``, or beyond the numerical rank of a Gramian) are returned as 0.

    Raises
    ------
    ValueError
        Unstable system, unknown ``output``.

    Notes
    -----
    Square-root method: ``svd(Lo^H Lc)`` with pivoted-Cholesky factors of the Gramians (module
    docstring). Because the Gramians themselves carry rounding errors of order
    ``eps * ||P||`` and ``eps * ||Q||``, HSVs far below ``sqrt(eps) * sigma_1`` have low relative
    accuracy (as with any Gramian-based method; slycot's Hammarling factors are sharper there).
    The HSVs describe the Hankel operator of ``(A, B, C)`` in the delayed convention of the
    Gramians above; its H∞ error bound ``2 * sum(discarded sigma)`` holds for this package's
    undelayed output ``y[k] = Re(C x[k])`` as well, because the two transfer functions differ by
    a factor ``z``, of modulus 1 on the unit circle.

    The factors and the SVD are cached on the system object (keyed on the in-place version of its
    tensors), so that ``hsvd(sys)`` followed by ``balanced_truncation(sys, r)`` of the same object
    does the O(N³) work once.

    Examples
    --------
    >>> sys = DiagonalSystem(torch.tensor([0.5]), torch.ones(1, 1), torch.ones(1, 1), torch.zeros(1))
    >>> hankel_singular_values(sys)   # |c b| / (1 - |lam|^2) = 4/3
    tensor([1.3333], dtype=torch.float64)
    """
    _, sr = _balancing(sys, output, "hankel_singular_values")
    return torch.from_numpy(sr.hsv.copy()).to(sys.device)


def rank_for_energy(hsv, tau: float) -> int:
    """Smallest rank that keeps a fraction ``1 - tau`` of the Hankel energy.

    ``r = min { r >= 1 : sum(hsv[:r]) >= (1 - tau) * sum(hsv) }`` with the plain sum of sigma
    (conventions: :mod:`shrinkssm.lti`).

    Parameters
    ----------
    hsv : (n,) real
        Hankel singular values, non-negative, in descending order.
    tau : float in [0, 1)
        Fraction of the energy that may be discarded. ``tau = 0`` means "change nothing" and
        returns ``n`` (all values, zeros included), so that a compressor with ``tau = 0`` never
        reduces. For ``tau > 0`` trailing zero HSVs are never needed, and the result is at least 1
        (also when every HSV is zero).

    Returns
    -------
    int in [1, n]

    Raises
    ------
    ValueError
        Empty, non-1-D, non-finite, negative or not-descending ``hsv``; ``tau`` outside [0, 1).

    Examples
    --------
    >>> rank_for_energy(torch.tensor([3.0, 1.0, 0.5, 0.5]), 0.2)   # 4 of 5 kept needs 2 values
    2
    """
    h = _as_tensor(hsv, "hsv").detach().to("cpu")
    if h.is_complex():
        raise ValueError("hsv must be real")
    h = h.to(torch.float64)
    if h.ndim != 1 or h.numel() == 0:
        raise ValueError(f"hsv must be a non-empty 1-D tensor, got shape {tuple(h.shape)}")
    if not bool(torch.isfinite(h).all()):
        raise ValueError("hsv contains NaN or inf entries")
    if bool((h < 0).any()):
        raise ValueError("hsv contains negative values")
    if bool((h[1:] > h[:-1]).any()):
        raise ValueError("hsv must be sorted in descending order")
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not 0.0 <= float(tau) < 1.0:
        raise ValueError(f"tau must be a number in [0, 1), got {tau!r}")
    n = h.numel()
    if float(tau) == 0.0:
        return n
    cum = torch.cumsum(h, 0)
    target = (1.0 - float(tau)) * float(cum[-1])
    r = int(torch.searchsorted(cum, torch.tensor([target], dtype=torch.float64)).item()) + 1
    return max(1, min(r, n))


hsvd = hankel_singular_values
dlyap = discrete_lyapunov
