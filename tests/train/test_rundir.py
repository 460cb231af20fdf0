"""Tests of shrinkssm.train.rundir: the run-directory lock, atomic writes, OS faults as one-line
errors, stale temporaries (issue 15)."""

import errno
import os
import subprocess
import sys
import textwrap

import pytest

from shrinkssm.train import rundir
from shrinkssm.train.rundir import (RunDirBusy, RunDirError, RunLock, atomic_write,
                                    clean_stale_temporaries, inspect_run_dir,
                                    write_files_atomically)


def _holder(run_dir, then="sleep"):
    """A child process that takes the lock of ``run_dir``, says so, then sleeps or dies hard."""
    code = textwrap.dedent(f"""
        import importlib.util, os, sys, time
        spec = importlib.util.spec_from_file_location("rundir", {rundir.__file__!r})
        module = importlib.util.module_from_spec(spec)       # without torch: a fast start
        spec.loader.exec_module(module)
        lock = module.RunLock({str(run_dir)!r}).acquire()
        print("locked", flush=True)
        if {then!r} == "die":
            os._exit(9)                       # no cleanup at all, like kill -9
        time.sleep(120)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    child = _holder(tmp_path)
    try:
        with pytest.raises(RunDirBusy, match=rf"in use: process {child.pid} is writing") as info:
            RunLock(tmp_path).acquire()
        assert info.value.pid == child.pid
    finally:
        child.kill()
        child.wait()
    with RunLock(tmp_path) as lock:            # free again once the holder is gone
        assert lock.held


def test_in_one_process_two_locks_of_one_directory_conflict(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirBusy, match=str(os.getpid())):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_message(tmp_path, shrinkssm_log):
    child = _holder(tmp_path, then="die")
    child.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(child.pid)   # never cleaned up
    lock = RunLock(tmp_path).acquire()
    assert lock.previous_pid == child.pid
    assert f"took over the lock of {tmp_path} left by process {child.pid} (no longer running)" \
        in shrinkssm_log.text
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    lock.release()
    assert (tmp_path / ".lock").read_text() == ""          # a clean release leaves no pid


def test_a_file_is_no_run_directory(tmp_path):
    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(RunDirError, match="it is a file"):
        RunLock(path).acquire()
    assert inspect_run_dir(path)[0] == "file"


def _enospc_on(name):
    """An os.fsync that reports a full disk for files called ``name`` (or their temporaries)."""
    real = os.fsync

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        if os.path.basename(target).startswith((name, f".{name}.tmp-")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(fd)
    return fsync


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_disk_full_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "reductions.json"
    atomic_write(path, "old")
    monkeypatch.setattr(rundir.os, "fsync", _enospc_on("reductions.json"))
    with pytest.raises(RunDirError, match=rf"cannot write {path}: No space left on device") as info:
        atomic_write(path, "new" * 1000)
    assert info.value.errno == errno.ENOSPC and "\n" not in str(info.value)
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reductions.json"]


def test_a_failure_while_writing_plots_leaves_no_partial_file(tmp_path):
    out = tmp_path / "plots"
    write_files_atomically(out, lambda d: [_write(d / "a.png", b"old a"), _write(d / "b.png", b"old b")])

    def fail_half_way(staging):
        _write(staging / "a.png", b"new a")
        (staging / "b.png").write_bytes(b"")         # the encoder had begun the second file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(staging / "b.png"))

    with pytest.raises(RunDirError, match="No space left on device"):
        write_files_atomically(out, fail_half_way)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"a.png": b"old a", "b.png": b"old b"}


def _write(path, data):
    path.write_bytes(data)
    return path


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    stale = [tmp_path / "checkpoints" / ".last.pt.tmp-12345", tmp_path / ".summary.json.tmp-7",
             tmp_path / "reductions.json.tmp"]
    keep = [tmp_path / "checkpoints" / "last.pt", tmp_path / "notes.tmp-1", tmp_path / "x.json"]
    for path in stale + keep:
        path.write_text("x")
    (tmp_path / "plots" / ".staging.tmp-99").mkdir(parents=True)
    removed = clean_stale_temporaries(tmp_path)
    assert sorted(removed) == sorted(stale + [tmp_path / "plots" / ".staging.tmp-99"])
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)


def test_inspect_run_dir_kinds(tmp_path):
    assert inspect_run_dir(tmp_path / "none") == ("missing", [])
    assert inspect_run_dir(tmp_path)[0] == "empty"
    (tmp_path / ".lock").write_text("")
    assert inspect_run_dir(tmp_path)[0] == "empty"              # a lock alone is no content
    (tmp_path / "thesis.tex").write_text("x")
    assert inspect_run_dir(tmp_path) == ("other", ["thesis.tex"])
    (tmp_path / "config.yaml").write_text("x")
    assert inspect_run_dir(tmp_path)[0] == "other"              # may be the user's own config
    (tmp_path / "metrics.jsonl").write_text("")
    assert inspect_run_dir(tmp_path)[0] == "run-without-checkpoint"
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.pt").write_bytes(b"")
    assert inspect_run_dir(tmp_path)[0] == "run"
