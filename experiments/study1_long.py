"""Study 1, long: compressed against trained directly at the same size, at the paper's sizes.

The published sMNIST architecture and optimisation (1 block, d_model 8, N = 256, dropout 0.1,
batch 50, constant learning rate 4e-4, no weight decay, SSM learning-rate factor 1.0; the settings
of ``configs/smnist_*.yaml``) on full sequential Fashion-MNIST (54k / 6k / 10k) and MNIST-5k,
for ``--steps`` (default 30,000; the paper trains 200,000) with the published reduction schedule
scaled to the run (``compress.schedule=published``: at 5% and 10% of the steps, i.e. 1,500 and
3,000 of 30,000). Per data set and seed:

* ``baseline``      -- uncompressed, N = 256;
* ``tau<t>``        -- compressed in training, t = 0.01 / 0.02 / 0.04;
* ``direct-tau<t>`` -- trained directly at the final size of ``tau<t>`` *of the same seed*, from
  the start (it can only start once that run has finished: its size comes from it).

Every run records its HSVs every 1% of the steps (``compress.track_every``) and keeps its best
validation checkpoint. Runs live in ``experiments/study1_long_runs/study1-long-<data>/<name>-seed<k>``,
which is committed as runs finish (and at the end of a session, with the checkpoints of the runs
still under way), so that another session, on another machine, resumes where this one stopped.

Resumable: a run with a ``summary.json`` is skipped, one with a checkpoint is resumed
(``shrinkssm train --resume``), so the grid can be spread over several sessions. ``--max-minutes``
bounds a session: no run starts after it, and running ones are sent SIGTERM, which makes
``shrinkssm train`` finish its step, write a checkpoint and exit (resumed next time). ``--jobs``
runs that many at once, each on ``--threads`` threads (measured on this 2-core machine: see
the report and ``--help``).

    python experiments/study1_long.py [--only fashion-mnist] [--seeds 0 1 2] [--steps 30000]
        [--jobs 2 --threads 1] [--max-minutes 110] [--root experiments/study1_long_runs]
    python experiments/study1_long.py --plan            # list the runs and their state, run nothing
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
RUNS = HERE / "study1_long_runs"   # committed (plots, locks and best.pt aside): resumable on another machine
TAUS = (0.01, 0.02, 0.04)
PAPER_SIZES = {0.01: 47, 0.02: 28, 0.04: 13}     # official README Table 2 (sMNIST, 200k steps)
DATASETS = {
    "fashion-mnist": ["data.name=fashion-mnist", "train.eval_batches=40"],   # 2,000 val images
    "mnist": ["data.name=mnist"],
}
# the published sMNIST model and optimisation (configs/smnist_*.yaml)
PUBLISHED = ["model.n_layers=1", "model.d_model=8", "model.d_state=256", "model.norm=batch",
             "model.dropout=0.1", "model.r_min=0.9", "model.r_max=0.999", "train.batch_size=50",
             "train.lr=0.0004", "train.lr_schedule=constant", "train.warmup_steps=0",
             "train.weight_decay=0.0", "train.ssm_lr_factor=1.0", "compress.schedule=published",
             "compress.window=0.1"]


@dataclass
class RunSpec:
    """One grid point: ``study/name`` with its overrides; ``direct_of`` names the compressed run
    (same study) whose final size this one trains at, so it waits for that run's summary."""

    study: str
    name: str
    overrides: list[str]
    direct_of: str | None = None
    seed: int = 0

    def run_dir(self, root: Path) -> Path:
        return root / self.study / self.name

    def log(self, root: Path) -> Path:
        """Where the run's terminal output goes (beside its directory, which holds train.log)."""
        return root / self.study / f"{self.name}.out"


def plan(datasets: list[str], seeds: list[int], steps: int, taus=TAUS, *,
         extra: list[str] | None = None, data_overrides: dict | None = None) -> list[RunSpec]:
    """Every run of the grid, in the order they may start: per data set the baselines, the
    compressed runs, then the direct runs (each after its compressed run of the same seed).

    ``steps``: per run. Validation every 2.5% of the steps (the published 5,000 of 200,000), HSVs
    every 1%, a checkpoint every 1,000 steps (at most 1,000 steps lost to an interruption).
    ``extra`` is appended to every run's overrides (tests use it for tiny runs);
    ``data_overrides`` replaces :data:`DATASETS`.
    """
    sets = data_overrides or DATASETS
    every = dict(eval=max(1, round(steps / 40)), track=max(1, round(steps / 100)),
                 ckpt=min(1000, steps))
    specs = []
    for dataset in datasets:
        study = f"study1-long-{dataset}"
        common = (list(sets[dataset]) + PUBLISHED
                  + [f"train.steps={steps}", f"train.eval_every={every['eval']}",
                     f"train.checkpoint_every={every['ckpt']}",
                     f"compress.track_every={every['track']}", "train.progress=false"]
                  + list(extra or []))
        for seed in seeds:
            specs.append(RunSpec(study, f"baseline-seed{seed}",
                                 common + ["compress.mode=none", f"train.seed={seed}"], seed=seed))
        for tau in taus:
            for seed in seeds:
                specs.append(RunSpec(study, f"tau{tau}-seed{seed}",
                                     common + ["compress.mode=tolerance", f"compress.tol={tau}",
                                               f"train.seed={seed}"], seed=seed))
        for tau in taus:
            for seed in seeds:
                specs.append(RunSpec(study, f"direct-tau{tau}-seed{seed}",
                                     common + ["compress.mode=none", f"train.seed={seed}"],
                                     direct_of=f"tau{tau}-seed{seed}", seed=seed))
    return specs


def status(run_dir: Path) -> str:
    """``"done"`` (summary.json), ``"partial"`` (a checkpoint to resume from), ``"started"``
    (files but no checkpoint yet: restarted from scratch) or ``"new"``."""
    if (run_dir / "summary.json").is_file():
        return "done"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return "partial"
    if run_dir.exists() and any(run_dir.iterdir()):
        return "started"
    return "new"


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def ready(spec: RunSpec, root: Path) -> bool:
    """A direct run is ready once its compressed run has a summary; every other run is."""
    return spec.direct_of is None or status(root / spec.study / spec.direct_of) == "done"


def command(spec: RunSpec, root: Path, threads: int) -> list[str]:
    """The ``shrinkssm train`` command line of a run in its current state: ``--resume`` from a
    checkpoint, otherwise a fresh start (``--force`` over the leftovers of a run that died before
    its first checkpoint). A direct run gets ``model.d_state`` = its compressed run's final size."""
    out = spec.run_dir(root)
    base = [sys.executable, "-m", "shrinkssm", "train"]
    state = status(out)
    if state == "partial":
        return base + ["--resume", str(out)]
    overrides = list(spec.overrides) + [f"train.threads={threads}"]
    if spec.direct_of is not None:
        dims = summary_of(root / spec.study / spec.direct_of)["state_dims"]
        overrides = [o for o in overrides if not o.startswith("model.d_state=")]
        overrides.append(f"model.d_state={dims[0] if len(dims) == 1 else dims}")
    return base + ["--out", str(out)] + (["--force"] if state == "started" else []) + overrides


Launch = Callable[[list[str], Path], "subprocess.Popen"]


def _launch(cmd: list[str], log: Path) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "a")
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    return subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)


@dataclass
class GridResult:
    finished: list[str] = field(default_factory=list)     # runs that ended with a summary
    stopped: list[str] = field(default_factory=list)      # interrupted by the budget (resumable)
    failed: list[tuple[str, int]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)      # already done
    waiting: list[str] = field(default_factory=list)      # not started (budget, or not ready)


def run_grid(specs: list[RunSpec], root: Path, *, jobs: int = 2, threads: int = 1,
             max_minutes: float | None = None, launch: Launch = _launch, poll: float = 1.0,
             clock: Callable[[], float] = time.monotonic, say=print) -> GridResult:
    """Run the grid: at most ``jobs`` runs at once, finished ones skipped, interrupted ones
    resumed, direct runs once their compressed run is done, nothing started after
    ``max_minutes`` and running ones stopped with SIGTERM then (they checkpoint and exit)."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    result = GridResult()
    pending = []
    for spec in specs:
        if status(spec.run_dir(root)) == "done":
            result.skipped.append(f"{spec.study}/{spec.name}")
        else:
            pending.append(spec)
    deadline = None if max_minutes is None else clock() + 60.0 * max_minutes
    running: dict[str, tuple[RunSpec, subprocess.Popen]] = {}
    stopping = False
    while pending or running:
        over = deadline is not None and clock() >= deadline
        if over and running and not stopping:
            say(f"time budget of {max_minutes:g} min reached: stopping {len(running)} run(s) with "
                "a checkpoint")
            for _, proc in running.values():
                proc.send_signal(signal.SIGTERM)
            stopping = True
        while not over and not stopping and len(running) < jobs:
            spec = next((s for s in pending if ready(s, root)), None)
            if spec is None:
                break
            pending.remove(spec)
            cmd = command(spec, root, threads)
            how = "resume" if "--resume" in cmd else "start"
            say(f"[{spec.study}] {spec.name}: {how}")
            running[f"{spec.study}/{spec.name}"] = (spec, launch(cmd, spec.log(root)))
        if not running:
            break                                  # budget over, or nothing can start
        time.sleep(poll)
        for key, (spec, proc) in list(running.items()):
            code = proc.poll()
            if code is None:
                continue
            del running[key]
            if status(spec.run_dir(root)) == "done":
                result.finished.append(key)
                s = summary_of(spec.run_dir(root))
                say(f"[{spec.study}] {spec.name}: done, test {s.get('test_accuracy', float('nan')):.4f}, "
                    f"state {s['state_dims']}, {s['train_seconds']:.0f} s")
            elif code in (130, 143) or stopping:
                result.stopped.append(key)
                say(f"[{spec.study}] {spec.name}: stopped with a checkpoint (resumed next time)")
            else:
                result.failed.append((key, code))
                say(f"[{spec.study}] {spec.name}: failed with exit code {code}; see "
                    f"{spec.log(root)}")
                # its direct run can never start: leave it waiting
    result.waiting = [f"{s.study}/{s.name}" for s in pending]
    return result


# ---------------------------------------------------------------------------------- statistics
def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: the Student-t interval ``mean -+ t_{(1+c)/2, n-1} s / sqrt(n)``
    (``s`` the sample standard deviation, n - 1 in the denominator); with one value the
    interval is unbounded (nan)."""
    from scipy import stats

    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = sum(values) / n
    if n < 2:
        return mean, float("nan"), float("nan")
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def paired_differences(groups: dict[str, list[dict]], tau: float,
                       key: str = "test_accuracy") -> list[tuple[int, float]]:
    """``[(seed, compressed - direct), ...]`` for the seeds that have both ``tau<t>`` and
    ``direct-tau<t>`` runs (``groups``: runs by group name, each with a ``seed``)."""
    comp = {r["seed"]: r for r in groups.get(f"tau{tau}", [])}
    direct = {r["seed"]: r for r in groups.get(f"direct-tau{tau}", [])}
    return [(seed, comp[seed][key] - direct[seed][key]) for seed in sorted(comp) if seed in direct
            and key in comp[seed] and key in direct[seed]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(DATASETS), help="one data set (default: both)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=30_000, help="steps per run (>= 30,000 for "
                        "the study; the paper: 200,000)")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once (default 2: measured "
                        "more runs per hour than 1 run on 2 threads on this 2-core machine)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop the session after this long (runs checkpoint and resume later)")
    parser.add_argument("--root", type=Path, default=RUNS, help="where the run directories go")
    parser.add_argument("--plan", action="store_true", help="list the runs and their state only")
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be >= 1")
    datasets = [args.only] if args.only else list(DATASETS)
    specs = plan(datasets, args.seeds, args.steps)
    if args.plan:
        for spec in specs:
            state = status(spec.run_dir(args.root))
            wait = "" if ready(spec, args.root) else f" (waits for {spec.direct_of})"
            print(f"{spec.study}/{spec.name}: {state}{wait}")
        return 0
    result = run_grid(specs, args.root, jobs=args.jobs, threads=args.threads,
                      max_minutes=args.max_minutes)
    print(f"finished {len(result.finished)}, stopped {len(result.stopped)}, failed "
          f"{len(result.failed)}, skipped (done before) {len(result.skipped)}, not started "
          f"{len(result.waiting)}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
