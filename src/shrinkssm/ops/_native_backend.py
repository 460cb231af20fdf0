"""Bridge between torch and the plain-C kernels of :mod:`shrinkssm.ops._native_scan`.

The extension takes raw data pointers of contiguous CPU tensors (it is built without torch
headers, see ``setup.py``), so this module owns everything the C code assumes: dtypes, contiguity,
resolved conjugate/negative bits and padded state sizes. It registers the kernels as PyTorch
custom operators (namespace ``shrinkssm``, :func:`torch.library.custom_op`), each with a fake
(meta) implementation for tracing and its hand-written backward registered as autograd formula,
so that ``torch.compile(..., fullgraph=True)`` and ``torch.export`` trace through them:

==============================  =====================================================================
``shrinkssm::lru_forward``      fused LRU recurrence (``B u``, scan, ``Re(C x)``), real/imag parts
``shrinkssm::lru_backward``     its backward (recomputes each checkpoint chunk)
``shrinkssm::scan_forward``     scan ``h[k] = lam h[k-1] + b[k]`` on ``view_as_real`` tensors
``shrinkssm::scan_backward``    its backward
==============================  =====================================================================

(the selective scan's ``shrinkssm::selective_forward`` / ``selective_backward`` live in
:mod:`shrinkssm.ops.selective_scan`, the SSD scan's ``shrinkssm::ssd_forward`` / ``ssd_backward``
in :mod:`shrinkssm.ops._ssd_native`). The operators read ``torch.get_num_threads()`` when they run,
so a compiled graph follows later changes of the thread count. In plain eager mode the entry
points below call the operators' implementations and autograd formulas without the dispatcher,
whose Python overhead was measurable (:mod:`shrinkssm.ops._op_dispatch`).

* :func:`lru_fused` runs the fused LRU recurrence (no ``(B, L, N)`` tensor in memory). Complex
  parameters are split into real and imaginary parts *outside* the operator by differentiable torch
  views, so the kernels only ever produce ordinary real gradients and torch maps them back to its
  complex convention.
* :func:`scan_native` runs the plain scan on interleaved complex tensors seen as real ``(..., 2)``
  tensors; the kernel's gradients (``dL/dRe + i dL/dIm`` in torch's convention) are exactly the
  gradients of those real views.

The maths of both backward passes is written out in :mod:`shrinkssm.ops.scan`. The instruction
set the kernels use is chosen here too: :func:`native_isas`, :func:`set_native_isa`,
:func:`native_isa`, and the environment variable :data:`ISA_ENV` (read by :func:`apply_isa_env`
when :mod:`shrinkssm.ops` is imported).
"""

from __future__ import annotations

import os
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from shrinkssm.ops._op_dispatch import OpSpec, call, checked, direct

__all__ = [
    "CHECKPOINT_CHUNK",
    "ISA_ENV",
    "apply_isa_env",
    "lru_fused",
    "lru_fused_real",
    "native_available",
    "native_isa",
    "native_isas",
    "native_load_error",
    "scan_native",
    "set_native_isa",
]

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

ISA_ENV = "SHRINKSSM_NATIVE_ISA"
"""Environment variable naming the instruction-set path to use (one of :func:`native_isas`),
read when :mod:`shrinkssm.ops` is imported."""


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


# ------------------------------------------------------------------------------------------------
# Instruction sets
# ------------------------------------------------------------------------------------------------


def native_isas() -> tuple[str, ...]:
    """The instruction-set paths compiled into the kernels *and* supported by this CPU, best last
    (e.g. ``("base", "avx2", "avx512")``); an empty tuple when the extension is not loaded."""
    return () if _ext is None else tuple(_ext.available_isas())


def native_isa() -> str | None:
    """The instruction-set path the kernels use now (one of :func:`native_isas`), None if the
    extension is not loaded."""
    return None if _ext is None else _ext.isa()


def set_native_isa(name: str) -> None:
    """Make every native kernel (LRU, scan, selective scan) use the path ``name``.

    The choice is process-wide and takes effect at the next kernel call (also inside compiled
    graphs). The best path is picked when the extension loads; forcing a lesser one is for
    measuring and testing.

    Raises
    ------
    ValueError
        ``name`` is not one of :func:`native_isas` (the message lists them), or the extension is
        not loaded.
    """
    allowed = native_isas()
    if _ext is None:
        raise ValueError(f"cannot select native instruction set {name!r}: the native kernels are not "
                         f"loaded ({_LOAD_ERROR})")
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"unknown or unsupported native instruction set {name!r}; allowed here: "
                         f"{', '.join(allowed)}")
    _ext.set_isa(name)


def apply_isa_env() -> None:
    """Apply :data:`ISA_ENV` if set (called when :mod:`shrinkssm.ops` is imported).

    An empty variable is ignored. A value that is not one of :func:`native_isas` (or any value when
    the extension is not loaded) gives a :class:`RuntimeWarning` naming the variable and the allowed
    values, and the best path stays in use.
    """
    raw = os.environ.get(ISA_ENV, "")
    value = raw.strip().lower()
    if not value:
        return
    allowed = native_isas()
    if value in allowed:
        _ext.set_isa(value)
        return
    if _ext is None:
        msg = f"{ISA_ENV}={raw!r} ignored: the native kernels are not loaded ({_LOAD_ERROR})"
    else:
        msg = (f"{ISA_ENV}={raw!r} is not a native kernel path of this build and CPU; allowed: "
               f"{', '.join(allowed)}; using {native_isa()!r}")
    warnings.warn(msg, RuntimeWarning, stacklevel=2)


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------


def _flat(t: Tensor) -> Tensor:
    """Contiguous tensor whose memory holds its values (no lazy conjugate / negative bit)."""
    return t.resolve_conj().resolve_neg().contiguous()


def _ptr(t: Tensor | None) -> int:
    return 0 if t is None else t.data_ptr()  # an empty output of new_empty(0) is 0 too: "absent"


def _opt(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.contiguous()


def _is_double(t: Tensor) -> int:
    return int(t.dtype in (torch.float64, torch.complex128))


def _lanes(dtype: torch.dtype) -> int:
    """Reals per 64-byte vector in the C kernels (state sizes are padded to a multiple)."""
    return 8 if dtype == torch.float64 else 16


def _n_chunks(L, chunk: int):
    return (L + chunk - 1) // chunk  # also for symbolic sizes


def _real_dtype(op: str, t: Tensor) -> bool:
    """True if ``t`` is float32 or float64 (the kernels' dtypes); ValueError naming ``op`` if not."""
    if t.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"shrinkssm::{op}: tensors must be float32 or float64, got {t.dtype}")
    return True


def _expect(op: str, dtype: torch.dtype, **tensors: tuple[Tensor | None, tuple]) -> None:
    """Check what an operator hands to C: every tensor (name=(tensor, shape)) a CPU tensor of
    ``dtype`` and that shape, so that no call of ``torch.ops.shrinkssm.*`` can make the kernels
    read or write out of bounds. Raises ValueError naming the operator and the argument."""
    for name, (t, shape) in tensors.items():
        if t is None:
            continue
        if t.dtype != dtype or t.device.type != "cpu" or tuple(t.shape) != tuple(shape):
            raise ValueError(f"shrinkssm::{op}: {name} must be a CPU {dtype} tensor of shape "
                             f"{tuple(shape)}, got {t.dtype} {tuple(t.shape)} on {t.device}")


# ------------------------------------------------------------------------------------------------
# Fused LRU recurrence: operators
# ------------------------------------------------------------------------------------------------


def _lru_forward_impl(
    u: Tensor, lr: Tensor, li: Tensor, Br: Tensor, Bi: Tensor, Cr: Tensor, Ci: Tensor,
    h0r: Tensor | None, h0i: Tensor | None, chunk: int, save: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Fused LRU forward on real/imaginary parts, states padded to Np (a multiple of the lanes).

    u: (B, L, H_in) real; lr, li: (Np,); Br, Bi: (H_in, Np); Cr, Ci: (H_out, Np); h0r, h0i:
    (B, Np) or None; one real dtype. Returns y (B, L, H_out), the last state's parts hlr, hli
    (B, Np), and the checkpoints ckr, cki (B, ceil(L / chunk), Np) for the backward when ``save``
    (else empty).
    """
    _require()
    u, lr, li, Br, Bi, Cr, Ci = (t.contiguous() for t in (u, lr, li, Br, Bi, Cr, Ci))
    h0r, h0i = _opt(h0r), _opt(h0i)
    nb, L, Hi = u.shape
    Ho, Np = Cr.shape
    y = u.new_empty(nb, L, Ho)
    hlr, hli = u.new_empty(nb, Np), u.new_empty(nb, Np)
    shape = (nb, _n_chunks(L, chunk), Np) if save else (0,)
    ckr, cki = u.new_empty(shape), u.new_empty(shape)
    _ext.lru_forward(
        _is_double(u), torch.get_num_threads(), nb, L, Hi, Ho, Np, chunk,
        _ptr(u), _ptr(lr), _ptr(li), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci),
        _ptr(h0r), _ptr(h0i), _ptr(y), _ptr(hlr), _ptr(hli), _ptr(ckr), _ptr(cki),
    )
    return y, hlr, hli, ckr, cki


def _check_lru_forward(u, lr, li, Br, Bi, Cr, Ci, h0r, h0i, chunk, save) -> None:
    nb, L, Hi = u.shape
    Ho, Np = Cr.shape
    if _real_dtype("lru_forward", u) and (Np % _lanes(u.dtype) or chunk < 1 or (h0r is None) != (h0i is None)):
        raise ValueError(f"shrinkssm::lru_forward: need Np a multiple of {_lanes(u.dtype)} (got {Np}), "
                         f"chunk >= 1 (got {chunk}) and both parts of h0 or neither")
    _expect("lru_forward", u.dtype, lr=(lr, (Np,)), li=(li, (Np,)), Br=(Br, (Hi, Np)), Bi=(Bi, (Hi, Np)),
            Cr=(Cr, (Ho, Np)), Ci=(Ci, (Ho, Np)), h0r=(h0r, (nb, Np)), h0i=(h0i, (nb, Np)))


_lru_forward = torch.library.custom_op("shrinkssm::lru_forward", checked(_check_lru_forward, _lru_forward_impl),
                                      mutates_args=(), device_types="cpu")


@_lru_forward.register_fake
def _(u, lr, li, Br, Bi, Cr, Ci, h0r, h0i, chunk, save):
    nb, L, _ = u.shape
    Ho, Np = Cr.shape
    shape = (nb, _n_chunks(L, chunk), Np) if save else (0,)
    return (u.new_empty(nb, L, Ho), u.new_empty(nb, Np), u.new_empty(nb, Np), u.new_empty(shape),
            u.new_empty(shape))


def _lru_backward_impl(
    gy: Tensor, ghlr: Tensor | None, ghli: Tensor | None, u: Tensor, lr: Tensor, li: Tensor,
    Br: Tensor, Bi: Tensor, Cr: Tensor, Ci: Tensor, ckr: Tensor, cki: Tensor, chunk: int,
    want_h0: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Backward of ``lru_forward`` from the gradients of y (B, L, H_out) and of the last state's
    parts (B, Np) or None (zero). Returns the gradients of u, lr, li, Br, Bi, Cr, Ci (their shapes)
    and of h0r, h0i: (B, Np) when ``want_h0``, else empty."""
    _require()
    gy = _flat(gy)
    u, lr, li, Br, Bi, Cr, Ci, ckr, cki = (t.contiguous() for t in (u, lr, li, Br, Bi, Cr, Ci, ckr, cki))
    if ghlr is None and ghli is None:
        ghlr = ghli = None
    else:
        ghlr = _flat(ghlr) if ghlr is not None else torch.zeros_like(ghli)
        ghli = _flat(ghli) if ghli is not None else torch.zeros_like(ghlr)
    nb, L, Hi = u.shape
    Ho, Np = Cr.shape
    gu = torch.empty_like(u)
    gBr, gBi = torch.empty_like(Br), torch.empty_like(Bi)
    gCr, gCi = torch.empty_like(Cr), torch.empty_like(Ci)
    glr, gli = torch.empty_like(lr), torch.empty_like(li)
    shape = (nb, Np) if want_h0 else (0,)
    gh0r, gh0i = u.new_empty(shape), u.new_empty(shape)
    _ext.lru_backward(
        _is_double(u), torch.get_num_threads(), nb, L, Hi, Ho, Np, chunk,
        _ptr(u), _ptr(lr), _ptr(li), _ptr(Br), _ptr(Bi), _ptr(Cr), _ptr(Ci), _ptr(ckr), _ptr(cki),
        _ptr(gy), _ptr(ghlr), _ptr(ghli), _ptr(gu), _ptr(gBr), _ptr(gBi), _ptr(gCr), _ptr(gCi),
        _ptr(glr), _ptr(gli), _ptr(gh0r), _ptr(gh0i),
    )
    return gu, glr, gli, gBr, gBi, gCr, gCi, gh0r, gh0i


def _check_lru_backward(gy, ghlr, ghli, u, lr, li, Br, Bi, Cr, Ci, ckr, cki, chunk, want_h0) -> None:
    nb, L, Hi = u.shape
    Ho, Np = Cr.shape
    if _real_dtype("lru_backward", u) and (Np % _lanes(u.dtype) or chunk < 1):
        raise ValueError(f"shrinkssm::lru_backward: need Np a multiple of {_lanes(u.dtype)} (got {Np}) "
                         f"and chunk >= 1 (got {chunk})")
    ck = (nb, _n_chunks(L, chunk), Np)
    _expect("lru_backward", u.dtype, gy=(gy, (nb, L, Ho)), ghlr=(ghlr, (nb, Np)), ghli=(ghli, (nb, Np)),
            lr=(lr, (Np,)), li=(li, (Np,)), Br=(Br, (Hi, Np)), Bi=(Bi, (Hi, Np)), Cr=(Cr, (Ho, Np)),
            Ci=(Ci, (Ho, Np)), ckr=(ckr, ck), cki=(cki, ck))


_lru_backward = torch.library.custom_op("shrinkssm::lru_backward", checked(_check_lru_backward, _lru_backward_impl),
                                       mutates_args=(), device_types="cpu")
LRU_BACKWARD = OpSpec(_lru_backward, _lru_backward_impl)


@_lru_backward.register_fake
def _(gy, ghlr, ghli, u, lr, li, Br, Bi, Cr, Ci, ckr, cki, chunk, want_h0):
    nb = u.shape[0]
    shape = (nb, Cr.shape[1]) if want_h0 else (0,)
    return (torch.empty_like(u), torch.empty_like(lr), torch.empty_like(li), torch.empty_like(Br),
            torch.empty_like(Bi), torch.empty_like(Cr), torch.empty_like(Ci), u.new_empty(shape),
            u.new_empty(shape))


def _lru_setup_context(ctx, inputs, output):
    u, lr, li, Br, Bi, Cr, Ci, h0r, h0i, chunk, save = inputs
    if not save:
        return  # called under no_grad or without differentiable inputs: backward never runs
    ctx.set_materialize_grads(False)  # no zero gradients for the checkpoints and unused outputs
    ctx.chunk, ctx.has_h0 = chunk, h0r is not None
    ctx.save_for_backward(u, lr, li, Br, Bi, Cr, Ci, output[3], output[4])


def _lru_backward_formula(ctx, gy, ghlr, ghli, _gckr, _gcki):
    if not hasattr(ctx, "chunk"):
        raise RuntimeError("shrinkssm::lru_forward was called with save=False; it cannot be "
                           "differentiated (call lru_fused, which sets save when needed)")
    u, lr, li, Br, Bi, Cr, Ci, ckr, cki = ctx.saved_tensors
    want_h0 = ctx.has_h0 and (ctx.needs_input_grad[7] or ctx.needs_input_grad[8])
    if gy is None:
        gy = u.new_zeros(*u.shape[:2], Cr.shape[0])
    gu, glr, gli, gBr, gBi, gCr, gCi, gh0r, gh0i = call(
        LRU_BACKWARD, gy, ghlr, ghli, u, lr, li, Br, Bi, Cr, Ci, ckr, cki, ctx.chunk, want_h0)
    if not want_h0:
        gh0r = gh0i = None
    return gu, glr, gli, gBr, gBi, gCr, gCi, gh0r, gh0i, None, None


_lru_forward.register_autograd(_lru_backward_formula, setup_context=_lru_setup_context)
LRU_FORWARD = OpSpec(_lru_forward, _lru_forward_impl, _lru_setup_context, _lru_backward_formula)


# ------------------------------------------------------------------------------------------------
# Fused LRU recurrence: entry point
# ------------------------------------------------------------------------------------------------


def _split_padded(z: Tensor, pad: int) -> tuple[Tensor, Tensor]:
    """Real and imaginary parts of complex ``z`` (..., N), zero-padded to (..., N + pad)."""
    zr = torch.view_as_real(z.resolve_conj())  # (..., N, 2)
    return F.pad(zr[..., 0], (0, pad)).contiguous(), F.pad(zr[..., 1], (0, pad)).contiguous()


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


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
    pad = -N % _lanes(u.dtype)
    lr, li = _split_padded(lam, pad)  # (Np,)
    Br, Bi = _split_padded(B.transpose(0, 1), pad)  # (H_in, Np)
    Cr, Ci = _split_padded(C, pad)  # (H_out, Np)
    h0r, h0i = _split_padded(h0, pad) if h0 is not None else (None, None)  # (B, Np)
    u = _flat(u)
    save = _needs_grad(u, lr, li, Br, Bi, Cr, Ci, h0r, h0i)
    y, hlr, hli, _, _ = call(LRU_FORWARD, u, lr, li, Br, Bi, Cr, Ci, h0r, h0i,
                             int(chunk or CHECKPOINT_CHUNK), save)
    h_last = torch.complex(hlr[:, :N], hli[:, :N])  # (B, N)
    return y, h_last


def lru_fused_real(u: Tensor, lr: Tensor, li: Tensor, Br: Tensor, Bi: Tensor, Cr: Tensor, Ci: Tensor,
                   chunk: int | None = None) -> Tensor:
    """The fused LRU recurrence from the real arrays the kernel takes, zero initial state.

    For a layer that builds its parameter maps as real arrays directly (:class:`shrinkssm.nn.LRU`),
    which saves the complex round trip of :func:`lru_fused`. ``Np`` is the state size padded to
    :func:`_lanes` (padding entries zero).

    Parameters
    ----------
    u : (B, L, H_in) float32 or float64
    lr, li : (Np,) real and imaginary parts of lam, dtype of ``u``
    Br, Bi : (H_in, Np) real and imaginary parts of B transposed
    Cr, Ci : (H_out, Np) real and imaginary parts of C

    Returns
    -------
    y : (B, L, H_out) ``Re(C x[k])`` (differentiable in every argument)
    """
    _require()
    arrays = [_flat(t) for t in (lr, li, Br, Bi, Cr, Ci)]
    u = _flat(u)
    save = _needs_grad(u, *arrays)
    return call(LRU_FORWARD, u, *arrays, None, None, int(chunk or CHECKPOINT_CHUNK), save)[0]


def lru_params_available(tensors: tuple[Tensor, ...]) -> bool:
    """The C parameter map (:func:`lru_param_arrays`) can take ``tensors``: extension loaded (and
    built from these sources), eager mode, contiguous CPU tensors of one float dtype."""
    if _ext is None or not hasattr(_ext, "lru_params_forward"):
        return False
    dtype = tensors[0].dtype
    return (dtype in (torch.float32, torch.float64) and direct(tensors)
            and all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors))


def lru_param_arrays(nu_log: Tensor, theta_log: Tensor, gamma_log: Tensor, B_re: Tensor, B_im: Tensor,
                     C_re: Tensor, C_im: Tensor, pad: int) -> tuple[Tensor, ...]:
    """The LRU's parameter map by the C kernel (no autograd; see ``_native/lru_params.c``).

    ``nu_log, theta_log, gamma_log: (N,)``, ``B_re, B_im: (N, H_in)``, ``C_re, C_im: (H_out, N)``
    -> ``lr, li: (Np,)``, ``Br, Bi: (H_in, Np)``, ``Cr, Ci: (H_out, Np)`` with ``Np = N + pad``
    (padding zero): ``lr + i li = exp(-exp(nu_log) + i exp(theta_log))``, ``Br + i Bi =
    (exp(gamma_log) (B_re + i B_im))^T``, ``Cr + i Ci = C_re + i C_im``."""
    n, h_in = B_re.shape
    h_out, np_ = C_re.shape[0], n + pad
    out = (nu_log.new_empty(np_), nu_log.new_empty(np_), B_re.new_empty(h_in, np_),
           B_re.new_empty(h_in, np_), C_re.new_empty(h_out, np_), C_re.new_empty(h_out, np_))
    _ext.lru_params_forward(_is_double(nu_log), n, np_, h_in, h_out,
                            *(t.data_ptr() for t in (nu_log, theta_log, gamma_log, B_re, B_im, C_re, C_im)),
                            *(t.data_ptr() for t in out))
    return out


def lru_param_arrays_backward(nu_log: Tensor, theta_log: Tensor, gamma_log: Tensor, B_re: Tensor,
                              B_im: Tensor, grads: tuple[Tensor | None, ...], h_out: int) -> tuple[Tensor, ...]:
    """Gradients of :func:`lru_param_arrays` with respect to its seven inputs, from the gradients
    of its six outputs (``None`` counts as zeros; others contiguous, dtype of the parameters)."""
    n, h_in = B_re.shape
    grads = tuple(None if g is None else _flat(g) for g in grads)
    np_ = next((g.shape[-1] for g in grads if g is not None), n)
    out = (nu_log.new_empty(n), nu_log.new_empty(n), nu_log.new_empty(n), B_re.new_empty(n, h_in),
           B_re.new_empty(n, h_in), B_re.new_empty(h_out, n), B_re.new_empty(h_out, n))
    _ext.lru_params_backward(_is_double(nu_log), n, np_, h_in, h_out,
                             *(t.data_ptr() for t in (nu_log, theta_log, gamma_log, B_re, B_im)),
                             *(_ptr(g) for g in grads), *(t.data_ptr() for t in out))
    return out


# ------------------------------------------------------------------------------------------------
# Scan only
# ------------------------------------------------------------------------------------------------


def _scan_forward_impl(lam: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    """h = scan(lam, b, h0) on complex tensors seen as real: lam (N, 2), b (B, L, N, 2), h0
    (B, N, 2) or None (the last axis is (re, im)); returns h (B, L, N, 2)."""
    _require()
    lam, b, h0 = lam.contiguous(), b.contiguous(), _opt(h0)
    nb, L, N, _ = b.shape
    h = torch.empty_like(b)
    _ext.scan_forward(_is_double(b), torch.get_num_threads(), nb, L, N, _ptr(lam), _ptr(b), _ptr(h0),
                      _ptr(h))
    return h


def _check_scan_forward(lam, b, h0) -> None:
    nb, L, N, _ = b.shape
    _real_dtype("scan_forward", b)
    _expect("scan_forward", b.dtype, lam=(lam, (N, 2)), b=(b, (nb, L, N, 2)), h0=(h0, (nb, N, 2)))


_scan_forward = torch.library.custom_op("shrinkssm::scan_forward", checked(_check_scan_forward, _scan_forward_impl),
                                       mutates_args=(), device_types="cpu")


@_scan_forward.register_fake
def _(lam, b, h0):
    return torch.empty_like(b)


def _scan_backward_impl(lam: Tensor, h: Tensor, h0: Tensor | None, gh: Tensor, want_h0: bool
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Backward of ``scan_forward`` from its output h and the gradient gh (both (B, L, N, 2)).
    Returns the gradients of b (B, L, N, 2), of h0 ((B, N, 2) when ``want_h0``, else empty) and
    of lam (N, 2)."""
    _require()
    lam, h, gh, h0 = lam.contiguous(), h.contiguous(), gh.contiguous(), _opt(h0)
    nb, L, N, _ = h.shape
    gb = torch.empty_like(h)
    glam = torch.empty_like(lam)
    gh0 = h.new_empty((nb, N, 2) if want_h0 else (0,))
    _ext.scan_backward(_is_double(h), torch.get_num_threads(), nb, L, N, _ptr(lam), _ptr(h), _ptr(h0),
                       _ptr(gh), _ptr(gb), _ptr(gh0), _ptr(glam))
    return gb, gh0, glam


def _check_scan_backward(lam, h, h0, gh, want_h0) -> None:
    nb, L, N, _ = h.shape
    _real_dtype("scan_backward", h)
    _expect("scan_backward", h.dtype, lam=(lam, (N, 2)), h=(h, (nb, L, N, 2)), gh=(gh, (nb, L, N, 2)),
            h0=(h0, (nb, N, 2)))


_scan_backward = torch.library.custom_op("shrinkssm::scan_backward",
                                        checked(_check_scan_backward, _scan_backward_impl), mutates_args=(),
                                        device_types="cpu")
SCAN_BACKWARD = OpSpec(_scan_backward, _scan_backward_impl)


@_scan_backward.register_fake
def _(lam, h, h0, gh, want_h0):
    nb, _, N, _ = h.shape
    return torch.empty_like(h), h.new_empty((nb, N, 2) if want_h0 else (0,)), torch.empty_like(lam)


def _scan_setup_context(ctx, inputs, output):
    lam, _b, h0 = inputs
    ctx.save_for_backward(lam, output, h0)


def _scan_backward_formula(ctx, gh):
    lam, h, h0 = ctx.saved_tensors
    want_h0 = h0 is not None and ctx.needs_input_grad[2]
    gb, gh0, glam = call(SCAN_BACKWARD, lam, h, h0, gh, want_h0)
    return glam, gb, gh0 if want_h0 else None


_scan_forward.register_autograd(_scan_backward_formula, setup_context=_scan_setup_context)
SCAN_FORWARD = OpSpec(_scan_forward, _scan_forward_impl, _scan_setup_context, _scan_backward_formula)


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
    real = lambda t: None if t is None else torch.view_as_real(_flat(t))  # noqa: E731
    return torch.view_as_complex(call(SCAN_FORWARD, real(lam), real(b), real(h0)))
