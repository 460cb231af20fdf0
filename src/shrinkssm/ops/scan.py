"""The linear recurrence of diagonal state space models (the hot path), with backend dispatch.

Two operations, conventions of :mod:`shrinkssm.lti` (shape legend: B batch, L length, H width,
N states):

* :func:`scan`: ``h[:, k] = lam * h[:, k-1] + b[:, k]`` with ``h[:, -1] = h0`` (zeros if None).
* :func:`lru_recurrence`: the LRU's ``x[k] = lam * x[k-1] + B u[k]``, ``y[k] = Re(C x[k])``
  (the layer adds ``D * u`` and folds ``gamma`` into ``B`` itself).

Backends (``backend=``)
-----------------------
``"ref"``
    Plain sequential loop over ``unbind(1)``, differentiated by autograd. The reference every other
    backend is tested against.
``"chunked"``
    Pure torch, any device: the two-level chunked scan of :mod:`shrinkssm.ops._chunked`
    (depth ~ 2 sqrt(L)); projections as real GEMMs. The backend for GPUs.
``"native"``
    Plain-C CPU kernels with hand-written backward passes (:mod:`shrinkssm.ops._native_backend`).
    :func:`lru_recurrence` runs the *fused* kernel (``B u``, scan and ``Re(C x)`` in one pass, no
    ``(B, L, N)`` tensor in memory) when ``H_in + H_out <= FUSED_MAX_WIDTH``, and otherwise torch
    GEMMs around the native scan kernel, because wide projections are GEMM-bound and the GEMM
    library does them better (measured in ``benchmarks/scan.py``). The kernels are PyTorch custom
    operators (``shrinkssm::lru_forward``, ``shrinkssm::scan_forward``, ...), so ``torch.compile``
    and ``torch.export`` trace through them.
``"auto"``
    CPU tensors: ``"native"`` when the extension loaded. Without it (one debug-level log record,
    no error): ``"chunked"`` up to :data:`CHUNKED_CPU_MAX_STATES` states in total (``B * L * N``),
    ``"ref"`` above, where the chunked scan's extra full-size temporaries cost more than its
    shorter loop saves on a CPU. Other devices: ``"chunked"``.

Gradients (torch's complex convention: the gradient of a real loss is ``dL/dRe + i dL/dIm``)
-----------------------------------------------------------------------------------------------
With ``g[k] = dL/dh[k]`` the total adjoint, the scan's backward is again a scan, run in reverse::

    g[k] = gh[k] + conj(lam) * g[k+1]          (g[L] = 0)
    db[k] = g[k],   dh0 = conj(lam) * g[0],   dlam = sum_{batch, k} g[k] * conj(h[k-1])

and for the LRU recurrence, with ``gh[k] = C^H gy[k]`` (+ ``dL/dh_last`` at ``k = L-1``)::

    du[k] = Re(B^H g[k]),   dB = sum g[k] u[k]^T,   dC = sum gy[k] x[k]^H

The native kernels implement exactly these; the tests compare them with autograd through the
reference loop in complex128 and with :func:`torch.autograd.gradcheck`.

References
----------
Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences", ICML 2023 (the LRU;
its code uses ``jax.lax.associative_scan``). Blelloch, "Prefix sums and their applications", 1990
(the chunked two-level scan).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from shrinkssm.ops import _native_backend
from shrinkssm.ops._chunked import scan_chunked

__all__ = [
    "BACKENDS",
    "CHUNKED_CPU_MAX_STATES",
    "FUSED_MAX_WIDTH",
    "lru_recurrence",
    "lru_recurrence_ref",
    "native_available",
    "resolve_backend",
    "scan",
    "scan_ref",
]

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "ref", "chunked", "native")
"""Valid values of ``backend=``."""

FUSED_MAX_WIDTH = 160
"""Largest ``H_in + H_out`` for which the native backend runs the fused LRU kernel; above it, torch
GEMMs around the native scan kernel are faster. Measured with ``benchmarks/scan.py --crossover``
(batch 32, length 1024, N 256, forward + backward, H_in = H_out = H): fused 9x faster at H = 8,
2x at H = 32, 1.25-1.4x at H = 64; even to 1.1x slower at H = 96; slower at H = 128."""

CHUNKED_CPU_MAX_STATES = 2**23
"""Largest ``B * L * N`` for which "auto" picks "chunked" over "ref" on a CPU without the native
kernels (measured with ``benchmarks/scan.py --crossover``: chunked 1.1-2.6x faster up to 4 Mi
states, 1.4-4x slower at 9.6 Mi, where its full-size temporaries dominate)."""

_COMPLEX_OF = {torch.float32: torch.complex64, torch.float64: torch.complex128}
_fallback_logged = False


def native_available() -> bool:
    """True if the compiled CPU kernels (``shrinkssm.ops._native_scan``) could be loaded."""
    return _native_backend.native_available()


# ------------------------------------------------------------------------------------------------
# Backend choice
# ------------------------------------------------------------------------------------------------


def resolve_backend(backend: str, device: torch.device, n_states: int = 0) -> str:
    """Concrete backend ("ref", "chunked" or "native") that ``backend`` means for ``device``.

    Parameters
    ----------
    backend : str
        One of :data:`BACKENDS`.
    device : torch.device
        Device of the tensors.
    n_states : int
        ``B * L * N``, the number of states the recurrence computes (used by "auto" on a CPU
        without the native kernels).

    Returns
    -------
    str

    Raises
    ------
    ValueError
        Unknown backend name, or "native" for a non-CPU device.
    RuntimeError
        "native" requested but the extension could not be loaded.
    """
    global _fallback_logged
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "native":
        if device.type != "cpu":
            raise ValueError(f"backend='native' runs on CPU tensors only, got device {device}")
        _native_backend._require()
        return "native"
    if backend != "auto":
        return backend
    if device.type != "cpu":
        return "chunked"
    if native_available():
        return "native"
    if not _fallback_logged:
        logger.debug(
            "native scan kernels not available (%s); backend='auto' uses 'chunked'",
            _native_backend.native_load_error(),
        )
        _fallback_logged = True
    return "chunked" if n_states <= CHUNKED_CPU_MAX_STATES else "ref"


# ------------------------------------------------------------------------------------------------
# Input checks
# ------------------------------------------------------------------------------------------------


def _check_tensor(name: str, t: object, ndim: int, what: str) -> Tensor:
    if not isinstance(t, Tensor):
        # ValueError, not TypeError: the package reports every bad input the same way
        raise ValueError(f"{name} must be a torch.Tensor of shape {what}, got {type(t).__name__}")  # noqa: TRY004
    if t.ndim != ndim:
        raise ValueError(f"{name} must have shape {what}, got shape {tuple(t.shape)}")
    return t


def _check_complex(name: str, t: Tensor, dtype: torch.dtype | None) -> None:
    if t.dtype not in (torch.complex64, torch.complex128):
        raise ValueError(f"{name} must be complex64 or complex128, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{name} is {t.dtype} but lam is {dtype}; pass all tensors in one precision")


def _check_same_device(**tensors: Tensor | None) -> None:
    devices = {name: t.device for name, t in tensors.items() if t is not None}
    if len(set(devices.values())) > 1:
        raise ValueError(f"tensors are on different devices: {devices}")


def _check_positive(**sizes: int) -> None:
    for name, size in sizes.items():
        if size < 1:
            raise ValueError(f"{name} must be at least 1, got {size}")


def _check_scan_inputs(lam: Tensor, b: Tensor, h0: Tensor | None) -> None:
    _check_tensor("lam", lam, 1, "(N,)")
    _check_tensor("b", b, 3, "(B, L, N)")
    _check_complex("lam", lam, None)
    _check_complex("b", b, lam.dtype)
    nb, L, N = b.shape
    _check_positive(B=nb, L=L, N=N)
    if lam.shape[0] != N:
        raise ValueError(f"lam has {lam.shape[0]} states but b has N={N} (b: (B, L, N))")
    if h0 is not None:
        _check_tensor("h0", h0, 2, "(B, N)")
        _check_complex("h0", h0, lam.dtype)
        if tuple(h0.shape) != (nb, N):
            raise ValueError(f"h0 must have shape (B, N) = {(nb, N)}, got {tuple(h0.shape)}")
    _check_same_device(lam=lam, b=b, h0=h0)


def _check_lru_inputs(u: Tensor, lam: Tensor, B: Tensor, C: Tensor, h0: Tensor | None) -> None:
    _check_tensor("u", u, 3, "(B, L, H_in)")
    _check_tensor("lam", lam, 1, "(N,)")
    _check_tensor("B", B, 2, "(N, H_in)")
    _check_tensor("C", C, 2, "(H_out, N)")
    _check_complex("lam", lam, None)
    _check_complex("B", B, lam.dtype)
    _check_complex("C", C, lam.dtype)
    if u.dtype not in _COMPLEX_OF:
        raise ValueError(f"u must be float32 or float64, got {u.dtype}")
    if _COMPLEX_OF[u.dtype] != lam.dtype:
        raise ValueError(
            f"u is {u.dtype} but lam is {lam.dtype}; use float32 with complex64 or float64 with "
            "complex128"
        )
    nb, L, H_in = u.shape
    N = lam.shape[0]
    _check_positive(B=nb, L=L, H_in=H_in, N=N, H_out=C.shape[0])
    if tuple(B.shape) != (N, H_in):
        raise ValueError(f"B must have shape (N, H_in) = {(N, H_in)}, got {tuple(B.shape)}")
    if C.shape[1] != N:
        raise ValueError(f"C must have shape (H_out, N) with N={N}, got {tuple(C.shape)}")
    if h0 is not None:
        _check_tensor("h0", h0, 2, "(B, N)")
        _check_complex("h0", h0, lam.dtype)
        if tuple(h0.shape) != (nb, N):
            raise ValueError(f"h0 must have shape (B, N) = {(nb, N)}, got {tuple(h0.shape)}")
    _check_same_device(u=u, lam=lam, B=B, C=C, h0=h0)


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------


def scan_ref(lam: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """Reference scan: a plain loop over ``b.unbind(1)``.

    Parameters
    ----------
    lam : (N,) complex
    b : (B, L, N) complex
    h0 : (B, N) complex or None

    Returns
    -------
    h : (B, L, N) complex
    """
    x = h0 if h0 is not None else b.new_zeros(b.shape[0], b.shape[2])  # (B, N)
    out = []
    for b_k in b.unbind(1):
        x = lam * x + b_k
        out.append(x)
    return torch.stack(out, dim=1)


def lru_recurrence_ref(
    u: Tensor, lam: Tensor, B: Tensor, C: Tensor, h0: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reference LRU recurrence: complex matmuls around :func:`scan_ref`.

    Parameters and returns as :func:`lru_recurrence` (always returns ``(y, h_last)``).
    """
    Bu = u.to(B.dtype) @ B.transpose(0, 1)  # (B, L, N)
    h = scan_ref(lam, Bu, h0)  # (B, L, N)
    y = (h @ C.transpose(0, 1)).real  # (B, L, H_out)
    return y, h[:, -1]


# ------------------------------------------------------------------------------------------------
# Projections as real GEMMs (chunked backend, and the native backend for wide layers)
# ------------------------------------------------------------------------------------------------


def _project_in(u: Tensor, B: Tensor) -> Tensor:
    """``B u[k]`` for all k as one real GEMM: (B, L, H_in) real -> (B, L, N) complex."""
    N, H_in = B.shape
    W = torch.view_as_real(B.resolve_conj()).permute(1, 0, 2).reshape(H_in, 2 * N)  # (H_in, 2N)
    z = u @ W  # (B, L, 2N): re/im interleaved
    return torch.view_as_complex(z.unflatten(-1, (N, 2)))


def _project_out(h: Tensor, C: Tensor) -> Tensor:
    """``Re(C h[k])`` for all k as one real GEMM: (B, L, N) complex -> (B, L, H_out) real."""
    H_out, N = C.shape
    W = torch.view_as_real(C.conj().resolve_conj()).reshape(H_out, 2 * N)  # rows [Re C, -Im C]
    return torch.view_as_real(h).flatten(-2) @ W.transpose(0, 1)  # (B, L, H_out)


# ------------------------------------------------------------------------------------------------
# Public operations
# ------------------------------------------------------------------------------------------------


def scan(lam: Tensor, b: Tensor, h0: Tensor | None = None, backend: str = "auto") -> Tensor:
    """Diagonal linear recurrence ``h[:, k] = lam * h[:, k-1] + b[:, k]``.

    Parameters
    ----------
    lam : (N,) complex64 or complex128
        Diagonal of the state matrix.
    b : (B, L, N) complex, same dtype as ``lam``
        Inputs of every step.
    h0 : (B, N) complex or None
        State before the first step; zeros if None.
    backend : {"auto", "ref", "chunked", "native"}
        See the module docstring.

    Returns
    -------
    h : (B, L, N) complex
        All states.

    Raises
    ------
    ValueError
        Bad shapes, dtypes or devices; unknown backend.
    RuntimeError
        ``backend="native"`` but the compiled kernels could not be loaded.

    Examples
    --------
    >>> lam = torch.tensor([0.5 + 0.0j])
    >>> scan(lam, torch.ones(1, 3, 1, dtype=torch.complex64), backend="ref").real.flatten()
    tensor([1.0000, 1.5000, 1.7500])
    """
    _check_scan_inputs(lam, b, h0)
    chosen = resolve_backend(backend, b.device, b.numel())
    if chosen == "native":
        return _native_backend.scan_native(lam, b, h0)
    if chosen == "chunked":
        return scan_chunked(lam, b, h0)
    return scan_ref(lam, b, h0)


def lru_recurrence(
    u: Tensor,
    lam: Tensor,
    B: Tensor,
    C: Tensor,
    h0: Tensor | None = None,
    backend: str = "auto",
    return_state: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """LRU recurrence ``x[k] = lam * x[k-1] + B u[k]``, ``y[k] = Re(C x[k])``.

    Parameters
    ----------
    u : (B, L, H_in) float32 or float64
        Input sequences.
    lam : (N,) complex64 or complex128 (complex64 with float32 ``u``, complex128 with float64)
        Diagonal of the state matrix.
    B : (N, H_in) complex
        Input matrix (the LRU folds its normalisation ``gamma`` into it).
    C : (H_out, N) complex
        Output matrix.
    h0 : (B, N) complex or None
        State before the first step; zeros if None.
    backend : {"auto", "ref", "chunked", "native"}
        See the module docstring.
    return_state : bool
        Also return the last state (to continue the recurrence on a next segment).

    Returns
    -------
    y : (B, L, H_out) real
        ``Re(C x[k])`` (no skip term).
    h_last : (B, N) complex
        ``x[L-1]``; only if ``return_state``.

    Raises
    ------
    ValueError
        Bad shapes, dtypes or devices; unknown backend.
    RuntimeError
        ``backend="native"`` but the compiled kernels could not be loaded.
    """
    _check_lru_inputs(u, lam, B, C, h0)
    chosen = resolve_backend(backend, u.device, u.shape[0] * u.shape[1] * lam.shape[0])
    if chosen == "native" and B.shape[1] + C.shape[0] <= FUSED_MAX_WIDTH:
        y, h_last = _native_backend.lru_fused(u, lam, B, C, h0)
    elif chosen == "ref":
        y, h_last = lru_recurrence_ref(u, lam, B, C, h0)
    else:
        run = _native_backend.scan_native if chosen == "native" else scan_chunked
        h = run(lam, _project_in(u, B), h0)  # (B, L, N)
        y, h_last = _project_out(h, C), h[:, -1]
    return (y, h_last) if return_state else y
