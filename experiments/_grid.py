"""Shared plumbing of the experiment scripts: run a grid of `shrinkssm train` commands.

Each grid point is one run directory under ``experiments/runs/<study>/<name>``; a point whose
``summary.json`` exists is skipped, so a study that was interrupted continues where it stopped.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

RUNS = Path(__file__).parent / "runs"


def run_point(study: str, name: str, overrides: list[str], config: str | None = None) -> dict:
    """Train one grid point through the project's own command; returns its summary."""
    out = RUNS / study / name
    summary = out / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    command = [sys.executable, "-m", "shrinkssm", "train", "--out", str(out)]
    if config:
        command += ["--config", config]
    command += [*overrides, "train.progress=false"]
    if (out / "checkpoints" / "last.pt").exists():
        command = [sys.executable, "-m", "shrinkssm", "train", "--resume", str(out)]
    start = time.perf_counter()
    print(f"[{study}] {name}: {' '.join(command[3:])}", flush=True)
    subprocess.run(command, check=True)
    print(f"[{study}] {name}: done in {time.perf_counter() - start:.0f} s", flush=True)
    return json.loads(summary.read_text())
