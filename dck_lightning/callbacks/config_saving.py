"""Save the resolved config in the run folder (never overwriting) and in the W&B run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

SECRET_KEY = re.compile(r"(api_?key|token|password|secret)", re.IGNORECASE)


def redact_secrets(value: Any) -> Any:
    """A copy of a config tree with credential-looking values replaced by ``"***"``."""
    if isinstance(value, dict):
        return {
            k: "***" if SECRET_KEY.search(str(k)) and v else redact_secrets(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact_secrets(v) for v in value]
    return value


def free_config_name(folder: Path, filename: str) -> str:
    """``config.yaml``, or ``config_1.yaml``, … when a previous (resumed) run saved one."""
    stem, suffix = Path(filename).stem, Path(filename).suffix
    name, n = filename, 0
    while (folder / name).exists():
        n += 1
        name = f"{stem}_{n}{suffix}"
    return name


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's config saving that works with W&B and resumed runs.

    The config, redacted of credentials, goes to ``<run folder>/config.yaml``
    (``config_1.yaml``… when the folder already has one — a resumed run — so nothing is
    overwritten) and into the W&B run's config; the file itself is saved with the W&B run too.
    Written by global rank 0 only.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.already_saved:
            return
        # trainer.log_dir is a collective call under DDP: read it here, on every rank, once.
        self._log_dir = trainer.log_dir
        if self._log_dir is not None:
            name = (
                free_config_name(Path(self._log_dir), self.config_filename)
                if trainer.is_global_zero
                else None
            )
            self.config_filename = trainer.strategy.broadcast(name)
        # LightningCLI would write the unredacted config; write the redacted one in save_config.
        self._write_file, self.save_to_log_dir = self.save_to_log_dir, False
        try:
            super().setup(trainer, pl_module, stage)
        finally:
            self.save_to_log_dir = self._write_file

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Rank 0 only: write the redacted config file and hand it to W&B (no collective calls)."""
        config = redact_secrets(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        log_dir = getattr(self, "_log_dir", None)
        if getattr(self, "_write_file", self.save_to_log_dir) and log_dir is not None:
            path = Path(log_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
        self._wandb_config = config
        saved = Path(log_dir or "") / self.config_filename
        for logger in self._update_wandb_config(trainer, config):
            if saved.is_file():
                logger.experiment.save(str(saved), base_path=str(saved.parent), policy="now")

    @staticmethod
    def _update_wandb_config(trainer: pl.Trainer, config: dict[str, Any]) -> list[WandbLogger]:
        """Write ``config`` into every attached W&B run's config; return their loggers."""
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        for logger in loggers:
            logger.experiment.config.update(config, allow_val_change=True)
        return loggers

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Put the CLI's sections back on top of the W&B run's config.

        Lightning logs the task's and DataModule's hyperparameters after ``setup``, into the
        same W&B config: the task's ``model`` argument (a preset name such as ``"dcb_small"``)
        would replace the CLI's ``model`` section there.
        """
        config = getattr(self, "_wandb_config", None)  # set on global rank 0 only
        if config is not None:
            self._update_wandb_config(trainer, config)
