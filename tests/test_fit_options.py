"""fit's options beyond the loop itself: ``validation_split`` (seeded, stratified), gradient clipping (PyTorch's
``clip_grad_norm_`` and ``clip_grad_value_`` semantics), ``verbose`` lines in Keras's form, ``History.plot``, and
``on_nonfinite``."""

from __future__ import annotations

import re

import numpy as np
import pytest

import fastopt
from fastopt import callbacks, datasets, layers, losses, optim, training
from fastopt.backend import resolve_backend
from fastopt.optim import lr_scheduler


@pytest.fixture(scope="module")
def mini():
    X, y, X_test, y_test = datasets.mini()
    return X[:600], y[:600], X_test[:100], y_test[:100]


def make_model(dtype: str = "float32", backend: str | None = None) -> fastopt.Sequential:
    return fastopt.Sequential(
        [layers.Dense(784, 16), layers.ReLU(), layers.Dense(16, 10)], dtype=dtype, seed=0, backend=backend
    )


# ------------------------------------------------------------------------------------ validation_split
def split_rows(y: np.ndarray, fraction: float, seed: int | None, loss=None) -> tuple[np.ndarray, np.ndarray]:
    """The (training, validation) row indices fit makes of ``len(y)`` rows: column 0 of X numbers the rows."""
    X = np.zeros((len(y), 784), dtype=np.float32)
    X[:, 0] = np.arange(len(y))
    model = make_model()
    arguments = dict(loss=loss, optimizer=None, epochs=1, batch_size=32, shuffle=True, seed=seed, progress=False,
                     verbose=0, on_nonfinite=None, callbacks=None, on_epoch_end=None, checkpoint=None,
                     checkpoint_every=None, resume=False, overwrite=False, clip_norm=None, clip_value=None,
                     validation_data=None, validation_split=fraction, sample_weight=None,
                     class_weight=None)  # fmt: skip
    options = training.check_fit_options(model, arguments)
    data = training.prepare_data(model, X, y, options, arguments)
    assert data.validation is not None
    return data.training_inputs()[:, 0].astype(np.int64), data.validation[0][:, 0].astype(np.int64)


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
def test_validation_split_is_stratified_disjoint_and_seeded(fraction):
    """Unbalanced classes (500, 37, 5, 2 and 1 rows): each class gives round(fraction * its rows) to validation
    (at least one, and never all: a class of one row stays in training), the two parts cover every row once, in
    their original order, and the same seed makes the same split."""
    y = np.repeat(np.arange(5), [500, 37, 5, 2, 1])
    np.random.default_rng(0).shuffle(y)
    kept, held = split_rows(y, fraction, seed=3)
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(y)))
    assert list(kept) == sorted(kept) and list(held) == sorted(held)
    for label, count in enumerate([500, 37, 5, 2, 1]):
        share = int(np.sum(y[held] == label))
        assert abs(share - round(fraction * count)) <= 1, (label, share)
        assert (share >= 1 and share < count) if count > 1 else share == 0
    again_kept, again_held = split_rows(y, fraction, seed=3)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, split_rows(y, fraction, seed=4)[1])


def test_validation_split_of_regression_targets_takes_a_share_of_all_rows():
    targets = np.random.default_rng(1).standard_normal((103, 10)).astype(np.float32)
    kept, held = split_rows(targets, 0.2, seed=0, loss=losses.MSE())
    assert len(held) == round(0.2 * 103) and len(kept) == 103 - len(held)
    assert len(split_rows(targets, 1e-9, seed=0, loss=losses.MSE())[1]) == 1  # a fraction above 0 holds a row


def test_validation_split_is_validation_data_of_the_held_rows(mini):
    """fit(validation_split=0.2, seed=5) trains exactly as fit on the kept rows with the held rows as
    validation_data: the split comes before the shuffling, from its own generator."""
    X, y, _, _ = mini
    kept, held = split_rows(y, 0.2, seed=5)
    split, explicit = make_model(), make_model()
    history = split.fit(X, y, epochs=2, seed=5, validation_split=0.2)
    reference = explicit.fit(X[kept], y[kept], epochs=2, seed=5, validation_data=(X[held], y[held]))
    assert np.array_equal(split.parameters, explicit.parameters)
    assert {k: v for k, v in history.history.items() if k != "seconds"} == {
        k: v for k, v in reference.history.items() if k != "seconds"
    }
    assert {"val_loss", "val_accuracy"} <= set(history.history)


@pytest.mark.parametrize(
    ("options", "error", "match"),
    [
        ({"validation_split": 1.0}, ValueError, "validation_split must be < 1.0"),
        ({"validation_split": -0.1}, ValueError, "validation_split must be >= 0"),
        ({"validation_split": float("nan")}, ValueError, "validation_split must be finite"),
        ({"validation_split": True}, TypeError, "validation_split must be a real number"),
        ({"validation_split": "0.2"}, TypeError, "validation_split must be a real number"),
        ({"validation_split": 0.2, "validation_data": "given"}, ValueError, "give validation_data or validation_split"),
        ({"clip_norm": 0.0}, ValueError, "clip_norm must be > 0"),
        ({"clip_norm": -1.0}, ValueError, "clip_norm must be > 0"),
        ({"clip_norm": float("inf")}, ValueError, "clip_norm must be finite"),
        ({"clip_value": True}, TypeError, "clip_value must be a real number"),
        ({"clip_value": 0}, ValueError, "clip_value must be > 0"),
    ],
)
def test_bad_splits_and_clipping_are_refused_before_training(mini, options, error, match):
    X, y, X_val, y_val = mini
    if options.get("validation_data") == "given":
        options = dict(options, validation_data=(X_val, y_val))
    model = make_model()
    before = model.parameters.copy()
    with pytest.raises(error, match=match):
        model.fit(X, y, **options)
    assert np.array_equal(model.parameters, before) and model.optimizer is None


def test_a_split_that_leaves_no_training_row_is_refused(mini):
    X, _, _, _ = mini
    with pytest.raises(ValueError, match="leaves no rows for training or for validation"):
        make_model().fit(X[:1], np.zeros((1, 10), dtype=np.float32), loss=losses.MSE(), validation_split=0.5)


def test_validation_split_zero_means_none(mini):
    X, y, _, _ = mini
    history = make_model().fit(X[:64], y[:64], validation_split=0.0)
    assert "val_loss" not in history.history


# ------------------------------------------------------------------------------------ clipping
def _gradients_of(model: fastopt.Sequential, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    model.compute_gradients(X, y)
    return model.gradients.copy()


def _torch_clip(model, gradients: np.ndarray, clip_norm, clip_value) -> tuple[np.ndarray, float | None]:
    """PyTorch's clip_grad_value_ then clip_grad_norm_ on tensors holding the model's weight and bias gradients
    (the same values, in PyTorch's own tensors, one per layer's weight and bias); returns them flat, as the
    model lays them out, and the norm PyTorch returned."""
    torch = pytest.importorskip("torch")
    model.gradients[...] = gradients
    dense = [layer for layer in model.layers if isinstance(layer, layers.Dense)]
    views = [grad for layer in dense for grad in (layer.weight_grad, layer.bias_grad)]
    tensors = [torch.tensor(view.copy(), requires_grad=True) for view in views]
    for tensor, view in zip(tensors, views):
        tensor.grad = torch.tensor(view.copy())
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(tensors, clip_value)
    norm = None if clip_norm is None else float(torch.nn.utils.clip_grad_norm_(tensors, clip_norm))
    for tensor, view in zip(tensors, views):
        view[...] = tensor.grad.numpy()
    return model.gradients.copy(), norm


@pytest.mark.parametrize(
    ("clip_norm", "clip_value"),
    [(0.5, None), (1e6, None), (None, 0.01), (0.05, 0.02), (1e-3, 1e-4)],
    ids=["norm", "norm-not-reached", "value", "value-then-norm", "tiny"],
)
@pytest.mark.parametrize("backend", fastopt.available_backends())
def test_clipping_follows_pytorch(mini, backend, clip_norm, clip_value):
    """float64 gradients of a model, clipped by fastopt.training.clip_gradients and by PyTorch's functions (value
    first, then norm, the order fit uses): equal within 1e-12, and the same total norm."""
    X, y, _, _ = mini
    model = make_model("float64", backend)
    gradients = _gradients_of(model, X[:64], y[:64])
    expected, expected_norm = _torch_clip(model, gradients, clip_norm, clip_value)
    model.gradients[...] = gradients
    norm = training.clip_gradients(resolve_backend(backend), [model.gradients], clip_norm, clip_value)
    assert np.abs(model.gradients - expected).max() <= 1e-12 * np.abs(expected).max()
    if clip_norm is not None:
        assert norm == pytest.approx(expected_norm, rel=1e-12)
        clipped = np.linalg.norm(model.gradients)
        assert clipped <= clip_norm * (1 + 1e-12) and (clipped < clip_norm * 0.999) == (clip_norm == 1e6)
    if clip_value is not None:
        assert np.abs(model.gradients).max() <= clip_value


@pytest.mark.parametrize(
    "options", [{"clip_norm": 0.05}, {"clip_value": 0.001}, {"clip_norm": 0.1, "clip_value": 0.01}]
)
def test_fit_applies_clipping_before_the_optimizer_step(mini, options):
    """One full-batch step of fit with clipping equals compute_gradients, clip_gradients, then the step."""
    X, y, _, _ = mini
    trained, manual = make_model("float64"), make_model("float64")
    trained.fit(X[:64], y[:64], optimizer=optim.SGD(lr=0.5), epochs=1, batch_size=64, shuffle=False, **options)
    optimizer = optim.SGD([manual.parameters], lr=0.5)
    manual.compute_gradients(X[:64], y[:64])
    training.clip_gradients(resolve_backend(None), [manual.gradients], options.get("clip_norm"),
                            options.get("clip_value"))  # fmt: skip
    optimizer.step([manual.gradients])
    assert np.array_equal(trained.parameters, manual.parameters)
    unclipped = make_model("float64")
    unclipped.fit(X[:64], y[:64], optimizer=optim.SGD(lr=0.5), epochs=1, batch_size=64, shuffle=False)
    assert not np.array_equal(unclipped.parameters, manual.parameters)


# ------------------------------------------------------------------------------------ verbose
LINE = re.compile(
    r"Epoch (\d+)/3 - \d+\.\d\ds - loss: \d+\.\d{4} - accuracy: [01]\.\d{4} - val_loss: \d+\.\d{4} - "
    r"val_accuracy: [01]\.\d{4} - learning_rate: (\d\.\d{4}e-0\d)"
)


@pytest.mark.parametrize("verbose", [1, 2])
def test_verbose_prints_one_keras_line_per_epoch(mini, capsys, verbose):
    """Keras's one-line form (verbose=2 in Keras; fastopt prints it for 1 and 2, its bar is progress=True): the
    epoch (1-based) of all, the time, then each metric with 4 decimals, a small rate in exponent form."""
    X, y, X_val, y_val = mini
    optimizer = optim.Adam(lr=1e-4)
    schedule = lr_scheduler.ExponentialLR(optimizer, gamma=0.5)
    history = make_model().fit(X[:100], y[:100], optimizer=optimizer, epochs=3, validation_data=(X_val, y_val),
                               verbose=verbose, callbacks=[schedule])  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3, lines
    for epoch, line in enumerate(lines):
        match = LINE.fullmatch(line)
        assert match, line
        assert int(match[1]) == epoch + 1 and float(match[2]) == pytest.approx(1e-4 * 0.5**epoch, rel=1e-4)
        assert f"loss: {history.history['loss'][epoch]:.4f} -" in line


def test_verbose_0_prints_nothing_and_other_values_are_refused(mini, capsys):
    X, y, _, _ = mini
    make_model().fit(X[:64], y[:64], epochs=2, verbose=0)
    assert capsys.readouterr().out == ""
    for verbose, error in ((3, ValueError), (True, ValueError), ("auto", ValueError)):
        with pytest.raises(error, match="verbose must be 0, 1 or 2"):
            make_model().fit(X[:64], y[:64], verbose=verbose)


# ------------------------------------------------------------------------------------ History.plot
@pytest.fixture
def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend; the backend and figures are restored after."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    before = plt.get_backend()
    plt.switch_backend("Agg")
    try:
        yield plt
    finally:
        plt.close("all")
        plt.switch_backend(before)


@pytest.fixture(scope="module")
def history(mini):
    X, y, X_val, y_val = mini
    optimizer = optim.Adam(lr=3e-3)
    return make_model().fit(X, y, optimizer=optimizer, epochs=6, validation_data=(X_val, y_val), seed=0,
                            callbacks=[lr_scheduler.CosineAnnealingLR(optimizer, T_max=6)])  # fmt: skip


def test_history_plot_draws_each_metric_with_its_validation_curve(history, pyplot, tmp_path):
    path = tmp_path / "history.png"
    figure = history.plot(path=path, title="seed 0")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 20_000
    axes = figure.get_axes()
    assert [axis.get_ylabel() for axis in axes] == ["loss", "accuracy"]
    for axis, name in zip(axes, ["loss", "accuracy"]):
        lines = {line.get_label(): line for line in axis.get_lines()}
        assert set(lines) == {name, f"val_{name}"} and axis.get_xlabel() == "epoch"
        assert all(float(tick).is_integer() for tick in axis.get_xticks())
        for label, line in lines.items():
            assert list(line.get_xdata()) == [1, 2, 3, 4, 5, 6]
            assert list(line.get_ydata()) == history.history[label]
    assert figure.texts[0].get_text() == "seed 0"


def test_history_plot_chooses_metrics_and_refuses_unknown_ones(history, pyplot):
    assert [axis.get_ylabel() for axis in history.plot(metrics="learning_rate").get_axes()] == ["learning_rate"]
    assert len(history.plot(metrics=("val_loss", "loss")).get_axes()) == 2
    with pytest.raises(ValueError, match=r"the history has no 'acc'; it has \['accuracy', "):
        history.plot(metrics=("loss", "acc"))
    with pytest.raises(ValueError, match="the history holds no metric to plot"):
        fastopt.History().plot()


def test_history_plot_keeps_the_backend_and_the_open_figures(history, pyplot, tmp_path):
    """Saving to a file must not switch pyplot's backend: switching closes every open figure of the user's."""
    pyplot.switch_backend("pdf")
    mine = pyplot.figure()
    history.plot(path=tmp_path / "history.pdf")
    assert pyplot.get_backend() == "pdf" and pyplot.fignum_exists(mine.number)
    assert (tmp_path / "history.pdf").read_bytes()[:5] == b"%PDF-"


# ------------------------------------------------------------------------------------ on_nonfinite
def test_on_nonfinite_is_checked(mini):
    X, y, _, _ = mini
    with pytest.raises(ValueError, match=r"on_nonfinite must be one of \('raise', 'skip', 'stop'\), got 'ignore'"):
        make_model().fit(X[:64], y[:64], on_nonfinite="ignore")


def test_on_nonfinite_stop_keeps_the_epochs_before_and_resumes_at_once(mini, tmp_path, monkeypatch):
    """The loss of the first batch of the third epoch is NaN: the run stops there with the reason, the two epochs
    recorded and that batch's update not applied; its checkpoint resumed returns the same at once."""
    X, y, _, _ = mini
    path, training_losses = tmp_path / "run.ckpt", []
    original = losses.CrossEntropy.compute

    def compute(self, backend, output, target, grad, weights=None):
        value = original(self, backend, output, target, grad, weights)
        if grad is not None:  # a training batch (validation passes no gradient buffer)
            training_losses.append(value)
            return float("nan") if len(training_losses) == 5 else value
        return value

    monkeypatch.setattr(losses.CrossEntropy, "compute", compute)
    snapshots = []
    spy = callbacks.LambdaCallback(on_train_batch_begin=lambda batch, logs: snapshots.append(model.parameters.copy()))
    model = make_model()
    history = model.fit(X[:64], y[:64], epochs=5, on_nonfinite="stop", callbacks=[spy], checkpoint=path)
    assert history.epochs == [1, 2] and history.stop_reason == "the loss became nan at epoch 3, batch 1: stopped"
    assert np.array_equal(model.parameters, snapshots[-1]) and model.optimizer.step_count == 4
    again = make_model()
    resumed = again.fit(X[:64], y[:64], epochs=5, on_nonfinite="stop", callbacks=[spy], checkpoint=path, resume=True)
    assert len(training_losses) == 5 and resumed.stop_reason == history.stop_reason
    assert np.array_equal(again.parameters, model.parameters) and again.optimizer.step_count == 4
