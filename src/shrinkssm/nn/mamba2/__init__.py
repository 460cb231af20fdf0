"""A Mamba-2 (SSD) layer: heads with a scalar decay per step, groups of heads sharing ``B`` and ``C``.

* :mod:`~shrinkssm.nn.mamba2.layer` -- :class:`Mamba2SSM`: parameters, forward, step, sizes; its
  scan is :func:`shrinkssm.ops.ssd_scan.ssd_scan`;
* :mod:`~shrinkssm.nn.mamba2.hf` -- :func:`from_hf`: the layers of a local Hugging Face checkpoint.

The layer does not reduce yet (it is not a :class:`~shrinkssm.nn.shrinkable.ShrinkableLayer`): the
README ("Mamba-2 layers") says what exists and what does not.
"""

from shrinkssm.nn.mamba2.layer import GatedRMSNorm, Mamba2SSM

__all__ = ["Mamba2SSM", "GatedRMSNorm"]
