"""Calibration: the reduction statistics of a layer or a model, gathered over batches you choose.

Two kinds of layer rest their reduction on statistics of the data rather than on their parameters
alone: :class:`~shrinkssm.nn.Mamba2SSM` (the groups' running Gramians,
:mod:`shrinkssm.nn.mamba2.gramians`) and :class:`~shrinkssm.nn.SelectiveSSM` (its LTI surrogate,
:mod:`shrinkssm.nn.selective.surrogate`). While a model trains, every training-mode forward pass
folds its batch into them. A layer that has not trained here -- loaded by
:func:`shrinkssm.nn.from_hf`, or freshly built -- has none, so its ``plan_reduction`` is skipped
("no Gramian statistics yet"). :func:`calibrate` gathers them::

    layer = from_hf("path/to/checkpoint")[0]
    calibrate(layer, batches)              # batches: (b, L, d_model) inputs of this mixer
    layer.apply_reduction_(layer.plan_reduction(rule))

What calibration does, and what it does not:

* **The statistics are replaced by a plain average over the batches.** Each layer forgets what it
  had, then every batch gets the same weight (within a batch, the average over its valid
  positions, as in training); the layer's momentum (``gramian_momentum``,
  ``surrogate_momentum``) is not used. So calibrating again with the same batches gives the same
  statistics, and calibrating with ``[a, b]`` gives the mean of calibrating with ``[a]`` and with
  ``[b]``. Training afterwards continues the running average from there (the next batch takes the
  layer's momentum as its weight).
* **Nothing else changes.** Every module runs in eval mode (batch-norm running statistics and
  dropout untouched, batch norm normalising with its running statistics), under
  :func:`torch.no_grad` (no autograd graph, no gradient), and each module's own train/eval flag is
  restored afterwards. Parameters are not touched. A layer gathers while its
  :meth:`GatheredStatistics.calibrating` context is open, in either mode and whatever its
  ``track_gramians`` / ``track_surrogate`` flag says.
* **A failure leaves the statistics as they were** (empty ``batches``, a batch of the wrong shape
  or type, batches without a single valid position).

The LRU needs no calibration: its Gramians are those of its own parameters
(:meth:`shrinkssm.nn.LRU.system`).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor, nn

from shrinkssm._checks import check_positive_int

__all__ = ["GatheredStatistics", "calibrate", "statistics_layers"]


class GatheredStatistics:
    """Mixin of a layer whose reduction rests on statistics gathered from data.

    The layer names its statistics buffers in ``STATISTICS_BUFFERS`` (in ``state_dict``, so in
    checkpoints), implements :meth:`reset_statistics_` and :meth:`has_statistics`, gathers in its
    forward pass when ``self._calibrating`` is True (in either mode), and then folds each batch in
    with weight ``1 / (k + 1)`` (``k`` the batches seen since the reset): a plain average.
    """

    STATISTICS_BUFFERS: tuple[str, ...] = ()
    _calibrating: bool = False

    def reset_statistics_(self) -> None:
        """Forget the statistics (the next gathered batch starts them afresh)."""
        raise NotImplementedError

    def has_statistics(self) -> bool:
        """True when the statistics suffice for ``plan_reduction``."""
        raise NotImplementedError

    @contextlib.contextmanager
    def calibrating(self) -> Iterator[None]:
        """Within this context the layer's statistics start empty and every forward pass, in
        train or eval mode, folds its batch into a plain average (module docstring of
        :mod:`shrinkssm.nn.calibration`). The layer's mode and parameters are not touched (the
        caller chooses the mode and ``torch.no_grad``). If the block raises, the statistics are
        put back as they were before the context opened. Not re-entrant."""
        if self._calibrating:
            raise RuntimeError(f"{type(self).__name__} is already calibrating")
        saved = {name: getattr(self, name).detach().clone() for name in self.STATISTICS_BUFFERS}
        self.reset_statistics_()
        self._calibrating = True
        try:
            yield
        except BaseException:
            with torch.no_grad():
                for name, value in saved.items():
                    getattr(self, name).copy_(value)
            raise
        finally:
            self._calibrating = False


def statistics_layers(module: nn.Module) -> list[nn.Module]:
    """Every submodule of ``module`` (itself included) that gathers reduction statistics
    (:class:`GatheredStatistics`), in ``module.modules()`` order."""
    return [m for m in module.modules() if isinstance(m, GatheredStatistics)]


def _split(batch: object, index: int) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and len(batch) == 2 and isinstance(batch[0], Tensor) \
            and (batch[1] is None or isinstance(batch[1], Tensor)):
        return batch[0], batch[1]
    got = (f"a {type(batch).__name__} of {len(batch)}" if isinstance(batch, (tuple, list))
           else f"a {type(batch).__name__}")
    raise ValueError(f"calibration batch {index}: expected an input tensor x or an (x, mask) pair "
                     f"of tensors, got {got}")


def calibrate(module: nn.Module, batches: Iterable, *, max_batches: int | None = None) -> int:
    """Gather the reduction statistics of every layer in ``module`` over ``batches``.

    Parameters
    ----------
    module : nn.Module
        A layer that gathers statistics (:class:`~shrinkssm.nn.Mamba2SSM`,
        :class:`~shrinkssm.nn.SelectiveSSM`) or any module containing such layers (an
        :class:`~shrinkssm.nn.SSMModel`, a list of layers in an ``nn.ModuleList`` ...), called
        as ``module(x)`` or ``module(x, mask)``.
    batches : iterable
        Each item an input tensor ``x`` or an ``(x, mask)`` pair: what ``module`` takes, e.g.
        ``x: (b, L, d_model)`` float and ``mask: (b, L)`` bool (True at valid positions) for a
        layer, ``(b, L, d_input)`` for an ``SSMModel``. Read once, lazily (a generator works).
    max_batches : int, optional
        Use at most this many batches (the rest are not read).

    Returns
    -------
    int
        The number of batches run.

    Raises
    ------
    ValueError
        When ``module`` contains no such layer, ``batches`` is empty or one tensor, a batch is
        not a tensor or an ``(x, mask)`` pair or does not fit ``module`` (the message names the
        batch), or the batches held no valid position for some layer. The statistics are then
        those from before the call.

    Notes
    -----
    The statistics become a plain average over the batches, everything runs in eval mode under
    :func:`torch.no_grad`, and each module's train/eval flag is restored afterwards (module
    docstring of :mod:`shrinkssm.nn.calibration`).
    """
    if max_batches is not None:
        max_batches = check_positive_int("max_batches", max_batches)
    if isinstance(batches, Tensor):
        raise ValueError("batches must be an iterable of batches (tensors or (x, mask) pairs), got "
                         f"one tensor of shape {tuple(batches.shape)}; pass [x] for a single batch")
    layers = statistics_layers(module)
    if not layers:
        raise ValueError(f"the {type(module).__name__} contains no layer that gathers reduction "
                         "statistics (Mamba2SSM, SelectiveSSM); other layers need no calibration")
    modes = [(m, m.training) for m in module.modules()]
    count = 0
    try:
        module.eval()
        with contextlib.ExitStack() as stack, torch.no_grad():
            for layer in layers:
                stack.enter_context(layer.calibrating())
            for count, batch in enumerate(itertools.islice(batches, max_batches), start=1):
                x, mask = _split(batch, count - 1)
                try:
                    module(x) if mask is None else module(x, mask)
                except (ValueError, RuntimeError) as err:
                    raise ValueError(f"calibration batch {count - 1} (x of shape {tuple(x.shape)} "
                                     f"{x.dtype}): {err}") from err
            if count == 0:
                raise ValueError("calibrate: batches is empty; give at least one input tensor or "
                                 "(x, mask) pair")
            empty = [type(m).__name__ for m in layers if not m.has_statistics()]
            if empty:
                raise ValueError(f"calibrate: the {count} batch(es) held no valid position for "
                                 f"{len(empty)} layer(s) ({', '.join(sorted(set(empty)))}); every "
                                 "mask was all False or every batch empty")
    finally:
        for m, training in modes:
            m.training = training
    return count
