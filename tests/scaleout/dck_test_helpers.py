"""Test-only classes the scale-out tests pass to ``dck`` by ``class_path`` (in-process and in
subprocesses: ``tests/scaleout`` is put on ``sys.path`` / ``PYTHONPATH``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from torch import nn

from dck_lightning.data import SyntheticShapesDataModule
from dck_lightning.layers import DynamicConv2d
from dck_lightning.tasks import ClassificationTask


class WaitForSignal(Callback):
    """At global step ``at_step``, write ``flag_file`` and wait (up to ``timeout`` s) for SIGTERM.

    Makes "a signal arrives during training" deterministic: the test waits for the flag file,
    sends its signals from outside, and training goes on only once SIGTERM was received.
    """

    def __init__(self, at_step: int, flag_file: str, timeout: float = 60.0) -> None:
        self.at_step = at_step
        self.flag_file = flag_file
        self.timeout = timeout
        self._done = False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if self._done or trainer.global_step != self.at_step:
            return
        self._done = True
        Path(self.flag_file).write_text(f"{trainer.global_step}\n")
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


class TokenShapes(SyntheticShapesDataModule):
    """Synthetic shapes that need an access token (as a private dataset server would)."""

    def __init__(self, access_token: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.access_token = access_token


class BNFreeClassificationTask(ClassificationTask):
    """A tiny classifier without BatchNorm or dropout: per-sample maths only.

    Under DDP its gradients averaged over the ranks equal the single-process gradient of the
    global batch exactly (BatchNorm's per-device statistics would differ: SyncBatchNorm is
    GPU-only), so a 2-process run must reproduce a 1-process run up to float rounding.
    """

    def configure_models(self) -> None:
        torch.manual_seed(0)
        self.model = nn.Sequential(
            DynamicConv2d(self.hparams.in_channels, 8, 3, padding="same"),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(8 * 16, self.hparams.num_classes),
        )


class NaNLossClassificationTask(ClassificationTask):
    """ClassificationTask whose training loss is NaN at global step ``nan_at_step``.

    (NaN *inputs* would not do: the DCK sampling turns NaN offsets into invalid indices and
    raises before any loss exists.)
    """

    def __init__(self, nan_at_step: int = -1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_at_step = nan_at_step

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        return loss * float("nan") if self.global_step == self.nan_at_step else loss
