"""The optimizer base class: parameters, per-parameter state, step counting, learning-rate decay,
checked ``step`` and ``state_dict``/``load_state_dict``.

Every optimizer takes ``decay``: the step ``t`` (1 on the first step) uses
``lr_t = lr / (1 + decay * (t - 1))``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastopt._checks import FLOAT_DTYPES, DTypeError, check_scalar
from fastopt.backend import Backend, resolve_backend


def _as_array_list(arrays: object, name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        return [arrays]
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{name} must be a list of numpy arrays, got {type(arrays).__name__}")
    for index, array in enumerate(arrays):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}[{index}] must be a numpy.ndarray, got {type(array).__name__}")
    return list(arrays)


def _check_fits(hyper: dict[str, Any], params: list[np.ndarray]) -> None:
    """Every numeric hyperparameter must be finite in the parameters' precision: the kernels round them to it,
    and ``lr=1e300`` would become inf in float32 and turn every parameter into NaN without an error."""
    narrowest = min((param.dtype for param in params), key=lambda dtype: dtype.itemsize)
    largest = float(np.finfo(narrowest).max)
    for name, value in hyper.items():
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float) and abs(number) > largest:
                raise ValueError(f"{name}={number!r} is beyond the range of {narrowest} (the parameters' dtype)")


class Optimizer:
    """Base class. ``params`` is a list of float32/float64 C-contiguous writeable arrays updated in place
    by ``step(grads)``; it may be omitted, and ``Sequential.fit`` then binds the model's parameters."""

    def __init__(
        self, params: Sequence[np.ndarray] | np.ndarray | None, *, lr: float, decay: float, **hyper: Any
    ) -> None:
        self.hyperparameters: dict[str, Any] = self._validated(dict(hyper, lr=lr, decay=decay))
        self.params: list[np.ndarray] | None = None
        self.state: list[dict[str, np.ndarray]] = []
        self.step_count = 0
        self._backend: Backend | None = None
        if params is not None:
            self.bind(_as_array_list(params, "params"))

    # -------------------------------------------------------------- subclasses provide these
    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        """Validate the options beyond lr and decay; return them normalized."""
        raise NotImplementedError

    def _state_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state buffers the options in use need."""
        raise NotImplementedError

    def _initial_state(self, name: str) -> float:
        return 0.0

    def _update(
        self, backend: Backend, param: np.ndarray, grad: np.ndarray, state: dict[str, np.ndarray], lr: float
    ) -> None:
        """Apply step ``self.step_count`` (already advanced) to one parameter with learning rate ``lr``."""
        raise NotImplementedError

    # -------------------------------------------------------------- the public interface
    def _validated(self, hyper: dict[str, Any]) -> dict[str, Any]:
        lr = check_scalar(hyper.pop("lr"), "lr")
        decay = check_scalar(hyper.pop("decay"), "decay")
        return dict(self._check_hyperparameters(hyper), lr=lr, decay=decay)

    @property
    def lr(self) -> float:
        """The learning rate of the next step: ``lr / (1 + decay * step_count)``."""
        return self.hyperparameters["lr"] / (1.0 + self.hyperparameters["decay"] * self.step_count)

    @property
    def initial_lr(self) -> float:
        return self.hyperparameters["lr"]

    def bind(self, params: list[np.ndarray], backend: Backend | None = None) -> None:
        """Take ``params`` (checked) and allocate the state; a ``backend`` pins the one steps use."""
        if self.params is not None:
            raise ValueError(f"{type(self).__name__} already has parameters; make a new optimizer for other parameters")
        if not params:
            raise ValueError("params is empty")
        for index, param in enumerate(params):
            if param.dtype not in FLOAT_DTYPES:
                raise DTypeError(f"params[{index}] must be float32 or float64, got {param.dtype}")
            if not param.flags.c_contiguous:
                raise ValueError(
                    f"params[{index}] must be C-contiguous (use numpy.ascontiguousarray and keep that array)"
                )
            if not param.flags.writeable:
                raise ValueError(f"params[{index}] is read-only; an optimizer updates its parameters in place")
            for other_index in range(index):
                if np.shares_memory(param, params[other_index]):
                    raise ValueError(f"params[{index}] and params[{other_index}] share memory")
        _check_fits(self.hyperparameters, params)
        self.params = params
        self.state = [
            {name: np.full_like(param, self._initial_state(name)) for name in self._state_names()} for param in params
        ]
        self._backend = backend

    def is_bound_to(self, params: list[np.ndarray]) -> bool:
        return (
            self.params is not None
            and len(self.params) == len(params)
            and all(mine is theirs for mine, theirs in zip(self.params, params))
        )

    def step(self, grads: Sequence[np.ndarray] | np.ndarray) -> None:
        """Update every parameter in place from its gradient. Nothing changes if any gradient is refused."""
        if self.params is None:
            raise ValueError(
                f"{type(self).__name__} has no parameters: pass them to the constructor or to Sequential.fit"
            )
        grads = _as_array_list(grads, "grads")
        if len(grads) != len(self.params):
            raise ValueError(f"step got {len(grads)} gradients for {len(self.params)} parameters")
        written = [buffer for param, state in zip(self.params, self.state) for buffer in (param, *state.values())]
        checked = []
        for index, (param, grad) in enumerate(zip(self.params, grads)):
            if grad.dtype != param.dtype:
                raise DTypeError(f"grads[{index}] has dtype {grad.dtype}, its parameter has {param.dtype}")
            if grad.shape != param.shape:
                raise ValueError(f"grads[{index}] has shape {grad.shape}, its parameter has {param.shape}")
            if any(np.shares_memory(grad, buffer) for buffer in written):
                raise ValueError(f"grads[{index}] shares memory with a parameter or the optimizer state")
            checked.append(np.asarray(grad, order="C"))  # a copy only when not C-contiguous; 0-d stays 0-d
        self.apply(checked)

    def apply(self, grads: list[np.ndarray]) -> None:
        """``step`` without the checks, for callers that own the buffers (``Sequential``)."""
        lr = self.lr
        self.step_count += 1
        backend = self._backend or resolve_backend(None)
        assert self.params is not None
        for param, grad, state in zip(self.params, grads, self.state):
            self._update(backend, param, grad, state, lr)

    def state_dict(self) -> dict[str, Any]:
        """A copy of everything the optimizer would need to continue bit-identically."""
        return {
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "hyperparameters": dict(self.hyperparameters),
            "state": [{name: buffer.copy() for name, buffer in state.items()} for state in self.state],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output, checked whole before anything changes."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        missing = {"optimizer", "step_count", "hyperparameters", "state"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict lacks {sorted(missing)}")
        if state_dict["optimizer"] != type(self).__name__:
            raise ValueError(f"state_dict is for {state_dict['optimizer']}, not {type(self).__name__}")
        step_count = state_dict["step_count"]
        if isinstance(step_count, bool) or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"state_dict step_count must be a non-negative integer, got {step_count!r}")
        given = state_dict["hyperparameters"]
        if not isinstance(given, dict):
            raise TypeError(f"state_dict hyperparameters must be a dict, got {type(given).__name__}")
        if set(given) != set(self.hyperparameters):
            missing, unknown = set(self.hyperparameters) - set(given), set(given) - set(self.hyperparameters)
            raise ValueError(f"state_dict hyperparameters lack {sorted(missing)} and have unknown {sorted(unknown)}")
        hyper = self._validated(dict(given))
        if self.params is None:
            raise ValueError("load_state_dict needs the optimizer's parameters first")
        _check_fits(hyper, self.params)
        new_state = state_dict["state"]
        if not isinstance(new_state, (list, tuple)):
            raise ValueError(
                f"state_dict state must be a list of one dict per parameter, got {type(new_state).__name__}"
            )
        if len(new_state) != len(self.params):
            raise ValueError(
                f"state_dict holds state for {len(new_state)} parameters, the optimizer has {len(self.params)}"
            )
        names = set(self._state_names_for(hyper))
        for index, (param, buffers) in enumerate(zip(self.params, new_state)):
            if not isinstance(buffers, dict) or set(buffers) != names:
                raise ValueError(f"state_dict state[{index}] must hold exactly {sorted(names)}")
            for name, buffer in buffers.items():
                if not isinstance(buffer, np.ndarray) or buffer.shape != param.shape or buffer.dtype != param.dtype:
                    raise ValueError(
                        f"state_dict state[{index}][{name!r}] must be a {param.dtype} array of shape {param.shape}"
                    )
                if not np.isfinite(buffer).all():
                    raise ValueError(f"state_dict state[{index}][{name!r}] contains NaN or Inf")
        self.hyperparameters = hyper
        self.step_count = int(step_count)
        self.state = [
            {name: np.array(buffer, dtype=param.dtype, order="C") for name, buffer in buffers.items()}
            for param, buffers in zip(self.params, new_state)
        ]

    def _state_names_for(self, hyper: dict[str, Any]) -> tuple[str, ...]:
        current, self.hyperparameters = self.hyperparameters, hyper
        try:
            return self._state_names()
        finally:
            self.hyperparameters = current

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.hyperparameters.items())
        return f"{type(self).__name__}({options})"


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta**step`` in double precision."""
    return 1.0 - math.pow(beta, step)
