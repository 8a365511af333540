"""The NumPy reference backend: every kernel written for clarity; it defines what every result must be.

The kernels write their outputs in place (the interface is shaped for compiled kernels) but are
otherwise the formulas of ``fastopt.backend.Backend``'s docstrings, one NumPy expression a line.
"""

from __future__ import annotations

import math

import numpy as np

from fastopt import _random
from fastopt.backend import Backend

# GELU's constants: 1 / sqrt(2), 1 / sqrt(2 pi); the tanh form's 2 sqrt(2 / pi) (twice PyTorch's beta) and kappa
SQRT_HALF = math.sqrt(0.5)
INV_SQRT_2PI = 1 / math.sqrt(2 * math.pi)
TWO_BETA = 2 * math.sqrt(2 / math.pi)
GELU_KAPPA = 0.044715
_erfc = np.vectorize(math.erfc, otypes=[np.float64])  # NumPy has no erfc; the C library's, as the compiled kernels


def sigmoid(x: np.ndarray, out: np.ndarray) -> None:
    """Logistic function without overflow: ``1 / (1 + e^-x)`` for x >= 0 and ``e^x / (1 + e^x)`` below."""
    positive = x >= 0
    exp_neg_abs = np.exp(-np.abs(x))
    np.copyto(out, np.where(positive, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs)))


def gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    """PyTorch's GELU in float64. Exact: ``x Phi(x) = 0.5 x (1 + erf(x / sqrt(2)))``, computed as
    ``0.5 x erfc(-x / sqrt(2))``, the same function without the cancellation of ``1 + erf`` for x << 0 (where
    PyTorch's formula loses every digit: GELU(-10) = -7.6e-23). ``approximate``: the tanh form
    ``0.5 x (1 + tanh(u))``, u = sqrt(2 / pi) (x + 0.044715 x**3), computed as ``x sigmoid(2 u)`` for the same
    reason, the sigmoid as ``sigmoid`` above (from exp(-|2 u|))."""
    x = x.astype(np.float64)
    if approximate:
        v = TWO_BETA * (x + GELU_KAPPA * (x * x * x))
        e = np.exp(-np.abs(v))
        return x * (np.where(v >= 0, 1.0, e) / (1 + e))
    return x * 0.5 * _erfc(-x * SQRT_HALF)


def gelu_derivative(x: np.ndarray, approximate: bool) -> np.ndarray:
    """d GELU / dx in float64, PyTorch's autograd's function: ``Phi(x) + x phi(x)`` with the normal cdf
    ``Phi(x) = 0.5 erfc(-x / sqrt(2))`` and density ``phi(x) = exp(-x**2 / 2) / sqrt(2 pi)``; the tanh form's
    ``0.5 (1 + t) + 0.5 x (1 - t**2) u'`` (t = tanh(u), u' = sqrt(2 / pi) (1 + 3 kappa x**2)) as
    ``s + x s (1 - s) 2 u'`` with s = sigmoid(2 u) and 1 - s = sigmoid(-2 u); that second term is 0 where
    exp(-|2 u|) is (it underflows with it; evaluated it would be 0 * inf for a huge x)."""
    x = x.astype(np.float64)
    if approximate:
        v = TWO_BETA * (x + GELU_KAPPA * (x * x * x))
        e = np.exp(-np.abs(v))
        s, rest = np.where(v >= 0, 1.0, e) / (1 + e), np.where(v >= 0, e, 1.0) / (1 + e)
        with np.errstate(invalid="ignore", over="ignore"):
            slope = (x * (s * rest)) * (TWO_BETA * (1 + 3 * GELU_KAPPA * (x * x)))
        return s + np.where(e > 0, slope, 0.0)
    return 0.5 * _erfc(-x * SQRT_HALF) + x * (INV_SQRT_2PI * np.exp(x * x * -0.5))


def dropout_multipliers(shape: tuple[int, ...], dtype: np.dtype, p: float, key: int) -> np.ndarray:
    """The dropout kernel's multipliers: ``1 / (1 - p)`` (rounded once to ``dtype``) where the element is kept,
    else 0; element i (row-major) is kept when its 32-bit number of the key's stream (``_random.uniform_halves``)
    is at least ``ceil(p 2**32)``, that is when that number / 2**32 >= p."""
    count = math.prod(shape)
    keep = _random.uniform_halves(key, count) >= np.uint64(math.ceil(p * 2**32))
    return np.where(keep, dtype.type(1 / (1 - p)), dtype.type(0)).reshape(shape)


def with_weight_decay(grad: np.ndarray, weight_decay: float, param: np.ndarray) -> np.ndarray:
    """``grad + weight_decay * param``, the L2 term added only when weight decay is on (as PyTorch does:
    ``0 * inf`` would make an infinite parameter's gradient NaN)."""
    return grad + weight_decay * param if weight_decay else grad


def decayed_gradient(param: np.ndarray, grad: np.ndarray, hyper: dict) -> np.ndarray:
    """The gradient an Adam-family update uses: with decoupled weight decay (AdamW's), ``param *= 1 - lr wd`` in
    place and the gradient as given; otherwise ``grad + wd param``."""
    if hyper["decoupled_weight_decay"]:
        param *= 1 - hyper["lr"] * hyper["weight_decay"]
        return grad
    return with_weight_decay(grad, hyper["weight_decay"], param)


def update_moments(g: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray, hyper: dict) -> None:
    """Adam's moments in place: ``m = b1 m + (1 - b1) g``, ``v = b2 v + (1 - b2) g**2``."""
    beta1, beta2 = hyper["beta1"], hyper["beta2"]
    np.copyto(exp_avg, beta1 * exp_avg + (1 - beta1) * g)
    np.copyto(exp_avg_sq, beta2 * exp_avg_sq + (1 - beta2) * g * g)


def weighted_mean(
    row_sums: np.ndarray, weights: np.ndarray | None, columns: int, numerator: float, dtype: np.dtype
) -> tuple[float, np.ndarray]:
    """A loss's value from the sums of its rows' elements (float64 (B,)), and each row's gradient factor.

    With weights w (None: all 1) and their sum W, in float64: value ``sum_i w_i row_sums_i / (W columns)``, factor
    ``numerator w_i / (W columns)`` rounded to ``dtype``, shaped (B, 1) to broadcast over a row. When W is 0 the
    value is 0 and every factor 0 (a batch that weighs nothing). W is summed in row order (a running sum), as the
    compiled kernels sum it: weights of both signs that cancel then give the same W, hence the same branch."""
    w = np.ones(len(row_sums)) if weights is None else weights.astype(np.float64)
    total = float(np.cumsum(w)[-1])
    if total == 0:
        return 0.0, np.zeros((len(w), 1), dtype=dtype)
    value = float(np.sum(w * row_sums)) / (total * columns)
    return value, (numerator * w / (total * columns)).astype(dtype)[:, None]


class NumpyBackend(Backend):
    name = "numpy"

    def _dense_forward(self, x, weight, bias, out, activation, negative_slope):  # type: ignore[no-untyped-def]
        np.matmul(x, weight, out=out)
        out += bias
        if activation != "identity":
            self._activation_forward(activation, out.copy(), out, negative_slope)

    def _dense_backward(self, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation, negative_slope):  # type: ignore[no-untyped-def]
        if activation == "leaky_relu":  # from the output: out > 0 exactly when z > 0, the slope being >= 0
            with np.errstate(invalid="ignore"):
                np.copyto(grad_out, np.where(out > 0, grad_out, grad_out * negative_slope))
        elif activation != "identity":
            self._activation_backward(activation, None, out, grad_out.copy(), grad_out, negative_slope)
        np.matmul(x.T, grad_out, out=grad_weight)
        np.sum(grad_out, axis=0, out=grad_bias)
        if grad_x is not None:
            np.matmul(grad_out, weight.T, out=grad_x)
        return bool(np.isfinite(grad_weight).all() and np.isfinite(grad_bias).all())

    def _activation_forward(self, activation, x, out, negative_slope):  # type: ignore[no-untyped-def]
        if activation == "relu":
            np.maximum(x, 0, out=out)
        elif activation == "sigmoid":
            sigmoid(x, out)
        elif activation == "tanh":
            np.tanh(x, out=out)
        elif activation == "leaky_relu":
            with np.errstate(invalid="ignore"):  # x * slope of an unused x > 0 may be inf * 0
                np.copyto(out, np.where(x > 0, x, x * negative_slope))
        elif activation in ("gelu", "gelu_tanh"):
            np.copyto(out, gelu(x, approximate=activation == "gelu_tanh"), casting="same_kind")
        else:
            np.copyto(out, x)

    def _activation_backward(self, activation, x, out, grad_out, grad_x, negative_slope):  # type: ignore[no-untyped-def]
        if activation == "relu":
            np.copyto(grad_x, np.where(out > 0, grad_out, 0))
        elif activation == "sigmoid":
            np.copyto(grad_x, grad_out * (out * (1 - out)))
        elif activation == "tanh":
            np.copyto(grad_x, grad_out * (1 - out * out))
        elif activation == "leaky_relu":
            with np.errstate(invalid="ignore"):
                np.copyto(grad_x, np.where(x > 0, grad_out, grad_out * negative_slope))
        elif activation in ("gelu", "gelu_tanh"):
            derivative = gelu_derivative(x, approximate=activation == "gelu_tanh")
            np.copyto(grad_x, grad_out * derivative, casting="same_kind")
        else:
            np.copyto(grad_x, grad_out)

    def _softmax_forward(self, x, out):  # type: ignore[no-untyped-def]
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        np.copyto(out, shifted / shifted.sum(axis=1, keepdims=True))

    def _softmax_backward(self, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        dot = (grad_out * out).sum(axis=1, keepdims=True)
        np.copyto(grad_x, out * (grad_out - dot))

    def _dropout(self, x, out, mask, p, key):  # type: ignore[no-untyped-def]
        np.copyto(mask, dropout_multipliers(x.shape, x.dtype, p, key))
        np.multiply(x, mask, out=out)

    def _dropout_backward(self, grad_out, mask, grad_x):  # type: ignore[no-untyped-def]
        np.multiply(grad_out, mask, out=grad_x)

    def _softmax_cross_entropy(self, logits, labels, grad_logits, weights, label_smoothing):  # type: ignore[no-untyped-def]
        batch, classes = logits.shape
        row_max = logits.max(axis=1, keepdims=True)
        exp_shifted = np.exp(logits - row_max)
        sum_exp = exp_shifted.sum(axis=1, keepdims=True)
        log_sum_exp = row_max[:, 0] + np.log(sum_exp[:, 0])
        rows = np.arange(batch)
        if label_smoothing:  # <t, x> = (1 - eps) x[label] + (eps / C) sum(x)
            picked = (1 - label_smoothing) * logits[rows, labels].astype(np.float64)
            row_losses = log_sum_exp - picked - (label_smoothing / classes) * logits.sum(axis=1, dtype=np.float64)
        else:
            row_losses = log_sum_exp - logits[rows, labels]
        if weights is None:
            loss = float(np.mean(row_losses, dtype=np.float64))
        else:
            loss, scale = weighted_mean(row_losses.astype(np.float64), weights, 1, 1.0, logits.dtype)
        if grad_logits is not None:
            np.copyto(grad_logits, exp_shifted / sum_exp)
            if label_smoothing:
                grad_logits -= logits.dtype.type(label_smoothing / classes)
            grad_logits[rows, labels] -= logits.dtype.type(1 - label_smoothing)
            if weights is None:
                grad_logits /= batch
            else:
                grad_logits *= scale
        return loss

    def _mse(self, pred, target, grad_pred, weights):  # type: ignore[no-untyped-def]
        diff = pred - target
        squares = diff.astype(np.float64) ** 2
        if weights is None:
            if grad_pred is not None:
                np.copyto(grad_pred, 2 * diff / diff.size)
            return float(np.mean(squares))
        loss, scale = weighted_mean(squares.sum(axis=1), weights, pred.shape[1], 2.0, pred.dtype)
        if grad_pred is not None:
            np.copyto(grad_pred, diff * scale)
        return loss

    def _huber(self, pred, target, grad_pred, weights, delta):  # type: ignore[no-untyped-def]
        diff = pred - target
        d = diff.astype(np.float64)
        quadratic = np.abs(d) < delta
        losses = np.where(quadratic, 0.5 * d * d, delta * (np.abs(d) - 0.5 * delta))
        loss, scale = weighted_mean(losses.sum(axis=1), weights, pred.shape[1], 1.0, pred.dtype)
        if grad_pred is not None:
            bound = pred.dtype.type(delta)
            np.copyto(grad_pred, np.clip(diff, -bound, bound) * scale)
        return loss

    def _mae(self, pred, target, grad_pred, weights):  # type: ignore[no-untyped-def]
        diff = pred - target
        loss, scale = weighted_mean(np.abs(diff.astype(np.float64)).sum(axis=1), weights, pred.shape[1], 1.0,
                                    pred.dtype)  # fmt: skip
        if grad_pred is not None:
            np.copyto(grad_pred, np.sign(diff) * scale)
        return loss

    def _binary_cross_entropy(self, logits, targets, grad_logits, weights, pos_weight):  # type: ignore[no-untyped-def]
        x, y = logits, targets
        one = x.dtype.type(1)
        positive = y if pos_weight is None else pos_weight * y  # p y
        exp_neg_abs = np.exp(-np.abs(x))
        log_term = np.log1p(exp_neg_abs)
        # -log s(x) = max(-x, 0) + log1p(e^-|x|) and -log(1 - s(x)) = max(x, 0) + log1p(e^-|x|): no overflow, and no
        # cancellation for targets in [0, 1]
        losses = positive * (np.maximum(-x, 0) + log_term) + (one - y) * (np.maximum(x, 0) + log_term)
        loss, scale = weighted_mean(losses.sum(axis=1, dtype=np.float64), weights, x.shape[1], 1.0, x.dtype)
        if grad_logits is not None:
            denominator = one + exp_neg_abs
            sigmoid_x = np.where(x >= 0, one, exp_neg_abs) / denominator  # s(x)
            sigmoid_neg_x = np.where(x >= 0, exp_neg_abs, one) / denominator  # 1 - s(x), without cancellation
            np.copyto(grad_logits, ((one - y) * sigmoid_x - positive * sigmoid_neg_x) * scale)
        return loss

    def _count_binary_correct(self, logits, targets):  # type: ignore[no-untyped-def]
        return int(np.count_nonzero((logits > 0) == (targets > 0.5)))

    def _count_correct(self, scores, labels):  # type: ignore[no-untyped-def]
        return int(np.count_nonzero(scores.argmax(axis=1) == labels))

    def _all_finite(self, x):  # type: ignore[no-untyped-def]
        return bool(np.isfinite(x).all())

    def _sum_of_squares(self, x):  # type: ignore[no-untyped-def]
        values = x.reshape(-1).astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.dot(values, values))

    def _gather_rows(self, source, rows, out):  # type: ignore[no-untyped-def]
        np.take(source, rows, axis=0, out=out)

    def _weighted_sum_into(self, a, b, a_weight, b_weight):  # type: ignore[no-untyped-def]
        scalar = a.dtype.type
        np.multiply(a, scalar(a_weight), out=a)
        a += b * scalar(b_weight)

    # ------------------------------------------------------------------------- optimizers
    # Each takes the arrays of its kernel-table entry, ``with_squares`` and one mapping ``hyper`` of its named scalars;
    # with ``with_squares`` it returns the sum of squares of ``param`` before its update (``_sum_of_squares``).
    def _sgd_step(self, param, grad, momentum_buffer, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        mu = hyper["momentum"]
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        if momentum_buffer is not None:
            if hyper["first_step"]:
                np.copyto(momentum_buffer, g)
            else:
                np.copyto(momentum_buffer, mu * momentum_buffer + (1 - hyper["dampening"]) * g)
            g = g + mu * momentum_buffer if hyper["nesterov"] else momentum_buffer
        param -= hyper["lr"] * g
        return squares

    def _adagrad_step(self, param, grad, sum_squares, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        sum_squares += g * g
        param -= hyper["lr"] * g / (np.sqrt(sum_squares) + hyper["eps"])
        return squares

    def _rmsprop_step(  # type: ignore[no-untyped-def]
        self, param, grad, square_avg, grad_avg, momentum_buffer, with_squares, hyper
    ):
        squares = self._sum_of_squares(param) if with_squares else None
        alpha, eps = hyper["alpha"], hyper["eps"]
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        np.copyto(square_avg, alpha * square_avg + (1 - alpha) * g * g)
        if grad_avg is not None:
            np.copyto(grad_avg, alpha * grad_avg + (1 - alpha) * g)
            denom = np.sqrt(square_avg - grad_avg * grad_avg) + eps
        else:
            denom = np.sqrt(square_avg) + eps
        if momentum_buffer is not None:
            np.copyto(momentum_buffer, hyper["momentum"] * momentum_buffer + g / denom)
            param -= hyper["lr"] * momentum_buffer
        else:
            param -= hyper["lr"] * g / denom
        return squares

    def _adam_step(  # type: ignore[no-untyped-def]
        self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, with_squares, hyper
    ):
        squares = self._sum_of_squares(param) if with_squares else None
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        second_moment = exp_avg_sq
        if max_exp_avg_sq is not None:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second_moment = max_exp_avg_sq
        denom = np.sqrt(second_moment) * (1 / math.sqrt(hyper["bias_correction2"])) + hyper["eps"]
        param -= (hyper["lr"] / hyper["bias_correction1"]) * exp_avg / denom
        return squares

    def _nadam_step(self, param, grad, exp_avg, exp_avg_sq, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        denom = np.sqrt(exp_avg_sq / hyper["bias_correction2"]) + hyper["eps"]
        param -= hyper["grad_step"] * (g / denom)
        param -= hyper["momentum_step"] * (exp_avg / denom)
        return squares

    def _adamax_step(self, param, grad, exp_avg, exp_inf, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        beta1 = hyper["beta1"]
        np.copyto(exp_avg, beta1 * exp_avg + (1 - beta1) * g)
        np.maximum(hyper["beta2"] * exp_inf, np.abs(g) + hyper["eps"], out=exp_inf)
        param -= (hyper["lr"] / hyper["bias_correction1"]) * (exp_avg / exp_inf)
        return squares

    def _radam_step(self, param, grad, exp_avg, exp_avg_sq, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        step = exp_avg / hyper["bias_correction1"] * hyper["lr"]
        if hyper["rectified"]:
            adaptive = math.sqrt(hyper["bias_correction2"]) / (np.sqrt(exp_avg_sq) + hyper["eps"])
            step = step * adaptive * hyper["rectification"]
        param -= step
        return squares

    def _lion_step(self, param, grad, exp_avg, with_squares, hyper):  # type: ignore[no-untyped-def]
        squares = self._sum_of_squares(param) if with_squares else None
        beta1, beta2 = hyper["beta1"], hyper["beta2"]
        direction = np.sign(beta1 * exp_avg + (1 - beta1) * grad)
        param -= hyper["lr"] * with_weight_decay(direction, hyper["weight_decay"], param)
        np.copyto(exp_avg, beta2 * exp_avg + (1 - beta2) * grad)
        return squares
