"""What a study runs: a grid of datasets x architectures x optimizers (each with its hyperparameter grid) x seeds x
backends, given as keyword arguments, a TOML or JSON file, or a preset; each grid point is a ``RunSpec`` with a stable
id made from everything that decides its result.

A spec (the keys of a file are ``Study``'s arguments)::

    name = "my study"
    datasets = ["fashion-mnist"]          # mini, fashion-mnist, mnist, xor, or a folder of IDX files
    architectures = [[128, 64]]           # hidden layer sizes; input and output sizes come from the data
    activation = "relu"                   # relu, tanh, sigmoid
    seeds = 3                             # 0, 1, 2 (or a list); each seeds the initialization and the shuffling
    epochs = 10
    batch_size = 32
    metric = "val_accuracy"               # the final value that picks each optimizer's best setting
    threshold = 0.87                      # the report counts the epochs to reach it

    [[optimizers]]
    name = "sgd"                          # a name of fastopt.optim.OPTIMIZERS
    label = "SGD momentum"                # the name in the report (default: the class name)
    lr = [0.015, 0.05, 0.15]              # a list is a grid; a single value is fixed
    momentum = 0.9
    decay = 1e-4
    schedule = { name = "CosineAnnealingLR", T_max = 10 }   # optional, a fastopt.optim.lr_scheduler class

A hyperparameter whose value is a pair (``betas``) is one value when given as ``[0.9, 0.999]`` and a grid when given
as a list of pairs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastopt import datasets, layers, losses, optim
from fastopt._checks import check_positive_int
from fastopt.backend import available_backends, backend_problems, get_backend
from fastopt.callbacks import Callback
from fastopt.optim import lr_scheduler

if TYPE_CHECKING:
    from fastopt.compare.execute import StudyResult

ACTIVATIONS: dict[str, type[layers.Layer]] = {"relu": layers.ReLU, "tanh": layers.Tanh, "sigmoid": layers.Sigmoid}
LOSSES: dict[str, type[losses.Loss]] = {"cross_entropy": losses.CrossEntropy, "mse": losses.MSE}
# The schedules made from numbers alone (SequentialLR chains other schedulers, so it has no place in a spec).
SCHEDULES: dict[str, type[lr_scheduler.LRScheduler]] = {
    cls.__name__: cls
    for cls in (
        lr_scheduler.StepLR, lr_scheduler.MultiStepLR, lr_scheduler.ExponentialLR, lr_scheduler.CosineAnnealingLR,
        lr_scheduler.LinearLR, lr_scheduler.InvScalingLR, lr_scheduler.OneCycleLR, lr_scheduler.ReduceLROnPlateau,
    )
}  # fmt: skip
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
DTYPES = ("float32", "float64")


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data: tuples as lists, NumPy scalars as Python numbers, mappings with sorted keys."""
    if isinstance(value, Mapping):
        return {str(key): canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return value.item()
    return value


def _hyperparameter_defaults(cls: type[optim.Optimizer]) -> dict[str, Any]:
    """The keyword arguments an optimizer's constructor takes, with their defaults."""
    parameters = inspect.signature(cls.__init__).parameters
    return {name: p.default for name, p in parameters.items() if name not in ("self", "params")}


def _grid_values(value: Any, pair_valued: bool, where: str) -> tuple[Any, ...]:
    """The values a spec gives one hyperparameter: a list is a grid, anything else one value; for a hyperparameter
    whose value is a pair, a flat list of numbers is one value and a list of lists a grid."""
    if not isinstance(value, (list, tuple)):
        return (value,)
    if pair_valued and not any(isinstance(item, (list, tuple)) for item in value):
        return (tuple(value),)
    if not value:
        raise ValueError(f"{where}: an empty list of values")
    values = tuple(tuple(item) if isinstance(item, list) else item for item in value)
    if len(set(map(repr, values))) != len(values):
        raise ValueError(f"{where}: the grid {list(value)!r} repeats a value")
    return values


@dataclass(frozen=True)
class OptimizerGrid:
    """One optimizer of a study with its hyperparameter grid (each name with the values tried) and an optional
    learning-rate schedule (a ``fastopt.optim.lr_scheduler`` class name and its arguments)."""

    name: str
    label: str
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    schedule: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, entry: object, where: str) -> OptimizerGrid:
        """Read and check one entry of a spec's ``optimizers``: every setting of its grid is built once."""
        if not isinstance(entry, Mapping):
            raise TypeError(f"{where} must be a table such as {{name = 'adam', lr = [1e-3, 1e-2]}}, got {entry!r}")
        entry = dict(entry)
        name = entry.pop("name", None)
        if name not in optim.OPTIMIZERS:
            raise ValueError(f"{where}: name must be one of {', '.join(optim.OPTIMIZERS)}, got {name!r}")
        optimizer_class = optim.OPTIMIZERS[name]
        label = entry.pop("label", optimizer_class.__name__)
        if not isinstance(label, str) or not label.strip():
            raise ValueError(f"{where}: label must be a non-empty string, got {label!r}")
        schedule = entry.pop("schedule", None)
        defaults = _hyperparameter_defaults(optimizer_class)
        unknown = sorted(set(entry) - set(defaults))
        if unknown:
            raise ValueError(f"{where}: {optimizer_class.__name__} has no hyperparameter {unknown[0]!r}; "
                             f"it takes {', '.join(defaults)}")  # fmt: skip
        grid = tuple((key, _grid_values(entry[key], isinstance(defaults[key], tuple), f"{where}.{key}"))
                     for key in sorted(entry))  # fmt: skip
        parsed = cls(name, label, grid, _parse_schedule(schedule, f"{where}.schedule"))
        for setting in parsed.settings():
            parsed.check(setting, where)
        return parsed

    def settings(self) -> list[dict[str, Any]]:
        """Every point of the grid, as constructor keyword arguments."""
        names = [name for name, _ in self.grid]
        return [dict(zip(names, values)) for values in itertools.product(*(values for _, values in self.grid))]

    def make(self, setting: dict[str, Any]) -> optim.Optimizer:
        return optim.OPTIMIZERS[self.name](**setting)

    def check(self, setting: dict[str, Any], where: str) -> None:
        """Build the optimizer (and its schedule) of one setting; a refused value names the entry."""
        try:
            optimizer = self.make(setting)
            if self.schedule:
                make_schedule(self.schedule, optimizer)
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"{where} ({self.label}, {canonical(setting)}): {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        values = {name: list(found) if len(found) > 1 else found[0] for name, found in self.grid}
        schedule = {"schedule": dict(self.schedule)} if self.schedule else {}
        return canonical({"name": self.name, "label": self.label, **values, **schedule})


def _parse_schedule(schedule: object, where: str) -> tuple[tuple[str, Any], ...]:
    if schedule is None:
        return ()
    if not isinstance(schedule, Mapping) or schedule.get("name") not in SCHEDULES:
        raise ValueError(f"{where} must be a table whose name is one of {', '.join(SCHEDULES)}, got {schedule!r}")
    return tuple(sorted((key, tuple(value) if isinstance(value, list) else value) for key, value in schedule.items()))


def make_schedule(schedule: tuple[tuple[str, Any], ...], optimizer: optim.Optimizer) -> lr_scheduler.LRScheduler:
    """The scheduler a spec's ``schedule`` names, for ``optimizer``."""
    options = dict(schedule)
    return SCHEDULES[options.pop("name")](optimizer, **options)


@dataclass(frozen=True)
class RunSpec:
    """One training of a study: ``Sequential.fit`` of an MLP with ``hidden`` layers on ``dataset``, with every
    hyperparameter of its optimizer given (``hyperparameters``: the constructor's defaults resolved)."""

    dataset: str
    hidden: tuple[int, ...]
    activation: str
    loss: str
    optimizer: str
    label: str
    hyperparameters: tuple[tuple[str, Any], ...]
    schedule: tuple[tuple[str, Any], ...]
    seed: int
    backend: str
    dtype: str
    epochs: int
    batch_size: int
    validation: str | float | None
    threads: int
    checkpoint_every: int | str = "epoch"

    def identity(self) -> dict[str, Any]:
        """What decides the run's result (all but the label and the checkpoint cadence), as JSON data."""
        fields = dataclasses.asdict(self)
        del fields["label"], fields["checkpoint_every"]
        fields["hyperparameters"], fields["schedule"] = dict(self.hyperparameters), dict(self.schedule)
        return canonical(fields)

    @property
    def run_id(self) -> str:
        """``<optimizer>-<16 hex digits of the SHA-256 of identity()>``: the same on every machine and every rerun."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return f"{self.optimizer}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def make_optimizer(self) -> optim.Optimizer:
        return optim.OPTIMIZERS[self.optimizer](**dict(self.hyperparameters))

    def make_callbacks(self, optimizer: optim.Optimizer) -> list[Callback]:
        return [make_schedule(self.schedule, optimizer)] if self.schedule else []

    def to_dict(self) -> dict[str, Any]:
        return dict(self.identity(), label=self.label, checkpoint_every=self.checkpoint_every, run_id=self.run_id)


# ------------------------------------------------------------------------------------------ checks of a Study
def _names(value: object, what: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not names or not all(isinstance(name, str) for name in names):
        raise TypeError(f"{what} must be a name or a non-empty list of names, got {value!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeats a name: {list(names)!r}")
    return tuple(names)


def _dataset(name: str) -> str:
    """A dataset name, or a folder of IDX files as an absolute path (workers do not share the caller's folder)."""
    if name in datasets.NAMES:
        return name
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    raise ValueError(f"datasets: {name!r} is neither one of {', '.join(datasets.NAMES)} nor a folder")


def _architectures(value: object) -> tuple[tuple[int, ...], ...]:
    if not isinstance(value, (list, tuple)) or not value or not all(isinstance(a, (list, tuple)) for a in value):
        raise TypeError(f"architectures must be a list of hidden-layer size lists such as [[128, 64]], got {value!r}")
    found = tuple(tuple(check_positive_int(size, "a hidden layer size") for size in sizes) for sizes in value)
    if len(set(found)) != len(found):
        raise ValueError(f"architectures repeats one: {[list(a) for a in value]!r}")
    return found


def _seeds(value: object) -> tuple[int, ...]:
    if isinstance(value, (list, tuple)):
        if not value or len(set(value)) != len(value):
            raise ValueError(f"seeds must be a non-empty list of distinct integers, got {value!r}")
        for seed in value:
            if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
                raise ValueError(f"seeds must be integers >= 0, got {seed!r}")
        return tuple(value)
    return tuple(range(check_positive_int(value, "seeds")))


def _backends(value: object) -> tuple[str, ...]:
    names = (get_backend(),) if value is None else available_backends() if value == "all" else _names(value, "backends")
    for name in names:
        if name not in available_backends():
            reason = backend_problems().get(name)
            raise ValueError(f"backend {name!r} is not available here" + (f": {reason}" if reason else ""))
    return tuple(names)


def _choice(value: object, choices: Sequence[str], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return str(value)


def _validation(value: object) -> str | float | None:
    if value is None or value == "test":
        return value  # type: ignore[return-value]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"validation must be 'test', a fraction in (0, 1) held out of the training set, or None; "
                         f"got {value!r}")  # fmt: skip
    return float(value)


def _threshold(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number or None, got {value!r}")
    return float(value)


def _checkpoint_every(value: object) -> int | str:
    return value if value == "epoch" else check_positive_int(value, "checkpoint_every")  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------ the study
@dataclass(frozen=True)
class Study:
    """An optimizer (or backend) study: every combination of ``datasets`` x ``architectures`` x each optimizer's
    hyperparameter grid x ``seeds`` x ``backends`` is one run, an ordinary ``Sequential.fit`` of an MLP
    (``activation`` between its layers, ``loss``, ``epochs``, ``batch_size``, ``dtype``) checkpointed in the study's
    folder. ``validation="test"`` evaluates the test set after each epoch (the ``val_*`` metrics), a fraction holds
    that much of the training set out instead (``fit``'s ``validation_split``), None evaluates nothing. ``metric``'s
    final value (mean over seeds) picks each optimizer's best setting in the report; ``threshold`` is the value of
    that metric whose epochs-to-reach the report counts (default: the worst of the best settings' final values).
    Each run uses ``threads`` threads (fastopt's kernels and BLAS); the default of 1 suits one single-threaded worker
    process per core. All arguments are checked here: a refused value raises ``ValueError`` or ``TypeError``."""

    optimizers: Sequence[Mapping[str, Any]]
    name: str = "study"
    datasets: Sequence[str] = ("mini",)
    architectures: Sequence[Sequence[int]] = ((128, 64),)
    activation: str = "relu"
    loss: str = "cross_entropy"
    seeds: int | Sequence[int] = 3
    backends: Sequence[str] | str | None = None
    epochs: int = 10
    batch_size: int = 32
    dtype: str = "float32"
    validation: str | float | None = "test"
    metric: str = "val_accuracy"
    threshold: float | None = None
    checkpoint_every: int | str = "epoch"
    threads: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        if not isinstance(self.optimizers, (list, tuple)) or not self.optimizers:
            raise TypeError(f"optimizers must be a non-empty list of tables, got {self.optimizers!r}")
        grids = tuple(entry if isinstance(entry, OptimizerGrid) else OptimizerGrid.parse(entry, f"optimizers[{i}]")
                      for i, entry in enumerate(self.optimizers))  # fmt: skip
        labels = [grid.label for grid in grids]
        if len(set(labels)) != len(labels):
            raise ValueError(f"two optimizers share a label ({labels}): give each its own label")
        validation = _validation(self.validation)
        metric = _choice(self.metric, METRICS if validation is not None else METRICS[:2], "metric")
        checked = {
            "optimizers": grids, "datasets": tuple(map(_dataset, _names(self.datasets, "datasets"))),
            "architectures": _architectures(self.architectures), "seeds": _seeds(self.seeds),
            "activation": _choice(self.activation, tuple(ACTIVATIONS), "activation"),
            "loss": _choice(self.loss, tuple(LOSSES), "loss"), "backends": _backends(self.backends),
            "epochs": check_positive_int(self.epochs, "epochs"),
            "batch_size": check_positive_int(self.batch_size, "batch_size"),
            "dtype": _choice(self.dtype, DTYPES, "dtype"), "validation": validation, "metric": metric,
            "threshold": _threshold(self.threshold), "checkpoint_every": _checkpoint_every(self.checkpoint_every),
            "threads": check_positive_int(self.threads, "threads"),
        }  # fmt: skip
        for key, value in checked.items():
            object.__setattr__(self, key, value)
        self.runs()  # refuses a grid that names one run twice

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> Study:
        """A study from a spec's keys (``Study``'s arguments); an unknown key is refused."""
        if not isinstance(spec, Mapping):
            raise TypeError(f"a study spec must be a table of Study's arguments, got {type(spec).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(spec) - known)
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r} in the study spec; the keys are {', '.join(sorted(known))}")
        if "optimizers" not in spec:
            raise ValueError("the study spec has no optimizers")
        return cls(**spec)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> Study:
        """A study from a ``.toml`` or ``.json`` spec file."""
        return cls.from_dict(read_spec_file(path))

    @classmethod
    def preset(cls, name: str) -> Study:
        """One of ``PRESETS``: ``"optimizers"``, ``"xor"``, ``"backends"``."""
        if name not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)}, got {name!r}")
        return cls.from_dict(PRESETS[name]())

    def replace(self, **changes: Any) -> Study:
        """A copy with some arguments changed (and checked again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The spec as JSON data (``Study.from_dict`` reads it back)."""
        spec = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        spec["optimizers"] = [grid.to_dict() for grid in self.optimizers]  # type: ignore[union-attr]
        return canonical(spec)

    def runs(self) -> list[RunSpec]:
        """Every run, in a fixed order: dataset, architecture, optimizer, setting, seed, backend."""
        runs: list[RunSpec] = []
        seen: dict[str, str] = {}
        grids: tuple[OptimizerGrid, ...] = self.optimizers  # type: ignore[assignment]
        for dataset, hidden, grid in itertools.product(self.datasets, self.architectures, grids):
            for setting, seed, backend in itertools.product(grid.settings(), self.seeds, self.backends):  # type: ignore[arg-type]
                resolved = tuple(sorted(grid.make(setting).defaults.items()))
                run = RunSpec(dataset, tuple(hidden), self.activation, self.loss, grid.name, grid.label, resolved,
                              grid.schedule, seed, backend, self.dtype, self.epochs, self.batch_size,
                              self.validation, self.threads, self.checkpoint_every)  # fmt: skip
                if run.run_id in seen:
                    raise ValueError(f"the study names one run twice ({seen[run.run_id]} and {run.label}: the same "
                                     f"resolved hyperparameters {canonical(dict(run.hyperparameters))})")  # fmt: skip
                seen[run.run_id] = run.label
                runs.append(run)
        return runs

    def run(
        self,
        out: str | os.PathLike[str],
        scheduler: object = None,
        workers: int | None = None,
        progress: bool = True,
    ) -> StudyResult:
        """Run every run not finished yet in the folder ``out`` and write ``results.csv`` and ``study.json`` there
        (see ``fastopt.compare.execute.run_study``). ``scheduler``: None (a ``LocalCluster`` of ``workers``
        single-threaded worker processes, default one per core), a Dask scheduler's address or scheduler file, a
        ``distributed.Client``, or ``"serial"`` (this process, no Dask)."""
        from fastopt.compare.execute import run_study

        return run_study(self, out, scheduler=scheduler, workers=workers, progress=progress)


def read_spec_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The table in a ``.toml`` or ``.json`` file; a missing, unreadable or malformed file is a one-line error."""
    path = Path(path)
    if path.suffix not in (".toml", ".json"):
        raise ValueError(f"spec {path}: the file must end in .toml or .json")
    text = path.read_text(encoding="utf-8")  # FileNotFoundError names the path
    try:
        if path.suffix == ".json":
            return json.loads(text)
        return _toml_module().loads(text)
    except ValueError as exc:  # JSONDecodeError and TOMLDecodeError are ValueErrors
        raise ValueError(f"spec {path}: {exc}") from None


def _toml_module() -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise ValueError(
                "reading a TOML spec needs Python 3.11 or the tomli package; or write it as JSON"
            ) from None
    return tomllib


# ------------------------------------------------------------------------------------------ presets
def _document_optimizers(grid: bool) -> list[dict[str, Any]]:
    """The digits document's four optimizers at the settings of the README's "Measured accuracy" (SGD lr 0.05 with
    momentum 0.9 and decay 1e-4, AdaGrad 0.01, RMSProp 0.001, Adam 0.001), each also at 0.3x and 3x its learning
    rate when ``grid``."""
    settings = [
        ({"name": "sgd", "label": "SGD momentum", "momentum": 0.9, "decay": 1e-4}, [0.015, 0.05, 0.15]),
        ({"name": "adagrad"}, [0.003, 0.01, 0.03]),
        ({"name": "rmsprop"}, [0.0003, 0.001, 0.003]),
        ({"name": "adam"}, [0.0003, 0.001, 0.003]),
    ]
    return [dict(entry, lr=rates if grid else rates[1]) for entry, rates in settings]


def _optimizers_preset() -> dict[str, Any]:
    return {
        "name": "optimizers", "datasets": ["fashion-mnist"], "architectures": [[128, 64]], "epochs": 10,
        "batch_size": 32, "seeds": 3, "optimizers": _document_optimizers(grid=True), "metric": "val_accuracy",
        "threshold": 0.87,
    }  # fmt: skip


def _backends_preset() -> dict[str, Any]:
    return dict(_optimizers_preset(), name="backends", optimizers=_document_optimizers(grid=False), backends="all")


def _xor_preset() -> dict[str, Any]:
    return {
        "name": "xor", "datasets": ["xor"], "architectures": [[8]], "activation": "sigmoid", "epochs": 300,
        "batch_size": 4, "seeds": 3, "metric": "val_loss", "threshold": 0.1, "checkpoint_every": 100,
        "optimizers": [
            {"name": "sgd", "label": "SGD momentum", "momentum": 0.9, "lr": [0.03, 0.1, 0.3]},
            {"name": "rmsprop", "lr": [0.003, 0.01, 0.03]},
            {"name": "adam", "lr": [0.003, 0.01, 0.03]},
        ],
    }  # fmt: skip


PRESETS = {"optimizers": _optimizers_preset, "xor": _xor_preset, "backends": _backends_preset}
