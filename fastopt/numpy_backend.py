"""The NumPy reference backend: every kernel written for clarity; it defines what every result must be.

The kernels write their outputs in place (the interface is shaped for compiled kernels) but are
otherwise the formulas of ``fastopt.backend.Backend``'s docstrings, one NumPy expression a line.
"""

from __future__ import annotations

import math

import numpy as np

from fastopt.backend import Backend


def sigmoid(x: np.ndarray, out: np.ndarray) -> None:
    """Logistic function without overflow: ``1 / (1 + e^-x)`` for x >= 0 and ``e^x / (1 + e^x)`` below."""
    positive = x >= 0
    exp_neg_abs = np.exp(-np.abs(x))
    np.copyto(out, np.where(positive, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs)))


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


class NumpyBackend(Backend):
    name = "numpy"

    def _dense_forward(self, x, weight, bias, out, activation):  # type: ignore[no-untyped-def]
        np.matmul(x, weight, out=out)
        out += bias
        if activation != "identity":
            self._activation_forward(activation, out.copy(), out)

    def _dense_backward(self, x, weight, out, grad_out, grad_weight, grad_bias, grad_x, activation):  # type: ignore[no-untyped-def]
        if activation != "identity":
            self._activation_backward(activation, out, grad_out.copy(), grad_out)
        np.matmul(x.T, grad_out, out=grad_weight)
        np.sum(grad_out, axis=0, out=grad_bias)
        if grad_x is not None:
            np.matmul(grad_out, weight.T, out=grad_x)
        return bool(np.isfinite(grad_weight).all() and np.isfinite(grad_bias).all())

    def _activation_forward(self, activation, x, out):  # type: ignore[no-untyped-def]
        if activation == "relu":
            np.maximum(x, 0, out=out)
        elif activation == "sigmoid":
            sigmoid(x, out)
        elif activation == "tanh":
            np.tanh(x, out=out)
        else:
            np.copyto(out, x)

    def _activation_backward(self, activation, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        if activation == "relu":
            np.copyto(grad_x, np.where(out > 0, grad_out, 0))
        elif activation == "sigmoid":
            np.copyto(grad_x, grad_out * (out * (1 - out)))
        elif activation == "tanh":
            np.copyto(grad_x, grad_out * (1 - out * out))
        else:
            np.copyto(grad_x, grad_out)

    def _softmax_forward(self, x, out):  # type: ignore[no-untyped-def]
        shifted = np.exp(x - x.max(axis=1, keepdims=True))
        np.copyto(out, shifted / shifted.sum(axis=1, keepdims=True))

    def _softmax_backward(self, out, grad_out, grad_x):  # type: ignore[no-untyped-def]
        dot = (grad_out * out).sum(axis=1, keepdims=True)
        np.copyto(grad_x, out * (grad_out - dot))

    def _softmax_cross_entropy(self, logits, labels, grad_logits):  # type: ignore[no-untyped-def]
        batch = logits.shape[0]
        row_max = logits.max(axis=1, keepdims=True)
        exp_shifted = np.exp(logits - row_max)
        sum_exp = exp_shifted.sum(axis=1, keepdims=True)
        log_sum_exp = row_max[:, 0] + np.log(sum_exp[:, 0])
        rows = np.arange(batch)
        loss = float(np.mean(log_sum_exp - logits[rows, labels], dtype=np.float64))
        if grad_logits is not None:
            np.copyto(grad_logits, exp_shifted / sum_exp)
            grad_logits[rows, labels] -= 1
            grad_logits /= batch
        return loss

    def _mse(self, pred, target, grad_pred):  # type: ignore[no-untyped-def]
        diff = pred - target
        loss = float(np.mean(diff.astype(np.float64) ** 2))
        if grad_pred is not None:
            np.copyto(grad_pred, 2 * diff / diff.size)
        return loss

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

    # ------------------------------------------------------------------------- optimizers
    # Each takes the arrays of its kernel-table entry and one mapping ``hyper`` of its named scalars.
    def _sgd_step(self, param, grad, momentum_buffer, hyper):  # type: ignore[no-untyped-def]
        mu = hyper["momentum"]
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        if momentum_buffer is not None:
            if hyper["first_step"]:
                np.copyto(momentum_buffer, g)
            else:
                np.copyto(momentum_buffer, mu * momentum_buffer + (1 - hyper["dampening"]) * g)
            g = g + mu * momentum_buffer if hyper["nesterov"] else momentum_buffer
        param -= hyper["lr"] * g

    def _adagrad_step(self, param, grad, sum_squares, hyper):  # type: ignore[no-untyped-def]
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        sum_squares += g * g
        param -= hyper["lr"] * g / (np.sqrt(sum_squares) + hyper["eps"])

    def _rmsprop_step(self, param, grad, square_avg, grad_avg, momentum_buffer, hyper):  # type: ignore[no-untyped-def]
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

    def _adam_step(self, param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, hyper):  # type: ignore[no-untyped-def]
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        second_moment = exp_avg_sq
        if max_exp_avg_sq is not None:
            np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            second_moment = max_exp_avg_sq
        denom = np.sqrt(second_moment) * (1 / math.sqrt(hyper["bias_correction2"])) + hyper["eps"]
        param -= (hyper["lr"] / hyper["bias_correction1"]) * exp_avg / denom

    def _nadam_step(self, param, grad, exp_avg, exp_avg_sq, hyper):  # type: ignore[no-untyped-def]
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        denom = np.sqrt(exp_avg_sq / hyper["bias_correction2"]) + hyper["eps"]
        param -= hyper["grad_step"] * (g / denom)
        param -= hyper["momentum_step"] * (exp_avg / denom)

    def _adamax_step(self, param, grad, exp_avg, exp_inf, hyper):  # type: ignore[no-untyped-def]
        g = with_weight_decay(grad, hyper["weight_decay"], param)
        beta1 = hyper["beta1"]
        np.copyto(exp_avg, beta1 * exp_avg + (1 - beta1) * g)
        np.maximum(hyper["beta2"] * exp_inf, np.abs(g) + hyper["eps"], out=exp_inf)
        param -= (hyper["lr"] / hyper["bias_correction1"]) * (exp_avg / exp_inf)

    def _radam_step(self, param, grad, exp_avg, exp_avg_sq, hyper):  # type: ignore[no-untyped-def]
        g = decayed_gradient(param, grad, hyper)
        update_moments(g, exp_avg, exp_avg_sq, hyper)
        step = exp_avg / hyper["bias_correction1"] * hyper["lr"]
        if hyper["rectified"]:
            adaptive = math.sqrt(hyper["bias_correction2"]) / (np.sqrt(exp_avg_sq) + hyper["eps"])
            step = step * adaptive * hyper["rectification"]
        param -= step

    def _lion_step(self, param, grad, exp_avg, hyper):  # type: ignore[no-untyped-def]
        beta1, beta2 = hyper["beta1"], hyper["beta2"]
        direction = np.sign(beta1 * exp_avg + (1 - beta1) * grad)
        param -= hyper["lr"] * with_weight_decay(direction, hyper["weight_decay"], param)
        np.copyto(exp_avg, beta2 * exp_avg + (1 - beta2) * grad)
