"""The command line, run as ``python -m fastopt`` in a subprocess."""

from __future__ import annotations

import gzip
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastopt

ROOT = Path(__file__).resolve().parent.parent
BACKENDS = fastopt.available_backends()
OPTIONS = [
    "--dataset",
    "--optimizer",
    "--lr",
    "--momentum",
    "--decay",
    "--weight-decay",
    "--epochs",
    "--batch-size",
    "--hidden",
    "--backend",
    "--dtype",
    "--seed",
    "--save",
    "--no-progress",
    "--validation-split",
    "--early-stopping",
    "--schedule",
    "--clip-norm",
    "--dropout",
    "--loss",
]


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTOPT_QUIET_FALLBACK="1")
    env.pop("FASTOPT_DATA", None)
    return subprocess.run(
        [sys.executable, "-m", "fastopt", *args], capture_output=True, text=True, env=env, timeout=timeout, cwd=ROOT
    )


def reported_accuracy(stdout: str) -> float:
    match = re.search(r"test accuracy (\S+)", stdout)
    assert match, stdout
    return float(match.group(1))


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


# ------------------------------------------------------------------------------------------ training runs
def test_train_one_epoch_on_the_shipped_subset():
    result = run("train", "--epochs", "1", "--no-progress")
    assert_ok(result)
    assert result.stderr.strip() == ""
    assert "784 -> 128 -> 64 -> 10" in result.stdout
    assert "5000 training and 1000 test samples" in result.stdout
    assert "epoch 1/1" in result.stdout
    assert "epoch 2/" not in result.stdout
    assert "test accuracy" in result.stdout
    accuracy = reported_accuracy(result.stdout)
    assert 0.5 < accuracy <= 1.0


def test_train_xor():
    result = run(
        "train", "--dataset", "xor", "--hidden", "8", "--optimizer", "rmsprop", "--lr", "0.02",
        "--epochs", "200", "--batch-size", "4", "--no-progress",
    )  # fmt: skip
    assert_ok(result)
    assert "2 -> 8 -> 2" in result.stdout
    assert "epoch 200/200" in result.stdout
    assert 0.0 <= reported_accuracy(result.stdout) <= 1.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_train_save_writes_a_loadable_model(tmp_path, dtype):
    path = tmp_path / "model.npz"
    result = run(
        "train", "--epochs", "1", "--hidden", "16", "--dtype", dtype, "--seed", "3", "--save", str(path),
        "--no-progress",
    )  # fmt: skip
    assert_ok(result)
    assert dtype in result.stdout
    assert f"saved the model to {path}" in result.stdout
    model = fastopt.load(path)
    assert model.dtype == np.dtype(dtype)
    assert [layer.config() for layer in model.layers if isinstance(layer, fastopt.layers.Dense)] == [
        {"type": "Dense", "in_features": 784, "out_features": 16, "init": "glorot_uniform"},
        {"type": "Dense", "in_features": 16, "out_features": 10, "init": "glorot_uniform"},
    ]
    assert model.seed == 3
    # The saved model reaches the accuracy the command reported.
    _, _, X_test, y_test = fastopt.datasets.mini()
    evaluated = model.evaluate(X_test, y_test, loss=fastopt.losses.CrossEntropy())["accuracy"]
    assert evaluated == pytest.approx(reported_accuracy(result.stdout), abs=1e-4)


CLI_OPTIMIZERS = {
    "sgd": "SGD", "adagrad": "AdaGrad", "rmsprop": "RMSProp", "adam": "Adam", "adamw": "AdamW", "nadam": "NAdam",
    "adamax": "Adamax", "radam": "RAdam", "lion": "Lion",
}  # fmt: skip


def test_the_cli_offers_every_optimizer():
    assert {name: cls.__name__ for name, cls in fastopt.optim.OPTIMIZERS.items()} == CLI_OPTIMIZERS


@pytest.mark.parametrize("optimizer", CLI_OPTIMIZERS)
def test_train_each_optimizer(optimizer):
    result = run("train", "--optimizer", optimizer, "--epochs", "1", "--hidden", "16", "--no-progress")
    assert_ok(result)
    assert f"{CLI_OPTIMIZERS[optimizer]}(" in result.stdout
    assert "epoch 1/1" in result.stdout
    assert reported_accuracy(result.stdout) > 0.3


def test_train_options_reach_the_optimizer():
    result = run(
        "train", "--optimizer", "sgd", "--lr", "0.05", "--momentum", "0.9", "--decay", "0.01",
        "--weight-decay", "0.0001", "--epochs", "1", "--hidden", "16", "--batch-size", "64", "--no-progress",
    )  # fmt: skip
    assert_ok(result)
    for text in ("momentum=0.9", "lr=0.05", "decay=0.01", "weight_decay=0.0001"):
        assert text in result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_train_backend_option(backend):
    result = run("train", "--backend", backend, "--epochs", "1", "--hidden", "16", "--no-progress")
    assert_ok(result)
    assert f"backend {backend}" in result.stdout


def test_train_same_seed_same_result():
    first = run("train", "--dataset", "xor", "--hidden", "4", "--epochs", "5", "--no-progress", "--seed", "7")
    second = run("train", "--dataset", "xor", "--hidden", "4", "--epochs", "5", "--no-progress", "--seed", "7")
    assert_ok(first)
    strip_times = lambda text: re.sub(r"\d+\.\d+ s", "", text)  # noqa: E731
    assert strip_times(first.stdout) == strip_times(second.stdout)


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.tobytes()))


def test_train_on_a_folder_of_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 10)):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    result = run("train", "--dataset", str(tmp_path), "--epochs", "2", "--hidden", "8", "--no-progress")
    assert_ok(result)
    assert "40 training and 10 test samples" in result.stdout
    assert "epoch 2/2" in result.stdout


# ------------------------------------------------------------------------------------------ refusals
BAD_ARGUMENTS = [
    pytest.param(["train", "--optimizer", "bogus"], "bogus", id="optimizer-bogus"),
    pytest.param(["train", "--epochs", "0"], "positive integer", id="epochs-0"),
    pytest.param(["train", "--epochs", "x"], "'x'", id="epochs-x"),
    pytest.param(["train", "--lr", "-1"], "--lr", id="lr-negative"),
    pytest.param(["train", "--lr", "nan"], "--lr", id="lr-nan"),
    pytest.param(["train", "--hidden", "12,a"], "12,a", id="hidden-not-int"),
    pytest.param(["train", "--hidden", "12,0"], "positive", id="hidden-zero"),
    pytest.param(["train", "--hidden", ",,"], "',,'", id="hidden-empty-sizes"),  # (trained with no hidden layer)
    pytest.param(["train", "--hidden", "16,"], "16,", id="hidden-trailing-comma"),
    pytest.param(["train", "--batch-size", "0"], "--batch-size", id="batch-size-0"),
    pytest.param(["train", "--dataset", "nosuchthing"], "nosuchthing", id="dataset-unknown"),
    pytest.param(["train", "--backend", "nosuch"], "nosuch", id="backend-unknown"),
    pytest.param(["train", "--momentum", "0.9", "--optimizer", "adam"], "momentum", id="momentum-with-adam"),
    pytest.param(["train", "--dtype", "int8"], "int8", id="dtype-int8"),
    pytest.param(["train", "--seed", "-1"], "non-negative", id="seed-negative"),
    pytest.param(["train", "--no-such-option"], "--no-such-option", id="unknown-option"),
    pytest.param(["fly"], "fly", id="unknown-command"),
    pytest.param([], "command", id="no-subcommand"),
]


@pytest.mark.parametrize(("args", "mentions"), BAD_ARGUMENTS)
def test_bad_arguments_exit_2_with_one_line(args, mentions):
    result = run(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].strip()
    assert mentions in lines[0]
    assert "epoch" not in result.stdout  # refused before any training


def test_empty_dataset_folder_is_refused(tmp_path):
    result = run("train", "--dataset", str(tmp_path), "--epochs", "1", "--no-progress")
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "train-images-idx3-ubyte" in result.stderr


@pytest.mark.skipif("cython" in BACKENDS, reason="the cython backend is available here")
def test_unavailable_cython_backend_is_refused_with_the_reason():
    result = run("train", "--backend", "cython", "--epochs", "1")
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "not available" in lines[0]


def test_diverging_training_is_reported_in_one_line():
    """An absurd learning rate makes the loss NaN: the command must say so in one line, not a traceback."""
    result = run("train", "--optimizer", "sgd", "--lr", "1e30", "--epochs", "1", "--hidden", "16", "--no-progress")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert "nan" in lines[0].lower() or "inf" in lines[0].lower()


# ------------------------------------------------------------------------------------------ help
def test_train_help_documents_every_option():
    result = run("train", "--help")
    assert result.returncode == 0
    assert result.stderr == ""
    for option in OPTIONS:
        assert re.search(rf"^\s+{re.escape(option)}\b", result.stdout, re.MULTILINE), option
    for name in (*CLI_OPTIMIZERS, "mini", "fashion-mnist", "mnist", "xor"):
        assert name in result.stdout
    assert "--optimizer {" + ",".join(sorted(CLI_OPTIMIZERS)) + "}" in result.stdout


def test_top_level_help_lists_train():
    result = run("--help")
    assert result.returncode == 0
    assert "train" in result.stdout and "predict" in result.stdout
