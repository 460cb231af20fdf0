"""The command line under faults (issue 15): every OS fault, a busy or non-empty --out, Ctrl-C,
a run without a checkpoint -- exit codes and one-line messages that name the real paths."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from shrinkssm.cli import main
from shrinkssm.train import load_checkpoint
from shrinkssm.train import rundir

TINY = ["data.name=digits", "model.d_state=16", "model.norm=layer", "train.steps=24",
        "train.batch_size=32", "train.eval_every=12", "train.log_every=6",
        "train.checkpoint_every=6", "train.progress=false", "compress.steps=[6, 12]",
        "compress.tol=0.05", "train.threads=1"]


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("shrinkssm: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_out_naming_a_file_is_exit_2(tmp_path, capsys):
    target = tmp_path / "results.csv"
    target.write_text("a,b\n")
    assert main(["train", "--out", str(target), *TINY]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"--out {target}: is a file, not a directory" in line
    assert target.read_text() == "a,b\n"


@pytest.mark.skipif(not os.path.isdir("/sys/kernel"), reason="needs a directory nobody may write")
def test_out_where_nothing_may_be_created_is_exit_2(capsys):
    target = "/sys/kernel/shrinkssm-run"          # refused even to root
    assert main(["train", "--out", target, *TINY]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line.startswith("shrinkssm: error: cannot create the run directory /sys/kernel/"
                           "shrinkssm-run: ")


def test_permission_denied_on_the_log_is_exit_2(tmp_path, capsys, monkeypatch):
    import logging

    def refuse(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "run" / "train.log"))

    monkeypatch.setattr(logging.FileHandler, "__init__", refuse)
    assert main(["train", "--out", str(tmp_path / "run"), *TINY]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert line == f"shrinkssm: error: cannot open {tmp_path / 'run' / 'train.log'}: Permission denied"


def test_disk_full_at_a_checkpoint_is_exit_2_and_the_last_one_stays_good(tmp_path, capsys,
                                                                          disk_full):
    run = tmp_path / "run"
    disk_full("last.pt", after=2)                  # steps 6 and 12 written, 18 fails
    assert main(["train", "--out", str(run), *TINY]) == 2
    ckpt = run / "checkpoints" / "last.pt"
    assert _one_line_error(capsys.readouterr().err) == (
        f"shrinkssm: error: cannot write {ckpt}: No space left on device; the last good "
        f"checkpoint is {ckpt} (step 12)")
    assert load_checkpoint(ckpt)["step"] == 12
    assert sorted(os.listdir(run / "checkpoints")) == ["best.pt", "last.pt"]   # no temporary left
    assert not (run / ".lock").read_text()                 # released


def test_disk_full_at_the_summary_is_exit_2(tmp_path, capsys, disk_full):
    run = tmp_path / "run"
    disk_full("summary.json")
    assert main(["train", "--out", str(run), *TINY]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"cannot write {run / 'summary.json'}: No space left on device" in line
    assert "(step 24)" in line and not (run / "summary.json").exists()


def _lock_holder(run_dir):
    code = textwrap.dedent(f"""
        import importlib.util, time
        spec = importlib.util.spec_from_file_location("rundir", {rundir.__file__!r})
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        lock = module.RunLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_train_into_a_directory_in_use_is_exit_2_naming_the_holder(tmp_path, capsys):
    run = tmp_path / "run"
    child = _lock_holder(run)
    try:
        for command in (["train", "--out", str(run), *TINY], ["train", "--out", str(run),
                                                               "--force", *TINY]):
            assert main(command) == 2
            line = _one_line_error(capsys.readouterr().err)
            assert f"{run} is in use: process {child.pid} is writing to it" in line
        assert sorted(os.listdir(run)) == [".lock"]           # nothing written beside it
    finally:
        child.kill()
        child.wait()


def test_a_stale_lock_is_taken_over_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert f"took over the lock of {run} left by process {dead.pid}" in capsys.readouterr().err


def test_out_into_a_non_empty_directory_needs_force(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own settings\n")
    (mine / "notes.txt").write_text("keep me\n")
    assert main(["train", "--out", str(mine), *TINY]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert f"--out {mine} is not empty and holds no run (config.yaml, notes.txt)" in line
    assert "--force" in line and sorted(os.listdir(mine)) == ["config.yaml", "notes.txt"]
    assert (mine / "config.yaml").read_text() == "my own settings\n"       # not overwritten
    assert main(["train", "--out", str(mine), "--force", *TINY]) == 0
    assert (mine / "notes.txt").read_text() == "keep me\n" and (mine / "summary.json").exists()


def test_force_starts_over_in_a_finished_run_and_leaves_nothing_old(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    assert main(["train", "--out", str(run), *TINY]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main(["train", "--out", str(run), "--force", *TINY[:-5], "train.steps=4",
                 "compress.steps=[2]", "train.checkpoint_every=100"]) == 0
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] == 4
    assert [e["step"] for e in json.loads((run / "reductions.json").read_text())["events"]] == [2]


def test_a_run_without_a_checkpoint_is_analyzed_from_its_logs(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    (run / "checkpoints" / "last.pt").unlink()                # as if killed before writing it
    for png in (run / "plots").iterdir():
        png.unlink()
    capsys.readouterr()
    assert main(["analyze", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"run {run}: step 24 of 24" in out and "from its logs (no checkpoint)" in out
    rows = [line.split() for line in out.splitlines() if line.strip().startswith(("6 ", "12 "))]
    assert [r[:3] for r in rows] == [["6", "0", "16"], ["12", "0", rows[0][3]]]
    assert (run / "plots" / "hsv_spectra.png").stat().st_size > 0
    assert main(["train", "--resume", str(run)]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "stopped before its first checkpoint" in line and f"--out {run} --force" in line


def test_ctrl_c_writes_a_checkpoint_of_the_current_step_and_says_where(tmp_path):
    run = tmp_path / "run"
    args = [*TINY[:3], "train.steps=100000", "train.checkpoint_every=100000",
            "train.eval_every=100000", "train.log_every=1", "compress.steps=[5]",
            "train.batch_size=32", "train.progress=false", "train.threads=1"]
    child = subprocess.Popen([sys.executable, "-m", "shrinkssm", "train", "--out", str(run), *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:            # wait until training is under way
            metrics = run / "metrics.jsonl"
            if metrics.exists() and metrics.read_text().count("\n") >= 8:
                break
            time.sleep(0.1)
        else:
            pytest.fail("training did not start")
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=120)
    finally:
        child.kill()
    assert child.returncode == 130, err
    ckpt = run / "checkpoints" / "last.pt"
    step = load_checkpoint(ckpt)["step"]
    assert step > 5                                    # after the reduction point's checkpoint
    assert (f"SIGINT: stopped at step {step}; checkpoint of step {step} written to {ckpt}; "
            f"continue with: shrinkssm train --resume {run}") in err
    assert "Traceback" not in err


def test_a_full_disk_under_train_log_is_one_warning_not_a_logging_traceback(tmp_path, capsys):
    import errno
    import logging

    from shrinkssm import cli

    class FullDisk:
        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def flush(self):
            pass

    cli._setup_logging(tmp_path)
    log = logging.getLogger("shrinkssm")
    try:
        handler = next(h for h in log.handlers if isinstance(h, logging.FileHandler))
        handler.stream.close()
        handler.stream = FullDisk()
        log.info("one")
        log.info("two")
    finally:
        log.removeHandler(handler)
    err = capsys.readouterr().err
    assert err.count(f"shrinkssm: warning: cannot write {tmp_path / 'train.log'}: "
                     "No space left on device") == 1
    assert "Traceback" not in err and "Logging error" not in err
