"""``fastopt predict MODEL DATA``: classes, probabilities or outputs of a saved model for inputs read from .npy,
.npz, .csv or .txt files or a dataset, to stdout or to a file written atomically; every bad model, data or output
file is refused in one line with exit status 2 and leaves what was there untouched."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from test_cli import run

import fastopt
from fastopt import cli, datasets, layers

BACKENDS = fastopt.available_backends()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A trained 784-16-10 model file, and 40 test images."""
    folder = tmp_path_factory.mktemp("predict")
    X, y, X_test, _ = datasets.mini()
    model = fastopt.Sequential([layers.Dense(784, 16), layers.ReLU(), layers.Dense(16, 10)], seed=0)
    model.fit(X[:1000], y[:1000], epochs=1, seed=0)
    path = folder / "model.npz"
    model.save(path)
    return path, X_test[:40]


def predict(capsys, *args: str) -> tuple[int, str, str]:
    status = cli.main(["predict", *map(str, args)])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def read_rows(text: str) -> np.ndarray:
    return np.loadtxt(io.StringIO(text), delimiter=",", ndmin=2)


def write_data(folder, suffix: str, X: np.ndarray):
    """X in each format the command reads."""
    path = folder / f"data{suffix}"
    if suffix == ".npy":
        np.save(path, X.reshape(len(X), 28, 28) if X.shape[1] == 784 else X)  # images: flattened by the reader
    elif suffix == ".npz":
        np.savez_compressed(path, y=np.zeros(len(X)), X=X)
    elif suffix == ".csv":
        header = ",".join(f"pixel{i}" for i in range(X.shape[1]))
        np.savetxt(path, X, delimiter=",", fmt="%.9g", header=header, comments="")
    else:
        np.savetxt(path, X, fmt="%.9g")
    return path


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".txt"])
def test_classes_from_each_file_format(capsys, tmp_path, saved, suffix):
    path, X = saved
    status, out, err = predict(capsys, path, write_data(tmp_path, suffix, X))
    assert status == 0 and err == ""
    expected = np.argmax(fastopt.load(path).predict(X), axis=1)
    assert out.splitlines() == [str(label) for label in expected]


def test_classes_of_a_dataset_s_test_images(capsys, saved):
    path, _ = saved
    status, out, _ = predict(capsys, path, "mini")
    assert status == 0
    _, _, X_test, _ = datasets.mini()
    assert np.array_equal(np.array(out.split(), dtype=np.int64), np.argmax(fastopt.load(path).predict(X_test), 1))


@pytest.mark.parametrize("backend", BACKENDS)
def test_values_read_back_to_the_same_bits(capsys, tmp_path, saved, backend):
    path, X = saved
    with fastopt.use_backend(backend):
        status, out, _ = predict(capsys, path, write_data(tmp_path, ".npy", X), "--values")
        expected = fastopt.load(path).predict(X)
    assert status == 0
    assert np.array_equal(read_rows(out).astype(np.float32), expected)


def test_probabilities_are_the_softmax_of_the_outputs(capsys, tmp_path, saved):
    path, X = saved
    status, out, _ = predict(capsys, path, write_data(tmp_path, ".npy", X), "--proba")
    assert status == 0
    probabilities = read_rows(out)
    outputs = fastopt.load(path).predict(X).astype(np.float64)
    expected = np.exp(outputs - outputs.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    assert probabilities.shape == (40, 10)
    np.testing.assert_allclose(probabilities, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".txt"])
def test_output_file(capsys, tmp_path, saved, suffix):
    path, X = saved
    output = tmp_path / f"out{suffix}"
    status, out, _ = predict(capsys, path, write_data(tmp_path, ".npy", X), "--values", "--output", output)
    assert status == 0 and out == f"wrote 40 predictions to {output}\n"
    written = np.load(output) if suffix == ".npy" else read_rows(output.read_text())
    assert np.array_equal(written.astype(np.float32), fastopt.load(path).predict(X))
    assert not list(tmp_path.glob(".out*.tmp"))  # no temporary file left behind


def test_an_existing_output_is_replaced_only_with_overwrite(capsys, tmp_path, saved):
    path, X = saved
    data, output = write_data(tmp_path, ".npy", X), tmp_path / "predictions.csv"
    output.write_text("precious\n")
    status, out, err = predict(capsys, path, data, "--output", output)
    assert status == 2 and "--overwrite" in err and str(output) in err and out == ""
    assert output.read_text() == "precious\n"
    status, _, _ = predict(capsys, path, data, "--output", output, "--overwrite")
    assert status == 0 and len(output.read_text().splitlines()) == 40


def test_a_failing_prediction_leaves_the_output_untouched(capsys, tmp_path, saved):
    """The data is refused after the output's checks: nothing is written, not even an empty file."""
    path, X = saved
    output = tmp_path / "predictions.csv"
    status, _, err = predict(capsys, path, write_data(tmp_path, ".npy", X[:, :100]), "--output", output)
    assert status == 2 and "features" in err
    assert not output.exists() and not list(tmp_path.glob(".predictions*"))


def npy_bytes(array: np.ndarray) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array)
    return stream.getvalue()


def forged_npy(X: np.ndarray) -> bytes:
    """An .npy file whose header declares 10**9 rows, holding two."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**9, 784)})
    return header.getvalue() + X[:2].astype("<f4").tobytes()


def bad_data_files(folder, X: np.ndarray) -> dict[str, tuple[object, str]]:
    """Files that are not inputs for a 784-feature model, each with a phrase its error must contain."""
    contents = {
        "features.npy": (npy_bytes(X[:, :100]), "has 100 features but the model expects 784"),
        "nan.csv": ("1," * 783 + "nan\n", "NaN"),
        "truncated.npy": (npy_bytes(X)[:1000], "not a readable .npy file"),
        "forged.npy": (forged_npy(X), "not a readable .npy file"),
        "text.npy": ("hello\n", "not a readable .npy file"),
        "words.csv": ("a,b\nc,d\n", "not a readable .csv file"),
        "ragged.csv": ("1,2,3\n4,5\n", "not a readable .csv file"),
        "empty.csv": ("", "empty"),
        "scalar.npy": (npy_bytes(np.float32(1.0)), "a single number"),
        "strings.npy": (npy_bytes(np.array([["a"] * 784])), "real numbers"),
        "zip.npz": ("PK not a zip", "not a readable .npz file"),
        "data.json": ("[1, 2]", "DATA must be a .npy, .npz, .csv, .txt file"),
        "pickled.npy": (None, "Python objects"),
        "several.npz": (None, "name the inputs 'X'"),
        "forged.npz": (None, "declares"),
        "missing.csv": (None, "no such file"),
    }
    for name, (content, _) in contents.items():
        if isinstance(content, bytes):
            (folder / name).write_bytes(content)
        elif isinstance(content, str):
            (folder / name).write_text(content)
    np.save(folder / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.savez(folder / "several.npz", a=X, b=X)
    with zipfile.ZipFile(folder / "forged.npz", "w") as archive:
        archive.writestr("X.npy", forged_npy(X))
    return {name: (folder / name, phrase) for name, (_, phrase) in contents.items()}


BAD_DATA = ["features.npy", "nan.csv", "truncated.npy", "forged.npy", "text.npy", "words.csv", "ragged.csv",
            "empty.csv", "scalar.npy", "strings.npy", "zip.npz", "data.json", "pickled.npy", "several.npz",
            "forged.npz", "missing.csv"]  # fmt: skip


@pytest.mark.parametrize("name", BAD_DATA)
def test_bad_data_is_one_line_and_exit_2(capsys, tmp_path, saved, name):
    path, X = saved
    data, phrase = bad_data_files(tmp_path, X)[name]
    status, out, err = predict(capsys, path, data)
    assert status == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("fastopt: error: "), err
    assert phrase in err and out == ""


def test_an_unknown_data_name_is_refused(capsys, saved):
    status, _, err = predict(capsys, saved[0], "nosuchthing")
    assert status == 2 and "nosuchthing" in err and "DATA must be" in err


def bad_models(folder, model_path) -> dict[str, tuple[object, str]]:
    corrupt = bytearray(model_path.read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF
    checkpoint = folder / "run.ckpt"
    X, y, _, _ = datasets.mini()
    fastopt.Sequential([layers.Dense(784, 10)]).fit(X[:64], y[:64], checkpoint=checkpoint)
    files = {"corrupt.npz": bytes(corrupt), "text.npz": b"hello", "data.npy": npy_bytes(X[:2])}
    for name, content in files.items():
        (folder / name).write_bytes(content)
    return {
        "corrupt.npz": (folder / "corrupt.npz", "corrupt.npz"),
        "text.npz": (folder / "text.npz", "not a fastopt file"),
        "data.npy": (folder / "data.npy", "not a fastopt file"),
        "checkpoint": (checkpoint, "fastopt-model"),
        "missing": (folder / "missing.npz", "no such file"),
    }


@pytest.mark.parametrize("name", ["corrupt.npz", "text.npz", "data.npy", "checkpoint", "missing"])
def test_a_bad_model_file_is_one_line_and_exit_2(capsys, tmp_path, saved, name):
    model_path, X = saved
    path, phrase = bad_models(tmp_path, model_path)[name]
    status, out, err = predict(capsys, path, write_data(tmp_path, ".npy", X))
    assert status == 2, err
    assert len(err.splitlines()) == 1 and phrase in err and out == ""


def test_a_one_output_model_has_classes_and_probabilities_under_bce_only(capsys, tmp_path):
    model = fastopt.Sequential([layers.Dense(3, 1)], seed=0)
    model.save(tmp_path / "one.npz")
    X = np.arange(-6, 6, dtype=np.float32).reshape(4, 3)
    np.save(tmp_path / "x.npy", X)
    logits = model.predict(X)[:, 0]
    assert (logits > 0).any() and (logits < 0).any()
    for option in ((), ("--proba",), ("--loss", "mse")):
        status, _, err = predict(capsys, tmp_path / "one.npz", tmp_path / "x.npy", *option)
        assert status == 2 and "one output" in err and "--values" in err and "--loss bce" in err
    status, out, _ = predict(capsys, tmp_path / "one.npz", tmp_path / "x.npy", "--values")
    assert status == 0 and np.array_equal(read_rows(out)[:, 0].astype(np.float32), logits)
    status, out, _ = predict(capsys, tmp_path / "one.npz", tmp_path / "x.npy", "--loss", "bce")
    assert status == 0 and out.split() == [str(int(logit > 0)) for logit in logits]
    status, out, _ = predict(capsys, tmp_path / "one.npz", tmp_path / "x.npy", "--loss", "bce", "--proba")
    expected = 1 / (1 + np.exp(-logits.astype(np.float64)))
    assert status == 0 and np.allclose(read_rows(out)[:, 0], expected, rtol=1e-6)


def test_bce_on_several_outputs_gives_a_label_per_output(capsys, tmp_path, saved):
    """Multi-label: each output's logit > 0, one row of k 0/1 values per sample; --proba: each one's sigmoid."""
    path, X = saved
    data = write_data(tmp_path, ".npy", X)
    logits = fastopt.load(path).predict(X)
    status, out, _ = predict(capsys, path, data, "--loss", "bce")
    assert status == 0 and np.array_equal(read_rows(out), (logits > 0).astype(np.float64))
    status, out, _ = predict(capsys, path, data, "--loss", "bce", "--proba")
    assert status == 0
    np.testing.assert_allclose(read_rows(out), 1 / (1 + np.exp(-logits.astype(np.float64))), rtol=1e-6)


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_a_regression_loss_has_classes_but_no_probabilities(capsys, tmp_path, saved, loss):
    path, X = saved
    data = write_data(tmp_path, ".npy", X)
    status, out, _ = predict(capsys, path, data, "--loss", loss)
    assert status == 0 and out.split() == [str(c) for c in np.argmax(fastopt.load(path).predict(X), axis=1)]
    status, _, err = predict(capsys, path, data, "--loss", loss, "--proba")
    assert status == 2 and len(err.splitlines()) == 1 and "predict_proba" in err


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["predict"], "MODEL"),
        (["predict", "m.npz"], "DATA"),
        (["predict", "m.npz", "x.npy", "--proba", "--values"], "not allowed with"),
        (["predict", "m.npz", "x.npy", "--output"], "--output"),
    ],
)
def test_bad_arguments_exit_2(args, mentions):
    result = run(*args)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert mentions in result.stderr


def test_output_into_a_missing_folder_or_onto_a_folder_is_refused(capsys, tmp_path, saved):
    path, X = saved
    data = write_data(tmp_path, ".npy", X)
    status, _, err = predict(capsys, path, data, "--output", tmp_path / "no" / "out.csv")
    assert status == 2 and "does not exist" in err
    status, _, err = predict(capsys, path, data, "--output", tmp_path, "--overwrite")
    assert status == 2 and "is a folder" in err


def test_predict_help_documents_its_options():
    result = run("predict", "--help")
    assert result.returncode == 0
    for option in ("MODEL", "DATA", "--proba", "--values", "--loss", "--output", "--overwrite", "--debug"):
        assert option in result.stdout
