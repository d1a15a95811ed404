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
        return {k: "***" if SECRET_KEY.search(str(k)) and v else redact_secrets(v) for k, v in value.items()}
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

    The config goes to ``<run folder>/config.yaml`` (``config_1.yaml``… when the folder already
    has one — a resumed run — so nothing is overwritten) and, redacted of credentials, into
    the W&B run's config; the file itself is saved with the W&B run too.
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and trainer.log_dir is not None:
            name = free_config_name(Path(trainer.log_dir), self.config_filename) if trainer.is_global_zero else None
            self.config_filename = trainer.strategy.broadcast(name)
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        config = redact_secrets(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.config.update(config, allow_val_change=True)
                saved = Path(trainer.log_dir or "") / self.config_filename
                if self.save_to_log_dir and saved.is_file():
                    logger.experiment.save(str(saved), base_path=str(saved.parent), policy="now")
