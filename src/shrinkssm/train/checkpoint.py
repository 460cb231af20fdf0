"""Checkpoints: written atomically, checked fully before anything is loaded.

A checkpoint is one ``torch.save`` file (a zip archive) holding a dict:

=================  =========================================================================
``format``         ``"shrinkssm-checkpoint"`` and ``version`` (for a clear error on a stranger)
``step``           optimizer steps done; ``epoch``/``batch`` locate the data iterator
``config``         the resolved run config (dict); ``model_io`` the data-derived sizes
``layout``         per-layer state sizes and skip shapes, applied before the weights load
``model``          ``model.state_dict()``; ``optimizer`` and ``scheduler`` likewise
``compressor``     reduction history and progress
``rng``            torch (and CUDA) RNG states, so dropout continues as if uninterrupted
``extra``          run bookkeeping (elapsed train seconds, last metrics)
=================  =========================================================================

Writing goes to a temporary file in the same directory, flushed and ``fsync``-ed, then
``os.replace``-d over the target: an interruption leaves either the old or the new checkpoint,
never a half-written one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "FORMAT", "VERSION"]

FORMAT = "shrinkssm-checkpoint"
VERSION = 1
_REQUIRED = ("step", "epoch", "batch", "config", "model_io", "layout", "model", "optimizer",
             "scheduler", "compressor", "rng", "extra")


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, truncated or incompatible."""


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Atomically write ``payload`` (see the module docstring) to ``path``."""
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise ValueError(f"checkpoint payload lacks {missing}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            torch.save({"format": FORMAT, "version": VERSION, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Read and check a checkpoint; raises :class:`CheckpointError` with the reason."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # zip/pickle errors of all kinds mean the same thing to a user
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a shrinkssm checkpoint")
    if data.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {data.get('version')}; "
                              f"this shrinkssm reads version {VERSION}")
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: missing {', '.join(missing)}")
    return data
