"""Validation shared by the public API and the backends' checked kernel entry points.

Every function raises ``TypeError`` for a wrong type or dtype and ``ValueError`` for a wrong
value, shape or layout, with a message that names the offending argument.
"""

from __future__ import annotations

import math
import numbers
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from fastopt.kernel_table import DIMENSIONS, Array, Kernel, Scalar

if TYPE_CHECKING:
    from fastopt.backend import Backend

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
INDEX_DTYPE = np.dtype(np.int64)


class DTypeError(TypeError, ValueError):
    """An array of the wrong dtype: a TypeError, and a ValueError for callers that catch bad values."""


def fixed_attribute(name: str) -> property:
    """A constructor argument of a layer or loss as a read-only attribute (stored as ``_name``): a model's plan,
    buffers and compiled passes are made from it, so an object is configured once; assigning it is an
    AttributeError saying so (a layer's width assigned by hand let a kernel write past a buffer)."""

    def value(owner: object) -> object:
        return getattr(owner, "_" + name)

    def refuse(owner: object, _: object) -> None:
        raise AttributeError(
            f"{type(owner).__name__}.{name} is fixed when it is made (models compile their passes from it); make a "
            f"new {type(owner).__name__} for another {name}"
        )

    return property(value, refuse, doc=f"The constructor's ``{name}`` (read-only).")


def resolve_dtype(dtype: object) -> np.dtype:
    """Return float32 or float64 for a dtype-like ``dtype``; anything else is a TypeError/ValueError."""
    try:
        resolved = np.dtype(dtype)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}") from exc
    if resolved not in FLOAT_DTYPES:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {resolved.name}")
    return resolved


def check_array(
    array: object,
    name: str,
    *,
    dtype: np.dtype | None = None,
    shape: tuple[int, ...] | None = None,
    writeable: bool = False,
) -> np.ndarray:
    """Check a buffer handed to a kernel: an ndarray of float32/float64 (or ``dtype``), C-contiguous,
    of exactly ``shape`` when given, and writeable when it is an output."""
    if not isinstance(array, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if dtype is None:
        if array.dtype not in FLOAT_DTYPES:
            raise DTypeError(dtype_mismatch(array, FLOAT_DTYPES, name))
    elif array.dtype != dtype:
        raise DTypeError(dtype_mismatch(array, (dtype,), name))
    if shape is not None and array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writeable and not array.flags.writeable:
        raise ValueError(f"{name} is read-only but is written to")
    return array


def dtype_mismatch(array: np.ndarray, expected: Sequence[np.dtype], name: str) -> str:
    """The message for ``array`` whose dtype is none of ``expected``; it names the byte order when that
    is the only difference (a big-endian float64 is a float64, but not one the kernels read)."""
    wanted = " or ".join(dtype.name for dtype in expected)
    requirement = f"have dtype {wanted}" if len(expected) == 1 else f"be {wanted}"
    native = array.dtype.newbyteorder("=")
    if array.dtype.isnative or native not in expected:
        return f"{name} must {requirement}, got {array.dtype}"
    order = "big" if array.dtype.byteorder == ">" else "little"
    return (
        f"{name} must {requirement} in native byte order, got {array.dtype.str} ({order}-endian): "
        f"convert it with {name}.astype(np.{native.name})"
    )


def check_no_overlap(outputs: Sequence[tuple[str, np.ndarray]], others: Sequence[tuple[str, np.ndarray]]) -> None:
    """Refuse any output buffer that shares memory with another buffer of the same call."""
    for index, (out_name, out) in enumerate(outputs):
        for other_name, other in list(outputs[index + 1 :]) + list(others):
            if other is not None and np.shares_memory(out, other):
                raise ValueError(f"{out_name} and {other_name} share memory; kernels need separate buffers")


def check_scalar(
    value: object,
    name: str,
    *,
    low: float | None = 0.0,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """Return ``value`` as a finite float inside [low, high] (an open end excludes the bound)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    try:
        number = float(value)
    except OverflowError as exc:
        raise ValueError(f"{name} must be finite, got an integer too large for a float") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {number}")
    if low is not None and (number < low or (low_open and number == low)):
        bound = ">" if low_open else ">="
        raise ValueError(f"{name} must be {bound} {low}, got {number}")
    if high is not None and (number > high or (high_open and number == high)):
        bound = "<" if high_open else "<="
        raise ValueError(f"{name} must be {bound} {high}, got {number}")
    return number


def check_flag(value: object, name: str) -> bool:
    """Return ``value`` as a bool: True, False, or the integers 1 and 0."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def check_integer(value: object, name: str, low: int, high: int) -> int:
    """Return ``value`` as an int in [low, high], exactly (no float: 2**64 - 1 has no float64)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not low <= int(value) <= high:
        raise ValueError(f"{name} must be an integer in [{low}, {high}], got {value}")
    return int(value)


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 1."""
    return _check_int(value, name, 1)


def check_nonnegative_int(value: object, name: str) -> int:
    """Return ``value`` as an int >= 0 (a patience, a cooldown: a number of epochs that may be zero)."""
    return _check_int(value, name, 0)


def check_metric_name(monitor: object) -> str:
    """A monitored metric's name (``monitor`` of the callbacks and of ``ReduceLROnPlateau``): a str."""
    if not isinstance(monitor, str):
        raise TypeError(f"monitor must be the name of a metric (a str), got {monitor!r}")
    return monitor


def check_metric_value(value: object, name: str, optional: bool = False) -> float | None:
    """A saved metric value (a callback's or a scheduler's ``best``): a real number (infinite for none yet), or
    None where ``optional``; never NaN or a bool."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or math.isnan(value):
        raise ValueError(f"{name} must be a number{' or None' if optional else ''}, got {value!r}")
    return float(value)


def _check_int(value: object, name: str, low: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def as_real_array(data: object, name: str, expected: str = "real numbers") -> np.ndarray:
    """``data`` as an ndarray of a real dtype (bool, integer or float), without copying when it is one.

    Objects that convert exactly are accepted: an object array (a pandas frame with nullable ``Int64`` or
    ``Float32`` columns gives one) whose every element is a real number. Missing values (None, ``pd.NA``),
    other objects, strings, complex numbers and sparse matrices are refused, naming what was found and,
    for sparse input, what to do. ``expected`` says what the data must hold, for the message.
    """
    if _is_sparse(data):
        method = "toarray" if hasattr(data, "toarray") else "todense"
        raise TypeError(
            f"{name} is a sparse matrix ({type(data).__name__}); sparse input is not supported: "
            f"convert it with {name}.{method}()"
        )
    array = np.asarray(data)
    if array.dtype == object:
        array = _from_objects(array, name, expected)
    if array.dtype.kind not in "biuf":
        raise DTypeError(f"{name} must hold {expected}, got dtype {array.dtype}")
    return array


def _is_sparse(data: object) -> bool:
    """scipy.sparse matrices and arrays (checked without importing scipy: if it is not imported, ``data``
    is none of its types), and other sparse containers that offer ``toarray``/``todense``."""
    scipy_sparse = sys.modules.get("scipy.sparse")
    if scipy_sparse is not None and scipy_sparse.issparse(data):
        return True
    return not isinstance(data, np.ndarray) and (hasattr(data, "toarray") or hasattr(data, "todense"))


def _from_objects(array: np.ndarray, name: str, expected: str) -> np.ndarray:
    """An object array's elements as a real-dtype array, if every element is a real number."""
    values = array.ravel().tolist()  # the element objects themselves
    for index, value in enumerate(values):
        if not isinstance(value, (numbers.Real, np.bool_)):
            where = tuple(int(i) for i in np.unravel_index(index, array.shape)) if array.ndim else ()
            if value is None or type(value).__name__ == "NAType":  # pandas.NA, without importing pandas
                raise ValueError(f"{name} has a missing value ({value!r}) at index {where}: fill or drop it first")
            raise DTypeError(
                f"{name} must hold {expected}, but it holds {value!r} ({type(value).__name__}) at index {where}"
            )
    return np.array(values).reshape(array.shape)


def as_features(X: object, n_features: int, dtype: np.dtype, backend: Backend, name: str = "X") -> np.ndarray:
    """Convert a user's input batch to a C-contiguous ``(N, n_features)`` array of ``dtype``.

    Any real numeric dtype (integers, bool, float16/32/64, either byte order) is accepted and converted
    once, as are objects that convert exactly (see ``as_real_array``); object, string and complex inputs,
    sparse matrices, NaN/Inf, empty inputs and wrong shapes are refused. The NaN/Inf test is ``backend``'s
    kernel (the compiled one reads the data once, on all threads).
    """
    array = X if type(X) is np.ndarray and X.dtype == dtype else as_real_array(X, name)  # a float array is real
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, features), got {array.ndim}-D with shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 samples)")
    if array.shape[1] != n_features:
        raise ValueError(f"{name} has {array.shape[1]} features but the model expects {n_features}")
    converted = array
    if array.dtype != dtype or not array.flags.c_contiguous:
        with np.errstate(over="ignore"):  # values beyond the dtype's range become Inf and are refused below
            converted = np.ascontiguousarray(array, dtype=dtype)
    if not backend._all_finite(converted):  # the trusted kernel: converted is C-contiguous and of a float dtype
        raise ValueError(f"{name} contains NaN or Inf (or values too large for {dtype})")
    return converted


def as_trusted_features(X: object, n_features: int, dtype: np.dtype, name: str = "X") -> np.ndarray:
    """``X`` itself, when it is what the kernels read without conversion: a non-empty C-contiguous ndarray of
    ``dtype`` and shape ``(N, n_features)``; otherwise a ``TypeError`` or ``ValueError`` saying what differs. No
    copy and no NaN/Inf scan (``as_features`` makes both): the caller vouches for the values."""
    if not isinstance(X, np.ndarray) or X.dtype != dtype:
        found = X.dtype if isinstance(X, np.ndarray) else type(X).__name__
        raise DTypeError(f"with check_input=False, {name} must be a numpy array of {dtype}, got {found}")
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] != n_features:
        raise ValueError(f"with check_input=False, {name} must have shape (N >= 1, {n_features}), got {X.shape}")
    if not X.flags.c_contiguous:
        raise ValueError(f"with check_input=False, {name} must be C-contiguous (np.ascontiguousarray)")
    return X


def as_labels(y: object, n_classes: int, name: str = "y") -> np.ndarray:
    """Convert class labels to int64 ``(N,)``: integer labels, integral floats, or one-hot rows.

    Labels are checked in the dtype they come in, so that a message quotes the values given (a uint64
    ``2**64 - 1`` or a float ``1e20``, not what a cast to int64 makes of them)."""
    array = as_real_array(y, name, "class labels (integers) or one-hot rows")
    if array.ndim == 2:
        if array.shape[1] != n_classes:
            raise ValueError(f"{name} one-hot rows have {array.shape[1]} columns but the model has {n_classes} outputs")
        if not (np.isin(array, (0, 1)).all() and (array.sum(axis=1) == 1).all()):
            raise ValueError(f"{name} is 2-D but its rows are not one-hot (exactly one 1, the rest 0)")
        return np.ascontiguousarray(array.argmax(axis=1), dtype=np.int64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D labels or 2-D one-hot rows, got shape {array.shape}")
    if array.dtype.kind == "f":
        fractional = array != np.round(array)  # NaN too; Inf is whole, and out of range below
        if fractional.any():
            index = int(np.argmax(fractional))
            hint = " (NaN often marks a missing value: fill or drop it)" if np.isnan(array[index]) else ""
            raise ValueError(
                f"{name} contains non-integer labels: {array[index]!s} at index ({index},); class labels must be "
                f"whole numbers{hint}"
            )
    if array.size:
        low, high = array.min(), array.max()
        if low < 0 or high >= n_classes:
            raise ValueError(
                f"{name} has labels out of range: found {low!s}..{high!s}, the model has {n_classes} classes"
            )
    return np.ascontiguousarray(array, dtype=np.int64)


def check_same_length(X: np.ndarray, y: np.ndarray, x_name: str = "X", y_name: str = "y") -> None:
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"{x_name} and {y_name} have different lengths: {X.shape[0]} and {y.shape[0]}")


# ------------------------------------------------------------------------------------- kernel calls
def _shape_text(pattern: str, dims: dict[str, int]) -> str:
    sizes = [str(dims[symbol]) if symbol in dims else DIMENSIONS[symbol] for symbol in pattern]
    return "(" + ", ".join(sizes) + ("," if len(sizes) == 1 else "") + ")"


def _check_shape(spec: Array, array: np.ndarray, dims: dict[str, int], star: list[tuple[int, ...]]) -> None:
    """Bind the symbolic dimensions of ``spec.shape`` to ``array``'s, refusing a mismatch with those bound
    before; ``star`` holds the shape of the first ``*`` array of the call."""
    if spec.shape == "*":
        if not star:
            star.append(array.shape)
        elif array.shape != star[0]:
            raise ValueError(f"{spec.name} must have shape {star[0]}, got {array.shape}")
        return
    pattern = spec.shape
    fits = array.ndim == len(pattern) and all(dims.get(s, n) == n for s, n in zip(pattern, array.shape))
    if not fits:
        if array.ndim != len(pattern) and not all(symbol in dims for symbol in pattern):
            names = ", ".join(DIMENSIONS[symbol] for symbol in pattern)
            raise ValueError(f"{spec.name} must be {len(pattern)}-D ({names}), got shape {array.shape}")
        raise ValueError(f"{spec.name} must have shape {_shape_text(pattern, dims)}, got {array.shape}")
    dims.update(zip(pattern, array.shape))


def _check_indices(spec: Array, indices: np.ndarray, dims: dict[str, int]) -> None:
    bound = dims[spec.index_of]  # type: ignore[index]
    if indices.size and (indices.min() < 0 or indices.max() >= bound):
        raise ValueError(f"{spec.name} must lie in [0, {bound}), found {indices.min()}..{indices.max()}")


def _check_scalar_argument(spec: Scalar, value: object) -> object:
    if spec.flag:
        return check_flag(value, spec.name)
    if spec.choices:
        if not isinstance(value, str) or value not in spec.choices:
            raise ValueError(f"{spec.name} must be one of {spec.choices}, got {value!r}")
        return value
    if spec.integer:
        return check_integer(value, spec.name, int(spec.low), int(spec.high))  # type: ignore[arg-type]
    return check_scalar(
        value, spec.name, low=spec.low, high=spec.high, low_open=spec.low_open, high_open=spec.high_open
    )


def _check_arrays(kernel: Kernel, values: dict[str, object]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Type, dtype, layout, writeability and shape of every array argument given (optional ones may be None)."""
    arrays: dict[str, np.ndarray] = {}
    dims: dict[str, int] = {}
    star: list[tuple[int, ...]] = []
    dtype = None
    for spec in kernel.arrays:
        value = values[spec.name]
        if value is None and spec.optional:
            continue
        wanted = INDEX_DTYPE if spec.index_of else dtype
        array = check_array(value, spec.name, dtype=wanted, writeable=spec.written)
        if not spec.index_of and dtype is None:
            dtype = array.dtype
        _check_shape(spec, array, dims, star)
        arrays[spec.name] = array
    for spec in kernel.arrays:
        if spec.index_of and spec.name in arrays:
            _check_indices(spec, arrays[spec.name], dims)
    return arrays, dims


def _check_rules(kernel: Kernel, arrays: dict[str, np.ndarray], dims: dict[str, int]) -> None:
    for symbol in kernel.min_size:
        if dims.get(symbol, 0) < 1:
            raise ValueError(f"{kernel.name} needs {DIMENSIONS[symbol]} >= 1, got {dims.get(symbol, 0)}")
    for name in kernel.nonempty:
        if arrays[name].size == 0:
            raise ValueError(f"{name} is empty")
    written = [(spec.name, arrays[spec.name]) for spec in kernel.arrays if spec.written and spec.name in arrays]
    read = [(spec.name, arrays[spec.name]) for spec in kernel.arrays if not spec.written and spec.name in arrays]
    check_no_overlap(written, read)


def check_kernel_arguments(kernel: Kernel, values: dict[str, object]) -> dict[str, object]:
    """Check a call of ``kernel`` (all its arguments and hyperparameters by name, as in ``kernel_table``);
    return them converted (arrays as given, scalars as float or int, flags as bool). Raises TypeError for a wrong type
    or dtype and ValueError for a wrong value, shape, layout, range, rule or shared memory, naming the argument;
    nothing is written."""
    for array_name, scalar_name in kernel.given_when:
        if (values[array_name] is None) != (values[scalar_name] == 0):
            raise ValueError(f"{array_name} must be given exactly when {scalar_name} != 0")
    arrays, dims = _check_arrays(kernel, values)
    checked: dict[str, object] = {spec.name: _check_scalar_argument(spec, values[spec.name]) for spec in kernel.scalars}
    checked.update({spec.name: _check_scalar_argument(spec, values[spec.name]) for spec in kernel.hyper})
    _check_rules(kernel, arrays, dims)
    checked.update({spec.name: arrays.get(spec.name) for spec in kernel.arrays})
    return checked
