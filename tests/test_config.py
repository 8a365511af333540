"""show_config, set_num_threads, the OpenMP wait policy, and the dtype error type."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import fastopt
from fastopt._checks import DTypeError

ROOT = Path(__file__).resolve().parent.parent


def _python(code: str, **env: str) -> str:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "FASTOPT_QUIET_FALLBACK": "1", **env}
    environment.pop("OMP_WAIT_POLICY", None)
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_show_config_names_backend_blas_and_build(capsys):
    fastopt.show_config()
    text = capsys.readouterr().out
    assert f"fastopt backend in use: {fastopt.get_backend()}" in text
    assert "BLAS:" in text
    if "cython" in fastopt.available_backends():
        assert "compiled extension: built and imported" in text
        assert "OpenMP:" in text and "compile flags:" in text and "-march=native" not in text
    else:
        assert "compiled extension: not available" in text


def test_show_config_says_why_the_extension_is_missing():
    code = (
        "import sys; sys.modules['fastopt._kernels._nn'] = None; import fastopt; "
        "fastopt.show_config(); print(fastopt.get_backend())"
    )
    output = _python(code)
    assert "compiled extension: not available (the compiled extension did not import" in output
    assert output.splitlines()[-1] == "numpy"


def _blas_threads() -> set[int]:
    return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}


def test_set_num_threads_sets_blas_and_openmp():
    before = _blas_threads()
    try:
        fastopt.set_num_threads(1)
        assert _blas_threads() == {1}
        if "cython" in fastopt.available_backends():
            from fastopt import cython_backend

            assert cython_backend.build_info()["openmp_threads"] == 1
    finally:
        fastopt.set_num_threads(max(before) if before else os.cpu_count() or 1)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2"])
def test_set_num_threads_refuses_bad_counts(bad):
    with pytest.raises((TypeError, ValueError), match="n must"):
        fastopt.set_num_threads(bad)


def test_dtype_errors_are_both_type_and_value_errors():
    backend = fastopt.backend.resolve_backend("numpy")
    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(ValueError, match="weight must have dtype float32"):
        backend.dense_forward(x, np.ones((3, 2)), np.ones(2, np.float32), np.empty((2, 2), np.float32))
    assert issubclass(DTypeError, TypeError) and issubclass(DTypeError, ValueError)


# ------------------------------------------------------------------------------------------ the GEMM path
needs_cython = pytest.mark.skipif("cython" not in fastopt.available_backends(), reason="compiled backend not built")


@needs_cython
def test_gemm_path_switches_and_build_info_follows(use_gemm_path):
    from fastopt import cython_backend

    assert cython_backend.gemm_path() in ("direct", "matmul")
    use_gemm_path("matmul")
    assert cython_backend.build_info()["gemm"].startswith("numpy.matmul")
    use_gemm_path("direct")
    gemm = cython_backend.build_info()["gemm"]
    assert "called directly" in gemm and "fixed blocks" in gemm


@needs_cython
@pytest.mark.parametrize("bad", ["Direct", "MATMUL", "blas", "", None, 1])
def test_set_gemm_path_refuses_other_values(bad):
    from fastopt import cython_backend

    before = cython_backend.gemm_path()
    with pytest.raises(ValueError, match="path must be 'direct' or 'matmul'"):
        cython_backend.set_gemm_path(bad)
    assert cython_backend.gemm_path() == before


@needs_cython
def test_set_gemm_path_direct_when_unavailable(use_gemm_path, monkeypatch):
    """Where NumPy's BLAS cannot be called directly, asking for it is a RuntimeError with the reason, and the
    matmul path stays in use (simulated: the import-time probe's outcome is replaced; ``use_gemm_path`` is
    requested first so that it restores the path after monkeypatch has undone the replacement)."""
    from fastopt import cython_backend

    use_gemm_path("matmul")
    monkeypatch.setattr(cython_backend, "_GEMM_DIRECT_INFO", "")
    monkeypatch.setattr(cython_backend, "_GEMM_FALLBACK_REASON", "no OpenBLAS here")
    with pytest.raises(RuntimeError, match="direct GEMM path is unavailable: no OpenBLAS here"):
        cython_backend.set_gemm_path("direct")
    assert cython_backend.gemm_path() == "matmul"
    assert "direct path unavailable: no OpenBLAS here" in cython_backend.build_info()["gemm"]


GEMM_REPORT = "from fastopt import cython_backend as c; print(c.gemm_path()); print(c.build_info()['gemm'])"


@needs_cython
def test_fastopt_gemm_environment_variable():
    """``FASTOPT_GEMM=matmul`` (any case, spaces around) selects the matmul path at import; other values leave
    the default, the direct path where NumPy's OpenBLAS can be called (else matmul, saying why)."""
    default, description = _python(GEMM_REPORT, FASTOPT_GEMM="").splitlines()
    assert default in ("direct", "matmul")
    if default == "matmul":
        assert "direct path unavailable" in description
    for value in ("matmul", " MatMul "):
        path, description = _python(GEMM_REPORT, FASTOPT_GEMM=value).splitlines()
        assert path == "matmul" and description.startswith("numpy.matmul"), value
    assert _python(GEMM_REPORT, FASTOPT_GEMM="direct").splitlines()[0] == default


@needs_cython
def test_show_config_names_the_gemm_path(capsys):
    from fastopt import cython_backend

    fastopt.show_config()
    text = capsys.readouterr().out
    assert "GEMM" in text and cython_backend.build_info()["gemm"] in text


def test_show_config_reports_the_thread_choice_of_the_last_fit(capsys):
    if "cython" not in fastopt.available_backends():
        pytest.skip("the compiled extension is not built")
    from fastopt.cython_backend import build_info

    if build_info()["openmp_threads"] < 2:
        pytest.skip("one OpenMP thread: fits make no thread choice")
    model = fastopt.Sequential([fastopt.layers.Dense(8, 6), fastopt.layers.Dense(6, 2)], seed=0, backend="cython")
    X, y = np.random.default_rng(0).random((25 * 8, 8)), np.arange(25 * 8) % 2
    model.fit(X, y, epochs=1, batch_size=8, progress=False)  # 25 steps: the probe's 20, then the choice
    choice = build_info()["training_threads"]
    assert choice["threads"] in (1, build_info()["openmp_threads"])
    assert (choice["threads"] == 1) == (choice["serial_step_us"] < choice["threaded_step_us"])
    fastopt.show_config()
    text = capsys.readouterr().out
    assert f"the last fit timed its steps at {choice['threaded_step_us']:.0f} us threaded" in text
    assert f"and ran on {choice['threads']}" in text
