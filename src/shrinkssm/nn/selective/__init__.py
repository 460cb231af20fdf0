"""A selective (Mamba-1 style) SSM layer, its LTI surrogate, and its in-training reduction.

* :mod:`~shrinkssm.nn.selective.layer` -- :class:`SelectiveSSM`: parameters, forward, step, sizes;
* :mod:`~shrinkssm.nn.selective.surrogate` -- the per-channel LTI surrogate: running statistics,
  realizations (:class:`ChannelRealization`), :func:`calibrate_surrogates`;
* :mod:`~shrinkssm.nn.selective.reduction` -- plans and reports, the per-channel and shared
  reductions (the balancing itself is :mod:`shrinkssm.lti.balancing`).

The mathematics (the surrogate, its approximations, both reductions and their guards) is in
``docs/design.md`` §7; what the reductions cost and what they give on a real task is measured in
the README ("The selective layer").
"""

from shrinkssm.nn.selective.layer import SelectiveSSM
from shrinkssm.nn.selective.reduction import (
    ALPHA_FLOOR,
    REDUCTIONS,
    METHODS,
    ChannelStates,
    ReducedState,
    SelectivePlanDetail,
    balance_channel,
    state_scores,
)
from shrinkssm.nn.selective.surrogate import (
    MOMENT_POSITIONS,
    SURROGATES,
    ChannelRealization,
    calibrate_surrogates,
)

__all__ = [
    "ALPHA_FLOOR",
    "REDUCTIONS",
    "SURROGATES",
    "MOMENT_POSITIONS",
    "SelectiveSSM",
    "METHODS",
    "SelectivePlanDetail",
    "ChannelRealization",
    "ChannelStates",
    "ReducedState",
    "calibrate_surrogates",
    "balance_channel",
    "state_scores",
]
