"""Backend registration at import, ``show_config()`` and ``set_num_threads()``."""

from __future__ import annotations

import os

from fastopt.backend import (
    backend_problems,
    get_backend,
    mark_unavailable,
    register_backend,
    set_default_backend,
    warn_fallback,
)
from fastopt.numpy_backend import NumpyBackend

register_backend("numpy", NumpyBackend)
try:
    from fastopt import cython_backend
except ImportError as exc:
    cython_backend = None  # type: ignore[assignment]
    mark_unavailable("cython", f"the compiled extension did not import: {exc}")
    set_default_backend("numpy")
    if os.environ.get("FASTOPT_QUIET_FALLBACK") != "1":
        warn_fallback("cython", str(exc))
else:
    register_backend("cython", cython_backend.CythonBackend)
    set_default_backend("cython")


def _blas_pools() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for both the OpenMP kernels and BLAS (through threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    from fastopt._checks import check_positive_int

    n = check_positive_int(n, "n")
    if cython_backend is not None:
        cython_backend.set_openmp_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def show_config() -> None:
    """Print the backend in use, whether the extension is built (or why not), OpenMP, BLAS and flags."""
    lines = [f"fastopt backend in use: {get_backend()}"]
    if cython_backend is None:
        lines.append(f"compiled extension: not available ({backend_problems().get('cython', 'unknown reason')})")
    else:
        info = cython_backend.build_info()
        lines.append("compiled extension: built and imported")
        inside_fit = (
            f"from {cython_backend.TRAINING_PARALLEL_THRESHOLD} inside Sequential.fit"
            if cython_backend.gemm_path() == "direct"
            else "serial inside Sequential.fit while BLAS is multi-threaded"
        )
        openmp = (
            f"on, {info['openmp_threads']} threads: dense layers by blocks, optimizer steps above "
            f"{info['parallel_threshold']} elements ({inside_fit}); serial spells while another process "
            f"keeps the cores busy ({info['serial_spells']} so far)"
            if info["openmp"]
            else "off (built without OpenMP: kernels run serially)"
        )
        lines.append(f"OpenMP: {openmp}")
        lines.append(f"GEMMs: {info['gemm']}")
        lines.append(f"instruction set: {info['isa']} ({info['isa_reason']})")
        if info["flushes_subnormals"]:
            lines.append("optimizer kernels flush subnormal numbers to zero while they run (FTZ/DAZ)")
        lines.append(f"compile flags: {' '.join(info['compile_args'])}")
    pools = _blas_pools()
    if pools:
        for pool in pools:
            lines.append(
                f"BLAS: {pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')}), "
                f"{pool.get('num_threads')} threads, {pool.get('filepath')}"
            )
    else:
        lines.append("BLAS: not detected by threadpoolctl")
    print("\n".join(lines))
