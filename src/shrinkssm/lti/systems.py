"""State-space containers: the diagonal (LRU) system, the dense system, and their realizations.

``DiagonalSystem`` is what an LRU layer is (``x[k] = lam * x[k-1] + B u[k]``,
``y[k] = Re(C x[k]) + D u[k]``); ``DenseSystem`` is the same with a full state matrix (a balanced
but not yet re-diagonalised reduced model, or any general system). Both are small frozen
dataclasses of tensors that validate shapes, dtypes and finiteness once, at construction, so that
the numerical routines downstream can trust them. The conventions (discrete time, which output
map, what ``N`` counts) are in the docstring of :mod:`shrinkssm.lti`.

The two alternative realizations of the real map ``u -> Re(C x) + D u`` follow ``docs/design.md`` §3 and §5:

* the **conjugate** 2N realization ``diag(lam, conj(lam))``, ``[B; conj(B)]``, ``[C, conj(C)] / 2``
  (:func:`conjugate_realization`), whose output is real by construction;
* the **real** 2N form ``A = [[Re L, -Im L], [Im L, Re L]]``, ``B = [Re B; Im B]``,
  ``C = [Re C, -Im C]`` (:func:`real_realization`), the state being ``[Re x; Im x]``. This is the
  form that real-arithmetic tools (slycot, MATLAB) take.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "DiagonalSystem",
    "DenseSystem",
    "conjugate_realization",
    "real_realization",
    "to_dense",
]

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_REAL_OF = {torch.complex64: torch.float32, torch.complex128: torch.float64}


# --------------------------------------------------------------------------- validation helpers
def _as_tensor(value, name: str) -> torch.Tensor:
    """Turn array-likes into a tensor; refuse dtypes that cannot hold a system matrix."""
    try:
        t = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name} must be a tensor or array-like of numbers ({exc})") from None
    if t.dtype in (torch.float16, torch.bfloat16, torch.complex32):
        raise ValueError(f"{name} has dtype {t.dtype}; use float32/float64 or complex64/complex128")
    if not (t.is_floating_point() or t.is_complex()):
        if t.dtype == torch.bool:
            raise ValueError(f"{name} has dtype bool; expected a floating or complex tensor")
        t = t.to(torch.get_default_dtype())  # integer entries are exact in floating point
    return t


def _complex_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The narrowest complex dtype that holds every argument without loss."""
    dtype = torch.complex64
    for t in tensors:
        c = t.dtype if t.is_complex() else _COMPLEX_OF[t.dtype]
        dtype = torch.promote_types(dtype, c)
    return dtype


def _all_finite(t: torch.Tensor) -> bool:
    """``isfinite(t).all()``; through NumPy on the CPU, where it is a plain loop.

    (torch's parallel elementwise kernels can be orders of magnitude slower on a small, busy
    machine, e.g. 0.1 s for a 512 x 512 complex tensor on 2 shared cores.)
    """
    if t.device.type == "cpu":
        return bool(np.isfinite(t.detach().resolve_conj().numpy()).all())
    return bool(torch.isfinite(t).all())


def _check_finite(t: torch.Tensor, name: str) -> None:
    if not _all_finite(t):
        raise ValueError(f"{name} contains NaN or inf entries")


def _check_same_device(named: dict[str, torch.Tensor]) -> torch.device:
    devices = {t.device for t in named.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{k} on {v.device}" for k, v in named.items())
        raise ValueError(f"all system tensors must be on the same device ({listing})")
    return devices.pop()


def _validate_D(D: torch.Tensor, n_in: int, n_out: int, real_dtype: torch.dtype) -> torch.Tensor:
    if D.is_complex():
        raise ValueError("D must be real (the skip term acts on the real input and real output)")
    if D.ndim == 1:
        if n_in != n_out:
            raise ValueError(
                f"an elementwise D of shape {tuple(D.shape)} needs H_in == H_out, "
                f"got H_in={n_in}, H_out={n_out}; pass a dense (H_out, H_in) D instead"
            )
        if D.shape[0] != n_in:
            raise ValueError(f"D has shape {tuple(D.shape)}, expected ({n_in},) or ({n_out}, {n_in})")
    elif D.ndim == 2:
        if tuple(D.shape) != (n_out, n_in):
            raise ValueError(f"D has shape {tuple(D.shape)}, expected ({n_out}, {n_in})")
    else:
        raise ValueError(f"D must be 1-D (elementwise) or 2-D (dense), got {D.ndim}-D")
    _check_finite(D, "D")
    return D.to(real_dtype)


def _validate_BC(B: torch.Tensor, C: torch.Tensor, n: int) -> None:
    if B.ndim != 2 or B.shape[0] != n:
        raise ValueError(f"B has shape {tuple(B.shape)}, expected (N, H_in) with N={n}")
    if C.ndim != 2 or C.shape[1] != n:
        raise ValueError(f"C has shape {tuple(C.shape)}, expected (H_out, N) with N={n}")
    if B.shape[1] < 1 or C.shape[0] < 1:
        raise ValueError(f"need at least one input and one output, got B {tuple(B.shape)}, C {tuple(C.shape)}")


class _SystemMixin:
    """Shared read-only properties of both system classes."""

    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor

    @property
    def n_states(self) -> int:
        """N, the number of (complex) states."""
        return int(self.B.shape[0])

    @property
    def n_inputs(self) -> int:
        """H_in."""
        return int(self.B.shape[1])

    @property
    def n_outputs(self) -> int:
        """H_out."""
        return int(self.C.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """The complex dtype of the state matrices (complex64 or complex128)."""
        return self.B.dtype

    @property
    def device(self) -> torch.device:
        return self.B.device

    @property
    def D_matrix(self) -> torch.Tensor:
        """The skip term as a dense ``(H_out, H_in)`` real matrix (``diag(D)`` when elementwise)."""
        return torch.diag(self.D) if self.D.ndim == 1 else self.D


# --------------------------------------------------------------------------------- the systems
@dataclass(frozen=True, eq=False)
class DiagonalSystem(_SystemMixin):
    """A diagonal discrete-time system, the LTI view of one LRU layer.

    ``x[k] = lam * x[k-1] + B @ u[k]``,  ``y[k] = Re(C @ x[k]) + D u[k]``
    (conventions: :mod:`shrinkssm.lti`).

    Parameters
    ----------
    lam : (N,) complex
        Eigenvalues. Real input is promoted to complex. No stability check here (a container may
        hold any finite system); functions that need stability check it themselves.
    B : (N, H_in) complex
        Input matrix; real input is promoted.
    C : (H_out, N) complex
        Output matrix; real input is promoted.
    D : (H,) real or (H_out, H_in) real
        Skip term: elementwise (needs ``H_in == H_out``) or dense.

    All tensors end up with one complex dtype (the widest of ``lam``, ``B``, ``C``), ``D`` with
    the matching real dtype, all on one device. Tensors are stored as given (not copied, not
    detached) when no conversion is needed.

    Raises
    ------
    ValueError
        On wrong shapes, a complex ``D``, non-finite entries, mixed devices, N = 0.

    Examples
    --------
    >>> sys = DiagonalSystem(torch.tensor([0.5 + 0.1j]), torch.ones(1, 2), torch.ones(2, 1), torch.zeros(2))
    >>> sys.n_states, sys.n_inputs, sys.n_outputs
    (1, 2, 2)
    """

    lam: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor

    def __post_init__(self) -> None:
        lam, B, C, D = (_as_tensor(v, k) for v, k in zip((self.lam, self.B, self.C, self.D), ["lam", "B", "C", "D"]))
        _check_same_device({"lam": lam, "B": B, "C": C, "D": D})
        if lam.ndim != 1 or lam.shape[0] < 1:
            raise ValueError(f"lam must be 1-D with at least one state, got shape {tuple(lam.shape)}")
        _validate_BC(B, C, lam.shape[0])
        cdtype = _complex_dtype(lam, B, C)
        lam, B, C = lam.to(cdtype), B.to(cdtype), C.to(cdtype)
        for name, t in (("lam", lam), ("B", B), ("C", C)):
            _check_finite(t, name)
        D = _validate_D(D, B.shape[1], C.shape[0], _REAL_OF[cdtype])
        for name, t in (("lam", lam), ("B", B), ("C", C), ("D", D)):
            object.__setattr__(self, name, t)

    def to(self, dtype: torch.dtype | None = None, device=None) -> DiagonalSystem:
        """Copy to another complex ``dtype`` (``D`` follows with the real counterpart) / device."""
        return DiagonalSystem(*_move(self.lam, self.B, self.C, self.D, dtype=dtype, device=device))

    def __repr__(self) -> str:
        return (f"DiagonalSystem(N={self.n_states}, H_in={self.n_inputs}, H_out={self.n_outputs}, "
                f"D={'elementwise' if self.D.ndim == 1 else 'dense'}, dtype={self.dtype}, device={self.device})")


@dataclass(frozen=True, eq=False)
class DenseSystem(_SystemMixin):
    """A discrete-time system with a full state matrix.

    ``x[k] = A @ x[k-1] + B @ u[k]``,  ``y[k] = Re(C @ x[k]) + D u[k]``
    (conventions: :mod:`shrinkssm.lti`).

    Parameters
    ----------
    A : (N, N) complex
        State matrix; real input is promoted.
    B : (N, H_in) complex
    C : (H_out, N) complex
    D : (H,) real or (H_out, H_in) real

    Same dtype/device/validation rules as :class:`DiagonalSystem`.
    """

    A: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    D: torch.Tensor

    def __post_init__(self) -> None:
        A, B, C, D = (_as_tensor(v, k) for v, k in zip((self.A, self.B, self.C, self.D), ["A", "B", "C", "D"]))
        _check_same_device({"A": A, "B": B, "C": C, "D": D})
        if A.ndim != 2 or A.shape[0] != A.shape[1] or A.shape[0] < 1:
            raise ValueError(f"A must be square (N, N) with N >= 1, got shape {tuple(A.shape)}")
        _validate_BC(B, C, A.shape[0])
        cdtype = _complex_dtype(A, B, C)
        A, B, C = A.to(cdtype), B.to(cdtype), C.to(cdtype)
        for name, t in (("A", A), ("B", B), ("C", C)):
            _check_finite(t, name)
        D = _validate_D(D, B.shape[1], C.shape[0], _REAL_OF[cdtype])
        for name, t in (("A", A), ("B", B), ("C", C), ("D", D)):
            object.__setattr__(self, name, t)

    def to(self, dtype: torch.dtype | None = None, device=None) -> DenseSystem:
        """Copy to another complex ``dtype`` (``D`` follows with the real counterpart) / device."""
        return DenseSystem(*_move(self.A, self.B, self.C, self.D, dtype=dtype, device=device))

    def __repr__(self) -> str:
        return (f"DenseSystem(N={self.n_states}, H_in={self.n_inputs}, H_out={self.n_outputs}, "
                f"D={'elementwise' if self.D.ndim == 1 else 'dense'}, dtype={self.dtype}, device={self.device})")


def _move(*tensors: torch.Tensor, dtype, device):
    if dtype is not None and dtype not in _REAL_OF:
        raise ValueError(f"dtype must be torch.complex64 or torch.complex128, got {dtype}")
    out = []
    for i, t in enumerate(tensors):
        target = dtype if (dtype is None or i < len(tensors) - 1) else _REAL_OF[dtype]
        out.append(t.to(device=device, dtype=target))
    return out


# ---------------------------------------------------------------------------------- realizations
def _check_system(sys) -> None:
    if not isinstance(sys, (DiagonalSystem, DenseSystem)):
        raise ValueError(f"expected a DiagonalSystem or DenseSystem, got {type(sys).__name__}")


def to_dense(sys: DiagonalSystem | DenseSystem) -> DenseSystem:
    """The same system with ``A = diag(lam)`` as a :class:`DenseSystem` (a DenseSystem is returned as is)."""
    _check_system(sys)
    if isinstance(sys, DenseSystem):
        return sys
    return DenseSystem(torch.diag(sys.lam), sys.B, sys.C, sys.D)


def conjugate_realization(sys: DiagonalSystem | DenseSystem) -> DiagonalSystem | DenseSystem:
    """The 2N conjugate realization of the real map ``u -> Re(C x) + D u`` (``docs/design.md`` §3.2).

    ``A~ = diag(A, conj(A))``, ``B~ = [B; conj(B)]``, ``C~ = [C, conj(C)] / 2``, ``D`` unchanged.
    Its output ``C~ x~`` is real, so ``Re(C~ x~) + D u`` is exactly the original real map.

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem with N states

    Returns
    -------
    DiagonalSystem or DenseSystem (same class as ``sys``) with 2N states, same dtype and device.
    """
    _check_system(sys)
    B2 = torch.cat([sys.B, sys.B.conj()], dim=0)  # (2N, H_in)
    C2 = torch.cat([sys.C, sys.C.conj()], dim=1) / 2  # (H_out, 2N)
    if isinstance(sys, DiagonalSystem):
        return DiagonalSystem(torch.cat([sys.lam, sys.lam.conj()]), B2, C2, sys.D)
    return DenseSystem(torch.block_diag(sys.A, sys.A.conj()), B2, C2, sys.D)


def real_realization(sys: DiagonalSystem | DenseSystem) -> DenseSystem:
    """The real 2N form of the real map ``u -> Re(C x) + D u`` (``docs/design.md`` §5), state ``[Re x; Im x]``.

    ``A = [[Re A, -Im A], [Im A, Re A]]`` (``A = diag(lam)`` for a diagonal system),
    ``B = [Re B; Im B]``, ``C = [Re C, -Im C]``, ``D`` unchanged.

    Parameters
    ----------
    sys : DiagonalSystem or DenseSystem with N states

    Returns
    -------
    DenseSystem
        2N states. Its matrices have zero imaginary part (the class stores complex tensors);
        ``.A.real``, ``.B.real``, ``.C.real`` are the real matrices that real-arithmetic tools take.
    """
    _check_system(sys)
    A = torch.diag(sys.lam) if isinstance(sys, DiagonalSystem) else sys.A
    Ar, Ai = A.real, A.imag
    A2 = torch.cat([torch.cat([Ar, -Ai], dim=1), torch.cat([Ai, Ar], dim=1)], dim=0)  # (2N, 2N)
    B2 = torch.cat([sys.B.real, sys.B.imag], dim=0)  # (2N, H_in)
    C2 = torch.cat([sys.C.real, -sys.C.imag], dim=1)  # (H_out, 2N)
    return DenseSystem(A2, B2, C2, sys.D)
