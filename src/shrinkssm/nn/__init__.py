"""Layers and models, in ML notation (``d_model``, ``d_state``).

* :class:`ShrinkableLayer` -- the protocol of a layer that shrinks during training (describe, plan,
  apply, report, layout; :mod:`shrinkssm.nn.shrinkable`): where a new reducible layer plugs in.
* :class:`LRU` -- the Linear Recurrent Unit; ``system()`` describes it as an
  :class:`shrinkssm.lti.DiagonalSystem`, ``reduce_()`` replaces it by a smaller one.
* :class:`SelectiveSSM` -- a Mamba-1 style selective SSM block; its mean LTI surrogate ranks states
  for ``plan_reduction()`` (per-channel balanced truncation or a shared subset).
* :class:`Mamba2SSM` -- a Mamba-2 (SSD) block: heads with a scalar decay, groups sharing B and C
  (:mod:`shrinkssm.nn.mamba2`); it reduces by one balancing transform per group.
* :func:`from_hf` -- the mixers of a local Hugging Face Mamba / Mamba-2 checkpoint as these layers
  (:mod:`shrinkssm.nn.hf`).
* :func:`calibrate` -- gather the reduction statistics of the Mamba-2 and selective layers in a
  layer or model over batches you choose, changing nothing else (:mod:`shrinkssm.nn.calibration`):
  what a loaded layer needs before ``plan_reduction``.
* :class:`SSMModel` -- encoder, blocks of (norm -> mixer -> GELU -> GLU -> residual), pooling, head.
"""

from shrinkssm.nn.calibration import calibrate as calibrate
from shrinkssm.nn.lru import LRU as LRU, SSM_LR_GROUP as SSM_LR_GROUP
from shrinkssm.nn.shrinkable import (
    LayerReduction as LayerReduction,
    ReductionPlan as ReductionPlan,
    ShrinkableLayer as ShrinkableLayer,
    shrinkable_layers as shrinkable_layers,
)
from shrinkssm.nn.selective import (
    SelectiveSSM as SelectiveSSM,
    calibrate_surrogates as calibrate_surrogates,
)
from shrinkssm.nn.mamba2 import Mamba2SSM as Mamba2SSM
from shrinkssm.nn.hf import from_hf as from_hf, layer_from_hf as layer_from_hf
from shrinkssm.nn.model import (
    MaskedBatchNorm as MaskedBatchNorm,
    ModelConfig as ModelConfig,
    SSMBlock as SSMBlock,
    SSMModel as SSMModel,
)

__all__ = ["LRU", "LayerReduction", "ReductionPlan", "ShrinkableLayer", "shrinkable_layers",
           "SSM_LR_GROUP", "ModelConfig", "SSMModel", "SSMBlock", "MaskedBatchNorm", "SelectiveSSM",
           "calibrate_surrogates", "calibrate", "Mamba2SSM", "from_hf", "layer_from_hf"]
