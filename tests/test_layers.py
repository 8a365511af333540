"""The layers of issue 13: ``Dropout``, ``LeakyReLU`` and ``GELU``.

- Their kernels: finite-difference gradients (float64), the compiled kernels against the NumPy reference, GELU and
  LeakyReLU against PyTorch (when installed), the statistics of the dropout masks.
- Their place in a model: dropout only in ``fit``, the same masks on both backends and for 1 and 2 threads, other
  masks at each step and in each layer, bit-exact resumption of a crashed run, GELU and LeakyReLU stages whose
  backward reads their input.
- Their configuration: refused arguments, ``save``/``load``, copies and pickles.

Tolerances. GELU's float64 kernels compute the reference's formulas with the same C library (``erfc``; ``exp`` may
differ from NumPy's by an ulp): 1e-12 relative. Its float32 kernels use their own vectorized normal cdf
(``fastopt_layers.h``); where the tanh form's ``exp(-|2u|)`` takes an argument rounded to float32, its relative error
grows with |2u| (measured 1.25e-5 at x = -9, |2u| = 66): the bound is ``EPS32 (8 + 4 |2u|)`` of the value. A
derivative is a sum of two terms that cancel near x = -0.75: its bound is relative to the size of the terms.
"""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from test_checkpoint import Crash, crash_after_saves, crash_at_step
from test_gradients import numerical_gradient

import fastopt
from fastopt import _random, callbacks, layers, losses, optim
from fastopt.backend import resolve_backend
from fastopt.layers import GELU, LAYER_TYPES, Dense, Dropout, LeakyReLU, ReLU, layer_from_config
from fastopt.numpy_backend import NumpyBackend, gelu, gelu_derivative
from fastopt.optim.lr_scheduler import CosineAnnealingLR

BACKENDS = fastopt.available_backends()
NB = NumpyBackend()
EPS32 = float(np.finfo(np.float32).eps)
GELUS = ("gelu", "gelu_tanh")
TWO_BETA, KAPPA = 2 * math.sqrt(2 / math.pi), 0.044715


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return resolve_backend(request.param)


def compiled():  # type: ignore[no-untyped-def]
    cython_backend = pytest.importorskip("fastopt.cython_backend", reason="the compiled extension is not built")
    return resolve_backend("cython"), cython_backend


# ------------------------------------------------------------------------------------ the layers themselves
@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Dropout(1.0), ValueError, "p must be < 1"),
        (lambda: Dropout(-0.1), ValueError, "p must be >= 0"),
        (lambda: Dropout(float("nan")), ValueError, "p must be finite"),
        (lambda: Dropout("0.5"), TypeError, "p must be a real number"),
        (lambda: Dropout(True), TypeError, "p must be a real number"),
        (lambda: LeakyReLU(float("inf")), ValueError, "negative_slope must be finite"),
        (lambda: LeakyReLU(None), TypeError, "negative_slope must be a real number"),
        (lambda: GELU("erf"), ValueError, "approximate must be one of"),
        (lambda: GELU(approximate=None), ValueError, "approximate must be one of"),
    ],
)
def test_bad_layer_arguments_are_refused(make, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        make()


def test_layer_names_and_defaults() -> None:
    assert {"Dropout", "LeakyReLU", "GELU"} <= set(LAYER_TYPES)
    assert Dropout().p == 0.5 and LeakyReLU().negative_slope == 0.01 and GELU().approximate == "none"
    assert repr(GELU("tanh")) == "GELU(approximate='tanh')" and repr(Dropout(0.2)) == "Dropout(p=0.2)"
    for layer in (Dropout(0.25), LeakyReLU(-0.5), GELU(), GELU("tanh")):
        rebuilt = layer_from_config(layer.config())
        assert type(rebuilt) is type(layer) and rebuilt.config() == layer.config()
    with pytest.raises(ValueError, match="bad arguments for layer Dropout"):
        layer_from_config({"type": "Dropout", "rate": 0.5})


def test_dropout_cannot_come_first() -> None:
    with pytest.raises(ValueError, match="the first layer must be Dense"):
        fastopt.Sequential([Dropout(0.2), Dense(3, 2)])


def mixed_layers(p: float = 0.3, dropout: bool = True) -> list[layers.Layer]:
    """Every new layer: a fused LeakyReLU (slope >= 0), a standalone one (negative slope), both GELUs, dropouts
    between them and one after the last Dense layer (none without ``dropout``)."""
    stack = [
        Dense(6, 16), GELU(), Dropout(p),
        Dense(16, 12), LeakyReLU(0.1), Dropout(p),
        Dense(12, 8), LeakyReLU(-0.2), GELU("tanh"),
        Dense(8, 3), Dropout(p),
    ]  # fmt: skip
    return [layer for layer in stack if dropout or not isinstance(layer, Dropout)]


def mixed_model(
    backend: str | None = None, dtype: str = "float64", p: float = 0.3, seed: int = 0
) -> fastopt.Sequential:
    return fastopt.Sequential(mixed_layers(p), dtype=dtype, seed=seed, backend=backend)


def without_dropout(model: fastopt.Sequential) -> fastopt.Sequential:
    """``mixed_model``'s layers but its dropouts, with its parameters (the flat buffer holds the same Dense layers)."""
    plain = fastopt.Sequential(mixed_layers(dropout=False), dtype=model.dtype, backend=model._backend_name)
    plain.parameters[...] = model.parameters
    return plain


def test_the_plan_fuses_only_what_its_output_can_differentiate() -> None:
    kinds = [(stage.kind, stage.activation) for stage in mixed_model()._stages]
    assert kinds == [
        ("dense", "identity"), ("activation", "gelu"), ("dropout", "identity"),
        ("dense", "leaky_relu"), ("dropout", "identity"),
        ("dense", "identity"), ("activation", "leaky_relu"), ("activation", "gelu_tanh"),
        ("dense", "identity"), ("dropout", "identity"),
    ]  # fmt: skip


def classes(n: int = 96, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 6))
    return X, (X[:, 0] + X[:, 1] > 0).astype(np.int64) + (X[:, 2] > 1)


def test_save_load_copy_and_pickle_keep_the_layers(tmp_path) -> None:  # type: ignore[no-untyped-def]
    X, y = classes()
    model = mixed_model(dtype="float32")
    model.fit(X, y, epochs=1, batch_size=16, seed=1)
    model.save(tmp_path / "model.npz")
    copies = [
        fastopt.load(tmp_path / "model.npz"),
        model.copy(),
        copy.deepcopy(model),
        pickle.loads(pickle.dumps(model)),
    ]
    for other in copies:
        assert other.config()["layers"] == model.config()["layers"]
        np.testing.assert_array_equal(other.predict(X), model.predict(X))
    # a copy goes on training exactly as the original, dropout masks included
    twin = model.copy()
    for trained in (model, twin):
        trained.fit(X, y, epochs=2, batch_size=16, seed=2)
    np.testing.assert_array_equal(twin.parameters, model.parameters)


# ------------------------------------------------------------------------------------ kernels: gradients
def away_from(rng: np.random.Generator, shape: tuple[int, ...], points: tuple[float, ...] = (0.0,)) -> np.ndarray:
    """Normal values scaled by 3, at least 0.05 from each of ``points`` (kinks and roots stay outside the step)."""
    values = rng.standard_normal(shape) * 3
    for point in points:
        near = np.abs(values - point) < 0.05
        values[near] += np.copysign(0.1, values[near] - point)
    return values


@pytest.mark.parametrize(
    ("activation", "slope"), [("leaky_relu", 0.1), ("leaky_relu", -0.3), *((g, 0.0) for g in GELUS)]
)
def test_activation_gradients_match_finite_differences(backend, activation, slope) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    x = away_from(rng, (5, 7))
    projection = rng.standard_normal((5, 7))
    out = np.empty_like(x)

    def loss() -> float:
        backend.activation_forward(activation, x, out, slope)
        return float(np.sum(out * projection))

    expected = numerical_gradient(loss, x)
    loss()
    grad_x = backend.activation_backward(activation, x, out, projection, np.empty_like(x), slope)
    np.testing.assert_allclose(grad_x, expected, rtol=1e-6, atol=1e-8)


def test_dense_leaky_relu_gradients_match_finite_differences(backend) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    x, weight, bias = rng.standard_normal((4, 5)), rng.standard_normal((5, 3)), rng.standard_normal(3)
    bias += np.where(np.abs(x @ weight + bias) < 0.05, 0.2, 0.0).max(axis=0)  # keep z away from the kink
    projection, out = rng.standard_normal((4, 3)), np.empty((4, 3))

    def loss() -> float:
        backend.dense_forward(x, weight, bias, out, "leaky_relu", 0.2)
        return float(np.sum(out * projection))

    expected = {name: numerical_gradient(loss, array) for name, array in (("w", weight), ("b", bias), ("x", x))}
    loss()
    grads = np.empty((5, 3)), np.empty(3), np.empty((4, 5))
    backend.dense_backward(x, weight, out, projection.copy(), *grads, "leaky_relu", 0.2)
    for grad, name in zip(grads, "wbx"):
        np.testing.assert_allclose(grad, expected[name], rtol=1e-6, atol=1e-8)


def test_dropout_gradient_matches_finite_differences(backend) -> None:  # type: ignore[no-untyped-def]
    """A fixed mask makes dropout linear; its backward (the product with the mask kept) is its derivative."""
    rng = np.random.default_rng(3)
    x, projection = rng.standard_normal((6, 9)), rng.standard_normal((6, 9))
    out, mask = np.empty_like(x), np.empty_like(x)

    def loss() -> float:
        backend.dropout(x, out, mask, 0.4, 12345)
        return float(np.sum(out * projection))

    expected = numerical_gradient(loss, x)
    grad_x = backend.dropout_backward(projection, mask, np.empty_like(x))
    assert np.count_nonzero(grad_x) not in (0, grad_x.size)
    np.testing.assert_allclose(grad_x, expected, rtol=1e-6, atol=1e-8)


def training_loss(model: fastopt.Sequential, X: np.ndarray, y: np.ndarray, loss: losses.Loss, step_key: int) -> float:
    """The loss of one training pass over (X, y), dropout masks of ``step_key`` included (the pass ``fit`` makes)."""
    backend = resolve_backend(model._backend_name)
    workspace = model._workspace(len(X))
    np.copyto(workspace.inputs, X)
    return loss.compute(
        backend, model._forward(backend, workspace, step_key), loss.targets(y, 3, model.dtype).values, None
    )


def test_model_training_gradients_match_finite_differences(backend) -> None:  # type: ignore[no-untyped-def]
    """The whole training pass of a model with every new layer (fixed masks), by the seam fit uses."""
    X, y = classes(8, seed=4)
    loss, step_key = losses.CrossEntropy(), 987654321
    for seed in range(20):  # a seed whose LeakyReLU inputs stay away from their kink
        model = mixed_model(backend.name, seed=seed)
        training_loss(model, X, y, loss, step_key)
        outputs = model._workspace(8).outputs  # the fused LeakyReLU's (|out| <= |z|) and the standalone one's input
        if min(np.abs(outputs[3]).min(), np.abs(outputs[5]).min()) > 1e-3:
            break
    else:
        pytest.fail("no seed kept the LeakyReLU inputs away from 0")
    targets = loss.targets(y, 3, model.dtype)
    value, _, _, finite = model._batch_gradients(backend, loss, X, targets, np.arange(8), step_key)
    analytic = model.gradients.copy()
    numeric = numerical_gradient(lambda: training_loss(model, X, y, loss, step_key), model.parameters)
    assert value == pytest.approx(training_loss(model, X, y, loss, step_key), rel=1e-14)
    assert finite  # the dense kernels' non-finite guard, through the dropout and GELU stages
    assert np.abs(analytic).max() > 1e-3
    np.testing.assert_allclose(analytic, numeric, rtol=1e-6, atol=1e-8)
    # outside training (compute_gradients, predict) dropout is the identity
    value = model.compute_gradients(X, y, loss)
    without = without_dropout(model)
    assert without.compute_gradients(X, y, loss) == value
    np.testing.assert_array_equal(without.gradients, model.gradients)


# ------------------------------------------------------------------------------------ kernels: GELU values
def gelu_tolerance(x: np.ndarray, activation: str, dtype: type) -> np.ndarray:
    """The relative bound of the module docstring."""
    if dtype == np.float64:
        return np.full(x.shape, 1e-12)
    if activation == "gelu":
        return np.full(x.shape, 1e-5)
    with np.errstate(over="ignore"):
        v = TWO_BETA * np.abs(x.astype(np.float64) + KAPPA * x.astype(np.float64) ** 3)
    return EPS32 * (8 + 4 * v)


def assert_gelu_close(actual: np.ndarray, expected: np.ndarray, scale: np.ndarray, tolerance: np.ndarray) -> None:
    """|actual - expected| <= tolerance (|expected| + scale) + the dtype's smallest normal (subnormal results)."""
    tiny = float(np.finfo(actual.dtype).tiny)
    np.testing.assert_array_equal(np.isnan(actual), np.isnan(expected))
    finite = np.isfinite(expected)
    error = np.abs(actual[finite].astype(np.float64) - expected[finite])
    bound = tolerance[finite] * (np.abs(expected[finite]) + scale[finite]) + tiny
    worst = np.argmax(error - bound)
    assert np.all(error <= bound), f"{error[worst]:.3g} > {bound[worst]:.3g} at {actual[finite][worst]!r}"


def gelu_arguments(dtype: type) -> np.ndarray:
    """Dense in [-16, 9] (both tails: results down to the subnormal range), normals, and special values."""
    rng = np.random.default_rng(5)
    specials = [0.0, -0.0, 1e-30, -1e-30, 1e30, -1e30, np.inf, -np.inf, np.nan, -0.7518, 3.92, -3.92]
    return np.concatenate([np.linspace(-16, 9, 25001), rng.standard_normal(5000) * 3, specials]).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", GELUS)
def test_gelu_kernels_match_the_reference(activation, dtype) -> None:  # type: ignore[no-untyped-def]
    CB, _ = compiled()
    x = gelu_arguments(dtype)
    grad_out = np.random.default_rng(6).standard_normal(x.shape).astype(dtype)
    tolerance = gelu_tolerance(x, activation, dtype)
    with np.errstate(all="ignore"):
        expected = gelu(x, activation == "gelu_tanh")  # float64, then each backend rounds to the dtype once
        derivative = gelu_derivative(x, activation == "gelu_tanh")
        actual = CB.activation_forward(activation, x, np.empty_like(x))
        grad_x = CB.activation_backward(activation, x, actual, grad_out, np.empty_like(x))
        reference = NB.activation_forward(activation, x, np.empty_like(x))
    np.testing.assert_array_equal(reference, expected.astype(dtype))
    assert_gelu_close(actual, expected, np.zeros_like(expected), tolerance)
    # the derivative's scale: the size of its two terms (Phi(x) <= 1 and |x| phi(x) <= |x|), times |grad_out|
    with np.errstate(all="ignore"):
        scale = np.abs(grad_out) * (1 + np.nan_to_num(np.abs(x) * np.exp(-0.5 * x.astype(np.float64) ** 2)))
    assert_gelu_close(grad_x, grad_out * derivative, scale, tolerance)


def test_gelu_has_no_cancellation_in_the_negative_tail() -> None:
    """Where PyTorch's 0.5 x (1 + erf(x / sqrt(2))) rounds 1 + erf to 0 (float32 from x = -5.9), fastopt keeps the
    value: GELU(-10) = -10 Phi(-10) = -7.62e-23, to a few ulp."""
    expected = -10 * 0.5 * math.erfc(10 / math.sqrt(2))
    for backend_name in BACKENDS:
        for dtype in (np.float32, np.float64):
            value = resolve_backend(backend_name).activation_forward(
                "gelu", np.array([-10.0], dtype), np.empty(1, dtype)
            )
            assert value[0] == pytest.approx(expected, rel=1e-6), (backend_name, dtype)


def test_leaky_relu_kernels_are_bitwise_the_reference() -> None:
    CB, _ = compiled()
    rng = np.random.default_rng(7)
    for dtype in (np.float32, np.float64):
        x = np.concatenate([rng.standard_normal(999) * 3, [0.0, -0.0, np.inf, -np.inf, np.nan]]).astype(dtype)
        grad_out = rng.standard_normal(x.shape).astype(dtype)
        for slope in (0.01, 0.0, -0.5, 3.0):
            results = []
            for backend in (NB, CB):
                out = backend.activation_forward("leaky_relu", x, np.empty_like(x), slope)
                results.append(
                    (out, backend.activation_backward("leaky_relu", x, out, grad_out, np.empty_like(x), slope))
                )
            for a, b in zip(*results):
                np.testing.assert_array_equal(a, b)
        # the fused dense layer (slope >= 0: its derivative from the output) agrees elementwise too
        weight, bias = rng.standard_normal((8, 6)).astype(dtype), rng.standard_normal(6).astype(dtype)
        inputs, projection = rng.standard_normal((33, 8)).astype(dtype), rng.standard_normal((33, 6)).astype(dtype)
        outs, grads = [], []
        for backend in (NB, CB):
            out = backend.dense_forward(inputs, weight, bias, np.empty((33, 6), dtype), "leaky_relu", 0.25)
            grad = projection.copy()
            backend.dense_backward(inputs, weight, outs[0] if outs else out, grad, np.empty_like(weight),
                                   np.empty_like(bias), np.empty_like(inputs), "leaky_relu", 0.25)  # fmt: skip
            outs.append(out)
            grads.append(grad)
        rtol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(outs[1], outs[0], rtol=rtol, atol=rtol * np.abs(outs[0]).max())  # GEMM sums
        np.testing.assert_array_equal(grads[1], grads[0])  # dz = grad_out * f'(out): elementwise


def test_dense_kernels_refuse_gelu_and_a_negative_slope(backend) -> None:  # type: ignore[no-untyped-def]
    x, weight, bias, out = np.ones((2, 3)), np.ones((3, 2)), np.ones(2), np.empty((2, 2))
    with pytest.raises(ValueError, match="activation must be one of"):
        backend.dense_forward(x, weight, bias, out, "gelu")
    with pytest.raises(ValueError, match="negative_slope must be >= 0"):
        backend.dense_forward(x, weight, bias, out, "leaky_relu", -0.1)


# ------------------------------------------------------------------------------------ kernels vs PyTorch
def torch_module():  # type: ignore[no-untyped-def]
    return pytest.importorskip("torch")


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_matches_pytorch(backend, approximate) -> None:  # type: ignore[no-untyped-def]
    """float64, 1e-12 of the size of the terms: PyTorch's own formula cancels for x << 0 (there it is the less
    accurate of the two: its error is ulps of |x|, not of the value)."""
    torch = torch_module()
    activation = "gelu" if approximate == "none" else "gelu_tanh"
    x = gelu_arguments(np.float64)[:-12]
    grad_out = np.random.default_rng(8).standard_normal(x.shape)
    tensor = torch.tensor(x, requires_grad=True)
    torch.nn.functional.gelu(tensor, approximate=approximate).backward(torch.tensor(grad_out))
    expected = torch.nn.functional.gelu(torch.tensor(x), approximate=approximate).numpy()
    out = backend.activation_forward(activation, x, np.empty_like(x))
    grad_x = backend.activation_backward(activation, x, out, grad_out, np.empty_like(x))
    tolerance = np.full(x.shape, 1e-12)
    assert_gelu_close(out, expected, np.abs(x), tolerance)
    assert_gelu_close(grad_x, tensor.grad.numpy(), np.abs(grad_out) * (1 + np.abs(x)), tolerance)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_leaky_relu_matches_pytorch_bitwise(backend, dtype) -> None:  # type: ignore[no-untyped-def]
    torch = torch_module()
    rng = np.random.default_rng(9)
    x = np.concatenate([rng.standard_normal(500) * 4, [0.0, -0.0]]).astype(dtype)
    grad_out = rng.standard_normal(x.shape).astype(dtype)
    for slope in (0.01, -0.3):
        tensor = torch.tensor(x, requires_grad=True)
        result = torch.nn.functional.leaky_relu(tensor, negative_slope=slope)
        result.backward(torch.tensor(grad_out))
        out = backend.activation_forward("leaky_relu", x, np.empty_like(x), slope)
        np.testing.assert_array_equal(out, result.detach().numpy())
        np.testing.assert_array_equal(
            backend.activation_backward("leaky_relu", x, out, grad_out, np.empty_like(x), slope), tensor.grad.numpy()
        )


def test_a_model_matches_pytorch(backend) -> None:  # type: ignore[no-untyped-def]
    """A float64 model with both GELUs and both kinds of LeakyReLU stage (dropout off: ``compute_gradients``):
    outputs and gradients equal PyTorch's to 1e-12 of their size."""
    torch = torch_module()
    model = mixed_model(backend.name)
    X, y = classes(16, seed=10)
    dense = [layer for layer in model.layers if isinstance(layer, Dense)]
    linears = [torch.nn.Linear(layer.in_features, layer.out_features, dtype=torch.float64) for layer in dense]
    for linear, layer in zip(linears, dense):
        with torch.no_grad():
            linear.weight.copy_(torch.tensor(layer.weight.T))
            linear.bias.copy_(torch.tensor(layer.bias))
    act = torch.nn.functional
    h = torch.tensor(X)
    h = act.gelu(linears[0](h))
    h = act.leaky_relu(linears[1](h), 0.1)
    h = act.gelu(act.leaky_relu(linears[2](h), -0.2), approximate="tanh")
    logits = linears[3](h)
    torch.nn.functional.cross_entropy(logits, torch.tensor(y)).backward()
    np.testing.assert_allclose(model.predict(X), logits.detach().numpy(), rtol=1e-12, atol=1e-13)
    model.compute_gradients(X, y, losses.CrossEntropy())
    for linear, layer in zip(linears, dense):
        for ours, theirs in ((layer.weight_grad, linear.weight.grad.numpy().T), (layer.bias_grad, linear.bias.grad)):
            theirs = np.asarray(theirs)
            np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12 * np.abs(theirs).max())


# ------------------------------------------------------------------------------------ kernels: dropout masks
def test_the_mask_follows_the_table(backend) -> None:  # type: ignore[no-untyped-def]
    """Element i is kept when half i % 2 of SplitMix64 word i // 2 reaches p 2**32; kept values are x / (1 - p)
    with 1 / (1 - p) rounded to the dtype once; dropped ones are x * 0 (a NaN stays NaN)."""
    key, p = 2**64 - 5, 0.3
    for dtype in (np.float32, np.float64):
        x = np.arange(1, 12, dtype=dtype)
        x[4] = np.nan
        mask = np.empty_like(x)
        out = backend.dropout(x, np.empty_like(x), mask, p, key)
        halves = [(_random.word(key, i // 2) >> (32 * (i % 2))) & 0xFFFFFFFF for i in range(x.size)]
        kept = np.array([half >= p * 2**32 for half in halves])
        scale = dtype(1 / (1 - p))
        np.testing.assert_array_equal(mask, np.where(kept, scale, dtype(0)))
        np.testing.assert_array_equal(out[kept], x[kept] * scale)
        assert np.isnan(out[4]) and np.all(out[~kept & ~np.isnan(x)] == 0)
        assert 0 < kept.sum() < x.size
        np.testing.assert_array_equal(backend.dropout(x, np.empty_like(x), mask, 0.0, key), x)  # p = 0: the identity


def test_the_keep_fraction_is_binomial() -> None:
    """Over 2**20 elements (keys fixed, so the test is deterministic), the kept fraction of each p lies within five
    binomial standard deviations of 1 - p, and two keys agree on an element as often as independent masks do."""
    n = 2**20
    x = np.ones(n, dtype=np.float32)
    for p in (0.1, 0.5, 0.9, 0.2):
        kept = [NB.dropout(x, np.empty_like(x), np.empty_like(x), p, key) != 0 for key in (1, 2)]
        sigma = math.sqrt(n * p * (1 - p))
        for mask in kept:
            assert abs(int(mask.sum()) - n * (1 - p)) < 5 * sigma, p
        agree = p * p + (1 - p) * (1 - p)
        assert abs(int(np.sum(kept[0] == kept[1])) - n * agree) < 5 * math.sqrt(n * agree * (1 - agree))


@pytest.mark.parametrize("size", [0, 1, 2, 3, 1001, 2**19 + 1])
def test_dropout_is_the_same_on_both_backends_and_any_thread_count(size) -> None:  # type: ignore[no-untyped-def]
    """2**19 elements split over the threads outside fit (above the threshold of the optimizer updates, 2**15)."""
    CB, cython_backend = compiled()
    if not cython_backend.build_info()["openmp"]:
        pytest.skip("built without OpenMP: the kernels always run on one thread")
    rng = np.random.default_rng(size)
    before = cython_backend.build_info()["openmp_threads"]
    try:
        for dtype, threads in ((np.float32, 1), (np.float32, 2), (np.float64, 1), (np.float64, 2)):
            fastopt.set_num_threads(threads)
            x = rng.standard_normal(size).astype(dtype)
            expected_mask, mask, rows_mask = np.empty_like(x), np.empty_like(x), np.empty((1, size), dtype)
            expected = NB.dropout(x, np.empty_like(x), expected_mask, 0.35, 77)
            np.testing.assert_array_equal(CB.dropout(x, np.empty_like(x), mask, 0.35, 77), expected)
            rows = CB.dropout(x.reshape(1, -1), np.empty((1, size), dtype), rows_mask, 0.35, 77)  # 2-d: row-major
            np.testing.assert_array_equal(rows[0], expected)
            np.testing.assert_array_equal(mask, expected_mask)
            np.testing.assert_array_equal(rows_mask[0], expected_mask)
    finally:
        fastopt.set_num_threads(before)


def test_the_key_is_an_exact_64_bit_integer(backend) -> None:  # type: ignore[no-untyped-def]
    x, out, mask = np.ones(4), np.empty(4), np.empty(4)
    for key in (-1, 2**64, 1.0, True, "1", None):
        with pytest.raises((TypeError, ValueError), match="key"):
            backend.dropout(x, out, mask, 0.5, key)
    for p in (1.0, -0.01, float("nan")):
        with pytest.raises(ValueError, match="p"):
            backend.dropout(x, out, mask, p, 1)
    highest, half = (backend.dropout(np.ones(64), np.empty(64), np.empty(64), 0.5, key) for key in (2**64 - 1, 2**63))
    assert not np.array_equal(highest, half)


# ------------------------------------------------------------------------------------ dropout in a model
def dropout_outputs(model: fastopt.Sequential) -> list[np.ndarray]:
    """What the model's dropout stages wrote in its last training pass (a copy of each)."""
    workspace = next(iter(model._threads.workspaces().values()))
    return [out.copy() for stage, out in zip(model._stages, workspace.outputs) if stage.kind == "dropout"]


def test_masks_differ_between_steps_and_layers() -> None:
    model = fastopt.Sequential([Dense(6, 32), Dropout(0.5), Dense(32, 32), Dropout(0.5), Dense(32, 3)], seed=0,
                               dtype="float64")  # fmt: skip
    X, y = classes(8)
    targets = losses.CrossEntropy().targets(y, 3, model.dtype)
    backend = resolve_backend(model._backend_name)
    masks = []
    for step_key in (_random.word(5, 0), _random.word(5, 1)):
        model._batch_gradients(backend, losses.CrossEntropy(), X, targets, np.arange(8), step_key)
        masks.append([out != 0 for out in dropout_outputs(model)])
    (first_a, first_b), (second_a, _) = masks
    assert not np.array_equal(first_a, second_a)  # another step
    assert not np.array_equal(first_a, first_b)  # another layer, same step


def test_dropout_is_active_in_fit_only() -> None:
    X, y = classes()
    with_dropout = mixed_model(dtype="float32", p=0.5)
    plain = without_dropout(with_dropout)
    np.testing.assert_array_equal(with_dropout.predict(X), plain.predict(X))
    assert with_dropout.evaluate(X, y) == plain.evaluate(X, y)
    np.testing.assert_array_equal(with_dropout.predict(X), with_dropout.predict(X))
    history = with_dropout.fit(X, y, epochs=1, batch_size=16, seed=0, validation_data=(X, y))
    plain_history = plain.fit(X, y, epochs=1, batch_size=16, seed=0, validation_data=(X, y))
    assert not np.array_equal(with_dropout.parameters, plain.parameters)
    assert history.history["loss"] != plain_history.history["loss"]
    # the validation loss is the evaluation of the trained model, without dropout
    assert history.history["val_loss"][0] == pytest.approx(with_dropout.evaluate(X, y)["loss"], rel=1e-6)


def test_a_zero_rate_trains_as_no_dropout() -> None:
    X, y = classes()
    zero = mixed_model(dtype="float32", p=0.0)
    plain = without_dropout(zero)
    zero.fit(X, y, epochs=2, batch_size=16, seed=3)
    plain.fit(X, y, epochs=2, batch_size=16, seed=3)
    np.testing.assert_array_equal(zero.parameters, plain.parameters)


def test_training_with_dropout_is_the_same_on_both_backends() -> None:
    """float64: the masks are equal, so the two backends end within rounding (GEMM sums in another order); with
    different masks they would differ in every parameter."""
    compiled()
    X, y = classes()
    results = {}
    for name in ("numpy", "cython"):
        model = mixed_model(name, p=0.4)
        model.fit(X, y, epochs=2, batch_size=16, seed=4, optimizer=optim.SGD(lr=0.05))
        results[name] = model.parameters
    np.testing.assert_allclose(results["cython"], results["numpy"], rtol=1e-10, atol=1e-12)


def test_training_with_dropout_is_bitwise_the_same_on_one_and_two_threads() -> None:
    """Batch 256 x 256 features: the dropout kernel splits over the threads in fit (from 2**15 elements); the direct
    GEMM path gives the same bits for any thread count, so the whole run must."""
    _, cython_backend = compiled()
    if cython_backend.gemm_path() != "direct" or not cython_backend.build_info()["openmp"]:
        pytest.skip("needs the direct GEMM path and OpenMP (BLAS's own threads round float32 differently)")
    rng = np.random.default_rng(11)
    X, y = rng.standard_normal((512, 32)).astype(np.float32), rng.integers(0, 4, 512)
    results, before = [], cython_backend.build_info()["openmp_threads"]
    try:
        for threads in (1, 2):
            fastopt.set_num_threads(threads)
            model = fastopt.Sequential([Dense(32, 256), ReLU(), Dropout(0.2), Dense(256, 4)], seed=1, backend="cython")
            model.fit(X, y, epochs=2, batch_size=256, seed=5)
            results.append(model.parameters.copy())
    finally:
        fastopt.set_num_threads(before)
    np.testing.assert_array_equal(results[0], results[1])


def test_dropout_after_the_last_layer_trains_and_predicts() -> None:
    X, y = classes()
    model = fastopt.Sequential([Dense(6, 8), ReLU(), Dense(8, 3), Dropout(0.5)], seed=0)
    before = model.predict(X)
    history = model.fit(X, y, epochs=2, batch_size=16, seed=0)
    assert all(math.isfinite(value) for value in history.history["loss"])
    assert not np.array_equal(model.predict(X), before)
    np.testing.assert_array_equal(model.predict(X), model.predict(X))


@pytest.mark.parametrize("backend_name", BACKENDS)
def test_a_crashed_run_with_dropout_resumes_bit_exactly(backend_name, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Dropout with gradient clipping, a cosine schedule and early stopping on a validation split: the run dies
    mid-epoch after a checkpoint, its resumption dies between two checkpoints, and the second resumption ends with
    the uninterrupted run's parameters, optimizer state and history."""
    X, y = classes(200, seed=12)

    def run(**options):  # type: ignore[no-untyped-def]
        model = mixed_model(backend_name, dtype="float32", p=0.25)
        optimizer = optim.Adam(lr=3e-3)
        history = model.fit(
            X, y, optimizer=optimizer, epochs=4, batch_size=24, seed=6, validation_split=0.2, clip_norm=1.0,
            callbacks=[CosineAnnealingLR(optimizer, T_max=4),
                       callbacks.EarlyStopping(monitor="val_loss", patience=2)],
            **options,
        )  # fmt: skip
        return model, optimizer, history

    expected = run()
    path = tmp_path / "run.ckpt"
    with monkeypatch.context() as patch:
        crash_after_saves(patch, 3)  # every 4 batches of 7: the third save is in epoch 2
        with pytest.raises(Crash):
            run(checkpoint=path, checkpoint_every=4)
    with monkeypatch.context() as patch:
        crash_at_step(patch, 6)
        with pytest.raises(Crash):
            run(checkpoint=path, checkpoint_every=4, resume=True)
    model, optimizer, history = run(checkpoint=path, checkpoint_every=4, resume=True)
    np.testing.assert_array_equal(model.parameters, expected[0].parameters)
    assert optimizer.step_count == expected[1].step_count
    for name, buffer in optimizer.state[0].items():
        np.testing.assert_array_equal(buffer, expected[1].state[0][name])
    assert history.epochs == expected[2].epochs
    assert {k: v for k, v in history.history.items() if k != "seconds"} == {
        k: v for k, v in expected[2].history.items() if k != "seconds"
    }
