"""The kernel table (``fastopt/kernel_table.py``) is the one declaration of every kernel, and everything else agrees
with it: ``docs/kernels.md`` is its rendering, every backend implements exactly its trusted methods, the public
methods have its signatures and refuse what its ranges exclude, the optimizers pass the hyperparameters it names,
and the compiled hyperparameter structs have exactly its fields."""

from __future__ import annotations

import difflib
import importlib
import inspect
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kernel_arguments import accepted_edges, call_public, call_trusted, kernel_arguments, refused_values

from fastopt import optim
from fastopt.backend import Backend, available_backends, resolve_backend
from fastopt.kernel_table import KERNELS, OPTIMIZER_KERNELS, Array, Kernel, render_markdown
from fastopt.numpy_backend import NumpyBackend

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = available_backends()
OPTIMIZERS = [KERNELS[name] for name in OPTIMIZER_KERNELS]
HYPER_SCALARS = [(kernel, scalar) for kernel in OPTIMIZERS for scalar in kernel.hyper]


def snapshot(values: dict[str, Any]) -> dict[str, bytes]:
    return {name: value.tobytes() for name, value in values.items() if isinstance(value, np.ndarray)}


# ------------------------------------------------------------------------------------------- the documentation
def test_docs_are_rendered_from_the_table() -> None:
    path = ROOT / "docs" / "kernels.md"
    if not path.exists():
        pytest.skip(f"{path} is not beside these tests (they run from an installed copy)")
    written, rendered = path.read_text(), render_markdown()
    diff = "\n".join(list(difflib.unified_diff(written.splitlines(), rendered.splitlines(), lineterm=""))[:20])
    assert written == rendered, f"docs/kernels.md is stale: run python scripts/make_kernel_docs.py\n{diff}"


def test_docs_name_every_kernel_and_argument() -> None:
    """The rendering holds every kernel's heading, math and arguments (so that a stale check is a full one)."""
    text = render_markdown()
    for kernel in KERNELS.values():
        assert f"### `{kernel.name}`" in text and kernel.math in text
        for param in (*kernel.params, *kernel.hyper):
            assert f"| `{param.name}` |" in text, f"{kernel.name}: {param.name} is not documented"


# ------------------------------------------------------------------------------------------- the signatures
def _own_private_methods(cls: type) -> set[str]:
    """Single-underscore methods a backend class defines (itself or its bases below ``Backend``)."""
    return {
        name
        for klass in cls.__mro__
        if issubclass(klass, Backend) and klass is not Backend
        for name, value in vars(klass).items()
        if name.startswith("_") and not name.startswith("__") and callable(value)
    }


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_backend_implements_exactly_the_trusted_methods(backend_name: str) -> None:
    cls = type(resolve_backend(backend_name))
    for kernel in KERNELS.values():
        method = getattr(cls, kernel.method, None)
        assert callable(method), f"{cls.__name__} does not implement {kernel.method}"
        parameters = list(inspect.signature(method).parameters.values())
        assert parameters[0].name == "self"
        names = tuple(parameter.name for parameter in parameters[1:])
        assert names == kernel.trusted_parameters(), f"{cls.__name__}.{kernel.method}{names}"
        kinds = {parameter.kind for parameter in parameters}
        assert kinds == {inspect.Parameter.POSITIONAL_OR_KEYWORD}, f"{cls.__name__}.{kernel.method}: {kinds}"
    # the base class's own private methods (the compiled training step) are its interface, not kernels
    extra = _own_private_methods(cls) - {kernel.method for kernel in KERNELS.values()} - set(vars(Backend))
    assert not extra, f"{cls.__name__} has kernel-like methods the table lacks: {sorted(extra)}"


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_trusted_method_runs_with_the_table_arguments(backend_name: str, kernel_name: str) -> None:
    """Each trusted method takes the table's arguments in order (``hyper`` as one mapping) and writes the same
    outputs as the checked public method of the same call."""
    kernel, backend = KERNELS[kernel_name], resolve_backend(backend_name)
    trusted, public = kernel_arguments(kernel, seed=1), kernel_arguments(kernel, seed=1)
    with np.errstate(all="ignore"):
        trusted_result, public_result = call_trusted(backend, kernel, trusted), call_public(backend, kernel, public)
    if kernel.returns == "value":
        assert trusted_result == public_result
    for spec in kernel.arrays:
        if trusted[spec.name] is not None:
            np.testing.assert_array_equal(trusted[spec.name], public[spec.name], err_msg=f"{kernel_name} {spec.name}")


def _expected_public_parameters(kernel: Kernel) -> list[tuple[str, Any, Any]]:
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    expected = []
    for param in kernel.params:
        if isinstance(param, Array):
            default = None if param.optional else inspect.Parameter.empty
        else:
            default = inspect.Parameter.empty if param.default is None else param.default
        expected.append((param.name, positional, default))
    return expected + [
        (scalar.name, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty) for scalar in kernel.hyper
    ]


@pytest.mark.parametrize("kernel_name", sorted(KERNELS))
def test_public_method_has_the_table_signature(kernel_name: str) -> None:
    """Arrays and scalars positional in table order (optional arrays default to None), hyperparameters keyword-only;
    no backend overrides a public method (it would skip the checks)."""
    kernel = KERNELS[kernel_name]
    method = getattr(Backend, kernel.name)
    parameters = list(inspect.signature(method).parameters.values())
    assert parameters[0].name == "self"
    actual = [(parameter.name, parameter.kind, parameter.default) for parameter in parameters[1:]]
    assert actual == _expected_public_parameters(kernel)
    for name in BACKENDS:
        assert getattr(type(resolve_backend(name)), kernel.name) is method, (
            f"the {name} backend overrides {kernel.name}"
        )


def test_backend_public_methods_are_the_table() -> None:
    """Every public method of ``Backend`` is a kernel of the table or one of the three backend settings."""
    public = {name for name, value in vars(Backend).items() if not name.startswith("_") and callable(value)}
    assert public == set(KERNELS) | {"training", "set_num_threads", "build_info"}


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("kernel_name", OPTIMIZER_KERNELS)
def test_hyperparameters_are_refused_by_position(backend_name: str, kernel_name: str) -> None:
    kernel = KERNELS[kernel_name]
    values = kernel_arguments(kernel)
    before = snapshot(values)
    positional = [values[param.name] for param in kernel.params] + [values[spec.name] for spec in kernel.hyper]
    with pytest.raises(TypeError):
        getattr(resolve_backend(backend_name), kernel.name)(*positional)
    assert snapshot(values) == before


# ------------------------------------------------------------------------------------------- hyperparameters
class RecordingBackend(NumpyBackend):
    """The NumPy backend, recording the arguments of every optimizer kernel call."""

    name = "recording"

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []


def _recording(method: str) -> Any:
    def record(self: RecordingBackend, *arguments: Any) -> None:
        self.calls.append((method, arguments))
        getattr(NumpyBackend, method)(self, *arguments)

    return record


for _kernel in OPTIMIZERS:
    setattr(RecordingBackend, _kernel.method, _recording(_kernel.method))


def test_every_optimizer_kernel_has_an_optimizer() -> None:
    assert {cls.kernel for cls in optim.OPTIMIZERS.values()} == set(OPTIMIZER_KERNELS)


@pytest.mark.parametrize("optimizer_name", sorted(optim.OPTIMIZERS))
def test_optimizer_passes_the_table_hyperparameters_by_name(optimizer_name: str) -> None:
    """``opt.step`` calls its kernel's trusted method with the table's arrays and one mapping of exactly the
    table's hyperparameters, each a float (a real) or a bool (a flag)."""
    cls = optim.OPTIMIZERS[optimizer_name]
    kernel = KERNELS[cls.kernel]
    recorder = RecordingBackend()
    param = np.ones(4)
    optimizer = cls()
    optimizer.bind([param], backend=recorder)
    optimizer.step([np.full(4, 0.5)])
    [(method, arguments)] = recorder.calls
    assert method == kernel.method and len(arguments) == len(kernel.arrays) + 2
    assert arguments[0] is param and arguments[-2] is False  # with_squares: no sum of squares asked for
    hyper = arguments[-1]
    assert set(hyper) == {spec.name for spec in kernel.hyper}
    for spec in kernel.hyper:
        assert type(hyper[spec.name]) is (bool if spec.flag else float), f"{spec.name} = {hyper[spec.name]!r}"
    state_names = set(optimizer.state[0]) - set(cls.scalar_state)
    assert state_names <= {spec.name for spec in kernel.arrays[2:]}


def _compiled_optimizers(isa: str) -> Any:
    """The compiled optimizer module of ``isa``, or a skip saying why it cannot run here."""
    cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
    if isa == "avx2" and not cython_backend.cpu_has_avx2_fma():
        pytest.skip("this CPU lacks AVX2/FMA: the AVX2 kernels cannot run here")
    try:
        return importlib.import_module("fastopt._kernels._optim" + ("_avx2" if isa == "avx2" else ""))
    except ImportError as exc:
        pytest.skip(f"the {isa} optimizer module did not import: {exc}")


@pytest.mark.parametrize("isa", ["baseline", "avx2"])
@pytest.mark.parametrize("kernel_name", OPTIMIZER_KERNELS)
def test_compiled_hyperparameter_struct_has_the_table_fields(isa: str, kernel_name: str) -> None:
    """The full mapping of the table's hyperparameters converts (so the struct has no field the table lacks), and
    leaving any one out is a ValueError naming it, before anything is written (so the table has no name the
    struct lacks)."""
    module, kernel = _compiled_optimizers(isa), KERNELS[kernel_name]
    for dtype, specialization in (("float32", "float"), ("float64", "double")):
        compiled = getattr(module, kernel_name)[specialization]
        values = kernel_arguments(kernel, dtype)
        hyper = {spec.name: values[spec.name] for spec in kernel.hyper}
        arrays = [values[spec.name] for spec in kernel.arrays]
        compiled(*arrays, False, dict(hyper))
        for name in hyper:
            before = snapshot(values)
            with pytest.raises(ValueError, match=f"'{name}'"):
                compiled(*arrays, False, {key: value for key, value in hyper.items() if key != name})
            assert snapshot(values) == before, f"{kernel_name} without {name} wrote to its arrays"


@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize(("kernel", "scalar"), HYPER_SCALARS, ids=[f"{k.name}-{s.name}" for k, s in HYPER_SCALARS])
def test_hyperparameter_out_of_range_is_refused(backend_name: str, kernel: Kernel, scalar: Any) -> None:
    """Each value just outside the table's range is refused naming the hyperparameter, writing nothing; the closed
    ends of the range are accepted."""
    backend = resolve_backend(backend_name)
    for bad in refused_values(scalar):
        values = kernel_arguments(kernel, **{scalar.name: bad})
        before = snapshot(values)
        with pytest.raises((ValueError, TypeError), match=scalar.name):
            call_public(backend, kernel, values)
        assert snapshot(values) == before, f"{kernel.name} refused {scalar.name}={bad!r} but wrote to its arrays"
    for edge in [*accepted_edges(scalar), None]:
        values = kernel_arguments(kernel, **({} if edge is None else {scalar.name: edge}))
        param = values["param"].copy()
        with np.errstate(all="ignore"):
            call_public(backend, kernel, values)
        if edge is None:  # the typical call moves the parameters: the refusals above were the values' doing
            assert not np.array_equal(values["param"], param), f"{kernel.name} did not update param"
