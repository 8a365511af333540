"""Losses: ``CrossEntropy`` (softmax cross-entropy on logits, with label smoothing), ``BinaryCrossEntropy`` (sigmoid
cross-entropy on logits), ``MSE``, ``Huber`` and ``MAE``; per-sample weights (``sample_weight``, ``class_weight``).

A loss turns a user's targets into a validated array once (``targets``), and on each batch computes its value and
writes the gradient with respect to the model output through the backend, in one kernel call.

Weights (``fit(sample_weight=..., class_weight=...)``, ``evaluate(sample_weight=...)``): each sample i has a weight
``w_i >= 0`` (``sample_weight[i] * class_weight[y_i]``; 1 when neither is given). A batch's loss is the weighted mean
``sum_i w_i l_i / sum_i w_i`` of its samples' losses ``l_i`` (a sample's loss is the mean over its outputs for
``MSE``, ``Huber``, ``MAE`` and ``BinaryCrossEntropy``), as PyTorch's weighted ``CrossEntropyLoss`` and scikit-learn
weight a mean; its gradient is that of this mean. A batch whose weights sum to 0 has loss 0 and a zero gradient. The
epoch's loss is ``sum_i w_i l_i / sum_i w_i`` over all its samples. Accuracy stays unweighted (Keras's ``metrics``).
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass, replace

import numpy as np

from fastopt._checks import DTypeError, as_labels, as_real_array, check_scalar, fixed_attribute, resolve_dtype
from fastopt.backend import Backend, resolve_backend
from fastopt.layers import Layer, Sigmoid, Softmax


@dataclass(frozen=True)
class Targets:
    """Validated targets for a whole dataset.

    ``values`` is what the loss compares the output with (int64 labels (N,) for CrossEntropy, a float (N, outputs)
    array in the model's dtype for the others); ``labels`` holds int64 class labels (N,) in ``[0, classes)`` when
    each sample has one class (validation splits are then stratified and ``class_weight`` applies), else None.
    ``weights`` (N,) are the samples' weights, or None (all 1); they are in the model's dtype, as every float array
    of a kernel call is (a weight's rounding in float32, 6e-8 relative, is far below what a weight means).
    ``binary``: the targets are 0/1 per output (BinaryCrossEntropy): accuracy compares each output's logit sign
    with its target, over ``samples * outputs`` predictions; otherwise accuracy is over rows, when there are labels.
    """

    values: np.ndarray
    labels: np.ndarray | None
    weights: np.ndarray | None = None
    classes: int = 0
    binary: bool = False

    def __len__(self) -> int:
        return len(self.values)

    @property
    def reports_accuracy(self) -> bool:
        return self.binary or self.labels is not None

    @property
    def counted_against(self) -> str | None:
        """What a training step counts its correct predictions against: ``"binary"`` (each output's logit sign
        against its 0/1 target), ``"values"`` (the class labels are the values the loss gathers), ``"labels"``
        (class labels of their own, gathered for the count), or None (nothing is counted). The Python step and the
        backends' compiled steps both follow it."""
        if self.binary:
            return "binary"
        if self.labels is self.values:
            return "values"
        return None if self.labels is None else "labels"

    @property
    def predictions_per_row(self) -> int:
        """How many predictions of a row accuracy counts: each output for binary targets, else one."""
        return self.values.shape[1] if self.binary else 1

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays that define the targets (a checkpoint's fingerprint hashes them)."""
        return (self.values,) if self.weights is None else (self.values, self.weights)

    def subset(self, rows: np.ndarray) -> Targets:
        """The targets of ``rows`` (a validation split), with their weights."""
        labels = None if self.labels is None else self.labels[rows]
        values = labels if self.labels is self.values else np.ascontiguousarray(self.values[rows])
        weights = None if self.weights is None else self.weights[rows]
        return replace(self, values=values, labels=labels, weights=weights)

    def with_sample_weight(self, sample_weight: object, dtype: np.dtype, name: str = "sample_weight") -> Targets:
        """These targets weighted by ``sample_weight`` (N,) (None: unchanged), stored in ``dtype`` (the model's).
        Weights must be real, finite and >= 0 (ValueError/TypeError naming the first that is not), and within
        ``dtype``'s range."""
        if sample_weight is None:
            return self
        weights = as_real_array(sample_weight, name)
        if weights.ndim != 1 or len(weights) != len(self):
            raise ValueError(f"{name} must hold one weight per sample, shape ({len(self)},), got shape {weights.shape}")
        return replace(self, weights=_checked_weights(weights.astype(np.float64), name, dtype))

    def with_class_weight(self, class_weight: object, dtype: np.dtype) -> Targets:
        """These targets with each weight multiplied by ``class_weight[label]``: a dict {class: weight} (classes
        not in it weigh 1) or ``"balanced"`` (scikit-learn's ``n_samples / (n_classes * bincount(labels))`` over
        the classes present). None: unchanged. Needs one class label per sample. The product of the two weights is
        taken in float64 and stored in ``dtype``."""
        if class_weight is None:
            return self
        if self.labels is None:
            raise ValueError(
                "class_weight needs one class label per sample (class labels or one-hot rows, or 0/1 targets of a "
                "one-output BinaryCrossEntropy); these targets have none: use sample_weight (or pos_weight for "
                "multi-label BinaryCrossEntropy)"
            )
        per_class = _class_weights(class_weight, self.labels, self.classes)
        base = np.ones(len(self)) if self.weights is None else self.weights.astype(np.float64)
        return replace(self, weights=_checked_weights(base * per_class[self.labels], "class_weight", dtype))

    def check_weight_total(self, what: str) -> None:
        """Refuse weights that sum to 0: no sample of ``what`` would count."""
        if self.weights is not None and not np.sum(self.weights, dtype=np.float64) > 0:
            raise ValueError(f"the weights of {what} sum to 0: no sample would count (give some a weight > 0)")


def _checked_weights(weights: np.ndarray, name: str, dtype: np.dtype) -> np.ndarray:
    """float64 weights checked (finite, >= 0) and converted to ``dtype`` (refused if they overflow it)."""
    bad = ~np.isfinite(weights) | (weights < 0)
    if bad.any():
        index = int(np.argmax(bad))
        problem = "NaN or Inf" if not np.isfinite(weights[index]) else "a negative weight"
        raise ValueError(f"{name} must be finite and >= 0: found {problem} ({weights[index]!s}) at index {index}")
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(weights, dtype=dtype)
    if not np.isfinite(converted).all():
        raise ValueError(f"{name} has weights too large for {dtype.name}")
    return converted


def _class_weights(class_weight: object, labels: np.ndarray, classes: int) -> np.ndarray:
    """The weight of each class (float64 (classes,)) from a dict {class: weight} or ``"balanced"``."""
    if isinstance(class_weight, str):
        if class_weight != "balanced":
            raise ValueError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")
        counts = np.bincount(labels, minlength=classes).astype(np.float64)
        present = counts > 0
        weights = np.ones(classes)
        weights[present] = len(labels) / (np.count_nonzero(present) * counts[present])
        return weights
    if not isinstance(class_weight, dict):
        raise TypeError(
            f"class_weight must be a dict {{class: weight}} or 'balanced', got {type(class_weight).__name__}"
        )
    weights = np.ones(classes)
    for key, value in class_weight.items():
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"class_weight keys must be integer class labels, got {key!r}")
        if not 0 <= key < classes:
            raise ValueError(f"class_weight has a weight for class {key}, but the classes are 0..{classes - 1}")
        weights[key] = check_scalar(value, f"class_weight[{key}]")
    return weights


class Loss:
    """Base class of losses. ``kernel`` names the backend method that computes the loss and its gradient;
    ``_options`` gives the kernel's arguments after the weights (its options). ``logits_from`` names the layer type
    whose output the loss must not be given (the loss applies that function to its logits itself)."""

    kernel = ""
    _kernel_method = ""  # "_" + kernel: the trusted backend method, named once per class (not per step)
    logits_from: type[Layer] | None = None
    _extras: tuple[object, ...] = ()  # the kernel's scalar options, made once

    def __init_subclass__(cls, **options: object) -> None:
        super().__init_subclass__(**options)
        cls._kernel_method = sys.intern("_" + cls.kernel)

    def __setstate__(self, state: dict[str, object]) -> None:
        # A loss pickled before its options were read-only kept them under their own names.
        for name in ("label_smoothing", "pos_weight", "delta"):
            if name in state:
                state["_" + name] = state.pop(name)
        self.__dict__.update(state)

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        raise NotImplementedError

    def compute(
        self,
        backend: Backend,
        output: np.ndarray,
        target: np.ndarray,
        grad: np.ndarray | None,
        weights: np.ndarray | None = None,
    ) -> float:
        """The (weighted) mean loss of a batch; writes d loss / d output into ``grad`` unless it is None.
        Trusted buffers: the training loop validated them."""
        return getattr(backend, self._kernel_method)(output, target, grad, weights, *self._options(output))

    def _options(self, output: np.ndarray) -> tuple[object, ...]:
        """The kernel's arguments after the weights, for outputs ``output``."""
        return self._extras

    def _step_kernel(self, output: np.ndarray) -> tuple[str, tuple[object, ...], float, float] | None:
        """What ``compute`` does, for a compiled training step: (kernel, its options, the factor of the value, the
        factor of the gradient); None when ``compute`` is a subclass's own."""
        if type(self).compute is not Loss.compute:
            return None
        return self.kernel, self._options(output), 1.0, 1.0

    def __call__(
        self, y_pred: object, y_true: object, backend: str | None = None, sample_weight: object = None
    ) -> float:
        """The loss of predictions ``y_pred`` (N, outputs) against ``y_true``, weighted by ``sample_weight`` (N,)
        when given, on the current backend."""
        pred = np.asarray(y_pred)
        if pred.ndim != 2 or pred.dtype.kind != "f":
            raise ValueError(
                f"y_pred must be a 2-D float array (samples, outputs), got shape {pred.shape} {pred.dtype}"
            )
        dtype = resolve_dtype(pred.dtype)
        pred = np.ascontiguousarray(pred)
        target = self.targets(y_true, pred.shape[1], dtype)
        if len(target) != len(pred):
            raise ValueError(f"y_pred and y_true have different lengths: {len(pred)} and {len(target)}")
        weights = target.with_sample_weight(sample_weight, dtype).weights
        checked = getattr(resolve_backend(backend), self.kernel)
        return checked(pred, target.values, None, weights, *self._options(pred))

    def check_last_layer(self, layer: Layer, stacklevel: int) -> None:
        """Warn (``UserWarning``) when the model's last layer already applies the function this loss applies to its
        logits (a ``Softmax`` before ``CrossEntropy``): it would be applied twice, and training slows or stalls."""
        if self.logits_from is not None and isinstance(layer, self.logits_from):
            name = self.logits_from.__name__
            warnings.warn(
                f"the model's last layer is {name}, but {type(self).__name__} takes logits and applies the "
                f"{name.lower()} itself: it is applied twice and training slows or stalls. Remove the last {name} "
                "layer (model.predict_proba gives the probabilities)",
                UserWarning,
                stacklevel=stacklevel + 1,
            )

    def probabilities(self, backend: Backend, logits: np.ndarray) -> np.ndarray:
        """The probabilities of outputs ``logits`` (N, outputs); only losses on logits have them."""
        raise ValueError(
            f"{self!r} does not make probabilities (its outputs are not logits): predict_proba needs a model trained "
            "with CrossEntropy (softmax) or BinaryCrossEntropy (sigmoid); pass loss= to say which"
        )

    def predicted_classes(self, logits: np.ndarray) -> np.ndarray:
        """The class of each row (int64 (N,)): the output with the largest value (the first, on ties)."""
        if logits.shape[1] < 2:
            raise ValueError(
                f"predict_classes takes the largest of the outputs, but this model has one output and {self!r} has no "
                "classes: use BinaryCrossEntropy for a one-output classifier"
            )
        return np.ascontiguousarray(logits.argmax(axis=1), dtype=np.int64)

    def config(self) -> dict[str, object]:
        """The constructor arguments (a checkpoint's run must have the same loss)."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({options})"


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits z (N, C) with integer labels (N,) or one-hot rows (N, C), PyTorch's
    ``CrossEntropyLoss(label_smoothing=eps)``.

    The target of row i is ``t_i = (1 - eps) onehot(y_i) + eps / C``; ``l_i = logsumexp(z_i) - <t_i, z_i>`` (a stable
    log-softmax); the loss is ``mean_i l_i`` (with weights ``sum_i w_i l_i / sum_i w_i``, see the module docstring);
    ``d loss / d z_i = (softmax(z_i) - t_i) / N`` (weighted: ``* w_i / sum w`` instead of ``/ N``). ``eps`` is in
    [0, 1). Accuracy: the share of rows whose largest logit is the label. ``predict_proba``: ``softmax(z)``.
    """

    kernel = "softmax_cross_entropy"
    logits_from = Softmax
    _label_smoothing = 0.0  # (class defaults: a CrossEntropy pickled before label smoothing existed)
    _extras = (0.0,)
    label_smoothing = fixed_attribute("label_smoothing")

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self._label_smoothing = check_scalar(label_smoothing, "label_smoothing", high=1.0, high_open=True)
        self._extras = (self._label_smoothing,)

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        if n_outputs < 2:
            raise ValueError(
                "CrossEntropy needs a model with at least 2 outputs (one logit per class); for one output (binary "
                "classification) use BinaryCrossEntropy"
            )
        labels = as_labels(y, n_outputs)
        return Targets(values=labels, labels=labels, classes=n_outputs)

    def probabilities(self, backend: Backend, logits: np.ndarray) -> np.ndarray:
        return backend.softmax_forward(logits, np.empty_like(logits))

    def config(self) -> dict[str, object]:
        return {"label_smoothing": self.label_smoothing}


class BinaryCrossEntropy(Loss):
    """Sigmoid cross-entropy on logits x (N, k), PyTorch's ``BCEWithLogitsLoss(pos_weight=p)``: one output for a
    binary task (targets 0/1, shape (N,) or (N, 1)), k outputs for k independent labels (multi-label: 0/1 targets
    (N, k)); float targets in [0, 1] are accepted too (soft labels).

    With ``s = sigmoid(x)``: ``l = -(p_j y log s + (1 - y) log(1 - s))`` per element, computed stably for any logit
    (``-log s = max(-x, 0) + log1p(exp(-|x|))``); ``pos_weight`` p is one value per output column (a number applies
    to every column), broadcast over rows, or None (1). The loss is the mean over all elements (with weights, each
    sample's mean over its outputs weighted: see the module docstring); ``d l / d x = (1 - y) s - p y (1 - s)``.

    Accuracy (reported when every target is 0 or 1): a prediction is ``x > 0`` (s > 0.5) and is right when it equals
    its target. With one output that is the usual accuracy over samples; with k outputs it is the mean over all N k
    elements (Keras's ``binary_accuracy``). ``predict_proba``: ``sigmoid(x)``; ``predict_classes``: ``x > 0``.
    """

    kernel = "binary_cross_entropy"
    logits_from = Sigmoid

    pos_weight = fixed_attribute("pos_weight")

    def __init__(self, pos_weight: float | list[float] | np.ndarray | None = None) -> None:
        self._pos_weight = _checked_pos_weight(pos_weight)
        self._pos_weights: dict[tuple[int, int], tuple[np.ndarray | None]] = {}

    def _options(self, output: np.ndarray) -> tuple[np.ndarray | None]:
        """``(pos_weight,)`` as an array of the outputs' dtype and width (None without it), made once per kind."""
        key = (output.itemsize, output.shape[1])
        if key not in self._pos_weights:
            columns = None if self.pos_weight is None else np.full(key[1], self.pos_weight, dtype=output.dtype)
            self._pos_weights[key] = (columns,)
        return self._pos_weights[key]

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        if isinstance(self.pos_weight, list) and len(self.pos_weight) != n_outputs:
            raise ValueError(
                f"pos_weight has {len(self.pos_weight)} values but the model has {n_outputs} outputs (one per column)"
            )
        array = as_real_array(y, "y")
        if array.ndim == 1 and n_outputs == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != n_outputs:
            raise ValueError(
                f"y must have shape (samples, {n_outputs}) for BinaryCrossEntropy on this model (one 0/1 target per "
                f"output{'; (samples,) is accepted for one output' if n_outputs == 1 else ''}), got {array.shape}"
            )
        values = _checked_probabilities(np.ascontiguousarray(array, dtype=dtype))
        binary = bool(np.isin(values, (0, 1)).all())
        labels = np.ascontiguousarray(values[:, 0], dtype=np.int64) if binary and n_outputs == 1 else None
        return Targets(values=values, labels=labels, classes=2 if labels is not None else 0, binary=binary)

    def probabilities(self, backend: Backend, logits: np.ndarray) -> np.ndarray:
        return backend.activation_forward("sigmoid", logits, np.empty_like(logits))

    def predicted_classes(self, logits: np.ndarray) -> np.ndarray:
        """1 where the logit is > 0 (probability > 0.5), else 0: int64 (N,) for one output, (N, k) for k labels."""
        classes = (logits > 0).astype(np.int64)
        return classes[:, 0].copy() if classes.shape[1] == 1 else classes

    def config(self) -> dict[str, object]:
        return {"pos_weight": self.pos_weight}


def _checked_probabilities(values: np.ndarray) -> np.ndarray:
    """``values`` if every one is in [0, 1] (0/1 labels or probabilities), else a ValueError quoting their range."""
    if values.size and not (np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1):
        raise ValueError(
            f"BinaryCrossEntropy targets must be 0/1 labels or probabilities in [0, 1], found "
            f"{np.nanmin(values)!s}..{np.nanmax(values)!s}{' and NaN' if np.isnan(values).any() else ''}"
        )
    return values


def _checked_pos_weight(pos_weight: object) -> float | list[float] | None:
    """None, one number (every column), or one number per column (a list): finite and >= 0."""
    if pos_weight is None:
        return None
    if isinstance(pos_weight, (int, float, np.integer, np.floating)) and not isinstance(pos_weight, (bool, np.bool_)):
        return check_scalar(pos_weight, "pos_weight")
    array = as_real_array(pos_weight, "pos_weight")
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"pos_weight must be a number or one number per output column, got shape {array.shape}")
    if array.dtype.kind == "b":
        raise DTypeError("pos_weight must hold real numbers, got booleans")
    return [check_scalar(value, f"pos_weight[{index}]") for index, value in enumerate(array.tolist())]


class _RegressionLoss(Loss):
    """A loss of float targets (N, outputs) (or (N,) for one output); integer class labels (N,) are turned into
    one-hot rows when the model has several outputs. Accuracy is reported when the targets are class labels or
    one-hot rows (the largest output is the predicted class)."""

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        array = as_real_array(y, "y")
        if array.ndim == 1 and array.dtype.kind in "biu" and n_outputs > 1:
            labels = as_labels(array, n_outputs)
            return Targets(values=np.eye(n_outputs, dtype=dtype)[labels], labels=labels, classes=n_outputs)
        if array.ndim == 1 and n_outputs == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != n_outputs:
            raise ValueError(f"y must have shape (samples, {n_outputs}) for this model, got {array.shape}")
        values = np.ascontiguousarray(array, dtype=dtype)
        if not np.isfinite(values).all():
            raise ValueError("y contains NaN or Inf")
        is_one_hot = n_outputs > 1 and np.isin(values, (0, 1)).all() and (values.sum(axis=1) == 1).all()
        labels = np.ascontiguousarray(values.argmax(axis=1), dtype=np.int64) if is_one_hot else None
        return Targets(values=values, labels=labels, classes=n_outputs if is_one_hot else 0)


class MSE(_RegressionLoss):
    """Mean squared error over all elements: ``loss = mean((y_hat - y)**2)`` (PyTorch's ``MSELoss``);
    ``d loss / d y_hat = 2 (y_hat - y) / numel``. With weights, each sample's mean over its outputs is weighted (see
    the module docstring). Targets as ``_RegressionLoss`` takes them."""

    kernel = "mse"


class Huber(_RegressionLoss):
    """Huber loss (PyTorch's ``HuberLoss(delta=delta)``, mean over all elements): with ``d = y_hat - y``,
    ``l = d**2 / 2`` where ``|d| < delta``, else ``delta (|d| - delta / 2)``; ``d l / d y_hat = clip(d, -delta,
    delta)``. ``delta > 0``: quadratic near the target, linear (robust to outliers) beyond. Weighted as MSE."""

    kernel = "huber"

    delta = fixed_attribute("delta")

    def __init__(self, delta: float = 1.0) -> None:
        self._delta = check_scalar(delta, "delta", low_open=True)
        self._extras = (self._delta,)

    def config(self) -> dict[str, object]:
        return {"delta": self.delta}


class MAE(_RegressionLoss):
    """Mean absolute error over all elements (PyTorch's ``L1Loss``): ``l = |y_hat - y|``; ``d l / d y_hat =
    sign(y_hat - y)``, with sign(0) = 0. Weighted as MSE."""

    kernel = "mae"


LOSS_TYPES: dict[str, type[Loss]] = {
    "CrossEntropy": CrossEntropy,
    "BinaryCrossEntropy": BinaryCrossEntropy,
    "MSE": MSE,
    "Huber": Huber,
    "MAE": MAE,
}
