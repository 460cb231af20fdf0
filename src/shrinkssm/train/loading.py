"""Open a finished (or interrupted) run for inspection, without touching its files.

Used by ``shrinkssm eval``, ``analyze`` and ``generate``: the checkpoint, the config it was made
with, the data it was trained on, and the model rebuilt in its reduced shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from shrinkssm.data import DataSplits
from shrinkssm.nn import SSMModel
from shrinkssm.train.build import build_model, load_data
from shrinkssm.train.checkpoint import CheckpointError, load_checkpoint
from shrinkssm.train.config import ConfigError, RunConfig, build_config

__all__ = ["LoadedRun", "check_run_dir", "load_run"]


def check_run_dir(run_dir: str | Path, what: str = "RUN") -> None:
    """Raise :class:`CheckpointError` saying plainly what is wrong with a run directory named on
    the command line as ``what`` (``--resume``, ``RUN``): it does not exist, is not a
    directory, or holds no checkpoint yet. Nothing is read beyond the directory listing."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise CheckpointError(f"{what} {run_dir}: no such directory")
    if not run_dir.is_dir():
        raise CheckpointError(f"{what} {run_dir}: not a directory (a run directory holds "
                              "checkpoints/last.pt)")
    if not (run_dir / "checkpoints" / "last.pt").exists():
        raise CheckpointError(f"{what} {run_dir}: the directory holds no checkpoint "
                              "(checkpoints/last.pt); a run writes its first one after "
                              "train.checkpoint_every steps")


@dataclass
class LoadedRun:
    """A run directory's latest checkpoint, its config, its data and its model (eval mode)."""

    run_dir: Path
    config: RunConfig
    checkpoint: dict
    splits: DataSplits | None
    model: SSMModel | None

    @property
    def step(self) -> int:
        return int(self.checkpoint["step"])


def load_run(run_dir: str | Path, *, with_model: bool = True,
             device: str | torch.device = "cpu", allow_nonfinite: bool = False) -> LoadedRun:
    """Read ``run_dir/checkpoints/last.pt``; with ``with_model`` also load the data and model.

    ``allow_nonfinite`` loads a checkpoint whose weights hold NaN/inf (refused otherwise)."""
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    path = run_dir / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(path, map_location=device, allow_nonfinite=allow_nonfinite)
    try:
        config = build_config(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {exc}") from None
    if not with_model:
        return LoadedRun(run_dir, config, ckpt, None, None)
    splits = load_data(config)
    model = build_model(config, splits)
    try:
        model.apply_layout_(ckpt["layout"])
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise CheckpointError(f"checkpoint does not fit its own config: {exc}") from None
    return LoadedRun(run_dir, config, ckpt, splits, model.to(device).eval())
