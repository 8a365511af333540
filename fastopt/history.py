"""What a run of ``fit`` records: its ``History`` (per-epoch metrics, why it stopped) and its ``Progress`` (where
it is inside an epoch). Both sit below the training loop and the checkpoints, which read and write them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

COMPLETED = "completed"


@dataclass
class History:
    """Per-epoch metrics of ``fit``: ``history["loss"]``, ``["accuracy"]``, ``["val_loss"]``, ``["val_accuracy"]``,
    ``["seconds"]`` (and ``["learning_rate"]``, ``["skipped_batches"]`` when they apply). ``epochs`` numbers the
    recorded epochs from 1. ``stop_reason`` says why the run ended: ``"completed"`` (every epoch ran), or the
    callback or event that stopped it (early stopping, a non-finite loss, a callback setting
    ``model.stop_training``); empty while the run is in progress."""

    history: dict[str, list[float]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)
    stop_reason: str = ""

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        """Record epoch ``epoch`` (1-based). A key first seen now gets NaN for the earlier epochs, so that every list
        has one value per recorded epoch."""
        for key in logs:
            self.history.setdefault(key, [float("nan")] * len(self.epochs))
        self.epochs.append(epoch)
        for key, values in self.history.items():
            values.append(logs.get(key, float("nan")))

    def plot(
        self, metrics: str | tuple[str, ...] | None = None, path: str | os.PathLike[str] | None = None, title: str = ""
    ) -> Any:
        """Draw the curves with matplotlib (the ``fastopt[plot]`` extra): one panel per metric, the training value
        and its ``val_`` counterpart together, against the epoch (1-based). ``metrics`` chooses them (a name or a
        tuple; default: every key but ``seconds``, ``learning_rate``, ``skipped_batches`` and the ``val_`` ones);
        ``path`` also saves the figure there (the format from its suffix). Drawn with pyplot on its current backend
        (never switched: figures already open stay); returns the matplotlib Figure."""
        try:
            import matplotlib.pyplot as plt
        except ImportError as exc:
            raise ImportError("History.plot needs matplotlib: pip install 'fastopt[plot]'") from exc
        names = (metrics,) if isinstance(metrics, str) else metrics or tuple(
            key
            for key in self.history
            if not key.startswith("val_") and key not in ("seconds", "learning_rate", "skipped_batches")
        )  # fmt: skip
        if not names:
            raise ValueError("the history holds no metric to plot")
        for name in names:
            if name not in self.history:
                raise ValueError(f"the history has no {name!r}; it has {sorted(self.history)}")
        figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
        for axis, name in zip(axes[0], names):
            self._plot_metric(axis, name)
        if title:
            figure.suptitle(title)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
        return figure

    def _plot_metric(self, axis: Any, name: str) -> None:
        axis.plot(self.epochs, self.history[name], marker="o", label=name)
        if f"val_{name}" in self.history:
            axis.plot(self.epochs, self.history[f"val_{name}"], marker="s", label=f"val_{name}")
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)  # epochs are whole numbers
        axis.set_ylabel(name)
        axis.grid(alpha=0.3)
        axis.legend()


@dataclass
class Progress:
    """Where a run is: the epoch in progress (1-based), its next batch, batches processed since the run
    began, and the epoch's partial sums: the loss summed over samples (each batch's mean times its weight), the
    weight counted (the number of samples, or the sum of their weights), correct predictions, samples counted,
    skipped batches and seconds."""

    epoch: int = 1
    batch: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    weight_sum: float = 0.0
    correct: int = 0
    samples: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def start_next_epoch(self) -> None:
        self.epoch += 1
        self.batch = 0
        self.loss_sum, self.weight_sum, self.seconds = 0.0, 0.0, 0.0
        self.correct, self.samples, self.skipped = 0, 0, 0
