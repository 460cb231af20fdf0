"""The trainer under faults (issue 15): a second writer, a full disk, interrupts, stale files,
an LRU at the unit circle at a reduction, divergence at a reduction point."""

import json
import os
import signal

import pytest
import torch

from shrinkssm.train import Trainer, TrainingDiverged, apply_overrides, load_checkpoint
from shrinkssm.train.metrics_log import read_metrics
from shrinkssm.train.rundir import RunDirBusy, RunDirError, RunLock

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_a_second_trainer_into_a_directory_in_use_is_refused(tiny_config, tmp_path):
    first = Trainer(tiny_config, tmp_path)
    other = apply_overrides(tiny_config, ["train.seed=7", "model.d_state=12"])
    with pytest.raises(RunDirBusy, match=rf"in use: process {os.getpid()} is writing"):
        Trainer(other, tmp_path)
    first.fit()
    assert "d_state: 24" in (tmp_path / "config.yaml").read_text()        # not the refused one
    assert json.loads((tmp_path / "summary.json").read_text())["initial_state_dims"] == [24]
    steps = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert steps == [10, 20, 30, 40]                                     # one writer's rows
    RunLock(tmp_path).acquire().release()          # the lock was released when fit ended


def test_every_reduction_point_and_the_end_write_a_checkpoint(tiny_config, tmp_path, monkeypatch):
    cfg = apply_overrides(tiny_config, ["train.checkpoint_every=1000"])
    saved = []
    real = Trainer.save

    def spy(self):
        saved.append(self.step)
        return real(self)

    monkeypatch.setattr(Trainer, "save", spy)
    Trainer(cfg, tmp_path).fit()
    assert saved == [10, 20, 40]


def test_disk_full_at_a_checkpoint_keeps_the_last_good_one(tiny_config, tmp_path, disk_full):
    disk_full("last.pt", after=2)                    # steps 10 (reduction) and 15 succeed
    with pytest.raises(RunDirError) as info:
        Trainer(tiny_config, tmp_path).fit()
    ckpt = tmp_path / "checkpoints" / "last.pt"
    assert str(info.value) == (f"cannot write {ckpt}: No space left on device; the last good "
                               f"checkpoint is {ckpt} (step 15)")
    assert load_checkpoint(ckpt)["step"] == 15
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["best.pt", "last.pt"]   # no temporary left


def test_disk_full_at_reductions_json_names_it(tiny_config, tmp_path, disk_full):
    disk_full("reductions.json")
    with pytest.raises(RunDirError, match=r"cannot write .*reductions\.json: No space left on "
                                          r"device; the last good checkpoint is .*\(step 10\)"):
        Trainer(tiny_config, tmp_path).fit()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 10


def test_disk_full_while_plotting_leaves_no_empty_png(tiny_config, tmp_path, monkeypatch):
    import errno

    from matplotlib.figure import Figure

    real = Figure.savefig
    calls = {"n": 0}

    def savefig(self, fname, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:                      # the second plot: the file is opened, then full
            open(fname, "wb").close()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(RunDirError, match=r"cannot write .*plots: No space left on device; the "
                                          r"last good checkpoint is .*\(step 40\)"):
        Trainer(tiny_config, tmp_path).fit()
    assert os.listdir(tmp_path / "plots") == []          # neither a 0-byte PNG nor a staging dir
    assert (tmp_path / "summary.json").exists()


def test_stale_temporaries_are_cleaned_at_the_next_start(tiny_config, tmp_path):
    Trainer(tiny_config, tmp_path, stop_after=12).fit()
    stale = [tmp_path / "checkpoints" / ".last.pt.tmp-4242", tmp_path / "reductions.json.tmp",
             tmp_path / ".summary.json.tmp-77"]
    for path in stale:
        path.write_bytes(b"half a file")
    Trainer(None, tmp_path, resume=True, stop_after=13).fit()
    assert not any(p.exists() for p in stale)


def test_sigterm_checkpoints_the_current_step_and_the_resumed_log_reads_like_one_run(
        tiny_config, tmp_path, monkeypatch):
    whole = Trainer(tiny_config, tmp_path / "whole")
    whole.fit()

    def not_caught(signum, frame):
        raise AssertionError("the trainer did not handle SIGTERM")

    previous = signal.signal(signal.SIGTERM, not_caught)
    try:
        split = Trainer(tiny_config, tmp_path / "split")
        real_loss = split.objective.loss
        calls = {"n": 0}

        def loss(out, batch):
            calls["n"] += split.model.training
            if calls["n"] == 13 and split.model.training:     # arrives during step 13, twice
                os.kill(os.getpid(), signal.SIGTERM)          # (as torchrun sends it: to the
                os.kill(os.getpid(), signal.SIGTERM)          # process and to its group)
            return real_loss(out, batch)

        monkeypatch.setattr(split.objective, "loss", loss)
        result = split.fit()
        assert signal.getsignal(signal.SIGTERM) is not_caught          # handler restored
    finally:
        signal.signal(signal.SIGTERM, previous)
    ckpt_path = tmp_path / "split" / "checkpoints" / "last.pt"
    assert result == {"steps": 13, "interrupted": True, "checkpoint": str(ckpt_path),
                      "signal": "SIGTERM"}
    assert load_checkpoint(ckpt_path)["step"] == 13
    Trainer(None, tmp_path / "split", resume=True).fit()
    a = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    b = load_checkpoint(ckpt_path)
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # the row at step 20 averages steps 11-20 in both runs, though 14-20 ran after the resume
    rows_a = {r["step"]: r for r in read_metrics(tmp_path / "whole" / "metrics.jsonl") if "loss" in r}
    rows_b = {r["step"]: r for r in read_metrics(tmp_path / "split" / "metrics.jsonl") if "loss" in r}
    assert sorted(rows_b) == sorted(rows_a) == [10, 20, 30, 40]
    for step in rows_a:
        assert rows_b[step]["loss"] == rows_a[step]["loss"], step
        assert rows_b[step]["train_accuracy"] == rows_a[step]["train_accuracy"], step


def test_a_layer_at_the_unit_circle_in_float32_is_reduced_in_float64(tiny_config, tmp_path):
    trainer = Trainer(tiny_config, tmp_path)
    layer = trainer.model.ssm_layers()[0]
    with torch.no_grad():
        layer.nu_log[:3] = -20.0                    # |lam| rounds to 1 in float32
    assert bool((layer.eigenvalues().abs() >= 1).any())
    trainer.fit()
    events = json.loads((tmp_path / "reductions.json").read_text())["events"]
    first = events[0]["layers"][0]
    assert first["new"] < first["old"] == 24 and first["skipped"] is None
    assert any("|lam| >= 1 in the torch.float32 forward" in n for n in first["notes"])


def test_a_layer_at_the_unit_circle_even_in_float64_is_kept_with_a_note(tiny_config, tmp_path):
    trainer = Trainer(tiny_config, tmp_path)
    layer = trainer.model.ssm_layers()[0]
    with torch.no_grad():
        layer.nu_log[0] = -60.0                     # lam = 1 exactly, even in float64
        layer.theta_log[0] = -60.0
    summary = trainer.fit()
    events = json.loads((tmp_path / "reductions.json").read_text())["events"]
    assert [e["layers"][0]["new"] for e in events] == [24, 24]
    assert all("not measured, layer kept as it was" in e["layers"][0]["skipped"]
               and "stable" in e["layers"][0]["skipped"] for e in events)
    assert summary["state_dims"] == [24]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_non_finite_weights_at_a_reduction_point_are_the_divergence_message(tiny_config, tmp_path,
                                                                             monkeypatch):
    trainer = Trainer(tiny_config, tmp_path)
    real_step = trainer.optimizer.step
    calls = {"n": 0}

    def step(*args, **kwargs):
        out = real_step(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 10:                         # the weights break after the loss was fine
            with torch.no_grad():
                trainer.model.ssm_layers()[0].B_re[0, 0] = float("inf")
        return out

    monkeypatch.setattr(trainer.optimizer, "step", step)
    with pytest.raises(TrainingDiverged, match=r"B_re is not finite at step 10; training "
                                               r"stopped, no checkpoint has been written yet"):
        trainer.fit()
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_disk_full_on_metrics_jsonl_names_it(tiny_config, tmp_path, monkeypatch):
    import builtins
    import errno

    from shrinkssm.train import metrics_log

    def full(path, mode="r", *args, **kwargs):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(metrics_log, "open", full, raising=False)
    with pytest.raises(RunDirError, match=r"cannot write .*metrics\.jsonl: No space left on "
                                          r"device; no checkpoint has been written yet"):
        Trainer(tiny_config, tmp_path).fit()        # the first row is the reduction's, at 10


def test_a_second_ctrl_c_stops_at_once_and_keeps_the_last_checkpoint(tiny_config, tmp_path,
                                                                      monkeypatch):
    trainer = Trainer(tiny_config, tmp_path)
    real_loss = trainer.objective.loss
    calls = {"n": 0}

    def loss(out, batch):
        calls["n"] += trainer.model.training
        if calls["n"] == 13 and trainer.model.training:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)
        return real_loss(out, batch)

    monkeypatch.setattr(trainer.objective, "loss", loss)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert trainer.saved_step == 10 and "(step 10)" in trainer.last_good()
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["step"] == 10
    RunLock(tmp_path).acquire().release()             # released on the way out
