"""The ``shrinkssm`` command line.

::

    shrinkssm train [--config FILE.yaml] [--out DIR] [KEY=VALUE ...]   train (default: sMNIST, tau=0.01)
    shrinkssm train --resume DIR                                        continue an interrupted run
    shrinkssm eval RUN [--split test]                                   a run's checkpoint on a split
    shrinkssm analyze RUN                                               reduction history and plots
    shrinkssm data list                                                 data sets, installed or not
    shrinkssm data prepare NAME [--dest DIR] [KEY=VALUE ...]            generate / fetch data files
    shrinkssm generate RUN [--prompt TEXT]                              sample from a language model

Exit codes: 0 success, 1 training diverged or failed, 2 bad usage / config / checkpoint / data /
a file the OS refused (disk full, permission), 130 / 143 stopped by SIGINT / SIGTERM (checkpointed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]

log = logging.getLogger("shrinkssm")


class _AboveTheBar(logging.Handler):
    """A handler that prints to the current ``sys.stderr``, above a running progress bar
    instead of onto its line."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:                       # noqa: BLE001 - logging's own convention
            self.handleError(record)


def _setup_logging(run_dir: Path | None = None, verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr (warnings only when ``quiet``: the other ranks of a data-parallel job) and,
    with ``run_dir``, to ``run_dir/train.log``."""
    log.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not any(type(h) is _AboveTheBar for h in log.handlers):
        handler = _AboveTheBar()   # writes to the current sys.stderr (several runs, one process)
        handler.setFormatter(logging.Formatter("shrinkssm: %(message)s"))
        log.addHandler(handler)
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)              # a previous run's log file (several runs, one process)
        old.close()
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = _LogFileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.propagate = False


class _LogFileHandler(logging.FileHandler):
    """``train.log``; a failed write (disk full) is one warning line, not a logging traceback."""

    _warned = False

    def handleError(self, record: logging.LogRecord) -> None:
        exc = sys.exc_info()[1]
        if not self._warned:
            self._warned = True
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            print(f"shrinkssm: warning: cannot write {self.baseFilename}: {reason}",
                  file=sys.stderr)


def _default_run_dir(data_name: str, mode: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{data_name}-{mode}"


def _format_dims(before: list[int], after: list[int]) -> str:
    return ", ".join(f"{b} -> {a}" for b, a in zip(before, after))


def _print_summary(summary: dict) -> None:
    metric = summary["metric"]
    print()
    print(f"  test {metric}:  {summary[f'test_{metric}']:.4f}   (validation "
          f"{summary[f'val_{metric}']:.4f})")
    print(f"  state size:     {_format_dims(summary['initial_state_dims'], summary['state_dims'])}"
          f"   (per layer)")
    if "baseline_test" in summary:
        base = summary["baseline_test"]
        print(f"  baseline:       {base['name']} test {metric} {base[metric]:.4f}")
    print(f"  training time:  {summary['train_seconds']:.1f} s for {summary['steps']} steps")
    print(f"  run directory:  {summary['run_dir']}  (summary.json, metrics.jsonl, plots/)")


def _vet_new_run_dir(run_dir: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, holds a run, or holds other files (unless --force)."""
    from shrinkssm.train.rundir import inspect_run_dir

    kind, names = inspect_run_dir(run_dir)
    if kind == "file":
        raise _UsageError(f"--out {run_dir}: is a file, not a directory; name a new or empty "
                          "directory")
    if force or kind in ("missing", "empty"):
        return
    if kind == "run":
        raise _UsageError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, "
                          "--force to start over in it, or --out to choose another directory")
    if kind == "run-without-checkpoint":
        raise _UsageError(f"--out {run_dir} holds a run that stopped before its first checkpoint; "
                          "pass --force to start over in it, or choose another directory")
    shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
    raise _UsageError(f"--out {run_dir} is not empty and holds no run ({shown}); choose a new or "
                      "empty directory, or pass --force to write into it anyway")


def _resume_config(run_dir: Path):
    from shrinkssm.train.checkpoint import CheckpointError, load_checkpoint
    from shrinkssm.train.config import ConfigError, build_config
    from shrinkssm.train.loading import check_run_dir
    from shrinkssm.train.rundir import inspect_run_dir

    kind, _ = inspect_run_dir(run_dir)
    if kind == "run-without-checkpoint":
        raise _UsageError(f"--resume {run_dir}: the run stopped before its first checkpoint, so "
                          f"there is nothing to resume; start it again with --out {run_dir} "
                          "--force (shrinkssm analyze shows what it logged)")
    check_run_dir(run_dir, "--resume")  # missing, not a directory, no checkpoint: says which
    path = run_dir / "checkpoints" / "last.pt"
    try:
        return build_config(load_checkpoint(path)["config"])
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint {path} holds an invalid config: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    from shrinkssm.train.config import load_config
    from shrinkssm.train.distributed import shutdown_distributed
    from shrinkssm.train.process import configure_process
    from shrinkssm.train.rundir import (LOCK_NAME, RunLock, inspect_run_dir, os_errors,
                                        remove_run_outputs)
    from shrinkssm.train.trainer import Trainer

    if args.resume:
        if args.config or args.overrides or args.out or args.force:
            raise _UsageError("--resume continues a run with its saved config; it takes no "
                              "--config, --out, --force or overrides")
        run_dir = Path(args.resume)
        config = _resume_config(run_dir)
    else:
        config = load_config(args.config, args.overrides)
    dist = configure_process(config)       # threads, malloc, plotting backend, process group
    lock = trainer = None
    try:
        if not args.resume:
            default = _default_run_dir(config.data.name, config.compress.mode)
            run_dir = Path(args.out) if args.out else Path(dist.from_main(str(default)))
        _setup_logging(None, args.verbose, quiet=not dist.is_main)
        if dist.is_main:
            lock = RunLock(run_dir)
            if (run_dir / LOCK_NAME).exists():      # in use? say so before judging its contents
                lock.acquire()
            kind = None if args.resume else inspect_run_dir(run_dir)[0]
            if not args.resume:
                _vet_new_run_dir(run_dir, args.force)
            lock.acquire()
            if args.force and kind in ("run", "run-without-checkpoint"):
                for path in remove_run_outputs(run_dir):
                    log.info("--force: removed %s of an earlier run", path)
            with os_errors(run_dir / "train.log", "open"):
                _setup_logging(run_dir, args.verbose)
        trainer = Trainer(config, run_dir, resume=bool(args.resume), lock=lock, dist=dist)
        if args.resume:
            log.info("resuming %s at step %d of %d", run_dir, trainer.step, config.train.steps)
        else:
            log.info("run directory %s; data %s (%d train / %d val / %d test); model %s%s",
                     run_dir, config.data.name, len(trainer.splits.train),
                     len(trainer.splits.val), len(trainer.splits.test), trainer.model.state_dims(),
                     f"; {dist.world_size} processes" if dist.enabled else "")
        summary = trainer.fit()
    except KeyboardInterrupt:
        if dist.is_main:
            if trainer is not None:
                where, resumable = trainer.last_good(), trainer.saved_step is not None
            elif args.resume:
                where, resumable = f"{run_dir / 'checkpoints' / 'last.pt'} is unchanged", True
            else:
                where, resumable = "no checkpoint was written", False
            hint = f" (resume with: shrinkssm train --resume {run_dir})" if resumable else ""
            print(f"\nshrinkssm: interrupted; {where}{hint}", file=sys.stderr)
        return 130
    finally:
        if lock is not None:
            lock.release()
        shutdown_distributed()
    if not dist.is_main:
        return 0
    if summary.get("interrupted"):
        if "signal" in summary:
            import signal

            print(f"shrinkssm: {summary['signal']}: stopped at step {summary['steps']}; checkpoint "
                  f"of step {summary['steps']} written to {summary['checkpoint']}; continue "
                  f"with: shrinkssm train --resume {run_dir}", file=sys.stderr)
            return 128 + int(getattr(signal, summary["signal"]))
        print(f"stopped at step {summary['steps']}; continue with: shrinkssm train --resume {run_dir}")
        return 0
    _print_summary(summary)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from shrinkssm.train.loading import load_run
    from shrinkssm.train.objective import Objective, evaluate

    run = load_run(args.run, allow_nonfinite=args.allow_nonfinite)
    _warn_nonfinite(run, args)
    data = getattr(run.splits, args.split)
    batches = data.iterate(run.config.train.batch_size, shuffle=False, seed=0, epoch=0,
                           drop_last=False)
    metrics = evaluate(run.model, batches, Objective(run.splits.spec))
    print(json.dumps({"split": args.split, "step": run.step,
                      "state_dims": run.model.state_dims(), **metrics}, indent=2))
    return 0


def _warn_nonfinite(run, args) -> None:
    from shrinkssm.train.checkpoint import non_finite_tensors

    bad = non_finite_tensors(run.checkpoint) if args.allow_nonfinite else []
    if bad:
        print(f"shrinkssm: warning: --allow-nonfinite: the checkpoint holds non-finite values "
              f"({bad[0]}{', ...' if len(bad) > 1 else ''}); results from it mean nothing",
              file=sys.stderr)


def _analyze_source(run_dir: Path, allow_nonfinite: bool):
    """``(config, history, initial_dims, step, source)`` of a run: from its checkpoint, or, for a
    run that stopped before its first checkpoint, from config.yaml, metrics.jsonl and
    reductions.json."""
    from shrinkssm.compress import ReductionHistory
    from shrinkssm.train.config import load_config
    from shrinkssm.train.loading import load_run
    from shrinkssm.train.metrics_log import read_metrics
    from shrinkssm.train.rundir import inspect_run_dir, os_errors

    kind, _ = inspect_run_dir(run_dir)
    if kind != "run-without-checkpoint":
        run = load_run(run_dir, with_model=False, allow_nonfinite=allow_nonfinite)
        history = ReductionHistory.from_dict(run.checkpoint["compressor"]["history"])
        return run.config, history, run.checkpoint["extra"]["initial_dims"], run.step, "checkpoint"
    config = load_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else None
    if config is None:
        raise _UsageError(f"{run_dir} has neither a checkpoint nor a config.yaml to analyze")
    history = ReductionHistory()
    path = run_dir / "reductions.json"
    if path.is_file():
        try:
            with os_errors(path, "read"):
                history = ReductionHistory.load(path)
        except (ValueError, TypeError, KeyError) as exc:
            raise _UsageError(f"{path} is malformed ({type(exc).__name__}: {exc})") from None
    initial = [config.model.d_state_of(i) for i in range(config.model.n_layers)]
    steps = [r["step"] for r in read_metrics(run_dir / "metrics.jsonl") if "step" in r]
    step = max(steps + [e.step for e in history], default=0)
    return config, history, initial, step, "logs (no checkpoint)"


def cmd_analyze(args: argparse.Namespace) -> int:
    from shrinkssm.compress.tracking import TRACK_FILE, ranking_stability, read_track
    from shrinkssm.plots import plot_run, track_taus
    from shrinkssm.train.metrics_log import read_metrics
    from shrinkssm.train.rundir import write_files_atomically

    run_dir = Path(args.run)
    config, history, initial, step, source = _analyze_source(run_dir, args.allow_nonfinite)
    rows = read_metrics(run_dir / "metrics.jsonl")
    metric = next((k[4:] for r in rows for k in r if k.startswith("val_") and k != "val_loss"
                   and not k.startswith("val_score")), "accuracy")
    track = read_track(run_dir / TRACK_FILE)
    files = write_files_atomically(run_dir / "plots", lambda staging: plot_run(
        rows, history, initial, config.train.steps, staging, metric, config.model.d_state_unit,
        track, track_taus(config)))
    print(f"run {run_dir}: step {step} of {config.train.steps}, "
          f"mode {config.compress.mode}, method {config.compress.method}; from its {source}")
    print(f"{'step':>8}  {'layer':>5}  {'before':>6}  {'after':>6}  {'bound':>10}  "
          f"{'kept energy':>11}  {'reduce s':>8}  note")
    for event in history:
        for le in event.layers:
            bound = f"{le.error_bound:.3e}" if le.error_bound is not None else "-"
            kept = f"{le.kept_energy:.4f}" if le.kept_energy is not None else "-"
            note = le.skipped or ("rolled back" if event.rolled_back else "; ".join(le.notes))
            print(f"{event.step:>8}  {le.layer:>5}  {le.old:>6}  {le.new:>6}  {bound:>10}  "
                  f"{kept:>11}  {le.seconds:>8.3f}  {note}")
    if not len(history):
        print("  (no reduction points reached yet)")
    if track:
        print(f"HSVs tracked at {len(track)} points (steps {track[0]['step']}-{track[-1]['step']}); "
              "overlap of the top-r state sets between consecutive points (1 = the same states):")
        for layer in sorted({e["layer"] for row in track for e in row["layers"]}):
            parts = []
            for tau in track_taus(config):
                points = ranking_stability(track, layer, tau)
                if points:
                    overlaps = [p[2] for p in points]
                    parts.append(f"tau {tau:g}: mean {sum(overlaps) / len(overlaps):.3f}, "
                                 f"min {min(overlaps):.3f}, last {overlaps[-1]:.3f}")
            print(f"  layer {layer}: " + ("; ".join(parts) if parts else "no comparable points"))
    for path in files:
        print(f"wrote {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from shrinkssm.train.generate import decoding_speed, format_decoding, generate
    from shrinkssm.train.build import build_model
    from shrinkssm.train.loading import load_run

    run = load_run(args.run, allow_nonfinite=args.allow_nonfinite)
    _warn_nonfinite(run, args)
    vocab = run.splits.meta.get("vocab")
    if run.model.task != "lm" or vocab is None:
        raise _UsageError(f"{args.run} is not a character-level language model run "
                          f"(task {run.model.task!r})")
    index = {ch: i for i, ch in enumerate(vocab)}
    prompt = torch.tensor([[index.get(ch, 0) for ch in args.prompt]], dtype=torch.long)
    generator = torch.Generator().manual_seed(args.seed)
    tokens = generate(run.model, prompt, args.length, temperature=args.temperature,
                      top_k=args.top_k, generator=generator)
    print("".join(vocab[i] if i else "?" for i in tokens[0].tolist()))
    initial = run.checkpoint["extra"]["initial_dims"]
    models = [run.model]
    if initial != run.model.state_dims():
        models.append(build_model(run.config, run.splits).eval())     # the initial sizes
    speeds, ratios = decoding_speed(models, n_tokens=args.speed_tokens,
                                    batch_size=args.speed_batch, repeats=args.speed_repeats)
    print(format_decoding(speeds, ratios, [run.model.state_dims(), initial], args.speed_tokens,
                          args.speed_batch), file=sys.stderr)
    return 0


def cmd_data_prepare(args: argparse.Namespace) -> int:
    from shrinkssm.data.prepare import prepare
    from shrinkssm.data.wording import for_prepare
    from shrinkssm.train.config import parse_overrides

    options = {}
    for item in args.options:
        key, sep, _ = item.partition("=")
        if not sep or not key or "." in key:
            raise _UsageError(f"option {item!r} is not of the form key=value")
        options.update(parse_overrides([f"option.{item}"])["option"])
    try:
        path = prepare(args.name, args.dest, **options)
    except (ValueError, OSError, RuntimeError) as exc:
        raise _UsageError(f"data prepare {args.name}: {for_prepare(str(exc), args.name)}") from None
    print(f"{args.name}: ready in {path}")
    return 0


def cmd_data_list(args: argparse.Namespace) -> int:
    from shrinkssm.data import available_datasets, dataset_options
    from shrinkssm.data.wording import yaml_value

    rows = available_datasets()
    width = max(len(r.name) for r in rows)
    for r in rows:
        status = "installed" if r.installed else "not installed"
        print(f"{r.name:<{width}}  {status:<13}  {r.description}")
        if options := dataset_options(r.name):
            print(f"{'':<{width}}  {'':<13}  options: " + ", ".join(
                f"data.options.{k}={yaml_value(v)}" for k, v in options.items()))
        if not r.installed:
            print(f"{'':<{width}}  {'':<13}  -> {r.how_to_install}")
    return 0


class _UsageError(ValueError):
    pass


_NONFINITE_HELP = "load a checkpoint even if its weights hold NaN or infinite values"


def build_parser() -> argparse.ArgumentParser:
    from shrinkssm.data.prepare import PREPARERS, describe_preparers
    from shrinkssm.train.config import CADENCE_HELP

    parser = argparse.ArgumentParser(
        prog="shrinkssm",
        description="Train deep State Space Models that start large and shrink while they train.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a model (default: sequential MNIST, tau=0.01)",
                           description="Train with in-training compression. Settings come from "
                           "the defaults, then --config, then KEY=VALUE overrides "
                           "(e.g. train.steps=2000 model.d_state=64 compress.tol=0.02).",
                           epilog=CADENCE_HELP)
    train.add_argument("--config", metavar="FILE.yaml", help="YAML config file (see configs/)")
    train.add_argument("--out", metavar="DIR",
                       help="run directory (default: runs/<time>-<data>-<mode>)")
    train.add_argument("--resume", metavar="RUN", help="continue the run in this directory")
    train.add_argument("--force", action="store_true",
                       help="use an --out directory that is not empty: a previous run in it is "
                       "removed first (its checkpoint, logs and plots); other files are left "
                       "alone, except that the run writes its own config.yaml, metrics.jsonl, ...")
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run's last checkpoint on a split")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--split", default="test", choices=("test", "val", "train"))
    ev.add_argument("--allow-nonfinite", action="store_true", help=_NONFINITE_HELP)
    ev.set_defaults(func=cmd_eval)

    an = sub.add_parser("analyze", help="reduction history table and plots of a run")
    an.add_argument("run", help="run directory")
    an.add_argument("--allow-nonfinite", action="store_true", help=_NONFINITE_HELP)
    an.set_defaults(func=cmd_analyze)

    data = sub.add_parser("data", help="data sets")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    dl = data_sub.add_parser("list", help="what is available, installed, and how to install it")
    dl.set_defaults(func=cmd_data_list)
    dp = data_sub.add_parser("prepare", help="build or fetch a data set's files (listops, "
                             "shakespeare, pathfinder)", epilog=describe_preparers(),
                             formatter_class=argparse.RawDescriptionHelpFormatter)
    dp.add_argument("name", help=", ".join(sorted(PREPARERS)))
    dp.add_argument("--dest", metavar="DIR", help="directory (default: where the loader looks)")
    dp.add_argument("options", nargs="*", metavar="KEY=VALUE", help="preparer options")
    dp.set_defaults(func=cmd_data_prepare)

    gen = sub.add_parser("generate", help="sample text from a language-model run (recurrent mode)")
    gen.add_argument("run", help="run directory")
    gen.add_argument("--prompt", default="ROMEO:\n")
    gen.add_argument("--allow-nonfinite", action="store_true", help=_NONFINITE_HELP)
    gen.add_argument("--length", type=int, default=400)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--speed-tokens", type=int, default=300,
                     help="tokens per timing run of the decoding speed")
    gen.add_argument("--speed-batch", type=int, default=1,
                     help="streams decoded side by side when timing (tokens/s counts all)")
    gen.add_argument("--speed-repeats", type=int, default=7,
                     help="timed runs per model, after one untimed warm-up (median and range "
                     "are reported)")
    gen.set_defaults(func=cmd_generate)
    return parser



def configure_openmp(environ=os.environ, modules=sys.modules) -> None:
    """Make idle OpenMP threads sleep rather than spin (``OMP_WAIT_POLICY=PASSIVE``), unless the
    environment says otherwise; only before torch is imported, when it can still take effect.

    Spinning threads make back-to-back parallel regions start sooner on a dedicated machine, but
    when another process shares the cores a spinning thread takes the CPU from the thread it waits
    for: with the other core of a 2-core machine kept busy, a 2-thread sMNIST step at N = 13 took
    1.8x the time of a 1-thread step (`benchmarks/contention.py`); with passive waiting 1.0x, at a
    cost of about 10% of the 2-thread speed-up on an idle machine. `OMP_WAIT_POLICY=ACTIVE` brings
    spinning back. The command line owns its process; importing the library changes nothing."""
    if "torch" not in modules:
        environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv: list[str] | None = None) -> int:
    configure_openmp()
    from shrinkssm.data import DataFileError, DataNotFoundError
    from shrinkssm.train.checkpoint import CheckpointError
    from shrinkssm.train.config import ConfigError
    from shrinkssm.train.rundir import RunDirError, describe_os_error
    from shrinkssm.train.trainer import TrainingDiverged

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take KEY=VALUE positionals after an option (`data prepare X --dest D k=v`)
    listed = "overrides" if hasattr(args, "overrides") else "options" if hasattr(args, "options") else None
    if extra and listed and all("=" in item and not item.startswith("-") for item in extra):
        getattr(args, listed).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ConfigError, CheckpointError, DataNotFoundError, DataFileError, _UsageError,
            RunDirError) as exc:
        print(f"shrinkssm: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"shrinkssm: training stopped: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:                  # a file the command met that the OS refused
        where = f" {exc.filename}" if exc.filename else ""
        print(f"shrinkssm: error: cannot access{where}: {describe_os_error(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nshrinkssm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
