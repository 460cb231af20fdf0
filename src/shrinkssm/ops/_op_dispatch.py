"""How the native custom operators are called: through the dispatcher when torch traces, directly
in plain eager mode.

Every native kernel is registered as a PyTorch custom operator (``torch.library.custom_op``, with a
fake implementation and an autograd formula), which is what ``torch.compile``, ``torch.export`` and
fake-tensor tracing need. A call through the dispatcher, however, costs Python time (the wrapper
that keeps Dynamo out of the implementation, default filling, the generated autograd node): 0.2-0.9
ms more per forward + backward of an LRU layer than a plain autograd.Function, 9% of a compressed
sMNIST layer's (N = 13) time, measured by ``benchmarks/custom_ops.py --clock cpu``. So in plain
eager mode (nothing tracing, no dispatch mode such as fake tensors
active, no tensor subclasses, no functorch transform) :func:`call` runs the operator's *own*
implementation and autograd formula (the same Python functions the registration uses) under a thin
:class:`torch.autograd.Function`; otherwise it calls the operator. Both paths are tested against
each other and against the reference backends.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = ["OpSpec", "call", "checked", "direct"]

_PLAIN_TYPES = (Tensor, nn.Parameter)


@dataclass(frozen=True)
class OpSpec:
    """One registered operator and the Python functions behind it.

    ``op`` is the :class:`torch.library.CustomOpDef`; ``impl(*args)`` its implementation;
    ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)`` the functions given to
    ``op.register_autograd`` (None for an operator without autograd, such as a backward).
    """

    op: Callable
    impl: Callable
    setup_context: Callable | None = None
    backward: Callable | None = None


def checked(check: Callable, impl: Callable) -> Callable:
    """``impl`` preceded by ``check(*args)``: what an operator registers, so that any caller of
    ``torch.ops.shrinkssm.*`` gets its arguments checked before they reach C. The direct path runs
    ``impl`` alone: its callers (this package's entry points) have validated the inputs already."""

    @functools.wraps(impl)  # the operator's schema is read from impl's signature
    def run(*args, **kwargs):
        check(*args, **kwargs)
        return impl(*args, **kwargs)

    return run


def direct(args: tuple) -> bool:
    """True when ``args`` may go straight to an implementation: eager mode, real CPU tensors."""
    if torch.compiler.is_compiling() or _get_current_dispatch_mode() is not None:
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return all(type(a) in _PLAIN_TYPES for a in args if isinstance(a, Tensor))


class _Direct(torch.autograd.Function):
    """Runs an operator's implementation and autograd formula without the dispatcher.

    ``apply(*args, spec)``: the spec comes last, so that ``ctx.needs_input_grad`` lines up with the
    operator's arguments as it does under the operator's own autograd registration."""

    @staticmethod
    def forward(ctx, *args):
        spec, args = args[-1], args[:-1]
        out = spec.impl(*args)
        spec.setup_context(ctx, args, out)
        ctx.spec = spec
        return out

    @staticmethod
    def backward(ctx, *grads):
        create_graph = torch.is_grad_enabled()
        needs = ctx.needs_input_grad
        ctx.needs_input_grad = needs[:-1]
        try:
            with torch.no_grad():
                result = ctx.spec.backward(ctx, *grads)
        finally:
            ctx.needs_input_grad = needs
        if create_graph:  # as through the operator: the backward operators have no autograd
            result = _refuse_second_order(result)
        return (*result, None)


def _refuse_second_order(grads: tuple) -> tuple:
    """``grads`` behind a node that raises if anything is ever differentiated through it."""
    where = [i for i, g in enumerate(grads) if isinstance(g, Tensor)]
    error = torch._C._functions.DelayedError(
        b"the native shrinkssm kernels are differentiable once: no second derivatives", len(where))
    wrapped = error(*(grads[i].detach().requires_grad_() for i in where))
    wrapped = wrapped if isinstance(wrapped, tuple) else (wrapped,)
    out = list(grads)
    for i, g in zip(where, wrapped):
        out[i] = g
    return tuple(out)


def call(spec: OpSpec, *args):
    """Run the operator of ``spec`` on ``args`` (see the module docstring for which path)."""
    if not direct(args):
        return spec.op(*args)
    if spec.backward is not None and torch.is_grad_enabled() and any(
            isinstance(a, Tensor) and a.requires_grad for a in args):
        return _Direct.apply(*args, spec)
    return spec.impl(*args)
