"""The cheap parts of an SSM block, fused: batch norm, and the tail after the mixer in one pass.

After its mixer (LRU or selective SSM) a block of :mod:`shrinkssm.nn.model` computes, at every
position, with ``y`` the mixer's output without its skip term and ``u`` the mixer's input::

    z = y + D * u                   (D: (H,) elementwise; omitted when D is None)
    out = x + GLU(W GELU(z) + bias)  GLU(v) = v[:H] * sigmoid(v[H:]),  W: (2H, H), bias: (2H,)

(GELU is the exact, erf-based one; ``x`` is the block's residual input). :func:`glu_block` runs it
with the native kernel of ``_native/block.c`` on CPU (one pass forward; one pass backward that
recomputes GELU and the linear layer from ``y`` and ``u``, so nothing but the inputs is kept for
the backward), and :func:`glu_block_ref` is the plain-torch formulation it is tested against.

:func:`batch_norm_rows` is the block's training-mode batch norm over the rows of an ``(M, H)``
array (two passes forward, two backward, statistics accumulated in double), tested against
``torch.nn.functional.batch_norm``. :func:`encode_norm_fork` fuses a one-channel encoder into the
batch norm after it (its statistics from those of the input; its backward never forms the gradient
of the encoder's output).

Shapes: ``x, y, u: (..., H)`` real (float32 or float64, one dtype), any leading dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from shrinkssm.ops._op_dispatch import direct

__all__ = ["FUSED_BLOCK_MAX_WIDTH", "batch_norm_fork", "batch_norm_rows", "encode_norm_fork",
           "fused_block_available", "glu_block", "glu_block_mean", "glu_block_ref", "linear"]

try:
    from shrinkssm.ops import _native_scan as _ext
except ImportError:  # not compiled: glu_block falls back to the reference
    _ext = None
if _ext is not None and not all(hasattr(_ext, name) for name in
                                 ("block_forward", "bn_forward", "enc1_forward", "enc_bn_forward")):
    _ext = None  # an extension built from older sources than this module: the torch paths run


def _native_ok(tensors: tuple) -> bool:
    """The kernels of this module can take ``tensors`` (None entries skipped): the extension is
    loaded, eager mode (:func:`~shrinkssm.ops._op_dispatch.direct`), CPU tensors of one dtype,
    float32 or float64. Each caller adds its shape conditions."""
    tensors = tuple(t for t in tensors if t is not None)
    dtype = tensors[0].dtype
    return (_ext is not None and dtype in (torch.float32, torch.float64) and direct(tensors)
            and all(t.device.type == "cpu" and t.dtype == dtype for t in tensors))

_increment_version = getattr(torch.autograd.graph, "increment_version", None)

FUSED_BLOCK_MAX_WIDTH = 24
"""Widest H for which :func:`glu_block` uses the kernel; wider blocks take the torch path, whose
GEMM library does the linear layer better. Measured with ``benchmarks/step_cost.py --widths``
(batch 50, length 784, forward + backward, one thread, AVX-512): the kernel 2.3x faster than the
torch path at H = 8, 2.0x at 16, 1.1x at 24, 0.9x at 32."""


def fused_block_available() -> bool:
    """True if the compiled kernel is loaded."""
    return _ext is not None


def glu_block_ref(x: Tensor, y: Tensor, u: Tensor | None, D: Tensor | None, weight: Tensor,
                  bias: Tensor) -> Tensor:
    """``x + GLU(Linear(GELU(y + D * u)))`` in plain torch (the formulation of the model)."""
    z = y if D is None else torch.addcmul(y, u, D)
    return x + F.glu(F.linear(F.gelu(z), weight, bias), dim=-1)


def _row_broadcast(g: Tensor) -> Tensor | None:
    """The (B, H) rows of a gradient ``g: (B, L, H)`` that is a broadcast over L (strides
    ``(H, 0, 1)``: what the backward of a sum or mean over L hands on), else None."""
    if g.ndim != 3 or g.shape[1] < 2 or g.stride(1) != 0:
        return None
    rows = g.select(1, 0)
    return rows if rows.is_contiguous() else None


def _grad_rows(g: Tensor) -> tuple[Tensor, int]:
    """``(array, rep)`` for a kernel taking a gradient of shape (..., H): the (B, H) rows and
    ``rep = L`` when ``g`` is a broadcast over L (:func:`_row_broadcast`, no copy), else
    ``(g.contiguous(), 0)``."""
    rows = _row_broadcast(g)
    return (g.contiguous(), 0) if rows is None else (rows, g.shape[1])


def _save_tail(ctx, n_threads: int, y: Tensor, u: Tensor | None, D: Tensor | None, weight: Tensor,
               bias: Tensor) -> None:
    """What :func:`_block_backward` reads: the tail's inputs (x is not needed) and its threads."""
    ctx.n_threads, ctx.has_d = n_threads, D is not None
    ctx.save_for_backward(y, u, D, weight, bias)


def _block_backward(ctx, M: int, H: int, go: Tensor, rep: int) -> tuple:
    """``(gy, gu, gD, gW, gbias)`` of the tail saved in ``ctx`` (y, u, D, weight, bias) from the
    output gradient ``go``: (M, H), or (M / rep, H) rows repeated over runs of ``rep`` positions."""
    y, u, D, weight, bias = ctx.saved_tensors
    gy = torch.empty_like(y)
    gu = torch.empty_like(y) if ctx.has_d else None
    gD = torch.empty_like(D) if ctx.has_d else None
    gW, gb = torch.empty_like(weight), torch.empty_like(bias)
    _ext.block_backward(int(y.dtype == torch.float64), ctx.n_threads, M, H, y.data_ptr(),
                        u.data_ptr() if ctx.has_d else 0, D.data_ptr() if ctx.has_d else 0,
                        weight.data_ptr(), bias.data_ptr(), go.data_ptr(), rep, gy.data_ptr(),
                        gu.data_ptr() if ctx.has_d else 0, gD.data_ptr() if ctx.has_d else 0,
                        gW.data_ptr(), gb.data_ptr())
    return gy, gu, gD, gW, gb


class _GLUBlock(torch.autograd.Function):
    """Native forward and backward on contiguous (..., H) arrays (M = all leading dimensions).
    A gradient of the output broadcast over dimension 1 of a (B, L, H) output (mean pooling) is
    read per batch row, without materialising it, and handed on as the residual's gradient."""

    @staticmethod
    def forward(ctx, x, y, u, D, weight, bias, n_threads):
        H = y.shape[-1]
        M = y.numel() // H
        out = torch.empty_like(y)
        dbl = int(y.dtype == torch.float64)
        _ext.block_forward(dbl, n_threads, M, H, y.data_ptr(), 0 if D is None else u.data_ptr(),
                           0 if D is None else D.data_ptr(), weight.data_ptr(), bias.data_ptr(),
                           x.data_ptr(), out.data_ptr())
        _save_tail(ctx, n_threads, y, u, D, weight, bias)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gout):
        H = gout.shape[-1]
        M = gout.numel() // H
        go, rep = _grad_rows(gout)
        if rep == 0:
            gout = go
        return (gout, *_block_backward(ctx, M, H, go, rep), None)


def _use_kernel(x: Tensor, y: Tensor, u: Tensor | None, D: Tensor | None, weight: Tensor,
                bias: Tensor) -> bool:
    h = y.shape[-1]
    return (h <= FUSED_BLOCK_MAX_WIDTH and _native_ok((y, x, u, D, weight, bias))
            and x.shape == y.shape and (u is None or u.shape == y.shape)
            and tuple(weight.shape) == (2 * h, h) and tuple(bias.shape) == (2 * h,)
            and (D is None or tuple(D.shape) == (h,)) and y.numel() > 0)


def glu_block(x: Tensor, y: Tensor, u: Tensor | None, D: Tensor | None, weight: Tensor,
              bias: Tensor) -> Tensor:
    """``out = x + GLU(W GELU(y + D * u) + bias)``, differentiable in every tensor argument.

    Parameters
    ----------
    x : (..., H) real
        The residual (the block's input).
    y : (..., H) real, same shape and dtype
        The mixer's output without its skip term.
    u : (..., H) real or None
        The mixer's input (the skip term's argument); ignored when ``D`` is None.
    D : (H,) real or None
        The elementwise skip term; None for none.
    weight : (2H, H), bias : (2H,)
        The GLU's linear layer (``torch.nn.Linear(H, 2H)``): the first H outputs are the values,
        the last H the gates.

    Returns
    -------
    out : (..., H), the dtype of ``y``.

    The native kernel runs for CPU tensors of one dtype (float32 or float64) with
    ``H <= FUSED_BLOCK_MAX_WIDTH``; anything else takes :func:`glu_block_ref`, the same maths.
    In float32 the kernel's GELU and sigmoid agree with torch's to a few units in the last place.
    """
    if D is not None and u is None:
        raise ValueError("glu_block: a skip term D needs the mixer's input u")
    if not _use_kernel(x, y, u, D, weight, bias):
        return glu_block_ref(x, y, u, D, weight, bias)
    uc = u.contiguous() if D is not None else None
    return _GLUBlock.apply(x.contiguous(), y.contiguous(), uc, None if D is None else D.contiguous(),
                           weight.contiguous(), bias.contiguous(), torch.get_num_threads())


class _GLUBlockMean(torch.autograd.Function):
    """:class:`_GLUBlock` followed by the mean over dimension 1 of (B, L, H), in one pass: the
    kernel sums each batch row's L outputs (in double) instead of writing them. The backward is
    the GLU block's with the pooled gradient read per batch row (``go_rep = L``); the residual's
    gradient is that row broadcast over L (a stride-0 view, as a mean's backward hands on)."""

    @staticmethod
    def forward(ctx, x, y, u, D, weight, bias, n_threads):
        nb, L, H = y.shape
        pooled = y.new_empty(nb, H)
        _ext.block_pool_forward(int(y.dtype == torch.float64), n_threads, nb * L, H, L, y.data_ptr(),
                                0 if D is None else u.data_ptr(), 0 if D is None else D.data_ptr(),
                                weight.data_ptr(), bias.data_ptr(), x.data_ptr(), pooled.data_ptr())
        _save_tail(ctx, n_threads, y, u, D, weight, bias)
        ctx.shape = (nb, L, H)
        return pooled

    @staticmethod
    @once_differentiable
    def backward(ctx, gpooled):
        nb, L, H = ctx.shape
        go = (gpooled * (1.0 / L)).contiguous()                                   # (B, H)
        return (go[:, None, :].expand(nb, L, H), *_block_backward(ctx, nb * L, H, go, L), None)


def glu_block_mean(x: Tensor, y: Tensor, u: Tensor | None, D: Tensor | None, weight: Tensor,
                   bias: Tensor) -> Tensor:
    """``glu_block(x, y, u, D, weight, bias).mean(1)`` for (B, L, H) inputs: ``(B, H)``.

    The mean pooling of a classifier's last block. With the native kernel (the conditions of
    :func:`glu_block`) the (B, L, H) output is never written: each batch row's outputs are summed
    as they are computed (in double, rounded once). Otherwise ``glu_block(...).sum(1) * (1 / L)``.
    """
    if y.ndim != 3:
        raise ValueError(f"glu_block_mean: y must be (B, L, H), got shape {tuple(y.shape)}")
    if D is not None and u is None:
        raise ValueError("glu_block: a skip term D needs the mixer's input u")
    if not (_use_kernel(x, y, u, D, weight, bias) and hasattr(_ext, "block_pool_forward")):
        return glu_block(x, y, u, D, weight, bias).sum(1) * (1.0 / y.shape[1])
    uc = u.contiguous() if D is not None else None
    return _GLUBlockMean.apply(x.contiguous(), y.contiguous(), uc, None if D is None else D.contiguous(),
                               weight.contiguous(), bias.contiguous(), torch.get_num_threads())


def _bn_forward(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None,
                running_var: Tensor | None, momentum: float, eps: float, n_threads: int
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Native forward: (v, mean, invstd); the running statistics are updated in place, and their
    version counters bumped as a torch in-place operation would."""
    M, H = x.shape
    v = torch.empty_like(x)
    mean, invstd = x.new_empty(H), x.new_empty(H)
    _ext.bn_forward(int(x.dtype == torch.float64), n_threads, M, H, x.data_ptr(), weight.data_ptr(),
                    bias.data_ptr(), 0 if running_mean is None else running_mean.data_ptr(),
                    0 if running_var is None else running_var.data_ptr(), float(momentum),
                    float(eps), v.data_ptr(), mean.data_ptr(), invstd.data_ptr())
    for buf in (running_mean, running_var):
        if buf is not None and _increment_version is not None:
            _increment_version(buf)
    return v, mean, invstd


class _BatchNormRows(torch.autograd.Function):
    """Native training-mode batch norm of a contiguous (M, H) array."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, n_threads):
        v, mean, invstd = _bn_forward(x, weight, bias, running_mean, running_var, momentum, eps,
                                      n_threads)
        ctx.n_threads = n_threads
        ctx.save_for_backward(x, weight, mean, invstd)
        return v

    @staticmethod
    @once_differentiable
    def backward(ctx, gv):
        x, weight, mean, invstd = ctx.saved_tensors
        M, H = x.shape
        gv = gv.contiguous()
        gx, gw, gb = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
        _ext.bn_backward(int(x.dtype == torch.float64), ctx.n_threads, M, H, x.data_ptr(), gv.data_ptr(),
                         0, 0, 0, weight.data_ptr(), mean.data_ptr(), invstd.data_ptr(), gx.data_ptr(),
                         gw.data_ptr(), gb.data_ptr())
        return gx, gw, gb, None, None, None, None, None


class _BatchNormFork(torch.autograd.Function):
    """Native batch norm whose output feeds two consumers and whose input feeds a third (the
    residual): returns (v, v_again, x_again) and sums the three gradients inside its backward.
    ``x``: contiguous (..., H), normalised over all leading dimensions; a residual gradient
    broadcast over dimension 1 of (B, L, H) is read per batch row (no copy)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_mean, running_var, momentum, eps, n_threads):
        v, mean, invstd = _bn_forward(x.view(-1, x.shape[-1]), weight, bias, running_mean,
                                      running_var, momentum, eps, n_threads)
        ctx.n_threads = n_threads
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, mean, invstd)
        v = v.view_as(x)
        return v, v.view_as(v), x.view_as(x)

    @staticmethod
    @once_differentiable
    def backward(ctx, gv, gv2, gres):
        x, weight, mean, invstd = ctx.saved_tensors
        H = x.shape[-1]
        M = x.numel() // H
        rep = 0
        if gres is not None and gv is None and gv2 is None:
            gres = gres.contiguous()
        elif gres is not None:
            gres, rep = _grad_rows(gres)
        grads = [None if g is None else g.contiguous() for g in (gv, gv2)] + [gres]
        if grads[0] is None:
            grads[0], grads[1] = grads[1], None
        if grads[0] is None:                                # only the residual was used
            zero = torch.zeros_like(weight)
            return grads[2], zero, zero.clone(), None, None, None, None, None
        gx, gw, gb = torch.empty_like(x), torch.empty_like(weight), torch.empty_like(weight)
        ptr = [0 if g is None else g.data_ptr() for g in grads]
        _ext.bn_backward(int(x.dtype == torch.float64), ctx.n_threads, M, H, x.data_ptr(), ptr[0], ptr[1],
                         ptr[2], rep, weight.data_ptr(), mean.data_ptr(), invstd.data_ptr(), gx.data_ptr(),
                         gw.data_ptr(), gb.data_ptr())
        return gx, gw, gb, None, None, None, None, None


def _bn_kernel_applies(x, weight, bias, running_mean, running_var) -> bool:
    return not (not _native_ok((x, weight, bias, running_mean, running_var)) or x.ndim != 2
                or x.numel() == 0 or weight.shape != (x.shape[1],) or bias.shape != (x.shape[1],)
                or any(t is not None and (t.shape != (x.shape[1],) or not t.is_contiguous())
                       for t in (running_mean, running_var)))


def batch_norm_fork(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None,
                    running_var: Tensor | None, momentum: float = 0.1, eps: float = 1e-5
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`batch_norm_rows` for a block: ``(v, v, x)`` as three outputs.

    ``x: (..., H)``, normalised over all leading dimensions (as the rows of ``x.reshape(-1, H)``);
    the outputs have the shape of ``x``. In a block the normalised ``v`` feeds the mixer and the
    skip term, and ``x`` the residual; with one output per consumer the backward receives the
    three gradients separately and sums them inside its own passes, instead of autograd adding
    two full ``(M, H)`` arrays (and a residual gradient that is a broadcast over dimension 1 of a
    (B, L, H) ``x``, as mean pooling hands back, is read per batch row). Values and gradients are
    those of ``(batch_norm_rows(x.reshape(-1, H), ...).view_as(x),) * 2 + (x,)``.
    """
    flat = x.reshape(-1, x.shape[-1]) if x.ndim >= 2 else x
    if not _bn_kernel_applies(flat, weight, bias, running_mean, running_var):
        v = F.batch_norm(flat, running_mean, running_var, weight, bias, True, momentum, eps)
        v = v.view(x.shape) if x.ndim >= 2 else v
        return v, v, x
    return _BatchNormFork.apply(x.contiguous(), weight.contiguous(), bias.contiguous(), running_mean,
                                running_var, momentum, eps, torch.get_num_threads())


def batch_norm_rows(x: Tensor, weight: Tensor, bias: Tensor, running_mean: Tensor | None,
                    running_var: Tensor | None, momentum: float = 0.1, eps: float = 1e-5) -> Tensor:
    """Training-mode batch norm over the rows of ``x: (M, H)``: statistics over M per channel.

    Equals ``F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)``,
    updates of the running statistics included (momentum towards the batch mean and the unbiased
    batch variance, written in place by the kernel); native on CPU for float32 / float64, that
    call otherwise.
    """
    if not _bn_kernel_applies(x, weight, bias, running_mean, running_var):
        return F.batch_norm(x, running_mean, running_var, weight, bias, True, momentum, eps)
    return _BatchNormRows.apply(x.contiguous(), weight.contiguous(), bias.contiguous(), running_mean,
                                running_var, momentum, eps, torch.get_num_threads())


class _LinearOneInput(torch.autograd.Function):
    """y = x w^T + b for one input channel: the native kernels of ``_native/block.c`` (one pass
    forward, one backward that sums both parameter gradients) for contiguous float32 / float64
    CPU tensors, a broadcast multiply-add and two reductions otherwise."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.native = _enc1_applies(x, weight, bias)
        if not ctx.native:
            return torch.addcmul(bias, x, weight.T)
        h = weight.shape[0]
        out = x.new_empty(*x.shape[:-1], h)
        _ext.enc1_forward(int(x.dtype == torch.float64), x.numel(), h, x.data_ptr(), weight.data_ptr(),
                          bias.data_ptr(), out.data_ptr())
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, weight = ctx.saved_tensors
        h = weight.shape[0]
        g2 = gy.reshape(-1, h)                                # (M, H_out)
        if ctx.native and g2.is_contiguous():
            gx = torch.empty_like(x) if ctx.needs_input_grad[0] else None
            gw, gb = torch.empty_like(weight), torch.empty(h, dtype=x.dtype)
            _ext.enc1_backward(int(x.dtype == torch.float64), x.numel(), h, x.data_ptr(), weight.data_ptr(),
                               g2.data_ptr(), 0 if gx is None else gx.data_ptr(), gw.data_ptr(), gb.data_ptr())
            return gx, gw, gb
        gx = gy @ weight if ctx.needs_input_grad[0] else None
        gw = (g2.T @ x.reshape(-1, 1)) if ctx.needs_input_grad[1] else None    # (H_out, 1)
        gb = g2.sum(0) if ctx.needs_input_grad[2] else None
        return gx, gw, gb


def _enc1_applies(x: Tensor, weight: Tensor, bias: Tensor) -> bool:
    return (_native_ok((x, weight, bias)) and x.numel() > 0
            and all(t.is_contiguous() for t in (x, weight, bias)))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.linear(x, weight, bias)``; with one input channel (``weight: (H_out, 1)``, e.g. the
    encoder of pixel sequences) one pass of a native kernel instead of a rank-1 GEMM, and one pass
    for both parameter gradients (the sMNIST encoder: 0.36 ms -> see ``benchmarks/step_cost.py``)."""
    if (bias is None or weight.shape[1] != 1 or x.shape[-1] != 1 or x.dtype != weight.dtype
            or not direct((x, weight, bias))):
        return F.linear(x, weight, bias)
    return _LinearOneInput.apply(x, weight, bias)


# ---------------------------------------------------------------------------------------------
# the one-channel encoder and the block's batch norm, fused
# ---------------------------------------------------------------------------------------------

class _EncodeNormFork(torch.autograd.Function):
    """``h = x w^T + b`` (x: contiguous (..., 1), no gradient) and the native batch norm of h over
    all leading dimensions, as ``(v, v_again, h)`` (see :func:`encode_norm_fork`)."""

    @staticmethod
    def forward(ctx, x, ew, eb, bw, bb, running_mean, running_var, momentum, eps):
        H = ew.shape[0]
        shape = (*x.shape[:-1], H)
        h, v = x.new_empty(shape), x.new_empty(shape)
        mean, invstd = x.new_empty(H), x.new_empty(H)
        _ext.enc_bn_forward(int(x.dtype == torch.float64), x.numel(), H, x.data_ptr(), ew.data_ptr(),
                            eb.data_ptr(), bw.data_ptr(), bb.data_ptr(),
                            0 if running_mean is None else running_mean.data_ptr(),
                            0 if running_var is None else running_var.data_ptr(), float(momentum),
                            float(eps), h.data_ptr(), v.data_ptr(), mean.data_ptr(), invstd.data_ptr())
        for buf in (running_mean, running_var):
            if buf is not None and _increment_version is not None:
                _increment_version(buf)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, ew, bw, invstd)
        return v, v.view_as(v), h

    @staticmethod
    @once_differentiable
    def backward(ctx, gv, gv2, gres):
        x, ew, bw, invstd = ctx.saved_tensors
        H, M = ew.shape[0], x.numel()
        if gv is None:
            gv, gv2 = gv2, None
        if gv is None and gres is None:
            return (None,) * 9
        gv = torch.zeros(*x.shape[:-1], H, dtype=x.dtype) if gv is None else gv.contiguous()
        gv2 = None if gv2 is None else gv2.contiguous()
        gres, rep = (None, 0) if gres is None else _grad_rows(gres)
        gew, geb, gbw, gbb = (torch.empty_like(ew), torch.empty(H, dtype=x.dtype), torch.empty_like(bw),
                              torch.empty_like(bw))
        _ext.enc_bn_backward(int(x.dtype == torch.float64), M, H, x.data_ptr(), gv.data_ptr(),
                             0 if gv2 is None else gv2.data_ptr(), 0 if gres is None else gres.data_ptr(),
                             rep, ew.data_ptr(), bw.data_ptr(), invstd.data_ptr(), gew.data_ptr(),
                             geb.data_ptr(), gbw.data_ptr(), gbb.data_ptr())
        return None, gew, geb, gbw, gbb, None, None, None, None


def _enc_norm_applies(x, ew, eb, bw, bb, running_mean, running_var) -> bool:
    h = ew.shape[0] if ew.ndim == 2 else -1
    return (_native_ok((x, ew, eb, bw, bb, running_mean, running_var))
            and x.ndim >= 2 and x.shape[-1] == 1 and x.numel() > 0 and not x.requires_grad
            and tuple(ew.shape) == (h, 1) and 1 <= h <= 4096
            and all(t.shape == (h,) for t in (eb, bw, bb))
            and all(t is None or (t.shape == (h,) and t.is_contiguous()) for t in (running_mean, running_var))
            # one pass, one thread: where the batch norm alone would run threaded, keep it
            and (torch.get_num_threads() == 1 or x.numel() * h < 4e6))


def encode_norm_fork(x: Tensor, enc_weight: Tensor, enc_bias: Tensor, weight: Tensor, bias: Tensor,
                     running_mean: Tensor | None, running_var: Tensor | None, momentum: float = 0.1,
                     eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """A one-channel encoder and the batch norm of a block after it: ``(v, v, h)`` with
    ``h = linear(x, enc_weight, enc_bias)`` and ``(v, v, h) = batch_norm_fork(h, weight, bias, ...)``.

    Parameters
    ----------
    x : (..., 1) real, no gradient (data)
    enc_weight : (H, 1), enc_bias : (H,)
        The encoder (``torch.nn.Linear(1, H)``).
    weight, bias : (H,)
        The batch norm's affine parameters; ``running_mean, running_var: (H,)`` or None, updated
        in place as by :func:`batch_norm_rows`.

    Returns
    -------
    v, v, h : (..., H), the dtype of ``x``.

    Native (CPU, float32 / float64, one thread or small inputs): the statistics of h are those of
    x mapped per channel (one pass over x instead of one over h), h and v are written in one
    pass, and the backward computes the encoder's and the norm's parameter gradients from sums
    over one pass that reads the norm's output gradients and x; the gradient of h is never
    formed. Otherwise (or when x needs a gradient) the two operations, the same maths.
    """
    if not _enc_norm_applies(x, enc_weight, enc_bias, weight, bias, running_mean, running_var):
        return batch_norm_fork(linear(x, enc_weight, enc_bias), weight, bias, running_mean, running_var,
                               momentum, eps)
    return _EncodeNormFork.apply(x.contiguous(), enc_weight.contiguous(), enc_bias.contiguous(),
                                 weight.contiguous(), bias.contiguous(), running_mean, running_var,
                                 momentum, eps)
