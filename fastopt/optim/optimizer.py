"""The optimizer base class: parameter groups, per-parameter state, step counting, learning-rate decay, the
checked ``step`` and ``state_dict``/``load_state_dict``.

Every optimizer takes ``decay``: the step ``t`` (1 on the first step) uses ``lr_t = lr / (1 + decay * (t - 1))``.
Parameters come as arrays or as PyTorch's parameter groups (``[{"params": [...], "lr": ..., ...}, ...]``), each
group with its own hyperparameters (the constructor's are the defaults). An optimizer class names its kernel in
``fastopt.kernel_table`` (``kernel = "adam_step"``) and builds that kernel's named hyperparameters for each step
(``_kernel_hyper``); its state buffers are the kernel's arrays after ``param`` and ``grad``, by name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, ClassVar

import numpy as np

from fastopt._aligned import aligned_full_like
from fastopt._checks import FLOAT_DTYPES, DTypeError, check_flag, check_scalar
from fastopt.backend import Backend, resolve_backend
from fastopt.kernel_table import KERNELS

ParamsLike = Sequence[np.ndarray] | np.ndarray | Sequence[dict[str, Any]]
# what _check_step makes for the steps after it (kept out of pickles and copies)
_MADE_BY_CHECK = frozenset({"_kernel_method", "_group_kernel_options"})
MAX_STEP_COUNT = 2**53  # step counts stay exact in double precision (bias corrections, decay)
# State buffers that are sums or averages of squares or magnitudes: never negative in a run.
NONNEGATIVE_STATE = frozenset({"sum_squares", "square_avg", "exp_avg_sq", "max_exp_avg_sq", "exp_inf"})


def _as_array_list(arrays: object, name: str) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        return [arrays]
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"{name} must be a list of numpy arrays, got {type(arrays).__name__}")
    for index, array in enumerate(arrays):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"{name}[{index}] must be a numpy.ndarray, got {type(array).__name__}")
    return list(arrays)


def _check_param(param: np.ndarray, where: str) -> None:
    if param.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{where} must be float32 or float64, got {param.dtype}")
    if not param.flags.c_contiguous:
        raise ValueError(f"{where} must be C-contiguous (use numpy.ascontiguousarray and keep that array)")
    if not param.flags.writeable:
        raise ValueError(f"{where} is read-only; an optimizer updates its parameters in place")


def _check_state_buffer(buffer: object, param: np.ndarray, where: str) -> None:
    """A state buffer a kernel can take for ``param``: a writeable C-contiguous array of its dtype and shape."""
    if buffer is None:
        raise ValueError(f"{where} is missing")
    if not isinstance(buffer, np.ndarray):
        raise TypeError(f"{where} must be a numpy array, got {type(buffer).__name__}")
    if buffer.shape != param.shape or buffer.dtype != param.dtype or not buffer.flags.c_contiguous:
        raise ValueError(
            f"{where} must be a C-contiguous {param.dtype} array of shape {param.shape} like its parameter, "
            f"got {buffer.dtype} {buffer.shape}{'' if buffer.flags.c_contiguous else ', not C-contiguous'}"
        )
    if not buffer.flags.writeable:
        raise ValueError(f"{where} is read-only")


def _check_fits(hyper: dict[str, Any], params: list[np.ndarray]) -> None:
    """Every numeric hyperparameter must be finite in the parameters' precision: the kernels round them to it,
    and ``lr=1e300`` would become inf in float32 and turn every parameter into NaN without an error."""
    narrowest = min((param.dtype for param in params), key=lambda dtype: dtype.itemsize)
    largest = float(np.finfo(narrowest).max)
    for name, value in hyper.items():
        for number in value if isinstance(value, tuple) else (value,):
            if isinstance(number, float) and abs(number) > largest:
                raise ValueError(f"{name}={number!r} is beyond the range of {narrowest} (the parameters' dtype)")


@functools.cache
def _kernel_call(kernel_name: str) -> tuple[str, tuple[str, ...]]:
    """An optimizer kernel's backend method and the names of its state buffers (its arrays after param and grad)."""
    spec = KERNELS[kernel_name]
    return spec.method, tuple(array.name for array in spec.arrays[2:])


def _options(group: dict[str, Any]) -> dict[str, Any]:
    """A parameter group's hyperparameters (without its arrays, which ``==`` would compare element-wise)."""
    return {key: value for key, value in group.items() if key != "params"}


def decayed_lr(group: dict[str, Any], steps_taken: int) -> float:
    """A group's learning rate for the step after ``steps_taken`` steps: ``lr / (1 + decay * steps_taken)``."""
    return group["lr"] / (1.0 + group["decay"] * steps_taken)


def bias_correction(beta: float, step: int) -> float:
    """``1 - beta**step`` in double precision."""
    return 1.0 - math.pow(beta, step)


def check_betas(betas: object, name: str = "betas") -> tuple[float, float]:
    """``betas`` as a pair of floats in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"{name} must be a pair (beta1, beta2), got {betas!r}")
    return (
        check_scalar(betas[0], "beta1", high=1.0, high_open=True),
        check_scalar(betas[1], "beta2", high=1.0, high_open=True),
    )


def constructor_options(arguments: dict[str, Any]) -> dict[str, Any]:
    """An optimizer constructor's keyword arguments (its ``locals()``) without ``self`` and ``params``: the
    hyperparameters it passes on to ``Optimizer.__init__``."""
    return {name: value for name, value in arguments.items() if name not in ("self", "params", "__class__")}


def check_option(value: object, name: str) -> bool:
    """A boolean option (``amsgrad``, ``nesterov``, ...): True or False."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return check_flag(value, name)


# The checks of the hyperparameters optimizers declare in ``Optimizer.options``: each takes (value, name).
nonnegative: Callable[[object, str], float] = check_scalar
fraction: Callable[[object, str], float] = partial(check_scalar, high=1.0)
# eps > 0, unlike PyTorch: it is added to a denominator that a zero gradient makes zero (0 / 0 = NaN)
positive: Callable[[object, str], float] = partial(check_scalar, low_open=True)
ADAM_FAMILY = {"betas": check_betas, "eps": positive, "weight_decay": nonnegative}


class Optimizer:
    """Base class. ``params`` (arrays, or parameter groups as dicts with a ``"params"`` list) are float32/float64
    C-contiguous writeable arrays updated in place by ``step(grads)``; they may be omitted, and
    ``Sequential.fit`` then binds the model's parameters. ``param_groups``, ``state`` (one dict of buffers per
    parameter, in group order) and ``step_count`` are PyTorch's names."""

    kernel: ClassVar[str] = ""  # its kernel in fastopt.kernel_table
    # Each hyperparameter beyond lr and decay, with its check; its state buffers (kernel-table names; ``_state_names``
    # may use only some, by the group's options); the options the kernel takes as they are ("betas" as beta1,
    # beta2); per-parameter scalars of the state (0-d float64 arrays, PyTorch's per-parameter tensors) and their start.
    options: ClassVar[dict[str, Callable[[object, str], Any]]] = {}
    state_buffers: ClassVar[tuple[str, ...]] = ()
    kernel_options: ClassVar[tuple[str, ...]] = ()
    scalar_state: ClassVar[dict[str, float]] = {}

    def __init__(self, params: ParamsLike | None, *, lr: float, decay: float, **hyper: Any) -> None:
        self.defaults: dict[str, Any] = self._validated(dict(hyper, lr=lr, decay=decay))
        self.param_groups: list[dict[str, Any]] = []
        self.state: list[dict[str, np.ndarray]] = []
        self.step_count = 0
        self.backend: Backend | str | None = None
        self._checked_groups: list[dict[str, Any]] = []
        self._layouts: list[tuple[tuple[int, ...], np.dtype]] = []
        # each parameter and its state buffers in its kernel's order (None: an option's buffer left out), as last
        # checked (_check_state)
        self._taken: list[np.ndarray] = []
        self._kernel_buffers: list[tuple[np.ndarray | None, ...]] = []
        if params is not None:
            self.bind(params)

    # -------------------------------------------------------------- subclasses may refine these
    def _check_hyperparameters(self, hyper: dict[str, Any]) -> dict[str, Any]:
        """Validate the options beyond lr and decay (``options``); return them normalized."""
        return {name: check(hyper[name], name) for name, check in self.options.items()}

    def _state_names(self, group: dict[str, Any]) -> tuple[str, ...]:
        """Names of the per-parameter state buffers a group's options need (kernel-table names)."""
        return self.state_buffers

    def _initial_state(self, name: str, group: dict[str, Any]) -> float:
        return 0.0

    def _kernel_options_of(self, group: dict[str, Any]) -> dict[str, Any]:
        """The ``kernel_options`` of a group as the kernel names them ("betas" as beta1 and beta2)."""
        options: dict[str, Any] = {}
        for name in self.kernel_options:
            if name == "betas":
                options["beta1"], options["beta2"] = group["betas"]
            else:
                options[name] = group[name]
        return options

    def _kernel_hyper(
        self, group: dict[str, Any], lr: float, state: dict[str, np.ndarray], options: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The kernel's named scalars for step ``self.step_count`` (already advanced) of one parameter: the step's
        learning rate, the ``kernel_options`` of its group (``options``: made beforehand by ``_kernel_options_of``),
        and the ``_step_scalars``."""
        scalars = {"lr": lr, **(self._kernel_options_of(group) if options is None else options)}
        scalars.update(self._step_scalars(group, lr, scalars, state))
        return scalars

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        """The kernel scalars that depend on the step (bias corrections, ...), given the others."""
        return {}

    # -------------------------------------------------------------- hyperparameters
    @property
    def hyperparameters(self) -> dict[str, Any]:
        """The constructor's hyperparameters (the defaults of every parameter group)."""
        return self.defaults

    def _validated(self, hyper: dict[str, Any]) -> dict[str, Any]:
        hyper = dict(hyper)
        lr = check_scalar(hyper.pop("lr"), "lr")
        decay = check_scalar(hyper.pop("decay"), "decay")
        return dict(self._check_hyperparameters(hyper), lr=lr, decay=decay)

    def _validated_group(self, group: dict[str, Any], params: list[np.ndarray]) -> dict[str, Any]:
        unknown = set(group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"unknown {type(self).__name__} options in a parameter group: {sorted(unknown)}")
        hyper = self._validated({**self.defaults, **{k: v for k, v in group.items() if k != "params"}})
        _check_fits(hyper, params)
        return hyper

    @property
    def lr(self) -> float:
        """The learning rate of the next step (of the first group): ``lr / (1 + decay * step_count)``. Setting it
        sets ``lr`` of every group (of the defaults before the optimizer has parameters); per group:
        ``opt.param_groups[i]["lr"] = x``. ``hyperparameters`` keeps the constructor's values."""
        group = self.param_groups[0] if self.param_groups else self.defaults
        return decayed_lr(group, self.step_count)

    @lr.setter
    def lr(self, value: float) -> None:
        lr = check_scalar(value, "lr")
        if not self.param_groups:
            self.defaults["lr"] = lr
            return
        _check_fits({"lr": lr}, self.params)  # type: ignore[arg-type]
        for group in self.param_groups:
            group["lr"] = lr

    @property
    def initial_lr(self) -> float:
        return self.defaults["lr"]

    # -------------------------------------------------------------- parameters
    @property
    def params(self) -> list[np.ndarray] | None:
        """Every parameter, in group order (None before ``bind``)."""
        return [param for group in self.param_groups for param in group["params"]] if self.param_groups else None

    def _groups_from(self, params: ParamsLike) -> list[dict[str, Any]]:
        if isinstance(params, (list, tuple)) and params and all(isinstance(item, dict) for item in params):
            groups = []
            for index, group in enumerate(params):
                if "params" not in group:
                    raise ValueError(f"parameter group {index} has no 'params'")
                groups.append({**group, "params": _as_array_list(group["params"], f"param_groups[{index}]")})
            return groups
        return [{"params": _as_array_list(params, "params")}]

    def bind(self, params: ParamsLike, backend: Backend | str | None = None) -> None:
        """Take ``params`` (arrays or parameter groups, checked) and allocate the state; ``backend`` pins the one
        steps use (None: the current backend at each step)."""
        if self.param_groups:
            raise ValueError(f"{type(self).__name__} already has parameters; make a new optimizer for other parameters")
        groups = self._groups_from(params)
        flat = [param for group in groups for param in group["params"]]
        if not flat:
            raise ValueError("params is empty")
        for index, param in enumerate(flat):
            _check_param(param, f"params[{index}]")
            for other_index in range(index):
                if np.shares_memory(param, flat[other_index]):
                    raise ValueError(f"params[{index}] and params[{other_index}] share memory")
        checked = [dict(self._validated_group(group, group["params"]), params=group["params"]) for group in groups]
        self.param_groups = checked
        self._checked_groups = [dict(group) for group in checked]
        self.state = [self._new_state(param, group) for group in checked for param in group["params"]]
        self._layouts = [(param.shape, param.dtype) for param in flat]
        self._taken = list(flat)
        self._kernel_buffers = [self._buffers_in(state) for state in self.state]
        self.backend = backend

    def _new_state(self, param: np.ndarray, group: dict[str, Any]) -> dict[str, np.ndarray]:
        state = {name: aligned_full_like(param, self._initial_state(name, group)) for name in self._state_names(group)}
        state.update({name: np.array(start, dtype=np.float64) for name, start in self.scalar_state.items()})
        return state

    def is_bound_to(self, params: list[np.ndarray]) -> bool:
        mine = self.params
        return mine is not None and len(mine) == len(params) and all(a is b for a, b in zip(mine, params))

    # -------------------------------------------------------------- stepping
    def step(self, grads: Sequence[np.ndarray] | np.ndarray, allow_nonfinite: bool = False) -> None:
        """Update every parameter in place from its gradient. Nothing changes if any gradient is refused: a
        gradient holding NaN or Inf is refused (``FloatingPointError``) unless ``allow_nonfinite=True``."""
        if not self.param_groups:
            raise ValueError(
                f"{type(self).__name__} has no parameters: pass them to the constructor or to Sequential.fit"
            )
        grads = _as_array_list(grads, "grads")
        params = self.params
        if len(grads) != len(params):
            raise ValueError(f"step got {len(grads)} gradients for {len(params)} parameters")
        written = [buffer for param, state in zip(params, self.state) for buffer in (param, *state.values())]
        checked = []
        for index, (param, grad) in enumerate(zip(params, grads)):
            if grad.dtype != param.dtype:
                raise DTypeError(f"grads[{index}] has dtype {grad.dtype}, its parameter has {param.dtype}")
            if grad.shape != param.shape:
                raise ValueError(f"grads[{index}] has shape {grad.shape}, its parameter has {param.shape}")
            if any(np.shares_memory(grad, buffer) for buffer in written):
                raise ValueError(f"grads[{index}] shares memory with a parameter or the optimizer state")
            checked.append(np.asarray(grad, order="C"))  # a copy only when not C-contiguous; 0-d stays 0-d
        if not allow_nonfinite:
            backend = resolve_backend(self.backend)
            for index, grad in enumerate(checked):
                if grad.dtype in FLOAT_DTYPES and not backend.all_finite(np.ascontiguousarray(grad, grad.dtype)):
                    raise FloatingPointError(
                        f"grads[{index}] holds NaN or Inf; nothing was updated (step(..., allow_nonfinite=True) "
                        "applies it)"
                    )
        self.apply(checked)

    def _recheck_groups(self) -> None:
        """Validate the groups' hyperparameters again when they were changed since the last step (a user or a
        schedule writing ``param_groups[i]["lr"]``): a kernel never runs with an unchecked value. A change that
        needs other state buffers (``amsgrad``, ``centered``, momentum turned on or off) is refused: the kernels
        would silently run without the missing buffer."""
        for index, group in enumerate(self.param_groups):
            before = self._checked_groups[index]
            if group["params"] is before["params"] and group == before:
                continue  # unchanged (one comparison in C: the same params list compares by identity)
            if _options(group) != _options(before):
                checked = self._validated_group(group, group["params"])
                if self._state_names(checked) != self._state_names(before):
                    changed = sorted(key for key, value in checked.items() if value != before[key])
                    raise ValueError(
                        f"param_groups[{index}]: changing {changed} after the optimizer made its state would need "
                        f"the state buffers {list(self._state_names(checked))} instead of "
                        f"{list(self._state_names(before))}; make a new optimizer"
                    )
                group.update(checked)
                self._checked_groups[index] = dict(group)

    def _buffers_in(self, state: dict[str, np.ndarray]) -> tuple[np.ndarray | None, ...]:
        """A parameter's state buffers in its kernel's order (None where absent: an option's buffer left out)."""
        return tuple(map(state.get, _kernel_call(self.kernel)[1]))

    def _check_buffers(self) -> None:
        """Every parameter still has the shape, dtype and layout its state was made for (a parameter resized in
        place would make a kernel run past its state) and is writeable, and every state buffer is still the one
        last checked, with the parameter's layout and writeable (else its state is checked whole again:
        ``_check_state``): checked before the first update, so that a refused step changes nothing. (The groups
        are walked directly, not through ``params``, whose list cost half of this check's 1 us per step on a
        2-core AMD EPYC Zen 4 VM.)"""
        layouts, states, taken = self._layouts, self.state, self._taken
        count = 0
        for group in self.param_groups:
            count += len(group["params"])
        if count != len(layouts):
            raise ValueError(
                f"param_groups hold {count} parameters, the optimizer took {len(layouts)}; "
                "make a new optimizer for other parameters"
            )
        index = 0
        for group_index, group in enumerate(self.param_groups):
            for param in group["params"]:
                flags, layout = param.flags, layouts[index]
                if (param.shape, param.dtype) != layout or not flags.c_contiguous:
                    raise ValueError(
                        f"params[{index}] changed since the optimizer took it (now {param.dtype} {param.shape}, was "
                        f"{layout[1]} {layout[0]}); make a new optimizer for it"
                    )
                if not flags.writeable:
                    raise ValueError(f"params[{index}] is read-only; an optimizer updates its parameters in place")
                state = states[index]
                if param is not taken[index] or not self._same_buffers(index, state, layout):
                    self._check_state(index, param, state, self._checked_groups[group_index])
                if self.scalar_state:
                    self._check_scalar_state(index, state)
                index += 1

    def _same_buffers(self, index: int, state: dict[str, Any], layout: tuple[tuple[int, ...], np.dtype]) -> bool:
        """Whether the state of ``params[index]`` holds the buffers last checked, each still writeable, C-contiguous
        and of the parameter's ``layout`` (shape and dtype may be assigned in place)."""
        shape, dtype = layout
        for name, buffer in zip(_kernel_call(self.kernel)[1], self._kernel_buffers[index]):
            if buffer is not None:
                flags = buffer.flags
                # (``is not``: NumPy's float dtypes are single objects; any other dtype takes the full check)
                if state.get(name) is not buffer or buffer.dtype is not dtype or buffer.shape != shape or not (
                    flags.writeable and flags.c_contiguous):  # fmt: skip
                    return False
        return True

    def _check_state(self, index: int, param: np.ndarray, state: dict[str, Any], group: dict[str, Any]) -> None:
        """``params[index]`` and its state buffers, checked whole where one was replaced (in ``param_groups`` or
        the state dict), removed or changed in place by hand: the parameter shares no memory with the others; each
        buffer its group's options use is a writeable array of the parameter's dtype, shape and layout sharing no
        memory with any parameter or other buffer (buffers the options do not use are ignored, as PyTorch's
        optimizers ignore them). Recorded for the kernel calls; raises naming the array otherwise."""
        others = [other for position, other in enumerate(self._taken) if position != index]
        others += [buffer for position, buffers in enumerate(self._kernel_buffers) if position != index
                   for buffer in buffers if buffer is not None]  # fmt: skip
        if any(np.shares_memory(param, other) for other in others):
            raise ValueError(f"params[{index}] shares memory with another parameter or an optimizer state buffer")
        checked = [param]
        for name in self._state_names(group):
            buffer = state.get(name)
            where = f"the optimizer state {name!r} of params[{index}]"
            _check_state_buffer(buffer, param, where)
            if any(np.shares_memory(buffer, other) for other in (*checked, *others)):
                raise ValueError(f"{where} shares memory with a parameter or another optimizer state buffer")
            checked.append(buffer)
        self._taken[index] = param
        self._kernel_buffers[index] = self._buffers_in({name: state[name] for name in self._state_names(group)})

    def _check_scalar_state(self, index: int, state: dict[str, Any]) -> None:
        """Each per-parameter scalar of the state (``scalar_state``) is still a writeable 0-d float64 array (a step
        writes it in place) holding a value a run can reach (``_scalar_state_problem``)."""
        for name in self.scalar_state:
            value = state.get(name)
            if not (isinstance(value, np.ndarray) and value.shape == () and value.dtype == np.float64
                    and value.flags.writeable):  # fmt: skip
                raise ValueError(
                    f"the optimizer state {name!r} of params[{index}] must be a writeable 0-d float64 array, got "
                    f"{value!r}"
                )
        problem = self._scalar_state_problem(state)
        if problem:
            raise ValueError(f"the optimizer state of params[{index}]: {problem}")

    def _scalar_state_problem(self, state: dict[str, Any]) -> str:
        """What makes a parameter's scalars of the state (``scalar_state``) impossible in a run, or ""."""
        return ""

    def apply(self, grads: list[np.ndarray], squares_of: int | None = None) -> float | None:
        """``step`` without the gradient checks, for callers that own the buffers (``Sequential``). With
        ``squares_of`` (an index into ``params``; one that names no parameter is an IndexError), returns the sum of
        squares of that parameter before the update, in float64, taken by its update's kernel (``with_squares``)
        instead of a pass of its own. Every check and every parameter's scalars come before the first update, so
        that a refused step changes nothing (the step count included)."""
        self._check_step(squares_of)
        return self._update(grads, squares_of)

    def _check_step(self, squares_of: int | None = None) -> None:
        """``apply``'s checks: the parameters and their state (``_check_buffers``), the groups' options
        (``_recheck_groups``), ``squares_of`` and the step count. A caller that owns the optimizer from one step to
        the next (no other code runs between them, as in ``fastopt.sklearn``'s epochs) checks once and then calls
        ``_update`` for each step: on a 2-core AMD EPYC Zen 3 VM these checks took 7.5 of a scikit-learn digits
        step's 145 us."""
        self._check_buffers()
        self._recheck_groups()
        if squares_of is not None and not 0 <= squares_of < len(self._layouts):
            raise IndexError(f"squares_of={squares_of} names no parameter (the optimizer has {len(self._layouts)})")
        step_count = self.step_count
        if type(step_count) is not int or step_count < 0:
            raise ValueError(f"step_count must be a non-negative integer, got {step_count!r}")
        # what the checked groups and backend give every step until the next check: the kernel's method and each
        # group's kernel options (a two-group Adam update of fastopt.sklearn's Fashion-MNIST network took 63.8
        # instead of 65.6 us on a 2-core AMD EPYC Zen 3 VM, interleaved)
        self._kernel_method = getattr(resolve_backend(self.backend), _kernel_call(self.kernel)[0])
        self._group_kernel_options = [self._kernel_options_of(group) for group in self.param_groups]

    def _update(self, grads: list[np.ndarray], squares_of: int | None = None) -> float | None:
        """The updates of one step after ``_check_step``: every parameter's scalars, then its kernel; the step count
        is restored if any of them raises."""
        step_count = self.step_count
        if step_count + 1 >= MAX_STEP_COUNT:
            raise OverflowError(f"{type(self).__name__} has made {step_count} steps, the most it can count")
        kernel = self._kernel_method
        self.step_count = step_count + 1
        try:
            hypers = self._step_hypers(step_count)
            squares = None
            for index, (param, buffers, hyper) in enumerate(zip(self._taken, self._kernel_buffers, hypers)):
                reported = kernel(param, grads[index], *buffers, index == squares_of, hyper)
                if reported is not None:
                    squares = reported
        except BaseException:
            self.step_count = step_count
            raise
        if self.scalar_state:
            index = 0
            for group in self.param_groups:
                for _ in group["params"]:
                    self._advance_state(group, self.state[index], step_count + 1)
                    index += 1
        return squares

    def _step_hypers(self, step_count: int) -> list[dict[str, Any]]:
        """Every parameter's kernel scalars for the step after ``step_count`` steps (``self.step_count`` already
        advanced), in parameter order."""
        hypers, index = [], 0
        for group, options in zip(self.param_groups, self._group_kernel_options):
            lr = decayed_lr(group, step_count)
            for _ in group["params"]:
                hypers.append(self._kernel_hyper(group, lr, self.state[index], options))
                index += 1
        return hypers

    def _advance_state(self, group: dict[str, Any], state: dict[str, np.ndarray], t: int) -> None:
        """Advance a parameter's scalars of the state (``scalar_state``) to step ``t``, once every update of the step
        is made."""

    def __getstate__(self) -> dict[str, Any]:
        # without what the last _check_step made for the steps after it (a method of this process's backend object):
        # the next _check_step makes it again
        return {key: value for key, value in self.__dict__.items() if key not in _MADE_BY_CHECK}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if "_taken" not in state:  # pickled before the checked arrays were kept: the next step checks them
            self._taken = list(self.params or [])
            self._kernel_buffers = [self._buffers_in(buffers) for buffers in self.state]

    # -------------------------------------------------------------- saving and loading
    def state_dict(self, copy: bool = True) -> dict[str, Any]:
        """A copy of everything the optimizer needs to continue bit-identically: its class, step count,
        defaults (``hyperparameters``), the groups' hyperparameters with the indices of their parameters, and
        each parameter's state buffers (``copy=False``: the live buffers, for writing them out without a copy)."""
        groups, start = [], 0
        for group in self.param_groups:
            count = len(group["params"])
            groups.append(
                {**{k: v for k, v in group.items() if k != "params"}, "params": list(range(start, start + count))}
            )
            start += count
        return {
            "optimizer": type(self).__name__,
            "step_count": self.step_count,
            "hyperparameters": dict(self.defaults),
            "param_groups": groups,
            "state": [
                {name: buffer.copy() if copy else buffer for name, buffer in state.items()} for state in self.state
            ],
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore ``state_dict()`` output, checked whole (``check_state_dict``) before anything changes."""
        checked = self.check_state_dict(state_dict)
        self.defaults = checked["hyperparameters"]
        for group, hyper in zip(self.param_groups, checked["param_groups"]):
            group.update(hyper)
        self._checked_groups = [dict(group) for group in self.param_groups]
        self.step_count = checked["step_count"]
        self.state = checked["state"]
        self._kernel_buffers = [self._buffers_in(state) for state in self.state]

    def check_state_dict(self, state_dict: dict[str, Any], params: ParamsLike | None = None) -> dict[str, Any]:
        """Check that ``state_dict`` fits this optimizer and its parameters (or, for an optimizer not bound yet,
        the ``params`` it would be bound to); return it normalized (fresh arrays, validated hyperparameters;
        ``param_groups`` may be missing, for one group of the defaults). Raises ValueError or TypeError naming
        the field; changes nothing."""
        bound = self.param_groups or (self._groups_from(params) if params is not None else None)
        if not bound:
            raise ValueError("load_state_dict needs the optimizer's parameters first")
        self._check_header(state_dict)
        all_params = [param for group in bound for param in group["params"]]
        hyper = self._validated_defaults(state_dict["hyperparameters"], all_params)
        groups = self._checked_param_groups(state_dict.get("param_groups"), hyper, bound)
        state = self._checked_state(state_dict["state"], groups, bound)
        return {"step_count": int(state_dict["step_count"]), "hyperparameters": hyper, "param_groups": groups,
                "state": state}  # fmt: skip

    def _check_header(self, state_dict: object) -> None:
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
        if step_count >= MAX_STEP_COUNT:
            raise ValueError(f"state_dict step_count must be below 2**53, got {step_count!r}")

    def _validated_defaults(self, given: object, params: list[np.ndarray]) -> dict[str, Any]:
        if not isinstance(given, dict):
            raise TypeError(f"state_dict hyperparameters must be a dict, got {type(given).__name__}")
        if set(given) != set(self.defaults):
            missing, unknown = set(self.defaults) - set(given), set(given) - set(self.defaults)
            raise ValueError(f"state_dict hyperparameters lack {sorted(missing)} and have unknown {sorted(unknown)}")
        hyper = self._validated(dict(given))
        _check_fits(hyper, params)
        return hyper

    def _checked_param_groups(
        self, given: object, defaults: dict[str, Any], bound: list[dict[str, Any]]
    ) -> list[dict[str, Any]]:
        if given is None:
            return [dict(defaults) for _ in bound]
        if not isinstance(given, (list, tuple)) or len(given) != len(bound):
            raise ValueError(f"state_dict param_groups must be a list of {len(bound)} groups")
        groups, start = [], 0
        for index, (group, mine) in enumerate(zip(given, bound)):
            count = len(mine["params"])
            if not isinstance(group, dict) or list(group.get("params", ())) != list(range(start, start + count)):
                raise ValueError(f"state_dict param_groups[{index}] must hold parameters {start}..{start + count - 1}")
            hyper = {k: v for k, v in group.items() if k != "params"}
            if set(hyper) != set(defaults):
                raise ValueError(f"state_dict param_groups[{index}] must hold exactly {sorted(defaults)}")
            groups.append(self._validated_group(hyper, mine["params"]))
            start += count
        return groups

    def _checked_state(
        self, given: object, groups: list[dict[str, Any]], bound: list[dict[str, Any]]
    ) -> list[dict[str, np.ndarray]]:
        params = [param for group in bound for param in group["params"]]
        if not isinstance(given, (list, tuple)):
            raise ValueError(f"state_dict state must be a list of one dict per parameter, got {type(given).__name__}")
        if len(given) != len(params):
            raise ValueError(f"state_dict holds state for {len(given)} parameters, the optimizer has {len(params)}")
        group_of = [group for group, mine in zip(groups, bound) for _ in mine["params"]]
        return [
            self._checked_buffers(index, buffers, param, group)
            for index, (buffers, param, group) in enumerate(zip(given, params, group_of))
        ]

    def _checked_buffers(
        self, index: int, buffers: object, param: np.ndarray, group: dict[str, Any]
    ) -> dict[str, np.ndarray]:
        names = {*self._state_names(group), *self.scalar_state}
        if not isinstance(buffers, dict) or set(buffers) != names:
            raise ValueError(f"state_dict state[{index}] must hold exactly {sorted(names)}")
        checked = {}
        for name, buffer in buffers.items():
            where = f"state_dict state[{index}][{name!r}]"
            shape, dtype = ((), np.dtype(np.float64)) if name in self.scalar_state else (param.shape, param.dtype)
            native = isinstance(buffer, np.ndarray) and buffer.dtype.newbyteorder("=") == dtype  # either byte order
            if not native or buffer.shape != shape:  # type: ignore[union-attr]
                found = f"{buffer.dtype} {buffer.shape}" if isinstance(buffer, np.ndarray) else type(buffer).__name__
                raise ValueError(f"{where} must be a {dtype} array of shape {shape}, got {found}")
            if not np.isfinite(buffer).all():
                raise ValueError(f"{where} contains NaN or Inf")
            checked[name] = np.array(buffer, dtype=dtype, order="C")
        problem = self._state_problem(checked, param.dtype)
        if problem:
            raise ValueError(f"state_dict state[{index}]: {problem}; no run of {type(self).__name__} makes that")
        return checked

    def _state_problem(self, state: dict[str, np.ndarray], dtype: np.dtype) -> str:
        """What makes a parameter's state impossible for this optimizer (a run never produces it), or ""."""
        for name in NONNEGATIVE_STATE & set(state):
            if (state[name] < 0).any():
                return f"{name!r} holds negative values (it is a sum or average of squares or magnitudes)"
        return ""

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.defaults.items())
        return f"{type(self).__name__}({options})"
