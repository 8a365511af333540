"""``Sequential.to_onnx``: a trained model as an ONNX graph (opset 17), for ONNX Runtime and other servers.

Needs the ``onnx`` package (``pip install "fastopt[onnx]"``). The graph has one input, ``input`` (N, in_features),
and one output, ``output`` (N, out_features), both of the model's dtype with N free; each ``Dense`` layer is a
``Gemm`` node (``x @ W + b``, its weight and bias stored as initializers), each activation its ONNX operator
(``ReLU`` Relu, ``Sigmoid`` Sigmoid, ``Tanh`` Tanh, ``Softmax`` Softmax over the last axis). The outputs equal
``predict``'s to the dtype's rounding of the products (ONNX Runtime sums in its own order).
"""

from __future__ import annotations

import os
from typing import Any

from fastopt import _io
from fastopt.layers import Dense, Layer, ReLU, Sigmoid, Softmax, Tanh

OPSET = 17
_ELEMENTWISE = {ReLU: "Relu", Sigmoid: "Sigmoid", Tanh: "Tanh"}


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:
        raise ImportError('to_onnx needs the onnx package: pip install "fastopt[onnx]"') from exc
    return onnx


def _layer_nodes(onnx: Any, layer: Layer, index: int, source: str, target: str) -> tuple[list, list]:
    """The nodes and initializers computing ``layer`` from the tensor ``source`` into ``target``."""
    helper = onnx.helper
    if isinstance(layer, Dense):
        weight, bias = f"layers.{index}.weight", f"layers.{index}.bias"
        to_tensor = onnx.numpy_helper.from_array
        initializers = [to_tensor(layer.weight, weight), to_tensor(layer.bias, bias)]
        return [helper.make_node("Gemm", [source, weight, bias], [target], name=f"layers.{index}")], initializers
    if isinstance(layer, Softmax):
        return [helper.make_node("Softmax", [source], [target], axis=-1, name=f"layers.{index}")], []
    operator = _ELEMENTWISE.get(type(layer))
    if operator is None:
        raise TypeError(f"to_onnx cannot export layers[{index}] ({layer!r}): no ONNX operator is known for it")
    return [helper.make_node(operator, [source], [target], name=f"layers.{index}")], []


def model_proto(model: Any) -> Any:
    """The ONNX ``ModelProto`` of a ``Sequential`` (see the module's docstring)."""
    onnx = _onnx()
    helper, dtype = onnx.helper, onnx.helper.np_dtype_to_tensor_dtype(model.dtype)
    nodes, initializers = [], []
    source = "input"
    for index, layer in enumerate(model.layers):
        target = "output" if index == len(model.layers) - 1 else f"layers.{index}.output"
        layer_nodes, layer_initializers = _layer_nodes(onnx, layer, index, source, target)
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
    _io.write_atomically(path, lambda stream: stream.write(data))
