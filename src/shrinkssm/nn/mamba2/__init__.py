"""A Mamba-2 (SSD) layer: heads with a scalar decay per step, groups of heads sharing ``B`` and ``C``.

* :mod:`~shrinkssm.nn.mamba2.layer` -- :class:`Mamba2SSM`: parameters, forward, step, sizes; its
  scan is :func:`shrinkssm.ops.ssd_scan.ssd_scan`;
* :mod:`~shrinkssm.nn.mamba2.gramians` -- the groups' data-driven Gramians, gathered in training;
* :mod:`~shrinkssm.nn.mamba2.reduction` -- the exact reduction under the shrinkable-layer protocol
  (one balancing transform per group, applied to ``B`` and ``C`` after the convolution);
* :mod:`~shrinkssm.nn.mamba2.folding` -- the folded form: the transforms folded into ``in_proj``
  and the convolution (a plain layer of smaller ``d_state``; approximate);
* :func:`shrinkssm.nn.from_hf` (in :mod:`shrinkssm.nn.hf`) -- the layers of a local Hugging Face
  checkpoint.

The mathematics is in ``docs/design.md`` §7.4; the README ("Mamba-2 layers") says what exists and
what does not.
"""

from shrinkssm.nn.mamba2.layer import GatedRMSNorm, Mamba2SSM

__all__ = ["Mamba2SSM", "GatedRMSNorm"]
