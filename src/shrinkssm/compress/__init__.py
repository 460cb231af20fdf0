"""In-training compression: when and how much to reduce, and the optimizer's side of it.

* :class:`ReductionSchedule` -- the steps at which to reduce.
* :class:`Compressor` -- the hook a training loop calls after ``optimizer.step()``.
* :func:`swap_parameters` -- optimizer surgery for replaced parameters (pure function).
* :class:`ReductionHistory` -- what happened, per reduction point and layer.
"""

from shrinkssm.compress.compressor import (
    METHODS as METHODS,
    MODES as MODES,
    Compressor as Compressor,
    ReducibleLayer as ReducibleLayer,
    reducible_layers as reducible_layers,
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

__all__ = ["Compressor", "ReductionSchedule", "ReducibleLayer", "reducible_layers", "MODES",
           "METHODS", "LayerEvent", "ReductionEvent", "ReductionHistory", "STATE_POLICIES",
           "slice_to_shape", "swap_parameters"]
