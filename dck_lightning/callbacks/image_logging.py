"""Log pictures of the model's predictions during validation (W&B images, or PNG files).

The callback is task-agnostic: it asks the LightningModule for the pictures through one
method, ``prediction_images(batch) -> list[tuple[str, np.ndarray]]`` (caption and an
``uint8[H, W, 3]`` image, typically the prediction beside the ground truth), and only decides
when to ask and where the pictures go. Detection draws boxes
(:meth:`~dck_lightning.tasks.detection.DetectionTask.prediction_images`); segmentation draws
masks with the same contract.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["PredictionImageLogger", "take_first"]


def take_first(batch: Any, n: int) -> Any:
    """The first ``n`` samples of a batch.

    The top-level tuple, list or dict is the batch's structure (``(images, targets)``), cut
    element-wise; below it, tensors are cut along their first dimension and lists (one item
    per sample, e.g. target dicts) to their first ``n`` items.
    """

    def cut(item: Any) -> Any:
        if isinstance(item, (torch.Tensor, list, tuple)):
            return item[:n]
        return item

    if isinstance(batch, (tuple, list)):
        return type(batch)(cut(item) for item in batch)
    if isinstance(batch, dict):
        return {key: cut(value) for key, value in batch.items()}
    return cut(batch)


class PredictionImageLogger(Callback):
    """Every ``every_n_epochs`` epochs, draw the predictions on the first validation batch.

    On the first validation batch of every ``every_n_epochs``-th epoch (epochs counted from 1,
    like ``check_val_every_n_epoch``; never during the sanity check) the callback calls
    ``pl_module.prediction_images(batch)`` on the first ``max_images`` samples and, on global
    rank 0 only:

    - logs them as W&B images under ``key`` when a :class:`~pytorch_lightning.loggers.WandbLogger`
      is attached (``WandbLogger.log_image``, with the captions);
    - otherwise writes ``<trainer.log_dir>/images/epoch_<epoch:03d>_step_<step:07d>_<n:02d>.png``
      (``epoch_004_step_0001280_00.png``) and appends
      ``<file name>\t<caption>`` lines to ``images/captions.tsv``.

    The module's method runs in eval mode under ``no_grad`` (validation), on rank 0 only — no
    collective operations may happen inside it.

    Args:
        every_n_epochs (int): log every N epochs. Default: 1.
        max_images (int): at most this many images per log. Default: 8.
        key (str): the W&B key. Default: ``"val/predictions"``.
    """

    _log_dir = None  # set in setup()

    def __init__(
        self, every_n_epochs: int = 1, max_images: int = 8, key: str = "val/predictions"
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        self.every_n_epochs = every_n_epochs
        self.max_images = max_images
        self.key = key
        self._warned = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # ``trainer.log_dir`` is a collective under DDP: read it here, on every rank, not
        # later on rank 0 only (that would hang the other ranks).
        self._log_dir = trainer.log_dir

    def should_log(self, trainer: pl.Trainer, batch_idx: int, dataloader_idx: int) -> bool:
        return (
            batch_idx == 0
            and dataloader_idx == 0
            and not trainer.sanity_checking
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            and trainer.is_global_zero
        )

    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not self.should_log(trainer, batch_idx, dataloader_idx):
            return
        draw = getattr(pl_module, "prediction_images", None)
        if draw is None:
            if not self._warned:
                rank_zero_warn(
                    f"PredictionImageLogger: {type(pl_module).__name__} has no prediction_images(batch); nothing logged"
                )
                self._warned = True
            return
        with torch.no_grad():
            panels = list(draw(take_first(batch, self.max_images)))[: self.max_images]
        if panels:
            self.log_images(trainer, panels)

    def log_images(self, trainer: pl.Trainer, panels: list[tuple[str, np.ndarray]]) -> None:
        """Send ``[(caption, uint8[H, W, 3])]`` to the W&B loggers, or write PNGs when there is none."""
        wandb_loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        captions = [caption for caption, _ in panels]
        images = [np.ascontiguousarray(image) for _, image in panels]
        if wandb_loggers:
            for logger in wandb_loggers:
                logger.log_image(
                    key=self.key, images=images, caption=captions, step=trainer.global_step
                )
            return
        folder = Path(self._log_dir or trainer.default_root_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        prefix = f"epoch_{trainer.current_epoch:03d}_step_{trainer.global_step:07d}"
        lines = []
        for index, (caption, image) in enumerate(zip(captions, images)):
            filename = f"{prefix}_{index:02d}.png"
            Image.fromarray(image).save(folder / filename)
            lines.append(f"{filename}\t{' '.join(caption.split())}\n")
        with open(folder / "captions.tsv", "a", encoding="utf-8") as handle:
            handle.writelines(lines)
