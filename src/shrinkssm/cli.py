"""The ``shrinkssm`` command line.

::

    shrinkssm train [--config FILE.yaml] [--out DIR] [KEY=VALUE ...]   train (default: sMNIST, tau=0.01)
    shrinkssm train --resume DIR                                        continue an interrupted run
    shrinkssm eval RUN [--split test]                                   a run's checkpoint on a split
    shrinkssm analyze RUN                                               reduction history and plots
    shrinkssm data list                                                 data sets, installed or not
    shrinkssm data prepare NAME [--dest DIR] [KEY=VALUE ...]            generate / fetch data files
    shrinkssm generate RUN [--prompt TEXT]                              sample from a language model

Exit codes: 0 success, 1 training diverged or failed, 2 bad usage / config / checkpoint / data.
"""

from __future__ import annotations

import argparse
import json
import logging
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
        handler = _AboveTheBar()
        handler.setFormatter(logging.Formatter("shrinkssm: %(message)s"))
        log.addHandler(handler)
    for old in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(old)              # a previous run's log file (several runs, one process)
        old.close()
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
    log.propagate = False


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


def cmd_train(args: argparse.Namespace) -> int:
    from shrinkssm.train.checkpoint import load_checkpoint
    from shrinkssm.train.config import build_config, load_config
    from shrinkssm.train.distributed import init_distributed, shutdown_distributed
    from shrinkssm.train.loading import check_run_dir
    from shrinkssm.train.trainer import Trainer

    if args.resume:
        if args.config or args.overrides or args.out:
            raise _UsageError("--resume continues a run with its saved config; it takes no "
                              "--config, --out or overrides")
        run_dir = Path(args.resume)
        check_run_dir(run_dir, "--resume")
        config = build_config(load_checkpoint(run_dir / "checkpoints" / "last.pt")["config"])
    else:
        config = load_config(args.config, args.overrides)
    dist = init_distributed(config.train.device, config.train.dist_timeout)
    try:
        if not args.resume:
            default = _default_run_dir(config.data.name, config.compress.mode)
            run_dir = Path(args.out) if args.out else Path(dist.from_main(str(default)))
            if (run_dir / "checkpoints" / "last.pt").exists():
                raise _UsageError(f"{run_dir} already holds a run; use --resume {run_dir} to "
                                  "continue it or --out to choose another directory")
        _setup_logging(run_dir if dist.is_main else None, args.verbose, quiet=not dist.is_main)
        trainer = Trainer(config, run_dir, resume=bool(args.resume))
        if args.resume:
            log.info("resuming %s at step %d of %d", run_dir, trainer.step, config.train.steps)
        else:
            log.info("run directory %s; data %s (%d train / %d val / %d test); model %s%s",
                     run_dir, config.data.name, len(trainer.splits.train),
                     len(trainer.splits.val), len(trainer.splits.test), trainer.model.state_dims(),
                     f"; {dist.world_size} processes" if dist.enabled else "")
        summary = trainer.fit()
    finally:
        shutdown_distributed()
    if not dist.is_main:
        return 0
    if summary.get("interrupted"):
        print(f"stopped at step {summary['steps']}; continue with: shrinkssm train --resume {run_dir}")
        return 0
    _print_summary(summary)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from shrinkssm.train.loading import load_run
    from shrinkssm.train.objective import Objective, evaluate

    run = load_run(args.run)
    data = getattr(run.splits, args.split)
    batches = data.iterate(run.config.train.batch_size, shuffle=False, seed=0, epoch=0,
                           drop_last=False)
    metrics = evaluate(run.model, batches, Objective(run.splits.spec))
    print(json.dumps({"split": args.split, "step": run.step,
                      "state_dims": run.model.state_dims(), **metrics}, indent=2))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from shrinkssm.compress import ReductionHistory
    from shrinkssm.plots import plot_run
    from shrinkssm.train.loading import load_run
    from shrinkssm.train.metrics_log import read_metrics

    run = load_run(args.run, with_model=False)
    history = ReductionHistory.from_dict(run.checkpoint["compressor"]["history"])
    initial = run.checkpoint["extra"]["initial_dims"]
    rows = read_metrics(run.run_dir / "metrics.jsonl")
    metric = next((k[4:] for r in rows for k in r if k.startswith("val_") and k != "val_loss"
                   and not k.startswith("val_score")), "accuracy")
    files = plot_run(rows, history, initial, run.config.train.steps, run.run_dir / "plots", metric)
    print(f"run {run.run_dir}: step {run.step} of {run.config.train.steps}, "
          f"mode {run.config.compress.mode}, method {run.config.compress.method}")
    print(f"{'step':>8}  {'layer':>5}  {'before':>6}  {'after':>6}  {'bound':>10}  "
          f"{'kept energy':>11}  {'reduce s':>8}  note")
    for event in history:
        for le in event.layers:
            bound = f"{le.error_bound:.3e}" if le.error_bound is not None else "-"
            kept = f"{le.kept_energy:.4f}" if le.kept_energy is not None else "-"
            note = le.skipped or ("rolled back" if event.rolled_back else "")
            print(f"{event.step:>8}  {le.layer:>5}  {le.old:>6}  {le.new:>6}  {bound:>10}  "
                  f"{kept:>11}  {le.seconds:>8.3f}  {note}")
    if not len(history):
        print("  (no reduction points reached yet)")
    for path in files:
        print(f"wrote {path}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from shrinkssm.train.generate import decoding_speed, format_decoding, generate
    from shrinkssm.train.loading import load_run
    from shrinkssm.train.trainer import build_model

    run = load_run(args.run)
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
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted overrides")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="evaluate a run's last checkpoint on a split")
    ev.add_argument("run", help="run directory")
    ev.add_argument("--split", default="test", choices=("test", "val", "train"))
    ev.set_defaults(func=cmd_eval)

    an = sub.add_parser("analyze", help="reduction history table and plots of a run")
    an.add_argument("run", help="run directory")
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



def main(argv: list[str] | None = None) -> int:
    from shrinkssm.data import DataFileError, DataNotFoundError
    from shrinkssm.train.checkpoint import CheckpointError
    from shrinkssm.train.config import ConfigError
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
    except (ConfigError, CheckpointError, DataNotFoundError, DataFileError, _UsageError) as exc:
        print(f"shrinkssm: error: {exc}", file=sys.stderr)
        return 2
    except TrainingDiverged as exc:
        print(f"shrinkssm: training stopped: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nshrinkssm: interrupted; the last checkpoint is kept (resume with "
              "`shrinkssm train --resume RUN`)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
