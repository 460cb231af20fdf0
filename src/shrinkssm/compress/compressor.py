"""The in-training compressor: a hook for any PyTorch training loop.

At every step of its :class:`ReductionSchedule` the :class:`Compressor` asks each shrinkable layer
for a plan under its rank rule (:meth:`Compressor.rank_rule`), gates it, applies it and fixes up
the optimizer (:func:`swap_parameters`), so that the loop simply goes on. It knows *when* and *how
much*; *how* is the layers' and ``shrinkssm.lti``'s business. Follows CompreSSM (arXiv
2510.02823), ``docs/design.md`` §6.

Every layer goes the same way, through the protocol of :mod:`shrinkssm.nn.shrinkable`
(``plan_reduction`` / ``apply_reduction_`` / ``layout`` / ``apply_layout_``): the LRU and the
selective layer are two implementations, and a new kind of layer needs no change here.

Usage::

    compressor = Compressor(ReductionSchedule.equidistant(total_steps), mode="tolerance", tol=0.01)
    for step in range(1, total_steps + 1):
        loss = loss_fn(model(x), y); loss.backward(); optimizer.step(); optimizer.zero_grad()
        compressor.step(step, model, optimizer)     # after optimizer.step()
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any, Callable, Iterable

import torch
from torch import nn

from shrinkssm import lti
from shrinkssm._checks import check_choice
from shrinkssm.compress.history import LayerEvent, ReductionEvent, ReductionHistory
from shrinkssm.compress.optim_state import STATE_POLICIES, swap_parameters
from shrinkssm.compress.schedule import ReductionSchedule
from shrinkssm.nn.shrinkable import ReductionPlan, ShrinkableLayer, shrinkable_layers

__all__ = ["Compressor", "ShrinkableLayer", "shrinkable_layers", "MODES", "METHODS", "OUTPUTS",
           "SELECTIONS"]

log = logging.getLogger("shrinkssm")

MODES = ("tolerance", "fixed", "pragmatic", "none")
"""How much each reduction takes (:class:`Compressor`, ``compress.mode``)."""
METHODS, OUTPUTS, SELECTIONS = lti.METHODS, lti.OUTPUTS, lti.SELECTIONS


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
        check_choice("mode", mode, MODES)
        check_choice("method", method, METHODS)
        check_choice("output", output, OUTPUTS)
        check_choice("selection", selection, SELECTIONS)
        check_choice("optimizer_state", optimizer_state, STATE_POLICIES)
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

    @classmethod
    def from_config(cls, section: Any, total_steps: int, *, seed: int = 0,
                    evaluate: Callable[[nn.Module], float] | None = None,
                    agree: Callable[[list[int]], list[int]] | None = None) -> "Compressor":
        """The compressor of a ``compress`` config section, scheduled over ``total_steps``.

        ``section`` is anything with the attributes of ``shrinkssm.train.config.CompressConfig``
        (``mode``, ``tol``, ``fraction``, ``n_points``, ``window``, ``steps``, ``schedule``,
        ``check_every``, ``published_eval_every`` (the last three optional), ``method``,
        ``output``, ``selection``, ``gate``, ``min_rank``, ``optimizer_state``, ``margin``); every
        setting of the constructor is taken from it by name.
        """
        schedule = ReductionSchedule.for_run(
            total_steps, section.n_points, section.window, section.steps, section.mode,
            schedule=getattr(section, "schedule", "equidistant"),
            check_every=getattr(section, "check_every", None),
            published_eval_every=getattr(section, "published_eval_every", None))
        settings = {name: getattr(section, name) for name in cls.SETTINGS}
        return cls(schedule, evaluate=evaluate, seed=seed, agree=agree, **settings)

    SETTINGS = ("mode", "tol", "fraction", "method", "output", "selection", "gate", "min_rank",
                "optimizer_state", "margin")
    """The constructor's settings that :meth:`from_config` reads from a config section."""

    # ----------------------------------------------------------------------------------------
    def step(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
             ) -> ReductionEvent | None:
        """Call after ``optimizer.step()`` with the number of optimizer steps done so far.

        Returns the :class:`ReductionEvent` of this step, or None when nothing was due.
        """
        if not self.schedule.is_due(step) or any(e.step == step for e in self.history):
            return None
        return self.reduce(step, model, optimizer)

    def rank_rule(self, hsv: torch.Tensor, size: int, size_of: Callable[[int], int] | None = None) -> int:
        """The size the mode asks a system to keep, before the gate (the rule every layer applies
        in ``plan_reduction``, :mod:`shrinkssm.nn.shrinkable`).

        ``hsv``: the system's HSVs, descending; ``size``: its current size. ``tolerance``: the
        energy rule, ``size_of(rank_for_energy(hsv, tol))`` (``size_of`` maps "keep the first k
        HSVs" to units of ``size``; identity by default); ``fixed`` and ``pragmatic``:
        ``floor(size * (1 - fraction))``; ``none``: ``size``. Then floored at ``min_rank`` and
        capped at ``size``.
        """
        if self.mode == "tolerance":
            rank = lti.rank_for_energy(hsv, self.tol)
            if size_of is not None:
                rank = size_of(rank)
        elif self.mode in ("fixed", "pragmatic"):
            rank = int(size * (1.0 - self.fraction))
        else:
            rank = size
        return max(self.min_rank, min(int(rank), size))

    def reduce(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
               ) -> ReductionEvent:
        """Reduce now (whatever the schedule says) and record the event.

        First every layer plans (measures itself under :meth:`rank_rule`); only if some layer will
        change are the before/after evaluations run and (``pragmatic``) a snapshot taken.
        """
        start = time.perf_counter()
        layers = shrinkable_layers(model)
        if not layers:
            raise ValueError("the model has no shrinkable layers (nothing that implements "
                             "shrinkssm.nn.shrinkable.ShrinkableLayer)")
        plans, seconds = [], []
        for index, layer in enumerate(layers):
            t0 = time.perf_counter()
            plans.append(layer.plan_reduction(self.rank_rule, method=self.method, output=self.output))
            seconds.append(time.perf_counter() - t0)
            if plans[-1].skipped is not None and plans[-1].notes:
                log.warning("layer %d: %s", index, plans[-1].notes[0])
        if self.agree is not None:
            self._agree(plans)
        events = [self._event(index, plan, secs) for index, (plan, secs) in enumerate(zip(plans, seconds))]
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
                self._apply(layer_event, layer, step, plans[layer_event.layer])
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

    def _agree(self, plans: list[ReductionPlan]) -> None:
        """Every plan's ranks through the ``agree`` hook, in one call (one collective under data
        parallelism, whatever the layers)."""
        flat = [int(r) for plan in plans for r in plan.ranks]
        agreed = [int(r) for r in self.agree(flat)]
        if len(agreed) != len(flat):
            raise ValueError(f"agree returned {len(agreed)} ranks for {len(flat)}")
        for plan in plans:
            n = len(plan.ranks)
            plan.ranks, agreed = agreed[:n], agreed[n:]

    def _event(self, index: int, plan: ReductionPlan, seconds: float) -> LayerEvent:
        """The record of one layer's plan, with why it is skipped (None: it will be applied)."""
        old, old_size = plan.old, plan.old_size
        measured = plan.skipped is None or len(plan.hsv) > 0
        target, target_size = (plan.target, plan.target_size) if plan.skipped is None else (old, old_size)
        event = LayerEvent(layer=index, old=old, new=old, target=target, hsv=plan.hsv.double().cpu().tolist(),
                           notes=list(plan.notes), seconds=seconds, old_size=old_size,
                           new_size=old_size, target_size=target_size)
        if not measured:
            event.skipped = plan.skipped
        elif self.mode == "none":
            event.skipped = "mode none"
        elif self.stopped:
            event.skipped = "stopped after a rollback"
        elif plan.skipped is not None:
            event.skipped = plan.skipped
        elif target_size >= self.gate * old_size:
            event.skipped = f"gate: state size {target_size} is not below {self.gate:g} x {old_size}"
        return event

    def _apply(self, event: LayerEvent, layer: nn.Module, step: int, plan: ReductionPlan) -> None:
        """Apply one layer's plan and record the outcome in ``event``."""
        t0 = time.perf_counter()
        options = {"selection": self.selection} if self.selection != "largest" else {}
        if self.method == "random":
            options["generator"] = torch.Generator().manual_seed(
                self.seed * 1_000_003 + step * 1_009 + event.layer)
        try:
            report = layer.apply_reduction_(plan, **options)
        except ValueError as exc:      # e.g. a reduced system too close to defective to diagonalise
            event.skipped = f"reduction failed, layer kept as it was: {exc}"
            log.warning("step %d, layer %d: %s", step, event.layer, event.skipped)
            event.seconds += time.perf_counter() - t0
            return
        event.new, event.new_size, event.error_bound = report.new_d_state, report.new_size, report.error_bound
        event.kept_energy, event.notes = report.kept_energy, list(report.notes)
        event.seconds += time.perf_counter() - t0

    # -- pragmatic mode: snapshot and rollback --------------------------------------------------
    @staticmethod
    def _snapshot(layers: list[nn.Module], optimizer) -> dict:
        return {
            "layers": [(copy.deepcopy(layer.layout()), copy.deepcopy(layer.state_dict())) for layer in layers],
            "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
        }

    @staticmethod
    def _restore(layers: list[nn.Module], optimizer, snapshot: dict) -> None:
        replaced = []
        for layer, (layout, state) in zip(layers, snapshot["layers"]):
            if layer.layout() == layout:
                continue
            current = dict(layer.named_parameters(recurse=False))
            layer.apply_layout_(layout)
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
