"""End-to-end tests of the `shrinkssm` command line (shrinkssm.cli)."""

import json
import subprocess
import sys

import pytest
import torch

from shrinkssm.cli import main

TINY = ["data.name=digits", "model.d_state=16", "model.norm=layer", "train.steps=24",
        "train.batch_size=32", "train.eval_every=12", "train.log_every=6",
        "train.checkpoint_every=6", "train.progress=false", "compress.steps=[6, 12]",
        "compress.tol=0.05"]


def test_train_eval_analyze(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "16 -> " in out and str(run) in out
    assert main(["eval", str(run), "--split", "val"]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = json.loads((run / "summary.json").read_text())
    assert result["accuracy"] == pytest.approx(summary["val_accuracy"])
    assert main(["analyze", str(run)]) == 0
    out = capsys.readouterr().out
    assert "before" in out and "hsv_spectra.png" in out


def test_interrupted_run_resumes(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    from shrinkssm.train import trainer as trainer_module

    original = trainer_module.Trainer.__init__

    def stop_early(self, *args, **kwargs):
        kwargs.setdefault("stop_after", 10 if not kwargs.get("resume") else None)
        original(self, *args, **kwargs)

    monkeypatch.setattr(trainer_module.Trainer, "__init__", stop_early)
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert "--resume" in capsys.readouterr().out
    assert main(["train", "--out", str(run), *TINY]) == 2           # refuses to overwrite
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["steps"] == 24


@pytest.mark.parametrize("args, message", [
    (["compress.tolerance=0.1"], "unknown key"),
    (["train.steps=zero"], "train.steps: must be an integer"),
    (["data.name=imagenet"], "imagenet"),
])
def test_bad_configs_exit_2_with_a_message(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "r"), *args]) == 2
    assert message in capsys.readouterr().err


def test_corrupt_checkpoint_exits_2(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints" / "last.pt"
    ckpt.parent.mkdir(parents=True)
    ckpt.write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["eval", str(tmp_path)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_data_list(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "mnist" in out and "digits" in out and "cifar10" in out


def test_python_dash_m_entry_point():
    result = subprocess.run([sys.executable, "-m", "shrinkssm", "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "train" in result.stdout


def test_cli_makes_openmp_threads_sleep_unless_told_otherwise():
    from shrinkssm.cli import configure_openmp

    env = {}
    configure_openmp(env, modules={})
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "active"}
    configure_openmp(env, modules={})
    assert env == {"OMP_WAIT_POLICY": "active"}          # the user's choice wins
    env = {}
    configure_openmp(env, modules={"torch": object()})
    assert env == {}                                    # too late once torch is loaded: no-op


def test_cli_imports_no_torch_before_main_runs():
    import subprocess
    import sys

    code = "import sys, shrinkssm.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_trains_and_evaluates_a_mamba2_model(tmp_path, capsys):
    """model.layer=mamba2 end to end: a short run on sklearn digits writes checkpoints, learns
    (training loss falls) and its best checkpoint evaluates."""
    run = tmp_path / "run"
    args = ["data.name=digits", "model.layer=mamba2", "model.d_model=8", "model.d_state=8",
            "model.headdim=4", "model.ngroups=2", "model.chunk_size=16", "model.norm=layer",
            "compress.mode=none", "train.steps=30", "train.batch_size=32", "train.eval_every=15",
            "train.log_every=5", "train.checkpoint_every=15", "train.progress=false"]
    assert main(["train", "--out", str(run), *args]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(line)]
    assert len(losses) >= 4 and losses[-1] < losses[0]
    assert main(["eval", str(run), "--split", "val"]) == 0


def test_cli_compresses_a_mamba2_model_by_tolerance(tmp_path, capsys):
    """model.layer=mamba2 with compress.mode=tolerance: the run reduces its layer at the
    reduction points (state falls, in summary.json and the checkpoint), finishes, resumes from
    the reduced checkpoint for evaluation, and its reduced model steps."""
    run = tmp_path / "run"
    args = ["data.name=digits", "model.layer=mamba2", "model.d_model=8", "model.d_state=16",
            "model.headdim=4", "model.chunk_size=16", "model.norm=layer",
            "compress.mode=tolerance", "compress.tol=0.1", "compress.steps=[8, 16]",
            "train.steps=24", "train.batch_size=32", "train.eval_every=12", "train.log_every=6",
            "train.checkpoint_every=12", "train.progress=false"]
    assert main(["train", "--out", str(run), *args]) == 0
    capsys.readouterr()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["initial_state_dims"] == [16]
    assert summary["state_dims"][0] < 16 and summary["reductions"]
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    ranks = ckpt["layout"]["layers"][0]["ranks"]
    assert ranks is not None and ranks[0] == summary["state_dims"][0]
    assert main(["eval", str(run), "--split", "val"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["accuracy"] <= 1.0
