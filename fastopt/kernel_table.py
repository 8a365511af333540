"""The kernel table: every kernel of the backend interface declared once.

Each entry names a kernel's arguments in call order (arrays with their role, symbolic shape and dtype; scalars
with their range), its optimizer hyperparameters (passed by name), extra rules, and its math in one line. From
this one declaration derive:

- the checked public methods of every backend (``fastopt.backend.Backend``): arguments are checked against the
  entry (types, dtypes, shapes, contiguity, writeability, aliasing, ranges, rules) before the trusted kernel
  runs, so that no compiled kernel is handed a buffer it could read or write out of bounds;
- the trusted kernel signatures each backend implements: ``_<name>(<array and scalar arguments in order>)``,
  plus one mapping ``hyper`` of named scalars for the optimizer kernels (never by position);
- ``docs/kernels.md`` (``python scripts/make_kernel_docs.py``; a test checks it is current);
- the argument builders of the fuzz tests, and the test that every backend implements exactly these signatures.

Shapes are strings of dimension symbols, one per axis: ``B`` batch rows, ``I`` input features, ``O`` output
features, ``C`` classes, ``N`` samples, ``F`` features; ``*`` is any shape, the same for every ``*`` array of a
call. Every float array of a call has the dtype of the first one (float32 or float64); index arrays are int64.
No array written by a kernel may share memory with any other argument of the call.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field, replace

ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "leaky_relu", "gelu", "gelu_tanh")
# The activations a dense layer applies itself: those whose derivative is a function of the output (leaky_relu's for
# a slope >= 0: out > 0 exactly when the pre-activation is). GELU's derivative needs the pre-activation, which the
# dense kernels do not keep: it runs as an activation stage of its own, whose backward reads its input x.
DENSE_ACTIVATIONS = ("identity", "relu", "sigmoid", "tanh", "leaky_relu")

DIMENSIONS = {
    "B": "batch",
    "I": "in_features",
    "O": "out_features",
    "C": "classes",
    "N": "samples",
    "F": "features",
}


@dataclass(frozen=True)
class Array:
    """An array argument. ``role``: "in" (read), "out" (written), "inout" (read, then written).
    ``optional`` arrays may be None; ``index_of`` makes an int64 array of indices into that dimension."""

    name: str
    shape: str
    role: str = "in"
    optional: bool = False
    index_of: str | None = None
    doc: str = ""

    @property
    def written(self) -> bool:
        return self.role in ("out", "inout")


@dataclass(frozen=True)
class Scalar:
    """A scalar argument: a real number in [low, high] (an open end excludes the bound; None: unbounded), an integer
    in [low, high] (``integer=True``: exact, any width Python's int holds), a flag (``flag=True``: True or False) or
    one of ``choices``."""

    name: str
    low: float | None = 0.0
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: bool = False
    choices: tuple[str, ...] = ()
    default: object = None
    doc: str = ""
    integer: bool = False

    def describe(self) -> str:
        if self.flag:
            return "True or False"
        if self.choices:
            return "one of " + ", ".join(repr(choice) for choice in self.choices)
        if self.integer:
            return f"integer in [{self.low}, {self.high}]"
        left = "-inf" if self.low is None else f"{self.low:g}"
        right = "inf" if self.high is None else f"{self.high:g}"
        opening = "(" if self.low_open or self.low is None else "["
        closing = ")" if self.high_open or self.high is None else "]"
        return f"real in {opening}{left}, {right}{closing}"


@dataclass(frozen=True)
class Kernel:
    """One kernel. ``params``: its arguments in call order. ``hyper``: the named scalars of an optimizer update,
    keyword-only in the public method and one mapping ``hyper`` in the trusted one. ``returns``: "value" (the
    kernel's result), the name of the output array returned, or None. ``given_when``: optional arrays that must
    be given exactly when a scalar is non-zero. ``min_size``: dimensions that must be at least 1.
    ``nonempty``: arrays that must hold at least one element."""

    name: str
    group: str
    math: str
    params: tuple[Array | Scalar, ...]
    hyper: tuple[Scalar, ...] = ()
    returns: str | None = None
    given_when: tuple[tuple[str, str], ...] = ()
    min_size: tuple[str, ...] = ()
    nonempty: tuple[str, ...] = ()
    notes: str = ""
    arrays: tuple[Array, ...] = field(init=False)
    scalars: tuple[Scalar, ...] = field(init=False)
    method: str = field(init=False)  # the trusted kernel method every backend implements: "_" + name

    def __post_init__(self) -> None:
        object.__setattr__(self, "arrays", tuple(p for p in self.params if isinstance(p, Array)))
        object.__setattr__(self, "scalars", tuple(p for p in self.params if isinstance(p, Scalar)))
        # interned: a method name built per call and looked up with getattr stays referenced by the type's
        # attribute cache (about 60 bytes per training step, measured with tracemalloc)
        object.__setattr__(self, "method", sys.intern("_" + self.name))

    def trusted_parameters(self) -> tuple[str, ...]:
        """Parameter names of the trusted kernel method, in order (after ``self``)."""
        return tuple(p.name for p in self.params) + (("hyper",) if self.hyper else ())


# ------------------------------------------------------------------------------------- shared declarations
def _activation(default: object = None, choices: tuple[str, ...] = ACTIVATIONS) -> Scalar:
    return Scalar("activation", choices=choices, default=default, doc="the activation f")


def _negative_slope(low: float | None) -> Scalar:
    return Scalar("negative_slope", low=low, default=0.0, doc="leaky_relu's slope below 0; the others ignore it")


_REAL = Scalar("value")  # a template: [0, inf)
_UNIT = Scalar("value", high=1.0)  # [0, 1]
_BETA = Scalar("value", high=1.0, high_open=True)  # [0, 1)
_CORRECTION = Scalar("value", high=1.0, low_open=True)  # (0, 1]


def _named(template: Scalar, name: str, doc: str = "") -> Scalar:
    return replace(template, name=name, doc=doc)


def _flag(name: str, doc: str = "") -> Scalar:
    return Scalar(name, flag=True, doc=doc)


def _param_grad() -> tuple[Array, Array]:
    return Array("param", "*", "inout", doc="the parameters, updated in place"), Array(
        "grad", "*", doc="their gradient"
    )


def _state(name: str, optional: bool = False, doc: str = "") -> Array:
    return Array(name, "*", "inout", optional=optional, doc=doc)


def _sample_weights() -> Array:
    return Array("weights", "B", optional=True, doc="w, one per row; None: every w_i = 1")


def _pointwise_arrays() -> tuple[Array, ...]:
    """The arrays of a loss of outputs against float targets, element by element: outputs, targets, the gradient
    (optional) and the weights (optional)."""
    return Array("pred", "BO"), Array("target", "BO"), Array("grad_pred", "BO", "out", optional=True), _sample_weights()


_WEIGHT_NOTES = (
    "A batch whose weights sum to 0 gives 0 and a zero gradient. The weights' sum is taken in double, in row order, "
    "and so are each row's factor w_i / sum_i w_i (rounded once to the arrays' dtype) and the value."
)


LR = _named(_REAL, "lr", "learning rate of this step")
WEIGHT_DECAY = _named(_REAL, "weight_decay", "L2 coefficient")
EPS = _named(_REAL, "eps", "added to the denominator")
BETA1 = _named(_BETA, "beta1", "decay of the first moment")
BETA2 = _named(_BETA, "beta2", "decay of the second moment")
DECOUPLED = _flag("decoupled_weight_decay", "p *= 1 - lr wd instead of adding wd p to the gradient")
BIAS_CORRECTION1 = _named(_CORRECTION, "bias_correction1", "1 - beta1**t")
BIAS_CORRECTION2 = _named(_CORRECTION, "bias_correction2", "1 - beta2**t")
# the scalars every Adam-family kernel takes first: the step's rate, the moments' decays, eps, the weight decay
MOMENTS = (LR, BETA1, BETA2, EPS, WEIGHT_DECAY)


# ------------------------------------------------------------------------------------- the table
_TABLE = (
    Kernel(
        "dense_forward",
        "layer",
        "out = f(x @ weight + bias)",
        (
            Array("x", "BI"),
            Array("weight", "IO"),
            Array("bias", "O"),
            Array("out", "BO", "out"),
            _activation("identity", DENSE_ACTIVATIONS),
            _negative_slope(0.0),
        ),
        returns="out",
    ),
    Kernel(
        "dense_backward",
        "layer",
        "grad_out *= f'(out) (now dz); grad_weight = x.T @ dz; grad_bias = dz.sum(0); grad_x = dz @ weight.T; "
        "returns whether grad_weight and grad_bias are finite",
        (
            Array("x", "BI"),
            Array("weight", "IO"),
            Array("out", "BO", doc="the forward output f(z)"),
            Array("grad_out", "BO", "inout", doc="d loss / d out; overwritten with dz"),
            Array("grad_weight", "IO", "out"),
            Array("grad_bias", "O", "out"),
            Array("grad_x", "BI", "out", optional=True, doc="None for the first layer"),
            _activation("identity", DENSE_ACTIVATIONS),
            _negative_slope(0.0),
        ),
        returns="value",
        notes="f' is written in terms of the forward output: relu out > 0, sigmoid out (1 - out), tanh 1 - out**2, "
        "leaky_relu 1 if out > 0 else negative_slope (the same as from z, since the slope is >= 0). "
        "The finiteness of the weight and bias gradients is the training step's guard against non-finite gradients "
        "under a finite loss: the compiled kernel checks each block while it is in cache.",
    ),
    Kernel(
        "activation_forward",
        "layer",
        "out = f(x) elementwise (identity copies)",
        (_activation(), Array("x", "*"), Array("out", "*", "out"), _negative_slope(None)),
        returns="out",
        notes="leaky_relu: x if x > 0 else negative_slope x; gelu: 0.5 x (1 + erf(x / sqrt(2))), computed as "
        "0.5 x erfc(-x / sqrt(2)); gelu_tanh: 0.5 x (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x**3), computed as "
        "x sigmoid(2 u) (PyTorch's GELU, approximate='none' and 'tanh', without its cancellation for x << 0).",
    ),
    Kernel(
        "activation_backward",
        "layer",
        "grad_x = grad_out * f'(x) elementwise, f' from what it needs: the input x or the output out = f(x)",
        (
            _activation(),
            Array("x", "*", doc="the forward input"),
            Array("out", "*", doc="the forward output f(x)"),
            Array("grad_out", "*"),
            Array("grad_x", "*", "out"),
            _negative_slope(None),
        ),
        returns="grad_x",
        notes="From out: relu out > 0, sigmoid out (1 - out), tanh 1 - out**2. From x: leaky_relu 1 if x > 0 else "
        "negative_slope; gelu Phi(x) + x phi(x) (the standard normal cdf 0.5 erfc(-x / sqrt(2)) and density); "
        "gelu_tanh s + x s (1 - s) 2 sqrt(2 / pi) (1 + 3 * 0.044715 x**2), s = sigmoid(2 u) (PyTorch's "
        "0.5 (1 + t) + 0.5 x (1 - t**2) u', t = tanh(u)).",
    ),
    Kernel(
        "softmax_forward",
        "layer",
        "out[i] = exp(x[i] - max x[i]) / sum_j exp(x[i, j] - max x[i])",
        (Array("x", "BC"), Array("out", "BC", "out")),
        returns="out",
    ),
    Kernel(
        "softmax_backward",
        "layer",
        "grad_x[i] = out[i] * (grad_out[i] - <grad_out[i], out[i]>)",
        (Array("out", "BC"), Array("grad_out", "BC"), Array("grad_x", "BC", "out")),
        returns="grad_x",
    ),
    Kernel(
        "dropout",
        "layer",
        "mask = 1 / (1 - p) if keep else 0, out = x * mask elementwise; keep[i] = u[i] >= p, u[i] the 32-bit number i "
        "of the SplitMix64 stream of key, / 2**32",
        (
            Array("x", "*"),
            Array("out", "*", "out"),
            Array("mask", "*", "out", doc="the multipliers, kept for the backward pass"),
            Scalar("p", high=1.0, high_open=True, doc="the probability of dropping an element"),
            Scalar("key", low=0, high=2**64 - 1, integer=True, doc="the mask's key (layer and step)"),
        ),
        returns="out",
        notes="Element i (row-major) takes half i % 2 (0: the low 32 bits) of word i // 2 of the stream, "
        "splitmix64(key + (i // 2 + 1) * 0x9E3779B97F4A7C15 mod 2**64), and is kept when that half is at least "
        "ceil(p 2**32); 1 / (1 - p) is rounded once to the dtype. The mask depends on nothing else: it is the same on "
        "every backend and thread count.",
    ),
    Kernel(
        "dropout_backward",
        "layer",
        "grad_x = grad_out * mask elementwise (mask: the dropout forward pass's)",
        (Array("grad_out", "*"), Array("mask", "*"), Array("grad_x", "*", "out")),
        returns="grad_x",
    ),
    Kernel(
        "softmax_cross_entropy",
        "loss",
        "t[i] = (1 - eps) onehot(labels[i]) + eps / C; l_i = logsumexp(logits[i]) - <t[i], logits[i]>; "
        "value = sum_i w_i l_i / sum_i w_i; grad_logits[i] = (softmax(logits[i]) - t[i]) w_i / sum_i w_i",
        (
            Array("logits", "BC"),
            Array("labels", "B", index_of="C"),
            Array("grad_logits", "BC", "out", optional=True),
            _sample_weights(),
            Scalar("label_smoothing", high=1.0, high_open=True, default=0.0, doc="eps"),
        ),
        returns="value",
        min_size=("B",),
        notes=_WEIGHT_NOTES + " Without weights the gradient is divided by B (not multiplied by a row's w_i / B).",
    ),
    Kernel(
        "mse",
        "loss",
        "l_i = mean_j (pred[i, j] - target[i, j])**2; value = sum_i w_i l_i / sum_i w_i; "
        "grad_pred[i] = 2 (pred[i] - target[i]) w_i / (O sum_i w_i)",
        _pointwise_arrays(),
        returns="value",
        nonempty=("pred",),
        notes=_WEIGHT_NOTES + " Without weights the gradient is 2 (pred - target) / pred.size.",
    ),
    Kernel(
        "huber",
        "loss",
        "d = pred - target; l = d**2 / 2 where |d| < delta, else delta (|d| - delta / 2); l_i = mean_j l[i, j]; "
        "value = sum_i w_i l_i / sum_i w_i; grad_pred[i] = clip(d[i], -delta, delta) w_i / (O sum_i w_i)",
        (
            *_pointwise_arrays(),
            Scalar("delta", low_open=True, default=1.0, doc="where the loss turns from quadratic to linear"),
        ),
        returns="value",
        nonempty=("pred",),
        notes=_WEIGHT_NOTES,
    ),
    Kernel(
        "mae",
        "loss",
        "l_i = mean_j |pred[i, j] - target[i, j]|; value = sum_i w_i l_i / sum_i w_i; "
        "grad_pred[i] = sign(pred[i] - target[i]) w_i / (O sum_i w_i)",
        _pointwise_arrays(),
        returns="value",
        nonempty=("pred",),
        notes=_WEIGHT_NOTES + " sign(0) is 0 and sign(NaN) is NaN, as numpy.sign.",
    ),
    Kernel(
        "binary_cross_entropy",
        "loss",
        "s = sigmoid(logits), p = pos_weight[j] (1 without it); l = -(p y log s + (1 - y) log(1 - s)); "
        "l_i = mean_j l[i, j]; value = sum_i w_i l_i / sum_i w_i; "
        "grad_logits[i] = ((1 - y) s - p y (1 - s)) w_i / (C sum_i w_i)",
        (
            Array("logits", "BC"),
            Array("targets", "BC", doc="y, in [0, 1]"),
            Array("grad_logits", "BC", "out", optional=True),
            _sample_weights(),
            Array("pos_weight", "C", optional=True, doc="p, the weight of the positive term of each column"),
        ),
        returns="value",
        nonempty=("logits",),
        notes=_WEIGHT_NOTES
        + " Stable for any logit: -log s = max(-x, 0) + log1p(exp(-|x|)), -log(1 - s) = max(x, 0) + log1p(exp(-|x|)),"
        " and s and 1 - s are each taken from exp(-|x|).",
    ),
    Kernel(
        "count_binary_correct",
        "loss",
        "number of elements whose prediction (logits > 0) is their target (targets > 0.5)",
        (Array("logits", "BC"), Array("targets", "BC")),
        returns="value",
    ),
    Kernel(
        "count_correct",
        "loss",
        "number of rows i whose first largest score is at labels[i] (a NaN counts as largest)",
        (Array("scores", "BC"), Array("labels", "B", index_of="C")),
        returns="value",
    ),
    Kernel(
        "gather_rows",
        "helper",
        "out[i] = source[rows[i]]",
        (Array("source", "NF"), Array("rows", "B", index_of="N"), Array("out", "BF", "out")),
        returns="out",
    ),
    Kernel(
        "all_finite",
        "helper",
        "whether x holds no NaN or Inf",
        (Array("x", "*"),),
        returns="value",
    ),
    Kernel(
        "sum_of_squares",
        "helper",
        "sum of x**2, accumulated in float64 (the squared L2 norm gradient clipping takes)",
        (Array("x", "*"),),
        returns="value",
        notes="NaN or Inf when x holds one (and Inf when a float64 square overflows): the norm is also the "
        "guard against non-finite gradients when clipping. The sum's order differs between backends.",
    ),
    Kernel(
        "weighted_sum_into",
        "helper",
        "a = a_weight a + b_weight b, elementwise",
        (Array("a", "N", "inout"), Array("b", "N"), Scalar("a_weight", high=1.0), Scalar("b_weight", high=1.0)),
        returns="a",
        notes="Combines the gradients of a batch's two halves (``Sequential._pair_gradients``) into their mean "
        "weighted by the halves' weights. The compiled kernel may fuse a multiply and the add (one rounding "
        "fewer than NumPy's); with weights of 0.5 both products are exact and the backends agree to the bit.",
    ),
    Kernel(
        "sgd_step",
        "optimizer",
        "g = grad + wd p; with momentum b = g (first step) else b = mu b + (1 - dampening) g, "
        "g = g + mu b (nesterov) or g = b; p -= lr g",
        (*_param_grad(), _state("momentum_buffer", optional=True, doc="None exactly when momentum is 0")),
        hyper=(
            LR,
            _named(_REAL, "momentum", "mu"),
            _named(_UNIT, "dampening"),
            _flag("nesterov"),
            WEIGHT_DECAY,
            _flag("first_step", "the optimizer's first step: b = g"),
        ),
        given_when=(("momentum_buffer", "momentum"),),
    ),
    Kernel(
        "adagrad_step",
        "optimizer",
        "g = grad + wd p; s += g**2; p -= lr g / (sqrt(s) + eps)",
        (*_param_grad(), _state("sum_squares")),
        hyper=(LR, EPS, WEIGHT_DECAY),
    ),
    Kernel(
        "rmsprop_step",
        "optimizer",
        "g = grad + wd p; v = alpha v + (1 - alpha) g**2; centered: a = alpha a + (1 - alpha) g, "
        "d = sqrt(v - a**2) + eps, else d = sqrt(v) + eps; momentum: b = mu b + g / d, p -= lr b; else p -= lr g / d",
        (
            *_param_grad(),
            _state("square_avg"),
            _state("grad_avg", optional=True, doc="None unless centered"),
            _state("momentum_buffer", optional=True, doc="None exactly when momentum is 0"),
        ),
        hyper=(LR, _named(_UNIT, "alpha"), EPS, _named(_REAL, "momentum", "mu"), WEIGHT_DECAY),
        given_when=(("momentum_buffer", "momentum"),),
    ),
    Kernel(
        "adam_step",
        "optimizer",
        "decoupled: p *= 1 - lr wd, g = grad, else g = grad + wd p; m = b1 m + (1 - b1) g; "
        "v = b2 v + (1 - b2) g**2; amsgrad: vmax = max(vmax, v) replaces v; "
        "p -= (lr / bc1) m / (sqrt(v) (1 / sqrt(bc2)) + eps)",
        (
            *_param_grad(),
            _state("exp_avg", doc="m"),
            _state("exp_avg_sq", doc="v"),
            _state("max_exp_avg_sq", optional=True, doc="vmax; None unless amsgrad"),
        ),
        hyper=(*MOMENTS, DECOUPLED, BIAS_CORRECTION1, BIAS_CORRECTION2),
        notes="Both backends multiply by 1 / sqrt(bc2), made once in double, where PyTorch divides by sqrt(bc2): "
        "the same math, one division less per element.",
    ),
    Kernel(
        "nadam_step",
        "optimizer",
        "decoupled: p *= 1 - lr wd, g = grad, else g = grad + wd p; m = b1 m + (1 - b1) g; "
        "v = b2 v + (1 - b2) g**2; d = sqrt(v / bc2) + eps; p -= grad_step g / d; p -= momentum_step m / d",
        (*_param_grad(), _state("exp_avg", doc="m"), _state("exp_avg_sq", doc="v")),
        hyper=(
            *MOMENTS,
            DECOUPLED,
            BIAS_CORRECTION2,
            _named(_REAL, "grad_step", "lr (1 - mu_t) / (1 - prod_{i<=t} mu_i)"),
            _named(_REAL, "momentum_step", "lr mu_{t+1} / (1 - prod_{i<=t+1} mu_i)"),
        ),
    ),
    Kernel(
        "adamax_step",
        "optimizer",
        "g = grad + wd p; m = b1 m + (1 - b1) g; u = max(b2 u, |g| + eps); p -= (lr / bc1) m / u",
        (*_param_grad(), _state("exp_avg", doc="m"), _state("exp_inf", doc="u, the infinity norm")),
        hyper=(*MOMENTS, BIAS_CORRECTION1),
    ),
    Kernel(
        "radam_step",
        "optimizer",
        "decoupled: p *= 1 - lr wd, g = grad, else g = grad + wd p; m = b1 m + (1 - b1) g; "
        "v = b2 v + (1 - b2) g**2; rectified: p -= (m / bc1) lr (sqrt(bc2) / (sqrt(v) + eps)) r, "
        "else p -= (m / bc1) lr",
        (*_param_grad(), _state("exp_avg", doc="m"), _state("exp_avg_sq", doc="v")),
        hyper=(
            *MOMENTS,
            DECOUPLED,
            BIAS_CORRECTION1,
            BIAS_CORRECTION2,
            _flag("rectified", "rho_t > 5"),
            _named(_REAL, "rectification", "r_t, used when rectified"),
        ),
    ),
    Kernel(
        "lion_step",
        "optimizer",
        "c = b1 m + (1 - b1) grad; p -= lr (sign(c) + wd p); m = b2 m + (1 - b2) grad",
        (*_param_grad(), _state("exp_avg", doc="m")),
        hyper=(LR, BETA1, BETA2, WEIGHT_DECAY),
        notes="sign(0) is 0 and sign(NaN) is NaN, as numpy.sign.",
    ),
)

# Every optimizer update can report the sum of squares of the parameters it reads, taken before it updates them: the
# L2 penalty scikit-learn adds to each batch's loss (fastopt.sklearn), without a pass over the weights of its own.
WITH_SQUARES = Scalar("with_squares", flag=True, default=False, doc="also return sum(p**2) of p before the update")


def _reporting_squares(kernel: Kernel) -> Kernel:
    """An optimizer kernel with its last positional argument, ``with_squares``, and its return value."""
    notes = (
        "Returns None, or with ``with_squares`` sum(p**2) of the parameters before the update, accumulated in float64 "
        "(the bits of ``sum_of_squares`` of the same buffer in each backend)."
    )
    return replace(kernel, params=(*kernel.params, WITH_SQUARES), returns="value",
                   notes=f"{kernel.notes} {notes}".strip())  # fmt: skip


_TABLE = tuple(_reporting_squares(kernel) if kernel.group == "optimizer" else kernel for kernel in _TABLE)
KERNELS: dict[str, Kernel] = {kernel.name: kernel for kernel in _TABLE}
OPTIMIZER_KERNELS = tuple(name for name, kernel in KERNELS.items() if kernel.group == "optimizer")


# ------------------------------------------------------------------------------------- documentation
def _signature(kernel: Kernel) -> str:
    parts = []
    for param in kernel.params:
        default = None if isinstance(param, Scalar) else "None" if param.optional else ""
        if isinstance(param, Scalar) and param.default is not None:
            default = repr(param.default)
        parts.append(f"{param.name}={default}" if default else param.name)
    if kernel.hyper:
        parts.append("*")
        parts += [scalar.name for scalar in kernel.hyper]
    return f"{kernel.name}({', '.join(parts)})"


def _shape_text(shape: str) -> str:
    if shape == "*":
        return "any shape (*)"
    return "(" + ", ".join(shape) + ("," if len(shape) == 1 else "") + ")"


def _kernel_markdown(kernel: Kernel) -> list[str]:
    lines = [f"### `{kernel.name}`", "", f"`{_signature(kernel)}`", "", f"Math: `{kernel.math}`", ""]
    lines += ["| argument | kind | shape / range | notes |", "|---|---|---|---|"]
    for param in kernel.params:
        if isinstance(param, Array):
            kind = "int64 indices into " + param.index_of if param.index_of else f"float, {param.role}"
            notes = "; ".join(text for text in ("optional" if param.optional else "", param.doc) if text)
            lines.append(f"| `{param.name}` | {kind} | {_shape_text(param.shape)} | {notes} |")
        else:
            lines.append(f"| `{param.name}` | scalar | {param.describe()} | {param.doc} |")
    for scalar in kernel.hyper:
        lines.append(f"| `{scalar.name}` | hyperparameter | {scalar.describe()} | {scalar.doc} |")
    rules = [f"`{array}` is given exactly when `{scalar}` != 0" for array, scalar in kernel.given_when]
    rules += [f"{DIMENSIONS[dim]} ({dim}) >= 1" for dim in kernel.min_size]
    rules += [f"`{name}` is not empty" for name in kernel.nonempty]
    if rules:
        lines += ["", "Rules: " + "; ".join(rules) + "."]
    if kernel.notes:
        lines += ["", kernel.notes]
    return [*lines, ""]


def render_markdown() -> str:
    """The text of ``docs/kernels.md``."""
    lines = [
        "# The kernels",
        "",
        "Generated from `fastopt/kernel_table.py` by `python scripts/make_kernel_docs.py`; "
        "a test checks that it is current. Every backend implements each kernel as a trusted method "
        "`_<name>` with the arguments below in this order (the optimizer kernels take their hyperparameters as one "
        "mapping `hyper`, by name); the public method `<name>` checks every argument against this table first.",
        "",
        "Shapes: " + ", ".join(f"`{symbol}` {name}" for symbol, name in DIMENSIONS.items()) + "; `*` any shape, "
        "the same for every `*` array of a call. Float arrays share the dtype of the first (float32 or float64), "
        "index arrays are int64; every array is C-contiguous; no written array shares memory with another argument.",
        "",
    ]
    for group, title in (("layer", "Layers"), ("loss", "Losses"), ("helper", "Helpers"), ("optimizer", "Optimizers")):
        lines += [f"## {title}", ""]
        for kernel in KERNELS.values():
            if kernel.group == group:
                lines += _kernel_markdown(kernel)
    return "\n".join(lines).rstrip() + "\n"
