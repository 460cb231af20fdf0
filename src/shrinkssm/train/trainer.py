"""The training loop of ``shrinkssm train``: one run, in one run directory.

The :class:`Trainer` knows the loop -- batches, steps, evaluation, logging, checkpoints -- and
delegates everything else: the model to :mod:`shrinkssm.nn`, when and how much to compress to the
:class:`~shrinkssm.compress.Compressor`, losses to :class:`~shrinkssm.train.objective.Objective`.

Run directory::

    config.yaml            resolved config            metrics.jsonl    one row per logged step
    checkpoints/last.pt    latest checkpoint          reductions.json  reduction history
    plots/*.png            curves, state sizes, HSVs  summary.json     final results

Determinism: the batch order depends only on (seed, epoch) and the checkpoint records the epoch and
the position in it, the RNG states, and optimizer, scheduler and compressor states, so a run that
is interrupted and resumed ends where the uninterrupted run would (bit for bit on the CPU).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from shrinkssm.compress import Compressor, ReductionEvent, ReductionSchedule
from shrinkssm.data import Batch, DataFileError, DataSplits, SequenceData, load_dataset
from shrinkssm.nn import SSMModel
from shrinkssm.plots import plot_run
from shrinkssm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from shrinkssm.train.config import ConfigError, RunConfig, build_config
from shrinkssm.train.metrics_log import MetricsLog, read_metrics
from shrinkssm.train.objective import Objective, evaluate
from shrinkssm.train.optim import build_optimizer, build_scheduler

__all__ = ["Trainer", "TrainingDiverged", "build_model", "build_compressor"]

log = logging.getLogger("shrinkssm")

_MAX_SKIPPED = 10


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message gives the step and the last good checkpoint."""


def _load_data(config: RunConfig) -> DataSplits:
    """The data set of ``config.data``; an unknown name or option is a config error."""
    try:
        return load_dataset(config.data.name, root=config.data.root,
                            val_fraction=config.data.val_fraction, seed=config.train.seed,
                            **config.data.options)
    except DataFileError:
        raise
    except ValueError as exc:
        raise ConfigError(f"data: {exc}") from None


def build_model(config: RunConfig, splits: DataSplits) -> SSMModel:
    """The model a config asks for, sized for the data set's task."""
    spec = splits.spec
    return SSMModel(config.model, d_input=spec.vocab_size if spec.tokens else spec.d_input,
                    d_output=spec.output_dim, task=spec.kind, tokens=spec.tokens,
                    per_step=spec.per_step)


def build_compressor(config: RunConfig, evaluate_fn=None) -> Compressor:
    """The compressor of the ``compress`` section, scheduled over ``train.steps``."""
    c = config.compress
    if c.steps:
        schedule = ReductionSchedule.at(c.steps)
    elif c.mode == "none" and c.n_points == 0:
        schedule = ReductionSchedule(())
    else:
        schedule = ReductionSchedule.equidistant(config.train.steps, c.n_points, c.window)
    return Compressor(schedule, mode=c.mode, tol=c.tol, fraction=c.fraction, method=c.method,
                      output=c.output, selection=c.selection, gate=c.gate, min_rank=c.min_rank,
                      optimizer_state=c.optimizer_state, evaluate=evaluate_fn, margin=c.margin,
                      seed=config.train.seed)


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
    """

    def __init__(self, config: RunConfig | None, run_dir: str | Path, *, resume: bool = False,
                 splits: DataSplits | None = None, stop_after: int | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.resume = resume
        self.stop_after = stop_after
        checkpoint = None
        if resume:
            checkpoint = load_checkpoint(self.run_dir / "checkpoints" / "last.pt")
            config = build_config(checkpoint["config"])
        elif config is None:
            raise ValueError("a new run needs a config")
        self.config: RunConfig = config
        cfg = config.train
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = torch.device("cuda" if cfg.device == "cuda" or (
            cfg.device == "auto" and torch.cuda.is_available()) else "cpu")
        torch.manual_seed(cfg.seed)
        self.splits = splits if splits is not None else _load_data(config)
        self.objective = Objective(self.splits.spec)
        self.model = build_model(config, self.splits).to(self.device)
        self.initial_dims = self.model.state_dims()
        self.step = 0
        self.position = _Position()
        self.train_seconds = 0.0
        self._eval_seconds = 0.0
        if checkpoint is not None:
            self._restore(checkpoint)
        else:
            self._build_optimization()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "config.yaml").write_text(config.to_yaml())
        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl",
                                  resume_step=self.step if resume else None,
                                  tensorboard_dir=self.run_dir / "tensorboard" if cfg.tensorboard else None)

    # -- set-up -----------------------------------------------------------------------------------
    def _build_optimization(self) -> None:
        self.optimizer = build_optimizer(self.model, self.config.train)
        self.scheduler = build_scheduler(self.optimizer, self.config.train)
        self.compressor = build_compressor(self.config, self._validation_score)

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
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint does not fit this model: {exc}") from None
        self.step = int(ckpt["step"])
        self.position = _Position(int(ckpt["epoch"]), int(ckpt["batch"]))
        self.initial_dims = list(ckpt["extra"]["initial_dims"])
        self.train_seconds = float(ckpt["extra"]["train_seconds"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if torch.cuda.is_available() and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])

    # -- data ---------------------------------------------------------------------------------------
    def _train_batches(self) -> Iterator[Batch]:
        """Endless stream of training batches from the current position; keeps it up to date."""
        cfg = self.config.train
        data: SequenceData = self.splits.train
        per_epoch = data.num_batches(cfg.batch_size, drop_last=True)
        if per_epoch == 0:
            raise ValueError(f"train.batch_size={cfg.batch_size} exceeds the training split "
                             f"({len(data)} sequences)")
        while True:
            for batch in data.iterate(cfg.batch_size, shuffle=True, seed=cfg.seed,
                                      epoch=self.position.epoch, start_batch=self.position.batch,
                                      drop_last=True):
                self.position.batch += 1
                yield batch
            self.position = _Position(self.position.epoch + 1, 0)

    def _eval_batches(self, data: SequenceData, cap: int | None) -> Iterator[Batch]:
        batches = data.iterate(self.config.train.batch_size, shuffle=False, seed=0, epoch=0,
                               drop_last=False)
        for i, batch in enumerate(batches):
            if cap is not None and i >= cap:
                return
            yield batch

    def evaluate_split(self, split: str, cap: int | None = None) -> dict[str, float]:
        """Metrics of the current model on "train", "val" or "test"."""
        t0 = time.perf_counter()
        data = getattr(self.splits, split)
        result = evaluate(self.model, self._eval_batches(data, cap), self.objective, self.device)
        self._eval_seconds += time.perf_counter() - t0
        return result

    def _validation_score(self, model) -> float:
        return self.objective.score(self.evaluate_split("val", self.config.train.eval_batches))

    # -- checkpoints ------------------------------------------------------------------------------
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def save(self) -> Path:
        for name, param in self.model.named_parameters():
            if not torch.isfinite(param).all():
                raise TrainingDiverged(f"parameter {name} is not finite at step {self.step}; "
                                       f"the last good checkpoint ({self.checkpoint_path()}) "
                                       "was kept")
        save_checkpoint(self.checkpoint_path(), {
            "step": self.step, "epoch": self.position.epoch, "batch": self.position.batch,
            "config": self.config.model_dump(mode="json"),
            "model_io": {"d_input": self.model.d_input, "d_output": self.model.d_output,
                         "task": self.model.task},
            "layout": self.model.layout(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "compressor": self.compressor.state_dict(),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "extra": {"initial_dims": self.initial_dims, "train_seconds": self.train_seconds},
        })
        self.compressor.history.save(self.run_dir / "reductions.json")
        return self.checkpoint_path()

    # -- the loop ---------------------------------------------------------------------------------
    def _train_step(self, batch: Batch) -> tuple[float, dict] | None:
        """One optimizer step; None if the step was skipped for a non-finite loss."""
        cfg = self.config.train
        batch = batch.to(self.device)
        loss, stats = self.objective.loss(self.model(batch.x, batch.mask), batch)
        if not torch.isfinite(loss):
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
        good = self.checkpoint_path()
        where = f"{good} (step {load_checkpoint(good)['step']})" if good.exists() else "none yet"
        if self.config.train.nan_policy == "stop" or skipped > _MAX_SKIPPED:
            reason = "" if self.config.train.nan_policy == "stop" else \
                f" ({skipped} steps in a row)"
            raise TrainingDiverged(
                f"the loss is not finite at step {self.step + 1}{reason}; training stopped. "
                f"Last good checkpoint: {where}. Try a lower train.lr or train.grad_clip.")
        log.warning("non-finite loss at step %d: step skipped", self.step + 1)

    def fit(self) -> dict:
        """Train to ``train.steps`` (or ``stop_after``), then test and summarise."""
        cfg = self.config.train
        end = cfg.steps if self.stop_after is None else min(cfg.steps, self.stop_after)
        batches = self._train_batches()
        window: dict = {}
        window_loss, window_steps, window_time = 0.0, 0, 0.0
        skipped = 0
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress,
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
                loss, stats = result
                self._eval_seconds = 0.0
                event = self.compressor.step(self.step, self.model, self.optimizer)
                elapsed = time.perf_counter() - t0 - self._eval_seconds
                self.train_seconds += elapsed
                window_loss += loss
                window_steps += 1
                window_time += elapsed
                for key, value in stats.items():
                    window[key] = window.get(key, 0) + value
                if event is not None:
                    self._on_reduction(event)
                if self.step % cfg.log_every == 0 or self.step == end:
                    row = self._log_row(window_loss / window_steps, window, window_steps / window_time)
                    window, window_loss, window_steps, window_time = {}, 0.0, 0, 0.0
                    if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                        row.update({f"val_{k}": v for k, v in self.evaluate_split(
                            "val", cfg.eval_batches).items()})
                    self.metrics.write(row)
                    bar.set_postfix(self._postfix(row), refresh=False)
                elif self.step % cfg.eval_every == 0:
                    self.metrics.write({"step": self.step, "wall_seconds": self.train_seconds,
                                        **{f"val_{k}": v for k, v in self.evaluate_split(
                                            "val", cfg.eval_batches).items()}})
                if self.step % cfg.checkpoint_every == 0 or self.step == end:
                    self.save()
                bar.update(1)
        finally:
            bar.close()
        if self.step < cfg.steps:
            self.metrics.close()
            return {"steps": self.step, "interrupted": True}
        return self._finish()

    def _log_row(self, loss: float, stats: dict, steps_per_second: float) -> dict:
        metrics = self.objective.summarize(stats)
        row = {"step": self.step, "wall_seconds": round(self.train_seconds, 4), "loss": loss,
               "lr": max(self.scheduler.get_last_lr()),
               "state_dims": self.model.state_dims(),
               "steps_per_second": steps_per_second}
        row.update({f"train_{k}": v for k, v in metrics.items() if k != "loss"})
        return row

    def _postfix(self, row: dict) -> dict:
        post = {"loss": f"{row['loss']:.3f}"}
        metric = self.objective.metric
        if f"val_{metric}" in row:
            post[f"val_{metric[:3]}"] = f"{row[f'val_{metric}']:.3f}"
        post["N"] = "+".join(str(n) for n in row["state_dims"])
        return post

    def _on_reduction(self, event: ReductionEvent) -> None:
        changed = [e for e in event.layers if e.new < e.old]
        if not changed:
            reasons = sorted({e.skipped for e in event.layers if e.skipped})
            log.info("step %d: reduction point, no layer reduced (%s)", event.step,
                     "; ".join(reasons))
        else:
            dims = ", ".join(f"layer {e.layer}: {e.old} -> {e.new}" for e in changed)
            extra = " -- rolled back: validation fell too far" if event.rolled_back else ""
            log.info("step %d: reduced %s%s", event.step, dims, extra)
        self.metrics.write({"step": self.step, "wall_seconds": self.train_seconds,
                            "reduction": True, "state_dims": self.model.state_dims(),
                            "reduction_seconds": event.seconds,
                            "val_score_before": event.metric_before,
                            "val_score_after": event.metric_after})
        self.compressor.history.save(self.run_dir / "reductions.json")

    def _finish(self) -> dict:
        test = self.evaluate_split("test")
        val = self.evaluate_split("val")
        metric = self.objective.metric
        summary = {
            "data": self.config.data.name, "task": self.objective.kind, "metric": metric,
            f"test_{metric}": test[metric], f"val_{metric}": val[metric],
            "test_loss": test["loss"], "val_loss": val["loss"],
            "state_dims": self.model.state_dims(), "initial_state_dims": self.initial_dims,
            "train_seconds": round(self.train_seconds, 3), "steps": self.step,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "reductions": [{"step": e.step, "dims": e.state_dims_after,
                            "rolled_back": e.rolled_back} for e in self.compressor.history],
            "run_dir": str(self.run_dir),
        }
        if "accuracy" in test:
            summary.setdefault("test_accuracy", test["accuracy"])
            summary.setdefault("val_accuracy", val["accuracy"])
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        self.compressor.history.save(self.run_dir / "reductions.json")
        self.plot()
        self.metrics.close()
        return summary

    def plot(self) -> list[Path]:
        """Write the run's plots into ``run_dir/plots``."""
        return plot_run(read_metrics(self.run_dir / "metrics.jsonl"), self.compressor.history,
                        self.initial_dims, self.config.train.steps, self.run_dir / "plots",
                        self.objective.metric)
