"""The command line as a newcomer meets it: short runs with a cadence that follows
``train.steps``, a baseline (``compress.mode=none``) that talks about no reductions, reduction
times without the validation around them, and messages in the command line's own words."""

import json
import time

import pytest
import torch

from shrinkssm.cli import main

SMALL = ["data.name=digits", "model.d_state=16", "model.norm=layer", "train.batch_size=32",
         "train.eval_batches=1",
         "train.progress=false", "compress.tol=0.05"]


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_cadence_follows_train_steps_unless_given(tmp_path):
    run = tmp_path / "auto"
    assert main(["train", "--out", str(run), *SMALL, "train.steps=60", "compress.mode=none",
                 "train.batch_size=8"]) == 0
    rows = _rows(run)
    val_steps = sorted({r["step"] for r in rows if "val_loss" in r})
    assert val_steps == list(range(3, 61, 3))            # 20 validation points: every 60 / 20
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps == list(range(1, 61))              # 60 // 100 -> a row every step
    saved = (run / "config.yaml").read_text()            # what ran, in numbers
    assert "eval_every: 3" in saved and "warmup_steps: 3" in saved and "log_every: 1" in saved

    given = tmp_path / "given"
    assert main(["train", "--out", str(given), *SMALL, "train.steps=20", "compress.mode=none",
                 "train.batch_size=8", "train.eval_every=15", "train.log_every=5",
                 "train.warmup_steps=0"]) == 0
    rows = _rows(given)
    assert sorted({r["step"] for r in rows if "val_loss" in r}) == [15, 20]
    assert [r["step"] for r in rows if "loss" in r] == [5, 10, 15, 20]
    assert "warmup_steps: 0" in (given / "config.yaml").read_text()


def test_the_baseline_schedules_and_reports_no_reductions(tmp_path, caplog):
    run = tmp_path / "base"
    with caplog.at_level("INFO", logger="shrinkssm"):
        # 10 steps could not hold 4 reduction points, but the baseline has none to hold
        assert main(["train", "--out", str(run), *SMALL, "train.steps=10",
                     "compress.mode=none"]) == 0
    assert "reduction" not in caplog.text
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reductions"] == [] and summary["state_dims"] == [16]
    assert json.loads((run / "reductions.json").read_text()) == {"events": []}
    assert not any("reduction" in r for r in _rows(run))
    assert not (run / "plots" / "hsv_spectra.png").exists()


def test_reduction_seconds_leave_the_validation_out(tmp_path, monkeypatch):
    from shrinkssm.train.trainer import Trainer

    validate = Trainer._validation_score

    def slow_validation(self, model):                   # every validation takes >= 0.5 s
        time.sleep(0.5)
        return validate(self, model)

    monkeypatch.setattr(Trainer, "_validation_score", slow_validation)
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *SMALL, "train.steps=24",
                 "compress.steps=[6, 12]", "compress.mode=fixed", "compress.fraction=0.5"]) == 0
    rows = [r for r in _rows(run) if r.get("reduction")]
    assert [r["state_dims"] for r in rows] == [[8], [4]]
    events = json.loads((run / "reductions.json").read_text())["events"]
    summary = json.loads((run / "summary.json").read_text())["reductions"]
    for row, event, brief in zip(rows, events, summary):
        assert row["reduction_seconds"] == event["reduction_seconds"] == brief["reduction_seconds"]
        assert row["eval_seconds"] == event["eval_seconds"] == brief["eval_seconds"] >= 1.0
        # before and after: two validations of >= 0.5 s each; had they been counted in it,
        # reduction_seconds would be >= 1 s for reducing one 16-state layer
        assert 0 < row["reduction_seconds"] < 1.0


@pytest.mark.parametrize("args, expected", [
    (["train", "model.d_state=0"], "model.d_state: must be >= 1, got 0"),
    (["train", "train.steps=10"], "compress.n_points: 4 reduction points do not fit into the "
                                  "first 0.1 of train.steps=10 (1 step)"),
    (["train", "data.name=digits", "data.options.permute=3"],
     "data.options.permute: must be true or false, got 3"),
    (["train", "data.name=digits", "data.root=/somewhere"], "data.root: not used by 'digits'"),
    (["data", "prepare", "listops", "n_train=0"],
     "data prepare listops: n_train: must be an int >= 1, got 0"),
])
def test_messages_name_the_key_in_the_command_lines_words(tmp_path, capsys, args, expected):
    if args[0] == "train":
        args = [*args[:1], "--out", str(tmp_path / "r"), *args[1:]]
    else:
        args = [*args, "--dest", str(tmp_path / "d")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert "Value error" not in err and "Input should" not in err and "Traceback" not in err


def test_resume_of_a_directory_that_does_not_exist(tmp_path, capsys):
    missing = tmp_path / "no-such-run"
    assert main(["train", "--resume", str(missing)]) == 2
    assert f"--resume {missing}: no such directory" in capsys.readouterr().err
    missing.mkdir()
    assert main(["train", "--resume", str(missing)]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_data_prepare_help_lists_the_data_sets_and_options(capsys):
    with pytest.raises(SystemExit) as info:
        main(["data", "prepare", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for text in ("listops:", "pathfinder:", "shakespeare:", "n_train=96000", "n_val=auto",
                 "sdist=null", "--dest DIR"):
        assert text in out, text


def test_divergence_is_reported_once_with_the_step(tmp_path, capsys, monkeypatch):
    from shrinkssm.train.objective import Objective

    real = Objective.loss
    calls = {"n": 0}

    def poisoned(self, out, batch):
        loss, stats = real(self, out, batch)
        calls["n"] += torch.is_grad_enabled()          # training steps, not validations
        return (loss * float("nan"), stats) if calls["n"] == 3 else (loss, stats)

    monkeypatch.setattr(Objective, "loss", poisoned)
    assert main(["train", "--out", str(tmp_path / "r"), *SMALL, "train.steps=10",
                 "compress.mode=none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("shrinkssm: training stopped: the loss is not finite at step 3.")
    assert err.count("stopped") == 1 and "Last good checkpoint: none yet" in err
