"""Tests of the best-validation checkpoint (checkpoints/best.pt) and the summary's test at best."""

import json

import pytest
import torch

from shrinkssm.train import Trainer, apply_overrides, load_checkpoint
from shrinkssm.train.metrics_log import read_metrics
from shrinkssm.train.objective import Objective, evaluate
from shrinkssm.train.trainer import build_model

EVERY_10 = ["train.eval_every=10"]


def _first_best(rows: list[dict], metric: str = "val_accuracy") -> tuple[int, float]:
    vals = [(r["step"], r[metric]) for r in rows if metric in r]
    best = max(v for _, v in vals)
    return next((s, v) for s, v in vals if v == best)


def test_best_checkpoint_holds_the_best_validation_and_loads_in_its_reduced_shape(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, EVERY_10)
    trainer = Trainer(cfg, tmp_path)
    summary = trainer.fit()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    step, val = _first_best(rows)
    assert summary["best_val_step"] == step and summary["best_val_accuracy"] == val
    assert summary["best_checkpoint"] == str(tmp_path / "checkpoints" / "best.pt")
    assert json.loads((tmp_path / "summary.json").read_text()) == summary

    ckpt = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert ckpt["step"] == step
    dims = next(r["state_dims"] for r in rows if r["step"] == step and "state_dims" in r)
    model = build_model(cfg, trainer.splits)
    model.apply_layout_(ckpt["layout"])
    model.load_state_dict(ckpt["model"])
    assert model.state_dims() == dims and dims[0] < 24        # the reduced model's layout
    objective = Objective(trainer.splits.spec)
    batches = trainer.splits.test.iterate(cfg.train.batch_size, shuffle=False, seed=0, epoch=0,
                                          drop_last=False)
    test = evaluate(model.eval(), batches, objective, torch.device("cpu"))
    assert summary["test_accuracy_at_best_val"] == pytest.approx(test["accuracy"], abs=1e-12)
    assert "test_accuracy" in summary                         # the final model's, beside it


def test_best_respects_the_direction_of_the_metric(tiny_config, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config, tmp_path)
    saved = []
    monkeypatch.setattr(trainer, "save_best", lambda: saved.append((trainer.step, True)))
    trainer.objective.metric = "mse"                          # lower is better
    for step, mse in [(1, 0.5), (2, 0.7), (3, 0.4), (4, 0.4), (5, 0.45)]:
        trainer.step = step
        trainer._keep_if_best({"mse": mse, "loss": mse})
    assert saved == [(1, True), (3, True)]                    # ties keep the earlier
    assert trainer._best == {"step": 3, "score": -0.4, "val": 0.4}
    trainer.objective.metric = "accuracy"                     # higher is better
    trainer._best = {"step": None, "score": None, "val": None}
    saved.clear()
    for step, acc in [(1, 0.5), (2, 0.4), (3, 0.6)]:
        trainer.step = step
        trainer._keep_if_best({"accuracy": acc, "loss": 1.0})
    assert saved == [(1, True), (3, True)]
    trainer._close()                                         # release the run directory


def test_a_resumed_run_keeps_its_best(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, EVERY_10)
    whole = Trainer(cfg, tmp_path / "whole").fit()
    Trainer(cfg, tmp_path / "part", stop_after=25).fit()
    resumed = Trainer(None, tmp_path / "part", resume=True).fit()
    for key in ("best_val_step", "best_val_accuracy", "test_accuracy_at_best_val", "test_accuracy"):
        assert resumed[key] == whole[key], key
