"""Training throughput: wall time and images per second of every training epoch."""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback


def batch_size_of(batch: Any) -> int:
    """Images in a ``(images, targets)`` batch."""
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    return len(images)


class EpochThroughput(Callback):
    """Logs ``train/epoch_seconds`` and ``train/images_per_sec`` after every training epoch.

    The clock runs from the first to the last training batch of the epoch (validation
    excluded) and synchronises CUDA. ``history`` keeps ``(seconds, images)`` per epoch.
    """

    def __init__(self) -> None:
        self.history: list[tuple[float, int]] = []
        self._start = 0.0
        self._images = 0

    def _sync(self, pl_module: pl.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        self._start, self._images = time.perf_counter(), 0

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += batch_size_of(batch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sync(pl_module)
        seconds = time.perf_counter() - self._start
        self.history.append((seconds, self._images))
        pl_module.log("train/epoch_seconds", seconds)
        pl_module.log("train/images_per_sec", self._images / max(seconds, 1e-9))
