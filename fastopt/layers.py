"""Layers of a ``Sequential`` model: ``Dense``, the activations ``ReLU``, ``LeakyReLU``, ``GELU``, ``Sigmoid``,
``Tanh``, ``Softmax``, and ``Dropout``.

Layers describe the architecture; the ``Sequential`` that holds them owns the memory. A ``Dense``
layer's ``weight`` (in_features, out_features) and ``bias`` (out_features,) are views into the
model's one flat parameter buffer, and ``weight_grad``/``bias_grad`` views into its gradient buffer.
Assigning one of them (``model.layers[0].weight = values``) copies the values into that view, checked. A layer's
constructor arguments (``in_features``, ``p``, ``negative_slope``, ...) are read-only: make a new layer for others.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fastopt._checks import DTypeError, check_positive_int, check_scalar, fixed_attribute

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


def as_parameter_values(value: object, name: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of exactly ``shape`` (no broadcasting) and of the model's ``dtype``, to be copied
    into its buffers. Integers and floats of any precision are cast, as Keras' ``set_weights`` does (float64
    rounds to float32); bool, complex, object and string values are a ``TypeError``; another shape, NaN, Inf
    or a value beyond ``dtype``'s range (it would become Inf) a ``ValueError``."""
    array = np.asarray(value)
    if array.dtype.kind not in "iuf":
        raise DTypeError(f"{name} must hold real numbers (integers or floats), got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    with np.errstate(over="ignore"):  # values beyond the dtype's range become Inf and are refused below
        converted = array.astype(dtype, copy=False)
    if not np.isfinite(converted).all():
        raise ValueError(f"{name} contains NaN or Inf (or values too large for {dtype})")
    return converted


class _BoundView:
    """A ``Dense`` attribute that is a view into one of its model's flat buffers (None before the layer
    belongs to a model). Assigning it copies the values into the view, checked by ``as_parameter_values``,
    so that the model's training, ``save`` and copies see them: the view itself is never replaced."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name
        self.slot = "_" + name

    def __get__(self, layer: Dense | None, owner: type | None = None) -> Any:
        return self if layer is None else getattr(layer, self.slot)

    def __set__(self, layer: Dense, value: object) -> None:
        view = getattr(layer, self.slot)
        if view is None:
            raise ValueError(
                f"{layer!r} does not belong to a model yet: the Sequential that takes it allocates and initializes "
                f"its {self.name}; assign it afterwards (model.layers[i].{self.name} = values) or use "
                "model.set_weights"
            )
        if value is view:  # ``layer.weight += delta`` reads the view, updates it in place, then assigns it back
            return
        np.copyto(view, as_parameter_values(value, f"{layer._label}.{self.name}", view.shape, view.dtype))


class Dense(Layer):
    """Fully connected layer: ``y = x @ W + b`` with x (batch, in_features), W (in_features, out_features).

    ``init`` chooses how W is drawn (b starts at zero), with fan_in = in_features, fan_out = out_features:
    ``glorot_uniform`` (default) U(-a, a), a = sqrt(6 / (fan_in + fan_out)); ``glorot_normal``
    N(0, 2 / (fan_in + fan_out)); ``he_uniform`` U(-a, a), a = sqrt(6 / fan_in); ``he_normal``
    N(0, 2 / fan_in); ``lecun_uniform`` U(-a, a), a = 1 / sqrt(fan_in) (PyTorch's default for Linear).
    """

    def __init__(self, in_features: int, out_features: int, init: str = "glorot_uniform") -> None:
        self._in_features = check_positive_int(in_features, "in_features")
        self._out_features = check_positive_int(out_features, "out_features")
        if init not in INITIALIZERS:
            raise ValueError(f"init must be one of {INITIALIZERS}, got {init!r}")
        self._init = init
        self._label = ""  # where the layer sits once in a model, for messages: "layers[2]"
        self._weight: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        self._weight_grad: np.ndarray | None = None
        self._bias_grad: np.ndarray | None = None

    in_features = fixed_attribute("in_features")
    out_features = fixed_attribute("out_features")
    init = fixed_attribute("init")
    weight = _BoundView()
    bias = _BoundView()
    weight_grad = _BoundView()
    bias_grad = _BoundView()

    def _bind(
        self, parameters: np.ndarray, gradients: np.ndarray, weight_offset: int, bias_offset: int, label: str
    ) -> tuple[int, int]:
        """View this layer's segments of a model's flat buffers: the weight (in_features, out_features) row-major
        from ``weight_offset``, the bias (out_features,) from ``bias_offset``. Returns the offsets after them."""
        shape = (self.in_features, self.out_features)
        weight_end = weight_offset + self.in_features * self.out_features
        bias_end = bias_offset + self.out_features
        self._weight, self._weight_grad = (
            buffer[weight_offset:weight_end].reshape(shape) for buffer in (parameters, gradients)
        )
        self._bias, self._bias_grad = parameters[bias_offset:bias_end], gradients[bias_offset:bias_end]
        self._label = label
        return weight_end, bias_end

    def __getstate__(self) -> dict[str, Any]:
        """A copied or pickled layer leaves its views behind (they would become arrays of their own, detached from
        any model): the ``Sequential`` being copied binds its layers to its copied buffers again, and a layer
        copied on its own is a new layer of the same configuration, not yet in a model."""
        unbound = dict.fromkeys(("_weight", "_bias", "_weight_grad", "_bias_grad"))
        return {**self.__dict__, **unbound, "_label": ""}

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
    """An elementwise activation; ``kernel`` names it in the backend interface, ``negative_slope`` is the kernels'
    parameter (LeakyReLU's). ``fuses_into_dense``: whether a ``Dense`` layer right before it applies it itself (its
    derivative is then computed from its output, the only one the fused stage keeps)."""

    _kernel = "identity"
    _negative_slope = 0.0
    kernel = fixed_attribute("kernel")
    negative_slope = fixed_attribute("negative_slope")

    @property
    def fuses_into_dense(self) -> bool:
        return True


class ReLU(Activation):
    """``max(x, 0)``; derivative ``1 if x > 0 else 0``."""

    _kernel = "relu"


class LeakyReLU(Activation):
    """``x if x > 0 else negative_slope * x``; derivative ``1 if x > 0 else negative_slope`` (PyTorch's
    ``LeakyReLU``, whose derivative at 0 is the slope). Any finite slope; with a slope >= 0 a ``Dense`` layer before
    it applies it itself (its output then tells the sign of x), with a negative one it runs on its own."""

    _kernel = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01) -> None:
        self._negative_slope = check_scalar(negative_slope, "negative_slope", low=None)

    @property
    def fuses_into_dense(self) -> bool:
        return self.negative_slope >= 0

    def config(self) -> dict[str, Any]:
        return {"type": "LeakyReLU", "negative_slope": self.negative_slope}


GELU_FORMS = {"none": "gelu", "tanh": "gelu_tanh"}


class GELU(Activation):
    """The Gaussian error linear unit, PyTorch's ``GELU(approximate)``: ``"none"`` (default) is
    ``x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))``, derivative ``Phi(x) + x phi(x)`` (the standard normal's cdf and
    density); ``"tanh"`` is ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x**3)))`` and its exact derivative.
    The derivative needs x, so GELU runs as a stage of its own after a ``Dense`` layer (which keeps x for it).
    float32 uses a vectorized erf within 2.6 ulp of the exact one; float64 the C library's."""

    def __init__(self, approximate: str = "none") -> None:
        if approximate not in GELU_FORMS:
            raise ValueError(f"approximate must be one of {tuple(GELU_FORMS)}, got {approximate!r}")
        self._approximate = approximate
        self._kernel = GELU_FORMS[approximate]

    approximate = fixed_attribute("approximate")

    @property
    def fuses_into_dense(self) -> bool:
        return False

    def config(self) -> dict[str, Any]:
        return {"type": "GELU", "approximate": self.approximate}


class Sigmoid(Activation):
    """``1 / (1 + exp(-x))``; derivative ``s (1 - s)``."""

    _kernel = "sigmoid"


class Tanh(Activation):
    """``tanh(x)``; derivative ``1 - tanh(x)**2``."""

    _kernel = "tanh"


class Softmax(Layer):
    """Row-wise ``exp(x_j - max x) / sum_k exp(x_k - max x)`` over (batch, classes).

    For classification train on logits with ``losses.CrossEntropy`` (which applies a stable
    log-softmax itself); a final ``Softmax`` suits ``losses.MSE`` on one-hot targets.
    """


class Dropout(Layer):
    """Inverted dropout, as PyTorch's ``Dropout(p)`` and Keras's ``Dropout(rate)``: while ``fit`` trains, each
    element is kept with probability ``1 - p`` and scaled by ``1 / (1 - p)``, otherwise zeroed (``x * 0``: a NaN
    stays NaN), so that the expected output is the input; ``predict``, ``evaluate``, ``compute_gradients`` and the
    validation of ``fit`` pass the input through unchanged. ``p`` in [0, 1); 0 is the identity.

    The masks are not drawn from a stateful generator but computed (``fastopt._random``): element i of a batch's
    (batch, features) input, row-major, is kept when the i-th 32-bit number of a SplitMix64 stream is at least
    ``p 2**32``; the stream's key is derived from the epoch's key (a hash of ``fit``'s shuffling generator, seeded by
    ``seed``, as it is at the start of the epoch, and of the epoch's number), the batch's index in the epoch and this
    layer's index in the model; the backward pass multiplies by the mask kept. So the masks are the same on every
    backend and thread count, differ between batches, epochs and layers, change no permutation of the data
    (``Dropout(0)`` trains bit for bit as no layer), and a run resumed from a checkpoint (which keeps the generator's
    state at the start of the epoch) makes them again."""

    def __init__(self, p: float = 0.5) -> None:
        self._p = check_scalar(p, "p", high=1.0, high_open=True)

    p = fixed_attribute("p")

    def config(self) -> dict[str, Any]:
        return {"type": "Dropout", "p": self.p}


LAYER_TYPES: dict[str, type[Layer]] = {
    cls.__name__: cls for cls in (Dense, ReLU, LeakyReLU, GELU, Sigmoid, Tanh, Softmax, Dropout)
}


def layer_from_config(config: object) -> Layer:
    """Rebuild a layer from ``Layer.config()`` output; refuses unknown types and arguments."""
    if not isinstance(config, dict) or config.get("type") not in LAYER_TYPES:
        raise ValueError(f"unknown layer description {config!r}")
    arguments = {key: value for key, value in config.items() if key != "type"}
    try:
        return LAYER_TYPES[config["type"]](**arguments)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {config['type']}: {exc}") from exc
