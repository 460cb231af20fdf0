"""The training loop of ``shrinkssm train``: one run, in one run directory.

The :class:`Trainer` knows the loop -- batches, steps, evaluation, logging, checkpoints -- and
delegates everything else: the model to :mod:`shrinkssm.nn`, when and how much to compress to the
:class:`~shrinkssm.compress.Compressor`, losses to :class:`~shrinkssm.train.objective.Objective`.

Run directory::

    config.yaml            resolved config            metrics.jsonl    one row per logged step
    checkpoints/last.pt    latest checkpoint          reductions.json  reduction history
    checkpoints/best.pt    best validation so far     hsv_track.jsonl  HSVs every compress.track_every
    plots/*.png            curves, state sizes, HSVs  summary.json     final results

Best checkpoint: at every validation (``train.eval_every``) whose score beats every earlier one
(the task's metric as "higher is better": accuracy up, loss-like metrics down), the whole state is
written to ``checkpoints/best.pt``, layout of the reduced model included, so it loads like
``last.pt``. The summary reports the test metric of that model (``test_<metric>_at_best_val``)
beside the final model's; nothing is chosen on the test split.

One writer: the main process holds the run directory's :class:`~.rundir.RunLock` from
construction to the end of :meth:`Trainer.fit` (a second trainer into the same directory fails with
:class:`~.rundir.RunDirBusy`); on taking it, temporaries left by a killed writer are removed. Every
file is written atomically, and an OS failure (disk full, permission denied) is a
:class:`~.rundir.RunDirError` that names the file and the last good checkpoint.

Interrupts: SIGINT and SIGTERM during :meth:`Trainer.fit` end the current step, write a checkpoint
of it and return (a second signal stops at once). Every reduction point writes a checkpoint too.

Determinism: the batch order depends only on (seed, epoch) and the checkpoint records the epoch and
the position in it, the RNG states, and optimizer, scheduler and compressor states, so a run that
is interrupted and resumed ends where the uninterrupted run would (bit for bit on the CPU).

Data parallel (``torchrun``, :mod:`shrinkssm.train.distributed`): every process holds the whole
model, takes its share of each global batch, and ``DistributedDataParallel`` averages gradients.
Reductions run on every rank with the target ranks taken from rank 0, the new shapes are checked to
agree, and the DDP wrapper (and its gradient buckets) is rebuilt around the new parameters. Only
rank 0 writes files; evaluation is sharded and its statistics summed over ranks.
"""

from __future__ import annotations

import contextlib
import json
import logging
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from tqdm.auto import tqdm

from shrinkssm.compress import ReductionEvent
from shrinkssm.compress.tracking import TRACK_FILE, HSVTracker, read_track
from shrinkssm.data import Batch, DataSplits, SequenceData
from shrinkssm.plots import plot_run, track_taus
from shrinkssm.train.build import build_compressor, build_model, load_data
from shrinkssm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shrinkssm.train.config import ConfigError, RunConfig, build_config
from shrinkssm.train.distributed import DistEnv, init_distributed
from shrinkssm.train.metrics_log import MetricsLog, read_metrics
from shrinkssm.train.objective import Objective, evaluate
from shrinkssm.train.optim import build_optimizer, build_scheduler
from shrinkssm.train.rundir import (RunDirError, RunLock, atomic_write, clean_stale_temporaries,
                                    describe_os_error, write_files_atomically)

__all__ = ["Trainer", "TrainingDiverged"]

log = logging.getLogger("shrinkssm")

_MAX_SKIPPED = 10


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message gives the step and the last good checkpoint."""


@dataclass
class _Position:
    """Where the batch stream stands: epoch, and batches of it already consumed."""

    epoch: int = 0
    batch: int = 0


class Trainer:
    """Train one model as a config says, writing everything into ``run_dir``.

    Parameters
    ----------
    config : RunConfig
        Ignored on resume (the run directory's ``config.yaml`` is authoritative).
    run_dir : path
    resume : bool
        Continue from ``run_dir/checkpoints/last.pt``.
    splits : DataSplits, optional
        Data to use instead of loading ``config.data`` (for tests and notebooks).
    stop_after : int, optional
        Stop (after checkpointing) once this many steps are done: simulates an interruption.
    lock : RunLock, optional
        The run directory's lock, already held by the caller (the CLI takes it before it opens
        ``train.log``); otherwise the main process takes it here. Released at the end of
        :meth:`fit` (or if construction fails).
    dist : DistEnv, optional
        This process's place in a data-parallel job, as :func:`~shrinkssm.train.configure_process`
        returns it; None joins the group ``torchrun`` describes (if any) here.

    Notes
    -----
    Process-wide settings (threads, malloc thresholds, plotting backend) are not the Trainer's:
    call :func:`~shrinkssm.train.configure_process` first for them. The Trainer does seed torch's
    global RNG from ``train.seed`` before building the model (and restores the RNG state on
    resume): that state belongs to the run.
    """

    def __init__(self, config: RunConfig | None, run_dir: str | Path, *, resume: bool = False,
                 splits: DataSplits | None = None, stop_after: int | None = None,
                 lock: RunLock | None = None, dist: DistEnv | None = None) -> None:
        self.run_dir = Path(run_dir)
        self._dist = dist
        self.stop_after = stop_after
        self._lock = lock
        self._stop_signal: int | None = None
        self._saved_step: int | None = None
        try:
            self._setup(config, resume, splits)
        except BaseException:
            self._release()
            raise

    def _setup(self, config: RunConfig | None, resume: bool, splits: DataSplits | None) -> None:
        checkpoint = load_checkpoint(self.checkpoint_path()) if resume else None
        if checkpoint is not None:
            try:
                config = build_config(checkpoint["config"])
            except ConfigError as exc:
                raise CheckpointError(f"checkpoint {self.checkpoint_path()} holds an invalid "
                                      f"config: {exc}") from None
        elif config is None:
            raise ValueError("a new run needs a config")
        config = config.resolved()              # eval, warm-up and log cadence from train.steps
        self.config: RunConfig = config
        cfg = config.train
        self.dist: DistEnv = self._dist if self._dist is not None else \
            init_distributed(cfg.device, cfg.dist_timeout)
        if cfg.batch_size % self.dist.world_size:
            raise ConfigError(f"train.batch_size ({cfg.batch_size}) must be a multiple of the "
                              f"number of processes ({self.dist.world_size})")
        self.device = self.dist.device(cfg.device)
        if self.dist.is_main:
            if self._lock is None:
                self._lock = RunLock(self.run_dir)
            self._lock.acquire()
            for path in clean_stale_temporaries(self.run_dir):
                log.info("removed %s, left by an interrupted writer", path)
        torch.manual_seed(cfg.seed)
        self.splits = splits if splits is not None else load_data(config)
        self.objective = Objective(self.splits.spec)
        self.model = build_model(config, self.splits).to(self.device)
        if self.dist.rank:                       # dropout masks differ between ranks
            torch.manual_seed(cfg.seed + 1_000_003 * self.dist.rank)
        self.initial_dims = self.model.state_dims()
        self.initial_sizes = self.model.state_sizes()
        self.step = 0
        self.position = _Position()
        self.train_seconds = 0.0
        self._eval_seconds = 0.0
        self._window = _Window()
        self._best: dict = {"step": None, "score": None, "val": None}
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self._build_optimization()
        self._wrap()
        self.metrics = None
        if self.dist.is_main:
            atomic_write(self.run_dir / "config.yaml", config.to_yaml())
            self.metrics = MetricsLog(
                self.run_dir / "metrics.jsonl", resume_step=self.step if resume else None,
                tensorboard_dir=self.run_dir / "tensorboard" if cfg.tensorboard else None)
        self.tracker = None
        if self.dist.is_main and config.compress.track_every:
            self.tracker = HSVTracker(config.compress.track_every, self.run_dir / TRACK_FILE,
                                      output=config.compress.output,
                                      resume_step=self.step if resume else None)

    # -- set-up -----------------------------------------------------------------------------------
    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.model, self.config.train)
        self.scheduler = build_scheduler(self.optimizer, self.config.train)
        agree = self.dist.from_main if self.dist.enabled else None
        self.compressor = build_compressor(self.config, self._validation_score, agree)

    def _wrap(self) -> None:
        """The module the loop trains: the model, or a fresh DDP wrapper around its parameters."""
        if not self.dist.enabled:
            self.net = self.model
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        # a selective layer keeps empty placeholders for the state form it is not using; they
        # never see a gradient, which DDP must be told to expect
        unused = any(p.numel() == 0 for p in self.model.parameters())
        self.net = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=ids, find_unused_parameters=unused)

    def _restore(self, ckpt: dict) -> None:
        """Rebuild the reduced shapes, then load every state (all or nothing)."""
        expected = {"d_input": self.model.d_input, "d_output": self.model.d_output,
                    "task": self.model.task}
        if ckpt["model_io"] != expected:
            raise CheckpointError(f"checkpoint was made for data with {ckpt['model_io']}, the "
                                  f"data now gives {expected}")
        try:
            self.model.apply_layout_(ckpt["layout"])
            self.model.load_state_dict(ckpt["model"])
            self._build_optimization()
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            self.compressor.load_state_dict(ckpt["compressor"])
            states = ckpt["rng"]["torch_per_rank"]
            rng_state = states[self.dist.rank] if self.dist.rank < len(states) else None
            if self.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
                torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
            raise CheckpointError(f"checkpoint {self.checkpoint_path()} does not fit this "
                                  f"model: {exc}") from None
        if rng_state is not None:               # a rank new to the job keeps its own seed
            torch.set_rng_state(rng_state)
        self.step = int(ckpt["step"])
        self._saved_step = self.step
        self.position = _Position(int(ckpt["epoch"]), int(ckpt["batch"]))
        self.initial_dims = list(ckpt["extra"]["initial_dims"])
        self.train_seconds = float(ckpt["extra"]["train_seconds"])
        self._best.update(ckpt["extra"].get("best") or {})
        # the metrics window still open at the checkpoint (each rank sums its own batches); with
        # another number of processes the first row after the resume covers the resumed steps only
        windows = ckpt["extra"].get("windows_per_rank") or [ckpt["extra"].get("window")]
        if len(windows) == self.dist.world_size:
            self._window.load(windows[self.dist.rank])
        else:
            log.info("resuming on %d processes (checkpoint: %d): the first metrics row after the "
                     "resume covers the resumed steps only", self.dist.world_size, len(windows))

    # -- data ---------------------------------------------------------------------------------------
    def _train_batches(self) -> Iterator[Batch]:
        """Endless stream of this rank's share of the training batches; keeps the position."""
        cfg = self.config.train
        data: SequenceData = self.splits.train
        if data.num_batches(cfg.batch_size, drop_last=True) == 0:
            raise ConfigError(f"train.batch_size={cfg.batch_size} exceeds the training split "
                              f"({len(data)} sequences)")
        while True:
            for batch in data.iterate(cfg.batch_size, shuffle=True, seed=cfg.seed,
                                      epoch=self.position.epoch, start_batch=self.position.batch,
                                      drop_last=True, rank=self.dist.rank,
                                      world_size=self.dist.world_size):
                self.position.batch += 1
                yield batch
            self.position = _Position(self.position.epoch + 1, 0)

    def _eval_batches(self, data: SequenceData, cap: int | None) -> Iterator[Batch]:
        batches = data.iterate(self.config.train.batch_size, shuffle=False, seed=0, epoch=0,
                               drop_last=False, rank=self.dist.rank,
                               world_size=self.dist.world_size)
        for i, batch in enumerate(batches):
            if cap is not None and i >= cap:
                return
            if len(batch):                      # a rank's share of the last batch may be empty
                yield batch

    def evaluate_split(self, split: str, cap: int | None = None, model=None) -> dict[str, float]:
        """Metrics of the current model (or ``model``) on "train", "val" or "test" (summed over
        ranks)."""
        t0 = time.perf_counter()
        data = getattr(self.splits, split)
        result = evaluate(self.model if model is None else model, self._eval_batches(data, cap),
                          self.objective, self.device, combine=self.dist.sum_stats)
        self._eval_seconds += time.perf_counter() - t0
        return result

    def _validation_score(self, model) -> float:
        return self.objective.score(self.evaluate_split("val", self.config.train.eval_batches))

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def best_path(self) -> Path:
        """``checkpoints/best.pt``: the state at the best validation so far."""
        return self.run_dir / "checkpoints" / "best.pt"

    @property
    def saved_step(self) -> int | None:
        """The step of the last checkpoint this run wrote or resumed from (None: none yet)."""
        return self._saved_step

    def last_good(self) -> str:
        """Where the last good checkpoint of this run is, as a phrase for messages."""
        if self._saved_step is None:
            return "no checkpoint has been written yet"
        return f"the last good checkpoint is {self.checkpoint_path()} (step {self._saved_step})"

    def save(self) -> Path:
        """Write ``checkpoints/last.pt`` (rank 0; every rank takes part in gathering RNG states)
        and ``reductions.json``; refuses (:class:`TrainingDiverged`) to save non-finite weights."""
        return self._write_checkpoint(best=False)

    def save_best(self) -> Path:
        """Write the same payload as :meth:`save` to ``checkpoints/best.pt`` (nothing else)."""
        return self._write_checkpoint(best=True)

    def _write_checkpoint(self, best: bool) -> Path:
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingDiverged(f"parameter {name} is not finite at step {self.step}; "
                                       f"training stopped, {self.last_good()}. Try a lower "
                                       "train.lr or train.grad_clip.")
        rng_states = self.dist.gather(torch.get_rng_state())
        windows = self.dist.gather(self._window.state())
        path = self.best_path() if best else self.checkpoint_path()
        if self.dist.is_main:
            save_checkpoint(path, {
                "step": self.step, "epoch": self.position.epoch, "batch": self.position.batch,
                "config": self.config.model_dump(mode="json"),
                "model_io": {"d_input": self.model.d_input, "d_output": self.model.d_output,
                             "task": self.model.task},
                "layout": self.model.layout(),
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "compressor": self.compressor.state_dict(),
                "rng": {"torch_per_rank": rng_states,
                        "cuda": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None},
                "extra": {"initial_dims": self.initial_dims, "train_seconds": self.train_seconds,
                          "world_size": self.dist.world_size, "window": windows[0],
                          "windows_per_rank": windows, "best": dict(self._best)},
            })
            if not best:
                self._saved_step = self.step
                self._save_history()
        self.dist.barrier()
        return path

    def _save_history(self) -> None:
        atomic_write(self.run_dir / "reductions.json",
                     json.dumps(self.compressor.history.to_dict(), indent=1))

    # -- the loop ---------------------------------------------------------------------------------
    def _train_step(self, batch: Batch) -> tuple[float, dict] | None:
        """One optimizer step; None if the step was skipped for a non-finite loss (on any rank)."""
        cfg = self.config.train
        batch = batch.to(self.device)
        loss, stats = self.objective.loss(self.net(batch.x, batch.mask), batch)
        if not self.dist.all_true(bool(torch.isfinite(loss))):
            self.optimizer.zero_grad(set_to_none=True)
            return None
        loss.backward()
        if cfg.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss.item(), stats

    def _non_finite(self, skipped: int) -> None:
        where = (f"{self.checkpoint_path()} (step {self._saved_step})"
                 if self._saved_step is not None else "none yet")
        if self.config.train.nan_policy == "stop" or skipped > _MAX_SKIPPED:
            reason = "" if self.config.train.nan_policy == "stop" else \
                f" ({skipped} steps in a row)"
            raise TrainingDiverged(
                f"the loss is not finite at step {self.step + 1}{reason}. Last good checkpoint: "
                f"{where}. Try a lower train.lr or set train.grad_clip.")
        log.warning("non-finite loss at step %d: step skipped", self.step + 1)

    def fit(self) -> dict:
        """Train to ``train.steps`` (or ``stop_after``), then test and summarise.

        Returns the summary, or ``{"steps", "interrupted": True, "checkpoint"}`` (and
        ``"signal"``, its name, after SIGINT/SIGTERM) when stopped early with a checkpoint.
        Releases the run directory's lock however it ends. An OS failure is re-raised as
        :class:`RunDirError` saying where the last good checkpoint is.
        """
        try:
            with self._interrupts():
                result = self._fit()
            if result is None:
                return self._finish()
            return result
        except RunDirError as exc:
            raise RunDirError(f"{exc}; {self.last_good()}", exc.path, exc.errno) from None
        except OSError as exc:                  # one not met at a known write (tensorboard, ...)
            where = exc.filename or self.run_dir
            raise RunDirError(f"cannot write {where}: {describe_os_error(exc)}; "
                              f"{self.last_good()}", where, exc.errno) from None
        finally:
            self._close()

    @contextlib.contextmanager
    def _interrupts(self):
        """While training: SIGINT/SIGTERM ask the loop to stop after the current step with a
        checkpoint; a second SIGINT (Ctrl-C again) raises KeyboardInterrupt at once, a repeated
        SIGTERM is the same request (supervisors such as torchrun send it to the process and its
        group). Only in the main thread (elsewhere signals cannot be caught); the previous
        handlers come back afterwards."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {}

        def handler(signum, frame):
            if self._stop_signal is not None:
                if signum == signal.SIGINT:
                    raise KeyboardInterrupt
                return
            self._stop_signal = signum
            again = " (Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            log.warning("%s: stopping after step %d with a checkpoint%s",
                        signal.Signals(signum).name, self.step + 1, again)

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)

    def _stop_requested(self) -> bool:
        wanted = self._stop_signal is not None
        if self.dist.enabled:                   # every rank stops at the same step
            wanted = not self.dist.all_true(not wanted)
        return wanted

    def _fit(self) -> dict | None:
        cfg = self.config.train
        end = cfg.steps if self.stop_after is None else min(cfg.steps, self.stop_after)
        batches = self._train_batches()
        window = self._window
        skipped = 0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (cfg.progress and self.dist.is_main),
                   desc="train", unit="step", dynamic_ncols=True)
        self.model.train()
        try:
            while self.step < end:
                t0 = time.perf_counter()
                result = self._train_step(next(batches))
                if result is None:
                    skipped += 1
                    self._non_finite(skipped)
                    continue
                skipped = 0
                self.step += 1
                self._eval_seconds = 0.0
                if self.tracker is not None and self.tracker.due(self.step):
                    self._track()
                if self.compressor.schedule.is_due(self.step):
                    # buffers that each process updated from its own batches (batch-norm
                    # statistics, selective surrogates) must agree before a reduction is planned
                    self.dist.broadcast_(list(self.model.buffers()))
                event = self.compressor.step(self.step, self.model, self.optimizer)
                elapsed = time.perf_counter() - t0 - self._eval_seconds
                self.train_seconds += elapsed
                window.add(*result, elapsed)
                if event is not None:
                    self._on_reduction(event)
                self._log(window, bar, last=self.step == end)
                stop = self._stop_requested()
                if (self.step % cfg.checkpoint_every == 0 or self.step == end
                        or event is not None or stop):
                    self.save()
                bar.update(1)
                if stop:
                    break
        finally:
            bar.close()
        if self.step < cfg.steps:
            result = {"steps": self.step, "interrupted": True,
                      "checkpoint": str(self.checkpoint_path())}
            if self._stop_signal is not None:
                result["signal"] = signal.Signals(self._stop_signal).name
            return result
        return None

    def _log(self, window: "_Window", bar, last: bool) -> None:
        """Write a metrics row when due (every rank joins the collectives, rank 0 writes)."""
        cfg = self.config.train
        row = None
        if self.step % cfg.log_every == 0 or last:
            row = self._log_row(window)
            window.clear()
        if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
            val = self.evaluate_split("val", cfg.eval_batches)
            row = row or {"step": self.step, "wall_seconds": round(self.train_seconds, 4)}
            row.update({f"val_{k}": v for k, v in val.items()})
            self._keep_if_best(val)
        if row is not None:
            self._write(row)
            if "loss" in row:
                bar.set_postfix(self._postfix(row), refresh=False)

    def _keep_if_best(self, val: dict) -> None:
        """Write ``checkpoints/best.pt`` when this validation beats every earlier one (ties keep
        the earlier; the score is "higher is better", see :meth:`Objective.score`)."""
        score = self.objective.score(val)
        if self._best["score"] is not None and not score > self._best["score"]:
            return
        self._best = {"step": self.step, "score": float(score),
                      "val": float(val[self.objective.metric])}
        self.save_best()

    def _track(self) -> None:
        """Record every layer's HSVs (``compress.track_every``); its time is not training time."""
        t0 = time.perf_counter()
        self.tracker.record(self.step, self.model)
        self._eval_seconds += time.perf_counter() - t0

    def _test_at_best(self, final_test: dict) -> dict | None:
        """Test metrics of the model in ``checkpoints/best.pt`` (the final model's when the best
        validation was the last one); None if no validation ran."""
        if self._best["step"] is None:
            return None
        if self._best["step"] == self.step:
            return final_test
        ckpt = load_checkpoint(self.best_path(), map_location=self.device)
        model = build_model(self.config, self.splits)
        model.apply_layout_(ckpt["layout"])
        model.load_state_dict(ckpt["model"])
        return self.evaluate_split("test", model=model.to(self.device))

    def _write(self, row: dict) -> None:
        if self.metrics is not None:
            self.metrics.write(row)

    def _log_row(self, window: "_Window") -> dict:
        totals = self.dist.sum_stats({**window.stats, "_loss": window.loss, "_steps": window.steps})
        steps = totals.pop("_steps")
        loss = totals.pop("_loss") / max(steps, 1)
        metrics = self.objective.summarize(totals)
        row = {"step": self.step, "wall_seconds": round(self.train_seconds, 4), "loss": loss,
               "lr": max(self.scheduler.get_last_lr()),
               "state_dims": self.model.state_dims(),
               "steps_per_second": window.steps / max(window.seconds, 1e-9)}
        row.update({f"train_{k}": v for k, v in metrics.items() if k != "loss"})
        return row

    def _postfix(self, row: dict) -> dict:
        post = {"loss": f"{row['loss']:.3f}"}
        metric = self.objective.metric
        if f"val_{metric}" in row:              # shown until the next validation
            self._bar_val = f"{row[f'val_{metric}']:.3f}"
        if getattr(self, "_bar_val", None) is not None:
            post[f"val_{metric}"] = self._bar_val
        post["N"] = "+".join(str(n) for n in row["state_dims"])
        return post

    def _on_reduction(self, event: ReductionEvent) -> None:
        changed = [e for e in event.layers if e.new < e.old]
        if changed or event.rolled_back:
            dims = self.dist.gather(self.model.state_dims())
            if any(d != dims[0] for d in dims):
                raise RuntimeError(f"processes disagree on the reduced state sizes at step "
                                   f"{event.step}: {dims}")
            self._wrap()                        # new parameters: new DDP buckets
        if not changed:
            reasons = sorted({e.skipped for e in event.layers if e.skipped})
            log.info("step %d: reduction point, no layer reduced (%s)", event.step,
                     "; ".join(reasons))
        else:
            dims = ", ".join(f"layer {e.layer}: {e.old} -> {e.new}" for e in changed)
            extra = " -- rolled back: validation fell too far" if event.rolled_back else ""
            log.info("step %d: reduced %s%s", event.step, dims, extra)
        self._write({"step": self.step, "wall_seconds": self.train_seconds,
                     "reduction": True, "state_dims": self.model.state_dims(),
                     "reduction_seconds": event.reduction_seconds,
                     "eval_seconds": event.eval_seconds,
                     "val_score_before": event.metric_before,
                     "val_score_after": event.metric_after})
        # reductions.json is written with the checkpoint that follows every reduction point

    def _finish(self) -> dict:
        test = self.evaluate_split("test")
        val = self.evaluate_split("val")
        metric = self.objective.metric
        at_best = self._test_at_best(test)
        summary = {
            "data": self.config.data.name, "task": self.objective.kind, "metric": metric,
            f"test_{metric}": test[metric], f"val_{metric}": val[metric],
            "test_loss": test["loss"], "val_loss": val["loss"],
            "state_dims": self.model.state_dims(), "initial_state_dims": self.initial_dims,
            "state_sizes": self.model.state_sizes(), "initial_state_sizes": self.initial_sizes,
            "state_units": {"state_dims": f"d_state per layer: {self.model.state_unit()}",
                            "state_sizes": "state_size per layer: real numbers of recurrent "
                                           "state per sequence and step"},
            "train_seconds": round(self.train_seconds, 3), "steps": self.step,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "reductions": [{"step": e.step, "dims": e.state_dims_after,
                            "rolled_back": e.rolled_back, "reduction_seconds": e.reduction_seconds,
                            "eval_seconds": e.eval_seconds} for e in self.compressor.history],
            "processes": self.dist.world_size,
            "run_dir": str(self.run_dir),
        }
        if at_best is not None:
            summary.update({f"test_{metric}_at_best_val": at_best[metric],
                            f"best_val_{metric}": self._best["val"],
                            "best_val_step": self._best["step"],
                            "best_checkpoint": str(self.best_path())})
        if "accuracy" in test:
            summary.setdefault("test_accuracy", test["accuracy"])
            summary.setdefault("val_accuracy", val["accuracy"])
        baseline = self.splits.meta.get("baseline", {}).get("test")
        if baseline is not None and metric in baseline:       # e.g. seasonal-naive forecasts
            summary["baseline_test"] = {"name": f"seasonal naive (season {baseline.get('season')})",
                                        **{k: v for k, v in baseline.items() if k != "season"}}
        if self.dist.is_main:
            atomic_write(self.run_dir / "summary.json", json.dumps(summary, indent=2))
            self._save_history()
            self.plot()
        # every rank leaves together: a gloo process that tore its group down and exited while
        # rank 0 was still writing aborted in C++ at exit in about one job in six
        self.dist.barrier()
        return summary

    def _close(self) -> None:
        metrics, self.metrics = getattr(self, "metrics", None), None
        tracker, self.tracker = getattr(self, "tracker", None), None
        try:
            if metrics is not None:
                metrics.close()
            if tracker is not None:
                tracker.close()
        finally:
            self._release()

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def plot(self) -> list[Path]:
        """Write the run's plots into ``run_dir/plots`` (each PNG whole, or not at all)."""
        rows = read_metrics(self.run_dir / "metrics.jsonl")
        track = read_track(self.run_dir / TRACK_FILE) if self.config.compress.track_every else []
        return write_files_atomically(
            self.run_dir / "plots",
            lambda staging: plot_run(rows, self.compressor.history, self.initial_dims,
                                     self.config.train.steps, staging, self.objective.metric,
                                     self.model.state_unit(), track, track_taus(self.config)))


class _Window:
    """Running sums over the steps since the last metrics row."""

    def __init__(self) -> None:
        self.clear()

    def state(self) -> dict:
        """The open window, for checkpoints (a resumed run's next row covers the same steps)."""
        return {"loss": self.loss, "steps": self.steps, "seconds": self.seconds,
                "stats": dict(self.stats)}

    def load(self, state: dict | None) -> None:
        self.clear()
        if state:
            self.loss, self.steps = float(state["loss"]), int(state["steps"])
            self.seconds, self.stats = float(state["seconds"]), dict(state["stats"])

    def clear(self) -> None:
        self.loss, self.steps, self.seconds = 0.0, 0, 0.0
        self.stats: dict[str, float] = {}

    def add(self, loss: float, stats: dict, seconds: float) -> None:
        self.loss += loss
        self.steps += 1
        self.seconds += seconds
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0) + value
