"""Shared fixtures of the kernel benchmarks (pytest-benchmark; run on demand: ``pytest bench/``).

The default ``pytest`` run collects only ``tests/`` (``testpaths`` in pyproject.toml), so these never
run with the test suite. Both backends appear in the same benchmark group, so the report shows
their ratio; the underscore (trusted) kernel methods are timed, as the training loop calls them.
"""

from __future__ import annotations

import pytest

from fastopt.numpy_backend import NumpyBackend

BACKENDS = {"numpy": NumpyBackend()}
try:
    from fastopt.cython_backend import CythonBackend
except ImportError:  # extension not built: only the reference is timed
    pass
else:
    BACKENDS["cython"] = CythonBackend()


@pytest.fixture(params=sorted(BACKENDS))
def backend(request):  # type: ignore[no-untyped-def]
    return BACKENDS[request.param]
