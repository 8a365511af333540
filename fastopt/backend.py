"""The backend interface: one method per kernel, chosen by name.

A backend implements the underscore methods (``_dense_forward``, ``_adam_step``, ...). They trust
their arguments: C-contiguous buffers of one float dtype and matching shapes, outputs writeable
and not overlapping inputs. The public methods of the same name without the underscore check all
of that once and then call the kernel, so that a kernel is never reached with a buffer that could
make it read or write out of bounds. ``Sequential`` and the optimizers validate their own buffers
when they allocate them and call the underscore methods directly on the hot path.

Shapes: ``B`` batch rows, ``I`` input features, ``O`` output features, ``C`` classes.
"""

from __future__ import annotations

import contextlib
import contextvars
import warnings
from collections.abc import Callable, Iterator

import numpy as np

from fastopt._checks import check_array, check_no_overlap, check_scalar

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh")
# Optimizer state buffers that are None when their option is off (momentum, centered, amsgrad).
OPTIONAL_STATE = frozenset({"momentum_buffer", "grad_avg", "max_exp_avg_sq"})


def _check_activation(activation: object) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    return activation  # type: ignore[return-value]


def _check_labels(labels: object, batch: int, n_classes: int) -> np.ndarray:
    labels = check_array(labels, "labels", dtype=np.dtype(np.int64), shape=(batch,))
    if batch and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"labels must lie in [0, {n_classes}), found {labels.min()}..{labels.max()}")
    return labels


def _check_state(name: str, buffer: object, param: np.ndarray) -> np.ndarray:
    return check_array(buffer, name, dtype=param.dtype, shape=param.shape, writeable=True)


class Backend:
    """Base class of the backends: checked entry points over the trusted kernels."""

    name = "abstract"

    # ----------------------------------------------------------------------------- dense layer
    def dense_forward(
        self, x: np.ndarray, weight: np.ndarray, bias: np.ndarray, out: np.ndarray, activation: str = "identity"
    ) -> np.ndarray:
        """``out = f(x @ weight + bias)``: x (B, I), weight (I, O), bias (O,), out (B, O); f is the activation."""
        x = check_array(x, "x")
        batch, n_in = x.shape if x.ndim == 2 else (None, None)
        if batch is None:
            raise ValueError(f"x must be 2-D (batch, features), got shape {x.shape}")
        weight = check_array(weight, "weight", dtype=x.dtype)
        if weight.ndim != 2 or weight.shape[0] != n_in:
            raise ValueError(f"weight must have shape ({n_in}, out_features), got {weight.shape}")
        n_out = weight.shape[1]
        bias = check_array(bias, "bias", dtype=x.dtype, shape=(n_out,))
        out = check_array(out, "out", dtype=x.dtype, shape=(batch, n_out), writeable=True)
        check_no_overlap([("out", out)], [("x", x), ("weight", weight), ("bias", bias)])
        self._dense_forward(x, weight, bias, out, _check_activation(activation))
        return out

    def dense_backward(
        self,
        x: np.ndarray,
        weight: np.ndarray,
        out: np.ndarray,
        grad_out: np.ndarray,
        grad_weight: np.ndarray,
        grad_bias: np.ndarray,
        grad_x: np.ndarray | None,
        activation: str = "identity",
    ) -> None:
        """Backward of ``out = f(x @ weight + bias)``.

        ``grad_out`` (B, O) is overwritten with the pre-activation gradient ``dz = grad_out * f'(out)``;
        then ``grad_weight = x.T @ dz`` (I, O), ``grad_bias = dz.sum(0)`` (O,), and, unless ``grad_x``
        is None (the first layer), ``grad_x = dz @ weight.T`` (B, I).
        """
        x = check_array(x, "x")
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (batch, features), got shape {x.shape}")
        batch, n_in = x.shape
        weight = check_array(weight, "weight", dtype=x.dtype)
        if weight.ndim != 2 or weight.shape[0] != n_in:
            raise ValueError(f"weight must have shape ({n_in}, out_features), got {weight.shape}")
        n_out = weight.shape[1]
        out = check_array(out, "out", dtype=x.dtype, shape=(batch, n_out))
        grad_out = check_array(grad_out, "grad_out", dtype=x.dtype, shape=(batch, n_out), writeable=True)
        grad_weight = check_array(grad_weight, "grad_weight", dtype=x.dtype, shape=(n_in, n_out), writeable=True)
        grad_bias = check_array(grad_bias, "grad_bias", dtype=x.dtype, shape=(n_out,), writeable=True)
        outputs = [("grad_out", grad_out), ("grad_weight", grad_weight), ("grad_bias", grad_bias)]
        if grad_x is not None:
            outputs.append(
                ("grad_x", check_array(grad_x, "grad_x", dtype=x.dtype, shape=(batch, n_in), writeable=True))
            )
        check_no_overlap(outputs, [("x", x), ("weight", weight), ("out", out)])
        self._dense_backward(x, weight, out, grad_out, grad_weight, grad_bias, grad_x, _check_activation(activation))

    # ----------------------------------------------------------------------------- activations
    def _check_unary(self, x: np.ndarray, out: np.ndarray, x_name: str, out_name: str) -> tuple[np.ndarray, np.ndarray]:
        x = check_array(x, x_name)
        out = check_array(out, out_name, dtype=x.dtype, shape=x.shape, writeable=True)
        check_no_overlap([(out_name, out)], [(x_name, x)])
        return x, out

    def _check_activation_backward(
        self, out: np.ndarray, grad_out: np.ndarray, grad_x: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = check_array(out, "out")
        grad_out = check_array(grad_out, "grad_out", dtype=out.dtype, shape=out.shape)
        grad_x = check_array(grad_x, "grad_x", dtype=out.dtype, shape=out.shape, writeable=True)
        check_no_overlap([("grad_x", grad_x)], [("out", out), ("grad_out", grad_out)])
        return out, grad_out, grad_x

    def activation_forward(self, activation: str, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out = f(x)`` elementwise, f one of relu, sigmoid, tanh (identity copies)."""
        x, out = self._check_unary(x, out, "x", "out")
        self._activation_forward(_check_activation(activation), x, out)
        return out

    def activation_backward(
        self, activation: str, out: np.ndarray, grad_out: np.ndarray, grad_x: np.ndarray
    ) -> np.ndarray:
        """``grad_x = grad_out * f'(x)``, with f' written in terms of the forward output ``out``:
        relu ``out > 0``, sigmoid ``out (1 - out)``, tanh ``1 - out**2``."""
        out, grad_out, grad_x = self._check_activation_backward(out, grad_out, grad_x)
        self._activation_backward(_check_activation(activation), out, grad_out, grad_x)
        return grad_x

    def softmax_forward(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out[i] = exp(x[i] - max x[i]) / sum_j exp(x[i, j] - max x[i])`` for each row of x (B, C)."""
        x, out = self._check_unary(x, out, "x", "out")
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (batch, classes), got shape {x.shape}")
        self._softmax_forward(x, out)
        return out

    def softmax_backward(self, out: np.ndarray, grad_out: np.ndarray, grad_x: np.ndarray) -> np.ndarray:
        """``grad_x[i] = out[i] * (grad_out[i] - <grad_out[i], out[i]>)`` for each row (B, C)."""
        out, grad_out, grad_x = self._check_activation_backward(out, grad_out, grad_x)
        if out.ndim != 2:
            raise ValueError(f"out must be 2-D (batch, classes), got shape {out.shape}")
        self._softmax_backward(out, grad_out, grad_x)
        return grad_x

    # ----------------------------------------------------------------------------- losses
    def softmax_cross_entropy(
        self, logits: np.ndarray, labels: np.ndarray, grad_logits: np.ndarray | None = None
    ) -> float:
        """Mean over the batch of ``logsumexp(logits[i]) - logits[i, labels[i]]``; logits (B, C), labels
        int64 (B,). If ``grad_logits`` is given it receives ``(softmax(logits) - onehot(labels)) / B``."""
        logits = check_array(logits, "logits")
        if logits.ndim != 2 or logits.shape[0] == 0:
            raise ValueError(f"logits must be 2-D (batch, classes) with batch >= 1, got shape {logits.shape}")
        labels = _check_labels(labels, logits.shape[0], logits.shape[1])
        if grad_logits is not None:
            grad_logits = check_array(
                grad_logits, "grad_logits", dtype=logits.dtype, shape=logits.shape, writeable=True
            )
            check_no_overlap([("grad_logits", grad_logits)], [("logits", logits)])
        return self._softmax_cross_entropy(logits, labels, grad_logits)

    def mse(self, pred: np.ndarray, target: np.ndarray, grad_pred: np.ndarray | None = None) -> float:
        """Mean over all elements of ``(pred - target)**2``; pred and target (B, O). If ``grad_pred`` is
        given it receives ``2 (pred - target) / (B * O)``."""
        pred = check_array(pred, "pred")
        if pred.size == 0:
            raise ValueError("pred is empty")
        target = check_array(target, "target", dtype=pred.dtype, shape=pred.shape)
        if grad_pred is not None:
            grad_pred = check_array(grad_pred, "grad_pred", dtype=pred.dtype, shape=pred.shape, writeable=True)
            check_no_overlap([("grad_pred", grad_pred)], [("pred", pred), ("target", target)])
        return self._mse(pred, target, grad_pred)

    def count_correct(self, scores: np.ndarray, labels: np.ndarray) -> int:
        """Number of rows of scores (B, C) whose first largest entry is at ``labels[i]``."""
        scores = check_array(scores, "scores")
        if scores.ndim != 2:
            raise ValueError(f"scores must be 2-D (batch, classes), got shape {scores.shape}")
        labels = _check_labels(labels, scores.shape[0], scores.shape[1])
        return self._count_correct(scores, labels)

    def gather_rows(self, source: np.ndarray, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``out[i] = source[rows[i]]``: source (N, F), rows (B,) int64 in [0, N), out (B, F)."""
        source = check_array(source, "source")
        if source.ndim != 2:
            raise ValueError(f"source must be 2-D (samples, features), got shape {source.shape}")
        rows = check_array(rows, "rows", dtype=np.dtype(np.int64))
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {rows.shape}")
        if rows.size and (rows.min() < 0 or rows.max() >= source.shape[0]):
            raise ValueError(f"rows must lie in [0, {source.shape[0]}), found {rows.min()}..{rows.max()}")
        out = check_array(out, "out", dtype=source.dtype, shape=(rows.size, source.shape[1]), writeable=True)
        check_no_overlap([("out", out)], [("source", source), ("rows", rows)])
        self._gather_rows(source, rows, out)
        return out

    def all_finite(self, x: np.ndarray) -> bool:
        """Whether the float array x (any shape) holds no NaN or Inf."""
        return self._all_finite(check_array(x, "x").reshape(-1))

    # ----------------------------------------------------------------------------- optimizers
    def _check_update(self, param: np.ndarray, grad: np.ndarray, **state: np.ndarray | None) -> None:
        for name, buffer in state.items():
            if buffer is None and name not in OPTIONAL_STATE:
                raise TypeError(f"{name} is required, got None")
        param = check_array(param, "param", writeable=True)
        grad = check_array(grad, "grad", dtype=param.dtype, shape=param.shape)
        outputs = [("param", param)] + [
            (name, _check_state(name, buffer, param)) for name, buffer in state.items() if buffer is not None
        ]
        check_no_overlap(outputs, [("grad", grad)])

    def sgd_step(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        momentum_buffer: np.ndarray | None,
        *,
        lr: float,
        momentum: float,
        dampening: float,
        nesterov: bool,
        weight_decay: float,
        first_step: bool,
    ) -> None:
        """SGD in place: ``g = grad + wd p``; with momentum ``b = g`` on the first step, else
        ``b = mu b + (1 - dampening) g``, then ``g = g + mu b`` (Nesterov) or ``g = b``; ``p -= lr g``.
        ``momentum_buffer`` is None exactly when momentum is 0."""
        if (momentum_buffer is None) != (momentum == 0):
            raise ValueError("momentum_buffer must be given exactly when momentum != 0")
        self._check_update(param, grad, momentum_buffer=momentum_buffer)
        self._sgd_step(
            param,
            grad,
            momentum_buffer,
            check_scalar(lr, "lr"),
            check_scalar(momentum, "momentum"),
            check_scalar(dampening, "dampening", high=1.0),
            bool(nesterov),
            check_scalar(weight_decay, "weight_decay"),
            bool(first_step),
        )

    def adagrad_step(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        sum_squares: np.ndarray,
        *,
        lr: float,
        eps: float,
        weight_decay: float,
    ) -> None:
        """AdaGrad in place: ``g = grad + wd p``; ``s += g**2``; ``p -= lr g / (sqrt(s) + eps)``."""
        self._check_update(param, grad, sum_squares=sum_squares)
        self._adagrad_step(
            param,
            grad,
            sum_squares,
            check_scalar(lr, "lr"),
            check_scalar(eps, "eps"),
            check_scalar(weight_decay, "weight_decay"),
        )

    def rmsprop_step(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        square_avg: np.ndarray,
        grad_avg: np.ndarray | None,
        momentum_buffer: np.ndarray | None,
        *,
        lr: float,
        alpha: float,
        eps: float,
        momentum: float,
        weight_decay: float,
    ) -> None:
        """RMSProp in place: ``g = grad + wd p``; ``v = alpha v + (1 - alpha) g**2``; centered (``grad_avg``
        given): ``a = alpha a + (1 - alpha) g``, ``d = sqrt(v - a**2) + eps``, else ``d = sqrt(v) + eps``;
        with momentum (``momentum_buffer`` given) ``b = mu b + g / d``, ``p -= lr b``, else ``p -= lr g / d``."""
        if (momentum_buffer is None) != (momentum == 0):
            raise ValueError("momentum_buffer must be given exactly when momentum != 0")
        self._check_update(param, grad, square_avg=square_avg, grad_avg=grad_avg, momentum_buffer=momentum_buffer)
        self._rmsprop_step(
            param,
            grad,
            square_avg,
            grad_avg,
            momentum_buffer,
            check_scalar(lr, "lr"),
            check_scalar(alpha, "alpha", high=1.0),
            check_scalar(eps, "eps"),
            check_scalar(momentum, "momentum"),
            check_scalar(weight_decay, "weight_decay"),
        )

    def adam_step(
        self,
        param: np.ndarray,
        grad: np.ndarray,
        exp_avg: np.ndarray,
        exp_avg_sq: np.ndarray,
        max_exp_avg_sq: np.ndarray | None,
        *,
        lr: float,
        beta1: float,
        beta2: float,
        eps: float,
        weight_decay: float,
        decoupled_weight_decay: bool,
        bias_correction1: float,
        bias_correction2: float,
    ) -> None:
        """Adam/AdamW in place. Decoupled (AdamW): ``p *= 1 - lr wd`` and ``g = grad``; else ``g = grad + wd p``.
        ``m = b1 m + (1 - b1) g``; ``v = b2 v + (1 - b2) g**2``; with AMSGrad (``max_exp_avg_sq`` given)
        ``vmax = max(vmax, v)`` replaces v below; ``p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) + eps)``
        with ``bc1 = 1 - b1**t`` and ``bc2 = 1 - b2**t`` computed by the caller. Both backends multiply by
        ``1 / sqrt(bc2)``, made once in double, where PyTorch divides: the same math, one division less per element."""
        self._check_update(param, grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq, max_exp_avg_sq=max_exp_avg_sq)
        self._adam_step(
            param,
            grad,
            exp_avg,
            exp_avg_sq,
            max_exp_avg_sq,
            check_scalar(lr, "lr"),
            check_scalar(beta1, "beta1", high=1.0, high_open=True),
            check_scalar(beta2, "beta2", high=1.0, high_open=True),
            check_scalar(eps, "eps"),
            check_scalar(weight_decay, "weight_decay"),
            bool(decoupled_weight_decay),
            check_scalar(bias_correction1, "bias_correction1", high=1.0, low_open=True),
            check_scalar(bias_correction2, "bias_correction2", high=1.0, low_open=True),
        )

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """Held by ``Sequential.fit`` around its loop, where kernels alternate with BLAS calls; a backend
        may adjust its threading for that."""
        yield

    # ----------------------------------------------------------------------------- the kernels
    # Each backend implements these with the signatures below; they trust their arguments.
    def _dense_forward(self, x, weight, bias, out, activation):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _dense_backward(self, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _activation_forward(self, activation, x, out):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _activation_backward(self, activation, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _softmax_forward(self, x, out):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _softmax_backward(self, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _softmax_cross_entropy(self, logits, labels, grad_logits):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _mse(self, pred, target, grad_pred):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _count_correct(self, scores, labels):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _all_finite(self, x):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _gather_rows(self, source, rows, out):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _sgd_step(self, param, grad, momentum_buffer, lr, momentum, dampening, nesterov, weight_decay, first_step):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _adagrad_step(self, param, grad, sum_squares, lr, eps, weight_decay):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _rmsprop_step(self, param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps, momentum, weight_decay):  # type: ignore[no-untyped-def]
        raise NotImplementedError

    def _adam_step(  # type: ignore[no-untyped-def]
        self,
        param,
        grad,
        exp_avg,
        exp_avg_sq,
        max_exp_avg_sq,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled_weight_decay,
        bias_correction1,
        bias_correction2,
    ):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<fastopt backend {self.name!r}>"


# --------------------------------------------------------------------------------- the registry
_FACTORIES: dict[str, Callable[[], Backend]] = {}
_INSTANCES: dict[str, Backend] = {}
_UNAVAILABLE: dict[str, str] = {}
_DEFAULT: list[str] = []
_CURRENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("fastopt_backend", default=None)


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Make ``factory()`` available under ``name``."""
    _FACTORIES[name] = factory


def mark_unavailable(name: str, reason: str) -> None:
    """Record why a known backend cannot be used here (shown by ``show_config`` and in errors)."""
    _UNAVAILABLE[name] = reason


def available_backends() -> list[str]:
    return sorted(_FACTORIES)


def backend_problems() -> dict[str, str]:
    """Known backends that could not be loaded, with the reason."""
    return dict(_UNAVAILABLE)


def resolve_backend(name: str | Backend | None = None) -> Backend:
    """The backend instance for ``name``; None means the current one."""
    if isinstance(name, Backend):
        return name
    if name is None:
        name = get_backend()
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name, got {type(name).__name__}")
    if name not in _FACTORIES:
        if name in _UNAVAILABLE:
            raise ValueError(f"backend {name!r} is not available: {_UNAVAILABLE[name]}")
        raise ValueError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]


def set_default_backend(name: str) -> None:
    _DEFAULT[:] = [name]


def get_backend() -> str:
    """Name of the backend in use: the innermost ``use_backend``, else ``set_backend``'s, else the default."""
    return _CURRENT.get() or _DEFAULT[0]


def set_backend(name: str) -> None:
    """Make ``name`` ("numpy" or "cython") the backend of new models and of standalone optimizers."""
    resolve_backend(name)
    _DEFAULT[:] = [name]


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[Backend]:
    """Use backend ``name`` inside a ``with`` block (per thread and asyncio task)."""
    backend = resolve_backend(name)
    token = _CURRENT.set(name)
    try:
        yield backend
    finally:
        _CURRENT.reset(token)


def warn_fallback(name: str, reason: str) -> None:
    warnings.warn(f"fastopt: the {name} backend is unavailable ({reason}); using the numpy backend", stacklevel=3)
