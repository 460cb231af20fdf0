"""The shrinkable-layer protocol: what a layer offers so that it can shrink during training.

This module is where a new reducible layer plugs in. A layer that implements
:class:`ShrinkableLayer` is found by :func:`shrinkable_layers`, measured, gated, reduced and
restored by :class:`shrinkssm.compress.Compressor` and rebuilt from a checkpoint by
:meth:`shrinkssm.nn.SSMModel.apply_layout_`, with no change anywhere else. The LRU
(:class:`shrinkssm.nn.LRU`) and the selective layer (:class:`shrinkssm.nn.SelectiveSSM`) are the
two implementations in the package.

The protocol, in the order the compressor uses it:

1. **Describe** -- ``d_state`` (the configured size, in the layer's own unit ``D_STATE_UNIT``) and
   ``state_size`` (what the scan pays: real numbers of recurrent state per sequence and step, the
   same unit for every kind of layer).
2. **Plan** -- ``plan_reduction(rank_rule, method=, output=) -> ReductionPlan``: the layer
   measures itself (its LTI system, or a surrogate of one) and applies ``rank_rule`` to each of
   its systems. Nothing changes. The plan carries the HSVs (for the record), the ranks it would
   apply and their size; the compressor gates on ``plan.target_size < gate * plan.old_size``.
3. **Apply** -- ``apply_reduction_(plan, **options) -> LayerReduction``: replace the layer, in
   place, by its reduction (only shrinks). New ``nn.Parameter`` objects replace the changed ones
   (:func:`set_param`), and ``(old, new)`` pairs are left in ``last_replaced`` for the optimizer
   surgery (:func:`shrinkssm.compress.swap_parameters`). A ``ValueError`` leaves the layer as it
   was.
4. **Report** -- :class:`LayerReduction`, one report type for every layer kind.
5. **Layout** -- ``layout() -> dict`` (JSON-friendly: the shapes that differ from construction)
   and ``apply_layout_(layout)`` (reallocate zero placeholders of those shapes, before
   ``load_state_dict``): a checkpoint of a reduced model can be rebuilt, and pragmatic mode can
   roll a reduction back.

The rank rule. ``rank_rule(hsv, size, size_of=None) -> int`` is the compressor's (energy rule,
fixed fraction, floor; :meth:`shrinkssm.compress.Compressor.rank_rule`). ``hsv`` are the HSVs of
one system (descending, float64), ``size`` its current size in the unit the layer ranks it in, and
the answer the size to keep, in ``[1, size]``. When one HSV is not one unit of ``size`` (the LRU's
``output="real"`` view: the HSVs are those of a real order, ``size`` counts complex states),
``size_of(k)`` gives the size that keeps the first ``k`` HSVs; by default it is ``k``.

The mathematics of every formula named here is in ``docs/design.md`` (§6 compression, §4 the
LRU's balanced truncation, §7 the selective layer's).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

__all__ = ["ShrinkableLayer", "ReductionPlan", "LayerReduction", "RankRule", "set_param",
           "shrinkable_layers"]

RankRule = Callable[..., int]
"""``rank_rule(hsv: (n,) float64 descending, size: int, size_of: Callable[[int], int] | None = None)
-> int`` in ``[1, size]`` (module docstring)."""


@dataclass
class ReductionPlan:
    """What ``plan_reduction`` proposes for one layer; nothing has changed yet.

    Attributes
    ----------
    layer_id : int
        ``id()`` of the layer the plan was made for (a plan applies to that layer only).
    method, output : str
        As passed to ``plan_reduction``.
    hsv : (n,) float64 tensor
        Every HSV the layer measured, descending (for the record; empty when not measured).
    ranks : list of int
        What ``apply_reduction_`` applies: one rank per system of the layer (the LRU: one; a
        per-channel selective layer: one per channel; a shared subset: one).
    weights : list of int
        ``state_size`` per unit of each rank (LRU: 2 real numbers per complex state; selective per
        channel: 1; a shared subset of ``E`` channels: ``E``). Same length as ``ranks``.
    old_size : int
        The layer's ``state_size`` now.
    per_d_state : int
        ``state_size`` per unit of ``d_state``: ``d_state = ceil(state_size / per_d_state)``
        (LRU: 2; selective: the number of channels ``E``).
    kept_energy : float or None
        Share of the HSV energy the ranks keep (None when not measured).
    skipped : str or None
        Why nothing can be planned (no statistics yet, the system could not be measured).
    notes : list of str
        What the caller should know (a measurement that failed is warned about).
    detail : any
        The layer's own data for ``apply_reduction_`` (cached balancings, ...); never read by the
        compressor.
    """

    layer_id: int
    method: str
    output: str
    hsv: Tensor
    ranks: list[int]
    weights: list[int]
    old_size: int
    per_d_state: int
    kept_energy: float | None = None
    skipped: str | None = None
    notes: list[str] = field(default_factory=list)
    detail: Any = field(default=None, repr=False)

    @property
    def target_size(self) -> int:
        """``state_size`` after the planned reduction: ``sum(weights * ranks)``."""
        return int(sum(w * r for w, r in zip(self.weights, self.ranks)))

    @property
    def old(self) -> int:
        """``d_state`` now."""
        return math.ceil(self.old_size / self.per_d_state)

    @property
    def target(self) -> int:
        """``d_state`` after the planned reduction."""
        return math.ceil(self.target_size / self.per_d_state)

    @classmethod
    def not_measured(cls, layer: nn.Module, method: str, output: str, per_d_state: int,
                     reason: str, warn: bool = False) -> "ReductionPlan":
        """A plan that keeps ``layer`` as it is, saying why (``warn``: also as a note, which the
        compressor logs as a warning). Its ranks are empty: ``target_size`` is 0, but a skipped
        plan is never gated or applied."""
        return cls(id(layer), method, output, torch.zeros(0, dtype=torch.float64), [], [],
                   int(layer.state_size), per_d_state, skipped=reason, notes=[reason] if warn else [])


@dataclass(frozen=True)
class LayerReduction:
    """What ``apply_reduction_`` (or a layer's ``reduce_``) did to one layer.

    ``old_d_state`` / ``new_d_state`` are in the layer's ``D_STATE_UNIT``, ``old_size`` /
    ``new_size`` in ``state_size`` units (real numbers per step). ``hsv`` holds every HSV measured
    before the reduction (descending, float64). ``error_bound`` bounds the H-infinity norm of the
    change of the layer's map (None where no a-priori bound applies; a selective layer gives its
    surrogates' bounds in ``notes``). ``ranks`` are the kept orders per system (selective: per
    channel; LRU: its one state count).
    """

    old_d_state: int
    new_d_state: int
    method: str
    output: str
    hsv: Tensor
    error_bound: float | None
    kept_energy: float
    seconds: float
    notes: tuple[str, ...] = ()
    old_size: int = 0
    new_size: int = 0
    ranks: tuple[int, ...] = ()

    @property
    def changed(self) -> bool:
        """True if the layer was replaced (its state shrank)."""
        return self.new_size < self.old_size


@runtime_checkable
class ShrinkableLayer(Protocol):
    """A layer that can shrink during training (module docstring: the five parts)."""

    D_STATE_UNIT: str
    """What one unit of ``d_state`` is, in words (e.g. "complex states")."""

    last_replaced: dict
    """``{name: (old Parameter, new Parameter)}`` of the last ``apply_reduction_``."""

    @property
    def d_state(self) -> int: ...

    @property
    def state_size(self) -> int: ...

    def plan_reduction(self, rank_rule: RankRule, *, method: str = ..., output: str = ...
                       ) -> ReductionPlan: ...

    def apply_reduction_(self, plan: ReductionPlan, **options) -> LayerReduction: ...

    def layout(self) -> dict: ...

    def apply_layout_(self, layout: dict) -> None: ...


def shrinkable_layers(model: nn.Module) -> list[nn.Module]:
    """Every :class:`ShrinkableLayer` of ``model``, in ``model.modules()`` order (a DDP wrapper is
    walked into like any other module)."""
    return [m for m in model.modules() if isinstance(m, ShrinkableLayer)]


def set_param(module: nn.Module, name: str, value: Tensor, **tags) -> nn.Parameter:
    """Replace (or create) ``module.<name>`` by a new ``nn.Parameter`` holding a copy of ``value``.

    ``tags`` become attributes of the parameter (``_no_weight_decay``, ``_lr_group``, read by
    optimizer builders); private attributes a caller added to the old parameter are carried over.
    When a parameter is replaced, ``module.last_replaced[name] = (old, new)`` records it for the
    optimizer surgery.
    """
    old = module._parameters.get(name)
    param = nn.Parameter(value.detach().clone(), requires_grad=True)
    for key, val in tags.items():
        setattr(param, key, val)
    if old is not None:
        for key, val in vars(old).items():
            if key.startswith("_") and not hasattr(param, key):
                setattr(param, key, val)
        module.last_replaced[name] = (old, param)
    setattr(module, name, param)
    return param
