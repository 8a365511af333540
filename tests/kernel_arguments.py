"""Arguments of kernel calls derived from the kernel table (``fastopt/kernel_table.py``), for the tests.

``typical_value`` gives a scalar's value well inside its declared range, ``refused_values`` the values just
outside it, ``kernel_arguments`` a complete valid call of any kernel by name (arrays of the declared roles and
shapes, scalars and hyperparameters, optional arrays following the ``given_when`` rules), and ``call_public``
/ ``call_trusted`` make the call the way every caller does: the public method with the arrays and scalars in
order and the hyperparameters by keyword, the trusted method with the arrays and scalars in order and one
mapping ``hyper``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastopt.backend import Backend
from fastopt.kernel_table import DIMENSIONS, Kernel, Scalar


def typical_value(scalar: Scalar) -> Any:
    """A value well inside the scalar's range: False for a flag, the default (else the first) of the choices, the
    middle of a bounded range (an int for an integer), half a unit above the low end of a half-bounded one."""
    if scalar.flag:
        return False
    if scalar.choices:
        return scalar.default if scalar.default is not None else scalar.choices[0]
    if scalar.integer:
        return (int(scalar.low) + int(scalar.high)) // 2  # type: ignore[arg-type]
    low = -0.5 if scalar.low is None else scalar.low
    high = low + 1.0 if scalar.high is None else scalar.high
    return (low + high) / 2


def refused_values(scalar: Scalar) -> list[Any]:
    """Values the table says a kernel must refuse: for a real, the nearest float beyond each closed end and an
    open end itself; for an integer, the integers beyond its ends; for a flag, 2; for choices, a name that is none of
    them."""
    if scalar.flag:
        return [2]
    if scalar.choices:
        return [scalar.choices[0].upper() + "?"]
    if scalar.integer:
        return [int(scalar.low) - 1, int(scalar.high) + 1]  # type: ignore[arg-type]
    refused = []
    if scalar.low is not None:
        refused.append(scalar.low if scalar.low_open else math.nextafter(scalar.low, -math.inf))
    if scalar.high is not None:
        refused.append(scalar.high if scalar.high_open else math.nextafter(scalar.high, math.inf))
    return refused


def accepted_edges(scalar: Scalar) -> list[float]:
    """The closed ends of a real or integer scalar's range (values a kernel must accept)."""
    if scalar.flag or scalar.choices:
        return []
    if scalar.integer:
        return [int(scalar.low), int(scalar.high)]  # type: ignore[arg-type]
    edges = [] if scalar.low is None or scalar.low_open else [scalar.low]
    return edges + ([] if scalar.high is None or scalar.high_open else [scalar.high])


def kernel_arguments(
    kernel: Kernel,
    dtype: str | np.dtype = "float64",
    *,
    dims: dict[str, int] | None = None,
    star: tuple[int, ...] = (5,),
    seed: int = 0,
    **scalars: Any,
) -> dict[str, Any]:
    """A valid call of ``kernel``, every argument by name: float arrays of ``dtype`` with values in [0, 1) (in
    every kernel's domain: second moments and sums of squares are non-negative), of the table's shapes with each
    dimension 3 (or as in ``dims``) and ``star`` for ``*``; index arrays in range; each scalar and hyperparameter
    its typical value unless given in ``scalars``; an optional array given unless a ``given_when`` rule says it
    must be absent."""
    rng = np.random.default_rng(seed)
    sizes = {symbol: 3 for symbol in DIMENSIONS} | (dims or {})
    values = {spec.name: scalars.get(spec.name, typical_value(spec)) for spec in (*kernel.scalars, *kernel.hyper)}
    absent = {array for array, scalar in kernel.given_when if values[scalar] == 0}
    for spec in kernel.arrays:
        shape = star if spec.shape == "*" else tuple(sizes[symbol] for symbol in spec.shape)
        if spec.name in absent:
            values[spec.name] = None
        elif spec.index_of:
            values[spec.name] = rng.integers(0, sizes[spec.index_of], shape, dtype=np.int64)
        else:
            values[spec.name] = rng.random(shape).astype(dtype)
    return values


def call_public(backend: Backend, kernel: Kernel, values: dict[str, Any]) -> Any:
    """The checked public method: arrays and scalars in table order, hyperparameters by keyword."""
    hyper = {spec.name: values[spec.name] for spec in kernel.hyper}
    return getattr(backend, kernel.name)(*[values[param.name] for param in kernel.params], **hyper)


def call_trusted(backend: Backend, kernel: Kernel, values: dict[str, Any]) -> Any:
    """The trusted method: arrays and scalars in table order, then (optimizers) one mapping ``hyper``."""
    arguments = [values[param.name] for param in kernel.params]
    if kernel.hyper:
        arguments.append({spec.name: values[spec.name] for spec in kernel.hyper})
    return getattr(backend, kernel.method)(*arguments)
