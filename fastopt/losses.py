"""Losses: ``CrossEntropy`` (softmax cross-entropy on logits) and ``MSE``.

A loss turns a user's targets into a validated array once (``targets``), and on each batch computes
its value and writes the gradient with respect to the model output through the backend.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from fastopt._checks import as_labels, as_real_array, resolve_dtype
from fastopt.backend import Backend, resolve_backend


@dataclass(frozen=True)
class Targets:
    """Validated targets for a whole dataset.

    ``values`` is what the loss compares the output with (int64 labels (N,) for CrossEntropy, a float
    (N, outputs) array for MSE); ``labels`` holds int64 class labels when the task is classification
    (accuracy is then reported), else None.
    """

    values: np.ndarray
    labels: np.ndarray | None

    def __len__(self) -> int:
        return len(self.values)

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The arrays that define the targets (a checkpoint's fingerprint hashes them)."""
        return (self.values,)

    def subset(self, rows: np.ndarray) -> Targets:
        """The targets of ``rows`` (a validation split)."""
        labels = None if self.labels is None else self.labels[rows]
        if self.labels is self.values:
            return Targets(labels, labels)  # type: ignore[arg-type]
        return Targets(np.ascontiguousarray(self.values[rows]), labels)


class Loss:
    """Base class of losses. ``kernel`` names the backend method that computes the loss and its gradient."""

    kernel = ""
    _kernel_method = ""  # "_" + kernel: the trusted backend method, named once per class (not per step)

    def __init_subclass__(cls, **options: object) -> None:
        super().__init_subclass__(**options)
        cls._kernel_method = sys.intern("_" + cls.kernel)

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        raise NotImplementedError

    def compute(self, backend: Backend, output: np.ndarray, target: np.ndarray, grad: np.ndarray | None) -> float:
        """The mean loss of a batch; writes d loss / d output into ``grad`` unless it is None.
        Trusted buffers: the training loop validated them."""
        return getattr(backend, self._kernel_method)(output, target, grad)

    def __call__(self, y_pred: object, y_true: object, backend: str | None = None) -> float:
        """The loss of predictions ``y_pred`` (N, outputs) against ``y_true``, on the current backend."""
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
        return getattr(resolve_backend(backend), self.kernel)(pred, target.values)

    def config(self) -> dict[str, object]:
        """The constructor arguments (a checkpoint's run must have the same loss)."""
        return {}

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in self.config().items())
        return f"{type(self).__name__}({options})"


class CrossEntropy(Loss):
    """Softmax cross-entropy on logits z (N, C) with integer labels (N,) or one-hot rows (N, C).

    ``loss = mean_i [ logsumexp(z_i) - z_i[y_i] ]`` (a stable log-softmax);
    ``d loss / d z = (softmax(z) - onehot(y)) / N``.
    """

    kernel = "softmax_cross_entropy"

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        if n_outputs < 2:
            raise ValueError("CrossEntropy needs a model with at least 2 outputs (one logit per class)")
        labels = as_labels(y, n_outputs)
        return Targets(values=labels, labels=labels)


class MSE(Loss):
    """Mean squared error over all elements: ``loss = mean((y_hat - y)**2)``;
    ``d loss / d y_hat = 2 (y_hat - y) / numel``.

    Targets are float (N, outputs) (or (N,) for one output); integer class labels (N,) are turned into
    one-hot rows when the model has several outputs. Accuracy is reported when the targets are
    class labels or one-hot rows.
    """

    kernel = "mse"

    def targets(self, y: object, n_outputs: int, dtype: np.dtype) -> Targets:
        array = as_real_array(y, "y")
        if array.ndim == 1 and array.dtype.kind in "biu" and n_outputs > 1:
            labels = as_labels(array, n_outputs)
            return Targets(values=np.eye(n_outputs, dtype=dtype)[labels], labels=labels)
        if array.ndim == 1 and n_outputs == 1:
            array = array.reshape(-1, 1)
        if array.ndim != 2 or array.shape[1] != n_outputs:
            raise ValueError(f"y must have shape (samples, {n_outputs}) for this model, got {array.shape}")
        values = np.ascontiguousarray(array, dtype=dtype)
        if not np.isfinite(values).all():
            raise ValueError("y contains NaN or Inf")
        is_one_hot = n_outputs > 1 and np.isin(values, (0, 1)).all() and (values.sum(axis=1) == 1).all()
        labels = np.ascontiguousarray(values.argmax(axis=1), dtype=np.int64) if is_one_hot else None
        return Targets(values=values, labels=labels)


LOSS_TYPES: dict[str, type[Loss]] = {"CrossEntropy": CrossEntropy, "MSE": MSE}
