"""The native kernels built for aarch64 (NEON), run under qemu-user, against the host build.

No machine here is an ARM one, so the NEON path of the fused LRU kernels and of the SSD scan is
checked by cross compiling ``tests/ops/native/lru_harness.c`` and ``ssd_harness.c`` (the kernels
of ``kernels.h`` and ``ssd_kernels.h`` driven without Python) and comparing their outputs with
the same harnesses built for the host, whose kernels the rest of the suite checks against
PyTorch references. Needs ``aarch64-linux-gnu-gcc`` and
``qemu-aarch64`` (Debian: ``apt-get install gcc-aarch64-linux-gnu qemu-user``); skipped without.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
KERNELS = HERE.parents[1] / "src" / "shrinkssm" / "ops" / "_native"
CROSS_CC = "aarch64-linux-gnu-gcc"
QEMU = "qemu-aarch64"
SYSROOT = Path("/usr/aarch64-linux-gnu")

needs_cross = pytest.mark.skipif(
    shutil.which(CROSS_CC) is None or shutil.which(QEMU) is None or shutil.which("gcc") is None,
    reason=f"needs {CROSS_CC}, {QEMU} and gcc (apt-get install gcc-aarch64-linux-gnu qemu-user)",
)


def _build(cc: str, out: Path, harness: str = "lru_harness.c") -> None:
    cmd = [cc, "-O2", "-std=gnu11", "-ffp-contract=fast", f"-I{KERNELS}", str(HERE / "native" / harness),
           "-o", str(out), "-lm"]
    subprocess.run(cmd, check=True, capture_output=True, text=True)


def _values(cmd: list[str]) -> tuple[list[str], list[float]]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120).stdout.split("\n")
    rows = [line.split() for line in out if line]
    return [r[0] for r in rows], [float(r[1]) for r in rows]


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross")
    _build("gcc", d / "host")
    _build(CROSS_CC, d / "arm")
    return d / "host", d / "arm"


@needs_cross
@pytest.mark.parametrize("h_in, h_out, n", [(9, 10, 37), (8, 8, 16), (3, 17, 129)])
def test_neon_build_agrees_with_host(builds, h_in, h_out, n):
    host, arm = builds
    args = [str(h_in), str(h_out), str(n)]
    names_h, ref = _values([str(host), *args])
    names_a, got = _values([QEMU, "-L", str(SYSROOT), str(arm), *args])
    assert names_a == names_h and len(got) == len(ref) > 1000
    scale = max(abs(v) for v in ref)
    worst = max(abs(g - r) for g, r in zip(got, ref))
    # float32 sums of a few hundred terms, with and without fused multiply-adds
    assert worst <= 1e-5 * scale, f"NEON and host builds differ by {worst:.3g} (scale {scale:.3g})"
    # and the comparison is not vacuous: the outputs carry signal
    assert scale > 0.1


@pytest.fixture(scope="module")
def ssd_builds(tmp_path_factory):
    d = tmp_path_factory.mktemp("cross_ssd")
    _build("gcc", d / "host", "ssd_harness.c")
    _build(CROSS_CC, d / "arm", "ssd_harness.c")
    return d / "host", d / "arm"


@needs_cross
@pytest.mark.parametrize("sizes", [(2, 37, 4, 5, 2, 21, 8), (1, 50, 2, 8, 1, 16, 16), (2, 9, 3, 3, 3, 1, 4)])
def test_neon_ssd_build_agrees_with_host(ssd_builds, sizes):
    """b L H P G N T: rows in blocks of 4 and one by one, N padded, groups, a short last chunk."""
    host, arm = ssd_builds
    args = [str(v) for v in sizes]
    names_h, ref = _values([str(host), *args])
    names_a, got = _values([QEMU, "-L", str(SYSROOT), str(arm), *args])
    assert names_a == names_h and len(got) == len(ref) > 100
    assert set(names_h) == {"y", "fin", "gx", "gdt", "gB", "gC", "gA", "gS0"}
    for name in set(names_h):
        r = [v for n, v in zip(names_h, ref) if n == name]
        g = [v for n, v in zip(names_a, got) if n == name]
        scale = max(abs(v) for v in r)
        worst = max(abs(a - b) for a, b in zip(g, r))
        assert scale > 0.01, name                                  # the outputs carry signal
        assert worst <= 1e-5 * scale, f"{name}: NEON and host builds differ by {worst:.3g} (scale {scale:.3g})"
