"""``show_config()`` and ``set_num_threads()``: the settings of every backend and of BLAS, through public seams."""

from __future__ import annotations

from fastopt._checks import check_positive_int
from fastopt.backend import available_backends, backend_problems, get_backend, resolve_backend


def _blas_pools() -> list[dict]:
    from threadpoolctl import threadpool_info

    return [pool for pool in threadpool_info() if pool.get("user_api") == "blas"]


def set_num_threads(n: int) -> None:
    """Use ``n`` threads for both the compiled kernels (OpenMP) and BLAS (through threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    n = check_positive_int(n, "n")
    for name in available_backends():
        resolve_backend(name).set_num_threads(n)
    threadpool_limits(limits=n, user_api="blas")


def _openmp_line(info: dict) -> str:
    if not info["openmp"]:
        return "OpenMP: off (built without OpenMP: kernels run serially)"
    if info["forked"]:
        return "OpenMP: on, but this process is a fork of one that used it: kernels run serially here"
    inside_fit = (
        f"from {info['training_parallel_threshold']} inside Sequential.fit"
        if info["gemm"].startswith("NumPy's OpenBLAS")
        else "serial inside Sequential.fit while BLAS is multi-threaded"
    )
    guard = (
        f"serial spells while another process keeps the cores busy ({info['serial_spells']} so far)"
        if info["stall_guard"]
        else "stall guard off (FASTOPT_STALL_GUARD=0)"
    )
    choice = info["training_threads"]
    last_fit = (
        f"; the last fit timed its steps at {choice['threaded_step_us']:.0f} us threaded and "
        f"{choice['serial_step_us']:.0f} us on one thread, and ran on {choice['threads']}"
        if choice
        else "; each fit times its first steps threaded and on one thread and keeps the faster"
    )
    return (
        f"OpenMP: on, {info['openmp_threads']} threads: dense layers by blocks, optimizer steps above "
        f"{info['parallel_threshold']} elements ({inside_fit}); {guard}{last_fit}"
    )


def _compiled_lines() -> list[str]:
    if "cython" not in available_backends():
        return [f"compiled extension: not available ({backend_problems().get('cython', 'unknown reason')})"]
    info = resolve_backend("cython").build_info()
    lines = ["compiled extension: built and imported", _openmp_line(info), f"GEMMs: {info['gemm']}"]
    lines.append(f"instruction set: {info['isa']} ({info['isa_reason']})")
    if info["flushes_subnormals"]:
        lines.append("optimizer kernels flush subnormal numbers to zero while they run (FTZ/DAZ)")
    lines.append(f"compile flags: {' '.join(info['compile_args'])}")
    return lines


def show_config() -> None:
    """Print the backend in use, whether the extension is built (or why not), OpenMP, BLAS and flags."""
    lines = [f"fastopt backend in use: {get_backend()}", *_compiled_lines()]
    pools = _blas_pools()
    for pool in pools:
        lines.append(
            f"BLAS: {pool.get('internal_api')} {pool.get('version')} ({pool.get('architecture')}), "
            f"{pool.get('num_threads')} threads, {pool.get('filepath')}"
        )
    if not pools:
        lines.append("BLAS: not detected by threadpoolctl")
    print("\n".join(lines))
