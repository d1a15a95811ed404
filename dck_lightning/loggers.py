"""The run's loggers: a CSV logger that appends on resume; both loggers redact credentials.

Hyperparameters reach ``hparams.yaml`` and the W&B run config through ``log_hyperparams``;
credential-looking keys (``api_key``, ``token``, ``password``, ``secret``) are replaced by
``"***"`` there (see :func:`~dck_lightning.callbacks.config_saving.redact_secrets`).
"""

from __future__ import annotations

import csv
from argparse import Namespace
from typing import Any, Union

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.utilities.logger import _convert_params
from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.loggers.logger import rank_zero_experiment
from pytorch_lightning.utilities import rank_zero_only

from .callbacks.config_saving import redact_secrets


def redacted_params(params: Union[dict[str, Any], Namespace]) -> dict[str, Any]:
    """Hyperparameters as a plain dict with credential-looking values replaced by ``"***"``."""
    return redact_secrets(dict(_convert_params(params) or {}))


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

    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        super().log_hyperparams(redacted_params(params))


class RedactingWandbLogger(WandbLogger):
    """:class:`~pytorch_lightning.loggers.WandbLogger` whose run config never holds credentials.

    Only global rank 0 creates the W&B run (``WandbLogger.experiment`` is rank-zero-only), so a
    DDP job has exactly one run.
    """

    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        super().log_hyperparams(redacted_params(params))
