"""Bridge between torch and the plain-C kernels of :mod:`shrinkssm.ops._native_scan`.

The extension takes raw data pointers of contiguous CPU tensors (it is built without torch
headers, see ``setup.py``), so this module owns everything the C code assumes: dtypes, contiguity,
resolved conjugate/negative bits, padded state sizes, and the hand-written backward passes wired
into :class:`torch.autograd.Function`.

* :func:`lru_fused` runs the fused LRU recurrence (``B u``, the scan and ``Re(C x)`` in one pass,
  no ``(B, L, N)`` tensor in memory). Complex parameters are split into real and imaginary parts
  *outside* the autograd Function by differentiable torch views, so the kernels only ever produce
  ordinary real gradients and torch maps them back to its complex convention.
* :func:`scan_native` runs the plain scan ``h[k] = lam h[k-1] + b[k]`` on interleaved complex
  tensors; its backward returns gradients in torch's convention (``dL/dRe + i dL/dIm``).

The maths of both backward passes is written out in :mod:`shrinkssm.ops.scan`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["CHECKPOINT_CHUNK", "lru_fused", "native_available", "native_isa", "native_load_error", "scan_native"]

try:
    from shrinkssm.ops import _native_scan as _ext
except ImportError as exc:  # not compiled (no C compiler at install time) or failed to load
    _ext = None
    _LOAD_ERROR: str | None = f"{type(exc).__name__}: {exc}"
else:
    _LOAD_ERROR = None

CHECKPOINT_CHUNK = 32
"""Steps between stored states in the fused forward. The backward recomputes one chunk at a time
from its stored state; 32 keeps the chunk's states and adjoints (2 x 32 x N complex) in L2."""


def native_available() -> bool:
    """True if the compiled kernels loaded (see :func:`native_load_error` otherwise)."""
    return _ext is not None


def native_load_error() -> str | None:
    """Why the compiled kernels could not be loaded, or None when they did."""
    return _LOAD_ERROR


def _require() -> None:
    if _ext is None:
        raise RuntimeError(
            "backend='native' needs the compiled extension shrinkssm.ops._native_scan, which could "
            f"not be loaded ({_LOAD_ERROR}). Reinstall shrinkssm where a C compiler is available "
            "(`pip install -e .` builds it), or use backend='chunked' or 'auto'."
        )


def _flat(t: Tensor) -> Tensor:
    """Contiguous tensor whose memory holds its values (no lazy conjugate / negative bit)."""
    return t.resolve_conj().resolve_neg().contiguous()


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()


def _is_double(t: Tensor) -> int:
    return int(t.dtype in (torch.float64, torch.complex128))


def _lanes(dtype: torch.dtype) -> int:
    """Reals per 64-byte vector in the C kernels (state sizes are padded to a multiple)."""
    return 8 if dtype == torch.float64 else 16


# ------------------------------------------------------------------------------------------------
# Fused LRU recurrence
# ------------------------------------------------------------------------------------------------


class _LRUFused(torch.autograd.Function):
    """y, h_last = fused LRU recurrence on real/imaginary parts (states padded to Np)."""

    @staticmethod
    def forward(ctx, u, lr, li, Br, Bi, Cr, Ci, h0r, h0i, chunk, n_threads):
        # u: (B, L, H_in) real; lr, li: (Np,); Br, Bi: (H_in, Np); Cr, Ci: (H_out, Np);
        # h0r, h0i: (B, Np) or None. All contiguous, one real dtype.
        nb, L, Hi = u.shape
        Ho, Np = Cr.shape
        n_chunks = math.ceil(L / chunk)
        y = u.new_empty(nb, L, Ho)
        hlr = u.new_empty(nb, Np)
        hli = u.new_empty(nb, Np)
        need_grad = any(ctx.needs_input_grad[:9])
        ckr = u.new_empty(nb, n_chunks, Np) if need_grad else None
        cki = u.new_empty(nb, n_chunks, Np) if need_grad else None
        _ext.lru_forward(
            _is_double(u), n_threads, nb, L, Hi, Ho, Np, chunk,
            _ptr(u), _ptr(lr), _ptr(li), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci),
            _ptr(h0r), _ptr(h0i), _ptr(y), _ptr(hlr), _ptr(hli), _ptr(ckr), _ptr(cki),
        )
        ctx.set_materialize_grads(False)
        ctx.chunk, ctx.n_threads, ctx.has_h0 = chunk, n_threads, h0r is not None
        if need_grad:
            ctx.save_for_backward(u, lr, li, Br, Bi, Cr, Ci, ckr, cki)
        return y, hlr, hli

    @staticmethod
    @once_differentiable
    def backward(ctx, gy, ghlr, ghli):
        u, lr, li, Br, Bi, Cr, Ci, ckr, cki = ctx.saved_tensors
        nb, L, Hi = u.shape
        Ho, Np = Cr.shape
        gy = u.new_zeros(nb, L, Ho) if gy is None else _flat(gy)
        if ghlr is None and ghli is None:
            ghlr = ghli = None
        else:
            ghlr = u.new_zeros(nb, Np) if ghlr is None else _flat(ghlr)
            ghli = u.new_zeros(nb, Np) if ghli is None else _flat(ghli)
        gu = torch.empty_like(u)
        gBr, gBi = torch.empty_like(Br), torch.empty_like(Bi)
        gCr, gCi = torch.empty_like(Cr), torch.empty_like(Ci)
        glr, gli = torch.empty_like(lr), torch.empty_like(li)
        want_h0 = ctx.has_h0 and (ctx.needs_input_grad[7] or ctx.needs_input_grad[8])
        gh0r = u.new_empty(nb, Np) if want_h0 else None
        gh0i = u.new_empty(nb, Np) if want_h0 else None
        _ext.lru_backward(
            _is_double(u), ctx.n_threads, nb, L, Hi, Ho, Np, ctx.chunk,
            _ptr(u), _ptr(lr), _ptr(li), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci), _ptr(ckr), _ptr(cki),
            _ptr(gy), _ptr(ghlr), _ptr(ghli), _ptr(gu), _ptr(gBr), _ptr(gBi), _ptr(gCr), _ptr(gCi),
            _ptr(glr), _ptr(gli), _ptr(gh0r), _ptr(gh0i),
        )
        return gu, glr, gli, gBr, gBi, gCr, gCi, gh0r, gh0i, None, None


def _split_padded(z: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of complex ``z`` (..., N), zero-padded to (..., N + pad)."""
    zr = torch.view_as_real(z.resolve_conj())  # (..., N, 2)
    return F.pad(zr[..., 0], (0, pad)).contiguous(), F.pad(zr[..., 1], (0, pad)).contiguous()


def lru_fused(
    u: Tensor, lam: Tensor, B: Tensor, C: Tensor, h0: Tensor | None, chunk: int | None = None
) -> tuple[Tensor, Tensor]:
    """Fused LRU recurrence on CPU. Inputs are validated by :func:`shrinkssm.ops.lru_recurrence`.

    Parameters
    ----------
    u : (B, L, H_in) float32 or float64
    lam : (N,) complex64 or complex128 (matching precision)
    B : (N, H_in) complex
    C : (H_out, N) complex
    h0 : (B, N) complex or None
    chunk : int, optional
        Steps between stored states (default :data:`CHECKPOINT_CHUNK`).

    Returns
    -------
    y : (B, L, H_out) real
    h_last : (B, N) complex
    """
    _require()
    N = lam.shape[0]
    lanes = _lanes(u.dtype)
    pad = -N % lanes
    lr, li = _split_padded(lam, pad)  # (Np,)
    Br, Bi = _split_padded(B.transpose(0, 1), pad)  # (H_in, Np)
    Cr, Ci = _split_padded(C, pad)  # (H_out, Np)
    h0r, h0i = _split_padded(h0, pad) if h0 is not None else (None, None)  # (B, Np)
    y, hlr, hli = _LRUFused.apply(
        _flat(u), lr, li, Br, Bi, Cr, Ci, h0r, h0i, int(chunk or CHECKPOINT_CHUNK),
        torch.get_num_threads(),
    )
    h_last = torch.complex(hlr[:, :N], hli[:, :N])  # (B, N)
    return y, h_last


# ------------------------------------------------------------------------------------------------
# Scan only
# ------------------------------------------------------------------------------------------------


class _ScanNative(torch.autograd.Function):
    """h = scan(lam, b, h0) on interleaved complex tensors."""

    @staticmethod
    def forward(ctx, lam, b, h0, n_threads):
        # lam: (N,) complex; b: (B, L, N) complex; h0: (B, N) complex or None; contiguous.
        nb, L, N = b.shape
        h = torch.empty_like(b)
        _ext.scan_forward(_is_double(b), n_threads, nb, L, N, _ptr(lam), _ptr(b), _ptr(h0), _ptr(h))
        ctx.n_threads = n_threads
        ctx.save_for_backward(lam, h, h0)
        return h

    @staticmethod
    @once_differentiable
    def backward(ctx, gh):
        lam, h, h0 = ctx.saved_tensors
        nb, L, N = h.shape
        gh = _flat(gh)
        gb = torch.empty_like(h)
        glam = torch.empty_like(lam)
        gh0 = torch.empty_like(h0) if h0 is not None and ctx.needs_input_grad[2] else None
        _ext.scan_backward(
            _is_double(h), ctx.n_threads, nb, L, N, _ptr(lam), _ptr(h), _ptr(h0), _ptr(gh),
            _ptr(gb), _ptr(gh0), _ptr(glam),
        )
        return glam, gb, gh0, None


def scan_native(lam: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """Scan ``h[:, k] = lam * h[:, k-1] + b[:, k]`` on CPU with the C kernel.

    Parameters
    ----------
    lam : (N,) complex64 or complex128
    b : (B, L, N) complex, same dtype
    h0 : (B, N) complex or None (zeros)

    Returns
    -------
    h : (B, L, N) complex
    """
    _require()
    return _ScanNative.apply(
        _flat(lam), _flat(b), None if h0 is None else _flat(h0), torch.get_num_threads()
    )


def native_isa() -> str | None:
    """Instruction set the kernels use ("avx512", "avx2" or "base"), None if not loaded."""
    return None if _ext is None else _ext.isa()
