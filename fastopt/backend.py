"""The backend interface: one method per kernel of ``fastopt.kernel_table``, chosen by name.

A backend implements the trusted kernel methods (``_dense_forward``, ``_adam_step``, ...) with the
arguments of the kernel table in order (optimizer kernels: the arrays, then one mapping ``hyper`` of named
scalars). They trust their arguments: C-contiguous buffers of one float dtype and matching shapes, outputs
writeable and not overlapping inputs. The public methods of the same name without the underscore are made
from the table: they check every argument against it once (``fastopt._checks.check_kernel_arguments``) and
then call the trusted method, so that a kernel is never reached with a buffer that could make it read or
write out of bounds. ``Sequential`` and the optimizers validate their own buffers when they allocate them and
call the trusted methods directly on the hot path.

This module imports no backend implementation: the registry names each backend by its module and class, and
imports it the first time it is asked for.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from fastopt._checks import check_kernel_arguments
from fastopt.kernel_table import ACTIVATIONS, KERNELS, Array, Kernel, Scalar

__all__ = [
    "ACTIVATIONS",
    "Backend",
    "StepTiming",
    "available_backends",
    "get_backend",
    "resolve_backend",
    "set_backend",
]


def _public_signature(kernel: Kernel) -> inspect.Signature:
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    parameters = [inspect.Parameter("self", positional)]
    for param in kernel.params:
        default: Any = inspect.Parameter.empty
        if isinstance(param, Array) and param.optional:
            default = None
        elif isinstance(param, Scalar) and param.default is not None:
            default = param.default
        parameters.append(inspect.Parameter(param.name, positional, default=default))
    parameters += [inspect.Parameter(scalar.name, inspect.Parameter.KEYWORD_ONLY) for scalar in kernel.hyper]
    return inspect.Signature(parameters)


def _checked_method(kernel: Kernel) -> Callable[..., Any]:
    """The public method of ``kernel``: check every argument against the table, then run the trusted method."""
    signature = _public_signature(kernel)

    def method(self: Backend, *args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        checked = check_kernel_arguments(kernel, bound.arguments)
        call = [checked[param.name] for param in kernel.params]
        if kernel.hyper:
            call.append({scalar.name: checked[scalar.name] for scalar in kernel.hyper})
        result = getattr(self, kernel.method)(*call)
        return result if kernel.returns in (None, "value") else checked[kernel.returns]

    method.__name__ = method.__qualname__ = kernel.name
    method.__signature__ = signature  # type: ignore[attr-defined]
    method.__doc__ = f"{kernel.math}.\n\nChecked entry point of the trusted ``{kernel.method}``; see docs/kernels.md."
    return method


class StepTiming:
    """What a training loop tells its backend: a step begins, a step ends (this base does nothing with it)."""

    def begin_step(self) -> None:
        """A training step (forward, backward, optimizer update) begins."""

    def end_step(self) -> None:
        """The step begun last has ended."""


class Backend:
    """Base class of the backends: the checked entry points of every kernel in ``fastopt.kernel_table``
    (``backend.dense_forward(...)``, ``backend.adam_step(...)``, ...), made from the table; subclasses implement
    the trusted methods."""

    name = "abstract"

    @contextlib.contextmanager
    def training(self) -> Iterator[StepTiming]:
        """Held by ``Sequential.fit`` (and the scikit-learn estimators) around their loops, where kernels alternate
        with BLAS calls; a backend may adjust its threading for that. The loop calls the ``StepTiming`` it yields
        before and after each training step, so that the backend can time its steps (the compiled one chooses
        its thread count with them)."""
        yield StepTiming()

    def set_num_threads(self, n: int) -> None:
        """Threads this backend's kernels may use (the NumPy backend has no threads of its own)."""

    def _training_step(self, stages: list, workspace: Any, inputs: Any, targets: Any, loss: Any) -> Any:
        """A compiled training step of a model's ``stages`` over ``workspace``'s buffers, for the data set ``inputs``,
        ``targets`` and ``loss``, whose ``run(rows)`` does what ``Sequential._batch_gradients`` does with this
        backend's kernels (the same bits) and returns (loss, correct, finite); None (the NumPy backend's answer)
        where the backend has none: the model's Python step then calls the kernels one by one."""
        return None

    def _forward_stages(self, stages: list, workspace: Any, in_features: int) -> Any:
        """A model's ``stages`` over ``workspace``'s buffers compiled into one call, whose ``forward(inputs)`` does
        what ``Sequential._forward`` does outside training with this backend's kernels (the same bits) and returns
        whether it ran; None (the NumPy backend's answer) where the backend has none."""
        return None

    def _step_pair(self, first: Any, second: Any) -> Any:
        """Two compiled training steps (``_training_step``) run at once, whose ``run(first_rows, second_rows)``
        returns both steps' results (the same bits as each ``run``), or None where the backend has none."""
        return None

    def build_info(self) -> dict[str, Any]:
        """How this backend was built and how it runs (``fastopt.show_config`` prints it)."""
        return {}

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        # a copied or unpickled model or optimizer shares the one instance of its backend (and its settings)
        return resolve_backend, (self.name,)

    def __repr__(self) -> str:
        return f"<fastopt backend {self.name!r}>"


for _kernel in KERNELS.values():
    setattr(Backend, _kernel.name, _checked_method(_kernel))


# --------------------------------------------------------------------------------- the registry
# Known backends by "module:class", imported on first use; the first of DEFAULT_ORDER that imports is the default.
_KNOWN: dict[str, str] = {
    "numpy": "fastopt.numpy_backend:NumpyBackend",
    "cython": "fastopt.cython_backend:CythonBackend",
}
DEFAULT_ORDER = ("cython", "numpy")
_CLASSES: dict[str, type[Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_UNAVAILABLE: dict[str, str] = {}
_DEFAULT: list[str] = []
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastopt_backend", default=None)


def register_backend(name: str, target: str | type[Backend]) -> None:
    """Make a backend available under ``name``: its class, or ``"module:Class"`` imported on first use."""
    if isinstance(target, str):
        _KNOWN[name] = target
    else:
        _CLASSES[name] = target
    _UNAVAILABLE.pop(name, None)


def _load(name: str) -> type[Backend] | None:
    """The class of backend ``name``, importing it the first time; None (with the reason recorded) if it fails."""
    if name in _CLASSES:
        return _CLASSES[name]
    if name in _UNAVAILABLE or name not in _KNOWN:
        return None
    module_name, class_name = _KNOWN[name].split(":")
    try:
        _CLASSES[name] = getattr(importlib.import_module(module_name), class_name)
    except ImportError as exc:
        reason = f"the compiled extension did not import: {exc}" if name == "cython" else str(exc)
        _UNAVAILABLE[name] = reason
        return None
    return _CLASSES[name]


def available_backends() -> list[str]:
    """Names of the backends that import here."""
    return sorted(name for name in {*_KNOWN, *_CLASSES} if _load(name) is not None)


def backend_problems() -> dict[str, str]:
    """Known backends that could not be loaded, with the reason."""
    available_backends()
    return dict(_UNAVAILABLE)


def resolve_backend(name: str | Backend | None = None) -> Backend:
    """The backend instance for ``name``; None means the current one."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = get_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name, got {type(name).__name__}")
    if _load(name) is None:
        if name in _UNAVAILABLE:
            raise ValueError(f"backend {name!r} is not available: {_UNAVAILABLE[name]}")
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _CLASSES[name]()
    return _INSTANCES[name]


def loaded_backends() -> list[Backend]:
    """The backend instances made so far (``set_num_threads`` reaches each)."""
    return list(_INSTANCES.values())


def _default_backend() -> str:
    """The first backend of DEFAULT_ORDER that imports, decided once; a warning says why the first did not."""
    if not _DEFAULT:
        for name in DEFAULT_ORDER:
            if _load(name) is not None:
                _DEFAULT.append(name)
                break
            if os.environ.get("FASTOPT_QUIET_FALLBACK") != "1":
                warnings.warn(
                    f"fastopt: the {name} backend is unavailable ({_UNAVAILABLE.get(name)}); using the next one",
                    stacklevel=3,
                )
    return _DEFAULT[0]


def get_backend() -> str:
    """Name of the backend in use: the innermost ``use_backend``, else ``set_backend``'s, else the default."""
    return _CURRENT.get() or _default_backend()


def set_backend(name: str) -> None:
    """Make ``name`` ("numpy" or "cython") the backend of new models and of standalone optimizers."""
    resolve_backend(name)
    _DEFAULT[:] = [name]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use backend ``name`` inside a ``with`` block (per thread and asyncio task)."""
    backend = resolve_backend(name)
    token = _CURRENT.set(name)
    try:
        yield backend
    finally:
        _CURRENT.reset(token)
