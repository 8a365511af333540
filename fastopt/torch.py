"""fastopt's fused optimizer kernels in a PyTorch training loop: a one-line switch.

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)      # before
    optimizer = fastopt.torch.Adam(model.parameters(), lr=1e-3)    # after (import fastopt.torch)

``SGD``, ``Adagrad``, ``RMSprop``, ``Adam``, ``AdamW``, ``NAdam``, ``Adamax`` and ``RAdam`` subclass
``torch.optim.Optimizer`` with PyTorch's class names, constructor signatures and defaults, parameter groups,
``step(closure=None)`` and ``state_dict`` format (``state[p]["exp_avg"]``, ``state[p]["step"]``, ... as tensors):
a state_dict saved by ``torch.optim.Adam`` loads into ``fastopt.torch.Adam`` and the other way round, and
``torch.optim.lr_scheduler`` drives them through ``param_groups[i]["lr"]``. ``Lion`` is fastopt's (PyTorch has none).

A step runs, for each parameter with a gradient, the update of the matching ``fastopt.optim`` class (its math and
its per-step scalars, bias corrections included, computed by that class in double precision from the parameter's
own step count, as PyTorch counts them) as one fused kernel call of fastopt's current backend
(``fastopt.use_backend``) on NumPy views of the memory of the parameter, its gradient and its state: nothing is
copied, the parameter tensor is updated in place (same ``data_ptr``; its autograd version counter is advanced, as
an in-place PyTorch operation would).

Parameters must be dense, contiguous float32 or float64 CPU tensors. PyTorch's switches keep their defaults
(``maximize=False``, ``foreach=None``, ``fused=None``, ``capturable=False``, ``differentiable=False``); another value
is refused, naming why; so are ``eps=0`` (fastopt's kernels need ``eps > 0``) and a loaded state no run makes (as
``fastopt.optim``'s ``load_state_dict`` refuses it). A state_dict saved with ``foreach``, ``fused`` or
``capturable`` set (they only choose PyTorch's code) loads with them set back to the defaults. Step counts are
tensors of PyTorch's dtype for them (float64 when that is the default dtype, else float32); NAdam's ``mu_product``
is kept in float64, where PyTorch keeps it in the same dtype as the step count.

PyTorch is optional: ``import fastopt`` never imports it; ``import fastopt.torch`` needs it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any, ClassVar, NamedTuple

import numpy as np

try:
    import torch
    from torch.optim.optimizer import ParamsT
except ImportError as error:
    raise ImportError(
        "fastopt.torch needs PyTorch (fastopt itself does not); install its CPU build: "
        "pip install torch --index-url https://download.pytorch.org/whl/cpu"
    ) from error

from fastopt import optim
from fastopt._checks import DTypeError, check_scalar
from fastopt.backend import Backend, resolve_backend
from fastopt.kernel_table import KERNELS
from fastopt.optim import optimizer as base

__all__ = [
    "SGD",
    "AdaGrad",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "FusedOptimizer",
    "Lion",
    "NAdam",
    "RAdam",
    "RMSProp",
    "RMSprop",
]

FLOAT_DTYPES = (torch.float32, torch.float64)
_IMPLEMENTATION = "it chooses one of PyTorch's implementations; fastopt.torch always runs fastopt's fused kernel"
# PyTorch's switches, the only value fastopt's kernels honour (PyTorch's default), and why another is refused.
SWITCHES: dict[str, tuple[object, str]] = {
    "maximize": (False, "fastopt's kernels minimize: minimize the negated objective instead"),
    "foreach": (None, _IMPLEMENTATION),
    "fused": (None, _IMPLEMENTATION),
    "capturable": (False, "it is for CUDA graphs; fastopt.torch updates CPU tensors"),
    "differentiable": (False, "fastopt's kernels update parameters in place, outside autograd"),
}
# The switches that choose PyTorch's code, not the math: set back to their defaults when a state_dict is loaded.
IMPLEMENTATION_SWITCHES = ("foreach", "fused", "capturable")


def _step_dtype() -> torch.dtype:
    """The dtype PyTorch gives its step counters: float64 when that is the default dtype, else float32."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _is_tensor_valued(value: object) -> bool:
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(item, torch.Tensor) for item in value)
    )


def _check_dense_cpu_float(tensor: torch.Tensor, where: str) -> None:
    if tensor.layout != torch.strided:
        raise TypeError(
            f"{where} is sparse ({tensor.layout}); fastopt.torch needs dense tensors "
            "(torch.optim.SparseAdam takes sparse gradients)"
        )
    if tensor.device.type != "cpu":
        raise ValueError(f"{where} is on {tensor.device}; fastopt.torch updates CPU tensors (use torch.optim there)")
    if tensor.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{where} is {tensor.dtype}; fastopt.torch needs float32 or float64 tensors")


def _param_array(param: object, where: str) -> np.ndarray:
    """A NumPy view of a parameter's memory (updated in place by the kernels), after checking the parameter."""
    if not isinstance(param, torch.Tensor):
        raise TypeError(f"{where} is a {type(param).__name__}, not a torch.Tensor")
    _check_dense_cpu_float(param, where)
    if not param.is_contiguous():
        raise ValueError(
            f"{where} is not contiguous (strides {param.stride()}); fastopt's kernels update a parameter's memory "
            "in place: make it contiguous before building the optimizer (param.data = param.data.contiguous())"
        )
    return param.detach().numpy()


def _grad_array(grad: torch.Tensor, param: np.ndarray, where: str) -> np.ndarray:
    """A NumPy view of a gradient (of a contiguous copy when it is not contiguous), which the kernels only read."""
    _check_dense_cpu_float(grad, f"the gradient of {where}")
    array = (grad.detach() if grad.requires_grad else grad).contiguous().numpy()  # create_graph: grads need grad
    if array.dtype != param.dtype or array.shape != param.shape:
        raise ValueError(
            f"the gradient of {where} is {array.dtype} {array.shape}, the parameter {param.dtype} {param.shape}"
        )
    if np.may_share_memory(array, param):  # both contiguous: overlapping bounds are shared memory
        raise ValueError(f"the gradient of {where} shares memory with the parameter")
    return array


def _check_disjoint(params: list[torch.Tensor]) -> None:
    """No two parameters share memory (one update would read what another wrote): their spans, sorted by start,
    must not overlap."""
    spans = sorted(
        (param.data_ptr(), param.data_ptr() + param.numel() * param.element_size(), index)
        for index, param in enumerate(params)
        if param.numel() > 0
    )
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise ValueError(f"parameters {min(first, second)} and {max(first, second)} share memory")


def _check_step_count(value: object, where: str, loading: bool) -> int:
    """A parameter's step count (None: no state yet): a tensor of one element (in a loaded state_dict also a
    number) holding a whole number >= 0."""
    if value is None:
        return 0
    number = value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value
    if (
        (not loading and not isinstance(value, torch.Tensor))
        or isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not float(number).is_integer()
        or number < 0
    ):
        raise ValueError(f"the optimizer state 'step' of {where} must hold a whole number >= 0, got {value!r}")
    return int(number)


def _check_state_tensor(buffer: object, shape: tuple[int, ...], dtype: torch.dtype, what: str, loading: bool) -> None:
    """A state buffer of the parameter's shape; to step with, also of ``dtype``, contiguous and on the CPU (a
    loaded one is cast and moved by PyTorch, then made contiguous); to load, finite (a full pass, once)."""
    fits = isinstance(buffer, torch.Tensor) and buffer.shape == shape and buffer.is_floating_point()
    if fits and not loading:
        fits = buffer.dtype == dtype and buffer.is_cpu and buffer.is_contiguous()
    if fits and loading:
        fits = bool(torch.isfinite(buffer).all())
    if not fits:
        needs = "a finite real tensor" if loading else f"a contiguous {dtype} CPU tensor"
        raise ValueError(f"{what} must be {needs} of shape {tuple(shape)}")


def _memory_of(tensors: tuple[tuple[str, torch.Tensor], ...]) -> list[tuple[int, torch.Size]]:
    return [(tensor.data_ptr(), tensor.shape) for _, tensor in tensors]


def _check_possible(state: dict[str, Any], param: torch.Tensor, plan: GroupPlan, where: str) -> None:
    """A loaded state is one a run of the group's optimizer can make (``fastopt.optim``'s check: sums and averages
    of squares not negative, a centered variance not negative, NAdam's ``mu_product`` in [0, 1]), judged in the
    dtype it will be cast to."""
    arrays = {}
    for name, torch_name in plan.torch_names.items():
        if name != "step":
            dtype = torch.float64 if name in plan.scalar_names else param.dtype
            arrays[name] = state[torch_name].detach().to("cpu", dtype).numpy()
    calculator = plan.calculator
    problem = calculator._state_problem(arrays, param.detach().numpy().dtype)
    if problem:
        raise ValueError(f"the optimizer state of {where}: {problem}; no run of {type(calculator).__name__} makes that")


class GroupPlan:
    """What steps need of a group's options, made again only when they change: the *calculator*, an instance of
    the ``fastopt.optim`` class made from the options (validated by it, with its messages), whose ``_kernel_hyper``
    gives the kernel's scalars for a step; the kernel; the state's names (fastopt's -> PyTorch's, "step" included
    when counted)."""

    def __init__(self, optimizer: FusedOptimizer, calculator: optim.Optimizer) -> None:
        self.calculator = calculator
        self.hyper = calculator.defaults
        kernel = KERNELS[calculator.kernel]
        self.kernel_method = kernel.method
        self.kernel_buffers = [array.name for array in kernel.arrays[2:]]  # after param and grad, in order
        names = (*calculator._state_names(calculator.defaults), *calculator.scalar_state)
        self.torch_names = {name: optimizer._torch_name(name) for name in names}
        if optimizer.counts_steps:
            self.torch_names["step"] = "step"
        self.scalar_names = set(calculator.scalar_state)
        # What a parameter's state views depend on (not the hyperparameters' values: a schedule changing lr each
        # step keeps them).
        self.state_layout = (tuple(self.torch_names.items()), tuple(self.kernel_buffers))
        # The scalars depend on the step alone (NAdam's also on the parameter's mu_product): made once per step.
        self.shares_hyper = not calculator.scalar_state


class ViewCache(NamedTuple):
    """NumPy views of one parameter's state (fastopt's names, "step" too; ``buffers``: the kernel's state arguments
    in order), valid while the group plan's ``state_layout``, the parameter's dtype and shape, the state's tensors
    and their memory (``memory``: each one's address and shape; ``tensor.data = ...`` or ``resize_`` keep the tensor
    object but may free the memory a view reads) are the same."""

    state_layout: tuple
    layout: tuple[np.dtype, tuple[int, ...]]
    tensors: tuple[tuple[str, torch.Tensor], ...]
    memory: list[tuple[int, torch.Size]]
    views: dict[str, np.ndarray]
    buffers: tuple[np.ndarray | None, ...]


class Update(NamedTuple):
    """One parameter's part of a step, checked: its tensor, the views of it and its gradient, its group's plan
    and the views of its state (None before its first step: made then)."""

    param: torch.Tensor
    param_array: np.ndarray
    grad_array: np.ndarray
    plan: GroupPlan
    state: ViewCache | None
    place: tuple[int, dict[str, Any], int]  # (group index, group, index in it), for messages


class FusedOptimizer(torch.optim.Optimizer):
    """The base of fastopt.torch's optimizers: a ``torch.optim.Optimizer`` whose step runs the kernel of
    ``fastopt_class`` (the ``fastopt.optim`` optimizer with the same math), through a ``GroupPlan`` per group."""

    fastopt_class: ClassVar[type[optim.Optimizer]]
    torch_names: ClassVar[dict[str, str]] = {}  # fastopt's option and state names that PyTorch spells otherwise
    counts_steps: ClassVar[bool] = True  # state["step"], as PyTorch keeps it (its SGD does not)
    eager_state: ClassVar[bool] = False  # the state is made with the group (PyTorch's Adagrad), not at the first step

    def __init__(self, params: ParamsT, defaults: dict[str, Any]) -> None:
        self._forget_views()
        self._check_switches(defaults)
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._forget_views()

    def _forget_views(self) -> None:
        self._plans: dict[int, tuple[object, GroupPlan]] = {}
        self._views: dict[torch.Tensor, ViewCache] = {}

    # ------------------------------------------------------------------ hyperparameters
    def _fastopt_class(self, group: dict[str, Any]) -> type[optim.Optimizer]:
        return self.fastopt_class

    def _torch_name(self, name: str) -> str:
        return self.torch_names.get(name, name)

    def _check_switches(self, group: dict[str, Any]) -> None:
        for name, (default, reason) in SWITCHES.items():
            if name in group and group[name] != default:
                name_value = f"{type(self).__name__}: {name}={group[name]!r}"
                raise ValueError(f"{name_value} is not supported ({reason}); leave it at {default!r}")

    def _fastopt_options(self, group: dict[str, Any]) -> dict[str, Any]:
        """The keyword arguments of ``fastopt_class`` for a group (PyTorch has no ``decay`` but Adagrad's lr_decay)."""
        options = {}
        for name in ("lr", *self._fastopt_class(group).options):
            key = self._torch_name(name)
            if _is_tensor_valued(group[key]):
                raise TypeError(f"{key} is a Tensor; fastopt.torch takes Python numbers (its scalars are doubles)")
            options[name] = group[key]
        decay_key = self.torch_names.get("decay")
        options["decay"] = 0.0 if decay_key is None else check_scalar(group[decay_key], decay_key)
        return options

    def _new_plan(self, group: dict[str, Any], arrays: list[np.ndarray]) -> GroupPlan:
        """A group's plan, its options validated by ``fastopt_class`` and checked against its parameters' dtypes."""
        calculator = self._fastopt_class(group)(None, **self._fastopt_options(group))
        if arrays:
            base._check_fits(calculator.defaults, arrays)
        return GroupPlan(self, calculator)

    def _plan(self, index: int, group: dict[str, Any], arrays: list[np.ndarray]) -> GroupPlan:
        """The group's plan, made again only when its options or its parameters' dtypes changed."""
        key = (self._fastopt_options(group), {array.dtype for array in arrays})
        cached = self._plans.get(index)
        if cached is None or cached[0] != key:
            cached = self._plans[index] = (key, self._new_plan(group, arrays))
        return cached[1]

    # ------------------------------------------------------------------ parameters and state
    @staticmethod
    def _where(group_index: int, group: dict[str, Any], index: int) -> str:
        """How messages name a parameter: its name when the group has them, else its place."""
        names = group.get("param_names")
        return repr(names[index]) if names else f"param_groups[{group_index}]['params'][{index}]"

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """PyTorch's ``add_param_group``, then checks of the group's switches, options and parameters (dense,
        contiguous, float32/float64, on the CPU, sharing no memory): a refused group is not added."""
        super().add_param_group(param_group)
        index = len(self.param_groups) - 1
        group = self.param_groups[index]
        try:
            self._check_switches(group)
            arrays = [_param_array(param, self._where(index, group, i)) for i, param in enumerate(group["params"])]
            _check_disjoint([param for each in self.param_groups for param in each["params"]])
            plan = self._plan(index, group, arrays)
        except (TypeError, ValueError):
            self.param_groups.pop()
            self._plans.pop(index, None)
            raise
        if self.eager_state:
            for param in group["params"]:
                self._complete_state(self.state[param], param, plan)

    def _check_state(self, state: object, param: torch.Tensor, plan: GroupPlan, where: str, loading: bool) -> bool:
        """A parameter's state (stepping: ``self.state``'s; loading: a state_dict's) fits its group's options and
        the parameter: every entry the options need is there, or, before the parameter's first step, some may be
        missing (made at that step). Returns whether the state is complete."""
        if not isinstance(state, dict):
            raise TypeError(f"the optimizer state of {where} must be a dict, got {type(state).__name__}")
        names = list(plan.torch_names.values())
        missing = [name for name in names if name not in state]
        steps = _check_step_count(state.get("step"), where, loading) if self.counts_steps else len(state)
        if missing and steps > 0:
            raise ValueError(
                f"the optimizer state of {where} lacks {missing}, which the group's options need after its first "
                "step (amsgrad, centered or momentum turned on later?); make a new optimizer"
            )
        for name in names:
            if name != "step" and name not in missing:
                scalar = name in plan.scalar_names
                shape, dtype = ((), torch.float64) if scalar else (param.shape, param.dtype)
                _check_state_tensor(state[name], shape, dtype, f"the optimizer state {name!r} of {where}", loading)
        if loading and not missing:
            _check_possible(state, param, plan, where)
        return not missing

    def _complete_state(self, state: dict[str, Any], param: torch.Tensor, plan: GroupPlan) -> None:
        """Make the state a parameter's group needs and it lacks (before its first update): PyTorch's step
        counter, the buffers at their initial value, the per-parameter float64 scalars."""
        calculator = plan.calculator
        if self.counts_steps and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=_step_dtype())
        for name in calculator._state_names(plan.hyper):
            if self._torch_name(name) not in state:
                start = calculator._initial_state(name, plan.hyper)
                state[self._torch_name(name)] = torch.full_like(param, start, memory_format=torch.contiguous_format)
        for name, start in calculator.scalar_state.items():
            if name not in state:
                state[name] = torch.tensor(start, dtype=torch.float64)

    def _state_views(
        self, param: torch.Tensor, array: np.ndarray, plan: GroupPlan, place: tuple[int, dict[str, Any], int]
    ) -> ViewCache | None:
        """The NumPy views of a parameter's state, from the cache while it is valid, else after checking the state
        (None when it is incomplete: the first step makes it). ``place``: the parameter's, for messages."""
        state = self.state.get(param)
        if not state:
            return None
        cached, layout = self._views.get(param), (array.dtype, array.shape)
        if (
            cached is not None
            and cached.state_layout == plan.state_layout
            and cached.layout == layout
            and all(state.get(name) is tensor for name, tensor in cached.tensors)
            and _memory_of(cached.tensors) == cached.memory
        ):
            return cached
        if not self._check_state(state, param, plan, self._where(*place), loading=False):
            return None
        return self._new_views(param, layout, state, plan)

    def _new_views(self, param: torch.Tensor, layout: tuple, state: dict[str, Any], plan: GroupPlan) -> ViewCache:
        tensors = tuple((torch_name, state[torch_name]) for torch_name in plan.torch_names.values())
        views = {name: state[torch_name].numpy() for name, torch_name in plan.torch_names.items()}
        buffers = tuple(views.get(name) for name in plan.kernel_buffers)
        cached = self._views[param] = ViewCache(plan.state_layout, layout, tensors, _memory_of(tensors), views, buffers)
        return cached

    # ------------------------------------------------------------------ stepping
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter that has a gradient (others are skipped), as ``torch.optim``'s step:
        ``closure`` (re-evaluating the model, with gradients enabled) is called first and its loss returned.
        Everything is checked before the first parameter changes: a refused step changes nothing."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates = self._planned_updates()
        backend, hypers = resolve_backend(None), {}
        prepared = [self._prepared(update, hypers) for update in updates]  # every scalar before the first update
        for update, (state, t, hyper) in zip(updates, prepared):
            self._apply(backend, update, state, t, hyper)
        if updates:
            torch.autograd.graph.increment_version([update.param for update in updates])
        return loss

    def _planned_updates(self) -> list[Update]:
        updates = []
        for group_index, group in enumerate(self.param_groups):
            checked = self._checked_arrays(group_index, group)
            if not checked:
                continue
            self._check_switches(group)
            plan = self._plan(group_index, group, [array for _, _, array, _ in checked])
            for index, param, array, grad in checked:
                place = (group_index, group, index)
                updates.append(Update(param, array, grad, plan, self._state_views(param, array, plan, place), place))
        return updates

    def _checked_arrays(self, group_index: int, group: dict[str, Any]) -> list[tuple]:
        """(index, parameter, its view, its gradient's view) of each parameter of a group that has a gradient.
        One quick test of the usual case; otherwise the checks that name the problem (or copy a non-contiguous
        gradient, detach one that requires grad)."""
        checked = []
        for index, param in enumerate(group["params"]):
            grad = param.grad
            if grad is None:
                continue
            if (
                param.is_cpu
                and param.dtype in FLOAT_DTYPES
                and param.layout == torch.strided
                and param.is_contiguous()
                and grad.is_cpu
                and grad.dtype == param.dtype
                and grad.shape == param.shape  # grad.data = ... can change them
                and grad.layout == torch.strided
                and not grad.requires_grad
                and grad.is_contiguous()
            ):
                array, grad_array = param.detach().numpy(), grad.numpy()
                if not np.may_share_memory(array, grad_array):
                    checked.append((index, param, array, grad_array))
                    continue
            where = self._where(group_index, group, index)
            array = _param_array(param, where)
            checked.append((index, param, array, _grad_array(grad, array, where)))
        return checked

    def _prepared(self, update: Update, hypers: dict[tuple[GroupPlan, int], dict]) -> tuple[ViewCache, int, dict]:
        """One parameter's state views (made at its first step), step t (its own count + 1: PyTorch's per-parameter
        steps) and kernel scalars (those of ``fastopt_class`` at step t; ``hypers``: the ones made this step),
        checked: a count or scalar state set by hand to what no run holds is refused before any update."""
        plan, state = update.plan, update.state
        first = state is None
        if state is None:
            tensors = self.state[update.param] if plan.torch_names else {}  # PyTorch's SGD without momentum: none
            self._complete_state(tensors, update.param, plan)
            state = self._new_views(update.param, (update.param_array.dtype, update.param_array.shape), tensors, plan)
        if self.counts_steps:
            step = float(state.views["step"])
            problem = "" if step.is_integer() and 0 <= step < base.MAX_STEP_COUNT - 1 else f"'step' holds {step!r}"
            t = int(step) + 1 if not problem else 0
        else:
            problem, t = "", 1 if first else 2
        if not problem and plan.scalar_names:
            problem = plan.calculator._scalar_state_problem(state.views)
        if problem:
            raise ValueError(f"the optimizer state of {self._where(*update.place)}: {problem}")
        hyper = hypers.get((plan, t))
        if hyper is None:
            plan.calculator.step_count = t  # the scalars of this parameter's step
            hyper = plan.calculator._kernel_hyper(plan.hyper, base.decayed_lr(plan.hyper, t - 1), state.views)
            if plan.shares_hyper:
                hypers[plan, t] = hyper
        return state, t, hyper

    def _apply(self, backend: Backend, update: Update, state: ViewCache, t: int, hyper: dict) -> None:
        """The kernel call of one parameter at step ``t``, then its state's step count and scalars advanced."""
        plan = update.plan
        with_squares = False  # (no sum of squares wanted: only fastopt.sklearn asks for one)
        getattr(backend, plan.kernel_method)(update.param_array, update.grad_array, *state.buffers, with_squares, hyper)
        plan.calculator._advance_state(plan.hyper, state.views, t)
        if self.counts_steps:
            state.views["step"][...] = t

    # ------------------------------------------------------------------ loading
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """PyTorch's ``load_state_dict`` (any state_dict of the same PyTorch optimizer, fused or not), after
        checking every group's options and switches and every parameter's state against the parameters: a refused
        state_dict changes nothing. As PyTorch's, it keeps the given tensors where they already have the
        parameter's dtype and device (load a copy to keep the source apart). Then the state is made fit for the
        kernels (contiguous; ``mu_product`` float64) and the implementation switches are set back to defaults."""
        self._check_loadable(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
            group.update({name: SWITCHES[name][0] for name in IMPLEMENTATION_SWITCHES if name in group})
            for param in group["params"]:
                self._normalize_loaded_state(self.state.get(param, {}))

    def _check_loadable(self, state_dict: dict[str, Any]) -> None:
        saved_groups, saved_state = state_dict["param_groups"], state_dict["state"]
        if len(saved_groups) != len(self.param_groups) or any(
            len(saved["params"]) != len(group["params"]) for saved, group in zip(saved_groups, self.param_groups)
        ):
            return  # PyTorch's load_state_dict refuses it, with its messages
        for group_index, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            options = {**self.defaults, **saved, "params": group["params"]}
            options.update({name: SWITCHES[name][0] for name in IMPLEMENTATION_SWITCHES if name in options})
            self._check_switches(options)
            places = [self._where(group_index, group, index) for index in range(len(group["params"]))]
            plan = self._new_plan(
                options, [_param_array(param, where) for param, where in zip(group["params"], places)]
            )
            for saved_id, param, where in zip(saved["params"], group["params"], places):
                if saved_id in saved_state:
                    self._check_state(saved_state[saved_id], param, plan, where, loading=True)

    def _normalize_loaded_state(self, state: dict[str, Any]) -> None:
        """PyTorch casts loaded state to the parameter's dtype (but for "step"): the per-parameter scalars go back
        to float64; a step count saved as a number becomes a tensor; buffers become contiguous."""
        for name, value in state.items():
            if name == "step" and not isinstance(value, torch.Tensor):
                state[name] = torch.tensor(float(value), dtype=_step_dtype())
            elif name in self.fastopt_class.scalar_state:
                state[name] = value.to(torch.float64).reshape(())
            elif isinstance(value, torch.Tensor):
                state[name] = value.contiguous()


class SGD(FusedOptimizer):
    """``torch.optim.SGD`` (its signature, defaults, groups and state), updated by fastopt's fused ``sgd_step``
    with the math of ``fastopt.optim.SGD``: ``g = grad + weight_decay p``; with momentum ``b = g`` on a
    parameter's first step (no ``momentum_buffer`` yet), then ``b = momentum b + (1 - dampening) g`` and
    ``g = g + momentum b`` (nesterov) or ``g = b``; ``p = p - lr g``."""

    fastopt_class = optim.SGD
    counts_steps = False

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
                 weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class Adagrad(FusedOptimizer):
    """``torch.optim.Adagrad``, updated by fastopt's fused ``adagrad_step`` with the math of
    ``fastopt.optim.AdaGrad`` (whose ``decay`` is ``lr_decay``): ``g = grad + weight_decay p``; ``sum = sum + g^2``
    (from ``initial_accumulator_value``); ``p = p - lr_t g / (sqrt(sum) + eps)``, ``lr_t = lr / (1 + lr_decay (t-1))``.
    The state is made with the optimizer, as PyTorch's Adagrad does."""

    fastopt_class = optim.AdaGrad
    torch_names = {"decay": "lr_decay", "sum_squares": "sum"}
    eager_state = True

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0, weight_decay: float = 0,
                 initial_accumulator_value: float = 0, eps: float = 1e-10, foreach: bool | None = None, *,
                 maximize: bool = False, differentiable: bool = False, fused: bool | None = None) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class RMSprop(FusedOptimizer):
    """``torch.optim.RMSprop``, updated by fastopt's fused ``rmsprop_step`` with the math of
    ``fastopt.optim.RMSProp``: ``g = grad + weight_decay p``; ``v = alpha v + (1 - alpha) g^2``; centered:
    ``a = alpha a + (1 - alpha) g``, ``d = sqrt(v - a^2) + eps``, else ``d = sqrt(v) + eps``; momentum:
    ``b = momentum b + g / d``, ``p = p - lr b``, else ``p = p - lr g / d``."""

    fastopt_class = optim.RMSProp

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0, momentum: float = 0, centered: bool = False, capturable: bool = False,
                 foreach: bool | None = None, maximize: bool = False, differentiable: bool = False) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class Adam(FusedOptimizer):
    """``torch.optim.Adam``, updated by fastopt's fused ``adam_step`` with the math of ``fastopt.optim.Adam``
    (``decoupled_weight_decay=True``: of ``fastopt.optim.AdamW``): ``g = grad + weight_decay p`` (decoupled:
    ``p = p (1 - lr weight_decay)`` first, ``g = grad``); ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g^2``;
    amsgrad: ``v = max_exp_avg_sq = max(max_exp_avg_sq, v)``; ``p = p - (lr / (1 - b1^t)) m / (sqrt(v) /
    sqrt(1 - b2^t) + eps)``, t the parameter's step."""

    fastopt_class = optim.Adam

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, amsgrad: bool = False, *, foreach: bool | None = None,
                 maximize: bool = False, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None, decoupled_weight_decay: bool = False) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on

    def _fastopt_class(self, group: dict[str, Any]) -> type[optim.Optimizer]:
        decoupled = base.check_option(group["decoupled_weight_decay"], "decoupled_weight_decay")
        return optim.AdamW if decoupled else optim.Adam


class AdamW(Adam):
    """``torch.optim.AdamW``: ``Adam`` with ``decoupled_weight_decay=True`` and ``weight_decay=1e-2`` by default,
    the math of ``fastopt.optim.AdamW``."""

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
                 foreach: bool | None = None, capturable: bool = False, differentiable: bool = False,
                 fused: bool | None = None) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach, maximize=maximize,
                         capturable=capturable, differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True)
    # fmt: on


class NAdam(FusedOptimizer):
    """``torch.optim.NAdam``, updated by fastopt's fused ``nadam_step`` with the math of ``fastopt.optim.NAdam``
    (its docstring: momentum-decay schedule ``mu_t``, their product kept per parameter in ``state[p]["mu_product"]``,
    float64)."""

    fastopt_class = optim.NAdam

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, momentum_decay: float = 4e-3,
                 decoupled_weight_decay: bool = False, *, foreach: bool | None = None, maximize: bool = False,
                 capturable: bool = False, differentiable: bool = False) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class Adamax(FusedOptimizer):
    """``torch.optim.Adamax``, updated by fastopt's fused ``adamax_step`` with the math of
    ``fastopt.optim.Adamax``: ``g = grad + weight_decay p``; ``m = b1 m + (1 - b1) g``;
    ``u = max(b2 u, |g| + eps)``; ``p = p - (lr / (1 - b1^t)) m / u``."""

    fastopt_class = optim.Adamax

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 2e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, foreach: bool | None = None, *, maximize: bool = False,
                 differentiable: bool = False, capturable: bool = False) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class RAdam(FusedOptimizer):
    """``torch.optim.RAdam``, updated by fastopt's fused ``radam_step`` with the math of ``fastopt.optim.RAdam``
    (its docstring: the variance rectification from step ``t`` where ``rho_t > 5``)."""

    fastopt_class = optim.RAdam

    # fmt: off
    def __init__(self, params: ParamsT, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0, decoupled_weight_decay: bool = False, *,
                 foreach: bool | None = None, maximize: bool = False, capturable: bool = False,
                 differentiable: bool = False) -> None:
        super().__init__(params, base.constructor_options(locals()))
    # fmt: on


class Lion(FusedOptimizer):
    """fastopt's Lion for PyTorch (PyTorch has none), updated by fastopt's fused ``lion_step`` with the math of
    ``fastopt.optim.Lion``: ``c = b1 m + (1 - b1) grad``; ``p = p - lr (sign(c) + weight_decay p)``;
    ``m = b2 m + (1 - b2) grad`` (state ``exp_avg``, no step count). Use an lr 3-10x smaller than AdamW's."""

    fastopt_class = optim.Lion
    counts_steps = False

    def __init__(
        self, params: ParamsT, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99), weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, base.constructor_options(locals()))


# fastopt.optim's spellings of two of PyTorch's names, so that either import works.
RMSProp = RMSprop
AdaGrad = Adagrad
