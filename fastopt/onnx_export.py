"""``Sequential.to_onnx``: a trained model as an ONNX graph (opset 17), for ONNX Runtime and other servers.

Needs the ``onnx`` package (``pip install "fastopt[onnx]"``). The graph has one input, ``input`` (N, in_features),
and one output, ``output`` (N, out_features), both of the model's dtype with N free; each ``Dense`` layer is a
``Gemm`` node (``x @ W + b``, its weight and bias stored as initializers), each activation its ONNX operator
(``ReLU`` Relu, ``LeakyReLU`` LeakyRelu, ``Sigmoid`` Sigmoid, ``Tanh`` Tanh, ``Softmax`` Softmax over the last
axis, ``GELU`` its formula in Erf or Tanh nodes, ``Dropout`` Identity: a graph for inference). The outputs equal
``predict``'s to the dtype's rounding of the products (ONNX Runtime sums in its own order). ONNX Runtime 1.32 has
no float64 ``Erf`` kernel: it refuses a float64 model with an exact GELU (the graph is valid ONNX).
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from fastopt import _io
from fastopt.layers import GELU, Dense, Dropout, Layer, LeakyReLU, ReLU, Sigmoid, Softmax, Tanh

OPSET = 17
_ELEMENTWISE = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError('to_onnx needs the onnx package: pip install "fastopt[onnx]"') from exc
    return onnx


def _layer_nodes(onnx: Any, layer: Layer, index: int, source: str, target: str, dtype: np.dtype) -> tuple[list, list]:
    """The nodes and initializers computing ``layer`` from the tensor ``source`` into ``target``."""
    helper, name = onnx.helper, f"layers.{index}"
    if isinstance(layer, Dense):
        to_tensor = onnx.numpy_helper.from_array
        initializers = [to_tensor(layer.weight, f"{name}.weight"), to_tensor(layer.bias, f"{name}.bias")]
        node = helper.make_node("Gemm", [source, f"{name}.weight", f"{name}.bias"], [target], name=name)
        return [node], initializers
    if isinstance(layer, Softmax):
        return [helper.make_node("Softmax", [source], [target], axis=-1, name=name)], []
    if isinstance(layer, LeakyReLU):
        return _leaky_relu_nodes(onnx, layer.negative_slope, name, source, target, dtype)
    if isinstance(layer, Dropout):  # the identity outside training, as in predict
        return [helper.make_node("Identity", [source], [target], name=name)], []
    if isinstance(layer, GELU):
        return _gelu_nodes(onnx, layer.approximate, name, source, target, dtype)
    operator = _ELEMENTWISE.get(type(layer))
    if operator is None:
        raise TypeError(f"to_onnx cannot export layers[{index}] ({layer!r}): no ONNX operator is known for it")
    return [helper.make_node(operator, [source], [target], name=name)], []


def _leaky_relu_nodes(onnx: Any, slope: float, name: str, x: str, target: str, dtype: np.dtype) -> tuple[list, list]:
    """``x if x > 0 else slope x``: ONNX's ``LeakyRelu`` for float32; for float64 ``Where(x > 0, x, x slope)`` with
    the slope as a float64 initializer (``LeakyRelu``'s ``alpha`` is a float32 attribute: 0.1 would become
    0.10000000149)."""
    helper = onnx.helper
    if dtype == np.float32:
        return [helper.make_node("LeakyRelu", [x], [target], alpha=float(slope), name=name)], []
    constants = [onnx.numpy_helper.from_array(np.array(value, dtype=dtype), f"{name}.{key}")
                 for key, value in (("zero", 0.0), ("slope", slope))]  # fmt: skip
    nodes = [
        helper.make_node("Greater", [x, f"{name}.zero"], [f"{name}.positive"]),
        helper.make_node("Mul", [x, f"{name}.slope"], [f"{name}.scaled"]),
        helper.make_node("Where", [f"{name}.positive", x, f"{name}.scaled"], [target], name=name),
    ]
    return nodes, constants


def _gelu_nodes(onnx: Any, approximate: str, name: str, x: str, target: str, dtype: np.dtype) -> tuple[list, list]:
    """GELU from opset-17 operators (``Gelu`` is opset 20): ``0.5 x (1 + erf(x / sqrt(2)))``, or with
    ``approximate="tanh"`` ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x**3)))``. Step k's output is the tensor
    ``layers.i.k`` ("#k" below), a constant c the scalar initializer ``layers.i.c`` of the model's dtype."""
    constants = {"half": 0.5, "one": 1.0}
    if approximate == "tanh":
        constants.update(cubic=0.044715, scale=math.sqrt(2 / math.pi))
        steps = [("Mul", "x", "x"), ("Mul", "#0", "x"), ("Mul", "#1", "cubic"), ("Add", "x", "#2"),
                 ("Mul", "#3", "scale"), ("Tanh", "#4")]  # fmt: skip
    else:
        constants.update(root2=math.sqrt(2))
        steps = [("Div", "x", "root2"), ("Erf", "#0")]
    last = len(steps) - 1
    steps += [("Add", f"#{last}", "one"), ("Mul", "x", f"#{last + 1}"), ("Mul", f"#{last + 2}", "half")]

    def tensor(reference: str) -> str:
        return x if reference == "x" else f"{name}.{reference.lstrip('#')}"

    nodes = [
        onnx.helper.make_node(
            operator, [tensor(reference) for reference in inputs], [target if k == len(steps) - 1 else f"{name}.{k}"]
        )
        for k, (operator, *inputs) in enumerate(steps)
    ]
    to_tensor = onnx.numpy_helper.from_array
    return nodes, [to_tensor(np.array(value, dtype=dtype), f"{name}.{key}") for key, value in constants.items()]


def model_proto(model: Any) -> Any:
    """The ONNX ``ModelProto`` of a ``Sequential`` (see the module's docstring)."""
    onnx = _onnx()
    helper, dtype = onnx.helper, onnx.helper.np_dtype_to_tensor_dtype(model.dtype)
    nodes, initializers = [], []
    source = "input"
    for index, layer in enumerate(model.layers):
        target = "output" if index == len(model.layers) - 1 else f"layers.{index}.output"
        layer_nodes, layer_initializers = _layer_nodes(onnx, layer, index, source, target, model.dtype)
        nodes += layer_nodes
        initializers += layer_initializers
        source = target
    graph = helper.make_graph(
        nodes,
        "fastopt.Sequential",
        [helper.make_tensor_value_info("input", dtype, ["N", model.in_features])],
        [helper.make_tensor_value_info("output", dtype, ["N", model.out_features])],
        initializer=initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="fastopt")
    proto.ir_version = min(proto.ir_version, 8)  # opset 17's IR version: readable by ONNX Runtime 1.14 and later
    onnx.checker.check_model(proto)
    return proto


def to_onnx(model: Any, path: str | os.PathLike[str]) -> None:
    """Write ``model``'s ONNX graph to ``path``, atomically."""
    data = model_proto(model).SerializeToString()
    _io.write_bytes_atomic(path, data)
