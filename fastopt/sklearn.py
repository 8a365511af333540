"""Drop-in scikit-learn estimators: ``MLPClassifier`` and ``MLPRegressor`` trained by fastopt.

Change one import line (``from fastopt.sklearn import MLPClassifier``) and keep the rest: every constructor
parameter of scikit-learn's estimators (1.9) is accepted with the same name, default and meaning, the fitted
attributes have scikit-learn's names and shapes, and the estimators work in pipelines, searches, ``clone`` and
``pickle``. Needs scikit-learn (``pip install "fastopt[sklearn]"``); ``import fastopt`` never imports it.

The training follows scikit-learn's math, so that a user sees the same behaviour:

- the network: ``Dense`` layers with the hidden ``activation``, and an output function that belongs to the loss
  (softmax for several classes, logistic for two classes and for multilabel targets, identity for squared error,
  exp for Poisson); Glorot-uniform weights and intercepts drawn from ``random_state`` exactly as scikit-learn
  draws them (bound ``sqrt(6 / (fan_in + fan_out))``, ``sqrt(2 / ...)`` for ``logistic``);
- the loss of a batch of weights ``w_i`` (1 without ``sample_weight``) is scikit-learn's: the weighted mean of the
  samples' log loss (summed over the outputs for logistic outputs), half squared error (averaged over outputs) or
  half Poisson deviance (summed over outputs), plus ``alpha / (2 sum_i w_i) ||W||^2`` on the weights (not the
  intercepts). Its gradient with respect to the outputs is ``w_i (f(z_i) - y_i) / sum_i w_i`` (for squared error
  with several outputs that is ``n_outputs`` times the gradient of the averaged loss, as scikit-learn computes it);
- ``solver="adam"``: scikit-learn's Adam, ``p -= lr sqrt(1 - b2^t) / (1 - b1^t) m / (sqrt(v) + eps)``;
  ``solver="sgd"``: momentum (and Nesterov) in scikit-learn's velocity form, ``learning_rate`` constant,
  ``invscaling`` (``lr = learning_rate_init / (t_ + 1) ** power_t`` after each epoch) or ``adaptive`` (divided by 5
  when the stopping rule fires, until it is at most 1e-6); ``solver="lbfgs"``: ``scipy.optimize``'s L-BFGS-B on the
  full-batch loss with ``maxiter=max_iter``, ``maxfun=max_fun``, ``gtol=tol``;
- the stopping rule: an epoch that does not improve the best training loss by ``tol`` (the validation score, with
  ``early_stopping``, whose split is scikit-learn's ``train_test_split``, stratified for single-output classifiers)
  counts; more than ``n_iter_no_change`` in a row stops (or divides an adaptive rate); reaching ``max_iter`` warns
  with ``ConvergenceWarning``. With ``early_stopping`` the best validation epoch's parameters are kept.

fastopt's own: ``dtype`` (``"float32"``, the default, or ``"float64"``: the precision of training; scikit-learn
trains in float64 unless X is float32; predictions are computed in float64 from the weights either way, so that a
row's prediction does not depend on the rows predicted with it), ``backend`` (None: the current fastopt backend),
and the solvers ``adamw``, ``rmsprop``, ``adagrad``, ``nadam``, ``adamax``, ``radam`` and ``lion`` (fastopt's
optimizers with ``learning_rate_init``; ``beta_1``, ``beta_2`` and ``epsilon`` for the Adam family; ``alpha`` is the
L2 term above, except for ``adamw`` and ``lion``, whose decoupled weight decay on the weights it sets).
``warm_start=True`` keeps the optimizer's state (Adam's moments, SGD's velocity) from the previous fit, where
scikit-learn starts a new optimizer: a warm-started fit then continues the run as if it had been asked for more
iterations. Sparse input is refused (convert it with ``X.toarray()``).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from itertools import pairwise
from numbers import Integral, Real
from typing import Any

import numpy as np
from scipy.special import expit, xlogy
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, is_classifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import accuracy_score, r2_score
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import LabelBinarizer
from sklearn.utils import check_random_state
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import unique_labels
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data
from threadpoolctl import ThreadpoolController

from fastopt import layers, optim
from fastopt.backend import Backend, StepTiming, resolve_backend
from fastopt.losses import Loss, Targets
from fastopt.model import Sequential

__all__ = ["MLPClassifier", "MLPRegressor"]

HIDDEN_ACTIVATIONS = {"identity": None, "logistic": layers.Sigmoid, "tanh": layers.Tanh, "relu": layers.ReLU}
SCIKIT_LEARN_SOLVERS = ("lbfgs", "sgd", "adam")
FASTOPT_SOLVERS = ("adamw", "rmsprop", "adagrad", "nadam", "adamax", "radam", "lion")
ADAM_FAMILY = ("adam", "adamw", "nadam", "adamax", "radam")
DECOUPLED_DECAY = ("adamw", "lion")  # alpha is their decoupled weight decay on the weights, not an L2 term
# A partial_fit call of fewer batches than this runs them by the Python step: the compiled step, made for each call's
# data (about 50 us for a three-layer network on a 2-core AMD EPYC Zen 4 VM), saves about 8 us a step.
MIN_COMPILED_STEPS = 8
# A batch is computed as two halves (``Sequential._pair_gradients``), at once on two threads, from this many rows
# and when each half's forward pass makes at least this many multiply-adds. On a 2-core AMD EPYC Zen 4 VM, a
# step of the fit's epoch loop (with the optimizer's update) on two threads, in halves against whole batches
# whose kernels split each product between the threads: digits (64-100-10, batch 200) 66-75 against 88-93 us,
# breast_cancer (30-100-1) 33 against 46, 20-100-5 39-42 against 59-63, friedman1 (10-100-1, 110k multiply-adds
# a half) 28-31 against 47-48. On one thread halves cost 4-10% more (36 against 33 us for friedman1's).
PAIRED_FROM_ROWS = 128
PAIRED_HALF_MULTIPLY_ADDS = 2**16
SPARSE_REFUSED = "sparse input is not supported by fastopt's estimators: convert it with X.toarray()"


class _ScikitLearnAdam(optim.Adam):
    """Adam with scikit-learn's placement of epsilon: ``p -= lr sqrt(bc2) / bc1 * m / (sqrt(v) + eps)`` with
    ``bc1 = 1 - b1^t``, ``bc2 = 1 - b2^t``. fastopt's kernel computes ``p -= (lr / bc1) m / (sqrt(v) / sqrt(bc2) +
    eps')``: the same update when ``eps' = eps / sqrt(bc2)``, which is the epsilon each step hands the kernel."""

    def _step_scalars(
        self, group: dict[str, Any], lr: float, scalars: dict[str, Any], state: dict[str, np.ndarray]
    ) -> dict[str, Any]:
        step = super()._step_scalars(group, lr, scalars, state)
        step["eps"] = group["eps"] / math.sqrt(step["bias_correction2"])
        return step


class _LayerArrays(list):  # type: ignore[type-arg]
    """``coefs_`` or ``intercepts_``: scikit-learn's list of one array per layer, here views of the network's
    parameters. Assigning an element (``clf.coefs_[0] = W``, which sets the layer's weights in scikit-learn)
    copies the values into its view, checked (shape, finite, castable to ``dtype``); a change of the list's length
    or order, which the network cannot follow, is a TypeError (it was silently ignored)."""

    def __init__(self, name: str, views: list[np.ndarray]) -> None:
        super().__init__(views)
        self._name = name

    def __setitem__(self, index: Any, value: Any) -> None:
        if not isinstance(index, Integral):
            raise TypeError(f"{self._name}[{index!r}] = ...: assign one layer's array at a time")
        view = list.__getitem__(self, index)
        np.copyto(view, layers.as_parameter_values(value, f"{self._name}[{index}]", view.shape, view.dtype))

    def _refuse(self, *_: object) -> Any:
        raise TypeError(
            f"{self._name} holds one array per layer of the network; assign its elements ({self._name}[i] = values)"
        )

    append = extend = insert = pop = remove = clear = sort = reverse = __delitem__ = __iadd__ = __imul__ = _refuse


# ------------------------------------------------------------------------------------------ the output loss
def _per_sample_loss(kind: str, z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's half Poisson deviance of each sample (N,) for outputs z (N, k) (``kind`` "exp": the prediction is
    ``p = exp(z)``): ``sum_j y log(y / p) - y + p``, and ``p - y`` (N, k)."""
    z = z.astype(np.float64)
    prediction = np.exp(z)
    return (xlogy(y, y) - y * z - y + prediction).sum(axis=1), prediction - y


class _OutputLoss(Loss):
    """scikit-learn's loss on the last layer's outputs ``z`` (N, k), for fastopt's training step: the weighted mean
    ``sum_i w_i l_i / sum_i w_i`` of ``_per_sample_loss``; writes ``w_i (f(z_i) - y_i) / sum_i w_i`` into ``grad``.

    fastopt's fused loss kernels (weights inside them) compute it, rescaled to scikit-learn's form: softmax is
    ``softmax_cross_entropy`` as it is; logistic is ``binary_cross_entropy`` (a mean over the k outputs, where
    scikit-learn sums them) times k, value and gradient; identity is ``mse`` (the mean of squares, gradient
    ``2 w_i (z - y) / (k sum w)``) with the value halved and the gradient times k / 2. Poisson (exp) has no kernel:
    NumPy."""

    KERNELS = {"softmax": ("softmax_cross_entropy", (0.0,)), "logistic": ("binary_cross_entropy", (None,)),
               "identity": ("mse", ())}  # fmt: skip

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def compute(
        self,
        backend: Backend,
        output: np.ndarray,
        target: np.ndarray,
        grad: np.ndarray | None,
        weights: np.ndarray | None = None,
    ) -> float:
        if self.kind not in self.KERNELS:
            return self._numpy_loss(output, target, grad, weights)
        kernel, options, value_scale, grad_scale = self._step_kernel(output)  # type: ignore[misc]
        value = getattr(backend, "_" + kernel)(output, target, grad, weights, *options)
        if grad is not None and grad_scale != 1.0:
            grad *= grad_scale
        return value * value_scale

    def _step_kernel(self, output: np.ndarray) -> tuple[str, tuple[object, ...], float, float] | None:
        if self.kind not in self.KERNELS:
            return None
        kernel, options = self.KERNELS[self.kind]
        outputs = output.shape[1]
        value_scale, grad_scale = {"softmax": (1.0, 1.0), "logistic": (outputs, outputs),
                                   "identity": (0.5, 0.5 * outputs)}[self.kind]  # fmt: skip
        return kernel, options, value_scale, grad_scale

    @staticmethod
    def _numpy_loss(
        output: np.ndarray, target: np.ndarray, grad: np.ndarray | None, weights: np.ndarray | None
    ) -> float:
        per_sample, delta = _per_sample_loss("exp", output, target)
        total = len(output) if weights is None else float(np.sum(weights, dtype=np.float64))
        if total == 0:  # fastopt's rule: a batch whose weights sum to 0 has loss 0 and a zero gradient
            scale = np.zeros(len(output))
        else:
            scale = np.full(len(output), 1.0 / total) if weights is None else weights.astype(np.float64) / total
        if grad is not None:
            np.multiply(delta, scale[:, None], out=grad, casting="unsafe")
        return float(scale @ per_sample)

    def config(self) -> dict[str, object]:
        return {"kind": self.kind}


@dataclass
class _TrainingSet:
    """Rows, targets in the loss's form (int64 labels for softmax, else (N, k) floats) and weights (or None);
    ``compiled``: its steps run as the backend's compiled step (``Sequential._batch_gradients``)."""

    inputs: np.ndarray
    targets: Targets
    weights: np.ndarray | None
    paired_from: int  # the fewest rows of a batch computed as two halves (PAIRED_FROM_ROWS)
    compiled: bool = True


# ------------------------------------------------------------------------------------------ hyperparameters
def _check_choice(value: object, name: str, choices: tuple[str, ...]) -> None:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_number(value: object, name: str, low: float, high: float, closed: str, integral: bool = False) -> None:
    """``value`` is a real (an integer when ``integral``) in the interval from ``low`` to ``high``; ``closed`` says
    which ends belong to it: "both", "left", "right" or "neither"."""
    kind = Integral if integral else Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integral else 'a real number'}, got {value!r}")
    above = value >= low if closed in ("both", "left") else value > low
    below = value <= high if closed in ("both", "right") else value < high
    if not (above and below) or (not integral and math.isnan(value)):
        left, right = "[" if closed in ("both", "left") else "(", "]" if closed in ("both", "right") else ")"
        raise ValueError(f"{name} must be in {left}{low}, {high}{right}, got {value!r}")


def _dtype_name(dtype: object) -> str:
    """The name of the dtype ``dtype`` means ("float32" for "float32", np.float32 or np.dtype("f4")), or its repr."""
    try:
        return np.dtype(dtype).name if dtype is not None else "None"  # type: ignore[arg-type]
    except TypeError:
        return repr(dtype)


def _hidden_sizes(hidden_layer_sizes: object) -> list[int]:
    sizes = list(hidden_layer_sizes) if hasattr(hidden_layer_sizes, "__iter__") else [hidden_layer_sizes]
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, Integral) or size <= 0:
            raise ValueError(f"hidden_layer_sizes must be positive integers, got {hidden_layer_sizes!r}")
    return [int(size) for size in sizes]


# ------------------------------------------------------------------------------------------ the estimators
@functools.cache
def _blas_controller() -> ThreadpoolController:
    """The BLAS libraries loaded once scipy.optimize is (made on first use: scipy brings its own OpenBLAS)."""
    return ThreadpoolController()


def _one_blas_thread() -> Any:
    """Every BLAS library on one thread for a block. L-BFGS-B calls scipy's BLAS between the evaluations, and on
    two threads that BLAS's worker then spins for up to about 0.1 s on the core fastopt's kernels are about to use:
    the evaluations of a digits fit took 4-72 ms each instead of 0.6 ms (2-core AMD EPYC Zen 4 VM)."""
    return _blas_controller().limit(limits=1, user_api="blas")


class _BaseMLP(BaseEstimator):
    """What both estimators share: validation of the hyperparameters, the network, the solvers, the stopping rule,
    the fitted attributes."""

    _loss_choices: tuple[str, ...] = ()

    def _check_hyperparameters(self) -> None:
        _check_choice(self.activation, "activation", tuple(HIDDEN_ACTIVATIONS))
        _check_choice(self.solver, "solver", SCIKIT_LEARN_SOLVERS + FASTOPT_SOLVERS)
        _check_choice(self.learning_rate, "learning_rate", ("constant", "invscaling", "adaptive"))
        _check_choice(self.loss, "loss", self._loss_choices)
        _check_choice(_dtype_name(self.dtype), "dtype", ("float32", "float64"))
        if self.backend is not None:
            resolve_backend(self.backend)
        if self.batch_size != "auto":
            _check_number(self.batch_size, "batch_size", 1, math.inf, "left", integral=True)
        for name in ("max_iter", "max_fun"):
            _check_number(getattr(self, name), name, 1, math.inf, "left", integral=True)
        if self.n_iter_no_change != math.inf:
            _check_number(self.n_iter_no_change, "n_iter_no_change", 1, math.inf, "left", integral=True)
        for name, low, high, closed in (("alpha", 0, math.inf, "left"), ("learning_rate_init", 0, math.inf, "neither"),
                                        ("power_t", 0, math.inf, "left"), ("tol", 0, math.inf, "left"),
                                        ("momentum", 0, 1, "both"), ("validation_fraction", 0, 1, "neither"),
                                        ("beta_1", 0, 1, "left"), ("beta_2", 0, 1, "left"),
                                        ("epsilon", 0, math.inf, "neither")):  # fmt: skip
            _check_number(getattr(self, name), name, low, high, closed)
        for name in ("shuffle", "warm_start", "nesterovs_momentum", "early_stopping", "verbose"):
            if not isinstance(getattr(self, name), (bool, np.bool_, Integral)):
                raise TypeError(f"{name} must be True or False, got {getattr(self, name)!r}")
        _hidden_sizes(self.hidden_layer_sizes)

    def _check_solver(self) -> bool:
        """partial_fit exists for the stochastic solvers only (scikit-learn's ``available_if``)."""
        if self.solver == "lbfgs":
            raise AttributeError(f"partial_fit is only available for stochastic optimizers. {self.solver} is not "
                                 "stochastic.")  # fmt: skip
        return True

    # -------------------------------------------------------------- fitting
    def _fit(self, X: object, y: object, sample_weight: object, incremental: bool) -> _BaseMLP:
        self._check_hyperparameters()
        first_pass = not hasattr(self, "_model") or (not self.warm_start and not incremental)
        X, Y = self._validate_input(X, y, incremental, reset=first_pass)
        weights = self._checked_weights(sample_weight, len(X))
        if Y.ndim == 1:
            Y = Y.reshape(-1, 1)
        self._random_state = check_random_state(self.random_state)
        units = [X.shape[1], *_hidden_sizes(self.hidden_layer_sizes), Y.shape[1]]
        if first_pass:
            self._initialize(Y, units)
        else:
            self._training_model()
            self._follow_activation_and_dtype()
        if self._units() != units:
            raise ValueError(
                f"the network has layer sizes {self._units()}, but these data and hidden_layer_sizes need {units}: "
                "warm_start and partial_fit continue the same network (fit with warm_start=False for a new one)"
            )
        try:
            if self.solver == "lbfgs":
                self._fit_lbfgs(self._training_set(X, Y, weights))
            else:
                self._fit_stochastic(X, Y, weights, incremental)
        finally:
            self._model._forget_compiled_steps()  # they hold the data
        if not np.isfinite(self._model.parameters).all():
            raise ValueError(
                "Solver produced non-finite parameter weights. The input data may contain large values and need to "
                "be preprocessed."
            )
        return self

    def _checked_weights(self, sample_weight: object, n_samples: int) -> np.ndarray | None:
        """``sample_weight`` as float64 (N,), finite and >= 0, not all 0, as the network's ``dtype`` holds them (a
        weight of 1e-46 is 0 in float32), or None."""
        if sample_weight is None:
            return None
        if isinstance(sample_weight, Real) and not isinstance(sample_weight, bool):
            weights = np.full(n_samples, float(sample_weight))
        else:
            weights = np.asarray(sample_weight)
            if weights.ndim != 1:  # (scikit-learn's message; a column (N, 1) is refused as it refuses it)
                raise ValueError("Sample weights must be 1D array or scalar")
            if weights.shape != (n_samples,):
                raise ValueError(f"sample_weight.shape == {weights.shape}, expected ({n_samples},)!")
            weights = weights.astype(np.float64)
        with np.errstate(over="ignore"):
            trained = weights.astype(_dtype_name(self.dtype))
        if not np.isfinite(trained).all() or (weights < 0).any():
            raise ValueError(f"sample_weight must be finite and non-negative in {_dtype_name(self.dtype)}")
        if not (trained > 0).any():
            raise ValueError(
                f"the sample weights are all zero in {_dtype_name(self.dtype)} (the network's dtype): no sample would "
                "count"
            )
        return weights

    def _initialize(self, Y: np.ndarray, units: list[int]) -> None:
        """A new network with scikit-learn's initial parameters, and the fitted attributes of a new run."""
        self.n_iter_, self.t_ = 0, 0
        self.n_outputs_ = Y.shape[1]
        self.n_layers_ = len(units)
        self.out_activation_ = self._output_activation()
        self._model = self._new_network(units)
        factor = 2.0 if self.activation == "logistic" else 6.0
        values = []
        for fan_in, fan_out in pairwise(units):  # scikit-learn's order of draws: W1, b1, W2, b2, ...
            bound = math.sqrt(factor / (fan_in + fan_out))
            values.append(self._random_state.uniform(-bound, bound, (fan_in, fan_out)))
            values.append(self._random_state.uniform(-bound, bound, fan_out))
        self._model.set_weights(values)
        self._loss = _OutputLoss(self.out_activation_)
        self._optimizer: optim.Optimizer | None = None
        self._solver = self.solver  # the solver the optimizer was made for
        self._best_parameters = self._model.parameters.copy()
        if self.solver != "lbfgs":
            self.loss_curve_: list[float] = []
            self._no_improvement_count = 0
            self.best_loss_ = None if self.early_stopping else math.inf
            self.validation_scores_: list[float] | None = [] if self.early_stopping else None
            self.best_validation_score_ = -math.inf if self.early_stopping else None

    def _new_network(self, units: list[int]) -> Sequential:
        """A network of layer sizes ``units`` with the ``activation`` between its layers, in ``dtype``."""
        activation = HIDDEN_ACTIVATIONS[self.activation]
        stack: list[layers.Layer] = []
        for index, (fan_in, fan_out) in enumerate(pairwise(units)):
            stack.append(layers.Dense(fan_in, fan_out))
            if activation is not None and index < len(units) - 2:
                stack.append(activation())
        return Sequential(stack, dtype=self.dtype, seed=0, backend=self.backend)

    def _follow_activation_and_dtype(self) -> None:
        """When ``activation`` or ``dtype`` changed since the network was made, warm_start and partial_fit continue
        it as scikit-learn does (whose network is its weights: the next fit applies the new activation to them): a
        network of the new activation and dtype takes the weights, and the optimizer its state (cast to the
        dtype)."""
        hidden = {type(layer) for layer in self._model.layers if not isinstance(layer, layers.Dense)}
        wanted = HIDDEN_ACTIVATIONS[self.activation]
        if hidden <= {wanted} and self._model.dtype == np.dtype(_dtype_name(self.dtype)):
            return
        network = self._new_network(self._units())
        network.set_weights(self._model.get_weights())  # float32 rounds; a weight beyond its range is refused
        self._model = network
        self._best_parameters = self._best_parameters.astype(network.dtype)
        if isinstance(self._optimizer, optim.Optimizer):
            saved = self._optimizer.state_dict()
            saved["state"] = [{name: value.astype(network.dtype) if value.ndim else value
                               for name, value in state.items()} for state in saved["state"]]  # fmt: skip
            self._optimizer = (type(self._optimizer), saved)
        self._training_model()

    def _units(self) -> list[int]:
        return [self._model.in_features] + [layer.out_features for layer in self._dense_layers()]

    def _dense_layers(self) -> list[layers.Dense]:
        return [layer for layer in self._model.layers if isinstance(layer, layers.Dense)]

    def _training_set(self, X: np.ndarray, Y: np.ndarray, weights: np.ndarray | None) -> _TrainingSet:
        inputs = np.ascontiguousarray(X, dtype=self._model.dtype)
        if self.out_activation_ == "softmax":
            values = np.ascontiguousarray(Y.argmax(axis=1), dtype=np.int64)
        else:
            values = np.ascontiguousarray(Y, dtype=self._model.dtype)
        stored = None if weights is None else np.ascontiguousarray(weights, dtype=self._model.dtype)
        units = self._units()
        per_row = sum(fan_in * fan_out for fan_in, fan_out in itertools.pairwise(units))
        paired_from = max(PAIRED_FROM_ROWS, 2 * -(-PAIRED_HALF_MULTIPLY_ADDS // per_row))
        return _TrainingSet(inputs, Targets(values=values, labels=None, weights=stored), weights, paired_from)

    # -------------------------------------------------------------- one step, shared by the solvers
    def _loss_and_gradients(self, backend: Backend, data: _TrainingSet, rows: np.ndarray) -> tuple[float, float]:
        """Forward and backward over ``rows`` into the model's gradients (without the L2 term); returns the batch's
        loss and the sum of its weights."""
        gradients = self._model._pair_gradients if len(rows) >= data.paired_from else self._model._batch_gradients
        value, _, weight_sum, finite = gradients(
            backend, self._loss, data.inputs, data.targets, rows, compiled=data.compiled
        )
        if not (math.isfinite(value) and finite):
            raise ValueError(
                f"the loss or its gradient became {value if not math.isfinite(value) else 'NaN or Inf'} at iteration "
                f"{self.n_iter_ + 1}: the input data may contain large values and need to be preprocessed, or the "
                "learning rate is too large"
            )
        return value, weight_sum

    def _step(self, backend: Backend, data: _TrainingSet, rows: np.ndarray, squares_of: int | None) -> float:
        """One mini-batch update, the optimizer checked for it (``_epoch``); returns the batch's loss with
        scikit-learn's L2 term ``alpha / (2 sum w) ||W||^2`` of the weights before the update (none for the
        decoupled-decay solvers), whose sum of squares the optimizer's kernel takes as it reads the weights
        (``squares_of``: ``_squares_of()``)."""
        value, weight_sum = self._loss_and_gradients(backend, data, rows)
        if weight_sum == 0:  # a batch of zero weights has no loss and no gradient
            return 0.0
        decoupled = self.solver in DECOUPLED_DECAY
        if not decoupled and weight_sum != self._nominal_weight:
            # the L2 gradient is alpha / sum(w) W; the optimizer adds alpha / nominal W (its weight_decay, kept
            # constant: changing a group's option makes every step check the groups again), this the rest
            correction = self.alpha / weight_sum - self.alpha / self._nominal_weight
            gradients = self._model.weight_gradients
            gradients += correction * self._model.weight_parameters
        squares = self._optimizer._update([self._model.weight_gradients, self._model.bias_gradients], squares_of)
        if squares is not None:
            value += 0.5 * self.alpha * squares / weight_sum
        return value

    def _squares_of(self) -> int | None:
        """The optimizer's parameter whose sum of squares a step asks for: the weights (0), for the L2 term of
        scikit-learn's loss; none for the decoupled-decay solvers or ``alpha=0``."""
        return None if self.solver in DECOUPLED_DECAY or self.alpha == 0 else 0

    def _set_nominal_batch(self, batch_size: int) -> None:
        """The batch weight the weights group's ``weight_decay`` (``alpha / batch_size``) is set for: the L2 term's
        gradient of every full unweighted batch, added inside the optimizer's kernel."""
        self._nominal_weight = float(batch_size)
        if self.solver not in DECOUPLED_DECAY:
            self._optimizer.param_groups[0]["weight_decay"] = self.alpha / batch_size

    # -------------------------------------------------------------- stochastic solvers
    def _new_optimizer(self) -> optim.Optimizer:
        """The solver as a fastopt optimizer with two parameter groups: the weights (whose ``weight_decay`` carries
        the L2 term, ``_set_nominal_batch``) and the intercepts (none)."""
        model, solver = self._model, self.solver
        groups = [{"params": [model.weight_parameters]}, {"params": [model.bias_parameters], "weight_decay": 0.0}]
        lr = self.learning_rate_init
        if solver in DECOUPLED_DECAY:
            groups[0]["weight_decay"] = self.alpha
        if solver == "sgd":
            nesterov = bool(self.nesterovs_momentum) and self.momentum > 0
            return optim.SGD(groups, lr=lr, momentum=self.momentum, nesterov=nesterov)
        if solver == "adam":
            return _ScikitLearnAdam(groups, lr=lr, betas=(self.beta_1, self.beta_2), eps=self.epsilon)
        options: dict[str, Any] = {}
        if solver in ADAM_FAMILY:
            options = {"betas": (self.beta_1, self.beta_2), "eps": self.epsilon}
        elif solver == "lion":
            options = {"betas": (self.beta_1, self.beta_2)}
        return optim.OPTIMIZERS[solver](groups, lr=lr, **options)

    def _batch_size(self, n_samples: int) -> int:
        if self.batch_size == "auto":
            return min(200, n_samples)
        if self.batch_size > n_samples:
            warnings.warn("Got `batch_size` less than 1 or larger than sample size. It is going to be clipped",
                          stacklevel=4)  # fmt: skip
        return int(np.clip(self.batch_size, 1, n_samples))

    def _split(self, X: np.ndarray, Y: np.ndarray, weights: np.ndarray | None) -> tuple[tuple, tuple | None]:
        """The training rows and, with ``early_stopping``, scikit-learn's validation split (stratified for a
        single-output classifier): ``((X, Y, w), (X_val, y_val, w_val))``, ``y_val`` as the user's targets."""
        if not self.early_stopping:
            return (X, Y, weights), None
        stratify = Y if is_classifier(self) and self.n_outputs_ == 1 else None
        arrays = (X, Y) if weights is None else (X, Y, weights)
        parts = train_test_split(*arrays, random_state=self._random_state, test_size=self.validation_fraction,
                                 stratify=stratify)  # fmt: skip
        X_train, X_val, Y_train, Y_val = parts[:4]
        w_train, w_val = (parts[4], parts[5]) if weights is not None else (None, None)
        if X_val.shape[0] < 2:
            raise ValueError(
                "The validation set is too small. Increase 'validation_fraction' or the size of your dataset."
            )
        return (X_train, Y_train, w_train), (X_val, self._user_targets(Y_val), w_val)

    def _fit_stochastic(self, X: np.ndarray, Y: np.ndarray, weights: np.ndarray | None, incremental: bool) -> None:
        if self.early_stopping and incremental:
            raise ValueError("partial_fit does not support early_stopping=True")
        if self._optimizer is None or not (incremental or self.warm_start) or self._solver != self.solver:
            self._optimizer, self._solver = self._new_optimizer(), self.solver
        train, validation = self._split(X, Y, weights)
        data = self._training_set(*train)
        backend = resolve_backend(self.backend)
        self._optimizer.backend = backend  # its steps then skip resolving the backend (about 0.2 us each)
        order = np.arange(len(data.inputs), dtype=np.int64)
        batch_size = self._batch_size(len(order))
        # a partial_fit of a few batches runs them by the Python step: the compiled one is made for the call's data
        data.compiled = not incremental or len(order) >= MIN_COMPILED_STEPS * batch_size
        self._set_nominal_batch(batch_size)
        self.n_iter_ = 0
        try:
            with backend.training() as timing:
                for _ in range(self.max_iter):
                    if self.shuffle:
                        self._shuffle(order)
                    loss = self._epoch(backend, timing, data, order, batch_size)
                    self._end_iteration(loss, len(order), validation)
                    if self._stopping() or incremental:
                        break
                    if self.n_iter_ == self.max_iter:
                        warnings.warn(
                            f"Stochastic Optimizer: Maximum iterations ({self.max_iter}) reached and the optimization "
                            "hasn't converged yet.",
                            ConvergenceWarning,
                            stacklevel=3,
                        )
        except KeyboardInterrupt:
            warnings.warn("Training interrupted by user.", stacklevel=3)
        if self.early_stopping:
            self._model.parameters[...] = self._best_parameters

    def _shuffle(self, order: np.ndarray) -> None:
        """Permute ``order`` in place by the draw ``sklearn.utils.shuffle`` makes from the same generator (the same
        batches for a seed), without its argument checks (which took 0.7 ms an epoch). ``shuffle`` swaps positions by
        the draws alone, whatever the values, so shuffling ``order`` equals taking it at a shuffled ``arange``, as
        scikit-learn does, without the two copies."""
        self._random_state.shuffle(order)

    def _epoch(
        self, backend: Backend, timing: StepTiming, data: _TrainingSet, order: np.ndarray, batch_size: int
    ) -> float:
        """One pass over the rows in ``order``, each step timed for the backend; returns scikit-learn's epoch loss:
        the batches' losses weighted by their number of rows."""
        total = 0.0
        # Nothing but this loop runs between its steps: the optimizer's parameters, state and groups are checked
        # once (the schedule's learning rate and the L2 term's weight decay change between epochs only)
        squares_of = self._squares_of()
        self._optimizer._check_step(squares_of)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            timing.begin_step()
            total += self._step(backend, data, rows, squares_of) * len(rows)
            timing.end_step()
        return total / len(order)

    def _end_iteration(self, loss: float, n_samples: int, validation: tuple | None) -> None:
        self.n_iter_ += 1
        self.loss_ = loss
        self.t_ += n_samples
        self.loss_curve_.append(loss)
        if self.verbose:
            print(f"Iteration {self.n_iter_}, loss = {loss:.8f}")
        self._update_no_improvement_count(validation)
        if self.solver == "sgd" and self.learning_rate == "invscaling":
            # InvScalingLR's formula, on t_ itself: partial_fit's calls add epochs of different sizes to t_, where
            # the schedule counts a fixed number of samples per step
            self._set_learning_rate(self.learning_rate_init / (self.t_ + 1) ** self.power_t)

    def _update_no_improvement_count(self, validation: tuple | None) -> None:
        """scikit-learn's rule: an epoch counts when it does not beat the best training loss by ``tol`` (or, with
        early stopping, when its validation score is below the best plus ``tol``); a better epoch resets the count."""
        if validation is not None:
            X_val, y_val, w_val = validation
            score = self._validation_score(X_val, y_val, w_val)
            self.validation_scores_.append(score)
            if self.verbose:
                print(f"Validation score: {score:f}")
            improved = not score < self.best_validation_score_ + self.tol
            if score > self.best_validation_score_:
                self.best_validation_score_ = score
                self._best_parameters = self._model.parameters.copy()
        else:
            improved = not self.loss_curve_[-1] > self.best_loss_ - self.tol
            self.best_loss_ = min(self.best_loss_, self.loss_curve_[-1])
        self._no_improvement_count = 0 if improved else self._no_improvement_count + 1

    def _validation_score(self, X_val: np.ndarray, y_val: np.ndarray, w_val: np.ndarray | None) -> float:
        outputs = self._model.predict(X_val)
        if not np.isfinite(outputs).all():
            return math.nan
        return self._score_function(y_val, self._predictions(outputs), sample_weight=w_val)

    def _stopping(self) -> bool:
        """When the stopping rule fires: stop, or with ``learning_rate="adaptive"`` (sgd) divide the rate by 5 and go
        on while it is above 1e-6."""
        if self._no_improvement_count <= self.n_iter_no_change:
            return False
        watched = "Validation score" if self.early_stopping else "Training loss"
        message = (
            f"{watched} did not improve more than tol={self.tol:f} for {self.n_iter_no_change} consecutive epochs."
        )
        if self.solver == "sgd" and self.learning_rate == "adaptive":  # not ReduceLROnPlateau: its count is Keras's
            rate = self._optimizer.param_groups[0]["lr"]
            if rate > 1e-6:
                self._set_learning_rate(rate / 5.0)
                self._no_improvement_count = 0
                if self.verbose:
                    print(f"{message} Setting learning rate to {rate / 5.0:f}")
                return False
            message += " Learning rate too small."
        if self.verbose:
            print(f"{message} Stopping.")
        return True

    def _set_learning_rate(self, rate: float) -> None:
        """Set the rate of every group. SGD's momentum buffer ``b`` is rescaled by old / new rate so that
        ``-rate * b`` stays scikit-learn's velocity (which keeps the steps made at the old rate)."""
        optimizer = self._optimizer
        old = optimizer.param_groups[0]["lr"]
        if isinstance(optimizer, optim.SGD) and optimizer.step_count and rate > 0:
            for state in optimizer.state:
                if "momentum_buffer" in state:
                    state["momentum_buffer"] *= old / rate
        optimizer.lr = rate

    # -------------------------------------------------------------- L-BFGS
    def _fit_lbfgs(self, data: _TrainingSet) -> None:
        """Minimize the full-batch loss (with its L2 term) with scipy's L-BFGS-B, the loss and gradient from fastopt's
        forward and backward passes, in float64 for scipy (the model's dtype for the passes)."""
        from scipy.optimize import minimize  # scipy comes with scikit-learn

        model, backend = self._model, resolve_backend(self.backend)
        rows = np.arange(len(data.inputs), dtype=np.int64)
        n_weights = model.weight_parameters.size

        def loss_and_gradient(packed: np.ndarray) -> tuple[float, np.ndarray]:
            model.parameters[...] = packed
            timing.begin_step()
            value, weight_sum = self._loss_and_gradients(backend, data, rows)
            timing.end_step()
            gradient = model.gradients.astype(np.float64)
            weights = packed[:n_weights]
            value += 0.5 * self.alpha * float(weights @ weights) / weight_sum
            gradient[:n_weights] += (self.alpha / weight_sum) * weights
            return value, gradient

        with backend.training() as timing, _one_blas_thread():
            result = minimize(loss_and_gradient, model.parameters.astype(np.float64), method="L-BFGS-B", jac=True,
                              options={"maxfun": self.max_fun, "maxiter": self.max_iter, "gtol": self.tol})  # fmt: skip
        model.parameters[...] = result.x
        if result.status != 0:
            message = result.message.decode() if isinstance(result.message, bytes) else result.message
            warnings.warn(
                f"lbfgs failed to converge after {result.nit} iteration(s) (status={result.status}):\n{message}.\n\n"
                f"Increase the number of iterations to improve the convergence (max_iter={self.max_iter}).\n"
                "You might also want to scale the data as shown in:\n"
                "    https://scikit-learn.org/stable/modules/preprocessing.html",
                ConvergenceWarning,
                stacklevel=4,
            )
        self.n_iter_ = min(int(result.nit), self.max_iter)
        self.loss_ = float(result.fun)

    # -------------------------------------------------------------- fitted attributes and prediction
    @property
    def coefs_(self) -> _LayerArrays:
        """The weight matrix of each layer, (fan_in, fan_out): views of the network's parameters (in ``dtype``).
        Assigned (``clf.coefs_[i] = W`` or ``clf.coefs_ = [...]``), the values are copied into them, checked."""
        check_is_fitted(self, "_model")
        return _LayerArrays("coefs_", [layer.weight for layer in self._dense_layers()])

    @coefs_.setter
    def coefs_(self, values: list[object]) -> None:
        self._set_layer_arrays(values, 0)

    @property
    def intercepts_(self) -> _LayerArrays:
        """The intercept vector of each layer, (fan_out,): views of the network's parameters (in ``dtype``);
        assigned as ``coefs_``."""
        check_is_fitted(self, "_model")
        return _LayerArrays("intercepts_", [layer.bias for layer in self._dense_layers()])

    @intercepts_.setter
    def intercepts_(self, values: list[object]) -> None:
        self._set_layer_arrays(values, 1)

    def _set_layer_arrays(self, values: list[object], kind: int) -> None:
        """Write one array per layer, all or nothing (``Sequential.set_weights``): the weights (``kind`` 0) or the
        intercepts (1)."""
        check_is_fitted(self, "_model")
        weights = self._model.get_weights()
        name = ("coefs_", "intercepts_")[kind]
        if not isinstance(values, (list, tuple)) or len(values) != len(weights) // 2:
            raise ValueError(f"{name} takes a list of {len(weights) // 2} arrays, one per layer")
        weights[kind::2] = values
        self._model.set_weights(weights)

    def _outputs(self, X: object) -> np.ndarray:
        """The last layer's outputs ``z`` (N, n_outputs_) before the output function, for checked new data, computed
        in float64 whatever ``dtype`` the network trained in: float32 GEMMs of other shapes (a row predicted alone
        or among others) round a row's sums differently, by up to one float32 ulp, so that a row's float32
        prediction would depend on the rows predicted with it (scikit-learn's ``check_methods_subset_invariance``
        asks that it does not, to 1e-7). In float64 the differences are about 1e-16. A float32 network is copied
        into float64 at each call (0.3 ms for a 784-128-64-10 network), since its weights may have been written
        through ``coefs_`` since the last one; a float64 network predicts as it is."""
        check_is_fitted(self, "_model")
        X = self._checked_data(X, dtype=np.float64)
        model = self._model
        return (model if model.dtype == np.float64 else model.astype(np.float64)).predict(X)

    def _checked_data(
        self, X: object, y: object = "no_validation", reset: bool = False, dtype: Any = None, **options: Any
    ) -> Any:
        """scikit-learn's ``validate_data`` in ``dtype`` (None: the network's); sparse input refused, saying so."""
        dtype = np.dtype(self.dtype) if dtype is None else dtype
        try:
            return validate_data(self, X, y, accept_sparse=False, dtype=dtype, reset=reset, **options)
        except TypeError as error:
            if "sparse" in str(error).lower():
                raise TypeError(SPARSE_REFUSED) from error
            raise

    def __getstate__(self) -> dict[str, Any]:
        """The optimizer is kept as its class and ``state_dict`` (it views the network's buffers, which a pickle would
        copy apart), bound again to the network when a fit continues it (``_training_model``)."""
        state = super().__getstate__()
        optimizer = state.get("_optimizer")
        if isinstance(optimizer, optim.Optimizer):
            state["_optimizer"] = (type(optimizer), optimizer.state_dict())
        return state

    def _training_model(self) -> None:
        """Make the network trainable before a fit continues it: a copy of one that is read-only (unpickled with
        ``joblib.load(..., mmap_mode="r")``), and its optimizer bound again from the state an unpickled estimator
        keeps (``__getstate__``)."""
        if not self._model.parameters.flags.writeable:
            self._model = self._model.copy()
            self._model.parameters.setflags(write=True)
        if isinstance(self._optimizer, tuple):
            kind, state_dict = self._optimizer
            model = self._model
            params = ([model.weight_parameters], [model.bias_parameters])
            groups = [dict(saved_group, params=group) for saved_group, group in zip(state_dict["param_groups"], params)]
            self._optimizer = kind(groups, **state_dict["hyperparameters"])
            self._optimizer.load_state_dict(state_dict)


class MLPClassifier(ClassifierMixin, _BaseMLP):
    """scikit-learn's ``MLPClassifier`` (same parameters, defaults, attributes and methods), trained by fastopt.

    Binary, multiclass and multilabel targets, with labels of any type. ``dtype`` (default ``"float32"``:
    scikit-learn keeps float64) and ``backend`` are fastopt's; ``solver`` also takes fastopt's optimizers
    (``adamw``, ``rmsprop``, ``adagrad``, ``nadam``, ``adamax``, ``radam``, ``lion``). See ``fastopt.sklearn``.
    """

    _loss_choices = ("log_loss",)

    # fmt: off
    def __init__(self, hidden_layer_sizes: Any = (100,), activation: str = "relu", *, solver: str = "adam",
                 alpha: float = 0.0001, batch_size: int | str = "auto", learning_rate: str = "constant",
                 learning_rate_init: float = 0.001, power_t: float = 0.5, max_iter: int = 200, shuffle: bool = True,
                 random_state: Any = None, tol: float = 1e-4, verbose: bool = False, warm_start: bool = False,
                 momentum: float = 0.9, nesterovs_momentum: bool = True, early_stopping: bool = False,
                 validation_fraction: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8,
                 n_iter_no_change: int = 10, max_fun: int = 15000, dtype: str = "float32",
                 backend: str | None = None) -> None:
        self.hidden_layer_sizes, self.activation, self.solver = hidden_layer_sizes, activation, solver
        self.alpha = alpha
        self.batch_size, self.learning_rate, self.learning_rate_init = batch_size, learning_rate, learning_rate_init
        self.power_t, self.max_iter, self.shuffle, self.random_state = power_t, max_iter, shuffle, random_state
        self.tol, self.verbose, self.warm_start, self.momentum = tol, verbose, warm_start, momentum
        self.nesterovs_momentum, self.early_stopping = nesterovs_momentum, early_stopping
        self.validation_fraction, self.beta_1, self.beta_2 = validation_fraction, beta_1, beta_2
        self.epsilon, self.n_iter_no_change, self.max_fun = epsilon, n_iter_no_change, max_fun
        self.dtype, self.backend = dtype, backend
    # fmt: on

    loss = "log_loss"  # scikit-learn's classifier has this attribute without a parameter

    def _validate_input(self, X: object, y: object, incremental: bool, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        """Checked X and the targets as scikit-learn's binarizer gives them (N, 1) or (N, classes); sets or checks
        ``classes_`` as scikit-learn does (a new fit defines them, warm_start and partial_fit must keep them)."""
        X, y = self._checked_data(X, y, reset=reset, multi_output=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if not hasattr(self, "classes_") or (not self.warm_start and not incremental):
            self._label_binarizer = LabelBinarizer().fit(y)
            self.classes_ = self._label_binarizer.classes_
        else:
            classes = unique_labels(y)
            if self.warm_start and set(classes) != set(self.classes_):
                raise ValueError(
                    "warm_start can only be used where `y` has the same classes as in the previous call to fit. "
                    f"Previously got {self.classes_}, `y` has {classes}"
                )
            if not self.warm_start and len(np.setdiff1d(classes, self.classes_, assume_unique=True)):
                raise ValueError(f"`y` has classes not in `self.classes_`. `self.classes_` has {self.classes_}. "
                                 f"'y' has {classes}.")  # fmt: skip
        return X, self._binarized(y)

    def _binarized(self, y: np.ndarray) -> np.ndarray:
        """``self._label_binarizer.transform(y)`` as bools. Labels (N,) of a binary or multiclass task, all among
        ``classes_`` (as ``_validate_input`` has checked), are encoded here directly: whether each is the second
        class (N, 1), or its class as a one-hot row (N, classes). The binarizer checks ``y`` again: a ``partial_fit``
        call of 200 digits rows took 1.3 ms with it, 0.64 ms without (scikit-learn's 1.6-1.7 ms; a 2-core AMD EPYC
        Zen 4 VM)."""
        binarizer = self._label_binarizer
        if y.ndim != 1 or binarizer.y_type_ not in ("binary", "multiclass"):
            return binarizer.transform(y).astype(bool)
        # the binarizer's classes (sorted), as its transform encodes them, not ``classes_``, which a user may reorder
        codes = np.searchsorted(binarizer.classes_, y)
        if binarizer.y_type_ == "binary":
            return (codes == 1).reshape(-1, 1)
        indicator = np.zeros((len(y), len(binarizer.classes_)), dtype=bool)
        indicator[np.arange(len(y)), codes] = True
        return indicator

    def _output_activation(self) -> str:
        return "softmax" if self._label_binarizer.y_type_ == "multiclass" else "logistic"

    def _user_targets(self, Y: np.ndarray) -> np.ndarray:
        return self._label_binarizer.inverse_transform(Y)

    def _score_function(self, y: np.ndarray, predictions: np.ndarray, sample_weight: np.ndarray | None) -> float:
        return accuracy_score(y, predictions, sample_weight=sample_weight)

    def fit(self, X: object, y: object, sample_weight: object = None) -> MLPClassifier:
        """Fit the network to X (n_samples, n_features) and class labels y (n_samples,) or a label indicator
        matrix (n_samples, n_classes) for multilabel targets, weighted by ``sample_weight`` (n_samples,)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X: object, y: object, sample_weight: object = None, classes: object = None) -> MLPClassifier:
        """One epoch over (X, y), continuing the network and its optimizer. ``classes`` (every class of the whole
        task) is needed on the first call and must match ``classes_`` later."""
        if not hasattr(self, "classes_"):
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit.")
            binarizer = LabelBinarizer()
            labels = np.asarray(y)
            binarizer.fit(labels if labels.ndim == 2 and labels.shape[1] > 1 else np.asarray(classes))
            self._label_binarizer, self.classes_ = binarizer, binarizer.classes_
        elif classes is not None and not np.array_equal(np.unique(classes), self.classes_):
            raise ValueError(f"`classes={classes!r}` is not the same as on last call to partial_fit, was: "
                             f"{self.classes_!r}")  # fmt: skip
        return self._fit(X, y, sample_weight, incremental=True)

    def _predictions(self, outputs: np.ndarray) -> np.ndarray:
        probabilities = self._probabilities(outputs)
        if self.n_outputs_ == 1:
            probabilities = probabilities[:, 1]
        return self._label_binarizer.inverse_transform(probabilities)

    def _probabilities(self, outputs: np.ndarray) -> np.ndarray:
        """softmax(z) for several classes, ``[1 - s, s]`` with ``s = sigmoid(z)`` for two, ``sigmoid(z)`` per label
        for multilabel targets, in float64 (each row of a multiclass result sums to 1 to float64's precision)."""
        z = outputs.astype(np.float64)
        if self.out_activation_ == "softmax":
            shifted = np.exp(z - z.max(axis=1, keepdims=True))
            return shifted / shifted.sum(axis=1, keepdims=True)
        probabilities = expit(z)
        if self.n_outputs_ == 1 and self._label_binarizer.y_type_ != "multilabel-indicator":
            return np.hstack([1.0 - probabilities, probabilities])
        return probabilities

    def predict(self, X: object) -> np.ndarray:
        """The predicted classes (n_samples,) (or label indicator rows for multilabel targets), as ``classes_``."""
        return self._predictions(self._outputs(X))

    def predict_proba(self, X: object) -> np.ndarray:
        """The probability of each class (n_samples, n_classes), float64, columns in the order of ``classes_``."""
        return self._probabilities(self._outputs(X))

    def predict_log_proba(self, X: object) -> np.ndarray:
        """``log(predict_proba(X))``."""
        return np.log(self.predict_proba(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_label = True
        return tags


class MLPRegressor(RegressorMixin, _BaseMLP):
    """scikit-learn's ``MLPRegressor`` (same parameters, defaults, attributes and methods), trained by fastopt.

    Single- and multi-output targets; ``loss`` is ``"squared_error"`` (half the mean squared error) or
    ``"poisson"`` (half the Poisson deviance, with an exp output). ``dtype`` (default ``"float32"``, the training's
    precision; predictions are computed in float64, as scikit-learn's) and ``backend`` are fastopt's; ``solver``
    also takes fastopt's optimizers.
    """

    _loss_choices = ("squared_error", "poisson")

    # fmt: off
    def __init__(self, loss: str = "squared_error", hidden_layer_sizes: Any = (100,), activation: str = "relu", *,
                 solver: str = "adam", alpha: float = 0.0001, batch_size: int | str = "auto",
                 learning_rate: str = "constant", learning_rate_init: float = 0.001, power_t: float = 0.5,
                 max_iter: int = 200, shuffle: bool = True, random_state: Any = None, tol: float = 1e-4,
                 verbose: bool = False, warm_start: bool = False, momentum: float = 0.9,
                 nesterovs_momentum: bool = True, early_stopping: bool = False, validation_fraction: float = 0.1,
                 beta_1: float = 0.9, beta_2: float = 0.999, epsilon: float = 1e-8, n_iter_no_change: int = 10,
                 max_fun: int = 15000, dtype: str = "float32", backend: str | None = None) -> None:
        self.loss, self.hidden_layer_sizes, self.activation, self.solver = loss, hidden_layer_sizes, activation, solver
        self.alpha, self.batch_size, self.learning_rate = alpha, batch_size, learning_rate
        self.learning_rate_init, self.power_t, self.max_iter = learning_rate_init, power_t, max_iter
        self.shuffle, self.random_state, self.tol, self.verbose = shuffle, random_state, tol, verbose
        self.warm_start, self.momentum, self.nesterovs_momentum = warm_start, momentum, nesterovs_momentum
        self.early_stopping, self.validation_fraction = early_stopping, validation_fraction
        self.beta_1, self.beta_2, self.epsilon = beta_1, beta_2, epsilon
        self.n_iter_no_change, self.max_fun, self.dtype, self.backend = n_iter_no_change, max_fun, dtype, backend
    # fmt: on

    def _validate_input(self, X: object, y: object, incremental: bool, reset: bool) -> tuple[np.ndarray, np.ndarray]:
        X, y = self._checked_data(X, y, reset=reset, multi_output=True, y_numeric=True)
        if y.ndim == 2 and y.shape[1] == 1:
            y = column_or_1d(y, warn=True)
        if self.loss == "poisson" and (y < 0).any():
            raise ValueError("loss='poisson' needs non-negative targets y")
        return X, y

    def _output_activation(self) -> str:
        return "exp" if self.loss == "poisson" else "identity"

    def _user_targets(self, Y: np.ndarray) -> np.ndarray:
        return Y

    def _score_function(self, y: np.ndarray, predictions: np.ndarray, sample_weight: np.ndarray | None) -> float:
        return r2_score(y, predictions, sample_weight=sample_weight)

    def fit(self, X: object, y: object, sample_weight: object = None) -> MLPRegressor:
        """Fit the network to X (n_samples, n_features) and targets y (n_samples,) or (n_samples, n_outputs),
        weighted by ``sample_weight`` (n_samples,)."""
        return self._fit(X, y, sample_weight, incremental=False)

    @available_if(_BaseMLP._check_solver)
    def partial_fit(self, X: object, y: object, sample_weight: object = None) -> MLPRegressor:
        """One epoch over (X, y), continuing the network and its optimizer."""
        return self._fit(X, y, sample_weight, incremental=True)

    def _predictions(self, outputs: np.ndarray) -> np.ndarray:
        predictions = outputs.astype(np.float64)  # scikit-learn's regressors predict float64
        if self.out_activation_ == "exp":
            np.exp(predictions, out=predictions)
        return predictions.ravel() if predictions.shape[1] == 1 else predictions

    def predict(self, X: object) -> np.ndarray:
        """The predicted values (n_samples,) or (n_samples, n_outputs), computed in float64 from the weights."""
        return self._predictions(self._outputs(X))

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags
