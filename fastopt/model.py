"""``Sequential``: a stack of layers with one flat parameter buffer, trained with ``fit``.

Memory layout: all weights and biases live in one contiguous array ``parameters`` (each ``Dense``
layer's ``weight`` and ``bias`` are views into it) and their gradients in a second one, ``gradients``.
One optimizer step is therefore one kernel call over the whole model. The activations and their
gradients for a batch size are allocated on the first batch of that size and reused, so a training
step makes no new arrays.

Copies (``model.copy()``, ``copy.copy``, ``copy.deepcopy``, ``pickle``, ``joblib``) share one mechanism: the
state is the configuration, dtype, seed, backend name, both flat buffers, the loss and the optimizer; the
layers' views, the fused-stage plan and the workspaces are derived from it again (``__setstate__``).

A ``Dense`` layer directly followed by ``ReLU``, ``Sigmoid``, ``Tanh`` or ``LeakyReLU`` (a slope >= 0) runs as one
fused stage (matrix product, bias and activation written in one output buffer). ``GELU`` runs as a stage of its own:
its derivative needs its input, which the Dense stage's output buffer then keeps. ``Dropout`` stages run only in
training passes (``fit``): elsewhere a stage reads its input from the stage before the dropout stages.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from copy import deepcopy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from fastopt import _io, _random, training
from fastopt._aligned import aligned_empty, aligned_zeros
from fastopt._checks import as_features, as_trusted_features, check_positive_int, check_same_length, resolve_dtype
from fastopt.backend import Backend, resolve_backend
from fastopt.callbacks import Callback
from fastopt.history import History
from fastopt.layers import Activation, Dense, Dropout, Layer, Softmax, as_parameter_values, layer_from_config
from fastopt.losses import CrossEntropy, Loss, Targets
from fastopt.optim import Optimizer

MODEL_FILE_KIND = "fastopt-model"
MODEL_FILE_VERSION = 2  # 2: the flat buffer holds every weight, then every bias (1: each layer's weight then bias)
MAX_WORKSPACES = 4
_NOT_MADE_YET = object()  # a workspace's compiled stages, used once: made at its second use


@dataclass(frozen=True)
class _Stage:
    """One step of the forward pass: a Dense layer with its fused activation, a standalone activation, a softmax or
    a dropout. ``source``: the stage whose output is this stage's input outside training, when dropout stages are
    skipped (-1: the model's input)."""

    kind: str  # "dense", "activation", "softmax" or "dropout"
    out_features: int
    dense: Dense | None = None
    activation: str = "identity"
    negative_slope: float = 0.0
    rate: float = 0.0  # dropout's p
    position: int = 0  # dropout: the layer's index in the model, which keys its masks
    source: int = -1


class _ThreadState:
    """A model's state per Python thread (its workspaces), and the lock that makes training calls on one model
    (``fit``, ``compute_gradients``: they write its ``gradients``) take turns; not copied with the model."""

    def __init__(self) -> None:
        self.local = threading.local()
        self.training = threading.RLock()
        self.fitting: int | None = None  # the thread whose fit is in progress

    @contextlib.contextmanager
    def fit_turn(self) -> Iterator[None]:
        """A fit's turn at the model: fits and ``compute_gradients`` calls of other threads wait for it; a fit
        started from inside this one (a callback calling ``fit``) is refused: it reset the model's stop flag and
        history under the fit in progress, which then ran on with them."""
        if self.fitting == threading.get_ident():
            raise RuntimeError(
                "fit was called on this model from inside its own fit (a callback?), which would corrupt the fit in "
                "progress; train a copy (model.copy()) there instead"
            )
        with self.training:
            self.fitting = threading.get_ident()
            try:
                yield
            finally:
                self.fitting = None

    def workspaces(self) -> dict[int, _Workspace]:
        try:
            return self.local.workspaces
        except AttributeError:
            self.local.workspaces = {}
            return self.local.workspaces


@dataclass
class _Workspace:
    """Buffers for one batch size: the input rows, each stage's output and the gradient w.r.t. it, and the masks of
    the dropout stages (by stage index, made by the first training pass)."""

    inputs: np.ndarray
    outputs: list[np.ndarray]
    output_grads: list[np.ndarray]
    targets: np.ndarray | None = None
    labels: np.ndarray | None = None
    weights: np.ndarray | None = None
    masks: dict[int, np.ndarray] = field(default_factory=dict)
    # the backend's compiled training step over these buffers, with what it was made for (_compiled_step)
    compiled: tuple | None = None
    # the backend's compiled forward stages over these buffers, with what they were made for (_compiled_stages)
    stages: tuple | None = None
    # the step pair of this workspace's compiled step and its twin's, with what it was made for (_run_compiled_pair)
    pair: tuple | None = None


def _batch_weight(rows: int, weights: np.ndarray | None) -> float:
    """A batch's weight: the sum of its samples' weights (in double), or its number of rows without weights."""
    return float(rows) if weights is None else float(weights.sum(dtype=np.float64))


def _source_outside_training(stages: list[_Stage]) -> int:
    """The index of the last of ``stages`` that is not a dropout stage (-1: none, the model's input): where the next
    stage reads its input when dropout stages are skipped."""
    index = len(stages) - 1
    while index >= 0 and stages[index].kind == "dropout":
        index -= 1
    return index


class Sequential:
    """A feed-forward network: ``Sequential([Dense(784, 128), ReLU(), Dense(128, 10)], dtype="float32", seed=0)``.

    ``dtype`` is float32 or float64; inputs of any other real dtype are converted (copied) once per
    call. ``seed`` seeds the weight initialization (None: fresh entropy). ``backend`` pins a backend
    by name; None follows the current one (``fastopt.set_backend`` / ``fastopt.use_backend``) at each call.
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        dtype: str | np.dtype = "float32",
        seed: int | None = None,
        backend: str | None = None,
    ) -> None:
        if not isinstance(layers, (list, tuple)) or not layers:
            raise ValueError("layers must be a non-empty list of fastopt layers")
        for index, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise TypeError(f"layers[{index}] is not a fastopt layer: {layer!r}")
            if isinstance(layer, Dense) and layer.weight is not None:
                raise ValueError(f"layers[{index}] ({layer!r}) already belongs to a model; make a new layer")
            if any(layer is other for other in layers[:index]):
                raise ValueError(f"layers[{index}] ({layer!r}) appears twice; each position needs its own layer")
        if not isinstance(layers[0], Dense):
            raise ValueError(f"the first layer must be Dense (it fixes the input features), got {layers[0]!r}")
        if backend is not None:
            resolve_backend(backend)
        self._layers = tuple(layers)
        self._dtype = resolve_dtype(dtype)
        self.seed = seed
        self._backend_name = backend
        self._stages = self._plan(self.layers)
        self._parameters = aligned_zeros(self._n_parameters(), self.dtype)
        self._gradients = aligned_zeros(self._n_parameters(), self.dtype)  # zeros, not zeros_like: pages on first use
        self._bind_views()
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            if isinstance(layer, Dense):
                layer.initialize(rng)
        self._threads = _ThreadState()
        self._twin: Sequential | None = None  # made by _twin_model when first needed
        self.loss: Loss | None = None
        self.optimizer: Optimizer | None = None
        self.stop_training = False  # Keras's flag: a callback sets it to end the fit in progress
        self.stop_reason = ""
        self.history: History | None = None  # of the last fit

    @staticmethod
    def _plan(layers: list[Layer]) -> list[_Stage]:
        stages: list[_Stage] = []
        features = layers[0].in_features  # type: ignore[attr-defined]
        for position, layer in enumerate(layers):
            features = layer.output_features(features)
            previous = stages[-1] if stages else None
            if isinstance(layer, Dense):
                stage = _Stage("dense", features, dense=layer)
            elif (
                isinstance(layer, Activation)
                and layer.fuses_into_dense
                and previous
                and previous.kind == "dense"
                and previous.activation == "identity"
            ):
                stages.pop()
                stage = replace(previous, activation=layer.kernel, negative_slope=layer.negative_slope)
            elif isinstance(layer, Activation):
                stage = _Stage("activation", features, activation=layer.kernel, negative_slope=layer.negative_slope)
            elif isinstance(layer, Softmax):
                stage = _Stage("softmax", features)
            elif isinstance(layer, Dropout):
                stage = _Stage("dropout", features, rate=layer.p, position=position)
            else:
                raise TypeError(f"unsupported layer {layer!r}")
            stages.append(replace(stage, source=_source_outside_training(stages)))
        return stages

    # ------------------------------------------------------------------ configuration
    # The layers, dtype and widths are read-only: the buffers, workspaces and compiled passes are made for them, and
    # the inputs and labels are checked against them (a width assigned by hand let a kernel write past a buffer).
    @property
    def layers(self) -> tuple[Layer, ...]:
        """The layers, in order (a tuple: the stages are planned from them once; a model of other layers is a new
        model)."""
        return self._layers

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the parameters and of every pass (``astype`` makes a model of another)."""
        return self._dtype

    @property
    def in_features(self) -> int:
        """The features of an input row: the first layer's ``in_features``."""
        return self._stages[0].dense.in_features  # type: ignore[union-attr]

    @property
    def out_features(self) -> int:
        """The outputs of a row: the last stage's width."""
        return self._stages[-1].out_features

    @property
    def backend(self) -> str:
        """Name of the backend this model uses now."""
        return resolve_backend(self._backend_name).name

    def config(self) -> dict[str, Any]:
        return {"layers": [layer.config() for layer in self.layers], "dtype": self.dtype.name, "seed": self.seed}

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
        return f"Sequential([{inner}], dtype={self.dtype.name!r})"

    # ------------------------------------------------------------------ buffers, weights and copies
    @property
    def parameters(self) -> np.ndarray:
        """All weights and biases, one flat C-contiguous array: each Dense layer's weight (in_features, out_features)
        row-major, in layer order, then each layer's bias (``weight_parameters``, then ``bias_parameters``). The
        layers and the optimizer view it: write into it (``model.parameters[...] = values``, or ``set_weights``);
        rebinding it is an ``AttributeError``."""
        return self._parameters

    @property
    def weight_parameters(self) -> np.ndarray:
        """The weights of every Dense layer: the first, contiguous part of ``parameters`` (a view). With
        ``bias_parameters`` it makes PyTorch-style parameter groups, one fused update each: weight decay on the
        weights but not the biases is ``AdamW([{"params": [model.weight_parameters]}, {"params":
        [model.bias_parameters], "weight_decay": 0.0}])``, which ``fit`` accepts."""
        return self._groups[0]

    @property
    def bias_parameters(self) -> np.ndarray:
        """The biases of every Dense layer: the last, contiguous part of ``parameters`` (a view)."""
        return self._groups[1]

    @property
    def weight_gradients(self) -> np.ndarray:
        """The part of ``gradients`` matching ``weight_parameters``."""
        return self._groups[2]

    @property
    def bias_gradients(self) -> np.ndarray:
        """The part of ``gradients`` matching ``bias_parameters``."""
        return self._groups[3]

    @parameters.setter
    def parameters(self, value: object) -> None:
        _refuse_rebinding("parameters", "model.parameters[...] = values, or model.set_weights([W1, b1, ...])")

    @property
    def gradients(self) -> np.ndarray:
        """The gradients of the last training step, laid out as ``parameters``; written in place, never rebound."""
        return self._gradients

    @gradients.setter
    def gradients(self, value: object) -> None:
        _refuse_rebinding("gradients", "model.gradients[...] = values")

    def _n_parameters(self) -> int:
        return sum(layer.n_params for layer in self.layers if isinstance(layer, Dense))

    def _bind_views(self) -> None:
        """Point each Dense layer's weight, bias and their gradients at its segments of the flat buffers (every
        weight first, then every bias), and make the views of the two groups."""
        dense = [layer for layer in self.layers if isinstance(layer, Dense)]
        weight_offset, bias_offset = 0, sum(layer.in_features * layer.out_features for layer in dense)
        n_weights = bias_offset
        for index, layer in enumerate(self.layers):
            if isinstance(layer, Dense):
                weight_offset, bias_offset = layer._bind(
                    self._parameters, self._gradients, weight_offset, bias_offset, f"layers[{index}]"
                )
        self._groups = (self._parameters[:n_weights], self._parameters[n_weights:],
                        self._gradients[:n_weights], self._gradients[n_weights:])  # fmt: skip

    def _weight_views(self) -> list[tuple[str, np.ndarray]]:
        """``("layers[i].weight", W), ("layers[i].bias", b)`` of each Dense layer in order: the buffer's layout."""
        return [
            (f"layers[{index}].{attribute}", getattr(layer, attribute))
            for index, layer in enumerate(self.layers)
            if isinstance(layer, Dense)
            for attribute in ("weight", "bias")
        ]

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights and biases in layer order, ``[W1, b1, W2, b2, ...]`` (Keras' ``get_weights``):
        W (in_features, out_features) and b (out_features,) of each Dense layer, in the model's dtype."""
        return [view.copy() for _, view in self._weight_views()]

    def set_weights(self, weights: Sequence[object]) -> None:
        """Write ``[W1, b1, W2, b2, ...]`` (as ``get_weights`` returns them) into the model, all or nothing.

        Each array must have exactly its layer's shape; integers and floats of any precision are cast to the
        model's dtype (as Keras does: float64 rounds to float32). A wrong count or shape, NaN, Inf, a value
        beyond the dtype's range (``ValueError``), or a non-real dtype (``TypeError``) changes nothing. The
        arrays may be views of this model's own buffers (e.g. two layers' weights swapped)."""
        checked, views = self._checked_weights(weights), self._weight_views()
        # Staged in a new array, copied at once: values that view this model's own buffer are all read before
        # anything is written.
        staged = np.empty_like(self._parameters)
        for array, (_, view) in zip(checked, views):
            staged[self._offset_of(view) : self._offset_of(view) + view.size] = array.reshape(-1)
        self._parameters[...] = staged

    def _checked_weights(self, weights: Sequence[object], name: str = "weights") -> list[np.ndarray]:
        """``weights`` as ``set_weights`` takes them, checked and cast to the model's dtype; changes nothing."""
        if not isinstance(weights, (list, tuple)):
            raise TypeError(f"{name} must be a list of arrays [W1, b1, W2, b2, ...], got {type(weights).__name__}")
        views = self._weight_views()
        if len(weights) != len(views):
            raise ValueError(
                f"{name} needs {len(views)} arrays (the weight and bias of each Dense layer, in layer order, "
                f"as get_weights returns them), got {len(weights)}"
            )
        return [
            as_parameter_values(value, f"{name}[{position}] ({label})", view.shape, self.dtype)
            for position, (value, (label, view)) in enumerate(zip(weights, views))
        ]

    def _offset_of(self, view: np.ndarray) -> int:
        """Where a view of ``parameters`` starts in it, in elements."""
        start = view.__array_interface__["data"][0] - self._parameters.__array_interface__["data"][0]
        return start // self._parameters.itemsize

    def copy(self) -> Sequential:
        """An independent deep copy: its own buffers (its layers view them), its loss, and a copy of its optimizer
        bound to the copied parameters, with the same state and step count. Continuing ``fit`` on the copy and
        on the original with the same arguments gives bit-identical results. ``copy.copy``, ``copy.deepcopy``,
        ``pickle`` (any protocol) and ``joblib`` give the same copy."""
        return deepcopy(self)

    __copy__ = copy

    def astype(self, dtype: str | np.dtype) -> Sequential:
        """A new model of the same layers, seed and backend in ``dtype`` (float32 or float64), with these weights
        converted (exactly from float32 to float64; rounded to nearest the other way); no loss or optimizer.
        Made as ``__setstate__`` makes an unpickled model, so no initial weights are drawn only to be overwritten
        (a float64 copy of a 784-128-64-10 network, which ``fastopt.sklearn`` makes at each prediction: 1.2 ms when
        built by the constructor, which drew them)."""
        dtype, size = resolve_dtype(dtype), self._parameters.size
        model = self._same_layers(dtype, aligned_zeros(size, dtype), aligned_zeros(size, dtype))
        if model.dtype == np.float32 and self.dtype != np.float32:
            model.set_weights(self.get_weights())  # refuses a weight beyond float32's range
        else:
            model.parameters[...] = self._parameters
        return model

    def _same_layers(self, dtype: np.dtype, parameters: np.ndarray, gradients: np.ndarray) -> Sequential:
        """A model of new layers configured as these (same seed and backend) in ``dtype``, over the flat buffers
        ``parameters`` and ``gradients``; no loss, optimizer or history. Made as ``__setstate__`` makes an unpickled
        model: no initial weights are drawn."""
        state = self.__getstate__()
        state.update(
            _layers=tuple(layer_from_config(layer.config()) for layer in self.layers), _dtype=dtype,
            _parameters=parameters, _gradients=gradients,
            loss=None, optimizer=None, _optimizer_bound=False, history=None, stop_training=False, stop_reason="",
        )  # fmt: skip
        model = Sequential.__new__(Sequential)
        model.__setstate__(state)
        return model

    def __getstate__(self) -> dict[str, Any]:
        """What pickle and copy keep: the configuration, dtype, seed, backend name, flat buffers, loss and
        optimizer. The derived state is left out and rebuilt by ``__setstate__``: the layers' views (``Dense``
        drops them itself), the plan of fused stages and the per-batch-size workspaces (remade on first use)."""
        state = {key: value for key, value in self.__dict__.items()
                 if key not in ("_stages", "_threads", "_groups", "_twin")}  # fmt: skip
        state["_optimizer_bound"] = self.optimizer is not None and self.optimizer.is_bound_to([self._parameters])
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        optimizer_bound = state.pop("_optimizer_bound")
        for name in ("layers", "dtype"):  # a model pickled when these were plain attributes
            if name in state:
                state["_" + name] = tuple(state.pop(name)) if name == "layers" else state.pop(name)
        for name in ("in_features", "out_features"):
            state.pop(name, None)
        self.__dict__.update(state)
        if optimizer_bound and not self.optimizer.is_bound_to([self._parameters]):  # type: ignore[union-attr]
            # joblib writes each reference to an array as an array of its own: the optimizer then holds an
            # equal copy of the parameters. The model takes that one, so that steps update what it predicts with.
            self._parameters = self.optimizer.params[0]  # type: ignore[union-attr,index]
        size = self._n_parameters()
        self._parameters = _checked_buffer(self._parameters, "parameters", size, self.dtype)
        self._gradients = _checked_buffer(self._gradients, "gradients", size, self.dtype)
        self._stages = self._plan(self.layers)
        self._bind_views()
        self._threads = _ThreadState()
        self._twin = None

    # ------------------------------------------------------------------ the passes
    def _workspace(self, batch: int) -> _Workspace:
        """The calling thread's buffers for ``batch`` rows, made on first use (each thread has its own, so that a
        ``predict`` in one thread never shares a buffer with a ``fit`` in another). At most ``MAX_WORKSPACES`` sizes
        are kept per thread, the least recently used dropped first: training needs two (full and last batch),
        evaluation two more, and a serving loop of ever-changing sizes would otherwise keep one set per size."""
        workspaces = self._threads.workspaces()
        workspace = workspaces.pop(batch, None)
        if workspace is None:
            widths = [stage.out_features for stage in self._stages]
            workspace = _Workspace(
                inputs=aligned_empty((batch, self.in_features), self.dtype),
                outputs=[aligned_empty((batch, width), self.dtype) for width in widths],
                output_grads=[aligned_empty((batch, width), self.dtype) for width in widths],
            )
            while len(workspaces) >= MAX_WORKSPACES:
                del workspaces[next(iter(workspaces))]
        workspaces[batch] = workspace  # (re)inserted last: dict order is the recency order
        return workspace

    @property
    def _has_dropout(self) -> bool:
        return any(stage.kind == "dropout" for stage in self._stages)

    def _forward(
        self, backend: Backend, workspace: _Workspace, step_key: int | None = None, inputs: np.ndarray | None = None
    ) -> np.ndarray:
        """The outputs for ``inputs`` (by default ``workspace.inputs``: any C-contiguous batch of the model's dtype
        and width will do). ``step_key``: a training pass, whose dropout stage at layer index j uses the mask of key
        ``_random.word(step_key, j)``; None (predict, evaluate) skips the dropout stages."""
        inputs = workspace.inputs if inputs is None else inputs
        if step_key is None:  # outside training: the backend's compiled stages, where it has them
            compiled = self._compiled_stages(backend, workspace)
            if compiled is not None:
                if compiled.forward(inputs):
                    return workspace.outputs[-1]
                workspace.stages = None  # out of date (the GEMM setup changed): made again next time
        for index, (stage, out) in enumerate(zip(self._stages, workspace.outputs)):
            if stage.kind == "dense":
                layer = stage.dense  # its bound views read directly: the public properties cost a call each, per step
                backend._dense_forward(inputs, layer._weight, layer._bias, out, stage.activation, stage.negative_slope)  # type: ignore[union-attr]
            elif stage.kind == "activation":
                backend._activation_forward(stage.activation, inputs, out, stage.negative_slope)
            elif stage.kind == "softmax":
                backend._softmax_forward(inputs, out)
            elif step_key is None:
                continue  # dropout outside training: the identity, and the next stage reads this one's input
            else:
                mask = workspace.masks.get(index)
                if mask is None:
                    mask = workspace.masks[index] = np.empty_like(out)
                backend._dropout(inputs, out, mask, stage.rate, _random.word(step_key, stage.position))
            inputs = out
        return inputs

    def _backward(self, backend: Backend, workspace: _Workspace, step_key: int | None = None) -> bool:
        """Gradients of the loss w.r.t. every parameter, from ``workspace.output_grads[-1]``, after a ``_forward``
        with the same ``step_key`` (not None: a training pass, whose dropout masks are in ``workspace.masks``);
        returns whether they are all finite (each dense layer's kernel checks its own, while they are in cache)."""
        training = step_key is not None
        finite = True
        for index in range(len(self._stages) - 1, -1, -1):
            stage = self._stages[index]
            out, grad_out = workspace.outputs[index], workspace.output_grads[index]
            source = index - 1 if training else stage.source
            inputs = workspace.outputs[source] if source >= 0 else workspace.inputs
            grad_inputs = workspace.output_grads[index - 1] if index else None
            if stage.kind == "dense":
                layer = stage.dense
                finite &= backend._dense_backward(
                    inputs,
                    layer._weight,  # type: ignore[union-attr]
                    out,
                    grad_out,
                    layer._weight_grad,  # type: ignore[union-attr]
                    layer._bias_grad,  # type: ignore[union-attr]
                    grad_inputs,
                    stage.activation,
                    stage.negative_slope,
                )
            elif grad_inputs is None:
                continue
            elif stage.kind == "activation":
                backend._activation_backward(stage.activation, inputs, out, grad_out, grad_inputs, stage.negative_slope)
            elif stage.kind == "softmax":
                backend._softmax_backward(out, grad_out, grad_inputs)
            elif training:  # dropout: the forward pass's mask
                backend._dropout_backward(grad_out, workspace.masks[index], grad_inputs)
            else:
                np.copyto(grad_inputs, grad_out)
        return finite

    def predict(self, X: object, batch_size: int = 1024, check_input: bool = True) -> np.ndarray:
        """The model's outputs (N, out_features) for inputs X (N, in_features), computed in batches of at most
        ``batch_size`` rows, each read where it lies (no copy) when X is a C-contiguous array of the model's dtype.

        ``check_input=False`` (scikit-learn's name) is for a trusted caller serving small batches: X must then
        already be a non-empty C-contiguous ``numpy.ndarray`` of the model's dtype and width (else ``TypeError`` or
        ``ValueError``), and neither its conversion nor its NaN/Inf scan is made (NaN inputs give NaN outputs)."""
        batch_size = check_positive_int(batch_size, "batch_size")
        backend = resolve_backend(self._backend_name)
        if check_input:
            inputs = as_features(X, self.in_features, self.dtype, backend)
        else:
            inputs = as_trusted_features(X, self.in_features, self.dtype)
        n = len(inputs)
        if n <= batch_size:
            return self._forward(backend, self._workspace(n), inputs=inputs).copy()
        result = np.empty((n, self.out_features), dtype=self.dtype)
        for start in range(0, n, batch_size):
            rows = slice(start, min(start + batch_size, n))
            result[rows] = self._forward(backend, self._workspace(rows.stop - rows.start), inputs=inputs[rows])
        return result

    __call__ = predict

    def predict_proba(self, X: object, batch_size: int = 1024, loss: Loss | None = None) -> np.ndarray:
        """Probabilities (N, out_features) for inputs X: ``softmax`` of each row of outputs for ``CrossEntropy``,
        ``sigmoid`` of each output for ``BinaryCrossEntropy`` (a probability per label). ``loss`` defaults to the
        one of the last ``fit``; a model trained with ``MSE``, ``Huber`` or ``MAE`` (or never trained here: a loaded
        model, without ``loss=``) is refused with ``ValueError``."""
        loss = self._loss_of_outputs(loss, "predict_proba")
        return loss.probabilities(resolve_backend(self._backend_name), self.predict(X, batch_size))

    def predict_classes(self, X: object, batch_size: int = 1024, loss: Loss | None = None) -> np.ndarray:
        """Predicted classes, int64: the index of the largest output of each row (N,) (``CrossEntropy``, or class
        targets under another loss), or, for ``BinaryCrossEntropy``, 1 where an output's logit is > 0 (probability
        > 0.5): (N,) for one output, (N, k) for k labels. ``loss`` as in ``predict_proba``."""
        loss = self._loss_of_outputs(loss, "predict_classes")
        return loss.predicted_classes(self.predict(X, batch_size))

    def _loss_of_outputs(self, loss: Loss | None, method: str) -> Loss:
        """The loss whose logits the outputs are: ``loss``, else the last fit's."""
        if loss is None and self.loss is None:
            raise ValueError(
                f"{method} needs to know the loss the model was trained with: fit it first, or pass "
                "loss=losses.CrossEntropy() (softmax) or loss=losses.BinaryCrossEntropy() (sigmoid)"
            )
        return self._choose_loss(loss)

    def evaluate(
        self,
        X: object,
        y: object,
        loss: Loss | None = None,
        batch_size: int = 1024,
        sample_weight: object = None,
    ) -> dict[str, float]:
        """Mean loss (and accuracy, for class targets) over (X, y). ``loss`` defaults to the one of the
        last ``fit``, else ``CrossEntropy``. ``sample_weight`` (N,) weights the loss: ``sum_i w_i l_i / sum_i w_i``
        (finite, >= 0, not all 0; see ``fastopt.losses``); accuracy stays unweighted. Warns when the last layer
        applies what the loss applies to its logits (``Softmax`` before ``CrossEntropy``)."""
        loss = self._choose_loss(loss)
        loss.check_last_layer(self.layers[-1], stacklevel=2)
        inputs = as_features(X, self.in_features, self.dtype, resolve_backend(self._backend_name))
        targets = loss.targets(y, self.out_features, self.dtype).with_sample_weight(sample_weight, self.dtype)
        check_same_length(inputs, targets.values)
        targets.check_weight_total("the samples")
        return self._evaluate_prepared(inputs, targets, loss, check_positive_int(batch_size, "batch_size"))

    def _choose_loss(self, loss: Loss | None) -> Loss:
        loss = loss if loss is not None else self.loss or CrossEntropy()
        if not isinstance(loss, Loss):
            raise TypeError(f"loss must be a fastopt loss such as losses.CrossEntropy(), got {loss!r}")
        return loss

    def _evaluate_prepared(self, inputs: np.ndarray, targets: Targets, loss: Loss, batch_size: int) -> dict[str, float]:
        """Mean loss (weighted when the targets have weights) and accuracy over prepared inputs and targets."""
        backend = resolve_backend(self._backend_name)
        total_loss = total_weight = 0.0
        correct = 0
        for start in range(0, len(inputs), batch_size):
            stop = min(start + batch_size, len(inputs))
            workspace = self._workspace(stop - start)
            np.copyto(workspace.inputs, inputs[start:stop])
            output = self._forward(backend, workspace)
            weights = None if targets.weights is None else targets.weights[start:stop]
            weight = _batch_weight(stop - start, weights)
            total_loss += loss.compute(backend, output, targets.values[start:stop], None, weights) * weight
            total_weight += weight
            if targets.binary:
                correct += backend._count_binary_correct(output, targets.values[start:stop])
            elif targets.labels is not None:
                correct += backend._count_correct(output, targets.labels[start:stop])
        result = {"loss": total_loss / total_weight}
        if targets.reports_accuracy:
            result["accuracy"] = correct / (len(inputs) * targets.predictions_per_row)
        return result

    # ------------------------------------------------------------------ training
    def fit(
        self,
        X: object,
        y: object,
        loss: Loss | None = None,
        optimizer: Optimizer | None = None,
        epochs: int = 1,
        batch_size: int = 32,
        shuffle: bool = True,
        seed: int | None = None,
        validation_data: tuple[object, object] | None = None,
        validation_split: float = 0.0,
        callbacks: Sequence[Callback] | None = None,
        sample_weight: object = None,
        class_weight: dict[int, float] | str | None = None,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        verbose: int = 0,
        progress: bool = False,
        on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        checkpoint_every: int | str | None = None,
        resume: bool = False,
        on_nonfinite: str | None = None,
        overwrite: bool = False,
    ) -> History:
        """Train on (X, y) with mini-batches; returns the per-epoch ``History`` (its ``stop_reason`` says how the
        run ended). The loop lives in ``fastopt.training``.

        ``loss`` defaults to ``CrossEntropy()``; ``optimizer`` (default ``Adam()``) made without parameters is
        bound to this model, and keeps its state across calls of ``fit``. ``seed`` seeds the shuffling and the
        validation split. ``validation_data=(X_val, y_val)`` or ``validation_split=f`` (a seeded fraction of the
        rows held out before training, stratified by class for class labels) add ``val_*`` entries to the history;
        ``validation_data=(X_val, y_val, sample_weight_val)`` weights the validation loss.

        ``sample_weight`` (N,) and ``class_weight`` (a dict {class: weight}, classes not in it weighing 1, or
        ``"balanced"``: scikit-learn's ``n_samples / (n_classes * bincount(y))`` over the training rows) weigh each
        sample by ``w_i = sample_weight[i] * class_weight[y_i]``; weights must be finite and >= 0. A batch's loss is
        then the weighted mean ``sum_i w_i l_i / sum_i w_i`` (its gradient that of this mean; a batch whose weights
        sum to 0 has loss 0 and a zero gradient), computed inside the loss kernel, and the epoch's ``loss`` is
        ``sum_i w_i l_i / sum_i w_i`` over the epoch. As in Keras, ``class_weight`` applies to the training rows
        only (a validation split keeps its rows' sample weights), and accuracy stays unweighted. A ``UserWarning``
        says when the last layer applies what the loss applies to its logits (``Softmax`` before ``CrossEntropy``).

        ``callbacks``: ``fastopt.callbacks`` objects (Keras's protocol; ``EarlyStopping``, ``ModelCheckpoint``,
        ``ReduceLROnPlateau``, ``LearningRateScheduler``, ``CSVLogger``, ``TerminateOnNaN``) and learning-rate
        schedulers of ``fastopt.optim.lr_scheduler``; a callback can stop the run. ``on_epoch_end(epoch, logs)``
        (epoch numbered from 1) is called after each epoch. ``verbose=1`` (or 2) prints a line per epoch (Keras's),
        ``progress=True`` shows a progress bar over each epoch's batches.

        ``clip_norm`` scales the gradients so that their global L2 norm is at most that value (PyTorch's
        ``clip_grad_norm_``); ``clip_value`` clamps each into [-value, value] (``clip_grad_value_``), first.

        ``checkpoint="run.ckpt"`` saves the whole state of the run to that file, atomically, every
        ``checkpoint_every`` batches (an int) or at the end of each epoch (``"epoch"``, the default), and
        when the run ends; ``fastopt.checkpoint`` lists what a file holds. ``resume=True`` continues from
        the file (or starts fresh if there is none): on the same backend the run then ends with parameters,
        optimizer and callback state and history bit-identical to an uninterrupted run's, the ``seconds``
        entries excepted; resuming a finished run returns its history at once (only the callbacks'
        ``on_train_begin`` and ``on_train_end`` run: early stopping restores its best weights), and resuming a
        completed run with a larger ``epochs`` continues it from its last epoch. A checkpoint of another run
        (architecture, dtype, optimizer, loss, batch_size, shuffle, seed, data, callbacks, clipping) is refused
        with ``ValueError`` naming what differs, a corrupt or foreign file with ``FileFormatError``; the model and
        optimizer are then unchanged. A fresh run refuses a ``checkpoint`` path holding a file that is not a
        fastopt checkpoint unless ``overwrite=True``.

        ``on_nonfinite``: if a batch's loss or gradient is NaN or Inf, ``"raise"`` raises ``FloatingPointError``
        naming the step, before that step's update (the last checkpoint written stays as it was); ``"skip"``
        leaves that batch's update unapplied and continues (the history then counts ``skipped_batches``);
        ``"stop"`` ends the run there. The default is ``"stop"`` with a ``TerminateOnNaN`` callback, else
        ``"raise"``.
        """
        arguments = dict(locals())
        del arguments["self"], arguments["X"], arguments["y"]
        return training.fit(self, X, y, arguments)

    def compute_gradients(self, X: object, y: object, loss: Loss | None = None, sample_weight: object = None) -> float:
        """One forward and backward pass over (X, y) as one batch: writes d loss / d parameters into ``gradients``
        (laid out as ``parameters``; ``layer.weight_grad``/``bias_grad`` view it) and returns the mean loss
        (weighted by ``sample_weight`` when given, as in ``fit``). For training loops of one's own
        (``optimizer.step([model.gradients])``) and full-batch methods (L-BFGS). When the loss is NaN or Inf it is
        returned and the gradients are left as they were. ``Dropout`` layers are the identity here, as in
        ``predict``: these are the gradients of the function the model computes."""
        loss = self._choose_loss(loss)
        backend = resolve_backend(self._backend_name)
        inputs = as_features(X, self.in_features, self.dtype, backend)
        targets = loss.targets(y, self.out_features, self.dtype).with_sample_weight(sample_weight, self.dtype)
        check_same_length(inputs, targets.values)
        with self._threads.training:
            rows = np.arange(len(inputs), dtype=np.int64)
            value, _, _, _ = self._batch_gradients(backend, loss, inputs, targets, rows)
        return value

    def _batch_gradients(
        self,
        backend: Backend,
        loss: Loss,
        inputs: np.ndarray,
        targets: Targets,
        rows: np.ndarray,
        step_key: int | None = None,
        compiled: bool = False,
    ) -> tuple[float, int, float, bool]:
        """The trusted core of a training step: gather ``rows`` (inputs, targets, weights), forward, loss, and (when
        the loss is finite) backward into ``self.gradients``; ``step_key`` keys the dropout masks of a training pass
        (None: no dropout). Returns the batch's (weighted) mean loss, its correct predictions, its weight (the sum of
        its samples' weights: the number of rows without weights) and whether every gradient is finite.
        ``compiled``: by the backend's compiled step where it has one (the same bits), for loops that call this
        again with the same loss and data: the step is made for them (about 50 us for a three-layer network on a
        2-core AMD EPYC Zen 4 VM) and saves about 8 us a call."""
        workspace = self._training_workspace(len(rows), targets)
        if compiled and step_key is None:  # (dropout masks are drawn by the Python step)
            result = self._run_compiled_step(backend, workspace, loss, inputs, targets, rows)
            if result is not None:
                return result
        backend._gather_rows(inputs, rows, workspace.inputs)
        targets.values.take(rows, axis=0, out=workspace.targets, mode="clip")  # the method: no dispatch wrapper
        weights = None if targets.weights is None else targets.weights.take(rows, out=workspace.weights, mode="clip")
        weight = _batch_weight(len(rows), weights)
        output = self._forward(backend, workspace, step_key)
        batch_loss = loss.compute(backend, output, workspace.targets, workspace.output_grads[-1], weights)
        if not math.isfinite(batch_loss):
            return batch_loss, 0, weight, False
        correct, counted_against = 0, targets.counted_against
        if counted_against == "binary":
            correct = backend._count_binary_correct(output, workspace.targets)
        elif counted_against == "values":  # CrossEntropy: the batch's labels were gathered above
            correct = backend._count_correct(output, workspace.targets)
        elif counted_against == "labels":
            targets.labels.take(rows, out=workspace.labels, mode="clip")  # type: ignore[union-attr]
            correct = backend._count_correct(output, workspace.labels)
        finite = self._backward(backend, workspace, step_key)
        return batch_loss, correct, weight, finite

    def _training_workspace(self, batch: int, targets: Targets) -> _Workspace:
        """The calling thread's workspace for ``batch`` rows, with buffers for the batch's targets, labels and
        weights of the data set's kinds (made anew, and its compiled step forgotten, when they change)."""
        workspace = self._workspace(batch)
        target_shape = (batch, *targets.values.shape[1:])
        if (
            workspace.targets is None
            or workspace.targets.shape != target_shape
            or workspace.targets.dtype != targets.values.dtype
        ):
            workspace.targets = np.empty(target_shape, dtype=targets.values.dtype)
            workspace.labels = np.empty(batch, dtype=np.int64)
            workspace.weights = np.empty(batch, dtype=self.dtype)
            workspace.compiled = workspace.pair = None
        return workspace

    def _pair_gradients(
        self, backend: Backend, loss: Loss, inputs: np.ndarray, targets: Targets, rows: np.ndarray, compiled: bool
    ) -> tuple[float, int, float, bool]:
        """``_batch_gradients`` (no dropout) of ``rows`` as two halves: the first ``len(rows) // 2`` rows by this model,
        the rest by its twin (``_twin_model``: the same parameters, gradients of its own), then this model's
        gradients ``(w0 g0 + w1 g1) / (w0 + w1)`` and the loss the same mean of the halves' losses, ``w`` each
        half's weight (its rows, or the sum of its sample weights): the batch's mean loss and its gradient, as
        for a loss that is a weighted mean over the rows (every loss with a kernel of the training step), with
        the sums over the rows in another order. ``compiled``: both halves at once by the backend's step pair
        (``Backend._step_pair``: on two threads, each core's rows and activations in its own cache), the same
        bits as one half after the other. A half of zero weight counts for nothing, even where its rows' outputs
        overflow (in a whole batch, their zero weights times an infinite loss would make the loss NaN). Fewer than
        two rows are one batch."""
        if len(rows) < 2:
            return self._batch_gradients(backend, loss, inputs, targets, rows, compiled=compiled)
        twin = self._twin_model()
        half = len(rows) // 2
        first, second = rows[:half], rows[half:]
        results = self._run_compiled_pair(backend, twin, loss, inputs, targets, first, second) if compiled else None
        if results is None:
            results = (
                self._batch_gradients(backend, loss, inputs, targets, first),
                twin._batch_gradients(backend, loss, inputs, targets, second),
            )
        (value, correct, weight, finite), (twin_value, twin_correct, twin_weight, twin_finite) = results
        correct += twin_correct
        if twin_weight == 0:
            return value, correct, weight, finite
        if weight == 0:
            self._gradients[...] = twin._gradients
            return twin_value, correct, twin_weight, twin_finite
        total = weight + twin_weight
        if not (finite and twin_finite and math.isfinite(value) and math.isfinite(twin_value)):
            return value if not math.isfinite(value) else twin_value, correct, total, False
        backend._weighted_sum_into(self._gradients, twin._gradients, weight / total, twin_weight / total)
        return (weight * value + twin_weight * twin_value) / total, correct, total, True

    def _twin_model(self) -> Sequential:
        """A model of the same layers viewing this one's parameters, with gradients of its own (``_pair_gradients``'s
        second half); made on first use, not copied or pickled with the model."""
        if self._twin is None:
            self._twin = self._same_layers(
                self.dtype, self._parameters, aligned_zeros(self._parameters.size, self.dtype)
            )
        return self._twin

    def _run_compiled_pair(
        self,
        backend: Backend,
        twin: Sequential,
        loss: Loss,
        inputs: np.ndarray,
        targets: Targets,
        first: np.ndarray,
        second: np.ndarray,
    ) -> tuple[tuple[float, int, float, bool], tuple[float, int, float, bool]] | None:
        """Both halves of ``_pair_gradients`` by the backend's step pair, or None where it has none or it is out of
        date (made again next time). The pair is kept in the first half's workspace with what it was made for."""
        workspace = self._training_workspace(len(first), targets)
        cached = workspace.pair
        if (
            cached is None
            or cached[0] is not loss
            or cached[1] is not inputs
            or cached[2] is not targets
            or cached[3] is not self._parameters
            or len(cached[4].inputs) != len(second)
            or cached[4].compiled is not cached[5]  # the twin's workspace made new buffers for other targets since
        ):
            twin_workspace = twin._training_workspace(len(second), targets)
            step = self._compiled_step(backend, workspace, loss, inputs, targets)
            twin_step = twin._compiled_step(backend, twin_workspace, loss, inputs, targets)
            pair = None if step is None or twin_step is None else backend._step_pair(step, twin_step)
            workspace.pair = cached = (loss, inputs, targets, self._parameters, twin_workspace,
                                       twin_workspace.compiled, pair)  # fmt: skip
        pair = cached[6]
        results = None if pair is None else pair.run(first, second)
        if results is None:
            if pair is not None:  # out of date (the GEMM setup changed): made again next time
                workspace.compiled = cached[4].compiled = workspace.pair = None
            return None
        weighted = targets.weights is not None
        return tuple(  # type: ignore[return-value]
            (value, correct, _batch_weight(len(rows), half.weights if weighted else None), finite)
            for (value, correct, finite), rows, half in zip(results, (first, second), (workspace, cached[4]))
        )

    def _run_compiled_step(
        self,
        backend: Backend,
        workspace: _Workspace,
        loss: Loss,
        inputs: np.ndarray,
        targets: Targets,
        rows: np.ndarray,
    ) -> tuple[float, int, float, bool] | None:
        """``_batch_gradients`` by the backend's compiled step (the same bits), or None where it has none."""
        step = self._compiled_step(backend, workspace, loss, inputs, targets)
        result = None if step is None else step.run(rows)
        if result is None:
            if step is not None:  # out of date (the GEMM setup changed): made again next time
                workspace.compiled = None
            return None
        batch_loss, correct, finite = result
        weight = _batch_weight(len(rows), None if targets.weights is None else workspace.weights)
        return batch_loss, correct, weight, finite

    def _compiled_stages(self, backend: Backend, workspace: _Workspace) -> Any:
        """The backend's compiled stages over ``workspace`` (``Backend._forward_stages``): made on its second use
        (making them costs about 28 us for the 784-128-64-10 network on a 2-core AMD EPYC Zen 4 VM, more than they
        save in a workspace used once, as a serving loop of ever-changing batch sizes makes them), kept while the
        backend and the parameter buffer are the same objects; None where the backend has none, or not yet."""
        cached = workspace.stages
        if cached is None or cached[0] is not self._parameters or cached[1] is not backend:
            workspace.stages = (self._parameters, backend, _NOT_MADE_YET)
            return None
        if cached[2] is _NOT_MADE_YET:
            workspace.stages = (self._parameters, backend, backend._forward_stages(self._stages, workspace,
                                                                                   self.in_features))  # fmt: skip
        return workspace.stages[2]

    def _forget_compiled_steps(self) -> None:
        """Drop this thread's compiled steps, which hold the data set they were made for: called when a training
        call ends, so that the model keeps no reference to the user's data (nor its twin, ``_pair_gradients``)."""
        for workspace in self._threads.workspaces().values():
            workspace.compiled = workspace.pair = None
        if self._twin is not None:
            self._twin._forget_compiled_steps()

    def _compiled_step(
        self, backend: Backend, workspace: _Workspace, loss: Loss, inputs: np.ndarray, targets: Targets
    ) -> Any:
        """The backend's compiled training step (``Backend._training_step``) over ``workspace``, for this loss and
        data: made on first use, kept while they and the parameter buffer are the same objects; None where the
        backend has none for them."""
        cached = workspace.compiled
        if (
            cached is not None
            and cached[0] is loss
            and cached[1] is inputs
            and cached[2] is targets
            and cached[3] is self._parameters
        ):
            return cached[4]
        step = backend._training_step(self._stages, workspace, inputs, targets, loss)
        workspace.compiled = (loss, inputs, targets, self._parameters, step)
        return step

    def _prepare_validation(
        self, validation_data: object, loss: Loss, backend: Backend
    ) -> tuple[np.ndarray, Targets] | None:
        if validation_data is None:
            return None
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise ValueError("validation_data must be a pair (X_val, y_val) or a triple (X_val, y_val, sample_weight)")
        inputs = as_features(validation_data[0], self.in_features, self.dtype, backend, name="X_val")
        targets = loss.targets(validation_data[1], self.out_features, self.dtype)
        check_same_length(inputs, targets.values, "X_val", "y_val")
        if len(validation_data) == 3:
            targets = targets.with_sample_weight(validation_data[2], self.dtype, "the validation sample_weight")
            targets.check_weight_total("the validation samples")
        return inputs, targets

    # ------------------------------------------------------------------ files
    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> None:
        """Write the architecture, dtype and parameters to an ``.npz`` file (atomically; no pickle). An
        existing file is replaced only if it is a fastopt model file, or with ``overwrite=True``."""
        config, parameters = {"model": self.config()}, {"parameters": self.parameters}
        _io.write_archive(path, MODEL_FILE_KIND, MODEL_FILE_VERSION, config, parameters, overwrite)

    def to_onnx(self, path: str | os.PathLike[str]) -> None:
        """Write the model as an ONNX graph (opset 17; input ``input`` (N, in_features), output ``output``) to
        ``path``, atomically (a file already there is replaced, as ``torch.onnx.export`` does), for ONNX Runtime
        and other servers; its outputs equal ``predict``'s to the dtype's rounding. Needs the ``onnx`` package
        (``pip install "fastopt[onnx]"``); see ``fastopt.onnx_export``."""
        from fastopt.onnx_export import to_onnx

        to_onnx(self, path)


def _file_layout(header: dict[str, Any]) -> _io.Layout:
    """The arrays a model file's header declares: its parameters, sized by the architecture, so that
    ``read_archive`` reads nothing else and nothing larger."""
    config = header.get("model")
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError("its header has no model description")
    try:
        layers = [layer_from_config(layer) for layer in config["layers"]]
        n_params = sum(layer.n_params for layer in layers if isinstance(layer, Dense))
        dtype = resolve_dtype(config.get("dtype"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"its header describes an invalid model: {exc}") from exc
    return {"parameters": (dtype, (n_params,))}


def _refuse_rebinding(name: str, instead: str) -> None:
    raise AttributeError(
        f"model.{name} cannot be rebound: the layers (and the optimizer) view this array, and a new one would be "
        f"neither trained nor saved. Write into it instead: {instead}"
    )


def _checked_buffer(buffer: object, name: str, size: int, dtype: np.dtype) -> np.ndarray:
    """A copied model's flat buffer, checked against its architecture. Read-only memory stays read-only:
    ``joblib.load(..., mmap_mode="r")`` asks for a model that predicts from shared pages and cannot be changed."""
    if not isinstance(buffer, np.ndarray) or buffer.shape != (size,) or buffer.dtype != dtype:
        found = f"{buffer.dtype} {buffer.shape}" if isinstance(buffer, np.ndarray) else type(buffer).__name__
        raise ValueError(f"the copied model's {name} ({found}) do not fit its architecture ({dtype} ({size},))")
    return np.require(buffer, requirements="CA")  # the same array when C-contiguous and aligned, as pickle gives


def load(path: str | os.PathLike[str], backend: str | None = None) -> Sequential:
    """Read a model written by ``Sequential.save``; refuses corrupt, foreign or pickled files."""
    header, arrays = _io.read_archive(path, MODEL_FILE_KIND, (1, MODEL_FILE_VERSION), layout=_file_layout)
    config = header["model"]
    try:
        model = Sequential(
            [layer_from_config(layer) for layer in config["layers"]], dtype=config.get("dtype"), backend=backend
        )
    except (TypeError, ValueError) as exc:
        raise _io.FileFormatError(f"{path} describes an invalid model: {exc}") from exc
    model.seed = config.get("seed")
    if header["version"] == 1:  # each layer's weight then bias: the layers' views take their segments in order
        views = [view for _, view in model._weight_views()]
        segments = np.split(arrays["parameters"], np.cumsum([view.size for view in views])[:-1])
        model.set_weights([segment.reshape(view.shape) for segment, view in zip(segments, views)])
    else:
        model.parameters[...] = arrays["parameters"]
    return model
