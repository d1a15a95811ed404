"""Stop (or skip the batch) when the training loss is not finite, before it reaches the weights.

A NaN or infinite loss, back-propagated and stepped, turns every weight into NaN; the next
checkpoint then saves a dead model over the last good one. :class:`NonFiniteLossGuard` looks
at the loss before ``backward`` and either stops training with a message naming the step
(the weights and the checkpoints on disk stay as they were), or skips the batch.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["NonFiniteLossError", "NonFiniteLossGuard"]

Action = Literal["stop", "skip"]


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN or infinite loss (the message names the step)."""


class NonFiniteLossGuard(Callback):
    """Check every training loss before ``backward``; stop or skip when it is NaN or infinite.

    The decision is taken together by all DDP ranks (one tiny all-reduce per step), so a bad
    batch on one rank stops or skips the step everywhere.

    - ``action="stop"`` (default): raise :class:`NonFiniteLossError` before ``backward``, naming
      the epoch, global step and batch and the last checkpoint written. Nothing is saved after
      the bad loss: ``last.ckpt`` and ``best-*.ckpt`` keep the last good weights.
    - ``action="skip"``: drop the batch — no weight update (gradients are cleared before the
      optimiser step; also when the loss is finite but a gradient is not), and BatchNorm
      running statistics are restored to their values before the batch. The number of skipped
      batches is logged as ``train/nonfinite_skipped`` each epoch; after
      ``max_consecutive_skips`` skipped batches in a row training stops as with ``"stop"``.
      With fp16 mixed precision the GradScaler already skips non-finite steps; the guard then
      only counts and restores the BatchNorm statistics.

    Args:
        action (str): ``"stop"`` or ``"skip"``. Default: ``"stop"``.
        max_consecutive_skips (int): in ``"skip"`` mode, stop after this many bad batches in a
            row. Default: 20.
    """

    def __init__(self, action: Action = "stop", max_consecutive_skips: int = 20) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.skipped = 0  # in this epoch
        self.total_skipped = 0
        self._consecutive = 0
        self._batch_idx = 0
        self._bad_loss: Optional[float] = None  # this batch's non-finite loss
        self._bad_step_loss: Optional[float] = (
            None  # any non-finite loss since the last optimiser step
        )
        self._buffers: dict[str, torch.Tensor] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _where(self, trainer: pl.Trainer) -> str:
        return f"epoch {trainer.current_epoch}, global step {trainer.global_step} (batch {self._batch_idx})"

    def _last_checkpoint(self, trainer: pl.Trainer) -> str:
        """The most recently written checkpoint file of the trainer's checkpoint callbacks."""
        paths = {
            Path(path)
            for callback in trainer.checkpoint_callbacks
            for path in (
                getattr(callback, "last_model_path", ""),
                getattr(callback, "best_model_path", ""),
            )
            if path and Path(path).is_file()
        }
        if not paths:
            return "no checkpoint was written yet"
        return f"the last good checkpoint is {max(paths, key=lambda p: p.stat().st_mtime_ns)}"

    def _stop(self, trainer: pl.Trainer, what: str) -> None:
        raise NonFiniteLossError(
            f"{what} at {self._where(trainer)}: training stopped before the weights were updated; "
            f"{self._last_checkpoint(trainer)}. Try a lower learning rate, gradient clipping "
            "(--trainer.gradient_clip_val 1.0), checking the data, or --run.nonfinite_loss skip."
        )

    # -- hooks ---------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.skipped = 0

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._batch_idx = batch_idx
        self._bad_loss = None
        if self.action == "skip":
            self._buffers = {
                name: buffer.detach().clone()
                for name, buffer in pl_module.named_buffers()
                if buffer.is_floating_point()
            }

    def on_before_backward(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor
    ) -> None:
        finite = bool(torch.isfinite(loss.detach()).all())
        finite = trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        value = float(loss.detach().float().reshape(-1)[0]) if loss.numel() else math.nan
        if self.action == "stop":
            self._stop(
                trainer,
                f"non-finite training loss ({value})"
                if not math.isfinite(value)
                else "non-finite training loss on another rank",
            )
        self._bad_loss = self._bad_step_loss = value

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if self.action != "skip":
            return
        params = [
            p for group in optimizer.param_groups for p in group["params"] if p.grad is not None
        ]
        grads_finite = all(bool(torch.isfinite(p.grad).all()) for p in params)
        grads_finite = trainer.strategy.reduce_boolean_decision(grads_finite, all=True)
        bad_loss, self._bad_step_loss = self._bad_step_loss, None
        if bad_loss is None and grads_finite:
            self._consecutive = 0
            return
        self.skipped += 1
        self.total_skipped += 1
        self._consecutive += 1
        what = f"non-finite loss ({bad_loss})" if bad_loss is not None else "non-finite gradients"
        if self._consecutive >= self.max_consecutive_skips:
            self._stop(trainer, f"{self._consecutive} batches in a row with {what}, the last")
        rank_zero_warn(f"NonFiniteLossGuard: skipped the batch at {self._where(trainer)}: {what}")
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            return  # the GradScaler skips the step itself and needs the gradients to see it
        for p in params:
            p.grad = None  # the optimiser leaves parameters without a gradient untouched

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        # Restore the BatchNorm running statistics the bad batch changed (after backward: the
        # BatchNorm backward reads them, so they must not change before).
        if self._bad_loss is not None and self._buffers:
            buffers = dict(pl_module.named_buffers())
            with torch.no_grad():
                for name, saved in self._buffers.items():
                    buffers[name].copy_(saved)
        self._buffers = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"total_skipped": self.total_skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_skipped = int(state_dict.get("total_skipped", 0))
