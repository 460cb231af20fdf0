"""Fixtures shared by every test directory."""

import numpy as np
import pytest
import scipy.linalg
import torch

from shrinkssm.train.config import RunConfig, apply_overrides

TINY = [  # a fast run on sklearn digits: reductions at steps 10 and 20 of 40
    "data.name=digits", "model.d_model=8", "model.d_state=24", "model.norm=layer",
    "train.steps=40", "train.batch_size=32", "train.lr=0.004", "train.warmup_steps=5",
    "train.eval_every=20", "train.log_every=10", "train.checkpoint_every=15",
    "train.progress=false", "compress.steps=[10, 20]", "compress.tol=0.05",
]


@pytest.fixture
def tiny_config() -> RunConfig:
    """A tiny, fast run config on sklearn digits (:data:`TINY`)."""
    return apply_overrides(RunConfig(), TINY)


def _scipy_lru_hsv(layer) -> np.ndarray:
    f = lambda t: t.detach().double().cpu().numpy()  # noqa: E731
    lam = np.exp(-np.exp(f(layer.nu_log)) + 1j * np.exp(f(layer.theta_log)))
    B = np.exp(f(layer.gamma_log))[:, None] * (f(layer.B_re) + 1j * f(layer.B_im))
    C = f(layer.C_re) + 1j * f(layer.C_im)
    P = scipy.linalg.solve_discrete_lyapunov(np.diag(lam), B @ B.conj().T)
    Q = scipy.linalg.solve_discrete_lyapunov(np.diag(lam.conj()), C.conj().T @ C)
    return np.sort(np.sqrt(np.clip(np.linalg.eigvals(P @ Q).real, 0.0, None)))[::-1]


@pytest.fixture
def scipy_lru_hsv():
    """``f(layer) -> (N,) float64``: the HSVs of an LRU's u -> C x from its raw parameters with
    scipy's Stein solver, descending (lam = exp(-exp(nu_log) + i exp(theta_log)),
    B = gamma (B_re + i B_im)); no shrinkssm code."""
    return _scipy_lru_hsv


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


@pytest.fixture
def through_checkpoint():
    """``f(model, cfg, path) -> fresh``: ``model`` (an ``SSMModel`` with ``d_input=2``,
    ``d_output=3``, float64) saved as a real checkpoint file and rebuilt from it into a fresh model
    of ``cfg`` (layout first, then the weights), in eval mode."""
    from shrinkssm.nn import SSMModel
    from shrinkssm.train.checkpoint import load_checkpoint, save_checkpoint

    def round_trip(model, cfg, path):
        save_checkpoint(path, {"step": 1, "epoch": 0, "batch": 0, "config": {},
                               "model_io": {"d_input": 2, "d_output": 3, "task": "classification"},
                               "layout": model.layout(), "model": model.state_dict(),
                               "optimizer": {"state": {}, "param_groups": []}, "scheduler": {},
                               "compressor": {"history": {"events": []}, "stopped": False},
                               "rng": {"torch_per_rank": [torch.get_rng_state()], "cuda": None},
                               "extra": {"initial_dims": model.state_dims(), "train_seconds": 0.0}})
        ckpt = load_checkpoint(path)
        fresh = SSMModel(cfg, d_input=2, d_output=3).double()
        fresh.apply_layout_(ckpt["layout"])
        fresh.load_state_dict(ckpt["model"])
        return fresh.eval()
    return round_trip
