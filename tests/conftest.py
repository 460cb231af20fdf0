"""Fixtures shared by every test directory."""

import pytest
import torch


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module: on a shared, oversubscribed machine every OpenMP parallel
    region can wait a whole scheduler time slice for its second thread (measured here: 50x slower
    steps). Use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def disk_full(monkeypatch):
    """``disk_full(name, after=0)``: from then on, ``fsync`` of a file called ``name`` (or of its
    atomic-write temporary ``.name.tmp-<pid>``) fails with ENOSPC, as a full disk reports it at
    the latest -- after ``after`` successful ones. Returns a dict counting the failures."""
    import errno
    import os

    from shrinkssm.train import rundir

    real = os.fsync
    state = {"failures": 0}

    def arm(name: str, after: int = 0) -> dict:
        seen = {"n": 0}

        def fsync(fd):
            base = os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            if base == name or base.startswith(f".{name}.tmp-"):
                seen["n"] += 1
                if seen["n"] > after:
                    state["failures"] += 1
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd)

        monkeypatch.setattr(rundir.os, "fsync", fsync)
        return state

    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("simulating a full disk needs /proc/self/fd")
    return arm


@pytest.fixture
def shrinkssm_log(caplog):
    """``caplog`` that sees the ``shrinkssm`` logger's records at INFO and above even after the
    CLI has set that logger not to propagate (it logs through its own handlers)."""
    import logging

    logger = logging.getLogger("shrinkssm")
    level = logger.level
    logger.addHandler(caplog.handler)
    logger.setLevel(logging.INFO)
    yield caplog
    logger.removeHandler(caplog.handler)
    logger.setLevel(level)
