"""The run's loggers: a CSV logger that appends on resume; both loggers redact credentials.

Hyperparameters reach ``hparams.yaml`` and the W&B run config through ``log_hyperparams``;
credential-looking keys (``api_key``, ``token``, ``password``, ``secret``) are replaced by
``"***"`` there (see :func:`~dck_lightning.callbacks.config_saving.redact_secrets`).

With ``log_model``, the W&B logger uploads the run's checkpoints as ``model`` artifacts: the
best one (``best-*.ckpt``, alias ``best``) and the last one (``last.ckpt``, alias ``latest``).
"""

from __future__ import annotations

import csv
from argparse import Namespace
from pathlib import Path
from typing import Any, Union

from lightning_fabric.loggers.csv_logs import _ExperimentWriter
from lightning_fabric.utilities.logger import _convert_params
from pytorch_lightning.callbacks import ModelCheckpoint
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
    """:class:`~pytorch_lightning.loggers.WandbLogger` whose run config never holds credentials,
    and whose checkpoint artifacts carry the right aliases.

    Only global rank 0 creates the W&B run (``WandbLogger.experiment`` is rank-zero-only), so a
    DDP job has exactly one run.

    Checkpoints (``log_model``): a run has a monitored :class:`ModelCheckpoint` (the best
    checkpoint) and an unmonitored one (``last.ckpt``). Lightning's logger scans every
    callback's ``best_model_path`` and tags it ``best``: for the unmonitored callback that is
    ``last.ckpt``, which then takes the ``best`` alias from the real best checkpoint. Here a
    monitored callback's best checkpoint is uploaded with the alias ``best`` and an unmonitored
    callback's file with ``latest`` — with ``log_model: true`` both once at the end of a
    successful fit (best first), with ``log_model: all`` after every save. A file is uploaded
    again only when it changed. The artifact is ``model-<run id>``, the file ``model.ckpt``, the
    metadata its ``original_filename``, ``score`` and ``monitor``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._checkpoint_sources: dict[int, ModelCheckpoint] = {}
        self._uploaded: dict[str, float] = {}  # path -> modification time uploaded

    @rank_zero_only
    def log_hyperparams(self, params: Union[dict[str, Any], Namespace]) -> None:
        super().log_hyperparams(redacted_params(params))

    def after_save_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        if self._log_model == "all":
            self._upload_checkpoint(checkpoint_callback)
        elif self._log_model:
            self._checkpoint_sources[id(checkpoint_callback)] = checkpoint_callback

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "success" or self._experiment is None:
            return  # as Lightning: checkpoints are uploaded on success only
        sources = sorted(self._checkpoint_sources.values(), key=lambda cb: cb.monitor is None)
        for checkpoint_callback in sources:  # the best first, so `latest` ends on last.ckpt
            self._upload_checkpoint(checkpoint_callback)

    @rank_zero_only
    def _upload_checkpoint(self, checkpoint_callback: ModelCheckpoint) -> None:
        import wandb

        path = checkpoint_callback.best_model_path
        if not path or not Path(path).is_file():
            return
        modified = Path(path).stat().st_mtime
        if self._uploaded.get(path) == modified:
            return
        monitored = checkpoint_callback.monitor is not None
        score = checkpoint_callback.best_model_score if monitored else None
        metadata = {
            "original_filename": Path(path).name,
            "monitor": checkpoint_callback.monitor,
            "score": None if score is None else float(score),
        }
        artifact = wandb.Artifact(
            name=self._checkpoint_name or f"model-{self.experiment.id}",
            type="model",
            metadata=metadata,
        )
        artifact.add_file(path, name="model.ckpt", policy=self.add_file_policy)
        self.experiment.log_artifact(artifact, aliases=["best"] if monitored else ["latest"])
        self._uploaded[path] = modified
