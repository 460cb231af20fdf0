"""In-training compression: when and how much to reduce, and the optimizer's side of it.

* :class:`ReductionSchedule` -- the steps at which to reduce.
* :class:`Compressor` -- the hook a training loop calls after ``optimizer.step()``; it reduces
  every :class:`~shrinkssm.nn.shrinkable.ShrinkableLayer` the same way.
* :func:`swap_parameters` -- optimizer surgery for replaced parameters (pure function).
* :class:`ReductionHistory` -- what happened, per reduction point and layer.
"""

from shrinkssm.compress.compressor import (
    METHODS as METHODS,
    MODES as MODES,
    OUTPUTS as OUTPUTS,
    SELECTIONS as SELECTIONS,
    Compressor as Compressor,
    ShrinkableLayer as ShrinkableLayer,
    shrinkable_layers as shrinkable_layers,
)
from shrinkssm.compress.history import (
    LayerEvent as LayerEvent,
    ReductionEvent as ReductionEvent,
    ReductionHistory as ReductionHistory,
)
from shrinkssm.compress.optim_state import (
    STATE_POLICIES as STATE_POLICIES,
    slice_to_shape as slice_to_shape,
    swap_parameters as swap_parameters,
)
from shrinkssm.compress.schedule import ReductionSchedule as ReductionSchedule

__all__ = ["Compressor", "ReductionSchedule", "ShrinkableLayer", "shrinkable_layers", "MODES",
           "METHODS", "OUTPUTS", "SELECTIONS", "LayerEvent", "ReductionEvent", "ReductionHistory", "STATE_POLICIES",
           "slice_to_shape", "swap_parameters"]
