"""Fixtures shared by several test files: choosing the compiled backend's GEMM path.

``cython_backend.gemm_path()`` is "direct" (NumPy's OpenBLAS called by the kernels on fixed output blocks)
or "matmul" (``numpy.matmul`` and BLAS's own threads). Tests that must hold on both paths take the
parametrized ``gemm_path`` fixture; tests that compare the two paths take ``use_gemm_path`` and switch
themselves. Both restore the path that was in use, and skip when the compiled extension is not built or the
direct path is unavailable on this machine (NumPy's BLAS is not an OpenBLAS whose functions can be found).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

GEMM_PATHS = ("direct", "matmul")


@pytest.fixture
def use_gemm_path() -> Iterator[Callable[[str], None]]:
    """A function that switches the GEMM path (skipping the test if that path is unavailable); the path in
    use before the test is restored after it."""
    cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
    before = cython_backend.gemm_path()

    def use(path: str) -> None:
        try:
            cython_backend.set_gemm_path(path)
        except RuntimeError as exc:
            pytest.skip(str(exc))
        assert cython_backend.gemm_path() == path

    try:
        yield use
    finally:
        cython_backend.set_gemm_path(before)


@pytest.fixture(params=GEMM_PATHS)
def gemm_path(request: pytest.FixtureRequest, use_gemm_path: Callable[[str], None]) -> str:
    """Runs the test once per GEMM path, with that path in use."""
    use_gemm_path(request.param)
    return request.param
