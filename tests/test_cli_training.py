"""``fastopt train``'s training options (--validation-split, --early-stopping, --schedule, --clip-norm): each one
reaches ``fit`` with the semantics its help states (a run from the command line ends bit-identical to the same run
written with the API), and bad values are refused in one line with exit status 2 before any training."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from test_checkpoint import crash_at_step
from test_cli import run

import fastopt
from fastopt import callbacks, cli, datasets, layers, losses, optim
from fastopt.optim import lr_scheduler

BACKENDS = fastopt.available_backends()
LOSSES = {"ce": losses.CrossEntropy(), "bce": losses.BinaryCrossEntropy(), "mse": losses.MSE(), "huber": losses.Huber()}
EPOCHS, BATCH_SIZE, SEED, LR, SPLIT, HIDDEN = 4, 128, 3, 2e-3, 0.2, 16
QUICK = ("--dataset", "xor", "--hidden", "4", "--epochs", "3", "--batch-size", "2", "--no-progress")
COMMON = ("--epochs", str(EPOCHS), "--batch-size", str(BATCH_SIZE), "--seed", str(SEED), "--lr", str(LR),
          "--hidden", str(HIDDEN), "--no-progress")  # fmt: skip


def half_last_digit(value: float) -> float:
    """The rounding of a printed value: 4 decimals, or 4 decimals of the mantissa below 1e-3."""
    return 5e-5 if abs(value) >= 1e-3 else 5e-5 * 10 ** math.floor(math.log10(abs(value)))


def training_rows(labels: np.ndarray, fraction: float) -> int:
    """The rows a stratified validation split leaves (README: round(f n_c) of each class, at least one, never all)."""
    counts = np.bincount(labels)
    held = [min(count - 1, max(1, round(fraction * count))) for count in counts if count > 1]
    return len(labels) - sum(held)


def expected_schedule(name: str, optimizer: optim.Optimizer, n_rows: int) -> lr_scheduler.LRScheduler:
    """The schedule each --schedule value promises, written from its help text."""
    if name == "step":
        return lr_scheduler.StepLR(optimizer, step_size=math.ceil(EPOCHS / 3), gamma=0.1)
    if name == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=EPOCHS, eta_min=0.0)
    if name == "onecycle":
        steps = math.ceil(n_rows / BATCH_SIZE)
        return lr_scheduler.OneCycleLR(optimizer, max_lr=LR, epochs=EPOCHS, steps_per_epoch=steps)
    return lr_scheduler.ReduceLROnPlateau(optimizer, factor=0.1, patience=cli.PLATEAU_PATIENCE, monitor="val_loss")


def api_run(
    backend: str, schedule: str | None, patience: int | None, clip_norm: float | None, dropout: float = 0.0,
    loss: str = "ce",
) -> fastopt.Sequential:  # fmt: skip
    """The run the command line promises, with the API: a 784-16-10 ReLU MLP (a Dropout after the hidden layer
    with ``dropout``), Adam, the mini dataset, the loss on the labels (bce: on their one-hot rows)."""
    X, y, _, _ = datasets.mini()
    after_hidden = [layers.Dropout(dropout)] if dropout else []
    model = fastopt.Sequential(
        [layers.Dense(784, HIDDEN), layers.ReLU(), *after_hidden, layers.Dense(HIDDEN, 10)], dtype="float32",
        seed=SEED, backend=backend,
    )  # fmt: skip
    optimizer = optim.Adam(lr=LR)
    chosen: list[callbacks.Callback] = []
    if patience is not None:
        chosen.append(callbacks.EarlyStopping(monitor="val_loss", patience=patience, restore_best_weights=True))
    if schedule is not None:
        chosen.append(expected_schedule(schedule, optimizer, training_rows(y, SPLIT)))
    targets = np.eye(10)[y] if loss == "bce" else y
    model.fit(
        X, targets, loss=LOSSES[loss], optimizer=optimizer, epochs=EPOCHS, batch_size=BATCH_SIZE, shuffle=True,
        seed=SEED, validation_split=SPLIT, callbacks=chosen, clip_norm=clip_norm,
    )  # fmt: skip
    return model


def cli_run(capsys, tmp_path, *options: str) -> tuple[fastopt.Sequential, str]:
    path = tmp_path / "model.npz"
    status = cli.main(["train", *COMMON, "--save", str(path), *options])
    out = capsys.readouterr().out
    assert status == 0, out
    return fastopt.load(path), out


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("schedule", cli.SCHEDULES)
def test_a_command_line_run_equals_the_api_run_it_describes(capsys, tmp_path, schedule, backend):
    """Validation split, early stopping (best weights kept), the schedule and clipping all on: the saved model is
    bit-identical to the API's. The onecycle schedule also proves the batch count of the split: a cycle longer
    than the run would end at another rate, a shorter one is refused by fit."""
    saved, out = cli_run(
        capsys, tmp_path, "--backend", backend, "--validation-split", str(SPLIT), "--early-stopping", "1",
        "--schedule", schedule, "--clip-norm", "0.5",
    )  # fmt: skip
    expected = api_run(backend, schedule, patience=1, clip_norm=0.5)
    assert np.array_equal(saved.parameters, expected.parameters)
    assert f"options: validation split {SPLIT:g}, early stopping (patience 1 on val_loss), {schedule} schedule" in out
    assert re.search(r"^epoch 1/4 .*val_loss \S+ .*learning_rate", out, re.MULTILINE), out


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropout_is_a_dropout_layer_after_each_hidden_layer(capsys, tmp_path, backend):
    saved, out = cli_run(capsys, tmp_path, "--backend", backend, "--validation-split", str(SPLIT), "--dropout", "0.3",
                         "--schedule", "cosine")  # fmt: skip
    assert [layer.config()["type"] for layer in saved.layers] == ["Dense", "ReLU", "Dropout", "Dense"]
    assert saved.layers[2].p == 0.3 and "dropout 0.3" in out
    expected = api_run(backend, "cosine", patience=None, clip_norm=None, dropout=0.3)
    assert np.array_equal(saved.parameters, expected.parameters)
    without = api_run(backend, "cosine", patience=None, clip_norm=None)
    assert not np.array_equal(saved.parameters, without.parameters)


def test_two_hidden_layers_get_two_dropouts(capsys, tmp_path):
    path = tmp_path / "model.npz"
    assert cli.main(["train", *QUICK, "--hidden", "8,4", "--dropout", "0.5", "--save", str(path)]) == 0
    names = [layer.config()["type"] for layer in fastopt.load(path).layers]
    assert names == ["Dense", "ReLU", "Dropout", "Dense", "ReLU", "Dropout", "Dense"]


@pytest.mark.parametrize("loss", ["ce", "bce", "mse", "huber"])
def test_each_loss_trains_the_run_the_api_describes(capsys, tmp_path, loss):
    """bce on ten classes: ten outputs, each a one-vs-rest logit trained on the labels' one-hot rows."""
    backend = BACKENDS[0]
    saved, out = cli_run(capsys, tmp_path, "--backend", backend, "--validation-split", str(SPLIT), "--loss", loss)
    expected = api_run(backend, None, patience=None, clip_norm=None, loss=loss)
    assert np.array_equal(saved.parameters, expected.parameters)
    _, _, X_test, y_test = datasets.mini()
    accuracy = np.mean(np.argmax(expected.predict(X_test), axis=1) == y_test)
    assert float(re.search(r"test accuracy (\S+)", out).group(1)) == pytest.approx(accuracy, abs=1e-4)


def test_bce_on_two_classes_has_one_output(capsys, tmp_path):
    """xor under bce: a single logit per sample, its test accuracy that of logit > 0, and fastopt predict with
    --loss bce gives the classes."""
    path = tmp_path / "xor.npz"
    assert cli.main(["train", *QUICK, "--loss", "bce", "--save", str(path)]) == 0
    out = capsys.readouterr().out
    assert "2 -> 4 -> 1 MLP" in out and "loss bce" in out
    model = fastopt.load(path)
    X, y = datasets.xor()
    accuracy = np.mean((model.predict(X)[:, 0] > 0) == y)
    assert float(re.search(r"test accuracy (\S+)", out).group(1)) == pytest.approx(accuracy, abs=1e-4)
    np.save(tmp_path / "x.npy", X)
    assert cli.main(["predict", str(path), str(tmp_path / "x.npy"), "--loss", "bce"]) == 0
    assert capsys.readouterr().out.split() == [str(int(logit > 0)) for logit in model.predict(X)[:, 0]]


def test_each_option_changes_the_run(capsys, tmp_path):
    """The equality above is not vacuous: without the clipping, or with another schedule, the model differs."""
    backend = BACKENDS[0]
    reference = api_run(backend, "cosine", patience=None, clip_norm=0.5).parameters
    for options in (("--schedule", "cosine"), ("--schedule", "step", "--clip-norm", "0.5")):
        saved, _ = cli_run(capsys, tmp_path, "--backend", backend, "--validation-split", str(SPLIT), *options)
        assert not np.array_equal(saved.parameters, reference)
    saved, _ = cli_run(capsys, tmp_path, "--backend", backend, "--validation-split", str(SPLIT), "--schedule",
                       "cosine", "--clip-norm", "0.5")  # fmt: skip
    assert np.array_equal(saved.parameters, reference)


def test_early_stopping_stops_and_keeps_the_best_epoch(capsys):
    """lr 0: the validation loss never changes, so patience 1 stops the run after its second epoch, keeping the
    first's weights."""
    status = cli.main(["train", *COMMON, "--optimizer", "sgd", "--lr", "0", "--early-stopping", "1",
                       "--validation-split", "0.1"])  # fmt: skip
    out = capsys.readouterr().out
    assert status == 0
    assert "epoch 2/4" in out and "epoch 3/4" not in out
    assert "stopped: early stopping: val_loss did not improve for 1 epochs" in out
    assert "kept the weights of epoch 1 (val_loss " in out


def test_without_a_split_early_stopping_watches_the_training_loss(capsys, tmp_path):
    backend = BACKENDS[0]
    saved, out = cli_run(capsys, tmp_path, "--backend", backend, "--early-stopping", "0")
    assert "early stopping (patience 0 on loss)" in out
    X, y, _, _ = datasets.mini()
    model = fastopt.Sequential([layers.Dense(784, HIDDEN), layers.ReLU(), layers.Dense(HIDDEN, 10)], seed=SEED,
                               backend=backend)  # fmt: skip
    early = callbacks.EarlyStopping(monitor="loss", patience=0, restore_best_weights=True)
    history = model.fit(X, y, optimizer=optim.Adam(lr=LR), epochs=EPOCHS, batch_size=BATCH_SIZE, seed=SEED,
                        callbacks=[early])  # fmt: skip
    assert np.array_equal(saved.parameters, model.parameters)
    assert (history.stop_reason == "completed") == ("stopped:" not in out)


def test_the_learning_rate_column_follows_the_schedule(capsys):
    """Cosine over 4 epochs from 2e-3: epoch e trains at 1e-3 (1 + cos(pi e / 4)), printed in the history."""
    assert cli.main(["train", *COMMON, "--schedule", "cosine"]) == 0
    printed = [float(rate) for rate in re.findall(r"learning_rate (\S+)", capsys.readouterr().out)]
    expected = [LR * (1 + math.cos(math.pi * epoch / EPOCHS)) / 2 for epoch in range(EPOCHS)]
    assert len(printed) == EPOCHS
    for value, rate in zip(printed, expected):
        assert value == pytest.approx(rate, abs=half_last_digit(rate))


def test_a_schedule_ends_the_one_cycle_at_its_final_rate(capsys):
    """onecycle: the last epoch's rate is max_lr / 25 / 1e4, reached only if the cycle is as long as the run."""
    assert cli.main(["train", *COMMON, "--schedule", "onecycle", "--validation-split", "0.3"]) == 0
    printed = [float(rate) for rate in re.findall(r"learning_rate (\S+)", capsys.readouterr().out)]
    assert printed[-1] == pytest.approx(LR / 25 / 1e4, abs=half_last_digit(LR / 25 / 1e4))


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_onecycle_cycles_momentum_only_where_the_optimizer_has_one(capsys, optimizer):
    """AdaGrad has neither momentum nor betas (PyTorch refuses cycle_momentum there); SGD's momentum cycles."""
    assert cli.main(["train", *COMMON, "--optimizer", optimizer, "--schedule", "onecycle"]) == 0
    assert "epoch 4/4" in capsys.readouterr().out


BAD_VALUES = [
    ("--validation-split", "1", "[0, 1)"),
    ("--validation-split", "-0.1", "[0, 1)"),
    ("--validation-split", "nan", "[0, 1)"),
    ("--validation-split", "x", "'x'"),
    ("--early-stopping", "-1", "non-negative integer"),
    ("--early-stopping", "1.5", "'1.5'"),
    ("--schedule", "linear", "linear"),
    ("--clip-norm", "0", "> 0"),
    ("--clip-norm", "-1", "> 0"),
    ("--clip-norm", "inf", "> 0"),
    ("--dropout", "1", "[0, 1)"),
    ("--dropout", "-0.5", "[0, 1)"),
    ("--loss", "hinge", "hinge"),
]


@pytest.mark.parametrize(("option", "value", "mentions"), BAD_VALUES, ids=lambda item: str(item))
def test_bad_values_exit_2_in_one_line(option, value, mentions):
    result = run("train", option, value, "--no-progress")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert option in lines[0] and mentions in lines[0]
    assert "epoch" not in result.stdout


def test_a_split_of_a_tiny_dataset_holds_out_a_row_of_each_class():
    """xor: two rows of each class; 0.5 holds out one of each, and the other two train."""
    result = run("train", "--dataset", "xor", "--hidden", "4", "--epochs", "1", "--batch-size", "4",
                 "--validation-split", "0.5", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"epoch 1/1 .*val_loss \S+ +val_accuracy (0\.0000|0\.5000|1\.0000) ", result.stdout), result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_crashed_command_line_run_resumes_bit_exactly(capsys, tmp_path, backend):
    """Every training option on, checkpoints every 5 batches: a run that dies at its 40th step, resumed by the same
    command with --resume, saves the model of the uninterrupted run (the callbacks, schedule and dropout masks
    come back from the checkpoint)."""
    options = ["--backend", backend, "--validation-split", "0.1", "--early-stopping", "1", "--schedule", "onecycle",
               "--clip-norm", "0.5", "--dropout", "0.2"]  # fmt: skip
    expected, _ = cli_run(capsys, tmp_path, *options)
    checkpointed = [*options, "--checkpoint", str(tmp_path / "run.ckpt"), "--checkpoint-every", "5", "--resume"]
    with pytest.MonkeyPatch.context() as patch:
        crash_at_step(patch, 40)
        assert cli.main(["train", *COMMON, *checkpointed]) == 1  # the crash: an unexpected error
    assert "internal error: Crash" in capsys.readouterr().err
    resumed, out = cli_run(capsys, tmp_path, *checkpointed)
    assert f"resuming from {tmp_path / 'run.ckpt'}" in out
    assert np.array_equal(resumed.parameters, expected.parameters)
