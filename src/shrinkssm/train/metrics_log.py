"""The run's metric log: one JSON object per line in ``metrics.jsonl``, TensorBoard optionally.

On resume from step ``s`` the file is cut back to the rows with ``step <= s`` (rows written after
the checkpoint would otherwise appear twice), so a resumed run's log reads like an uninterrupted
one.

Writing never raises a bare ``OSError``: a full disk or a refused permission is a
:class:`~shrinkssm.train.rundir.RunDirError` naming ``metrics.jsonl``. A row torn by a crash (a
partial last line) is skipped when the file is read.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from shrinkssm.train.rundir import atomic_write, os_errors

__all__ = ["MetricsLog", "read_metrics"]


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All rows of a ``metrics.jsonl`` (a torn last line, from a crash, is skipped)."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Append-only metric rows; ``tensorboard_dir`` adds scalar logging to TensorBoard."""

    def __init__(self, path: str | os.PathLike, *, resume_step: int | None = None,
                 tensorboard_dir: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        if resume_step is None:
            atomic_write(self.path, "")
        else:
            with os_errors(self.path, "read"):
                kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        self._writer = None
        if tensorboard_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError("train.tensorboard=true needs the tensorboard package: "
                                   "pip install 'shrinkssm[tensorboard]'") from exc
            self._writer = SummaryWriter(str(tensorboard_dir), purge_step=resume_step)

    def write(self, row: dict) -> None:
        row = {k: _clean(v) for k, v in row.items()}
        with os_errors(self.path), open(self.path, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        if self._writer is not None:
            step = row["step"]
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._writer.add_scalar(key, value, step)
                elif key == "state_dims":
                    self._writer.add_scalar("state_dim_total", sum(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
