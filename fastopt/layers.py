"""Layers of a ``Sequential`` model: ``Dense`` and the activations ``ReLU``, ``Sigmoid``, ``Tanh``, ``Softmax``.

Layers describe the architecture; the ``Sequential`` that holds them owns the memory. A ``Dense``
layer's ``weight`` (in_features, out_features) and ``bias`` (out_features,) are views into the
model's one flat parameter buffer, and ``weight_grad``/``bias_grad`` views into its gradient buffer.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastopt._checks import check_positive_int

INITIALIZERS = ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal", "lecun_uniform")


class Layer:
    """Base class of layers."""

    def config(self) -> dict[str, Any]:
        """The constructor arguments, as saved in a model file."""
        return {"type": type(self).__name__}

    def output_features(self, in_features: int) -> int:
        return in_features

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.config().items() if key != "type")
        return f"{type(self).__name__}({args})"


class Dense(Layer):
    """Fully connected layer: ``y = x @ W + b`` with x (batch, in_features), W (in_features, out_features).

    ``init`` chooses how W is drawn (b starts at zero), with fan_in = in_features, fan_out = out_features:
    ``glorot_uniform`` (default) U(-a, a), a = sqrt(6 / (fan_in + fan_out)); ``glorot_normal``
    N(0, 2 / (fan_in + fan_out)); ``he_uniform`` U(-a, a), a = sqrt(6 / fan_in); ``he_normal``
    N(0, 2 / fan_in); ``lecun_uniform`` U(-a, a), a = 1 / sqrt(fan_in) (PyTorch's default for Linear).
    """

    def __init__(self, in_features: int, out_features: int, init: str = "glorot_uniform") -> None:
        self.in_features = check_positive_int(in_features, "in_features")
        self.out_features = check_positive_int(out_features, "out_features")
        if init not in INITIALIZERS:
            raise ValueError(f"init must be one of {INITIALIZERS}, got {init!r}")
        self.init = init
        self.weight: np.ndarray | None = None
        self.bias: np.ndarray | None = None
        self.weight_grad: np.ndarray | None = None
        self.bias_grad: np.ndarray | None = None

    @property
    def n_params(self) -> int:
        return self.in_features * self.out_features + self.out_features

    def config(self) -> dict[str, Any]:
        return {"type": "Dense", "in_features": self.in_features, "out_features": self.out_features, "init": self.init}

    def output_features(self, in_features: int) -> int:
        if in_features != self.in_features:
            raise ValueError(f"Dense({self.in_features}, {self.out_features}) receives {in_features} features")
        return self.out_features

    def initialize(self, rng: np.random.Generator) -> None:
        """Draw the weight in place with this layer's initializer and zero the bias."""
        assert self.weight is not None and self.bias is not None, "the layer is not part of a model"
        fan_in, fan_out = self.in_features, self.out_features
        shape = self.weight.shape
        if self.init == "glorot_uniform":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            values = rng.uniform(-limit, limit, shape)
        elif self.init == "glorot_normal":
            values = rng.normal(0.0, math.sqrt(2.0 / (fan_in + fan_out)), shape)
        elif self.init == "he_uniform":
            limit = math.sqrt(6.0 / fan_in)
            values = rng.uniform(-limit, limit, shape)
        elif self.init == "he_normal":
            values = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        else:
            limit = 1.0 / math.sqrt(fan_in)
            values = rng.uniform(-limit, limit, shape)
        self.weight[...] = values
        self.bias[...] = 0


class Activation(Layer):
    """An elementwise activation; ``kernel`` names it in the backend interface."""

    kernel = "identity"


class ReLU(Activation):
    """``max(x, 0)``; derivative ``1 if x > 0 else 0``."""

    kernel = "relu"


class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``; derivative ``s (1 - s)``."""

    kernel = "sigmoid"


class Tanh(Activation):
    """``tanh(x)``; derivative ``1 - tanh(x)**2``."""

    kernel = "tanh"


class Softmax(Layer):
    """Row-wise ``exp(x_j - max x) / sum_k exp(x_k - max x)`` over (batch, classes).

    For classification train on logits with ``losses.CrossEntropy`` (which applies a stable
    log-softmax itself); a final ``Softmax`` suits ``losses.MSE`` on one-hot targets.
    """


LAYER_TYPES: dict[str, type[Layer]] = {cls.__name__: cls for cls in (Dense, ReLU, Sigmoid, Tanh, Softmax)}


def layer_from_config(config: object) -> Layer:
    """Rebuild a layer from ``Layer.config()`` output; refuses unknown types and arguments."""
    if not isinstance(config, dict) or config.get("type") not in LAYER_TYPES:
        raise ValueError(f"unknown layer description {config!r}")
    arguments = {key: value for key, value in config.items() if key != "type"}
    try:
        return LAYER_TYPES[config["type"]](**arguments)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {config['type']}: {exc}") from exc
