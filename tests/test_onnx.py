"""``Sequential.to_onnx``: the exported graph, run by ONNX Runtime, gives ``predict``'s outputs (to the rounding
of the products, bounded from the run's own magnitudes). Skipped without ``onnx`` and ``onnxruntime``."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from fastopt import layers, losses, optim
from fastopt.model import Sequential

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")

ACTIVATIONS = [layers.ReLU, layers.Sigmoid, layers.Tanh]


def _trained(stack: list[layers.Layer], dtype: str) -> Sequential:
    model = Sequential(stack, dtype=dtype, seed=0)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, model.in_features))
    y = rng.standard_normal((64, model.out_features))
    model.fit(X, y, loss=losses.MSE(), optimizer=optim.Adam(lr=1e-2), epochs=2, batch_size=16, seed=0)
    return model


def _rounding_bound(model: Sequential, X: np.ndarray) -> float:
    """How far two summation orders of the forward pass can differ: each product's terms bounded by the absolute
    forward pass (|x| @ |W| + |b|; the activations are 1-Lipschitz), times the longest sum, times the dtype's
    epsilon, over the layers."""
    eps = np.finfo(model.dtype).eps
    magnitude, bound = np.abs(X.astype(np.float64)), 0.0
    for layer in model.layers:
        if isinstance(layer, layers.Dense):
            magnitude = magnitude @ np.abs(layer.weight.astype(np.float64)) + np.abs(layer.bias)
            bound = bound + (layer.in_features + 1) * eps * magnitude.max()
    return 4 * bound


def _run(path: str, X: np.ndarray) -> np.ndarray:
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {"input": X})[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("batch", [1, 7, 300])
def test_onnx_runtime_gives_predicts_outputs(tmp_path, dtype, activation, batch):
    model = _trained([layers.Dense(12, 16), activation(), layers.Dense(16, 8), activation(), layers.Dense(8, 3)], dtype)
    path = str(tmp_path / "model.onnx")
    model.to_onnx(path)
    X = np.random.default_rng(batch).standard_normal((batch, 12)).astype(dtype)
    got, want = _run(path, X), model.predict(X)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=_rounding_bound(model, X))


def test_softmax_and_a_standalone_activation_export(tmp_path):
    stack = [layers.Dense(5, 6), layers.Tanh(), layers.ReLU(), layers.Dense(6, 4), layers.Softmax()]
    model = _trained(stack, "float32")
    path = str(tmp_path / "model.onnx")
    model.to_onnx(path)
    X = np.random.default_rng(1).standard_normal((9, 5)).astype(np.float32)
    got = _run(path, X)
    np.testing.assert_allclose(got, model.predict(X), rtol=0, atol=_rounding_bound(model, X))
    np.testing.assert_allclose(got.sum(axis=1), 1, rtol=1e-6)


def test_the_graph_declares_a_free_batch_and_the_models_widths(tmp_path):
    model = Sequential([layers.Dense(4, 3), layers.ReLU(), layers.Dense(3, 2)], seed=0)
    path = tmp_path / "model.onnx"
    model.to_onnx(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    values = (*proto.graph.input, *proto.graph.output)
    dims = [[d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim] for value in values]
    assert dims == [["N", 4], ["N", 2]]
    assert [node.op_type for node in proto.graph.node] == ["Gemm", "Relu", "Gemm"]


def test_export_replaces_a_file_atomically_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    Sequential([layers.Dense(4, 2)], seed=0).to_onnx(path)
    assert onnx.load(str(path)).graph.node[0].op_type == "Gemm"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_without_onnx_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(ImportError, match=r"fastopt\[onnx\]"):
        Sequential([layers.Dense(4, 2)], seed=0).to_onnx(tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


NEW_LAYERS = [
    ("LeakyReLU", {"negative_slope": 0.1}),
    ("GELU", {}),
    ("GELU", {"approximate": "tanh"}),
    ("Dropout", {"p": 0.3}),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind, options", NEW_LAYERS, ids=lambda value: str(value))
def test_the_newer_layers_export_as_predict_computes_them(tmp_path, dtype, kind, options):
    layer = getattr(layers, kind)(**options)
    model = _trained([layers.Dense(10, 16), layer, layers.Dense(16, 4)], dtype)
    path = str(tmp_path / "model.onnx")
    model.to_onnx(path)
    X = np.random.default_rng(5).standard_normal((33, 10)).astype(dtype)
    try:
        got = _run(path, X)
    except onnxruntime.capi.onnxruntime_pybind11_state.NotImplemented as exc:  # float64 Erf, in ONNX Runtime 1.32
        pytest.skip(f"ONNX Runtime cannot run this valid graph: {exc}")
    np.testing.assert_allclose(got, model.predict(X), rtol=0, atol=_rounding_bound(model, X))


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_the_gelu_nodes_compute_pytorchs_gelu(approximate):
    """The nodes alone, against the formula in float64 (to 8 float32 ulps of the largest value)."""
    from math import erf

    from fastopt.onnx_export import _gelu_nodes

    nodes, initializers = _gelu_nodes(onnx, approximate, "g", "input", "output", np.dtype(np.float32))
    value_info = [onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N"]) for n in ("input", "output")]
    graph = onnx.helper.make_graph(nodes, "gelu", value_info[:1], value_info[1:], initializer=initializers)
    proto = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    proto.ir_version = 8
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.linspace(-6, 6, 241, dtype=np.float32)
    got = session.run(None, {"input": x})[0]
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64**3)))
    else:
        want = 0.5 * x64 * (1 + np.array([erf(v / np.sqrt(2)) for v in x64]))
    np.testing.assert_allclose(got, want, rtol=0, atol=8 * np.finfo(np.float32).eps * 6)
