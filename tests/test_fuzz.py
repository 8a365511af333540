"""Property-based fuzzing of every public kernel entry point of every backend and of the public API.

The only allowed outcomes of any call are a correct result or a ``ValueError``/``TypeError``
(``FloatingPointError`` is also accepted from ``Sequential.fit``, which documents it for a diverging
loss). A crash, another exception type, a silently wrong result, a modified input, or a partially
applied update after a refused call is a failure.

Three kinds of check, each over hypothesis-drawn recipes that are rebuilt from scratch for every call
(so the two backends see identical arguments, down to the memory layout and the aliasing):

1. **Chaos** (``test_kernel_chaos``): arguments of random shapes (0-sized and 1x1 included), layouts
   (C order, Fortran order, transposed, strided, negative strides, misaligned, read-only), dtypes
   (float16/32/64, byte-swapped float, int32/64, bool, complex64, object), aliasing between outputs and
   inputs (the same array, overlapping views), non-arrays, and scalars (negative, NaN, inf, huge, huge
   Python ints, bools, strings, flags other than True/False/0/1, unknown names). An independent validity
   predicate (``expected_valid``) reads the kernel table (``fastopt.kernel_table``: each kernel's arrays with
   their roles and shapes, its scalars' ranges, its rules) and decides whether the call must succeed or be
   refused. Accepted calls must leave their inputs untouched and give the same outputs on every backend (NaN
   and inf in the same places, finite values within the tolerances below). Refused calls must leave every
   argument untouched.
2. **Math** (``test_kernel_math``): valid arguments with moderate values (0 or magnitudes 1e-3..1e3),
   compared on every backend with formulas written here in float64 from the guide's math and the table's
   math lines, independent of ``fastopt.numpy_backend``. Tolerance:
   ``|actual - expected| <= rtol * (|expected| + scale)`` where ``scale`` is the same formula evaluated on
   magnitudes (the usual rounding-error bound, which covers cancellation and GEMM sums); rtol is 1e-10 for
   float64 and 1e-4 for float32.
3. **API surfaces**: ``Sequential.fit/predict/evaluate``, ``optim.*.step``, ``losses.*()(...)``,
   ``fastopt.load`` on random and mutated files, ``datasets.read_idx`` on random and mutated bytes.

The recipes derive from the kernel table: which kernels there are, their arguments in order (the public methods
take the hyperparameters by keyword), the shapes, and the valid scalars (0 where the range allows it, otherwise
values inside it, never in the subnormal range; flags True, False, 0 and 1; the names of a choice).

Cross-backend tolerance in the chaos check: elementwise (rtol as above, absolute ``finfo.tiny``) for the
optimizers and activations, normwise (absolute ``rtol * max|expected|``) for everything with a sum.

Two deliberate exclusions, documented rather than hidden:

- Array values below 1e-6 and scalars below 1e-8 in magnitude (other than 0) are not drawn for the
  cross-backend comparison: the optimizer kernels flush subnormal numbers to zero (FTZ/DAZ, reported by
  ``fastopt.show_config()``), so results that pass through subnormals legitimately differ from the reference.
- The ``test_regression_*`` tests at the end pin the bugs this fuzzing found (all fixed in commit 7115f6d,
  the corrupt-ZIP ones in cae883e); the random strategies draw their triggers too. ``test_known_bug_*``
  tests fail until the bug they describe is fixed.

Example counts: ``FASTOPT_FUZZ_EXAMPLES=N`` overrides every test's ``max_examples`` (``scripts/fuzz.py``
uses it for long runs); ``FASTOPT_FUZZ_TRACE=path`` writes each example's recipe to ``path`` before it
runs, so a crash can be attributed.
"""

from __future__ import annotations

import collections
import functools
import gzip
import math
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from kernel_arguments import accepted_edges, call_public, kernel_arguments, refused_values

import fastopt
from fastopt import datasets, losses, optim
from fastopt.backend import available_backends, resolve_backend
from fastopt.kernel_table import DIMENSIONS, KERNELS, Array, Kernel, Scalar
from fastopt.layers import GELU, Activation, Dense, Dropout, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

BACKENDS = available_backends()
ALLOWED = (ValueError, TypeError)
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
FLOATS = (F32, F64)
RTOL = {F32: 1e-4, F64: 1e-10}
HUGE = {F32: 1e30, F64: 1e300}
OVERFLOW = {F32: 1e30, F64: 1e290}
ANY_DTYPES = ("float16", "float32", "float64", ">f4", ">f8", "int32", "int64", "bool", "complex64", "object")
EXAMPLES_RUN: collections.Counter[str] = collections.Counter()
_TRACE = os.environ.get("FASTOPT_FUZZ_TRACE")
_OVERRIDE = os.environ.get("FASTOPT_FUZZ_EXAMPLES")


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=int(_OVERRIDE) if _OVERRIDE else examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )


def record(target: str, recipe: object) -> None:
    """Count one example (for ``scripts/fuzz.py``) and, when tracing, write its recipe before it runs."""
    EXAMPLES_RUN[target] += 1
    if _TRACE:
        with open(_TRACE, "w") as handle:
            handle.write(f"{target} example {EXAMPLES_RUN[target]}\n{recipe!r}\n")


# ===================================================================================== values and layouts
PALETTES = ("moderate", "ints", "normal", "wide", "specials")


def make_values(seed: int, shape: tuple[int, ...], palette: str, dtype: np.dtype) -> np.ndarray:
    """Float64 values of ``shape``: moderate (0 or 1e-3..1e3), small integers (ties, zeros), normal,
    wide (1e-6..1e6), or specials (NaN, +-inf, +-0, huge). Never subnormal (see the module docstring)."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    if palette == "ints":
        values = rng.integers(-3, 4, n).astype(np.float64)
    elif palette == "normal":
        values = rng.standard_normal(n)
    elif palette == "moderate":
        values = 10 ** rng.uniform(-3, 3, n) * rng.choice([-1.0, 1.0], n)
        values[rng.random(n) < 0.1] = 0.0
    elif palette == "wide":
        values = 10 ** rng.uniform(-6, 6, n) * rng.choice([-1.0, 1.0], n)
    else:
        huge = HUGE.get(np.dtype(dtype) if dtype != "object" else F64, 1e300)
        values = rng.standard_normal(n)
        specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, huge, -huge, 1e6])
        mask = rng.random(n) < 0.3
        values[mask] = rng.choice(specials, int(mask.sum()))
    return values.reshape(shape)


def to_dtype(values: np.ndarray, dtype: str | np.dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dtype.kind in "iu":
            return np.nan_to_num(np.round(values), posinf=0, neginf=0).clip(-1000, 1000).astype(dtype)
        if dtype.kind == "b":
            return values != 0
        return values.astype(dtype)


LAYOUTS = ("c", "c", "c", "c", "fortran", "transposed", "strided", "negative", "misaligned")


def place(values: np.ndarray, layout: str) -> np.ndarray:
    """The same logical values in the memory layout ``layout``."""
    shape = values.shape
    if layout == "fortran":
        return np.asfortranarray(values)
    if layout == "transposed":
        return np.ascontiguousarray(values.transpose()).transpose()
    if layout == "strided":
        buffer = np.zeros(tuple(2 * s + 1 for s in shape), dtype=values.dtype)
        view = buffer[tuple(slice(0, 2 * s, 2) for s in shape)] if shape else buffer[...]
        view[...] = values
        return view
    if layout == "negative":
        flip = tuple(slice(None, None, -1) for _ in shape)
        return np.ascontiguousarray(values[flip])[flip]
    if layout == "misaligned" and values.dtype != object:
        raw = bytearray(values.nbytes + 1)
        view = np.frombuffer(raw, dtype=values.dtype, count=values.size, offset=1).reshape(shape)
        view[...] = values
        return view
    return np.array(values, order="C", copy=True)


@dataclass(frozen=True)
class ArraySpec:
    """How to build one array argument: logical shape, dtype, values, layout, writeability, aliasing."""

    shape: tuple[int, ...]
    dtype: str = "float64"
    palette: str = "normal"
    seed: int = 0
    layout: str = "c"
    readonly: bool = False
    alias: tuple[str, str] | None = None  # ("same" | "overlap", name of an earlier argument)
    form: str = "array"  # "array", "list", "none", "scalar"
    labels_of: int | None = None  # for label arrays: number of classes (values drawn in [0, classes))


def build_array(spec: ArraySpec, built: dict[str, Any]) -> Any:
    if spec.alias is not None and built.get(spec.alias[1]) is not None:
        other = built[spec.alias[1]]
        if isinstance(other, np.ndarray):
            if spec.alias[0] == "same":
                return other
            flat = other.reshape(-1) if other.flags.c_contiguous else None
            size = math.prod(spec.shape)
            if flat is not None and 0 < size < flat.size:
                return flat[1 : 1 + size].reshape(spec.shape)
            return other
    if spec.form == "none":
        return None
    if spec.labels_of is not None:
        rng = np.random.default_rng(spec.seed)
        classes = max(spec.labels_of, 1)
        values = rng.integers(0, classes, spec.shape).astype(np.float64)
        if spec.palette == "specials" and values.size:
            values.flat[rng.integers(values.size)] = rng.choice([-1, classes, 2**40])
    else:
        values = make_values(
            spec.seed, spec.shape, spec.palette, np.dtype(spec.dtype) if spec.dtype != "object" else F64
        )
    array = to_dtype(values, spec.dtype)
    if spec.form == "list":
        return array.tolist()
    if spec.form == "scalar":
        return float(array.reshape(-1)[0]) if array.size and array.dtype.kind == "f" else 1.0
    array = place(array, spec.layout)
    if spec.readonly:
        array.flags.writeable = False
    return array


def build_arrays(specs: dict[str, ArraySpec]) -> dict[str, Any]:
    built: dict[str, Any] = {}
    for name, spec in specs.items():
        built[name] = build_array(spec, built)
    return built


def snapshot(values: dict[str, Any]) -> dict[str, Any]:
    return {
        name: (value.tobytes(), value.shape, value.dtype.str) if isinstance(value, np.ndarray) else None
        for name, value in values.items()
        if not (isinstance(value, np.ndarray) and value.dtype == object)
    }


def assert_unchanged(before: dict[str, Any], values: dict[str, Any], names: Any = None) -> None:
    for name, state in before.items():
        if state is None or (names is not None and name not in names):
            continue
        value = values[name]
        assert (value.tobytes(), value.shape, value.dtype.str) == state, f"{name} was modified"


# ===================================================================================== scalars
SMALLEST_SCALAR = 1e-8  # valid non-zero scalars are drawn from here up: never in the subnormal range (FTZ)
LARGEST_SCALAR = 10.0  # the upper end drawn for a range without one
BAD_SCALARS = [-1.0, -1e-3, float("nan"), float("inf"), -float("inf"), True, "0.1", None, 1j, [0.1], np.float32(-2)]
HUGE_SCALARS = [1e30, 1e300, 10**30, np.float64(1e200)]
HUGE_SCALARS.append(10**400)  # was an OverflowError from check_scalar (test_regression_huge_int_scalar)
FLAGS = [True, False, 0, 1]
BAD_FLAGS = [2, -1, 0.5, "True", None, np.float64(1.0)]


def accepts(spec: Scalar, value: object) -> bool:
    """Whether the kernel table accepts ``value`` for ``spec``: a flag is True or False (or the integers 0 and 1), a
    choice one of its names, an integer an int (not a bool, not a float) within its range, a real a finite number
    (not a bool) within its range."""
    if spec.flag:
        return isinstance(value, (bool, np.bool_)) or (isinstance(value, (int, np.integer)) and value in (0, 1))
    if spec.integer:
        is_int = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
        return is_int and spec.low <= int(value) <= spec.high  # type: ignore[operator, call-overload]
    if spec.choices:
        return isinstance(value, str) and value in spec.choices
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return False
    try:
        number = float(value)
    except OverflowError:
        return False
    if not math.isfinite(number):
        return False
    if spec.low is not None and (number < spec.low or (spec.low_open and number == spec.low)):
        return False
    return not (spec.high is not None and (number > spec.high or (spec.high_open and number == spec.high)))


def nonzero_scalars(spec: Scalar) -> st.SearchStrategy:
    """Non-zero reals of ``spec``'s range, of magnitude SMALLEST_SCALAR to LARGEST_SCALAR."""
    low = -LARGEST_SCALAR if spec.low is None else max(spec.low, -LARGEST_SCALAR)
    high = LARGEST_SCALAR if spec.high is None else min(spec.high, LARGEST_SCALAR)
    parts = []
    if high >= SMALLEST_SCALAR:
        start = max(low, SMALLEST_SCALAR)
        parts.append(
            st.floats(
                start,
                high,
                exclude_min=spec.low_open and start == spec.low,
                exclude_max=spec.high_open and high == spec.high,
            )
        )
    if low <= -SMALLEST_SCALAR:
        parts.append(st.floats(low, min(high, -SMALLEST_SCALAR), exclude_min=spec.low_open and low == spec.low))
    return st.one_of(parts)


def valid_scalars(spec: Scalar) -> st.SearchStrategy:
    """Values the table accepts for ``spec``: 0 where its range allows it and non-zero reals of its range; an
    integer's range (its ends included); a flag's True, False, 0 and 1; a choice's names."""
    if spec.flag:
        return st.sampled_from(FLAGS)
    if spec.choices:
        return st.sampled_from(spec.choices)
    if spec.integer:
        return st.one_of(st.integers(int(spec.low), int(spec.high)), st.sampled_from(accepted_edges(spec)))  # type: ignore[arg-type]
    return st.one_of(st.just(0.0), nonzero_scalars(spec)) if accepts(spec, 0.0) else nonzero_scalars(spec)


def chaos_scalars(spec: Scalar, mess: int) -> st.SearchStrategy:
    """Mostly valid values; in a messy call (``mess``) also the ends of the range and beyond, wrong types, NaN, inf,
    huge numbers; for a choice always its names and some wrong ones (a name in capitals, an empty one, None, 3)."""
    if spec.choices:
        return st.sampled_from([*spec.choices, *spec.choices, spec.choices[0].upper(), "", None, 3])
    if not mess:
        return valid_scalars(spec)
    if spec.flag:
        return st.one_of(st.sampled_from(FLAGS), st.sampled_from(FLAGS), st.sampled_from(BAD_FLAGS))
    if spec.integer:
        wrong = [*refused_values(spec), 1.0, 0.5, True, "7", None, np.uint64(7), np.int64(-1), float("nan")]
        return st.one_of(valid_scalars(spec), valid_scalars(spec), st.sampled_from(wrong))
    good = valid_scalars(spec)
    edges = [*accepted_edges(spec), *refused_values(spec)]
    return st.one_of(
        good,
        good,
        good,
        st.sampled_from(BAD_SCALARS + HUGE_SCALARS + [*edges, np.float32(0.5), np.int64(1), 0]),
        st.floats(allow_subnormal=False),
    )


# ===================================================================================== the kernels
# Kernels whose results are sums (reordered by blocking and SIMD): compared normwise across backends.
SUMMING_KERNELS = {
    "dense_forward",
    "dense_backward",
    "softmax_forward",
    "softmax_backward",
    "softmax_cross_entropy",
    "mse",
    "huber",
    "mae",
    "binary_cross_entropy",
    "count_correct",
    "sum_of_squares",
}
# Loss kernels: their value is a (weighted) sum of many terms, compared with a tolerance made of those terms'
# magnitudes (the math reference's scale), which also covers weights of both signs that cancel.
LOSS_VALUE_KERNELS = {"softmax_cross_entropy", "mse", "huber", "mae", "binary_cross_entropy"}


@dataclass(frozen=True)
class Call:
    """A complete kernel call recipe: how to build each array, and every scalar and hyperparameter by name."""

    kernel: str
    arrays: dict[str, ArraySpec]
    scalars: dict[str, Any]


def invoke(backend_name: str, call: Call, arrays: dict[str, Any]) -> Any:
    """The public method: arrays and scalars in table order, hyperparameters by keyword."""
    return call_public(resolve_backend(backend_name), KERNELS[call.kernel], {**call.scalars, **arrays})


@functools.cache
def nonnegative_states(kernel_name: str) -> frozenset[str]:
    """The state buffers of an optimizer kernel that hold no negative value (sums of squares, second moments,
    norms): those that the kernel's math (the references below) makes non-negative in one step from a zero state
    with a gradient of both signs. Arrays of other kernels: none."""
    kernel = KERNELS[kernel_name]
    if kernel.group != "optimizer":
        return frozenset()
    values = kernel_arguments(kernel)
    f = {spec.name: None if values[spec.name] is None else np.zeros(4) for spec in kernel.arrays[2:]}
    f.update(param=np.array([1.0, -1.0, 2.0, -3.0]), grad=np.array([-2.0, -0.5, 0.5, 3.0]))
    scalars = {spec.name: values[spec.name] for spec in kernel.hyper}
    expected = MATH_REFERENCES[kernel_name](f, scalars, F64)
    return frozenset(name for name, (value, _) in expected.items() if name != "param" and np.all(value >= 0))


# ---------------------------------------------------------------------------- the validity predicate
def expected_valid(call: Call, arrays: dict[str, Any]) -> bool:
    """Whether the kernel table says the call must be accepted: every scalar and hyperparameter in its range, the
    ``given_when`` rules, every array as declared (``arrays_fit``) and the entry's other rules (``rules_hold``)."""
    kernel = KERNELS[call.kernel]
    if not all(accepts(spec, call.scalars[spec.name]) for spec in (*kernel.scalars, *kernel.hyper)):
        return False
    if any((arrays[array] is None) != (call.scalars[scalar] == 0) for array, scalar in kernel.given_when):
        return False
    dims = arrays_fit(kernel, arrays)
    return dims is not None and rules_hold(kernel, arrays, dims)


def arrays_fit(kernel: Kernel, arrays: dict[str, Any]) -> dict[str, int] | None:
    """The sizes of the dimensions if every array is as declared: given (an optional one may be None), an ndarray,
    int64 for indices and otherwise the float32/float64 dtype of the first float array, C-contiguous, writeable when
    written, of its symbolic shape (``*``: the shape of the first ``*`` array); else None."""
    dims: dict[str, int] = {}
    star: list[tuple[int, ...]] = []
    floats: list[np.dtype] = []
    for spec in kernel.arrays:
        value = arrays[spec.name]
        if value is None and spec.optional:
            continue
        if not isinstance(value, np.ndarray):
            return None
        if spec.index_of:
            dtype_ok = value.dtype == np.int64
        else:
            floats.append(value.dtype)
            dtype_ok = floats[0] in FLOATS and value.dtype == floats[0]
        layout_ok = value.flags.c_contiguous and (value.flags.writeable or not spec.written)
        if not (dtype_ok and layout_ok and shape_fits(spec.shape, value.shape, dims, star)):
            return None
    return dims


def shape_fits(pattern: str, shape: tuple[int, ...], dims: dict[str, int], star: list[tuple[int, ...]]) -> bool:
    if pattern == "*":
        if not star:
            star.append(shape)
        return shape == star[0]
    return len(shape) == len(pattern) and all(
        dims.setdefault(symbol, size) == size for symbol, size in zip(pattern, shape)
    )


def rules_hold(kernel: Kernel, arrays: dict[str, Any], dims: dict[str, int]) -> bool:
    """No written array shares memory with another argument, indices lie in their dimension, the ``min_size``
    dimensions are at least 1 and the ``nonempty`` arrays hold an element."""
    present = [(spec, arrays[spec.name]) for spec in kernel.arrays if arrays[spec.name] is not None]
    for spec, value in present:
        if spec.written and any(
            np.shares_memory(value, other) for other_spec, other in present if other_spec is not spec
        ):
            return False
        if spec.index_of and value.size and (value.min() < 0 or value.max() >= dims.get(spec.index_of, 0)):
            return False
    return all(dims.get(symbol, 0) >= 1 for symbol in kernel.min_size) and all(
        arrays[name].size for name in kernel.nonempty
    )


# ---------------------------------------------------------------------------- drawing recipes
def draw_dims(draw: st.DrawFn) -> dict[str, int]:
    return {symbol: draw(st.sampled_from([0, 1, 1, 2, 3, 5, 8])) for symbol in DIMENSIONS}


def shape_of(pattern: str, dims: dict[str, int], star: tuple[int, ...]) -> tuple[int, ...]:
    return star if pattern == "*" else tuple(dims[symbol] for symbol in pattern)


def clean_array(draw: st.DrawFn, kernel: Kernel, array: Array, shape: tuple[int, ...], dims: dict[str, int],
                dtype: str, palette: str) -> ArraySpec:  # fmt: skip
    """A valid array of a chaos call (read-only inputs and absent optional arrays included)."""
    spec = ArraySpec(shape, dtype, palette, draw(st.integers(0, 2**32 - 1)))
    if array.index_of:
        spec = replace(spec, dtype="int64", labels_of=dims[array.index_of], palette="ints")
    if array.name in nonnegative_states(kernel.name) and palette != "specials":
        spec = replace(spec, palette="moderate")
    if not array.written and draw(st.booleans()):
        spec = replace(spec, readonly=True)
    if array.optional and draw(st.booleans()):
        spec = replace(spec, form="none")
    return spec


TROUBLES = ("layout", "dtype", "readonly", "shape", "alias", "form", "labels")


def troubled(draw: st.DrawFn, spec: ArraySpec, array: Array, earlier: list[str]) -> ArraySpec:
    """``spec`` with one thing that may go wrong: layout, dtype, writeability, shape, aliasing an earlier argument,
    not an array, or indices out of range."""
    trouble = draw(st.sampled_from(TROUBLES))
    if trouble == "layout":
        return replace(spec, layout=draw(st.sampled_from(LAYOUTS)))
    if trouble == "dtype":
        return replace(spec, dtype=draw(st.sampled_from(ANY_DTYPES)))
    if trouble == "readonly":
        return replace(spec, readonly=True)
    if trouble == "shape":
        return replace(spec, shape=tuple(draw(st.lists(st.integers(0, 4), max_size=3))))
    if trouble == "alias" and earlier:
        return replace(spec, alias=(draw(st.sampled_from(["same", "overlap"])), draw(st.sampled_from(earlier))))
    if trouble == "form":
        return replace(spec, form=draw(st.sampled_from(["list", "none", "scalar"])))
    if trouble == "labels" and array.index_of:
        return replace(spec, palette="specials")
    return spec


@st.composite
def chaos_calls(draw: st.DrawFn, kernel_name: str) -> Call:
    kernel = KERNELS[kernel_name]
    dims = draw_dims(draw)
    star = tuple(draw(st.lists(st.sampled_from([0, 1, 1, 2, 3, 7]), min_size=0, max_size=3)))
    if any(array.shape == "*" and array.name in kernel.nonempty for array in kernel.arrays) and draw(st.integers(0, 9)):
        star = star or (2,)  # mostly not empty where the table refuses empty
    dtype = draw(st.sampled_from(["float32", "float64"]))
    palette = draw(st.sampled_from(PALETTES))
    mess = draw(st.integers(0, 3))  # 0: a clean call; otherwise that many things may go wrong
    names = [array.name for array in kernel.arrays]
    specs: dict[str, ArraySpec] = {}
    for index, array in enumerate(kernel.arrays):
        spec = clean_array(draw, kernel, array, shape_of(array.shape, dims, star), dims, dtype, palette)
        if mess and draw(st.integers(0, 2 * len(names))) < mess:
            spec = troubled(draw, spec, array, names[:index])
        specs[array.name] = spec
    scalars = {spec.name: draw(chaos_scalars(spec, mess)) for spec in (*kernel.scalars, *kernel.hyper)}
    if not mess:
        for array_name, scalar_name in kernel.given_when:
            specs[array_name] = replace(specs[array_name], form="array" if scalars[scalar_name] else "none")
    return Call(kernel_name, specs, scalars)


# ---------------------------------------------------------------------------- comparison
def gemm_in_range(kernel_name: str, name: str, ref_arrays: dict[str, Any]) -> np.ndarray | None:
    """For the outputs made by sums of products (the dense layers' GEMMs and bias gradient): where the sum of
    the terms' magnitudes (float64) is finite and within the dtype's range. Elsewhere the result depends on
    the order of the sums and on fused multiply-adds: a partial sum may overflow in one order and not in
    another (3e38 + 3e38 - 3e38), and an FMA keeps a product that overflows on its own (inf, not inf - inf
    = NaN); BLAS implementations and blockings choose both freely. None: compare everything."""
    with np.errstate(all="ignore"):
        if kernel_name == "dense_forward" and name == "out":
            x, weight, bias = (np.abs(ref_arrays[key].astype(np.float64)) for key in ("x", "weight", "bias"))
            bound = x @ weight + bias
        elif kernel_name == "dense_backward" and name in ("grad_weight", "grad_bias", "grad_x"):
            dz = np.abs(ref_arrays["grad_out"].astype(np.float64))
            if name == "grad_weight":
                bound = np.abs(ref_arrays["x"].astype(np.float64)).T @ dz
            elif name == "grad_bias":
                bound = dz.sum(axis=0)
            else:
                bound = dz @ np.abs(ref_arrays["weight"].astype(np.float64)).T
        else:
            return None
    return np.isfinite(bound) & (bound <= np.finfo(ref_arrays[name].dtype).max)


def assert_same_result(
    actual: Any, expected: Any, dtype: np.dtype, *, sums: bool, what: str, where: np.ndarray | None = None
) -> None:
    """NaN and inf in the same places; finite values within rtol (normwise when ``sums``); only at ``where``
    when given."""
    if isinstance(expected, np.ndarray):
        assert isinstance(actual, np.ndarray) and actual.shape == expected.shape, what
        if where is not None:
            actual, expected = actual[where], expected[where]
        actual64, expected64 = actual.astype(np.float64), expected.astype(np.float64)
    else:
        assert type(actual) is type(expected), f"{what}: {type(actual)} vs {type(expected)}"
        if isinstance(expected, int):
            assert actual == expected, what
            return
        actual64, expected64 = np.array([actual]), np.array([expected])
    np.testing.assert_array_equal(np.isnan(actual64), np.isnan(expected64), err_msg=f"{what}: NaN positions")
    infinite = np.isinf(expected64)
    np.testing.assert_array_equal(np.isinf(actual64), infinite, err_msg=f"{what}: inf positions")
    np.testing.assert_array_equal(actual64[infinite], expected64[infinite], err_msg=f"{what}: inf signs")
    finite = np.isfinite(expected64)
    if not finite.any():
        return
    rtol = RTOL[dtype]
    atol = rtol * float(np.max(np.abs(expected64[finite]))) if sums else float(np.finfo(dtype).tiny)
    np.testing.assert_allclose(actual64[finite], expected64[finite], rtol=rtol, atol=atol, err_msg=what)


def tolerated_refusal(call: Call, arrays: dict[str, Any], error: BaseException) -> bool:
    """A ValueError for a valid call whose rows have zero columns (``(B, 0)``): the NumPy reference's
    reductions (max, argmax) refuse empty rows while the compiled kernels return early. Both outcomes are
    allowed; the disagreement is reported in docs/reliability.md."""
    return isinstance(error, ValueError) and any(
        spec.shape.endswith("C") and isinstance(arrays[spec.name], np.ndarray) and arrays[spec.name].shape[-1:] == (0,)
        for spec in KERNELS[call.kernel].arrays
    )


def run_call(backend_name: str, call: Call) -> tuple[dict[str, Any], Any, BaseException | None]:
    arrays = build_arrays(call.arrays)
    try:
        with np.errstate(all="ignore"):
            result = invoke(backend_name, call, arrays)
    except ALLOWED as exc:
        return arrays, None, exc
    return arrays, result, None


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
@fuzz_settings(150)
@given(data=st.data())
def test_kernel_chaos(kernel_name: str, data: st.DataObject) -> None:
    """Any arguments: refused with ValueError/TypeError (nothing written) or accepted exactly when the
    contract says so, inputs untouched, and every backend agreeing."""
    call = data.draw(chaos_calls(kernel_name))
    record(f"kernel_chaos[{kernel_name}]", call)
    pristine = build_arrays(call.arrays)
    valid = expected_valid(call, pristine)
    before = snapshot(pristine)
    kernel = KERNELS[kernel_name]
    inputs = {spec.name for spec in kernel.arrays if not spec.written}
    results = {}
    for name in BACKENDS:
        arrays, result, error = run_call(name, call)
        event(f"{name}: {'refused' if error is not None else 'accepted'}")
        if error is not None:
            assert not valid or tolerated_refusal(call, pristine, error), f"{name} refused a valid call: {error!r}"
            assert_unchanged(before, arrays)
            continue
        assert valid, f"{name} accepted an invalid call"
        assert_unchanged(before, arrays, inputs)
        results[name] = (arrays, result)
    if len(results) < 2:
        return
    order = sorted(results, key=lambda name: name != "numpy")  # the NumPy reference first
    (ref_arrays, ref_result), *others = [results[name] for name in order]
    dtype = next(
        value.dtype for value in ref_arrays.values() if isinstance(value, np.ndarray) and value.dtype in FLOATS
    )
    outputs = [spec.name for spec in kernel.arrays if spec.written and ref_arrays[spec.name] is not None]
    # GELU's float32 kernel computes the normal cdf its own way (vectorized, fastopt_layers.h): elementwise it differs
    # from the reference by rounding, without a fixed relative bound near the derivative's root (x = -0.75)
    sums = kernel_name in SUMMING_KERNELS or call.scalars.get("activation") in ("gelu", "gelu_tanh")
    returned = kernel.returns if kernel.returns in ref_arrays else ""  # an output array returned (also compared)
    for arrays, result in others:
        if kernel_name in LOSS_VALUE_KERNELS:
            assert_same_loss(call, ref_arrays, result, ref_result, dtype)
        elif kernel_name == "dense_backward":
            # whether the backend's own weight and bias gradients are finite (they are compared below where the
            # sums stay in range; beyond it their non-finite places, hence the flags, may differ)
            own = bool(np.isfinite(arrays["grad_weight"]).all() and np.isfinite(arrays["grad_bias"]).all())
            assert result is own, f"dense_backward returned {result}, its gradients' finiteness is {own}"
        elif ref_result is not None:
            assert_same_result(
                result,
                ref_result,
                dtype,
                sums=sums,
                what=f"{kernel_name} result",
                where=gemm_in_range(kernel_name, returned, ref_arrays),
            )
        for name in outputs:
            assert_same_result(
                arrays[name],
                ref_arrays[name],
                dtype,
                sums=sums,
                what=f"{kernel_name} {name}",
                where=gemm_in_range(kernel_name, name, ref_arrays),
            )


def assert_same_loss(call: Call, ref_arrays: dict[str, Any], result: float, ref_result: float, dtype: np.dtype) -> None:
    """A loss value on two backends: NaN and inf alike, finite values within ``rtol * (|reference| + scale)``,
    ``scale`` the math reference's sum of the terms' magnitudes (the softmax cross-entropy's reference rounds each
    row's log-sum-exp to the array's precision where the kernel keeps it in double: where the loss cancels, a
    confident right answer, they differ by an ulp of the logits; weights of both signs may cancel too)."""
    if not (math.isfinite(ref_result) and math.isfinite(result)):
        assert_same_result(result, ref_result, dtype, sums=True, what=f"{call.kernel} result")
        return
    scale = math_reference(call, ref_arrays)["result"][1]
    assert abs(result - ref_result) <= RTOL[dtype] * (abs(ref_result) + scale), (result, ref_result, scale)


# ===================================================================================== the math check
_erfc = np.vectorize(math.erfc, otypes=[np.float64])
BETA, KAPPA = math.sqrt(2 / math.pi), 0.044715  # GELU's tanh form: u = BETA (z + KAPPA z**3)


def act_ref(activation: str, z: np.ndarray, slope: float = 0.0) -> np.ndarray:
    """f(z) in float64; GELU's 1 + erf(z / sqrt(2)) as erfc(-z / sqrt(2)) and 1 + tanh(u) as 2 / (1 + exp(-2 u)):
    PyTorch's formulas cancel for z << 0 (in float64 too, where the kernels do not)."""
    if activation == "relu":
        return np.maximum(z, 0)
    if activation == "sigmoid":
        e = np.exp(-np.abs(z))
        return np.where(z >= 0, 1 / (1 + e), e / (1 + e))
    if activation == "tanh":
        return np.tanh(z)
    if activation == "leaky_relu":
        return np.where(z > 0, z, z * slope)
    if activation == "gelu":
        return 0.5 * z * _erfc(-z / math.sqrt(2))
    if activation == "gelu_tanh":
        return z / (1 + np.exp(-2 * BETA * (z + KAPPA * z**3)))
    if activation == "identity":
        return z.copy()
    raise ValueError(f"no reference for activation {activation!r}")


def act_grad_ref(activation: str, x: Any, y: np.ndarray, g: np.ndarray, slope: float = 0.0) -> tuple[Any, Any]:
    """``g * f'`` with f' from the output y (relu, sigmoid, tanh; leaky_relu when the input x is None, as in a dense
    layer, whose slope is >= 0) or from x, and its magnitude bound."""
    if activation == "relu":
        return np.where(y > 0, g, 0.0), np.abs(g)
    if activation == "sigmoid":
        return g * (y * (1 - y)), np.abs(g) * np.abs(y) * (1 + np.abs(y))
    if activation == "tanh":
        return g * (1 - y * y), np.abs(g) * (1 + y * y)
    if activation == "leaky_relu":
        return np.where((y if x is None else x) > 0, g, g * slope), np.abs(g) * max(1.0, abs(slope))
    if activation in ("gelu", "gelu_tanh"):
        terms = gelu_derivative_terms(activation, x)
        return g * (terms[0] + terms[1]), np.abs(g) * (np.abs(terms[0]) + np.abs(terms[1]))
    if activation == "identity":
        return g.copy(), np.abs(g)
    raise ValueError(f"no reference for activation {activation!r}")


def gelu_derivative_terms(activation: str, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of GELU's derivative, whose sum cancels near x = -0.75: ``Phi(x)`` and ``x phi(x)``; for the tanh
    form ``0.5 (1 + t)`` and ``0.5 x (1 - t**2) u'`` (t = tanh(u)), with 0.5 (1 + t) = 1 / (1 + exp(-2 u)) and
    1 - t**2 = 4 / ((1 + exp(-2 u)) (1 + exp(2 u))), which do not cancel."""
    if activation == "gelu":
        return 0.5 * _erfc(-x / math.sqrt(2)), x * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    u = BETA * (x + KAPPA * x**3)
    half_one_plus_t, half_one_minus_t = 1 / (1 + np.exp(-2 * u)), 1 / (1 + np.exp(2 * u))
    return half_one_plus_t, 2 * x * half_one_plus_t * half_one_minus_t * BETA * (1 + 3 * KAPPA * x * x)


def splitmix64_word(key: int, index: int) -> int:
    """Word ``index`` of the SplitMix64 stream of ``key`` (Steele, Lea and Flood), in Python integers."""
    mask = (1 << 64) - 1
    z = (key + (index + 1) * 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def dropout_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """The table's math line: element i is kept when half i % 2 of word i // 2 is at least p 2**32, and scaled by
    1 / (1 - p) rounded to the dtype."""
    x = f["x"].reshape(-1)
    words = [splitmix64_word(s["key"], j) for j in range((x.size + 1) // 2)]
    halves = [(words[i // 2] >> (32 * (i % 2))) & 0xFFFFFFFF for i in range(x.size)]
    scale = float(dtype.type(1 / (1 - s["p"])))
    multipliers = np.array([scale if half >= s["p"] * 2**32 else 0.0 for half in halves]).reshape(f["x"].shape)
    return {"out": (f["x"] * multipliers, np.abs(f["x"]) * scale), "mask": (multipliers, 0.0)}


# Each reference takes the arrays in float64 (index arrays as given; None for an absent optional one), the scalars
# by name and the arrays' dtype, and returns the expected outputs (float64) with their scales, by output name
# ("result" for a return value). The formulas are the guide's and the kernel table's math lines (the optimizer
# classes' docstrings for the scalars they compute), written here independently of fastopt.numpy_backend.
Expected = dict[str, tuple[Any, Any]]


def dense_forward_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    z = f["x"] @ f["weight"] + f["bias"]
    scale = np.abs(f["x"]) @ np.abs(f["weight"]) + np.abs(f["bias"])
    return {"out": (act_ref(s["activation"], z, s["negative_slope"]), scale * max(1.0, s["negative_slope"]))}


def dense_backward_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    dz, dzs = act_grad_ref(s["activation"], None, f["out"], f["grad_out"], s["negative_slope"])
    expected = {
        "grad_out": (dz, dzs),
        "grad_weight": (f["x"].T @ dz, np.abs(f["x"]).T @ dzs),
        "grad_bias": (dz.sum(axis=0), dzs.sum(axis=0)),
    }
    # the kernel says whether the weight and bias gradients are finite, as they are in the array's precision
    gradients = (expected["grad_weight"][0], expected["grad_bias"][0])
    in_range = all(np.all(np.abs(value) <= np.finfo(dtype).max) for value in gradients)
    expected["result"] = (bool(in_range), 0)
    if f["grad_x"] is not None:
        expected["grad_x"] = (dz @ f["weight"].T, dzs @ np.abs(f["weight"]).T)
    return expected


def softmax_forward_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    e = np.exp(f["x"] - f["x"].max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return {"out": (p, np.broadcast_to(p.max(axis=1, keepdims=True), p.shape))}


def softmax_backward_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    y, g = f["out"], f["grad_out"]
    dot = (g * y).sum(axis=1, keepdims=True)
    return {"grad_x": (y * (g - dot), np.abs(y) * (np.abs(g) + (np.abs(g) * np.abs(y)).sum(axis=1, keepdims=True)))}


def weighted_loss(f: dict[str, Any], elements: Any, scales: Any, grad: Any, grad_scales: Any, name: str) -> Expected:
    """A loss kernel's expected value and gradient from its elements' losses and gradients (B, columns) with their
    magnitude bounds, as the table's math lines weigh them: w_i (1 without weights), W = sum_i w_i, value
    ``sum_i w_i mean_j elements[i, j] / W`` and gradient ``grad[i] w_i / (W columns)``; 0 for both when W is 0. W is
    summed in row order, as the table says (huge weights of both signs cancel differently in another order)."""
    rows, columns = elements.shape
    w = np.ones(rows) if f["weights"] is None else f["weights"]
    total = float(np.cumsum(w)[-1])
    if total == 0:
        factor, value, scale = np.zeros((rows, 1)), 0.0, 0.0
    else:
        factor = (w / (total * columns))[:, None]
        value = float(np.sum(w * elements.sum(axis=1)) / (total * columns))
        scale = float(np.sum(np.abs(w) * scales.sum(axis=1)) / (abs(total) * columns))
    expected = {"result": (value, scale)}
    if f[name] is not None:
        expected[name] = (grad * factor, grad_scales * np.abs(factor))
    return expected


def softmax_cross_entropy_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """t = (1 - eps) onehot + eps / C; l = logsumexp(x) - <t, x>; gradient softmax(x) - t."""
    x, labels, eps = f["logits"], f["labels"], s["label_smoothing"]
    batch, classes = x.shape
    m = x.max(axis=1, keepdims=True)
    e = np.exp(x - m)
    lse = m[:, 0] + np.log(e.sum(axis=1))
    target = (1 - eps) * np.eye(classes)[labels] + eps / classes
    smoothed = (target * x).sum(axis=1) if eps else x[np.arange(batch), labels]  # (0 * inf would be NaN)
    magnitude = (target * np.abs(x)).sum(axis=1) if eps else np.abs(x[np.arange(batch), labels])
    p = e / e.sum(axis=1, keepdims=True)
    return weighted_loss(f, (lse - smoothed)[:, None], (np.abs(lse) + magnitude + 1 + classes)[:, None],
                         p - target, p + target, "grad_logits")  # fmt: skip


def mse_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    d = f["pred"] - f["target"]
    return weighted_loss(f, d * d, d * d, 2 * d, np.abs(2 * d), "grad_pred")


def huber_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """d**2 / 2 inside |d| < delta, delta (|d| - delta / 2) outside; gradient clip(d, -delta, delta). Where |d| is
    within rounding of delta either side may be taken: the two agree there (value and slope are continuous)."""
    d, delta = f["pred"] - f["target"], s["delta"]
    element_losses = np.where(np.abs(d) < delta, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
    clipped = np.clip(d, -delta, delta)
    return weighted_loss(
        f, element_losses, np.abs(element_losses) + delta * np.abs(d), clipped, np.abs(clipped), "grad_pred"
    )


def mae_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """|d|; gradient sign(d), sign(0) = 0. sign jumps at 0: it is taken of d as the arrays' precision makes it."""
    with np.errstate(all="ignore"):
        sign = np.sign(f["pred"].astype(dtype) - f["target"].astype(dtype)).astype(np.float64)
    d = np.abs(f["pred"] - f["target"])
    return weighted_loss(f, d, d, sign, np.abs(sign), "grad_pred")


def binary_cross_entropy_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """l = -(p y log s(x) + (1 - y) log(1 - s(x))) with log s(x) = -log(1 + exp(-x)); gradient (1 - y) s(x) - p y s(-x).
    Written in float64 as the definition (logits kept within exp's range by the palettes drawn)."""
    x, y = f["logits"], f["targets"]
    p = np.ones(x.shape[1]) if f["pos_weight"] is None else f["pos_weight"]
    with np.errstate(over="ignore"):
        neg_log_s, neg_log_1ms = np.logaddexp(0, -x), np.logaddexp(0, x)  # -log s(x), -log(1 - s(x))
    element_losses = p * y * neg_log_s + (1 - y) * neg_log_1ms
    scales = np.abs(p * y) * neg_log_s + np.abs(1 - y) * neg_log_1ms
    s_pos, s_neg = 1 / (1 + np.exp(-x)), 1 / (1 + np.exp(x))
    grad = (1 - y) * s_pos - p * y * s_neg
    return weighted_loss(f, element_losses, scales, grad, np.abs(1 - y) * s_pos + np.abs(p * y) * s_neg, "grad_logits")


# ---------------------------------------------------------------------------- optimizer references
def decayed(f: dict[str, Any], s: dict[str, Any], decoupled: bool) -> tuple[Any, Any, Any]:
    """(p, g, bound on |g|) after weight decay: decoupled, ``p *= 1 - lr wd`` and g is the gradient; otherwise the
    L2 term ``wd p`` joins g, and only when wd != 0 (as the kernels and PyTorch: ``0 * inf`` would make an infinite
    parameter's gradient NaN)."""
    p, g, wd = f["param"], f["grad"], s["weight_decay"]
    if decoupled:
        return p * (1 - s["lr"] * wd), g, np.abs(g)
    if wd:
        return p, g + wd * p, np.abs(g) + wd * np.abs(p)
    return p, g, np.abs(g)


def moments(f: dict[str, Any], s: dict[str, Any], g: Any, gs: Any) -> Expected:
    """Adam's moments: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``, with their bounds."""
    b1, b2 = s["beta1"], s["beta2"]
    return {
        "exp_avg": (b1 * f["exp_avg"] + (1 - b1) * g, b1 * np.abs(f["exp_avg"]) + (1 - b1) * gs),
        "exp_avg_sq": (b2 * f["exp_avg_sq"] + (1 - b2) * g * g, b2 * f["exp_avg_sq"] + (1 - b2) * gs * gs),
    }


def sgd_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, False)
    mu, out = s["momentum"], {}
    update, us = ge, gs
    if f["momentum_buffer"] is not None:
        b = f["momentum_buffer"]
        if s["first_step"]:
            bn, bs = ge, gs
        else:
            bn, bs = mu * b + (1 - s["dampening"]) * ge, mu * np.abs(b) + (1 - s["dampening"]) * gs
        out["momentum_buffer"] = (bn, bs)
        update, us = (ge + mu * bn, gs + mu * bs) if s["nesterov"] else (bn, bs)
    out["param"] = (p - s["lr"] * update, np.abs(p) + s["lr"] * us)
    return out


def adagrad_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, False)
    total = f["sum_squares"] + ge * ge
    d = np.sqrt(total) + s["eps"]
    return {
        "sum_squares": (total, f["sum_squares"] + gs * gs),
        "param": (p - s["lr"] * ge / d, np.abs(p) + s["lr"] * gs / d),
    }


def rmsprop_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, False)
    alpha, mu = s["alpha"], s["momentum"]
    v = alpha * f["square_avg"] + (1 - alpha) * ge * ge
    out = {"square_avg": (v, alpha * f["square_avg"] + (1 - alpha) * gs * gs)}
    if f["grad_avg"] is not None:
        a = alpha * f["grad_avg"] + (1 - alpha) * ge
        out["grad_avg"] = (a, alpha * np.abs(f["grad_avg"]) + (1 - alpha) * gs)
        d = np.sqrt(v - a * a) + s["eps"]
    else:
        d = np.sqrt(v) + s["eps"]
    update, us = ge / d, gs / d
    if f["momentum_buffer"] is not None:
        b = mu * f["momentum_buffer"] + ge / d
        out["momentum_buffer"] = (b, mu * np.abs(f["momentum_buffer"]) + gs / d)
        update, us = b, out["momentum_buffer"][1]
    out["param"] = (p - s["lr"] * update, np.abs(p) + s["lr"] * us)
    return out


def adam_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, bool(s["decoupled_weight_decay"]))
    out = moments(f, s, ge, gs)
    second = out["exp_avg_sq"][0]
    if f["max_exp_avg_sq"] is not None:
        second = np.maximum(f["max_exp_avg_sq"], second)
        out["max_exp_avg_sq"] = (second, second)
    d = np.sqrt(second) / math.sqrt(s["bias_correction2"]) + s["eps"]
    step = s["lr"] / s["bias_correction1"]
    out["param"] = (p - step * out["exp_avg"][0] / d, np.abs(p) + step * out["exp_avg"][1] / d)
    return out


def nadam_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, bool(s["decoupled_weight_decay"]))
    out = moments(f, s, ge, gs)
    (m, ms), v = out["exp_avg"], out["exp_avg_sq"][0]
    d = np.sqrt(v / s["bias_correction2"]) + s["eps"]
    grad_step, momentum_step = s["grad_step"], s["momentum_step"]
    out["param"] = (
        p - grad_step * ge / d - momentum_step * m / d,
        np.abs(p) + (grad_step * gs + momentum_step * ms) / d,
    )
    return out


def adamax_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, False)
    b1, b2 = s["beta1"], s["beta2"]
    m, ms = b1 * f["exp_avg"] + (1 - b1) * ge, b1 * np.abs(f["exp_avg"]) + (1 - b1) * gs
    u = np.maximum(b2 * f["exp_inf"], np.abs(ge) + s["eps"])
    step = s["lr"] / s["bias_correction1"]
    return {
        "exp_avg": (m, ms),
        "exp_inf": (u, np.maximum(b2 * f["exp_inf"], gs + s["eps"])),
        "param": (p - step * m / u, np.abs(p) + step * ms / u),
    }


def radam_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    p, ge, gs = decayed(f, s, bool(s["decoupled_weight_decay"]))
    out = moments(f, s, ge, gs)
    (m, ms), v = out["exp_avg"], out["exp_avg_sq"][0]
    factor = s["lr"] / s["bias_correction1"]
    if s["rectified"]:
        factor = factor * math.sqrt(s["bias_correction2"]) / (np.sqrt(v) + s["eps"]) * s["rectification"]
    out["param"] = (p - m * factor, np.abs(p) + ms * factor)
    return out


def lion_ref(f: dict[str, Any], s: dict[str, Any], dtype: np.dtype) -> Expected:
    """sign(c) jumps at 0: it is taken of c as the parameters' precision makes it (the table's order of operations),
    where float64 could give the other sign to a c that cancels; everything else is float64."""
    b1, b2, lr, wd = s["beta1"], s["beta2"], s["lr"], s["weight_decay"]
    p, g, m = f["param"], f["grad"], f["exp_avg"]
    with np.errstate(all="ignore"):
        c = dtype.type(b1) * m.astype(dtype) + dtype.type(1 - b1) * g.astype(dtype)
    direction = np.sign(c).astype(np.float64)
    update, us = (direction + wd * p, np.abs(direction) + wd * np.abs(p)) if wd else (direction, np.abs(direction))
    return {
        "param": (p - lr * update, np.abs(p) + lr * us),
        "exp_avg": (b2 * m + (1 - b2) * g, b2 * np.abs(m) + (1 - b2) * np.abs(g)),
    }


MATH_REFERENCES: dict[str, Callable[[dict[str, Any], dict[str, Any], np.dtype], Expected]] = {
    "dense_forward": dense_forward_ref,
    "dense_backward": dense_backward_ref,
    "activation_forward": lambda f, s, dtype: {
        "out": (act_ref(s["activation"], f["x"], s["negative_slope"]), np.abs(f["x"]) * (1 + abs(s["negative_slope"])))
    },
    "activation_backward": lambda f, s, dtype: {
        "grad_x": act_grad_ref(s["activation"], f["x"], f["out"], f["grad_out"], s["negative_slope"])
    },
    "dropout": dropout_ref,
    "dropout_backward": lambda f, s, dtype: {"grad_x": (f["grad_out"] * f["mask"], np.abs(f["grad_out"] * f["mask"]))},
    "softmax_forward": softmax_forward_ref,
    "softmax_backward": softmax_backward_ref,
    "softmax_cross_entropy": softmax_cross_entropy_ref,
    "mse": mse_ref,
    "huber": huber_ref,
    "mae": mae_ref,
    "binary_cross_entropy": binary_cross_entropy_ref,
    "count_binary_correct": lambda f, s, dtype: {
        "result": (int(np.count_nonzero((f["logits"] > 0) == (f["targets"] > 0.5))), 0)
    },
    "count_correct": lambda f, s, dtype: {
        "result": (int(np.count_nonzero(f["scores"].argmax(axis=1) == f["labels"])), 0)
    },
    "all_finite": lambda f, s, dtype: {"result": (bool(np.all(np.isfinite(f["x"]))), 0)},
    "sum_of_squares": lambda f, s, dtype: {"result": (float(np.sum(f["x"] ** 2)), float(np.sum(f["x"] ** 2)))},
    "gather_rows": lambda f, s, dtype: {"out": (f["source"][f["rows"]], 0.0)},
    "weighted_sum_into": lambda f, s, dtype: {
        "a": (
            s["a_weight"] * f["a"] + s["b_weight"] * f["b"],
            np.abs(s["a_weight"] * f["a"]) + np.abs(s["b_weight"] * f["b"]),
        )
    },
    "sgd_step": sgd_ref,
    "adagrad_step": adagrad_ref,
    "rmsprop_step": rmsprop_ref,
    "adam_step": adam_ref,
    "nadam_step": nadam_ref,
    "adamax_step": adamax_ref,
    "radam_step": radam_ref,
    "lion_step": lion_ref,
}


# an expectation past float64's range (MSE of 1e200s), or past the dtype's: assert_matches_math and `overflows` skip it
@np.errstate(over="ignore", invalid="ignore")
def math_reference(call: Call, a: dict[str, Any]) -> Expected:
    """Expected outputs (float64) of ``call`` on the arrays ``a``, with their scales, by output name."""
    if call.kernel not in MATH_REFERENCES:
        raise ValueError(f"no math reference for kernel {call.kernel!r}: write one from its math line")
    dtype = next((v.dtype for v in a.values() if isinstance(v, np.ndarray) and v.dtype in FLOATS), F64)
    f = {
        name: v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v for name, v in a.items()
    }
    return MATH_REFERENCES[call.kernel](f, call.scalars, dtype)


def overflows(expected: dict[str, tuple[Any, Any]], dtype: np.dtype) -> bool:
    """Whether any expected output or its scale reaches the range where float32 (float64) may overflow."""
    with np.errstate(invalid="ignore"):
        return any(
            bool(np.any(np.abs(np.asarray(value, dtype=np.float64)) > OVERFLOW[dtype]))
            or bool(np.any(np.asarray(scale, dtype=np.float64) > OVERFLOW[dtype]))
            for value, scale in expected.values()
        )


def assert_matches_math(actual: Any, expected: Any, scale: Any, dtype: np.dtype, what: str) -> None:
    rtol = RTOL[dtype]
    if isinstance(expected, int):
        assert actual == expected, f"{what}: {actual} != {expected}"
        return
    actual64 = np.asarray(actual, dtype=np.float64)
    expected64 = np.asarray(expected, dtype=np.float64)
    bound = rtol * (np.abs(expected64) + np.asarray(scale, dtype=np.float64)) + np.finfo(dtype).tiny
    # Near the top of the range a finite float64 value may legitimately overflow in float32: not compared here
    # (the cross-backend checks still are).
    scale64 = np.broadcast_to(np.asarray(scale, dtype=np.float64), expected64.shape)
    with np.errstate(invalid="ignore"):
        overflow = (np.abs(expected64) > OVERFLOW[dtype]) | (scale64 > OVERFLOW[dtype])
    nan = np.isnan(expected64) | overflow
    np.testing.assert_array_equal(np.isnan(actual64) & ~overflow, nan & ~overflow, err_msg=f"{what}: NaN positions")
    with np.errstate(invalid="ignore", over="ignore"):
        error = np.abs(actual64 - expected64)
    with np.errstate(invalid="ignore"):
        bad = ~nan & ~((actual64 == expected64) | (error <= bound))
    limits = np.broadcast_to(bound, bad.shape)[bad][:5]
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.size} elements outside the bound; "
        f"actual {actual64[bad][:5]}, expected {expected64[bad][:5]}, bound {limits}"
    )


def math_array(draw: st.DrawFn, kernel: Kernel, array: Array, shape: tuple[int, ...], dims: dict[str, int],
               dtype: str, palette: str) -> ArraySpec:  # fmt: skip
    """A valid array of a math call with moderate values (a non-negative state's made non-negative later)."""
    spec = ArraySpec(shape, dtype, palette, draw(st.integers(0, 2**32 - 1)))
    if array.index_of:
        spec = replace(spec, dtype="int64", labels_of=dims[array.index_of])
    elif array.name in nonnegative_states(kernel.name):
        spec = replace(spec, palette="moderate")
    elif array.name == "out" and not array.written:  # a forward output read by a backward pass: remade from these
        spec = replace(spec, palette="normal")
    if not array.written:
        spec = replace(spec, readonly=draw(st.booleans()))
    if array.optional and draw(st.booleans()):
        spec = replace(spec, form="none")
    return spec


@st.composite
def math_calls(draw: st.DrawFn, kernel_name: str) -> Call:
    """Valid calls with moderate values (see the module docstring)."""
    kernel = KERNELS[kernel_name]
    # rows and classes of at least 1 (NumPy's reductions refuse empty rows), and whatever the table needs (the
    # dimensions of the arrays that must not be empty among them)
    nonempty = {symbol for array in kernel.arrays if array.name in kernel.nonempty for symbol in array.shape}
    at_least_one = {"B", "C", *kernel.min_size, *(array.index_of for array in kernel.arrays if array.index_of),
                    *(nonempty - {"*"})}  # fmt: skip
    dims = {symbol: draw(st.integers(1 if symbol in at_least_one else 0, 9)) for symbol in DIMENSIONS}
    star = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    palette = draw(st.sampled_from(["moderate", "ints", "normal"]))
    specs = {
        array.name: math_array(draw, kernel, array, shape_of(array.shape, dims, star), dims, dtype, palette)
        for array in kernel.arrays
    }
    scalar_specs = {spec.name: spec for spec in (*kernel.scalars, *kernel.hyper)}
    scalars = {name: draw(valid_scalars(spec)) for name, spec in scalar_specs.items()}
    if "eps" in scalars:
        scalars["eps"] = max(scalars["eps"], 1e-8)
    for array_name, scalar_name in kernel.given_when:
        given = specs[array_name].form != "none"
        scalars[scalar_name] = draw(nonzero_scalars(scalar_specs[scalar_name])) if given else 0.0
    if kernel_name == "rmsprop_step" and specs["grad_avg"].form != "none":
        # centred: start from a zero average with alpha in [0.5, 1) so that v - a**2 is well-conditioned
        specs["grad_avg"] = replace(specs["grad_avg"], palette="ints", seed=0)
        scalars["alpha"] = draw(st.floats(0.5, 0.999))
    return Call(kernel_name, specs, scalars)


def overwrite(array: np.ndarray, values: np.ndarray) -> None:
    """Write ``values`` into ``array`` even when it was made read-only, and make it read-only again then."""
    writeable = array.flags.writeable
    array.flags.writeable = True
    array[...] = values.astype(array.dtype)
    array.flags.writeable = writeable


def prepare_math_arrays(call: Call) -> dict[str, Any]:
    """The arrays of ``call``, made into a state the kernel can meet: non-negative states non-negative, a centred
    RMSProp's average zero, sample weights and positive weights non-negative, and a backward pass's forward output
    one its forward pass can make."""
    arrays = build_arrays(call.arrays)
    for name in nonnegative_states(call.kernel):
        if arrays[name] is not None:
            np.abs(arrays[name], out=arrays[name])
    if call.kernel == "rmsprop_step" and arrays["grad_avg"] is not None:
        arrays["grad_avg"][...] = 0
    for name in ("weights", "pos_weight"):  # >= 0, as the losses take them (the chaos check draws any sign)
        if arrays.get(name) is not None:
            overwrite(arrays[name], np.abs(arrays[name]))
    if call.kernel in ("dense_backward", "activation_backward"):  # the forward output of out (a dense z) or of x
        out, source = arrays["out"], arrays["out" if call.kernel == "dense_backward" else "x"]
        overwrite(out, act_ref(call.scalars["activation"], source.astype(np.float64), call.scalars["negative_slope"]))
    if call.kernel == "softmax_backward":
        e = np.exp(arrays["out"].astype(np.float64))
        overwrite(arrays["out"], e / e.sum(axis=1, keepdims=True))
    return arrays


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
@fuzz_settings(80)
@given(data=st.data())
def test_kernel_math(kernel_name: str, data: st.DataObject) -> None:
    """Valid calls with moderate values against formulas written from the guide and the table (float64)."""
    call = data.draw(math_calls(kernel_name))
    record(f"kernel_math[{kernel_name}]", call)
    inputs = [spec.name for spec in KERNELS[kernel_name].arrays if not spec.written]
    for name in BACKENDS:
        arrays = prepare_math_arrays(call)
        dtype = next(v.dtype for v in arrays.values() if isinstance(v, np.ndarray) and v.dtype in FLOATS)
        before = {key: (value.copy() if isinstance(value, np.ndarray) else None) for key, value in arrays.items()}
        expected = math_reference(call, before)
        with np.errstate(all="ignore"):
            result = invoke(name, call, arrays)
        for key in inputs:
            if before[key] is not None:  # (an optional input may be absent)
                assert before[key].tobytes() == arrays[key].tobytes(), f"{name}: input {key} was modified"
        for key, (value, scale) in expected.items():
            actual = result if key == "result" else arrays[key]
            assert_matches_math(actual, value, scale, dtype, f"{name} {kernel_name} {key}")


# ===================================================================================== optimizers: step()
OPTIMIZER_CLASSES = {cls.__name__: cls for cls in optim.OPTIMIZERS.values()}
NOT_TINY = st.one_of(st.just(0.0), st.floats(1e-6, 1.0))  # no subnormal-range scalars (FTZ: see the docstring)
WEIGHT_DECAYS = st.sampled_from([0.0, 0.01])
EPSILONS = st.sampled_from([1e-8, 1e-3])


def sgd_options(draw: st.DrawFn, scalar: Callable[[st.SearchStrategy], Any]) -> dict[str, Any]:
    options = {
        "momentum": scalar(st.sampled_from([0.0, 0.5, 0.9])),
        "dampening": scalar(st.sampled_from([0.0, 0.1])),
        "weight_decay": scalar(WEIGHT_DECAYS),
    }
    options["nesterov"] = draw(st.booleans()) and options["momentum"] not in (0.0,) and options["dampening"] == 0.0
    return options


def adagrad_options(draw: st.DrawFn, scalar: Callable[[st.SearchStrategy], Any]) -> dict[str, Any]:
    return {
        "eps": scalar(st.sampled_from([1e-10, 1e-8])),
        "weight_decay": scalar(WEIGHT_DECAYS),
        "initial_accumulator_value": scalar(st.sampled_from([0.0, 0.1])),
    }


def rmsprop_options(draw: st.DrawFn, scalar: Callable[[st.SearchStrategy], Any]) -> dict[str, Any]:
    return {
        "alpha": scalar(st.sampled_from([0.9, 0.99])),
        "eps": scalar(st.sampled_from([1e-8])),
        "momentum": scalar(st.sampled_from([0.0, 0.9])),
        "centered": draw(st.booleans()),
        "weight_decay": scalar(WEIGHT_DECAYS),
    }


def adam_family_options(draw: st.DrawFn, scalar: Callable[[st.SearchStrategy], Any], kind: str) -> dict[str, Any]:
    """The options of Adam, AdamW, NAdam, Adamax, RAdam and Lion: betas, and each one's own."""
    options: dict[str, Any] = {
        "betas": (scalar(st.sampled_from([0.9, 0.0])), scalar(st.sampled_from([0.999, 0.5]))),
        "weight_decay": scalar(WEIGHT_DECAYS),
    }
    if kind != "Lion":
        options["eps"] = scalar(EPSILONS)
    if kind in ("Adam", "AdamW"):
        options["amsgrad"] = draw(st.booleans())
    if kind == "NAdam":
        options["momentum_decay"] = scalar(st.sampled_from([4e-3, 0.0, 0.1]))
    if kind in ("NAdam", "RAdam"):
        options["decoupled_weight_decay"] = draw(st.booleans())
    return options


@st.composite
def optimizer_hyper(draw: st.DrawFn, kind: str, messy: bool) -> dict[str, Any]:
    def scalar(good: st.SearchStrategy) -> Any:
        return (
            draw(st.one_of(good, st.sampled_from(BAD_SCALARS + HUGE_SCALARS)))
            if messy and draw(st.integers(0, 4)) == 0
            else draw(good)
        )

    hyper: dict[str, Any] = {"lr": scalar(NOT_TINY), "decay": scalar(st.sampled_from([0.0, 0.1, 1e300]))}
    if kind == "SGD":
        hyper.update(sgd_options(draw, scalar))
    elif kind == "AdaGrad":
        hyper.update(adagrad_options(draw, scalar))
    elif kind == "RMSProp":
        hyper.update(rmsprop_options(draw, scalar))
    elif kind in ("Adam", "AdamW", "NAdam", "Adamax", "RAdam", "Lion"):
        hyper.update(adam_family_options(draw, scalar, kind))
    else:
        raise ValueError(f"no options drawn for optimizer {kind!r}: add them here and to step_scalars")
    if messy and draw(st.integers(0, 9)) == 0:
        key = draw(st.sampled_from(sorted(hyper)))
        hyper[key] = draw(st.sampled_from(["yes", None, (0.9,), [0.9, 0.9, 0.9], 1j]))
    return hyper


def nadam_scalars(hyper: dict[str, Any], step: int, lr: float, mu_product: float) -> dict[str, Any]:
    """NAdam's step sizes (its class docstring): ``mu_t = beta1 (1 - 0.5 * 0.96**(t momentum_decay))``,
    ``P_t = mu_1 ... mu_t``; ``grad_step = lr_t (1 - mu_t) / (1 - P_t)``,
    ``momentum_step = lr_t mu_{t+1} / (1 - P_t mu_{t+1})``."""
    beta1, decay = hyper["betas"][0], hyper["momentum_decay"]
    mu, mu_next = (beta1 * (1 - 0.5 * 0.96 ** (t * decay)) for t in (step, step + 1))
    product = mu_product * mu
    return {
        "grad_step": lr * (1 - mu) / (1 - product),
        "momentum_step": lr * mu_next / (1 - product * mu_next),
        "mu_product": product,
    }


def radam_scalars(beta2: float, step: int) -> dict[str, Any]:
    """RAdam's rectification (its class docstring): ``rho_inf = 2 / (1 - beta2) - 1``,
    ``rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)``; rectified when rho_t > 5, with
    ``r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))``."""
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
    rectified = rho > 5
    ratio = (rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho) if rectified else 0.0
    return {"rectified": rectified, "rectification": math.sqrt(ratio)}


def step_scalars(kind: str, hyper: dict[str, Any], step: int, state: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The kernel of optimizer ``kind`` and its scalars at step ``step`` (1 on the first), written from the
    optimizer classes' docstrings: ``lr_t = lr / (1 + decay (t - 1))``, bias corrections ``1 - beta**t``."""
    lr = hyper["lr"] / (1 + hyper["decay"] * (step - 1))
    common = {"lr": lr, "weight_decay": hyper["weight_decay"]}
    if kind == "SGD":
        options = ("momentum", "dampening", "nesterov")
        return "sgd_step", {**common, **{key: hyper[key] for key in options}, "first_step": step == 1}
    if kind == "AdaGrad":
        return "adagrad_step", {**common, "eps": hyper["eps"]}
    if kind == "RMSProp":
        return "rmsprop_step", {**common, **{key: hyper[key] for key in ("alpha", "eps", "momentum")}}
    beta1, beta2 = hyper["betas"]
    common.update(beta1=beta1, beta2=beta2)
    corrections = {"bias_correction1": 1 - beta1**step, "bias_correction2": 1 - beta2**step}
    if kind in ("Adam", "AdamW"):
        return "adam_step", {**common, **corrections, "eps": hyper["eps"], "decoupled_weight_decay": kind == "AdamW"}
    if kind == "NAdam":
        mu_product = float(state["mu_product"])
        scalars = {**common, **nadam_scalars(hyper, step, lr, mu_product), "eps": hyper["eps"]}
        return "nadam_step", {**scalars, "bias_correction2": corrections["bias_correction2"],
                              "decoupled_weight_decay": hyper["decoupled_weight_decay"]}  # fmt: skip
    if kind == "Adamax":
        return "adamax_step", {**common, "eps": hyper["eps"], "bias_correction1": corrections["bias_correction1"]}
    if kind == "RAdam":
        return "radam_step", {**common, **corrections, **radam_scalars(beta2, step), "eps": hyper["eps"],
                              "decoupled_weight_decay": hyper["decoupled_weight_decay"]}  # fmt: skip
    if kind == "Lion":
        return "lion_step", common
    raise ValueError(f"no reference for optimizer {kind!r}: add its kernel scalars here")


def reference_kernel_step(
    kind: str, hyper: dict[str, Any], step: int, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray]
) -> dict[str, tuple[Any, Any]]:
    """One step of optimizer ``kind`` via the float64 kernel formulas above (and NAdam's running product)."""
    kernel_name, scalars = step_scalars(kind, hyper, step, state)
    f = {"param": param.astype(np.float64), "grad": grad.astype(np.float64)}
    f.update({name: buffer.astype(np.float64) for name, buffer in state.items()})
    for spec in KERNELS[kernel_name].arrays[2:]:
        f.setdefault(spec.name, None)
    with np.errstate(over="ignore", invalid="ignore"):  # past the dtype's range: `overflows` skips it
        expected = MATH_REFERENCES[kernel_name](f, scalars, param.dtype)
    if "mu_product" in scalars:
        expected["mu_product"] = (scalars["mu_product"], abs(scalars["mu_product"]))
    return expected


@st.composite
def optimizer_recipes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(OPTIMIZER_CLASSES)))
    messy = draw(st.booleans())
    hyper = draw(optimizer_hyper(kind, messy))
    n_params = draw(st.integers(1, 3))
    params, grads = {}, {}
    for index in range(n_params):
        shape = tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
        dtype = draw(st.sampled_from(["float32", "float64"]))
        spec = ArraySpec(shape, dtype, "moderate", draw(st.integers(0, 2**32 - 1)))
        if messy and draw(st.integers(0, 5)) == 0:
            spec = replace(
                spec,
                layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(ANY_DTYPES)),
                readonly=draw(st.booleans()),
            )
        if messy and index and draw(st.integers(0, 5)) == 0:
            spec = replace(spec, alias=("overlap", f"p{index - 1}"))
        params[f"p{index}"] = spec
        gspec = replace(
            spec,
            seed=draw(st.integers(0, 2**32 - 1)),
            alias=None,
            readonly=draw(st.booleans()),
            palette=draw(st.sampled_from(["moderate", "normal", "specials" if messy else "ints"])),
        )
        if messy and draw(st.integers(0, 4)) == 0:
            gspec = replace(
                gspec,
                layout=draw(st.sampled_from(LAYOUTS)),
                dtype=draw(st.sampled_from(ANY_DTYPES)),
                shape=draw(st.sampled_from([shape, (*shape, 1), (2,)])),
                form=draw(st.sampled_from(["array", "array", "list", "none"])),
            )
        grads[f"g{index}"] = gspec
    grad_alias = draw(st.sampled_from(["none"] * 6 + ["param", "state"])) if messy else "none"
    count = draw(st.sampled_from([n_params] * 5 + [n_params - 1, n_params + 1])) if messy else n_params
    return {
        "kind": kind,
        "hyper": hyper,
        "params": params,
        "grads": grads,
        "grad_alias": grad_alias,
        "count": count,
        "steps": draw(st.sampled_from([1, 2, 3, 7])),  # RAdam rectifies from step 6 (beta2 = 0.999)
        "allow_nonfinite": draw(st.booleans()),
    }


def holds_nonfinite(grad: Any) -> bool:
    """Whether ``grad`` converts to floats of which one is NaN or infinite (what ``step`` refuses by default)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", np.exceptions.ComplexWarning)  # complex grads: their real parts
            values = np.asarray(grad, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return not np.isfinite(values).all()


def run_optimizer(recipe: dict[str, Any], backend_name: str) -> tuple[Any, list[Any]]:
    """Build the optimizer and run ``steps`` steps; returns (optimizer or exception, per-step records)."""
    params = build_arrays(recipe["params"])
    param_list = list(params.values())
    try:
        with fastopt.use_backend(backend_name):
            optimizer = OPTIMIZER_CLASSES[recipe["kind"]](param_list, **recipe["hyper"])
    except ALLOWED as exc:
        return exc, []
    records = []
    for _ in range(recipe["steps"]):
        grads = list(build_arrays(recipe["grads"]).values())[: recipe["count"]]
        while len(grads) < recipe["count"]:
            grads.append(np.zeros(1))
        if recipe["grad_alias"] == "param" and grads:
            grads[0] = param_list[0]
        elif recipe["grad_alias"] == "state" and grads and optimizer.state[0]:
            grads[0] = next(iter(optimizer.state[0].values()))
        before_params = [p.copy() for p in param_list]
        before_state = [{k: v.copy() for k, v in s.items()} for s in optimizer.state]
        before_count = optimizer.step_count
        grad_bytes = [g.tobytes() if isinstance(g, np.ndarray) else None for g in grads]
        try:
            with fastopt.use_backend(backend_name), np.errstate(all="ignore"):
                gradients = grads if len(grads) != 1 or recipe["count"] != 1 else grads[0]
                optimizer.step(gradients, allow_nonfinite=recipe["allow_nonfinite"])
        except (*ALLOWED, FloatingPointError) as exc:
            if isinstance(exc, FloatingPointError):  # only for NaN/inf gradients, and only when not allowed
                assert not recipe["allow_nonfinite"] and any(holds_nonfinite(g) for g in grads), exc
            # refused: nothing may have changed
            assert optimizer.step_count == before_count, "step_count advanced on a refused step"
            for old, new in zip(before_params, param_list):
                assert old.tobytes() == new.tobytes(), "a parameter changed on a refused step"
            for old, new in zip(before_state, optimizer.state):
                for key in old:
                    assert old[key].tobytes() == new[key].tobytes(), f"state {key} changed on a refused step"
            records.append(("refused", type(exc).__name__))
            break
        for grad, old in zip(grads, grad_bytes):
            if old is not None and grad is not param_list[0]:
                assert grad.tobytes() == old, "step modified a gradient"
        records.append(
            (
                "ok",
                before_params,
                before_state,
                [g.copy() for g in grads],
                [p.copy() for p in param_list],
                [{k: v.copy() for k, v in s.items()} for s in optimizer.state],
            )
        )
    return optimizer, records


def fits(hyper: dict[str, Any], dtype: np.dtype) -> bool:
    """Whether every hyperparameter is representable in ``dtype``: the kernels (like NumPy with a Python float
    and a float32 array) round scalars to the array's precision, so lr=1e300 becomes inf for float32 and
    ``inf * 0`` makes NaN where float64 math gives a number. Both backends agree (checked below)."""
    limit = float(np.finfo(dtype).max)
    values = [v for v in hyper.values() if isinstance(v, float)] + [v for v in hyper.get("betas", ()) if v]
    return all(abs(v) <= limit for v in values)


@fuzz_settings(300)
@given(recipe=optimizer_recipes())
def test_optimizer_step(recipe: dict[str, Any]) -> None:
    """``optim.*(params, ...)`` and ``.step(grads)``: refused cleanly, or correct on every backend."""
    record("optimizer_step", recipe)
    outcomes = {name: run_optimizer(recipe, name) for name in BACKENDS}
    first = next(iter(outcomes.values()))
    event("construction refused" if isinstance(first[0], Exception) else f"steps {[r[0] for r in first[1]]}")
    kinds = {name: isinstance(result, Exception) for name, (result, _) in outcomes.items()}
    assert len(set(kinds.values())) == 1, f"backends disagree on construction: {outcomes}"
    statuses = {name: [r[0] for r in records] for name, (_, records) in outcomes.items()}
    assert len({tuple(s) for s in statuses.values()}) == 1, f"backends disagree on refusals: {statuses}"
    reference = None
    for name, (optimizer, records) in outcomes.items():
        if isinstance(optimizer, Exception):
            continue
        hyper = optimizer.hyperparameters
        for step, entry in enumerate(records, start=1):
            if entry[0] != "ok":
                continue
            _, params, states, grads, new_params, new_states = entry
            for index, (param, state, grad) in enumerate(zip(params, states, grads)):
                if not np.isfinite(grad).all() or not fits(hyper, param.dtype):
                    continue
                expected = reference_kernel_step(recipe["kind"], hyper, step, param, np.asarray(grad), state)
                if overflows(expected, param.dtype):
                    continue  # float32 range exceeded: only the cross-backend comparison below applies
                for key, (value, scale) in expected.items():
                    actual = new_params[index] if key == "param" else new_states[index][key]
                    assert_matches_math(actual, value, scale, param.dtype, f"{name} {recipe['kind']} step {step} {key}")
        if reference is None:
            reference = records
        else:
            for mine, theirs in zip(records, reference):
                if mine[0] == "ok":
                    for new, ref in zip(mine[4], theirs[4]):
                        assert_same_result(new, ref, new.dtype, sums=False, what=f"{name} parameters vs reference")


# ===================================================================================== losses
LOSS_KINDS = {  # each loss with the options drawn for it
    "CrossEntropy": ("label_smoothing", [0.0, 0.1]),
    "MSE": (None, [None]),
    "Huber": ("delta", [1.0, 0.5]),
    "MAE": (None, [None]),
    "BinaryCrossEntropy": ("pos_weight", [None, 2.0]),
}


def make_loss_object(kind: str, option: Any) -> losses.Loss:
    name, _ = LOSS_KINDS[kind]
    return getattr(losses, kind)(**({} if name is None else {name: option}))


@st.composite
def loss_recipes(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(sorted(LOSS_KINDS)))
    rows, cols = draw(st.integers(0, 6)), draw(st.integers(0, 5))
    pred = ArraySpec(
        (rows, cols),
        draw(st.sampled_from(["float32", "float64"])),
        draw(st.sampled_from(PALETTES)),
        draw(st.integers(0, 2**32 - 1)),
    )
    if draw(st.integers(0, 3)) == 0:
        pred = replace(
            pred,
            layout=draw(st.sampled_from(LAYOUTS)),
            dtype=draw(st.sampled_from(ANY_DTYPES)),
            form=draw(st.sampled_from(["array", "list"])),
            shape=draw(st.sampled_from([(rows, cols), (rows,), (rows, cols, 1)])),
        )
    target_kind = draw(st.sampled_from(["labels", "onehot", "values", "floatlabels", "probabilities", "bad"]))
    return {
        "kind": kind,
        "option": draw(st.sampled_from(LOSS_KINDS[kind][1])),
        "pred": pred,
        "target": target_kind,
        "seed": draw(st.integers(0, 2**32 - 1)),
        "target_rows": draw(st.sampled_from([rows] * 4 + [rows + 1])),
        "sample_weight": draw(st.sampled_from([None, None, "valid", "zeros", "negative", "nan", "short", "text"])),
        "backend": draw(st.sampled_from([*BACKENDS, None])),
    }


def make_target(recipe: dict[str, Any], cols: int) -> Any:
    rng = np.random.default_rng(recipe["seed"])
    rows = recipe["target_rows"]
    labels = rng.integers(0, max(cols, 1), rows)
    kind = recipe["target"]
    if kind == "labels":
        return labels
    if kind == "onehot":
        return np.eye(max(cols, 1))[labels]
    if kind == "values":
        return rng.standard_normal((rows, cols))
    if kind == "floatlabels":
        return labels.astype(np.float64) + rng.choice([0.0, 0.5], rows)
    if kind == "probabilities":
        return rng.random((rows, cols))
    return rng.choice([np.array(["a"] * rows), np.full(rows, np.nan), labels - 1, labels.astype(complex)])


def make_sample_weight(kind: str | None, rows: int, seed: int) -> Any:
    """None, valid weights (> 0, some 0), all zeros, or weights to refuse (negative, NaN, short, not numbers)."""
    weights = np.random.default_rng(seed).random(rows) * 3
    weights[::3] = 0.0
    weights[1::3] += 0.5  # never all 0 when there are two rows or more
    bad = {"zeros": np.zeros(rows), "negative": weights - 1, "nan": np.full(rows, np.nan), "short": weights[:-1],
           "text": np.array(["1"] * rows)}  # fmt: skip
    return {None: None, "valid": weights}.get(kind, bad.get(kind))  # type: ignore[arg-type]


def expected_loss(recipe: dict[str, Any], p: np.ndarray, target: Any, weights: Any, dtype: np.dtype) -> Expected:
    """The math reference of an accepted ``losses.<kind>()(p, target, sample_weight=weights)``."""
    t = np.asarray(target)
    option = recipe["option"]
    f: dict[str, Any] = {"weights": None if weights is None else np.asarray(weights).astype(dtype).astype(np.float64)}
    if recipe["kind"] == "CrossEntropy":
        labels = t.argmax(axis=1) if t.ndim == 2 else t.astype(np.int64)
        f.update(logits=p, labels=labels, grad_logits=None)
        return math_reference(Call("softmax_cross_entropy", {}, {"label_smoothing": option}), f)
    if t.ndim == 1 and t.dtype.kind in "iu" and p.shape[1] > 1 and recipe["kind"] != "BinaryCrossEntropy":
        t = np.eye(p.shape[1])[t]
    t = t.astype(dtype).astype(np.float64).reshape(p.shape)  # targets are converted to the dtype first
    if recipe["kind"] == "BinaryCrossEntropy":
        pos_weight = None if option is None else np.full(p.shape[1], option)
        f.update(logits=p, targets=t, grad_logits=None, pos_weight=pos_weight)
        return math_reference(Call("binary_cross_entropy", {}, {}), f)
    f.update(pred=p, target=t, grad_pred=None)
    kernel = {"MSE": "mse", "Huber": "huber", "MAE": "mae"}[recipe["kind"]]
    return math_reference(Call(kernel, {}, {"delta": option}), f)


@fuzz_settings(200)
@given(recipe=loss_recipes())
def test_loss_call(recipe: dict[str, Any]) -> None:
    """``losses.<Loss>(options)(y_pred, y_true, sample_weight=...)`` of every loss: a correct float or a refusal
    (weights that are negative, NaN, of the wrong length or not numbers are always refused)."""
    record("loss_call", recipe)
    pred = build_array(recipe["pred"], {})
    shape = np.shape(pred)
    target = make_target(recipe, shape[1] if len(shape) == 2 else 1)
    weights = make_sample_weight(recipe["sample_weight"], recipe["target_rows"], recipe["seed"])
    loss = make_loss_object(recipe["kind"], recipe["option"])
    before = snapshot({"pred": pred, "target": target}) if isinstance(pred, np.ndarray) else {}
    try:
        with np.errstate(all="ignore"):
            value = loss(pred, target, backend=recipe["backend"], sample_weight=weights)
    except ALLOWED:
        event("refused")
        return
    event("accepted")
    assert recipe["sample_weight"] not in ("negative", "nan", "short", "text"), "bad weights were accepted"
    assert_unchanged(before, {"pred": pred, "target": target})
    assert isinstance(value, float)
    p = np.asarray(pred, dtype=np.float64)
    dtype = np.asarray(pred).dtype
    assert dtype in FLOATS and p.ndim == 2 and p.shape[0] >= 1
    if not np.isfinite(p).all():
        return
    assert_matches_math(value, *expected_loss(recipe, p, target, weights, dtype)["result"], dtype, recipe["kind"])


# ===================================================================================== Sequential
ACTIVATION_LAYERS = {
    "relu": ReLU,
    "sigmoid": Sigmoid,
    "tanh": Tanh,
    "leaky_relu": lambda: LeakyReLU(0.1),
    "negative_leaky_relu": lambda: LeakyReLU(-0.2),
    "gelu": GELU,
    "gelu_tanh": lambda: GELU(approximate="tanh"),
    "dropout": lambda: Dropout(0.3),
}


@st.composite
def model_recipes(draw: st.DrawFn) -> dict[str, Any]:
    n_in = draw(st.integers(1, 5))
    widths = [n_in, *draw(st.lists(st.integers(1, 5), min_size=1, max_size=3))]
    layers = []
    for index in range(1, len(widths)):
        layers.append(("Dense", widths[index - 1], widths[index]))
        activation = draw(st.sampled_from(["none", *ACTIVATION_LAYERS]))
        if activation != "none":
            layers.append((activation,))
        if draw(st.integers(0, 5)) == 0:
            layers.append(("dropout",))
    if draw(st.integers(0, 4)) == 0:
        layers.append(("softmax",))
    n_out = widths[-1]
    messy = draw(st.booleans())
    rows = draw(st.integers(1, 9))
    x = ArraySpec(
        (rows, n_in), "float64", draw(st.sampled_from(["moderate", "normal", "ints"])), draw(st.integers(0, 2**32 - 1))
    )
    if messy:
        x = replace(
            x,
            layout=draw(st.sampled_from(LAYOUTS)),
            readonly=draw(st.booleans()),
            dtype=draw(st.sampled_from(ANY_DTYPES)),
            palette=draw(st.sampled_from(PALETTES)),
            form=draw(st.sampled_from(["array"] * 6 + ["list", "none", "scalar"])),
            shape=draw(st.sampled_from([(rows, n_in)] * 4 + [(0, n_in), (rows, n_in + 1), (rows,), (rows, n_in, 1)])),
        )
    # (MAE is left out: its gradient's sign jumps where an output meets its target, so that an ulp between the
    # backends may flip it, and the fitted parameters would be compared against a discontinuity)
    loss = draw(
        st.sampled_from(["CrossEntropy", "MSE", "Huber", "BinaryCrossEntropy", None] + (["bad"] if messy else []))
    )
    if loss == "CrossEntropy" and n_out < 2:
        loss = "MSE" if not messy else loss
    return {
        "layers": layers,
        "dtype": draw(st.sampled_from(["float32", "float64"])),
        "seed": draw(st.integers(0, 99)),
        "x": x,
        "y": draw(
            st.sampled_from(["labels", "onehot", "values", "floatlabels", "probabilities"] + (["bad"] if messy else []))
        ),
        "sample_weight": draw(st.sampled_from([None, "valid"] + (["negative", "short"] if messy else []))),
        "y_seed": draw(st.integers(0, 2**32 - 1)),
        "y_rows": rows if not messy else draw(st.sampled_from([rows, rows, rows + 1])),
        "loss": loss,
        "optimizer": draw(st.sampled_from([*sorted(OPTIMIZER_CLASSES), None])),
        "lr": draw(st.sampled_from([0.01, 0.1])),
        "epochs": draw(st.sampled_from([1, 2] + ([0, -1, True, 2.0] if messy else []))),
        "batch_size": draw(st.sampled_from([1, 3, 32] + ([0, -2, 10**30, 2.5, None] if messy else []))),
        "shuffle": draw(st.booleans()),
        "fit_seed": draw(st.integers(0, 99)),
    }


def build_model(recipe: dict[str, Any], backend: str) -> fastopt.Sequential:
    layers = []
    for layer in recipe["layers"]:
        if layer[0] == "Dense":
            layers.append(Dense(layer[1], layer[2]))
        elif layer[0] == "softmax":
            layers.append(Softmax())
        else:
            layers.append(ACTIVATION_LAYERS[layer[0]]())
    return fastopt.Sequential(layers, dtype=recipe["dtype"], seed=recipe["seed"], backend=backend)


def reference_forward(model: fastopt.Sequential, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The model's output for x in float64, with a magnitude bound on its rounding error."""
    h, hs = x.astype(np.float64), np.abs(x.astype(np.float64))
    for layer in model.layers:
        if isinstance(layer, Dense):
            w, b = layer.weight.astype(np.float64), layer.bias.astype(np.float64)
            h, hs = h @ w + b, hs @ np.abs(w) + np.abs(b)
        elif isinstance(layer, Softmax):
            e = np.exp(h - h.max(axis=1, keepdims=True))
            h = e / e.sum(axis=1, keepdims=True)
            hs = h * 2 * hs.max(axis=1, keepdims=True) + h
        elif isinstance(layer, Activation):
            h = act_ref(layer.kernel, h, layer.negative_slope)
            hs = hs * (1 + abs(layer.negative_slope)) + np.abs(h)
        # Dropout: the identity outside fit
    return h, hs


def make_y(recipe: dict[str, Any], n_out: int) -> Any:
    return make_target({"seed": recipe["y_seed"], "target_rows": recipe["y_rows"], "target": recipe["y"]}, n_out)


def make_loss(name: Any) -> Any:
    return None if name is None else make_loss_object(name, LOSS_KINDS[name][1][-1]) if name in LOSS_KINDS else name


@pytest.mark.filterwarnings("ignore:the model's last layer")  # a Softmax (Sigmoid) before CrossEntropy (BCE): warned
@fuzz_settings(120)
@given(recipe=model_recipes())
def test_sequential(recipe: dict[str, Any]) -> None:
    """``predict``, ``evaluate`` and ``fit``: correct (and equal across backends) or refused cleanly."""
    record("sequential", recipe)
    fitted = {}
    for name in BACKENDS:
        model = build_model(recipe, name)
        x = build_array(recipe["x"], {})
        y = make_y(recipe, model.out_features)
        before = snapshot({"x": x, "y": y})
        params_before = model.parameters.copy()
        # predict
        try:
            with np.errstate(all="ignore"):
                output = model.predict(x, batch_size=4)
        except ALLOWED:
            output = None
        event(f"predict {'refused' if output is None else 'accepted'}")
        assert model.parameters.tobytes() == params_before.tobytes(), "predict changed the parameters"
        if output is not None:
            xs = np.asarray(x, dtype=np.float64)
            assert output.shape == (xs.shape[0], model.out_features) and output.dtype == model.dtype
            expected, scale = reference_forward(model, xs.astype(model.dtype))
            assert_matches_math(output, expected, scale, model.dtype, f"{name} predict")
        # evaluate
        loss = make_loss(recipe["loss"])
        try:
            with np.errstate(all="ignore"):
                evaluation = model.evaluate(x, y, loss=loss, batch_size=3)
        except ALLOWED:
            evaluation = None
        if evaluation is not None:
            assert output is not None, "evaluate accepted inputs that predict refused"
            assert math.isfinite(evaluation["loss"]) or not np.isfinite(output).all()
        # fit
        optimizer = None
        if recipe["optimizer"] is not None:
            optimizer = OPTIMIZER_CLASSES[recipe["optimizer"]](lr=recipe["lr"])
        try:
            with np.errstate(all="ignore"):
                history = model.fit(
                    x,
                    y,
                    loss=loss,
                    optimizer=optimizer,
                    epochs=recipe["epochs"],
                    batch_size=recipe["batch_size"],
                    shuffle=recipe["shuffle"],
                    seed=recipe["fit_seed"],
                    sample_weight=make_sample_weight(recipe["sample_weight"], recipe["y_rows"], recipe["y_seed"]),
                )
        except (*ALLOWED, FloatingPointError) as exc:
            if not isinstance(exc, FloatingPointError):
                assert model.parameters.tobytes() == params_before.tobytes(), "a refused fit changed the parameters"
            history = None
        assert_unchanged(before, {"x": x, "y": y})
        event(f"fit {'refused' if history is None else 'accepted'}")
        if history is not None:
            assert len(history.history["loss"]) == recipe["epochs"]
            fitted[name] = model.parameters.copy()
    if len(fitted) == 2:
        (first, a), (second, b) = fitted.items()
        dtype = a.dtype
        # several steps may amplify an ulp (expf vs NumPy's exp); allow 100x the kernel tolerance, normwise
        scale = float(np.max(np.abs(b))) if b.size else 0.0
        np.testing.assert_allclose(
            a, b, rtol=100 * RTOL[dtype], atol=100 * RTOL[dtype] * scale, err_msg=f"fit: {first} and {second} disagree"
        )


# ===================================================================================== files
_TMP = tempfile.TemporaryDirectory(prefix="fastopt-fuzz-")
TMP = Path(_TMP.name)


def _valid_model_file(dtype: str) -> tuple[bytes, np.ndarray]:
    path = TMP / f"valid-{dtype}.npz"
    if not path.exists():
        model = fastopt.Sequential([Dense(3, 4), ReLU(), Dense(4, 2)], dtype=dtype, seed=1, backend="numpy")
        model.save(path)
    model = fastopt.load(path, backend="numpy")
    return path.read_bytes(), model.parameters.copy()


MUTATIONS = st.lists(
    st.tuples(
        st.sampled_from(["flip", "set", "truncate", "insert", "delete", "duplicate", "zero", "zipflag", "zipmethod"]),
        st.integers(0, 2**31),
        st.integers(0, 255),
        st.integers(1, 64),
    ),
    min_size=1,
    max_size=4,
)


def mutate(payload: bytes, mutations: list[tuple[str, int, int, int]]) -> bytes:
    data = bytearray(payload)
    for kind, position, byte, length in mutations:
        if not data:
            break
        at = position % len(data)
        if kind == "flip":
            data[at] ^= 1 << (byte % 8)
        elif kind == "set":
            data[at] = byte
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = bytes([byte]) * length
        elif kind == "delete":
            del data[at : at + length]
        elif kind == "duplicate":
            data[at:at] = data[at : at + length]
        elif kind in ("zipflag", "zipmethod"):
            # aim at the ZIP headers: general-purpose flags (offset 6 local / 8 central) or the compression
            # method (8 local / 10 central) of one entry
            starts = [m for m in range(len(data) - 12) if data[m : m + 4] in (b"PK\x03\x04", b"PK\x01\x02")]
            if starts:
                start = starts[position % len(starts)]
                central = data[start + 2] == 1
                if kind == "zipflag":
                    bits = [
                        0,
                        1,
                        2,
                        3,
                        5,
                        6,
                        11,
                    ]  # 0 encrypted, 5 patched data, 6 strong encryption: zipfile refuses them
                    data[start + (8 if central else 6)] ^= 1 << (bits[byte % len(bits)] % 8)
                else:
                    methods = [0, 1, 8, 9, 12, 14, 99]  # stored, shrunk, deflate, deflate64, bzip2, lzma, unknown
                    data[start + (10 if central else 8)] = methods[byte % len(methods)]
        else:
            data[at : at + length] = bytes(min(length, len(data) - at))
    return bytes(data)


HEADER_VALUES = [0, -1, 1, 2, 5, 10**6, 10**12, "3", 3.0, None, True, [3], {"a": 1}]


@st.composite
def header_edits(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Edits of the JSON model description (not covered by the file's checksum): (path, value) pairs."""
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        field_name = draw(st.sampled_from(["in_features", "out_features", "init", "type", "dtype", "seed", "layers"]))
        edits.append((field_name, draw(st.integers(0, 2)), draw(st.sampled_from([*HEADER_VALUES, "ReLU", "float16"]))))
    return edits


def edit_header(path: Path, edits: list[tuple[Any, ...]]) -> None:
    import json

    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    header = json.loads(str(arrays.pop("header")))
    model = header["model"]
    for field_name, index, value in edits:
        if field_name in ("dtype", "seed"):
            model[field_name] = value
        elif field_name == "layers":
            layers = model.get("layers")
            model["layers"] = layers[:index] if index and isinstance(layers, list) else value
        elif isinstance(model.get("layers"), list) and model["layers"]:
            layer = model["layers"][index % len(model["layers"])]
            if isinstance(layer, dict):
                layer[field_name] = value
    with open(path, "wb") as handle:
        np.savez(handle, header=np.array(json.dumps(header)), **arrays)


@fuzz_settings(150)
@given(dtype=st.sampled_from(["float32", "float64"]), edits=header_edits())
def test_load_edited_header(dtype: str, edits: list[tuple[Any, ...]]) -> None:
    """``fastopt.load`` on files whose JSON model description was edited (it is outside the checksum): the
    model with the saved parameters, or a ValueError/TypeError."""
    record("load_edited_header", edits)
    _, parameters = _valid_model_file(dtype)
    path = TMP / "edited.npz"
    path.write_bytes((TMP / f"valid-{dtype}.npz").read_bytes())
    edit_header(path, edits)
    try:
        model = fastopt.load(path, backend=BACKENDS[0])
    except ALLOWED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("loaded")
    assert model.parameters.tobytes() == parameters.tobytes()


@fuzz_settings(300)
@given(
    source=st.sampled_from(["float32", "float64", "random", "zip-prefix"]),
    mutations=MUTATIONS,
    payload=st.binary(max_size=400),
)
def test_load_corrupt_files(source: str, mutations: list, payload: bytes) -> None:
    """``fastopt.load`` on random bytes and mutated valid files: the intact model or a ValueError/TypeError."""
    if source in ("float32", "float64"):
        valid, parameters = _valid_model_file(source)
        data = mutate(valid, mutations)
    else:
        parameters = None
        data = (b"PK\x03\x04" if source == "zip-prefix" else b"") + payload
    record("load_corrupt_files", (source, mutations, data[:64]))
    path = TMP / "fuzzed.npz"
    path.write_bytes(data)
    try:
        model = fastopt.load(path, backend=BACKENDS[0])
    except ALLOWED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("loaded")
    assert parameters is not None, "random bytes loaded as a model"
    assert model.parameters.tobytes() == parameters.tobytes(), "a corrupted file loaded with different parameters"


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


IDX_SAMPLES = {
    "images": _idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 2, 2), 0x08),
    "labels": _idx_bytes(np.arange(5, dtype=np.uint8), 0x08),
    "float32": _idx_bytes(np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), 0x0D),
    "int16": _idx_bytes(np.arange(-3, 3, dtype=np.int16), 0x0B),
}


@fuzz_settings(300)
@given(
    source=st.sampled_from([*IDX_SAMPLES, "random"]),
    compress=st.booleans(),
    mutate_after=st.booleans(),
    mutations=MUTATIONS,
    payload=st.binary(max_size=200),
)
def test_read_idx_corrupt(source: str, compress: bool, mutate_after: bool, mutations: list, payload: bytes) -> None:
    """``datasets.read_idx`` on random and mutated (optionally gzipped) bytes: a consistent array or a refusal."""
    raw = IDX_SAMPLES.get(source, payload)
    raw = raw if mutate_after and compress else mutate(raw, mutations) if source != "random" else raw
    data = gzip.compress(raw, mtime=0) if compress else raw
    if mutate_after and compress:
        data = mutate(data, mutations)
    record("read_idx_corrupt", (source, compress, mutate_after, mutations, data[:64]))
    path = TMP / "fuzzed.idx"
    path.write_bytes(data)
    try:
        array = datasets.read_idx(path)
    except ALLOWED as exc:
        event(f"refused: {type(exc).__name__}")
        return
    event("read")
    assert isinstance(array, np.ndarray) and array.dtype.isnative
    content = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    assert 4 + 4 * array.ndim + array.nbytes == len(content)
    assert tuple(int.from_bytes(content[4 + 4 * i : 8 + 4 * i], "big") for i in range(array.ndim)) == array.shape


# ===================================================================================== regressions: bugs found here
def test_regression_huge_int_scalar() -> None:
    """Found by this fuzzing, fixed in 7115f6d. Was:

    A Python int too large for a float (``lr=10**400``) raises OverflowError from ``check_scalar``
    (fastopt/_checks.py, ``number = float(value)``) instead of ValueError; the same reaches every optimizer
    constructor and every checked optimizer kernel entry point."""
    param = np.zeros(3)
    for name in BACKENDS:
        with pytest.raises(ValueError):
            resolve_backend(name).sgd_step(
                param,
                np.ones(3),
                None,
                lr=10**400,
                momentum=0,
                dampening=0,
                nesterov=False,
                weight_decay=0,
                first_step=True,
            )
    with pytest.raises(ValueError):
        optim.Adam([np.zeros(3)], lr=10**400)


def test_regression_adamw_infinite_parameter() -> None:
    """Found by this fuzzing, fixed in 7115f6d. Was:

    AdamW (decoupled weight decay) on the cython backend turns an infinite parameter into NaN and poisons
    its moments, where the reference keeps ``p = inf`` and moments from the gradient alone: the kernel adds
    ``0 * p`` to the gradient (fastopt/_kernels/_optim.pyx, ``_adam``: ``gi = g[i] + wd * pi`` with wd = 0)."""
    results = {}
    for name in BACKENDS:
        for dtype in FLOATS:
            p = np.array([np.inf, 1.0], dtype)
            m, v = np.zeros(2, dtype), np.zeros(2, dtype)
            resolve_backend(name).adam_step(
                p,
                np.ones(2, dtype),
                m,
                v,
                None,
                lr=1e-3,
                beta1=0.9,
                beta2=0.999,
                eps=1e-8,
                weight_decay=0.01,
                decoupled_weight_decay=True,
                bias_correction1=0.1,
                bias_correction2=0.001,
            )
            results[name, dtype] = (p, m, v)
    for (name, dtype), (p, m, v) in results.items():
        assert p[0] == np.inf, f"{name} {dtype}: parameter {p[0]} (reference: inf)"
        assert np.isfinite(m).all() and np.isfinite(v).all(), f"{name} {dtype}: moments {m}, {v}"


@pytest.mark.parametrize("kind", sorted(OPTIMIZER_CLASSES))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_regression_zero_dim_parameter(backend_name: str, kind: str) -> None:
    """Found by this fuzzing, fixed in 7115f6d. Was:

    A 0-d parameter is accepted by ``bind``, but ``Optimizer.step`` turns its 0-d gradient into shape (1,)
    (fastopt/optim/optimizer.py, ``checked.append(np.ascontiguousarray(grad))``: ascontiguousarray returns
    ndim >= 1). The NumPy backend's SGD/AdaGrad/RMSProp then raise ValueError from inside the kernel after
    ``apply`` has advanced ``step_count``: a refused step that changed the optimizer, and backends that
    disagree (the cython backend ravels and succeeds)."""
    param = np.array(1.0)
    with fastopt.use_backend(backend_name):
        optimizer = OPTIMIZER_CLASSES[kind]([param], lr=0.1)
        try:
            optimizer.step([np.array(0.5)])
        except ALLOWED:
            assert optimizer.step_count == 0, "a refused step advanced step_count"
            assert param == 1.0
            raise
    assert optimizer.step_count == 1 and param < 1.0


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_regression_amsgrad_nan_max(backend_name: str) -> None:
    """Found by this fuzzing, fixed in 7115f6d. Was:

    AMSGrad's running maximum: the reference's ``np.maximum(max_exp_avg_sq, exp_avg_sq)`` propagates NaN
    (as PyTorch's ``torch.maximum``); the cython kernel's ``if vi > vm: vm = vi`` (fastopt/_kernels/_optim.pyx,
    ``_adam``) drops a NaN ``v`` and keeps the old maximum, so the state differs from the reference, and so
    does the parameter, which the reference makes NaN and the kernel updates with the stale maximum."""
    v = np.array([np.nan, 1.0])
    vmax = np.array([1.0, np.nan])
    param = np.zeros(2)
    resolve_backend(backend_name).adam_step(
        param,
        np.zeros(2),
        np.zeros(2),
        v,
        vmax,
        lr=0.0,
        beta1=0.0,
        beta2=1e-9,
        eps=0.0,
        weight_decay=0.0,
        decoupled_weight_decay=False,
        bias_correction1=1.0,
        bias_correction2=1.0,
    )
    assert np.isnan(vmax).all(), f"max_exp_avg_sq = {vmax}, reference [nan, nan]"
    assert np.isnan(param).all(), f"param = {param}, reference [nan, nan]"


@pytest.mark.parametrize(
    "mutation",
    ["encrypted-flag", "strong-encryption-flag", "patched-data-flag", "unknown-compression", "huge-architecture"],
)
def test_regression_load_refuses_corrupt_files(mutation: str) -> None:
    """``fastopt.load`` must refuse with ValueError:

    - ZIP entries with the "encrypted" flag (bit 0: RuntimeError from zipfile), the "compressed patched data"
      or "strong encryption" flags (bits 5, 6) or an unsupported compression method (NotImplementedError).
      These escaped fastopt/_io.py ``read_archive`` when this test was written; fixed since (commit cae883e,
      which turns any exception of ``np.load`` but MemoryError into FileFormatError): kept as regressions.
    - a model description announcing a huge layer (the JSON header is not covered
      by the checksum) raises MemoryError from ``Sequential.__init__`` (fastopt/model.py ``load``), which
      allocated and initialized the parameters before comparing their size with the stored array (fixed in
      7115f6d: load sizes the architecture first).
    """
    _, parameters = _valid_model_file("float32")
    valid = (TMP / "valid-float32.npz").read_bytes()
    path = TMP / f"regression-{mutation}.npz"
    data = bytearray(valid)
    if mutation == "huge-architecture":
        path.write_bytes(valid)
        edit_header(path, [("in_features", 0, 10**12)])
    else:
        for start in [m for m in range(len(data) - 12) if data[m : m + 4] in (b"PK\x03\x04", b"PK\x01\x02")]:
            central = data[start + 2] == 1
            if mutation.endswith("-flag"):
                bit = {"encrypted-flag": 0, "patched-data-flag": 5, "strong-encryption-flag": 6}[mutation]
                data[start + (8 if central else 6)] |= 1 << bit
            else:
                data[start + (10 if central else 8)] = 99
        path.write_bytes(bytes(data))
    with pytest.raises(ValueError):
        fastopt.load(path)
    del parameters


MISSING_STATE_CALLS = {
    "adagrad sum_squares": "b.adagrad_step(p, g, None, lr=0.1, eps=1e-8, weight_decay=0.0)",
    "rmsprop square_avg": "b.rmsprop_step(p, g, None, None, None, lr=0.1, alpha=0.9, eps=1e-8, momentum=0.0, "
    "weight_decay=0.0)",
    "adam exp_avg_sq": "b.adam_step(p, g, np.zeros(2), None, None, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, "
    "weight_decay=0.1, decoupled_weight_decay=True, bias_correction1=0.1, bias_correction2=0.01)",
    "adam exp_avg": "b.adam_step(p, g, None, np.zeros(2), None, lr=0.1, beta1=0.9, beta2=0.99, eps=1e-8, "
    "weight_decay=0.1, decoupled_weight_decay=True, bias_correction1=0.1, bias_correction2=0.01)",
}


@pytest.mark.parametrize("call", sorted(MISSING_STATE_CALLS))
@pytest.mark.parametrize("backend_name", BACKENDS)
def test_regression_missing_state_buffer(backend_name: str, call: str) -> None:
    """Found by this fuzzing, fixed in 7115f6d. Was:

    A required optimizer state buffer passed as None is not refused: ``Backend._check_update``
    (fastopt/backend.py) skips every None buffer (``if buffer is not None``), optional or not. The cython
    kernels then take ``&sum_squares[0]`` of a None memoryview: SIGSEGV for 1-d buffers (AttributeError from
    ``.ravel()`` in fastopt/cython_backend.py for n-d ones). The NumPy backend raises TypeError, but AdamW has
    already scaled the parameter by ``1 - lr * weight_decay``. Run in a subprocess: it crashes the interpreter."""
    code = (
        "import numpy as np\n"
        "from fastopt.backend import resolve_backend\n"
        f"b = resolve_backend({backend_name!r})\n"
        "p, g = np.ones(2), np.ones(2)\n"
        "try:\n"
        f"    {MISSING_STATE_CALLS[call]}\n"
        "except (ValueError, TypeError):\n"
        "    assert (p == 1).all(), f'refused, but the parameter changed: {p}'\n"
        "    print('refused')\n"
    )
    env = dict(os.environ, FASTOPT_QUIET_FALLBACK="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parent.parent) + os.pathsep + env.get("PYTHONPATH", "")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, (
        f"exit {done.returncode} ({'SIGSEGV' if done.returncode == -11 else ''}): {done.stderr[-500:]}"
    )
    assert done.stdout.strip() == "refused"


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_regression_predict_keeps_a_bounded_number_of_workspaces(backend_name: str) -> None:
    """Regression (found by scripts/memory_soak.py --predict-sizes): ``Sequential._workspace`` (fastopt/model.py)
    cached one set of activation buffers per distinct batch size, forever. ``predict`` on
    inputs of 1, 2, ..., N rows (a serving loop) therefore keeps N workspaces: +104.6 MiB resident for
    N = 256 on a 784-32-10 model, growing without bound. Proposed fix: keep at most a few workspaces (the
    training batch size and the most recent other size, LRU), or serve smaller batches from views of the
    first rows of the largest workspace."""
    model = fastopt.Sequential([Dense(8, 4), ReLU(), Dense(4, 3)], seed=0, backend=backend_name)
    data = np.random.default_rng(0).random((64, 8))
    for rows in range(1, 65):
        model.predict(data[:rows])
    assert len(model._threads.workspaces()) <= 4, (
        f"{len(model._threads.workspaces())} workspaces kept after 64 request sizes"
    )
