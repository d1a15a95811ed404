"""Lightning's tqdm progress bar, refreshed rarely when the output is not a terminal.

On a terminal a bar redraws in place, so Lightning refreshes it after every batch. Written to
a file (a SLURM log, ``dck fit > fit.log``, a CI log) every refresh is kept: a detection run
at one refresh per batch wrote a 670 KB ``fit.log``. :class:`TerminalAwareProgressBar` keeps
Lightning's :class:`~pytorch_lightning.callbacks.TQDMProgressBar` and only raises its refresh
rate when ``sys.stdout`` is not a TTY, to about ``updates_per_epoch`` refreshes per epoch
(every ``ceil(batches / updates_per_epoch)`` batches, and the last batch).

``dck`` adds it unless the config sets ``trainer.enable_progress_bar: false`` or its own
progress bar callback::

    trainer:
      callbacks:
        - class_path: dck_lightning.callbacks.progress.TerminalAwareProgressBar
          init_args: {updates_per_epoch: 4}
"""

from __future__ import annotations

import math
import sys
from typing import Any, Optional

import pytorch_lightning as pl
from pytorch_lightning.callbacks import TQDMProgressBar
from pytorch_lightning.callbacks.progress.tqdm_progress import convert_inf

__all__ = ["TerminalAwareProgressBar"]


class TerminalAwareProgressBar(TQDMProgressBar):
    """:class:`~pytorch_lightning.callbacks.TQDMProgressBar` with a refresh rate that depends on
    whether the output is a terminal.

    Args:
        refresh_rate (int): batches between refreshes on a terminal (Lightning's meaning).
            Default: 1.
        updates_per_epoch (int): refreshes per epoch (per evaluation, per prediction run) when
            the output is not a terminal; the refresh rate is then
            ``max(refresh_rate, ceil(batches / updates_per_epoch))``. Default: 10.
        interactive (bool, optional): whether the output is a terminal; default
            ``sys.stdout.isatty()`` when the bar is built.
        process_position, leave: as in :class:`~pytorch_lightning.callbacks.TQDMProgressBar`.
    """

    def __init__(
        self,
        refresh_rate: int = 1,
        updates_per_epoch: int = 10,
        interactive: Optional[bool] = None,
        process_position: int = 0,
        leave: bool = False,
    ) -> None:
        super().__init__(refresh_rate, process_position, leave)
        if updates_per_epoch < 1:
            raise ValueError(f"updates_per_epoch must be >= 1, got {updates_per_epoch}")
        self.updates_per_epoch = updates_per_epoch
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._batches: Optional[int] = None  # batches of the loop being shown

    @property
    def refresh_rate(self) -> int:
        rate = super().refresh_rate
        if self.interactive or not self._batches or rate <= 0:
            return rate
        return max(rate, math.ceil(self._batches / self.updates_per_epoch))

    def _show(self, batches: Any) -> None:
        total = convert_inf(sum(batches) if isinstance(batches, list) else batches)
        self._batches = int(total) if total else None

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._show(self.total_train_batches)
        super().on_train_epoch_start(trainer, *args)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            self._show(trainer.num_sanity_val_batches)
        elif trainer.state.fn != "fit":  # inside fit the training bar's rate stays
            self._show(trainer.num_val_batches)
        super().on_validation_start(trainer, pl_module)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._show(self.total_train_batches)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(trainer.num_test_batches)
        super().on_test_start(trainer, pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._show(trainer.num_predict_batches)
        super().on_predict_start(trainer, pl_module)
