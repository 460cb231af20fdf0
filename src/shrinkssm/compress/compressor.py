"""The in-training compressor: a hook for any PyTorch training loop.

At every step of its :class:`ReductionSchedule` the :class:`Compressor` measures each reducible
layer (its Hankel singular values), picks a rank per layer from the mode, replaces the layer by its
reduction (``layer.reduce_``) and fixes up the optimizer (:func:`swap_parameters`), so that the
loop simply goes on. It knows *when* and *how much*; *how* is the layers' and ``shrinkssm.lti``'s
business. Follows CompreSSM (arXiv 2510.02823), ``docs/design.md`` §6.

Two kinds of layer (see :func:`reducible_layers`):

* :class:`ReducibleLayer` (the LRU): one LTI system per layer (``system()``), measured here, one
  rank per layer.
* :class:`SelfPlanningLayer` (selective SSMs, ``docs/design.md`` §7): the layer measures itself
  (per-channel surrogate HSVs) and applies the compressor's rank rule
  (:meth:`Compressor.channel_rank`) where it needs to, e.g. per channel; the compressor gates on
  the plan's total state count and passes the plan back to ``reduce_``.

Usage::

    compressor = Compressor(ReductionSchedule.equidistant(total_steps), mode="tolerance", tol=0.01)
    for step in range(1, total_steps + 1):
        loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
        compressor.step(step, model, optimizer)     # after optimizer.step()
"""

from __future__ import annotations

import copy
import logging
import math
import time
from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch
from torch import nn

from shrinkssm import lti
from shrinkssm.compress.history import LayerEvent, ReductionEvent, ReductionHistory
from shrinkssm.compress.optim_state import STATE_POLICIES, swap_parameters
from shrinkssm.compress.schedule import ReductionSchedule

__all__ = ["Compressor", "ReducibleLayer", "SelfPlanningLayer", "reducible_layers", "MODES", "METHODS"]

log = logging.getLogger("shrinkssm")

MODES = ("tolerance", "fixed", "pragmatic", "none")
METHODS = ("balanced", "singular_perturbation", "modal", "random")
OUTPUTS = ("complex", "real")
SELECTIONS = ("largest", "smallest")


@runtime_checkable
class ReducibleLayer(Protocol):
    """What the compressor needs of a layer (the LRU is one)."""

    d_state: int
    last_replaced: dict

    def system(self) -> lti.DiagonalSystem: ...

    def reduce_(self, rank: int, method: str = ..., output: str = ..., **options): ...

    def resize_(self, d_state: int, dense_skip: bool = ...) -> None: ...


@runtime_checkable
class SelfPlanningLayer(Protocol):
    """A layer that measures itself and proposes its own (e.g. per-channel) ranks.

    ``plan_reduction(rank_rule, method=..., output=...)`` returns a plan with ``hsv`` (1-D float64
    tensor, for the record), ``old``/``target`` (in the units of ``d_state``), ``old_size``/
    ``target_size`` (what the gate compares), ``skipped`` (None, or why nothing can be planned)
    and ``agree_(fn)`` (pass its ranks through the compressor's ``agree`` hook);
    ``rank_rule(hsv, size) -> int`` is :meth:`Compressor.channel_rank`. ``reduce_(plan,
    method=..., output=..., **options)`` applies it and returns a report like the LRU's.
    ``layout()`` / ``apply_layout_()`` describe and restore the layer's shapes (pragmatic rollback).
    """

    d_state: int
    last_replaced: dict

    def plan_reduction(self, rank_rule, *, method: str = ..., output: str = ...): ...

    def reduce_(self, rank, method: str = ..., output: str = ..., **options): ...

    def layout(self) -> dict: ...

    def apply_layout_(self, layout: dict) -> None: ...


def reducible_layers(model: nn.Module) -> list[nn.Module]:
    """Every reducible layer of ``model`` (:class:`ReducibleLayer` or :class:`SelfPlanningLayer`),
    in ``model.modules()`` order (a DDP wrapper is walked into like any other module)."""
    return [m for m in model.modules() if isinstance(m, (ReducibleLayer, SelfPlanningLayer))]


def _check_choice(name: str, value: str, valid: Sequence[str]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(valid)}")


class Compressor:
    """Reduce every SSM layer of a model at scheduled steps.

    Parameters
    ----------
    schedule : ReductionSchedule or iterable of int
        Steps (optimizer steps done, from 1) at which to act.
    mode : {"tolerance", "fixed", "pragmatic", "none"}
        ``tolerance``: keep the smallest rank holding ``1 - tol`` of the Hankel energy (plain sum of
        HSVs). ``fixed``: drop ``fraction`` of the states each time. ``pragmatic``: like fixed,
        but evaluate before and after each reduction and, if the metric falls by more than
        ``margin``, restore the state from before it and stop reducing. ``none``: only record the
        HSV spectra (a baseline that logs what compression would see).
    tol : float
        Fraction of Hankel energy discarded per reduction in ``tolerance`` mode, in [0, 1).
    fraction : float
        Fraction of states dropped per reduction in ``fixed`` and ``pragmatic`` modes, in (0, 1).
    method : {"balanced", "singular_perturbation", "modal", "random"}
        Reduction applied to a layer (:func:`shrinkssm.lti.reduce_system`).
    output : {"complex", "real"}
        Which system's HSVs rank the states; see :mod:`shrinkssm.lti`.
    selection : {"largest", "smallest"}
        Keep the most (default) or, as an ablation, the least important directions.
    gate : float
        Reduce a layer only if its new rank is below ``gate * current`` (0.95 in the paper).
    min_rank : int
        No layer goes below this many states.
    optimizer_state : {"reset", "slice", "restart"}
        What becomes of the optimizer state of replaced parameters (:func:`swap_parameters`).
    evaluate : callable, optional
        ``evaluate(model) -> float`` (higher is better), run before and after each reduction and
        recorded in the history; required by ``pragmatic``. It must leave the model in the mode
        it found it in.
    margin : float
        Largest tolerated drop of ``evaluate`` in ``pragmatic`` mode (0.02 = 2 accuracy points
        when the metric is a fraction).
    seed : int
        Seeds the ``random`` method (per step and layer, so a resumed run draws the same).
    agree : callable, optional
        ``agree(targets: list[int]) -> list[int]``, applied to the per-layer target ranks before
        the gate. Data-parallel training passes "take rank 0's list", so that every process
        reduces to the same shapes whatever rounding its own measurement saw.
    """

    def __init__(
        self,
        schedule: ReductionSchedule | Iterable[int],
        *,
        mode: str = "tolerance",
        tol: float = 0.01,
        fraction: float = 0.1,
        method: str = "balanced",
        output: str = "complex",
        selection: str = "largest",
        gate: float = 0.95,
        min_rank: int = 1,
        optimizer_state: str = "restart",
        evaluate: Callable[[nn.Module], float] | None = None,
        margin: float = 0.02,
        seed: int = 0,
        agree: Callable[[list[int]], list[int]] | None = None,
    ) -> None:
        _check_choice("mode", mode, MODES)
        _check_choice("method", method, METHODS)
        _check_choice("output", output, OUTPUTS)
        _check_choice("selection", selection, SELECTIONS)
        _check_choice("optimizer_state", optimizer_state, STATE_POLICIES)
        if not 0.0 <= tol < 1.0:
            raise ValueError(f"tol must lie in [0, 1), got {tol}")
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
        if not 0.0 < gate <= 1.0:
            raise ValueError(f"gate must lie in (0, 1], got {gate}")
        if min_rank < 1:
            raise ValueError(f"min_rank must be >= 1, got {min_rank}")
        if mode == "pragmatic" and evaluate is None:
            raise ValueError("mode 'pragmatic' needs evaluate=callable(model) -> float")
        if selection == "smallest" and method not in ("balanced", "modal"):
            raise ValueError("selection 'smallest' is available for methods 'balanced' and 'modal'")
        self.schedule = schedule if isinstance(schedule, ReductionSchedule) else ReductionSchedule.at(schedule)
        self.mode, self.tol, self.fraction = mode, tol, fraction
        self.method, self.output, self.selection = method, output, selection
        self.gate, self.min_rank, self.optimizer_state = gate, min_rank, optimizer_state
        self.evaluate, self.margin, self.seed = evaluate, margin, seed
        self.agree = agree
        self.history = ReductionHistory()
        self.stopped = False          # set when pragmatic mode rolled a reduction back

    # ----------------------------------------------------------------------------------------
    def step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
             ) -> ReductionEvent | None:
        """Call after ``optimizer.step()`` with the number of optimizer steps done so far.

        Returns the :class:`ReductionEvent` of this step, or None when nothing was due.
        """
        if not self.schedule.is_due(step) or any(e.step == step for e in self.history):
            return None
        return self.reduce(step, model, optimizer)

    def target_rank(self, hsv: torch.Tensor, d_state: int) -> int:
        """The rank the mode asks for, before the gate: ``hsv`` (descending) of one layer."""
        if self.mode == "tolerance":
            rank = lti.rank_for_energy(hsv, self.tol)
            if self.output == "real":   # a real order; one LRU state carries two real states
                rank = math.ceil(rank / 2)
        elif self.mode in ("fixed", "pragmatic"):
            rank = int(d_state * (1.0 - self.fraction))
        else:
            rank = d_state
        return max(self.min_rank, min(rank, d_state))

    def channel_rank(self, hsv: torch.Tensor, size: int) -> int:
        """The rank rule handed to self-planning layers: like :meth:`target_rank` for one real
        system of order ``size`` (``hsv`` descending), without the LRU's real-to-complex halving."""
        if self.mode == "tolerance":
            rank = lti.rank_for_energy(hsv, self.tol)
        elif self.mode in ("fixed", "pragmatic"):
            rank = int(size * (1.0 - self.fraction))
        else:
            rank = size
        return max(self.min_rank, min(rank, size))

    def reduce(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> ReductionEvent:
        """Reduce now (whatever the schedule says) and record the event.

        First every layer is measured and given a target rank; only if some layer will change are
        the before/after evaluations run and (``pragmatic``) a snapshot taken.
        """
        start = time.perf_counter()
        layers = reducible_layers(model)
        if not layers:
            raise ValueError("the model has no reducible SSM layers (nothing with system() or "
                             "plan_reduction(), and reduce_())")
        plans: dict[int, object] = {}
        events = [self._measure_layer(index, layer, plans) for index, layer in enumerate(layers)]
        if self.agree is not None:
            for layer_event, target in zip(events, self.agree([e.target for e in events])):
                layer_event.target = int(target)
            for index, plan in plans.items():
                if plan.skipped is None:
                    plan.agree_(self.agree)
                    events[index].target = plan.target
        for layer_event in events:
            layer_event.skipped = self._why_skip(layer_event, plans.get(layer_event.layer))
        acting = [e for e in events if e.skipped is None]
        event = ReductionEvent(step=step, mode=self.mode, method=self.method, output=self.output,
                               layers=events)
        if acting:
            if self.evaluate is not None:
                t0 = time.perf_counter()
                event.metric_before = self.evaluate(model)
                event.eval_seconds += time.perf_counter() - t0
            snapshot = self._snapshot(layers, optimizer) if self.mode == "pragmatic" else None
            replaced = []
            for layer_event in acting:
                layer = layers[layer_event.layer]
                self._apply(layer_event, layer, step, plans.get(layer_event.layer))
                replaced.extend(layer.last_replaced.values())   # empty when nothing changed
            if optimizer is not None and replaced:
                swap_parameters(optimizer, replaced, self.optimizer_state)
            if self.evaluate is not None:
                t0 = time.perf_counter()
                event.metric_after = self.evaluate(model)
                event.eval_seconds += time.perf_counter() - t0
            if snapshot is not None and event.metric_after < event.metric_before - self.margin:
                self._restore(layers, optimizer, snapshot)
                event.rolled_back, self.stopped = True, True
        event.reduction_seconds = time.perf_counter() - start - event.eval_seconds
        self.history.append(event)
        return event

    def _measure_layer(self, index: int, layer: nn.Module, plans: dict) -> LayerEvent:
        """A layer's HSVs and the rank the mode asks for (a self-planning layer's plan goes into
        ``plans[index]``)."""
        t0 = time.perf_counter()
        if isinstance(layer, SelfPlanningLayer):
            plan = layer.plan_reduction(self.channel_rank, method=self.method, output=self.output)
            plans[index] = plan
            event = LayerEvent(layer=index, old=plan.old, new=plan.old, target=plan.target,
                               hsv=plan.hsv.double().cpu().tolist())
            event.seconds = time.perf_counter() - t0
            return event
        old = layer.d_state
        try:
            hsv = lti.hankel_singular_values(layer.system(), output=self.output).double().cpu()
        except ValueError as exc:      # not stable (|lam| = 1 even in float64) or not finite
            event = LayerEvent(layer=index, old=old, new=old, target=old, hsv=[],
                               notes=[f"not measured, layer kept as it was: {exc}"])
            log.warning("layer %d: %s", index, event.notes[0])
            event.seconds = time.perf_counter() - t0
            return event
        event = LayerEvent(layer=index, old=old, new=old, target=self.target_rank(hsv, old),
                           hsv=hsv.tolist())
        event.seconds = time.perf_counter() - t0
        return event

    def _why_skip(self, event: LayerEvent, plan=None) -> str | None:
        """Why a layer stays as it is (None: it is reduced to ``event.target`` or its ``plan``)."""
        if not event.hsv and plan is None:
            return event.notes[0] if event.notes else "no Hankel singular values"
        if self.mode == "none":
            return "mode none"
        if self.stopped:
            return "stopped after a rollback"
        if plan is not None:
            if plan.skipped is not None:
                return plan.skipped
            if plan.target_size >= self.gate * plan.old_size:
                return f"gate: {plan.target_size} states are not below {self.gate:g} x {plan.old_size}"
            return None
        if event.target >= self.gate * event.old:
            return f"gate: rank {event.target} is not below {self.gate:g} x {event.old}"
        return None

    def _apply(self, event: LayerEvent, layer: nn.Module, step: int, plan=None) -> None:
        """Reduce one layer to ``event.target`` (or its ``plan``) and record the outcome in ``event``."""
        t0 = time.perf_counter()
        options = {"selection": self.selection} if self.selection != "largest" else {}
        if self.method == "random":
            options["generator"] = torch.Generator().manual_seed(
                self.seed * 1_000_003 + step * 1_009 + event.layer)
        try:
            report = layer.reduce_(event.target if plan is None else plan, method=self.method,
                                   output=self.output, **options)
        except ValueError as exc:      # e.g. a reduced system too close to defective to diagonalise
            event.skipped = f"reduction failed, layer kept as it was: {exc}"
            log.warning("step %d, layer %d: %s", step, event.layer, event.skipped)
            event.seconds += time.perf_counter() - t0
            return
        event.new, event.error_bound = report.new_d_state, report.error_bound
        event.kept_energy, event.notes = report.kept_energy, list(report.notes)
        event.seconds += time.perf_counter() - t0

    # -- pragmatic mode: snapshot and rollback --------------------------------------------------
    @staticmethod
    def _shape(layer: nn.Module):
        """What must be restored before a layer's state dict loads: its layout, or (size, skip)."""
        if isinstance(layer, SelfPlanningLayer):
            return ("layout", layer.layout())
        return ("resize", layer.d_state, getattr(layer, "dense_skip", False))

    @classmethod
    def _snapshot(cls, layers: list[nn.Module], optimizer) -> dict:
        return {
            "layers": [(cls._shape(layer), copy.deepcopy(layer.state_dict())) for layer in layers],
            "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
        }

    def _restore(self, layers: list[nn.Module], optimizer, snapshot: dict) -> None:
        replaced = []
        for layer, (shape, state) in zip(layers, snapshot["layers"]):
            if self._shape(layer) == shape:
                continue
            current = dict(layer.named_parameters(recurse=False))
            if shape[0] == "layout":
                layer.apply_layout_(shape[1])
            else:
                layer.resize_(shape[1], shape[2])
            layer.load_state_dict(state)
            restored = dict(layer.named_parameters(recurse=False))
            replaced.extend((current[name], restored[name]) for name in current)
        if optimizer is not None:
            swap_parameters(optimizer, replaced, "reset")
            optimizer.load_state_dict(snapshot["optimizer"])

    # -- checkpoints ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """History and progress (JSON-friendly); the settings come from the run's config."""
        return {"history": self.history.to_dict(), "stopped": self.stopped}

    def load_state_dict(self, state: dict) -> None:
        self.history = ReductionHistory.from_dict(state["history"])
        self.stopped = bool(state["stopped"])
