"""Stop (or skip the batch) when training goes non-finite, before it reaches the weights or a
checkpoint.

A NaN or infinite loss, back-propagated and stepped, turns every weight into NaN; the next
checkpoint then saves a dead model over the last good one. :class:`NonFiniteLossGuard` looks
at the loss before ``backward`` and either stops training with a message naming the step
(the weights and the checkpoints on disk stay as they were), or skips the batch; in skip mode
it also undoes an optimiser step that blew the weights up. A non-finite validation loss or
monitored metric stops the run before any checkpoint of that epoch is written, and
:class:`FiniteModelCheckpoint` never takes a non-finite monitored value for a best one.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Literal, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback, ModelCheckpoint
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["FiniteModelCheckpoint", "NonFiniteLossError", "NonFiniteLossGuard"]

Action = Literal["stop", "skip"]


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN or infinite loss (the message names the step)."""


class FiniteModelCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` for which a NaN or infinite
    monitored value is never among the best: Lightning ranks a NaN as the worst value but still
    saves it while fewer than ``save_top_k`` checkpoints exist (after a resume, or with
    ``save_top_k=-1``), and an infinite one ranks as any other. Such a checkpoint is not
    written, and no earlier best is deleted for it."""

    def check_monitor_top_k(
        self, trainer: pl.Trainer, current: Optional[torch.Tensor] = None
    ) -> bool:
        if current is not None and not bool(torch.isfinite(torch.as_tensor(current)).all()):
            return False
        return super().check_monitor_top_k(trainer, current)


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

      Skip mode also **rejects an update that blows the weights up**: a finite loss can still
      give a gradient large enough for one step to ruin the model (and an Adam-type optimiser's
      moments with it). Before each optimiser step the guard copies the parameters the step
      changes and their optimiser state; after it, the update is rejected — parameters,
      optimiser state and BatchNorm statistics put back as they were before the step, the
      batch counted as skipped — when a parameter became non-finite or the update is larger
      than ``max_update_ratio`` times the weights: ``‖w_after − w_before‖₂ >
      max_update_ratio · ‖w_before‖₂`` over all the parameters the step changed (one norm for
      the whole model). Ordinary steps move the weights by 10⁻⁴–10⁻² of their norm; the
      default ratio 1 rejects only a step that at least doubles their size. The copy costs one
      more set of parameters and optimiser state in memory, in skip mode only.
    - Either way, at the end of every validation (not the sanity check) a non-finite
      ``val/…loss…`` or monitored metric (the task's ``monitor``) stops training like a
      non-finite training loss, naming the metric, the step and the last good checkpoint:
      the guard runs before the checkpoint callbacks, so that epoch writes no checkpoint.

    Args:
        action (str): ``"stop"`` or ``"skip"``. Default: ``"stop"``.
        max_consecutive_skips (int): in ``"skip"`` mode, stop after this many bad batches in a
            row. Default: 20.
        max_update_ratio (float): in ``"skip"`` mode, the largest accepted update relative to
            the weights (see above). Default: 1.0.
    """

    def __init__(
        self,
        action: Action = "stop",
        max_consecutive_skips: int = 20,
        max_update_ratio: float = 1.0,
    ) -> None:
        if action not in ("stop", "skip"):
            raise ValueError(f"action must be 'stop' or 'skip', got {action!r}")
        if max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {max_consecutive_skips}")
        if not max_update_ratio > 0:
            raise ValueError(f"max_update_ratio must be > 0, got {max_update_ratio}")
        self.action = action
        self.max_consecutive_skips = max_consecutive_skips
        self.max_update_ratio = max_update_ratio
        self.skipped = 0  # in this epoch
        self.total_skipped = 0
        self._consecutive = 0
        self._batch_idx = 0
        self._bad_loss: Optional[float] = None  # this batch's non-finite loss
        self._bad_step_loss: Optional[float] = (
            None  # any non-finite loss since the last optimiser step
        )
        self._buffers: dict[str, torch.Tensor] = {}
        # Skip mode: the parameters an optimiser step changes and their state, before it.
        self._before_step: Optional[tuple[torch.optim.Optimizer, list, list, list]] = None

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

    def _stop(
        self,
        trainer: pl.Trainer,
        what: str,
        outcome: str = "training stopped before the weights were updated",
    ) -> None:
        raise NonFiniteLossError(
            f"{what} at {self._where(trainer)}: {outcome}; "
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
            self._keep_before_step(optimizer, params)
            return
        what = f"non-finite loss ({bad_loss})" if bad_loss is not None else "non-finite gradients"
        self._count_skip(trainer, what)
        if "16" in str(trainer.precision) and "bf16" not in str(trainer.precision):
            return  # the GradScaler skips the step itself and needs the gradients to see it
        for p in params:
            p.grad = None  # the optimiser leaves parameters without a gradient untouched

    def _count_skip(self, trainer: pl.Trainer, what: str) -> None:
        """Count a skipped batch; stop after ``max_consecutive_skips`` in a row."""
        self.skipped += 1
        self.total_skipped += 1
        self._consecutive += 1
        if self._consecutive >= self.max_consecutive_skips:
            self._stop(trainer, f"{self._consecutive} batches in a row with {what}, the last")
        rank_zero_warn(f"NonFiniteLossGuard: skipped the batch at {self._where(trainer)}: {what}")

    def _keep_before_step(self, optimizer: torch.optim.Optimizer, params: list) -> None:
        """Copy the parameters the step will change, and their optimiser state."""
        with torch.no_grad():
            values = [p.detach().clone() for p in params]
        states = [
            copy.deepcopy(optimizer.state[p]) if p in optimizer.state else None for p in params
        ]
        self._before_step = (optimizer, params, values, states)

    def _update_ratio(self) -> float:
        """``‖w_after − w_before‖₂ / ‖w_before‖₂`` of the last step (``inf`` when a parameter is
        no longer finite)."""
        assert self._before_step is not None
        _, params, values, _ = self._before_step
        with torch.no_grad():
            after = [p.detach() for p in params]
            if not all(bool(torch.isfinite(p).all()) for p in after):
                return math.inf
            change = torch.linalg.vector_norm(
                torch.stack(
                    [torch.linalg.vector_norm((a - b).float()) for a, b in zip(after, values)]
                )
            )
            size = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(b.float()) for b in values])
            )
        return float(change) / max(float(size), 1e-12)

    def _undo_step(self) -> None:
        """Put the parameters and their optimiser state back as they were before the step."""
        assert self._before_step is not None
        optimizer, params, values, states = self._before_step
        with torch.no_grad():
            for p, value, state in zip(params, values, states):
                p.copy_(value)
                if state is None:
                    optimizer.state.pop(p, None)
                else:
                    optimizer.state[p] = state

    def _check_update(self, trainer: pl.Trainer) -> bool:
        """After an optimiser step (skip mode): undo it when it blew the weights up (see the
        class docstring). Returns whether it was undone."""
        ratio = self._update_ratio()
        exploded = not ratio <= self.max_update_ratio
        exploded = trainer.strategy.reduce_boolean_decision(exploded, all=False)
        if exploded:
            self._undo_step()
            what = (
                "an update that made weights non-finite"
                if math.isinf(ratio)
                else f"an update of {ratio:.3g} times the weights (more than max_update_ratio "
                f"{self.max_update_ratio:g})"
            )
            self._before_step = None
            self._count_skip(trainer, what)
            return True
        self._consecutive = 0
        self._before_step = None
        return False

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        undone = self._before_step is not None and self._check_update(trainer)
        # Restore the BatchNorm running statistics the bad batch changed (after backward: the
        # BatchNorm backward reads them, so they must not change before).
        if (self._bad_loss is not None or undone) and self._buffers:
            buffers = dict(pl_module.named_buffers())
            with torch.no_grad():
                for name, saved in self._buffers.items():
                    buffers[name].copy_(saved)
        self._buffers = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Stop on a non-finite validation loss or monitored metric (before the checkpoint
        callbacks, which Lightning runs last)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        monitor = getattr(pl_module, "monitor", None)
        for name, value in sorted(trainer.callback_metrics.items()):
            watched = name == monitor or (name.startswith("val/") and "loss" in name)
            value = torch.as_tensor(value)
            if watched and not bool(torch.isfinite(value).all()):
                self._stop(
                    trainer,
                    f"non-finite validation {name} ({float(value.reshape(-1)[0])})",
                    "training stopped and no checkpoint of this epoch was written",
                )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.action == "skip":
            pl_module.log("train/nonfinite_skipped", float(self.skipped), sync_dist=False)

    def state_dict(self) -> dict[str, Any]:
        return {"total_skipped": self.total_skipped}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.total_skipped = int(state_dict.get("total_skipped", 0))
