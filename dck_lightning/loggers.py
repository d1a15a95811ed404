"""A CSV logger that appends to a resumed run's ``metrics.csv`` instead of deleting it."""

from __future__ import annotations

import csv

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class _AppendingExperimentWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is kept and appended to."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as file:
                self.metrics_keys = sorted(next(csv.reader(file), []))


class ResumableCSVLogger(CSVLogger):
    """:class:`~pytorch_lightning.loggers.CSVLogger` that never deletes earlier metrics.

    Lightning's CSV logger removes ``metrics.csv`` when its folder already exists; a resumed
    run (same run folder) must continue the file instead — the rows of the first part of the
    run are what the notebooks plot.
    """

    @property
    @rank_zero_experiment
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
