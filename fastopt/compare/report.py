"""A study's report, ``report.html``: self-contained (its images embedded as base64 PNGs), drawn with matplotlib from
``results.csv`` and ``study.json`` alone, in the conventions of optimizer benchmarks such as DeepOBS (Schneider et al.,
2019).

For each dataset, architecture and backend: each optimizer's best setting (the best mean over seeds of the final value
of the study's ``metric``; a setting with a run that ended early, on a NaN or Inf, is never best) drawn as test (or
validation) and training loss and accuracy against the epoch, the mean over seeds with a band of one standard
deviation; the learning-rate sensitivity (the final metric against the learning rate, log axis, one line per optimizer,
the best of the other hyperparameters at each rate); and a table of the best settings with the mean ± standard
deviation of their final metrics, the epochs their mean curve takes to reach ``threshold`` and their median time per
epoch. When a study has several backends: each backend's time per epoch, its ratio to the reference backend's (numpy's
when present) and the largest difference between the results of the same run on two backends.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastopt.compare.execute import REPORT_FILE, RESULTS_FILE, read_study_file
from fastopt.history import COMPLETED

REFERENCE_BACKEND = "numpy"
COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


# ------------------------------------------------------------------------------------------ reading
@dataclass
class RunCurves:
    """One run's rows of ``results.csv``: its metrics by epoch."""

    run: str
    optimizer: str
    setting: tuple[tuple[str, str], ...]
    seed: str
    backend: str
    section: tuple[str, str]
    stop_reason: str
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    def final(self, metric: str, epochs: int) -> float:
        """The metric after the last epoch; NaN for a run that ended early."""
        values = self.metrics.get(metric)
        if values is None or len(values) != epochs or self.stop_reason != COMPLETED:
            return math.nan
        return float(values[-1])


def _number(text: str) -> float:
    return float(text) if text else math.nan


def read_runs(directory: Path, study: dict[str, Any]) -> list[RunCurves]:
    """The runs in ``results.csv``, in its order."""
    hyper, metrics = study["columns"]["hyperparameters"], study["columns"]["metrics"]
    runs: dict[str, RunCurves] = {}
    with open(directory / RESULTS_FILE, newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    for row in rows:
        run = runs.get(row["run"])
        if run is None:
            setting = tuple((name, row[name]) for name in (*hyper, "schedule") if row[name])
            run = runs[row["run"]] = RunCurves(row["run"], row["optimizer"], setting, row["seed"], row["backend"],
                                               (row["dataset"], row["architecture"]), row["stop_reason"])  # fmt: skip
        for metric in metrics:
            run.metrics.setdefault(metric, []).append(_number(row[metric]))  # type: ignore[attr-defined]
    for run in runs.values():
        run.metrics = {name: np.array(values, dtype=np.float64) for name, values in run.metrics.items()}
    return list(runs.values())


# ------------------------------------------------------------------------------------------ settings
@dataclass
class Setting:
    """One optimizer setting (a point of its grid) and its runs, one per seed."""

    optimizer: str
    values: tuple[tuple[str, str], ...]
    runs: list[RunCurves]

    def finals(self, metric: str, epochs: int) -> np.ndarray:
        return np.array([run.final(metric, epochs) for run in self.runs])

    def score(self, metric: str, epochs: int) -> float:
        """The mean over seeds of the final metric; NaN if a run ended early."""
        return float(np.mean(self.finals(metric, epochs)))

    def curve(self, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Epochs, mean and standard deviation over seeds (sample, ddof=1; 0 for one seed) of the epochs all
        runs have."""
        length = min(len(run.metrics[metric]) for run in self.runs)
        values = np.array([run.metrics[metric][:length] for run in self.runs])
        spread = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(length)
        return np.arange(1, length + 1), values.mean(axis=0), spread

    def lr(self) -> float:
        return _number(dict(self.values).get("lr", ""))

    def seconds_per_epoch(self) -> float:
        return float(np.median(np.concatenate([run.metrics["seconds"] for run in self.runs])))

    def describe(self, given: Sequence[str]) -> str:
        """The hyperparameters the spec gives this optimizer (and its schedule), with this setting's values."""
        values = dict(self.values)
        return ", ".join(f"{name} {values[name]}" for name in (*given, "schedule") if name in values) or "defaults"


def group_settings(runs: Sequence[RunCurves]) -> list[Setting]:
    """The runs grouped by optimizer and setting, in order of appearance."""
    settings: dict[tuple, Setting] = {}
    for run in runs:
        key = (run.optimizer, run.setting)
        settings.setdefault(key, Setting(run.optimizer, run.setting, [])).runs.append(run)
    return list(settings.values())


def higher_is_better(metric: str) -> bool:
    return "loss" not in metric


def best_settings(settings: Sequence[Setting], metric: str, epochs: int) -> dict[str, Setting]:
    """Each optimizer's best setting by ``score``; optimizers whose every setting has a run that ended early have
    none."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    best: dict[str, Setting] = {}
    for setting in settings:
        score = setting.score(metric, epochs)
        current = best.get(setting.optimizer)
        if math.isfinite(score) and (current is None or sign * score > sign * current.score(metric, epochs)):
            best[setting.optimizer] = setting
    return best


def epochs_to_reach(setting: Setting, metric: str, threshold: float) -> int | None:
    """The first epoch whose mean over seeds reaches ``threshold`` (at least it, or at most it for a loss)."""
    epochs, mean, _ = setting.curve(metric)
    reached = mean >= threshold if higher_is_better(metric) else mean <= threshold
    return int(epochs[np.argmax(reached)]) if reached.any() else None


def default_threshold(best: dict[str, Setting], metric: str, epochs: int) -> float:
    """The worst of the best settings' final means: the value every best setting reaches."""
    scores = [setting.score(metric, epochs) for setting in best.values()]
    return min(scores) if higher_is_better(metric) else max(scores)


# ------------------------------------------------------------------------------------------ tables
def _mean_std(values: np.ndarray, percent: bool = False) -> str:
    """``mean ± std`` over seeds (sample standard deviation), or "ended early" when a run did."""
    if not np.all(np.isfinite(values)):
        return "ended early"
    scale, digits = (100.0, 2) if percent else (1.0, 4)
    spread = values.std(ddof=1) if len(values) > 1 else 0.0
    return f"{scale * values.mean():.{digits}f} ± {scale * spread:.{digits}f}" + ("%" if percent else "")


@dataclass
class Section:
    """The runs of one dataset, architecture and backend, and what the study says about them."""

    title: str
    settings: list[Setting]
    metric: str
    epochs: int
    val_name: str | None  # "test", "validation" or None
    given: dict[str, list[str]]  # each optimizer's hyperparameters named in the spec
    threshold: float | None
    best: dict[str, Setting] = field(init=False)

    def __post_init__(self) -> None:
        self.best = best_settings(self.settings, self.metric, self.epochs)
        if self.threshold is None and self.best:
            self.threshold = default_threshold(self.best, self.metric, self.epochs)

    def optimizers(self) -> list[str]:
        return list(dict.fromkeys(setting.optimizer for setting in self.settings))

    def metric_name(self, metric: str | None = None) -> str:
        """``val_loss`` as "test loss" (or "validation loss"), ``loss`` as "training loss"."""
        metric = metric or self.metric
        if metric.startswith("val_"):
            return f"{self.val_name} {metric[4:]}"
        return f"training {metric}"

    def best_table(self) -> tuple[list[str], list[list[str]]]:
        """The best setting per optimizer: its final metrics (mean ± std over seeds), epochs to the threshold,
        seconds per epoch, and how many runs of the optimizer (any setting) ended early."""
        val, direction = self.val_name, "≥" if higher_is_better(self.metric) else "≤"
        metrics = ["loss", "accuracy"] + ([f"val_{name}" for name in ("loss", "accuracy")] if val else [])
        names = ["training loss", "training accuracy"] + ([f"{val} loss", f"{val} accuracy"] if val else [])
        reach = f"epochs to {self.metric_name()} {direction} {self.threshold:.4g}"
        header = ["optimizer", "best setting", "seeds", *(f"final {name}" for name in names), reach, "s/epoch",
                  "runs ended early"]  # fmt: skip
        rows = []
        for optimizer in self.optimizers():
            ended = sum(
                run.stop_reason != "completed" for s in self.settings if s.optimizer == optimizer for run in s.runs
            )
            setting = self.best.get(optimizer)
            if setting is None:
                rows.append([optimizer, "every setting ended early", "", *[""] * len(metrics), "", "", str(ended)])
                continue
            finals = [_mean_std(setting.finals(m, self.epochs), percent="accuracy" in m) for m in metrics]
            reached = epochs_to_reach(setting, self.metric, self.threshold) if self.threshold is not None else None
            rows.append([optimizer, setting.describe(self.given.get(optimizer, [])), str(len(setting.runs)), *finals,
                         "not reached" if reached is None else str(reached), f"{setting.seconds_per_epoch():.3g}",
                         str(ended)])  # fmt: skip
        return header, rows


def _pairs(runs: Sequence[RunCurves], reference: str, backend: str) -> list[tuple[RunCurves, RunCurves]]:
    """The runs of ``backend`` with the same run on ``reference`` (optimizer, setting and seed equal)."""
    keyed = {(run.optimizer, run.setting, run.seed): run for run in runs if run.backend == reference}
    return [(keyed[key], run) for run in runs if run.backend == backend
            and (key := (run.optimizer, run.setting, run.seed)) in keyed]  # fmt: skip


def _largest_difference(pairs: list[tuple[RunCurves, RunCurves]], metric: str) -> float:
    """max |a - b| over the paired runs and their common epochs."""
    largest = 0.0
    for first, second in pairs:
        a, b = first.metrics.get(metric), second.metrics.get(metric)
        if a is not None and b is not None:
            length = min(len(a), len(b))
            largest = max(largest, float(np.max(np.abs(a[:length] - b[:length]), initial=0.0)))
    return largest


def _median_seconds(run: RunCurves) -> float:
    return float(np.median(run.metrics["seconds"]))


def backend_table(runs: Sequence[RunCurves]) -> tuple[list[str], list[list[str]]]:
    """Per backend: runs, median seconds per epoch, its ratio to the reference backend's (the median over paired
    runs of the ratio of their median epoch times), and the largest difference of each metric from the reference."""
    backends = list(dict.fromkeys(run.backend for run in runs))
    reference = REFERENCE_BACKEND if REFERENCE_BACKEND in backends else backends[0]
    metrics = [name for name in ("loss", "accuracy", "val_loss", "val_accuracy") if name in runs[0].metrics]
    header = ["backend", "runs", "s/epoch (median)", f"time vs {reference}", *(f"max |Δ {m}|" for m in metrics)]
    rows = []
    for backend in backends:
        own = [run for run in runs if run.backend == backend]
        pairs = _pairs(runs, reference, backend)
        ratio = np.median([_median_seconds(b) / _median_seconds(a) for a, b in pairs]) if pairs else math.nan
        differences = [f"{_largest_difference(pairs, m):.3g}" if backend != reference else "reference" for m in metrics]
        rows.append([backend, str(len(own)), f"{np.median([_median_seconds(r) for r in own]):.3g}",
                     f"{ratio:.2f}x", *differences])  # fmt: skip
    return header, rows


# ------------------------------------------------------------------------------------------ figures
def _figure_class() -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("the report needs matplotlib: pip install 'fastopt[plot]'") from None
    return Figure


def curves_figure(section: Section) -> Any:
    """DeepOBS's panels: test (or validation) and training loss, then accuracy, against the epoch; each optimizer's
    best setting as its mean over seeds with a band of one standard deviation."""
    val = section.val_name
    panels = [("loss", "training loss"), ("accuracy", "training accuracy")]
    if val:
        panels = [(f"val_{panels[0][0]}", f"{val} loss"), panels[0], (f"val_{panels[1][0]}", f"{val} accuracy"),
                  panels[1]]  # fmt: skip
    figure = _figure_class()(figsize=(9.0, 6.2 if val else 3.3))
    axes = figure.subplots(len(panels) // 2, 2, squeeze=False).ravel()
    for axis, (metric, title) in zip(axes, panels):
        means = []
        for color, (optimizer, setting) in zip(COLORS, section.best.items()):
            epochs, mean, spread = setting.curve(metric)
            low, high = mean - spread, mean + spread
            if "accuracy" in metric:  # the band stays where accuracy can be
                low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
            axis.plot(epochs, mean, color=color, label=optimizer, linewidth=1.5)
            axis.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
            means.append(mean)
        _log_scale_if_wide(axis, metric, np.concatenate(means))
        axis.set_title(title, fontsize=10)
        axis.set_xlabel("epoch", fontsize=9)
        axis.tick_params(labelsize=8)
        axis.grid(alpha=0.3)
    axes[1 if val else 0].legend(fontsize=8)  # training loss: its upper right stays empty
    figure.suptitle(f"{section.title}: best setting per optimizer, mean ± 1 std over seeds", fontsize=10)
    figure.tight_layout()
    return figure


def _log_scale_if_wide(axis: Any, metric: str, values: np.ndarray) -> None:
    """A logarithmic axis for a loss whose curves span more than two decades (their late epochs are otherwise
    flat on the floor)."""
    positive = values[np.isfinite(values) & (values > 0)]
    if "loss" in metric and positive.size and positive.max() > 100 * positive.min():
        axis.set_yscale("log", nonpositive="mask")


def _by_learning_rate(settings: Sequence[Setting], metric: str, epochs: int) -> dict[float, Setting]:
    """For each learning rate, the best of the settings that use it (a setting with a finite score beats any
    without)."""
    sign = 1.0 if higher_is_better(metric) else -1.0
    chosen: dict[float, Setting] = {}
    for setting in settings:
        score, current = setting.score(metric, epochs), chosen.get(setting.lr())
        if current is None or (math.isfinite(score) and not sign * current.score(metric, epochs) >= sign * score):
            chosen[setting.lr()] = setting
    return dict(sorted(chosen.items()))


def _focus_near_the_best(axis: Any, points: list[tuple[str, float, float, float]], higher: bool) -> list:
    """Limit the y axis to the points near the best when some lie far off (a rate that nearly diverged would
    squash the others into one line): far means beyond three times the distance from the best to the lower
    quartile (the upper one for a loss), or 5% of the best, whichever is larger. The points are (colour, rate, mean,
    std); returns the far ones."""
    values = np.array([point[2] for point in points]) * (1.0 if higher else -1.0)
    if values.size < 4:
        return []
    quartile = np.percentile(values, 25)
    far = values < quartile - 3 * max(values.max() - quartile, 0.05 * abs(values.max()))
    if not far.any() or far.all():
        return []
    near = [(mean - std, mean + std) for (_, _, mean, std), is_far in zip(points, far) if not is_far]
    low, high = min(low for low, _ in near), max(high for _, high in near)
    margin = 0.05 * (high - low) or 0.01 * abs(high) or 1.0
    axis.set_ylim(low - margin, high + margin)
    return [point for point, is_far in zip(points, far) if is_far]


def _mark_at_edge(axis: Any, points: list[tuple], top: bool, marker: str) -> None:
    """Points (colour, rate, value or None, ...) drawn on the top or bottom edge of the axis (off its range, or with
    no value), their value beside them."""
    edge = axis.get_ylim()[1 if top else 0]
    for color, lr, value, *_ in points:
        axis.plot([lr], [edge], marker=marker, color=color, markersize=9, clip_on=False, linestyle="none")
        if value is not None:
            axis.annotate(f"{value:.3g}", (lr, edge), textcoords="offset points", xytext=(0, -16 if top else 8),
                          color=color, fontsize=8, ha="center")  # fmt: skip


def _plot_rates(axis: Any, section: Section, optimizer: str, color: str) -> tuple[list[tuple], list[tuple]]:
    """One optimizer's line of the sensitivity figure; returns its points (colour, rate, mean, std) and the rates
    where a run ended early (colour, rate, None)."""
    own = [setting for setting in section.settings if setting.optimizer == optimizer]
    by_rate = _by_learning_rate(own, section.metric, section.epochs)
    finite = {lr: s for lr, s in by_rate.items() if math.isfinite(s.score(section.metric, section.epochs))}
    finals = [s.finals(section.metric, section.epochs) for s in finite.values()]
    spreads = [float(f.std(ddof=1)) if len(f) > 1 else 0.0 for f in finals]
    means = np.array([f.mean() for f in finals])
    low, high = means - spreads, means + spreads
    if "accuracy" in section.metric:  # the bars stay where accuracy can be
        low, high = np.clip(low, 0.0, 1.0), np.clip(high, 0.0, 1.0)
    axis.errorbar(list(finite), means, yerr=[means - low, high - means], color=color, marker="o", capsize=3,
                  label=optimizer)  # fmt: skip
    points = [(color, lr, float(mean), spread) for lr, mean, spread in zip(finite, means, spreads)]
    return points, [(color, lr, None) for lr in by_rate if lr not in finite]


def sensitivity_figure(section: Section) -> Any:
    """The final metric against the learning rate (log axis), one line per optimizer: mean over seeds with error
    bars of one standard deviation. A rate far worse than the others is drawn on the axis edge with its value (a
    triangle), and one where a run ended early (NaN or Inf) as x on the edge of the worse values."""
    figure = _figure_class()(figsize=(6.4, 4.2))
    axis = figure.subplots()
    points, ended = [], []
    for color, optimizer in zip(COLORS, section.optimizers()):
        found, failed = _plot_rates(axis, section, optimizer, color)
        points, ended = points + found, ended + failed
    higher = higher_is_better(section.metric)
    far = _focus_near_the_best(axis, points, higher)
    _mark_at_edge(axis, far, top=not higher, marker="^" if not higher else "v")
    _mark_at_edge(axis, ended, top=not higher, marker="x")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate" + (" (x: a run ended early on NaN/Inf)" if ended else ""), fontsize=9)
    axis.set_ylabel(f"final {section.metric_name()}", fontsize=9)
    axis.set_title(f"{section.title}\nlearning-rate sensitivity: mean ± 1 std over seeds", fontsize=10)
    axis.grid(alpha=0.3, which="both")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


def backends_figure(title: str, runs: Sequence[RunCurves]) -> Any:
    """Median seconds per epoch of each optimizer's runs on each backend, as grouped bars."""
    backends = list(dict.fromkeys(run.backend for run in runs))
    optimizers = list(dict.fromkeys(run.optimizer for run in runs))
    figure = _figure_class()(figsize=(6.4, 3.6))
    axis = figure.subplots()
    width = 0.8 / len(backends)
    for index, (color, backend) in enumerate(zip(COLORS, backends)):
        seconds = [np.median([_median_seconds(r) for r in runs if r.backend == backend and r.optimizer == name]
                             or [math.nan]) for name in optimizers]  # fmt: skip
        axis.bar(np.arange(len(optimizers)) + (index - (len(backends) - 1) / 2) * width, seconds, width,
                 color=color, label=backend)  # fmt: skip
    axis.set_xticks(np.arange(len(optimizers)), optimizers, fontsize=9)
    axis.set_ylabel("seconds per epoch (median)", fontsize=9)
    axis.set_title(f"{title}: time per epoch by backend", fontsize=10)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------------------------------ the page
STYLE = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:0.9em}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,td:nth-child(2),th{text-align:left}
img{max-width:100%}pre{background:#f6f6f6;padding:1em;overflow:auto}.note{color:#555;font-size:0.9em}"""


def _table_html(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>\n"


def _image_html(figure: Any, name: str, images: Path | None) -> str:
    """The figure as an embedded PNG (and written to ``images/<name>.png`` when asked)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    if images is not None:
        (images / f"{name}.png").write_bytes(buffer.getvalue())
    encoded = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<p><img alt="{html.escape(name)}" src="data:image/png;base64,{encoded}"></p>\n'


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def sections(study: dict[str, Any], runs: Sequence[RunCurves]) -> list[Section]:
    """One section per dataset, architecture and backend, in the order of the results."""
    spec = study["spec"]
    val_name = {"test": "test", None: None}.get(spec["validation"], "validation")
    given = {
        entry["label"]: sorted(
            (key for key in entry if key not in ("name", "label", "schedule")), key=lambda key: (key != "lr", key)
        )
        for entry in spec["optimizers"]
    }  # lr first
    keys = list(dict.fromkeys((*run.section, run.backend) for run in runs))
    return [Section(", ".join(key), group_settings([run for run in runs if (*run.section, run.backend) == key]),
                    spec["metric"], spec["epochs"], val_name, given, spec["threshold"]) for key in keys]  # fmt: skip


def _section_html(section: Section, images: Path | None) -> str:
    parts = [f"<h2>{html.escape(section.title)}</h2>\n", _table_html(*section.best_table())]
    if section.best:
        parts.append(_image_html(curves_figure(section), f"{_slug(section.title)}-curves", images))
    rates = [{s.lr() for s in section.settings if s.optimizer == name} for name in section.optimizers()]
    if any(len(found) > 1 for found in rates):  # a learning-rate grid to draw
        parts.append(_image_html(sensitivity_figure(section), f"{_slug(section.title)}-lr", images))
    return "".join(parts)


def _backends_html(runs: Sequence[RunCurves], images: Path | None) -> str:
    """A backend comparison for each dataset and architecture run on several backends."""
    parts = []
    for key in dict.fromkeys(run.section for run in runs):
        own = [run for run in runs if run.section == key]
        if len({run.backend for run in own}) > 1:
            title = ", ".join(key)
            parts += [f"<h2>{html.escape(title)}: backends</h2>\n", _table_html(*backend_table(own)),
                      _image_html(backends_figure(title, own), f"{_slug(title)}-backends", images)]  # fmt: skip
    return "".join(parts)


def _header_html(study: dict[str, Any]) -> str:
    name = html.escape(study["name"])
    command = f"<p>Made by <code>{html.escape(study['command'])}</code></p>\n" if study.get("command") else ""
    return (f"<!doctype html>\n<html><head><meta charset='utf-8'><title>fastopt compare: {name}</title>"
            f"<style>{STYLE}</style></head><body>\n<h1>fastopt compare: {name}</h1>\n"
            f"<p>fastopt {html.escape(study['fastopt'])}; {study['finished']} of {study['runs']} runs finished, "
            f"{study['stopped_early']} ended early (NaN/Inf); run on {html.escape(study['scheduler'])}; "
            f"updated {html.escape(study['updated'])}.</p>\n{command}")  # fmt: skip


def _configuration_html(study: dict[str, Any]) -> str:
    """``fastopt.show_config()`` of the workers (each distinct text once, with the workers that printed it), else
    of the process that ran the study."""
    found = study.get("worker_config") or [{"workers": ["the process that ran the study"], "config": study["config"]}]
    return "".join(f"<h2>fastopt configuration: {html.escape(', '.join(group['workers']))}</h2>\n"
                   f"<pre>{html.escape(group['config'])}</pre>\n" for group in found)  # fmt: skip


def _footer_html(study: dict[str, Any]) -> str:
    return (
        f"<p class='note'>Training loss and accuracy are the means over each epoch's batches as it trained; "
        f"s/epoch is the median time of an epoch (each run on {study['spec']['threads']} thread).</p>\n"
        f"{_configuration_html(study)}"
        f"<h2>study spec</h2>\n<pre>{html.escape(json.dumps(study['spec'], indent=2))}</pre>\n</body></html>\n"
    )


def _aligned(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in [header, *rows]]


def summary_text(directory: str | os.PathLike[str]) -> str:
    """The tables of the report as text (no matplotlib needed): the best setting per optimizer of each section,
    and the backend comparisons."""
    folder = Path(directory)
    study = read_study_file(folder)
    runs = read_runs(folder, study)
    lines = []
    for section in sections(study, runs):
        lines += [f"{section.title}:", *_aligned(*section.best_table()), ""]
    for key in dict.fromkeys(run.section for run in runs):
        own = [run for run in runs if run.section == key]
        if len({run.backend for run in own}) > 1:
            lines += [f"{', '.join(key)}: backends", *_aligned(*backend_table(own)), ""]
    return "\n".join(lines)


def write_report(directory: str | os.PathLike[str], images: str | os.PathLike[str] | None = None) -> Path:
    """Draw ``report.html`` in a study folder from its ``results.csv`` and ``study.json`` (finished runs only; a
    study still running gives a partial report); ``images`` also writes each figure there as a PNG file. Returns
    the report's path."""
    from fastopt._io import write_text_atomic

    folder = Path(directory)
    study = read_study_file(folder)
    runs = read_runs(folder, study)
    image_folder = Path(images) if images is not None else None
    if image_folder is not None:
        image_folder.mkdir(parents=True, exist_ok=True)
    parts = [_header_html(study)]
    parts += [_section_html(section, image_folder) for section in sections(study, runs)]
    parts += [_backends_html(runs, image_folder), _footer_html(study)]
    write_text_atomic(folder / REPORT_FILE, "".join(parts))
    return folder / REPORT_FILE
