"""A tiny task for VOC loader tests (passed to ``dck`` by ``class_path``): its loss depends on
the augmented images and boxes, so any difference in the augmentations changes the weights."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dck_lightning.tasks.base import BaseTask


class BoxProbeTask(BaseTask):
    """Regress the (normalised) sum of each image's boxes from a 4-channel conv feature."""

    def configure_models(self) -> None:
        self.model = nn.Sequential(
            nn.Conv2d(self.hparams.in_channels, 4, 3),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 4),
        )

    def _loss(self, batch: Any) -> Tensor:
        images, targets = batch
        zero = images.new_zeros(4)
        boxes = torch.stack([t["boxes"].sum(0) if len(t["boxes"]) else zero for t in targets])
        return F.mse_loss(self.model(images), boxes / images.shape[-1])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, batch_size=len(batch[1]))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val/loss", self._loss(batch), batch_size=len(batch[1]), sync_dist=True)
