"""Tests of shrinkssm.train.allocator: the glibc setting takes effect where glibc is, and the
trainer applies it unless told not to."""

import ctypes
import ctypes.util
import platform
import sys

import pytest

import shrinkssm.train.trainer as trainer_module
from shrinkssm.train import Trainer, allocator, apply_overrides
from shrinkssm.train.config import RunConfig

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"


@pytest.mark.skipif(not GLIBC, reason="needs glibc")
def test_keep_freed_memory_takes_effect_on_glibc():
    assert allocator.keep_freed_memory() is True
    assert allocator.keep_freed_memory() is True            # idempotent


def test_keep_freed_memory_is_a_no_op_elsewhere(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert allocator.keep_freed_memory() is False


def test_keep_freed_memory_without_mallopt(monkeypatch):
    class NoMallopt:                                        # a libc without the symbol (e.g. musl)
        def __init__(self, *args, **kwargs):
            pass

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", NoMallopt)
    assert allocator.keep_freed_memory() is False


def test_trainer_applies_it_unless_disabled(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(trainer_module, "keep_freed_memory", lambda: calls.append(1) or True)
    base = ["data.name=digits", "model.d_state=8", "train.steps=40", "train.progress=false"]
    Trainer(apply_overrides(RunConfig(), base), tmp_path / "on")
    Trainer(apply_overrides(RunConfig(), base + ["train.keep_freed_memory=false"]), tmp_path / "off")
    assert calls == [1]
