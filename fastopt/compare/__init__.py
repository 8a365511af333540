"""Optimizer and backend studies (``fastopt compare``): a grid of trainings run on Dask distributed (or in this
process), resumable after any failure, with tidy results and a report.

``Study`` says what to run (``fastopt.compare.spec``), ``Study.run`` runs it (``fastopt.compare.execute``; each run is
one task, ``fastopt.compare.task``), ``write_report`` draws ``report.html`` (``fastopt.compare.report``).
"""

from fastopt.compare.execute import StudyResult
from fastopt.compare.report import write_report
from fastopt.compare.spec import PRESETS, RunSpec, Study

__all__ = ["PRESETS", "RunSpec", "Study", "StudyResult", "write_report"]
