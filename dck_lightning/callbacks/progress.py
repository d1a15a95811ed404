"""Lightning's tqdm progress bar, refreshed rarely and as plain lines when the output is not a
terminal.

On a terminal a bar redraws in place, so Lightning refreshes it after every batch. Written to
a file (a SLURM log, ``dck fit > fit.log``, a CI log) every refresh is kept: a detection run
at one refresh per batch wrote a 670 KB ``fit.log``, and tqdm's in-place redraws (``\r``,
cursor-up escapes ``ESC[A``) turn an epoch into one line of thousands of characters.
:class:`TerminalAwareProgressBar` keeps Lightning's
:class:`~pytorch_lightning.callbacks.TQDMProgressBar` on a terminal; when ``sys.stdout`` is not
a TTY it refreshes about ``updates_per_epoch`` times per epoch (every
``ceil(batches / updates_per_epoch)`` batches, and the last batch) and prints each update as
one plain line (:class:`LineTqdm`: no ``\r``, no escape sequences)::

    Epoch 0:  50%|█████     | 20/40 [00:03<00:03,  6.50it/s, train/loss_step=1.20]

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
from pytorch_lightning.callbacks.progress.tqdm_progress import Tqdm, convert_inf

__all__ = ["LineTqdm", "TerminalAwareProgressBar"]


class LineTqdm(Tqdm):
    """Lightning's :class:`Tqdm` that prints each update as one plain line (for a log file).

    tqdm redraws a bar in place (``\r``, and cursor moves for nested bars). Here a refresh
    only remembers the bar's text; it is printed, with a newline, once the bar has moved on
    to another count, and when the bar is reset or closed — so one update is one line,
    however often Lightning refreshes it (it refreshes the count, then the metrics). Counts of
    0 (a bar just started) are not printed. Clearing and cursor moves do nothing.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._pending: Optional[tuple[float, str]] = None  # (count, text) not printed yet
        super().__init__(*args, **kwargs)

    def _flush(self) -> None:
        """Print the remembered line (unless it shows a count of 0)."""
        pending, self._pending = self._pending, None
        if pending is not None and pending[0] and pending[1].strip():
            self.fp.write(pending[1].rstrip() + "\n")
            self.fp.flush()

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        if msg == "":  # tqdm clears the bar so: nothing to clear in a log
            return True
        text = self.__str__() if msg is None else msg
        if self._pending is not None and self._pending[0] != self.n:
            self._flush()
        self._pending = (self.n, text)
        return True

    def clear(self, nolock: bool = False) -> None:
        pass

    def moveto(self, n: int) -> None:
        pass

    def reset(self, total: Optional[float] = None) -> None:
        self._flush()  # the last state before the restart (the end of an epoch)
        super().reset(total)

    def close(self) -> None:
        if getattr(self, "disable", True):
            return
        self._flush()
        self.disable = True
        self._decr_instances(self)


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

    def _line_bar(self, desc: str, leave: bool, position: int = 0, **kwargs: Any) -> Tqdm:
        """A :class:`LineTqdm` with Lightning's settings for its bars."""
        return LineTqdm(
            desc=desc,
            position=2 * self.process_position + position,
            disable=self.is_disabled,
            leave=leave,
            file=sys.stdout,
            bar_format=self.BAR_FORMAT,
            **kwargs,
        )

    def init_sanity_tqdm(self) -> Tqdm:
        if self.interactive:
            return super().init_sanity_tqdm()
        return self._line_bar(self.sanity_check_description, leave=False)

    def init_train_tqdm(self) -> Tqdm:
        if self.interactive:
            return super().init_train_tqdm()
        return self._line_bar(self.train_description, leave=True, smoothing=0)

    def init_predict_tqdm(self) -> Tqdm:
        if self.interactive:
            return super().init_predict_tqdm()
        return self._line_bar(self.predict_description, leave=True, smoothing=0)

    def init_validation_tqdm(self) -> Tqdm:
        if self.interactive:
            return super().init_validation_tqdm()
        has_main_bar = self.trainer.state.fn != "validate"
        return self._line_bar(self.validation_description, not has_main_bar, int(has_main_bar))

    def init_test_tqdm(self) -> Tqdm:
        if self.interactive:
            return super().init_test_tqdm()
        return self._line_bar("Testing", leave=True)

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
