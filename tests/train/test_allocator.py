"""Tests of shrinkssm.train.allocator: the glibc setting takes effect where glibc is, and
configure_process applies it unless told not to."""

import ctypes
import ctypes.util
import platform
import sys

import pytest

import shrinkssm.train.process as process_module
from shrinkssm.train import allocator, apply_overrides, configure_process
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


def test_configure_process_applies_it_unless_disabled(monkeypatch):
    calls = []
    monkeypatch.setattr(process_module, "keep_freed_memory", lambda: calls.append(1) or True)
    configure_process(apply_overrides(RunConfig(), []))
    configure_process(apply_overrides(RunConfig(), ["train.keep_freed_memory=false"]))
    assert calls == [1]
