"""Optimizer surgery: hand a live ``torch.optim`` optimizer the parameters of a reduced layer.

A reduction replaces a layer's parameters by new, smaller ``nn.Parameter`` objects. The optimizer
still lists the old ones (in their parameter groups, with their learning rates) and keeps
per-parameter state (Adam's moments and step count) keyed by them. :func:`swap_parameters` puts
each new parameter in the place of its old one, in the same group and at the same position (so
learning-rate schedulers and a later ``optimizer.load_state_dict`` keep working), and decides what
happens to the state:

* ``"reset"``   -- fresh zero moments, step count kept. With a large step count Adam's bias
  correction is ~1, so the first update after a reset is about (1 - beta1) / sqrt(1 - beta2)
  ~ 3x the usual step size.
* ``"slice"``   -- the published code's behaviour: keep the leading entries of every moment along
  each dimension that shrank. After balancing and re-diagonalisation, slot i is a different mode,
  so the kept moments belong to another mode; offered for faithfulness and comparison.
* ``"restart"`` -- fresh moments *and* step count 0 for the replaced parameters, as if they had
  just been added (Adam's bias correction then starts afresh). The default of the compressor:
  measured best on sMNIST (``experiments/optimizer_state.py``, README).

State entries are transformed only if they have the old parameter's shape (moments); scalars such
as ``step`` are kept (or zeroed by ``"restart"``). An entry that cannot be sliced (a dimension
grew) is reset.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor, nn

from shrinkssm._checks import check_choice

__all__ = ["STATE_POLICIES", "swap_parameters", "slice_to_shape"]

STATE_POLICIES = ("reset", "slice", "restart")


def slice_to_shape(value: Tensor, shape: torch.Size) -> Tensor | None:
    """The leading block of ``value`` with the given shape, or None if some dimension grew.

    ``value: (n_1, ..., n_d)`` -> ``(m_1, ..., m_d)`` with ``m_i <= n_i``; a copy, not a view.
    """
    if value.ndim != len(shape) or any(m > n for m, n in zip(shape, value.shape)):
        return None
    return value[tuple(slice(0, m) for m in shape)].clone()


def _new_state(old_state: dict, old: Tensor, new: Tensor, policy: str) -> dict:
    state = {}
    for key, value in old_state.items():
        if isinstance(value, Tensor) and value.shape == old.shape and old.ndim > 0:
            kept = slice_to_shape(value, new.shape) if policy == "slice" else None
            state[key] = kept if kept is not None else torch.zeros_like(new, dtype=value.dtype)
        elif isinstance(value, Tensor):
            state[key] = torch.zeros_like(value) if policy == "restart" else value.clone()
        else:
            state[key] = 0 if policy == "restart" and key == "step" else value
    return state


def swap_parameters(
    optimizer: torch.optim.Optimizer,
    replaced: Iterable[tuple[nn.Parameter, nn.Parameter]],
    policy: str = "restart",
) -> int:
    """Replace old parameters by new ones inside ``optimizer``, in place.

    Parameters
    ----------
    optimizer : torch.optim.Optimizer
        Any optimizer whose per-parameter state is a dict of tensors and scalars (Adam, AdamW,
        SGD with momentum, RMSprop, ...).
    replaced : iterable of (old, new) parameter pairs
    policy : {"reset", "slice", "restart"}
        What becomes of the old parameter's state; see the module docstring.

    Returns
    -------
    int
        How many parameters were swapped. A pair whose old parameter the optimizer does not hold
        raises ``ValueError`` (the caller would otherwise train a layer that never updates).
    """
    check_choice("optimizer_state policy", policy, STATE_POLICIES)
    where = {id(p): (g, i) for g in optimizer.param_groups for i, p in enumerate(g["params"])}
    count = 0
    for old, new in replaced:
        if id(old) not in where:
            raise ValueError(f"the optimizer does not hold a parameter of shape "
                             f"{tuple(old.shape)} that a reduction replaced; was it built from "
                             "this model's parameters?")
        group, index = where.pop(id(old))
        group["params"][index] = new
        old_state = optimizer.state.pop(old, None)
        if old_state:
            optimizer.state[new] = _new_state(old_state, old, new, policy)
        where[id(new)] = (group, index)
        count += 1
    return count
