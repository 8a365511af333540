"""Build script: the package metadata lives in pyproject.toml; this file declares the Cython extensions.

Every ``fastopt/_kernels/*.pyx`` is compiled (Cython 3, language_level 3) with ``-O3 -fno-math-errno``
(errno handling stops gcc vectorizing loops with a square root) and ``-ffp-contract=off`` (no fused
multiply-adds the NumPy reference does not make: results stay bitwise equal to it, and the kernels are
memory-bound anyway) for the portable x86-64 baseline (SSE2): that build runs on any machine. On x86-64 each module is
compiled a second time with ``-mavx2 -mfma`` as ``<name>_avx2``; ``fastopt.cython_backend`` picks that
copy at import only when the CPU reports AVX2 and FMA. Nothing is built with ``-march=native``.

OpenMP is used when a test program builds with it (``-fopenmp``; Apple clang's ``-Xpreprocessor -fopenmp``
linked with ``-lomp``, libomp's paths given in CPPFLAGS/LDFLAGS; ``/openmp`` for MSVC); otherwise the
kernels are built serially and the build says so (``fastopt.show_config()`` reports it at run time too).
Set ``FASTOPT_NO_OPENMP=1`` to force a serial build, ``FASTOPT_NO_AVX2=1`` to skip the AVX2 copies.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
KERNELS = sorted(path.stem for path in (HERE / "fastopt" / "_kernels").glob("*.pyx"))
# Modules built once, for the baseline only: the thread policy holds state every kernel module shares and no loop
# whose speed depends on the instruction set.
SINGLE_BUILD = {"_threads"}


def _target_machine() -> str:
    """The architecture the wheel is for: a cross-build (cibuildwheel on macOS) names it in
    ``_PYTHON_HOST_PLATFORM`` ("macosx-11.0-arm64") or ``ARCHFLAGS`` ("-arch arm64"); else this machine."""
    host = os.environ.get("_PYTHON_HOST_PLATFORM", "")
    if host:
        return host.rsplit("-", 1)[-1]
    archflags = os.environ.get("ARCHFLAGS", "").split()
    if "-arch" in archflags[:-1]:
        return archflags[archflags.index("-arch") + 1]
    return platform.machine()


TARGET_MACHINE = _target_machine()
IS_X86_64 = TARGET_MACHINE.lower() in ("x86_64", "amd64", "x64")
AVX2_SUFFIX = "_avx2"

OPENMP_PROBE = """
#include <omp.h>
int main(void) {
    int n = 0;
    #pragma omp parallel reduction(+:n)
    n += 1;
    return n == omp_get_max_threads() ? 0 : 1;
}
"""
AVX2_PROBE = """
#include <immintrin.h>
int main(void) {
    __m256 a = _mm256_set1_ps(1.0f);
    a = _mm256_fmadd_ps(a, a, a);
    return (int)_mm256_cvtss_f32(a) == 2 ? 0 : 1;
}
"""


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _say(message: str) -> None:
    print(f"fastopt setup: {message}", file=sys.stderr)


class BuildExt(build_ext):
    """Choose flags by test-compiling with the compiler setuptools will actually use."""

    def _builds(self, source: str, compile_args: list[str], link_args: list[str]) -> bool:
        tmp = tempfile.mkdtemp(prefix="fastopt-probe-")
        try:
            src = os.path.join(tmp, "probe.c")
            with open(src, "w") as handle:
                handle.write(source)
            objects = self.compiler.compile([src], output_dir=tmp, extra_postargs=compile_args)
            self.compiler.link_executable(objects, "probe", output_dir=tmp, extra_postargs=link_args)
            return True
        except Exception:
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def build_extensions(self) -> None:
        msvc = self.compiler.compiler_type == "msvc"
        base_args = ["/O2"] if msvc else ["-O3", "-fno-math-errno", "-ffp-contract=off"]
        openmp_args: list[str] = []
        openmp_link_args: list[str] = []
        if _env_flag("FASTOPT_NO_OPENMP"):
            _say("FASTOPT_NO_OPENMP is set: building the kernels without OpenMP (serial)")
        else:
            # (compile flags, link flags): MSVC; gcc and LLVM clang; Apple clang with Homebrew's libomp.
            candidates = (
                [(["/openmp"], [])]
                if msvc
                else [(["-fopenmp"], ["-fopenmp"]), (["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
            )
            for compile_args, link_args in candidates:
                if self._builds(OPENMP_PROBE, compile_args, link_args):
                    openmp_args, openmp_link_args = compile_args, link_args
                    _say(f"OpenMP is available: building the kernels with {' '.join(compile_args + link_args)}")
                    break
            else:
                _say("OpenMP is NOT available with this compiler: building the kernels serially (single thread)")
        avx2_args = ["/arch:AVX2"] if msvc else ["-mavx2", "-mfma"]
        build_avx2 = IS_X86_64 and not _env_flag("FASTOPT_NO_AVX2") and self._builds(AVX2_PROBE, avx2_args, [])
        if IS_X86_64 and not build_avx2:
            _say("skipping the AVX2+FMA copies of the kernels (disabled or unsupported by the compiler)")

        kept = []
        for ext in self.extensions:
            avx2 = ext.name.endswith(AVX2_SUFFIX)
            if avx2 and not build_avx2:
                continue
            args = base_args + (avx2_args if avx2 else []) + openmp_args
            ext.extra_compile_args = args
            ext.extra_link_args = list(openmp_link_args)
            ext.define_macros = [
                ("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                ("FO_ISA", '"avx2+fma"' if avx2 else '"x86-64 baseline"' if IS_X86_64 else f'"{TARGET_MACHINE}"'),
                ("FO_COMPILE_ARGS", '"' + " ".join(args) + '"'),
            ]
            kept.append(ext)
        self.extensions[:] = kept
        super().build_extensions()


def _extensions() -> list[Extension]:
    variants = [("", "baseline")] + ([(AVX2_SUFFIX, "avx2")] if IS_X86_64 else [])
    extensions = []
    for stem in KERNELS:
        source = f"fastopt/_kernels/{stem}.pyx"
        for suffix, variant in variants[:1] if stem in SINGLE_BUILD else variants:
            # The same source is translated once per variant, into its own directory, so the two
            # modules get their own C file and module name.
            extension = Extension(
                f"fastopt._kernels.{stem}{suffix}", [source], include_dirs=[numpy.get_include(), "fastopt/_kernels"]
            )
            extensions += cythonize(
                [extension],
                build_dir=f"build/cython-{variant}",
                compiler_directives={"language_level": 3},
                quiet=True,
            )
    return extensions


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
