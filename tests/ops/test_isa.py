"""The public choice of the native kernels' instruction-set path: native_isas / native_isa /
set_native_isa, and the environment variable SHRINKSSM_NATIVE_ISA read when shrinkssm.ops is
imported (in a fresh interpreter)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

from shrinkssm import ops
from shrinkssm.nn import LRU
from shrinkssm.ops import _native_backend

NATIVE = ops.native_available()
needs_native = pytest.mark.skipif(not NATIVE, reason="native extension not built")


@pytest.fixture
def restore_isa():
    before = ops.native_isa()
    yield
    if before is not None:
        ops.set_native_isa(before)


def run_python(code: str, env_value: str | None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop(ops.ISA_ENV, None)
    if env_value is not None:
        env[ops.ISA_ENV] = env_value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


@needs_native
def test_isas_listed_best_last_and_best_in_use():
    isas = ops.native_isas()
    assert isinstance(isas, tuple) and isas[0] in ("base", "neon") and len(set(isas)) == len(isas)
    order = ["base", "neon", "avx2", "avx512"]  # every name the kernels know, weakest first
    assert set(isas) <= set(order)
    assert sorted(isas, key=order.index) == list(isas)
    if not os.environ.get(ops.ISA_ENV):
        assert ops.native_isa() == isas[-1]


@needs_native
def test_set_native_isa_switches_every_kernel_and_results_agree(restore_isa):
    torch.manual_seed(0)
    layer = LRU(3, 21, scan="native").double()
    u = torch.randn(2, 17, 3, dtype=torch.float64, requires_grad=True)
    want = layer(u)
    (g_want,) = torch.autograd.grad(want.sum(), u)
    for isa in ops.native_isas():
        ops.set_native_isa(isa)
        assert ops.native_isa() == isa
        got = layer(u)
        (g_got,) = torch.autograd.grad(got.sum(), u)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12, msg=isa)
        torch.testing.assert_close(g_got, g_want, rtol=1e-10, atol=1e-12, msg=isa)


@needs_native
@pytest.mark.parametrize("bad", ["sse9", "AVX512 ", "", 3])
def test_set_native_isa_rejects_unknown_names_listing_the_allowed(bad, restore_isa):
    before = ops.native_isa()
    with pytest.raises(ValueError, match=f"allowed here: {', '.join(ops.native_isas())}$"):
        ops.set_native_isa(bad)
    assert ops.native_isa() == before


def test_without_extension(monkeypatch):
    monkeypatch.setattr(_native_backend, "_ext", None)
    monkeypatch.setattr(_native_backend, "_LOAD_ERROR", "ImportError: simulated")
    assert ops.native_isas() == ()
    assert ops.native_isa() is None
    with pytest.raises(ValueError, match="not loaded.*simulated"):
        ops.set_native_isa("base")
    monkeypatch.setenv(ops.ISA_ENV, "avx2")
    with pytest.warns(RuntimeWarning, match=f"{ops.ISA_ENV}='avx2' ignored: the native kernels are not loaded"):
        _native_backend.apply_isa_env()


@needs_native
def test_apply_isa_env(monkeypatch, restore_isa):
    isas = ops.native_isas()
    monkeypatch.setenv(ops.ISA_ENV, f" {isas[0].upper()} ")  # case and spaces do not matter
    _native_backend.apply_isa_env()
    assert ops.native_isa() == isas[0]
    ops.set_native_isa(isas[-1])
    monkeypatch.setenv(ops.ISA_ENV, "")  # empty: ignored, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _native_backend.apply_isa_env()
    assert ops.native_isa() == isas[-1]


@needs_native
def test_env_var_read_at_import():
    code = "import shrinkssm.ops as o; print(o.native_isa())"
    forced = ops.native_isas()[0]
    done = run_python(code, forced)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == forced
    assert "Warning" not in done.stderr


@needs_native
def test_env_var_unknown_value_warns_and_uses_the_best():
    code = "import shrinkssm.ops as o; print(o.native_isa())"
    done = run_python(code, "sse9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ops.native_isas()[-1]
    allowed = ", ".join(ops.native_isas())
    assert f"RuntimeWarning: {ops.ISA_ENV}='sse9' is not a native kernel path of this build and CPU; " \
           f"allowed: {allowed}; using '{ops.native_isas()[-1]}'" in done.stderr
