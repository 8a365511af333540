"""The ``fastopt`` command line: ``fastopt train``, ``fastopt bench`` and ``fastopt compare`` (also as
``python -m fastopt``)."""

from __future__ import annotations

import argparse
import io
import itertools
import math
import os
import re
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fastopt import data_files, datasets, layers, losses, optim
from fastopt._checks import as_features
from fastopt._io import OverwriteRefusedError, check_replaceable, write_bytes_atomic, write_text_atomic
from fastopt.backend import available_backends, backend_problems, get_backend, resolve_backend
from fastopt.callbacks import Callback, EarlyStopping, LambdaCallback
from fastopt.compare.spec import Study
from fastopt.history import COMPLETED, History
from fastopt.model import MODEL_FILE_KIND, Sequential, load
from fastopt.optim import lr_scheduler
from fastopt.training import _validation_rows  # the split fit makes: --schedule onecycle counts its batches


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line and exits with status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def _hidden_sizes(text: str) -> list[int]:
    """``--hidden``: comma-separated positive sizes ("" for no hidden layer; an empty size, as in ",,", is refused)."""
    try:
        sizes = [int(part) for part in text.split(",")] if text.strip() else []
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"--hidden must be comma-separated integers like 128,64, got {text!r}"
        ) from exc
    if any(size <= 0 for size in sizes):
        raise argparse.ArgumentTypeError(f"--hidden sizes must be positive, got {text!r}")
    return sizes


def _number(kind: type, description: str, accepts: Callable[[float], bool]) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` if it is finite and ``accepts`` it, else a one-line error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or not accepts(value):
            raise argparse.ArgumentTypeError(f"expected {description}, got {text!r}")
        return value

    parse.__name__ = description  # argparse names the type in its messages
    return parse


_positive_int = _number(int, "a positive integer", lambda value: value >= 1)
_non_negative_int = _number(int, "a non-negative integer", lambda value: value >= 0)
_non_negative_float = _number(float, "a finite number >= 0", lambda value: value >= 0)
_positive_float = _number(float, "a finite number > 0", lambda value: value > 0)
_fraction = _number(float, "a number in [0, 1)", lambda value: 0 <= value < 1)


def _checkpoint_every(text: str) -> int | str:
    if text == "epoch":
        return text
    try:
        return _positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive number of batches or 'epoch', got {text!r}") from None


def _add_debug_option(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument(
        "--debug", action="store_true", default=default, help="on a failure, show Python's traceback (exit status 1)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fastopt", description="Train small neural networks on CPU with fastopt.")
    _add_debug_option(parser, False)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_train_command(commands)
    _add_predict_command(commands)
    _add_bench_command(commands)
    _add_compare_command(commands)
    return parser


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    train = commands.add_parser(
        "train",
        help="train an MLP (default: 784-128-64-10 with Adam on the shipped Fashion-MNIST subset)",
        description="Train an MLP classifier and report per-epoch loss/accuracy, test accuracy and wall time.",
    )
    train.add_argument(
        "--dataset",
        default="mini",
        help="mini (shipped subset, no download), fashion-mnist, mnist, xor, or a folder of IDX files (default: mini)",
    )
    train.add_argument(
        "--optimizer", choices=sorted(optim.OPTIMIZERS), default="adam", help="optimizer (default: adam)"
    )
    train.add_argument("--lr", type=_non_negative_float, help="learning rate (default: the optimizer's own)")
    train.add_argument("--momentum", type=_non_negative_float, help="momentum for sgd and rmsprop (default 0)")
    train.add_argument(
        "--decay", type=_non_negative_float, default=0.0, help="lr_t = lr / (1 + decay (t - 1)) (default 0)"
    )
    train.add_argument(
        "--weight-decay",
        type=_non_negative_float,
        help="weight decay (added to the gradient; decoupled for adamw and lion)",
    )
    train.add_argument("--epochs", type=_positive_int, default=10, help="passes over the training set (default 10)")
    train.add_argument("--batch-size", type=_positive_int, default=32, help="mini-batch size (default 32)")
    train.add_argument("--hidden", type=_hidden_sizes, default=[128, 64], help="hidden layer sizes, e.g. 128,64")
    train.add_argument("--backend", help=f"backend name: {', '.join(available_backends())} (default: {get_backend()})")
    train.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="(default float32)")
    train.add_argument(
        "--seed", type=_non_negative_int, default=0, help="seed of initialization and shuffling (default 0)"
    )
    train.add_argument("--save", metavar="PATH", help="write the trained model to PATH (.npz)")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.add_argument(
        "--checkpoint", metavar="PATH", help="save the whole training state to PATH (atomically) as training goes"
    )
    train.add_argument(
        "--checkpoint-every",
        metavar="N|epoch",
        type=_checkpoint_every,
        help="checkpoint every N batches, or at the end of each epoch (default: epoch)",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint if it exists (bit-identical to an uninterrupted run); else start fresh",
    )
    train.add_argument(
        "--overwrite",
        action="store_true",
        help="let --save and --checkpoint replace a file that is not a fastopt model or checkpoint (refused otherwise)",
    )
    _add_training_options(train)
    _add_debug_option(train, argparse.SUPPRESS)  # SUPPRESS: ``fastopt --debug train`` keeps the top-level value


SCHEDULES = ("step", "cosine", "onecycle", "plateau")
LOSSES: dict[str, Callable[[], losses.Loss]] = {
    "ce": losses.CrossEntropy,
    "bce": losses.BinaryCrossEntropy,
    "mse": losses.MSE,
    "huber": losses.Huber,
}
PLATEAU_PATIENCE = 2  # epochs without improvement before --schedule plateau lowers the rate


def _add_training_options(train: argparse.ArgumentParser) -> None:
    """Validation, early stopping, schedules and clipping (``fit``'s options of the same names)."""
    train.add_argument(
        "--validation-split",
        type=_fraction,
        default=0.0,
        metavar="F",
        help="hold out a seeded fraction F of the training rows (of each class) for validation: val_loss and "
        "val_accuracy each epoch (default 0)",
    )
    train.add_argument(
        "--early-stopping",
        type=_non_negative_int,
        metavar="PATIENCE",
        help="stop when val_loss (the training loss without --validation-split) has not improved for PATIENCE "
        "epochs, and keep the weights of the best epoch",
    )
    train.add_argument(
        "--schedule",
        choices=SCHEDULES,
        help="learning-rate schedule: step (x0.1 every ceil(epochs/3) epochs), cosine (down to 0 over the epochs), "
        "onecycle (per batch, up to the optimizer's lr and down), plateau (x0.1 once val_loss, or the training "
        f"loss, has not improved for {PLATEAU_PATIENCE} epochs)",
    )
    train.add_argument(
        "--clip-norm",
        type=_positive_float,
        metavar="C",
        help="scale each batch's gradients down so that their global L2 norm is at most C",
    )
    train.add_argument(
        "--dropout",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="a Dropout(P) after each hidden layer: each activation zeroed with probability P while training "
        "(default 0: none)",
    )
    train.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="ce",
        help="ce: softmax cross-entropy (default); bce: binary cross-entropy on logits (one output for two "
        "classes, else one per class, one-vs-rest); mse, huber: on the one-hot rows of the labels",
    )


def _add_predict_command(commands: argparse._SubParsersAction) -> None:
    predict = commands.add_parser(
        "predict",
        help="predict with a saved model: classes (default), probabilities or outputs, one row per sample",
        description="Read a model written by 'fastopt train --save' (or model.save) and inputs, and write one "
        "prediction per sample, in the order of the inputs: its class (default), its class probabilities (--proba) "
        "or the model's outputs (--values), to stdout or to --output FILE.",
    )
    predict.add_argument("model", metavar="MODEL", help="a fastopt model file (.npz)")
    predict.add_argument(
        "data",
        metavar="DATA",
        help="the inputs, one sample per row: a .npy or .npz file (its array X, or its only array; images (N, 28, 28) "
        "are flattened), a .csv or .txt file of numbers (a header line is skipped), or a dataset as for train "
        "--dataset (its test images)",
    )
    kind = predict.add_mutually_exclusive_group()
    kind.add_argument(
        "--proba",
        action="store_true",
        help="class probabilities: the softmax of each row of outputs (ce), or the sigmoid of each output (bce)",
    )
    kind.add_argument("--values", action="store_true", help="the model's outputs (logits, or a regression's values)")
    predict.add_argument(
        "--loss",
        choices=sorted(LOSSES),
        default="ce",
        help="the loss the model was trained with, as for train --loss (default ce): classes are the largest output "
        "(ce, mse, huber) or each output's logit > 0 (bce); --proba needs ce or bce",
    )
    predict.add_argument(
        "--output",
        metavar="FILE",
        help="write to FILE (atomically) instead of stdout: a NumPy array if FILE ends in .npy, else text (one line "
        "per sample, values separated by commas)",
    )
    predict.add_argument("--overwrite", action="store_true", help="let --output replace an existing file")
    _add_debug_option(predict, argparse.SUPPRESS)


def _add_bench_command(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser(
        "bench",
        help="time numpy and cython backends (and PyTorch, scikit-learn when installed) side by side",
        description="Run one workload on every available implementation in one process, interleaved, and print "
        "medians, spreads, ratios and the fraction of the machine's physical floor.",
    )
    bench.add_argument(
        "--workload",
        choices=("epoch", "optim", "dense", "matrix", "predict", "sklearn"),
        default="epoch",
        help="epoch: one training epoch (60k samples); optim: Adam step at n=1e5 and 1e7; dense: forward+backward; "
        "matrix: training steps of three networks at batch 32 and 256; predict: inference at batch 1, 32, 1024; "
        "sklearn: scikit-learn's MLPs against fastopt.sklearn's (fit times and scores over seeds; --rounds seeds)",
    )
    bench.add_argument(
        "--batch-size",
        type=_positive_int,
        help="batch size (epoch default 32; dense default 32,128,512; matrix 32,256; predict 1,32,1024)",
    )
    bench.add_argument(
        "--rounds", type=_positive_int, default=5, help="interleaved rounds; medians over them (default 5)"
    )
    bench.add_argument("--samples", type=_positive_int, help="samples in the epoch workload (default 60000)")
    bench.add_argument(
        "--variant",
        choices=("plain", "full"),
        default="plain",
        help="epoch workload: plain, or full (dropout 0.2, clip_norm, a cosine schedule, early stopping on a "
        "validation split) timed beside the plain epoch and PyTorch's plain and full epochs",
    )
    bench.add_argument(
        "--threads", type=_positive_int, help="threads for every implementation (default: each library's own)"
    )
    bench.add_argument("--json", metavar="PATH", help="also write the measurements to PATH as JSON")
    _add_debug_option(bench, argparse.SUPPRESS)


def _add_compare_command(commands: argparse._SubParsersAction) -> None:
    compare = commands.add_parser(
        "compare",
        help="an optimizer or backend study on Dask (resumable), with results.csv, study.json and report.html",
        description="Run a grid of trainings (datasets x architectures x optimizers and their hyperparameter grids x "
        "seeds x backends) on a local Dask cluster or an existing one; rerunning skips finished runs and resumes "
        "unfinished ones. Or redraw the report of a study folder (--report DIR).",
    )
    source = compare.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        choices=("optimizers", "xor", "backends"),
        help="optimizers: SGD+momentum, AdaGrad, RMSProp, Adam on 784-128-64-10, Fashion-MNIST (default); xor: "
        "the XOR network with momentum, RMSProp, Adam; backends: the documents' settings on every backend",
    )
    source.add_argument("--spec", metavar="FILE", help="a study spec (.toml or .json; see fastopt.compare.spec)")
    source.add_argument("--report", metavar="DIR", help="only redraw DIR/report.html from an existing study folder")
    compare.add_argument("--out", metavar="DIR", help="the study folder (created if needed; shared by the workers)")
    compare.add_argument(
        "--scheduler", metavar="ADDRESS", help="a Dask scheduler's address (tcp://host:8786) or scheduler file "
        "(default: a local cluster of single-threaded worker processes)",
    )  # fmt: skip
    compare.add_argument(
        "--workers", type=_positive_int, help="worker processes of the local cluster (default: one per physical core)"
    )
    compare.add_argument("--seeds", type=_positive_int, help="seeds 0..K-1 instead of the spec's")
    compare.add_argument("--epochs", type=_positive_int, help="epochs per run instead of the spec's")
    compare.add_argument("--dataset", help="mini, fashion-mnist, mnist, xor or a folder of IDX files, for every run")
    compare.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_debug_option(compare, argparse.SUPPRESS)


def _load_dataset(name: str) -> datasets.Dataset:
    return datasets.load(name)


def _make_optimizer(args: argparse.Namespace) -> optim.Optimizer:
    options: dict[str, float] = {"decay": args.decay}
    if args.lr is not None:
        options["lr"] = args.lr
    if args.weight_decay is not None:
        options["weight_decay"] = args.weight_decay
    if args.momentum is not None:
        if args.optimizer not in ("sgd", "rmsprop"):
            raise ValueError(f"--momentum applies to sgd and rmsprop, not {args.optimizer}")
        options["momentum"] = args.momentum
    return optim.OPTIMIZERS[args.optimizer](**options)


def _format_value(value: float) -> str:
    """4 decimals; values below 1e-3 (a late learning rate) in exponent form, as Keras prints them."""
    return f"{value:.4e}" if 0 < abs(value) < 1e-3 else f"{value:.4f}"


def _format_logs(logs: dict[str, float]) -> str:
    return "  ".join(
        f"{key} {_format_value(value)}" if key != "seconds" else f"{value:.2f} s" for key, value in logs.items()
    )


def _check_train_options(args: argparse.Namespace) -> None:
    """What can be refused before loading data and training: the backend and the files to write."""
    if args.backend is not None and args.backend not in available_backends():
        reason = backend_problems().get(args.backend)
        raise ValueError(f"backend {args.backend!r} is not available" + (f": {reason}" if reason else ""))
    if args.save:  # before training, not after it
        _check_folder("--save", args.save)
        check_replaceable(args.save, MODEL_FILE_KIND, args.overwrite)
    if args.checkpoint is None and (args.checkpoint_every is not None or args.resume):
        raise ValueError(f"{'--resume' if args.resume else '--checkpoint-every'} needs --checkpoint PATH")
    if args.checkpoint:
        _check_folder("--checkpoint", args.checkpoint)


def _check_folder(option: str, path: str) -> None:
    """The folder a file is to be written in exists."""
    folder = Path(path).resolve().parent
    if not folder.is_dir():
        raise ValueError(f"{option} {path}: the folder {folder} does not exist")


def _build_model(sizes: list[int], args: argparse.Namespace) -> Sequential:
    """A ReLU MLP of the given layer sizes (with --dropout, a Dropout after each hidden layer); a model too large
    to allocate is reported with its size."""
    stack: list[layers.Layer] = []
    for index, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        stack.append(layers.Dense(n_in, n_out))
        if index < len(sizes) - 2:
            stack += [layers.ReLU(), *([layers.Dropout(args.dropout)] if args.dropout else [])]
    try:
        model = Sequential(stack, dtype=args.dtype, seed=args.seed, backend=args.backend)
    except (MemoryError, ValueError) as exc:  # ValueError: more elements than NumPy can index
        n_parameters = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(sizes))
        shape = "-".join(map(str, sizes))
        kind = MemoryError if isinstance(exc, MemoryError) else ValueError
        raise kind(f"a {shape} MLP has {n_parameters:,} parameters: {exc}") from exc
    return model


def _monitored_loss(args: argparse.Namespace) -> str:
    """What --early-stopping and --schedule plateau watch."""
    return "val_loss" if args.validation_split else "loss"


def _training_rows(model: Sequential, loss: losses.Loss, targets: np.ndarray, args: argparse.Namespace) -> int:
    """The number of rows ``fit`` trains on: those --validation-split leaves (``fit``'s own split: stratified by
    the class labels the loss finds in the targets, seeded alike)."""
    if not args.validation_split:
        return len(targets)
    labels = loss.targets(targets, model.out_features, model.dtype).labels
    return len(targets) - len(_validation_rows(labels, len(targets), args.validation_split, args.seed))


def _schedule(args: argparse.Namespace, optimizer: optim.Optimizer, n_rows: int) -> lr_scheduler.LRScheduler:
    if args.schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=-(-args.epochs // 3))
    if args.schedule == "cosine":
        return lr_scheduler.CosineAnnealingLR(optimizer, T_max=args.epochs)
    if args.schedule == "onecycle":
        return lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=optimizer.lr,
            epochs=args.epochs,
            steps_per_epoch=-(-n_rows // args.batch_size),
            cycle_momentum=any(key in optimizer.defaults for key in ("betas", "momentum")),
        )
    return lr_scheduler.ReduceLROnPlateau(optimizer, patience=PLATEAU_PATIENCE, monitor=_monitored_loss(args))


def _training_callbacks(args: argparse.Namespace, optimizer: optim.Optimizer, n_rows: int) -> list[Callback]:
    """The callbacks --early-stopping and --schedule ask for, and the per-epoch report; ``n_rows``: the rows each
    epoch trains on."""
    chosen: list[Callback] = []
    if args.early_stopping is not None:
        chosen.append(
            EarlyStopping(monitor=_monitored_loss(args), patience=args.early_stopping, restore_best_weights=True)
        )
    if args.schedule is not None:
        chosen.append(_schedule(args, optimizer, n_rows))
    report = LambdaCallback(
        on_epoch_end=lambda epoch, logs: print(f"epoch {epoch + 1}/{args.epochs}  {_format_logs(logs)}", flush=True)
    )
    return [*chosen, report]


def _describe_training_options(args: argparse.Namespace) -> str:
    chosen = [
        f"validation split {args.validation_split:g}" if args.validation_split else "",
        f"early stopping (patience {args.early_stopping} on {_monitored_loss(args)})"
        if args.early_stopping is not None
        else "",
        f"{args.schedule} schedule" if args.schedule else "",
        f"clip_norm {args.clip_norm:g}" if args.clip_norm is not None else "",
        f"dropout {args.dropout:g}" if args.dropout else "",
        f"loss {args.loss}" if args.loss != "ce" else "",
    ]
    return ", ".join(option for option in chosen if option)


def _report_stop(history: History, chosen: list[Callback]) -> None:
    """Say why the run ended early, and which epoch's weights early stopping kept."""
    if history.stop_reason != COMPLETED:
        print(f"stopped: {history.stop_reason}")
    for callback in chosen:
        if isinstance(callback, EarlyStopping) and callback.best is not None:
            print(f"kept the weights of epoch {callback.best_epoch + 1} ({callback.monitor} {callback.best:.4f})")


def _n_outputs(args: argparse.Namespace, n_classes: int) -> int:
    """One output (a logit) for two classes under bce, else one per class."""
    return 1 if args.loss == "bce" and n_classes == 2 else n_classes


def _fit_targets(labels: np.ndarray, n_outputs: int, args: argparse.Namespace) -> np.ndarray:
    """What ``fit`` takes for the labels: the labels themselves, or under bce with several outputs their one-hot
    rows (one binary target per class: one-vs-rest)."""
    if args.loss == "bce" and n_outputs > 1:
        return np.eye(n_outputs, dtype=np.float32)[labels]
    return labels


def _class_accuracy(model: Sequential, X: np.ndarray, labels: np.ndarray) -> float:
    """The fraction of samples whose predicted class is their label: the largest output, or with one output a
    logit > 0."""
    outputs = model.predict(X)
    predicted = outputs[:, 0] > 0 if outputs.shape[1] == 1 else np.argmax(outputs, axis=1)
    return float(np.mean(predicted == labels))


def train(args: argparse.Namespace) -> int:
    _check_train_options(args)
    X_train, y_train, X_test, y_test = _load_dataset(args.dataset)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    sizes = [X_train.shape[1], *args.hidden, _n_outputs(args, n_classes)]
    model, loss, optimizer = _build_model(sizes, args), LOSSES[args.loss](), _make_optimizer(args)
    targets = _fit_targets(y_train, sizes[-1], args)
    chosen = _training_callbacks(args, optimizer, _training_rows(model, loss, targets, args))
    print(
        f"fastopt: {' -> '.join(map(str, sizes))} MLP, {optimizer!r}, backend {model.backend}, {args.dtype}, "
        f"{len(X_train)} training and {len(X_test)} test samples from {args.dataset}"
    )
    if _describe_training_options(args):
        print(f"options: {_describe_training_options(args)}")
    if args.checkpoint:
        resuming = args.resume and Path(args.checkpoint).exists()
        print(f"{'resuming from' if resuming else 'checkpointing to'} {args.checkpoint}", flush=True)
    started = time.perf_counter()
    with np.errstate(all="ignore"):  # a diverging run is reported once, by fit's FloatingPointError
        history = model.fit(
            X_train, targets, loss=loss, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
            shuffle=True, seed=args.seed, progress=not args.no_progress, validation_split=args.validation_split,
            callbacks=chosen, clip_norm=args.clip_norm, checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every if args.checkpoint else None, resume=args.resume,
            overwrite=args.overwrite,
        )  # fmt: skip
    training_seconds = time.perf_counter() - started
    _report_stop(history, chosen)
    test_loss = model.evaluate(X_test, _fit_targets(y_test, sizes[-1], args), loss=loss)["loss"]
    accuracy = _class_accuracy(model, X_test, y_test)
    print(f"test loss {test_loss:.4f}  test accuracy {accuracy:.4f}  training time {training_seconds:.2f} s")
    if args.save:
        model.save(args.save, overwrite=args.overwrite)
        print(f"saved the model to {args.save}")
    return 0


def _check_output(args: argparse.Namespace) -> None:
    """--output: its folder exists; an existing file is replaced only with --overwrite, a folder never."""
    if args.output is None:
        return
    _check_folder("--output", args.output)
    target = Path(args.output)
    if target.is_dir():
        raise OverwriteRefusedError(f"--output {target} is a folder")
    if os.path.lexists(target) and not args.overwrite:
        raise OverwriteRefusedError(f"--output {target} exists; refusing to replace it (--overwrite replaces it)")


def _read_inputs(source: str) -> np.ndarray:
    """DATA: a file of samples, or a dataset's test images."""
    if Path(source).suffix.lower() in data_files.SUFFIXES:
        return data_files.read_features(source)
    if source in datasets.NAMES or Path(source).is_dir():
        return _load_dataset(source)[2]
    raise ValueError(
        f"DATA must be a {', '.join(data_files.SUFFIXES)} file, one of the datasets {', '.join(datasets.NAMES)} "
        f"or a folder of IDX files, got {source!r}"
    )


def _predictions(model: Sequential, inputs: np.ndarray, args: argparse.Namespace) -> np.ndarray:
    """What the command prints: the outputs, the probabilities or the classes of ``inputs``."""
    if args.values:
        return model.predict(inputs)
    loss = LOSSES[args.loss]()
    if model.out_features == 1 and not isinstance(loss, losses.BinaryCrossEntropy):
        raise ValueError(
            f"the model {args.model} has one output, which has no classes under {args.loss}: --loss bce for a binary "
            "classifier's classes (a logit > 0) or probabilities, --values for its outputs"
        )
    return model.predict_proba(inputs, loss=loss) if args.proba else model.predict_classes(inputs, loss=loss)


def _as_text(predictions: np.ndarray) -> str:
    """One line per sample, values separated by commas; floats with the digits that read back to the same bits."""
    if predictions.dtype.kind in "iub":
        form = "%d"
    else:
        form = "%.9g" if predictions.dtype == np.float32 else "%.17g"
    stream = io.StringIO()
    np.savetxt(stream, predictions, fmt=form, delimiter=",")
    return stream.getvalue()


def _write_predictions(predictions: np.ndarray, output: str | None) -> None:
    if output is None:
        sys.stdout.write(_as_text(predictions))
    elif Path(output).suffix.lower() == ".npy":
        stream = io.BytesIO()
        np.save(stream, predictions, allow_pickle=False)
        write_bytes_atomic(output, stream.getvalue())
    else:
        write_text_atomic(output, _as_text(predictions))


def predict(args: argparse.Namespace) -> int:
    _check_output(args)
    model = load(args.model)
    features = _read_inputs(args.data)
    inputs = as_features(features, model.in_features, model.dtype, resolve_backend(model.backend), name=args.data)
    predictions = _predictions(model, inputs, args)
    _write_predictions(predictions, args.output)
    if args.output is not None:
        print(f"wrote {len(predictions)} predictions to {args.output}")
    return 0


def _check_bench_options(args: argparse.Namespace) -> None:
    """Refuse an option the chosen workload would not read, rather than drop it silently: --variant and --samples
    are the epoch workload's; the sklearn workload reads only --rounds (its seeds) and times one and all threads
    itself."""
    if args.variant != "plain" and args.workload != "epoch":
        raise ValueError(f"--variant {args.variant} applies to --workload epoch, not {args.workload}")
    if args.samples is not None and args.workload != "epoch":
        raise ValueError(f"--samples applies to --workload epoch, not {args.workload}")
    if args.workload == "sklearn":
        given = [name for name in ("batch_size", "threads", "json") if getattr(args, name) is not None]
        if given:
            options = ", ".join("--" + name.replace("_", "-") for name in given)
            raise ValueError(f"{options} do not apply to --workload sklearn (it reads --rounds, its seeds)")


def bench(args: argparse.Namespace) -> int:
    _check_bench_options(args)
    if args.workload == "sklearn":
        from fastopt import bench_sklearn

        bench_sklearn.run(seeds=args.rounds)
        return 0
    from fastopt.benchmark import run

    run(args.workload, args.batch_size, args.rounds, args.json, n_samples=args.samples, threads=args.threads,
        variant=args.variant)  # fmt: skip
    return 0


def _compare_study(args: argparse.Namespace) -> Study:
    """The study the arguments describe: a spec file or a preset (default: optimizers), with the overrides."""
    study = Study.from_file(args.spec) if args.spec else Study.preset(args.preset or "optimizers")
    overrides = {"seeds": args.seeds, "epochs": args.epochs, "datasets": args.dataset and [args.dataset]}
    return study.replace(**{key: value for key, value in overrides.items() if value is not None})


def _check_compare_options(args: argparse.Namespace) -> None:
    if args.report is not None:
        given = [f"--{name.replace('_', '-')}" for name in ("out", "scheduler", "workers", "seeds", "epochs", "dataset")
                 if getattr(args, name) is not None]  # fmt: skip
        if given:
            raise ValueError(f"--report DIR redraws a report and takes no {given[0]}")
    elif args.out is None:
        raise ValueError("--out DIR is required: the study's folder")
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers sizes the local cluster; with --scheduler the cluster has its own workers")


def _draw_report(directory: Path) -> None:
    """Print the study's tables and draw its report.html."""
    from fastopt.compare.report import summary_text, write_report

    print(summary_text(directory))
    try:
        path = write_report(directory)
    except ImportError as exc:  # the study is done; its report can be drawn later with --report
        sys.stderr.write(f"fastopt: no report: {exc}\n")
        return
    print(f"wrote {path}")


def compare(args: argparse.Namespace) -> int:
    from fastopt.compare.execute import describe_scheduler, run_study

    _check_compare_options(args)
    if args.report is not None:
        _draw_report(Path(args.report))
        return 0
    study = _compare_study(args)
    print(f"fastopt compare: study {study.name!r}, {len(study.runs())} runs, in {args.out}, on "
          f"{describe_scheduler(args.scheduler, args.workers)}", flush=True)  # fmt: skip
    result = run_study(study, args.out, scheduler=args.scheduler, workers=args.workers,
                       progress=not args.no_progress, command=shlex.join(["fastopt", *args.argv]))  # fmt: skip
    print(
        f"{result.trained} runs trained or resumed, {result.finished_before} finished before, "
        f"{result.stopped_early} ended early (NaN/Inf); wrote {result.directory / 'results.csv'} and study.json"
    )
    _draw_report(result.directory)
    return 0


COMMANDS = {"train": train, "predict": predict, "bench": bench, "compare": compare}
BAD_INPUT = (ValueError, TypeError, ArithmeticError, OSError)  # FileFormatError and OverwriteRefusedError too


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command. A failure is one line on stderr: exit status 2 for bad input (arguments, files,
    data, a diverging run), 1 for a fault (out of memory, or any other error, which is a bug to report);
    ``--debug`` lets the exception through instead, with its traceback. 130 after Ctrl-C."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)  # bad arguments exit here, with status 2
    args.argv = argv
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        sys.stderr.write("fastopt: interrupted\n")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        return _report(exc)


def _report(exc: Exception) -> int:
    """Write ``exc`` as one line on stderr; return the exit status its kind means."""
    text = re.sub(r"\s*\n\s*", " ", str(exc)).strip() or type(exc).__name__
    if isinstance(exc, BAD_INPUT):
        sys.stderr.write(f"fastopt: error: {text}\n")
        return 2
    if isinstance(exc, ImportError):  # an optional package is missing: the message says which and how
        sys.stderr.write(f"fastopt: error: {text}\n")
        return 1
    if isinstance(exc, MemoryError):
        sys.stderr.write(f"fastopt: error: out of memory: {text}\n")
        return 1
    sys.stderr.write(f"fastopt: internal error: {type(exc).__name__}: {text} (--debug shows the traceback)\n")
    return 1
