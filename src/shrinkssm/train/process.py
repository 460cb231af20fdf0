"""Process-wide settings of a training run, made in one explicit call.

Importing :mod:`shrinkssm` (or any part of it) changes nothing global. What a training process
wants set for the whole process is done by :func:`configure_process`, which ``shrinkssm train``
calls once, before it builds a :class:`~shrinkssm.train.Trainer`; a Python user calls it the same
way (or not: every setting is optional, and a run gives the same numbers without it, only
possibly slower).
"""

from __future__ import annotations

import torch

from shrinkssm.train.allocator import keep_freed_memory
from shrinkssm.train.config import RunConfig
from shrinkssm.train.distributed import DistEnv, init_distributed

__all__ = ["configure_process"]


def configure_process(config: RunConfig) -> DistEnv:
    """Apply the process-wide settings of ``config`` and return this process's place in the job.

    * ``train.threads``: torch's CPU threads (``torch.set_num_threads``), when set;
    * ``train.keep_freed_memory``: glibc keeps freed memory for reuse (:mod:`.allocator`);
    * matplotlib's file-only ``Agg`` backend (the plots are written as PNG files; they do not
      need it, but nothing else in the process should open a window either);
    * the data-parallel process group that ``torchrun`` describes in the environment, joined once
      (:func:`~shrinkssm.train.distributed.init_distributed`; a world of one otherwise).

    Not here: the seed. The :class:`~shrinkssm.train.Trainer` seeds torch's global RNG from
    ``train.seed`` itself before it builds the model and restores the RNG state from a checkpoint
    on resume, since that state is part of the run (its checkpoint holds it), not of the process.
    """
    cfg = config.train
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_freed_memory:
        keep_freed_memory()
    import matplotlib          # here, not at import: importing this module changes nothing

    matplotlib.use("Agg")
    return init_distributed(cfg.device, cfg.dist_timeout)
