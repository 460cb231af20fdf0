"""Build hook for the optional native scan kernel.

Everything else about the package lives in ``pyproject.toml``. The extension is plain C (no
torch headers, so the build needs only gcc and the Python headers) and is marked optional: where
it cannot be compiled, installation still succeeds and ``shrinkssm.ops`` falls back to the pure
PyTorch scans.

The kernels are built with OpenMP when the compiler supports it (their threads are then those of
torch's OpenMP pool, see ``src/shrinkssm/ops/_native/scan_module.c``) and with plain pthreads
otherwise.
"""
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

_NATIVE = Path("src/shrinkssm/ops/_native")
_SOURCES = sorted(str(p) for p in _NATIVE.glob("*.c"))
_HEADERS = sorted(str(p) for p in _NATIVE.glob("*.h"))  # listed so that sdists carry them

# -ffp-contract=fast: allow fused multiply-adds (ISO C modes switch them off by default).
# No -ffast-math: it is not needed (the kernels are written to vectorise without reassociation)
# and, when it reaches the link step, older GCCs make a shared library flip the process-wide
# flush-to-zero mode on load. AVX2 / AVX-512 variants are selected at run time inside the module
# (target attributes), so the baseline flags stay portable.
_CFLAGS = ["-O3", "-std=gnu11", "-ffp-contract=fast", "-fno-math-errno", "-pthread", "-Wall", "-Wno-psabi", "-Werror=implicit-function-declaration"]
_OPENMP = ["-fopenmp"]


class _BuildExt(build_ext):
    """Try the OpenMP build first; fall back to pthreads if the toolchain lacks OpenMP."""

    def build_extension(self, ext):
        if not ext.name.endswith("_native_scan"):
            return super().build_extension(ext)
        base_compile, base_link = list(ext.extra_compile_args), list(ext.extra_link_args)
        ext.extra_compile_args = base_compile + _OPENMP
        ext.extra_link_args = base_link + _OPENMP
        try:
            return super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any compiler/linker failure: retry without OpenMP
            print(f"shrinkssm: building the native scan with OpenMP failed ({exc}); retrying with pthreads")
            ext.extra_compile_args, ext.extra_link_args = base_compile, base_link
            return super().build_extension(ext)


ext_modules = []
if _SOURCES:
    ext_modules.append(
        Extension(
            "shrinkssm.ops._native_scan",
            sources=_SOURCES,
            depends=_HEADERS,
            extra_compile_args=_CFLAGS,
            extra_link_args=["-pthread"],
            optional=True,
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": _BuildExt})
