"""Tests of shrinkssm.train.trainer: a tiny run end to end, resume, divergence."""

import json

import numpy as np
import pytest
import torch

from shrinkssm.train import (CheckpointError, Trainer, TrainingDiverged, apply_overrides,
                             load_checkpoint, save_checkpoint)
from shrinkssm.train.metrics_log import read_metrics


def _energy_rank(hsv: np.ndarray, tau: float) -> int:
    """Smallest r whose leading r HSVs hold a fraction 1 - tau of their plain sum."""
    total, running = float(hsv.sum()), 0.0
    for r, sigma in enumerate(hsv, start=1):
        running += float(sigma)
        if running >= (1 - tau) * total:
            return r
    return len(hsv)


def _spy_on_reductions(trainer, monkeypatch, hsv_of) -> list:
    """Record (step, HSVs from scipy, size) of the model's LRU at every reduction the trainer runs."""
    seen = []
    reduce = trainer.compressor.reduce

    def spy(step, model, optimizer=None):
        layer = trainer.model.ssm_layers()[0]
        seen.append((step, hsv_of(layer), layer.d_state))
        return reduce(step, model, optimizer)

    monkeypatch.setattr(trainer.compressor, "reduce", spy)
    return seen


def test_a_run_writes_everything_a_user_expects(tiny_config, tmp_path, monkeypatch, scipy_lru_hsv):
    trainer = Trainer(tiny_config, tmp_path)
    seen = _spy_on_reductions(trainer, monkeypatch, scipy_lru_hsv)
    summary = trainer.fit()
    for name in ("config.yaml", "metrics.jsonl", "reductions.json", "summary.json",
                 "checkpoints/last.pt", "plots/curves.png", "plots/state_dims.png",
                 "plots/hsv_spectra.png"):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved == summary
    for key in ("test_accuracy", "val_accuracy", "state_dims", "initial_state_dims",
                "train_seconds", "steps"):
        assert key in saved
    assert saved["initial_state_dims"] == [24] and saved["steps"] == 40
    # the sizes that tau = 0.05 and the gate 0.95 must give, from HSVs measured independently at
    # each reduction step (compress.steps=[10, 20])
    assert [step for step, _, _ in seen] == [10, 20]
    size, sizes = 24, []
    for _, hsv, before in seen:
        assert before == size
        rank = _energy_rank(hsv, 0.05)
        size = rank if rank < 0.95 * size else size
        sizes.append(size)
    assert sizes[0] < 24                                   # the first point does compress
    assert saved["state_dims"] == [sizes[-1]]
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    rows = read_metrics(tmp_path / "metrics.jsonl")
    logged = [r for r in rows if "loss" in r]
    assert [r["step"] for r in logged] == [10, 20, 30, 40]
    for row in logged:
        assert {"loss", "lr", "state_dims", "steps_per_second", "wall_seconds"} <= set(row)
    assert [r["step"] for r in rows if "val_accuracy" in r] == [20, 40]
    assert [r["step"] for r in rows if r.get("reduction")] == [10, 20]
    history = json.loads((tmp_path / "reductions.json").read_text())["events"]
    assert [e["step"] for e in history] == [10, 20]
    assert history[-1]["layers"][0]["new"] == saved["state_dims"][0]
    assert [e["layers"][0]["new"] for e in history] == sizes


def test_resume_ends_where_the_uninterrupted_run_ends(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path / "whole").fit()
    first = Trainer(tiny_config, tmp_path / "split", stop_after=17).fit()
    assert first == {"steps": 17, "interrupted": True,
                     "checkpoint": str(tmp_path / "split" / "checkpoints" / "last.pt")}
    ckpt = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert ckpt["step"] == 17 and ckpt["layout"]["state_dims"][0] < 24   # after a reduction
    Trainer(None, tmp_path / "split", resume=True).fit()
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert a["layout"] == b["layout"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for index, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][name]), (index, name)
    summary_a = json.loads((tmp_path / "whole" / "summary.json").read_text())
    summary_b = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary_a["test_accuracy"] == summary_b["test_accuracy"]
    steps_b = [r["step"] for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "loss" in r]
    assert steps_b == sorted(set(steps_b))                  # no duplicated rows after resume


def test_resume_refuses_a_checkpoint_for_other_data(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path, stop_after=15).fit()
    ckpt_path = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["model_io"]["d_output"] = 3
    save_checkpoint(ckpt_path, ckpt)              # a valid checksum: only the fit is wrong
    with pytest.raises(CheckpointError, match="made for data"):
        Trainer(None, tmp_path, resume=True)


def test_a_checkpoint_whose_weights_do_not_fit_is_refused(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path, stop_after=15).fit()
    ckpt_path = tmp_path / "checkpoints" / "last.pt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["layout"]["state_dims"] = [5]
    save_checkpoint(ckpt_path, ckpt)              # a valid checksum: only the fit is wrong
    with pytest.raises(CheckpointError, match="does not fit"):
        Trainer(None, tmp_path, resume=True)


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tiny_config, tmp_path, monkeypatch):
    trainer = Trainer(tiny_config, tmp_path)
    real_loss = trainer.objective.loss
    calls = {"n": 0}

    def poisoned(out, batch):
        calls["n"] += trainer.model.training          # count training steps, not evaluations
        loss, stats = real_loss(out, batch)
        return (loss * float("nan"), stats) if calls["n"] == 23 else (loss, stats)

    monkeypatch.setattr(trainer.objective, "loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"not finite at step 23.*step 20"):
        trainer.fit()          # checkpoints at 10, 15, 20: every 15 steps and every reduction point
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 20


def test_skip_policy_skips_a_bad_step(tiny_config, tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_config, ["train.nan_policy=skip"])
    trainer = Trainer(cfg, tmp_path)
    real_loss = trainer.objective.loss
    calls = {"n": 0}

    def poisoned(out, batch):
        calls["n"] += trainer.model.training          # count training steps, not evaluations
        loss, stats = real_loss(out, batch)
        return (loss * float("nan"), stats) if calls["n"] == 5 else (loss, stats)

    monkeypatch.setattr(trainer.objective, "loss", poisoned)
    assert trainer.fit()["steps"] == 40


@pytest.mark.parametrize("margin", [0.02, 0.0])
def test_pragmatic_mode_runs_in_the_trainer(tiny_config, tmp_path, margin):
    """The final size is the one the recorded validation scores imply: each point halves the
    layer (fraction 0.5) unless the score after it falls by more than the margin, which undoes that
    reduction and stops compression (with margin 0 any fall does)."""
    cfg = apply_overrides(tiny_config, ["compress.mode=pragmatic", "compress.fraction=0.5",
                                        f"compress.margin={margin}"])
    summary = Trainer(cfg, tmp_path).fit()
    history = json.loads((tmp_path / "reductions.json").read_text())["events"]
    assert [e["step"] for e in history] == [10, 20]
    size, stopped = 24, False
    for event in history:
        (layer,) = event["layers"]
        assert layer["old"] == size
        if stopped:
            assert layer["skipped"] == "stopped after a rollback" and event["metric_before"] is None
            continue
        before, after = event["metric_before"], event["metric_after"]
        assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0
        assert layer["new"] == size // 2
        fell = after < before - cfg.compress.margin
        assert event["rolled_back"] == fell
        stopped = fell
        size = size if fell else size // 2
    assert summary["state_dims"] == [size]


def test_tensorboard_option(tiny_config, tmp_path):
    cfg = apply_overrides(tiny_config, ["train.tensorboard=true", "train.steps=20"])
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(RuntimeError, match=r"pip install 'shrinkssm\[tensorboard\]'"):
            Trainer(cfg, tmp_path)
        return
    Trainer(cfg, tmp_path).fit()
    assert any((tmp_path / "tensorboard").iterdir())
