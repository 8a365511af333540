"""Analytic gradients against central finite differences (float64): every backend kernel with a backward,
the losses, and whole ``Sequential`` models computed the way training computes them; plus the numerical
stability of softmax cross-entropy and sigmoid at extreme inputs."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import pytest

import fastopt
from fastopt.backend import resolve_backend
from fastopt.layers import Dense, ReLU, Sigmoid, Softmax, Tanh
from fastopt.losses import MSE, CrossEntropy
from fastopt.model import Sequential

BACKENDS = fastopt.available_backends()
ACTIVATIONS = ["identity", "relu", "sigmoid", "tanh"]
H = 1e-6
RTOL = 1e-6
ATOL = 1e-8


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest):
    return resolve_backend(request.param)


def numerical_gradient(f: Callable[[], float], array: np.ndarray) -> np.ndarray:
    """Central differences of ``f()`` with respect to every entry of ``array``, perturbed in place."""
    grad = np.empty_like(array)
    for index in np.ndindex(array.shape):
        saved = array[index]
        array[index] = saved + H
        plus = f()
        array[index] = saved - H
        minus = f()
        array[index] = saved
        grad[index] = (plus - minus) / (2 * H)
    return grad


def away_from_zero(rng: np.random.Generator, shape: tuple[int, ...], margin: float = 0.05) -> np.ndarray:
    """Standard normal values with |x| >= margin (ReLU's kink stays far outside the difference step)."""
    values = rng.standard_normal(shape)
    return np.where(np.abs(values) < margin, np.copysign(margin, values) + values, values)


def dense_inputs(activation: str, seed: int = 0):
    """x (4, 5), weight (5, 3), bias (3,); for relu redrawn until every pre-activation is >= 0.05 from 0."""
    rng = np.random.default_rng(seed)
    while True:
        x = rng.standard_normal((4, 5))
        weight = rng.standard_normal((5, 3))
        bias = rng.standard_normal(3)
        if activation != "relu" or np.abs(x @ weight + bias).min() > 0.05:
            return x, weight, bias, rng.standard_normal((4, 3))


# ----------------------------------------------------------------------------------- dense layer
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_backward_matches_finite_differences(backend, activation):
    x, weight, bias, projection = dense_inputs(activation)
    out = np.empty((4, 3))

    def loss() -> float:
        backend.dense_forward(x, weight, bias, out, activation)
        return float(np.sum(out * projection))

    expected = {
        "weight": numerical_gradient(loss, weight),
        "bias": numerical_gradient(loss, bias),
        "x": numerical_gradient(loss, x),
    }
    loss()
    grad_out = projection.copy()
    grad_weight, grad_bias, grad_x = np.empty((5, 3)), np.empty(3), np.empty((4, 5))
    inputs_before = (x.copy(), weight.copy(), out.copy())
    backend.dense_backward(x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation)
    for before, after in zip(inputs_before, (x, weight, out)):
        assert np.array_equal(before, after)
    np.testing.assert_allclose(grad_weight, expected["weight"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_bias, expected["bias"], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad_x, expected["x"], rtol=RTOL, atol=ATOL)
    # the first layer passes grad_x=None: same parameter gradients
    first_weight, first_bias = np.empty((5, 3)), np.empty(3)
    backend.dense_backward(x, weight, out, projection.copy(), first_weight, first_bias, None, activation)
    np.testing.assert_allclose(first_weight, grad_weight, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(first_bias, grad_bias, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward_values(backend, activation):
    x, weight, bias, _ = dense_inputs(activation, seed=1)
    out = backend.dense_forward(x, weight, bias, np.empty((4, 3)), activation)
    z = x @ weight + bias
    expected = {
        "identity": z,
        "relu": np.maximum(z, 0),
        "sigmoid": 1 / (1 + np.exp(-z)),
        "tanh": np.tanh(z),
    }[activation]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)


# ----------------------------------------------------------------------------------- activations, softmax
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activation_backward_matches_finite_differences(backend, activation):
    rng = np.random.default_rng(2)
    x = away_from_zero(rng, (3, 4)) * 2
    projection = rng.standard_normal((3, 4))
    out = np.empty((3, 4))

    def loss() -> float:
        backend.activation_forward(activation, x, out)
        return float(np.sum(out * projection))

    expected = numerical_gradient(loss, x)
    loss()
    grad_x = np.empty((3, 4))
    backend.activation_backward(activation, x, out, projection, grad_x)
    np.testing.assert_allclose(grad_x, expected, rtol=RTOL, atol=ATOL)


def test_softmax_backward_matches_finite_differences(backend):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5)) * 3
    projection = rng.standard_normal((4, 5))
    out = np.empty((4, 5))

    def loss() -> float:
        backend.softmax_forward(x, out)
        return float(np.sum(out * projection))

    expected = numerical_gradient(loss, x)
    loss()
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-14)
    shifted = np.exp(x - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(out, shifted / shifted.sum(axis=1, keepdims=True), rtol=1e-13)
    grad_x = np.empty((4, 5))
    backend.softmax_backward(out, projection, grad_x)
    np.testing.assert_allclose(grad_x, expected, rtol=RTOL, atol=ATOL)


# ----------------------------------------------------------------------------------- losses
def test_softmax_cross_entropy_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((6, 4)) * 2
    labels = np.array([0, 3, 1, 1, 2, 3], dtype=np.int64)

    def loss() -> float:
        return backend.softmax_cross_entropy(logits, labels)

    value = loss()
    rows = np.arange(6)
    log_sum_exp = np.array([math.log(sum(math.exp(v) for v in row)) for row in logits])
    assert value == pytest.approx(float(np.mean(log_sum_exp - logits[rows, labels])), rel=1e-13)
    expected = numerical_gradient(loss, logits)
    grad = np.empty((6, 4))
    assert backend.softmax_cross_entropy(logits, labels, grad) == pytest.approx(value, rel=1e-15)
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad.sum(axis=1), 0.0, atol=1e-15)


def test_mse_gradient_matches_finite_differences(backend):
    rng = np.random.default_rng(5)
    pred = rng.standard_normal((5, 3))
    target = rng.standard_normal((5, 3))

    def loss() -> float:
        return backend.mse(pred, target)

    value = loss()
    assert value == pytest.approx(sum((p - t) ** 2 for p, t in zip(pred.ravel(), target.ravel())) / 15, rel=1e-13)
    expected = numerical_gradient(loss, pred)
    grad = np.empty((5, 3))
    assert backend.mse(pred, target, grad) == pytest.approx(value, rel=1e-15)
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, 2 * (pred - target) / 15, rtol=1e-14)


# ----------------------------------------------------------------------------------- whole models
def _deep_tanh_sigmoid_relu():
    return [Dense(5, 7), Tanh(), Dense(7, 6), Sigmoid(), Dense(6, 4), ReLU(), Dense(4, 3)]


def _softmax_head():
    # Tanh then Sigmoid: the Sigmoid is a standalone activation stage (not fused with a Dense)
    return [Dense(5, 6), Tanh(), Sigmoid(), Dense(6, 4), ReLU(), Dense(4, 3), Softmax()]


def _relu_first():
    return [Dense(5, 8), ReLU(), Dense(8, 3)]


MODELS = [
    ("deep-crossentropy", _deep_tanh_sigmoid_relu, "crossentropy"),
    ("deep-mse", _deep_tanh_sigmoid_relu, "mse"),
    ("softmax-mse-onehot", _softmax_head, "mse-labels"),
    ("softmax-mse-float", _softmax_head, "mse"),
    ("relu-crossentropy", _relu_first, "crossentropy"),
]


def _relu_margin(model: Sequential, X: np.ndarray) -> float:
    """Smallest |pre-activation| of any ReLU in the model on X (recomputed with plain NumPy)."""
    margin = math.inf
    h = X
    for layer in model.layers:
        if isinstance(layer, Dense):
            h = h @ layer.weight + layer.bias
        elif isinstance(layer, ReLU):
            margin = min(margin, float(np.abs(h).min()))
            h = np.maximum(h, 0)
        elif isinstance(layer, Tanh):
            h = np.tanh(h)
        elif isinstance(layer, Sigmoid):
            h = 1 / (1 + np.exp(-h))
    return margin


@pytest.mark.parametrize(("make_layers", "target_kind"), [m[1:] for m in MODELS], ids=[m[0] for m in MODELS])
def test_sequential_gradients_match_finite_differences(backend, make_layers, target_kind):
    rng = np.random.default_rng(6)
    batch = 8
    for seed in range(20):  # pick a seed whose ReLU pre-activations stay away from the kink
        model = Sequential(make_layers(), dtype="float64", seed=seed, backend=backend.name)
        X = rng.standard_normal((batch, 5))
        if _relu_margin(model, X) > 1e-3:
            break
    else:
        pytest.fail("no seed kept the ReLU inputs away from 0")
    if target_kind == "crossentropy":
        loss, y = CrossEntropy(), rng.integers(0, 3, batch)
    elif target_kind == "mse-labels":
        loss, y = MSE(), rng.integers(0, 3, batch)
    else:
        loss, y = MSE(), rng.standard_normal((batch, 3))

    # the analytic gradient, computed by the public seam (the core of a training step)
    value = model.compute_gradients(X, y, loss)
    analytic = model.gradients.copy()

    with fastopt.use_backend(backend.name):
        assert loss(model.predict(X), y) == pytest.approx(value, rel=1e-14)
        numeric = numerical_gradient(lambda: loss(model.predict(X), y), model.parameters)
    assert np.abs(analytic).max() > 1e-3  # the comparison below is not between two arrays of zeros
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL)
    # every layer's gradient views are the matching slices of the flat buffer
    for layer in model.layers:
        if isinstance(layer, Dense):
            assert np.shares_memory(layer.weight_grad, model.gradients)
            assert np.shares_memory(layer.bias_grad, model.gradients)


# ----------------------------------------------------------------------------------- numerical stability
@pytest.fixture
def strict_floats():
    """Overflow, division by zero, invalid operations and any warning are errors. (Underflow to 0, as in
    exp(-2000), is the correct result of a stable formula and is left alone.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with np.errstate(over="raise", divide="raise", invalid="raise", under="ignore"):
            yield


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_softmax_cross_entropy_is_stable_for_huge_logits(backend, strict_floats, dtype):
    logits = np.array([[1000.0, 0.0, -1000.0], [-1000.0, 0.0, 1000.0], [1000.0, 1000.0, -1000.0]], dtype=dtype)
    labels = np.array([0, 0, 1], dtype=np.int64)
    grad = np.empty_like(logits)
    value = backend.softmax_cross_entropy(logits, labels, grad)
    assert math.isfinite(value)
    assert np.isfinite(grad).all()
    # row 0: loss 0; row 1: loss 2000; row 2: loss log 2
    assert value == pytest.approx((0.0 + 2000.0 + math.log(2.0)) / 3, rel=1e-6)
    expected = np.array([[0.0, 0.0, 0.0], [-1.0, 0.0, 1.0], [0.5, -0.5, 0.0]]) / 3
    np.testing.assert_allclose(grad, expected, rtol=1e-6, atol=1e-12)


def test_softmax_forward_is_stable_for_huge_inputs(backend, strict_floats):
    x = np.array([[1000.0, 0.0, -1000.0], [-1000.0, -1000.0, -1000.0]])
    out = backend.softmax_forward(x, np.empty_like(x))
    np.testing.assert_allclose(out, [[1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sigmoid_and_tanh_are_stable_for_huge_inputs(backend, strict_floats, dtype):
    x = np.array([[-1000.0, -50.0, 0.0, 50.0, 1000.0]], dtype=dtype)
    sigmoid = backend.activation_forward("sigmoid", x, np.empty_like(x))
    assert np.isfinite(sigmoid).all()
    expected = [0.0, math.exp(-50.0) / (1 + math.exp(-50.0)), 0.5, 1 / (1 + math.exp(-50.0)), 1.0]
    np.testing.assert_allclose(sigmoid, [expected], rtol=1e-6 if dtype == np.float32 else 1e-14, atol=0)
    tanh = backend.activation_forward("tanh", x, np.empty_like(x))
    np.testing.assert_allclose(tanh, [[-1.0, -1.0, 0.0, 1.0, 1.0]], rtol=1e-7, atol=0)
    # the fused dense path too: z = x (identity weight, zero bias)
    weight = np.eye(5, dtype=dtype)
    out = backend.dense_forward(x, weight, np.zeros(5, dtype=dtype), np.empty_like(x), "sigmoid")
    np.testing.assert_allclose(out, sigmoid, rtol=1e-6, atol=0)
    grad_x = backend.activation_backward("sigmoid", x, sigmoid, np.ones_like(x), np.empty_like(x))
    assert np.isfinite(grad_x).all()
    assert grad_x[0, 0] == 0.0 and grad_x[0, 4] == 0.0 and grad_x[0, 2] == 0.25
